//! `confab-run` binary: parses the command line and runs [`confab_runner::app::run`].

use std::process::ExitCode;

use confab_runner::{app, cli};

fn main() -> ExitCode {
    let args = match cli::parse(std::env::args_os().skip(1)) {
        Ok(cli::Command::Run(args)) => args,
        Ok(cli::Command::Help) => {
            println!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("confab-run: {e}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    // A current-thread runtime on purpose: every child is then forked by the main thread, and
    // PR_SET_PDEATHSIG (which the kernel ties to the forking *thread*) fires only when the
    // whole runner is gone.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("confab-run: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(app::run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
