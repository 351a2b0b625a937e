//! `workers <persistence|cleanup|completion>`: one worker role per process.
//! `workers drained`: exit 0 when nothing is queued (before changing `STREAM_PARTITIONS`).

use std::process::ExitCode;

use confab_shared::{shutdown, telemetry, Config};
use confab_workers::Role;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let arg = std::env::args().nth(1);
    let role = match arg.as_deref() {
        Some("drained") => None,
        Some(r) => match r.parse::<Role>() {
            Ok(role) => Some(role),
            Err(e) => {
                eprintln!("workers: {e}");
                return ExitCode::from(2);
            }
        },
        None => {
            eprintln!("usage: workers <persistence|cleanup|completion|drained>");
            return ExitCode::from(2);
        }
    };
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("workers: {e}");
            return ExitCode::from(2);
        }
    };
    let service = match role {
        Some(r) => format!("confab-{}", r.name()),
        None => "confab-workers".to_string(),
    };
    // Outside the runtime: the span exporter runs (and flushes) on its own thread.
    let _telemetry = telemetry::init(&telemetry::Setup {
        log_format: &config.log_format,
        otlp_endpoint: config.otel_exporter_otlp_endpoint.as_deref(),
        service: &service,
    });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("workers: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match role {
        Some(role) => rt.block_on(run(role, config)),
        None => rt.block_on(drained(config)),
    }
}

async fn run(role: Role, config: Config) -> ExitCode {
    let cancel = CancellationToken::new();
    shutdown::cancel_on_signals(cancel.clone());
    match confab_workers::run(role, config, cancel).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "worker failed");
            ExitCode::FAILURE
        }
    }
}

/// `workers drained`: 0 when every command and job stream of the deployment is empty.
async fn drained(config: Config) -> ExitCode {
    match confab_workers::drained(config).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("workers drained: {e:#}");
            ExitCode::from(2)
        }
    }
}
