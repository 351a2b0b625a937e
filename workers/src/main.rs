//! `workers <persistence|cleanup|completion>`: one worker role per process.
//! `workers drained`: exit 0 when nothing is queued (before changing `STREAM_PARTITIONS`).

use confab_shared::{shutdown, telemetry, Config};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    telemetry::init_tracing();
    if std::env::args().nth(1).as_deref() == Some("drained") {
        return drained().await;
    }
    let role = match std::env::args()
        .nth(1)
        .map(|r| r.parse::<confab_workers::Role>())
    {
        Some(Ok(role)) => role,
        Some(Err(e)) => {
            eprintln!("workers: {e}");
            return std::process::ExitCode::from(2);
        }
        None => {
            eprintln!("usage: workers <persistence|cleanup|completion|drained>");
            return std::process::ExitCode::from(2);
        }
    };
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("workers: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let cancel = CancellationToken::new();
    shutdown::cancel_on_signals(cancel.clone());
    match confab_workers::run(role, config, cancel).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "worker failed");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `workers drained`: 0 when every command and job stream of the deployment is empty.
async fn drained() -> std::process::ExitCode {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("workers: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match confab_workers::drained(config).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("workers drained: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
