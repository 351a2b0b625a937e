//! `confab-run`: runs all of Confab in the foreground (`make up`).
//!
//! Map of the crate:
//!
//! - [`cli`]: command-line options (`--gateways N`, `--persistence N`, …, `--bin-dir`,
//!   `--run-dir`).
//! - [`app`]: the sequence — plan what to start, check binaries and ports, start Redis →
//!   demo model → workers → gateways, print `Confab is up`, stop everything on a signal.
//! - [`redis`]: the runner's own `redis-server` (port 6380, AOF in `<run-dir>/redis`), PING
//!   readiness over raw TCP.
//! - [`assistant`]: real OpenAI-compatible API (`OPENAI_API_KEY` set) or the local demo
//!   model (`mock-openai`), and the banner saying which.
//! - [`supervisor`]: child processes in their own process groups, output piping, restart with
//!   back-off, staged graceful stop, and the guarantees that no child outlives the runner.
//! - [`output`]: `name | line` prefixing, one colour per process on a terminal.
//! - [`net`]: TCP "is it listening" helpers.
//! - `sys`: the only `unsafe` code (`PR_SET_PDEATHSIG`, `kill(-pgid)`).

pub mod app;
pub mod assistant;
pub mod cli;
pub mod net;
pub mod output;
pub mod redis;
pub mod supervisor;
mod sys;
