//! `loadgen`: load generator for Confab's gateway (REST + WebSocket) and workers.
//!
//! Map:
//! - `args`      — command line (`loadgen <rest|fanout|assistant> [options]`), bounds checked.
//! - `report`    — microsecond histograms, the human report and its JSON twin.
//! - `http`      — one hyper HTTP/1.1 keep-alive connection per client (no pool).
//! - `api`       — Confab REST calls used during setup (users, sessions, conversations).
//! - `ws`        — WebSocket connect/subscribe, borrowed frame parsing, send-time tags.
//! - `order`     — per-connection eventId ordering and loss checks.
//! - `sys`       — fd limit, /proc CPU and VmRSS of watched processes, Redis INFO.
//! - `rest`      — scenario 1: message sends (+ GETs) over keep-alive HTTP.
//! - `fanout`    — scenario 2: member chats, WebSocket subscribers, paced sends, delivery checks.
//! - `assistant` — scenario 3: concurrent streamed assistant answers from the mock model.
//!
//! Every scenario runs for a fixed `--duration` and stops by itself; setup phases are bounded
//! by `--setup-timeout`.

mod api;
mod args;
mod assistant;
mod fanout;
mod http;
mod order;
mod report;
mod rest;
mod sys;
mod ws;

use std::process::ExitCode;

use anyhow::{Context, Result};

use args::{Args, Command, Scenario};

fn main() -> ExitCode {
    let args = match args::parse(std::env::args().skip(1)) {
        Ok(Command::Help) => {
            print!("{}", args::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(Command::Run(a)) => a,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    ws::spread_sources(args.source_addrs);
    let nofile = sys::raise_fd_limit();
    if nofile > 0 && nofile < 1024 {
        eprintln!("loadgen: warning: only {nofile} file descriptors available");
    }
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    let report = runtime.block_on(async {
        match args.scenario {
            Scenario::Rest => rest::run(args).await,
            Scenario::Fanout => fanout::run(args).await,
            Scenario::Assistant => assistant::run(args).await,
        }
    })?;
    // Connection tasks may still be winding down; do not wait for them.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    print!("{}", report.text());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report.json())?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        println!("JSON report written to {}", path.display());
    }
    Ok(())
}
