//! `mock-openai` binary: Confab's local demo model on `MOCK_OPENAI_ADDR`.
//!
//! Env: `MOCK_OPENAI_ADDR` (default `127.0.0.1:8089`), `MOCK_TOKENS_PER_SEC`
//! (default 40, 0 = unpaced), `MOCK_API_KEY` (optional bearer key),
//! `MOCK_MODELS` (optional comma list), `RUST_LOG`.

use std::time::Duration;

use anyhow::Context;
use mock_openai::MockConfig;
use tokio::sync::watch;

/// How long in-flight streams may run on after SIGINT/SIGTERM.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_string());
    let mut filter = tracing_subscriber::EnvFilter::try_new(&spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if !spec.contains("warp") {
        // Client disconnects and `cut` surface as connection errors inside
        // warp; they are expected here and already counted per request.
        for quiet in ["warp::server=off", "warp::filters::sse=off"] {
            if let Ok(d) = quiet.parse() {
                filter = filter.add_directive(d);
            }
        }
    }
    tracing_subscriber::fmt().with_env_filter(filter).init();

    let addr = std::env::var("MOCK_OPENAI_ADDR")
        .ok()
        .filter(|a| !a.trim().is_empty())
        .unwrap_or_else(|| "127.0.0.1:8089".to_string());
    let config = MockConfig::from_env()?;
    let listener = tokio::net::TcpListener::bind(addr.trim())
        .await
        .with_context(|| format!("binding MOCK_OPENAI_ADDR={addr}"))?;
    let local = listener.local_addr()?;
    tracing::info!(
        "Confab local demo model (mock OpenAI API, not OpenAI) listening on http://{local}/v1 \
         tokens_per_sec={} auth={} models={:?}",
        config.tokens_per_sec,
        if config.api_key.is_some() {
            "bearer"
        } else {
            "off"
        },
        config.models,
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received, draining in-flight streams");
        let _ = stop_tx.send(true);
    });
    let mut graceful_rx = stop_rx.clone();
    let server = mock_openai::run(listener, config, async move {
        let _ = graceful_rx.wait_for(|stop| *stop).await;
    });
    let mut deadline_rx = stop_rx;
    tokio::select! {
        result = server => result,
        _ = async {
            let _ = deadline_rx.wait_for(|stop| *stop).await;
            tokio::time::sleep(DRAIN_TIMEOUT).await;
        } => {
            tracing::warn!("drain timeout after {DRAIN_TIMEOUT:?}, exiting");
            Ok(())
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
