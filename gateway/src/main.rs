//! `gateway`: reads config, starts logging (and span export), binds `GATEWAY_ADDR` with
//! SO_REUSEPORT, runs until SIGTERM/SIGINT.

use confab_shared::{shutdown, telemetry, Config};
use tokio_util::sync::CancellationToken;

fn main() -> std::process::ExitCode {
    confab_gateway::tune_allocator();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gateway: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    // Outside the runtime: the span exporter runs (and flushes) on its own thread.
    let _telemetry = telemetry::init(&telemetry::Setup {
        log_format: &config.log_format,
        otlp_endpoint: config.otel_exporter_otlp_endpoint.as_deref(),
        service: "confab-gateway",
    });
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(serve(config)),
        Err(e) => {
            eprintln!("gateway: cannot start the runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> std::process::ExitCode {
    let addr = config.gateway_socket_addr();
    let listener = match confab_gateway::bind_reuseport(addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("gateway: cannot listen on GATEWAY_ADDR={addr}: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let cancel = CancellationToken::new();
    shutdown::cancel_on_signals(cancel.clone());
    match confab_gateway::run(listener, config, cancel).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "gateway failed");
            std::process::ExitCode::FAILURE
        }
    }
}
