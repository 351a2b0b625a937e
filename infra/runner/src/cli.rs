//! Command-line parsing for `confab-run` (hand-rolled: six options do not need a framework).
//!
//! ```text
//! confab-run [--gateways N] [--persistence N] [--cleanup N] [--completion N]
//!            [--redis-nodes N] [--bin-dir DIR] [--run-dir DIR]
//! ```
//!
//! Both `--opt VALUE` and `--opt=VALUE` are accepted; a repeated option keeps its last value.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::PathBuf;

/// Upper bound for every replica count: a typo such as `--gateways 100` should not fork-bomb
/// a laptop.
pub const MAX_REPLICAS: u32 = 64;

/// The usage text printed by `--help` and after a command-line error.
pub const USAGE: &str = "\
usage: confab-run [--gateways N] [--persistence N] [--cleanup N] [--completion N]
                  [--redis-nodes N] [--bin-dir DIR] [--run-dir DIR]

Runs Confab in the foreground: Redis (unless REDIS_URL is set), the local demo model
(unless OPENAI_API_KEY is set), the workers and the gateways. Ctrl-C stops everything.

options:
  --gateways N      gateway processes sharing GATEWAY_ADDR (1-64, default 1)
  --persistence N   `workers persistence` replicas (0-64, default 1)
  --cleanup N       `workers cleanup` replicas (0-64, default 1)
  --completion N    `workers completion` replicas (0-64, default 1)
  --redis-nodes N   run a local Redis Cluster of N primaries (3-8), each with one replica,
                    on ports 7000 and up, instead of one Redis (0, the default)
  --bin-dir DIR     where gateway, workers and mock-openai are
                    (default: the directory of confab-run itself)
  --run-dir DIR     state directory; Redis keeps its AOF in DIR/redis (default: .run)
  -h, --help        print this help";

/// Parsed options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub gateways: u32,
    pub persistence: u32,
    pub cleanup: u32,
    pub completion: u32,
    /// Primaries of a local Redis Cluster (0: one standalone Redis).
    pub redis_nodes: u32,
    /// `None`: the directory of the running executable.
    pub bin_dir: Option<PathBuf>,
    pub run_dir: PathBuf,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            gateways: 1,
            persistence: 1,
            cleanup: 1,
            completion: 1,
            redis_nodes: 0,
            bin_dir: None,
            run_dir: PathBuf::from(".run"),
        }
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Run(Args),
    Help,
}

/// A command-line mistake, worded for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError(pub String);

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

/// Parses the arguments after the program name.
pub fn parse<I, S>(args: I) -> Result<Command, CliError>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let mut parsed = Args::default();
    let mut args = args.into_iter().map(Into::into);
    while let Some(arg) = args.next() {
        let Some(text) = arg.to_str() else {
            return Err(CliError(format!("unexpected argument {arg:?}")));
        };
        if text == "-h" || text == "--help" {
            return Ok(Command::Help);
        }
        let (name, inline) = match text.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name, Some(OsString::from(value))),
            _ => (text, None),
        };
        if !KNOWN.contains(&name) {
            return Err(CliError(if name.starts_with('-') {
                format!("unknown option {name:?} (see --help)")
            } else {
                format!("unexpected argument {name:?} (see --help)")
            }));
        }
        let value = match inline {
            Some(value) => value,
            None => match args.next() {
                Some(value) if !looks_like_option(&value) => value,
                _ => return Err(CliError(format!("{name} needs a value"))),
            },
        };
        match name {
            "--gateways" => parsed.gateways = count(name, &value, 1)?,
            "--persistence" => parsed.persistence = count(name, &value, 0)?,
            "--cleanup" => parsed.cleanup = count(name, &value, 0)?,
            "--completion" => parsed.completion = count(name, &value, 0)?,
            "--redis-nodes" => parsed.redis_nodes = primaries(name, &value)?,
            "--bin-dir" => parsed.bin_dir = Some(dir(name, value)?),
            "--run-dir" => parsed.run_dir = dir(name, value)?,
            _ => return Err(CliError(format!("unknown option {name:?} (see --help)"))),
        }
    }
    Ok(Command::Run(parsed))
}

const KNOWN: [&str; 7] = [
    "--gateways",
    "--persistence",
    "--cleanup",
    "--completion",
    "--redis-nodes",
    "--bin-dir",
    "--run-dir",
];

fn looks_like_option(value: &OsStr) -> bool {
    value.to_str().is_some_and(|v| v.starts_with("--"))
}

fn count(name: &str, value: &OsStr, min: u32) -> Result<u32, CliError> {
    let text = value.to_string_lossy();
    let bad = || {
        CliError(format!(
            "{name} expects a whole number from {min} to {MAX_REPLICAS}, got {text:?}"
        ))
    };
    let n: u32 = text.trim().parse().map_err(|_| bad())?;
    if n < min || n > MAX_REPLICAS {
        return Err(bad());
    }
    Ok(n)
}

/// 0 (standalone) or 3..=8 cluster primaries.
fn primaries(name: &str, value: &OsStr) -> Result<u32, CliError> {
    let text = value.to_string_lossy();
    match text.trim().parse::<u32>() {
        Ok(n) if n == 0 || (3..=8).contains(&n) => Ok(n),
        _ => Err(CliError(format!(
            "{name} expects 0 (one Redis) or 3 to 8 cluster primaries, got {text:?}"
        ))),
    }
}

fn dir(name: &str, value: OsString) -> Result<PathBuf, CliError> {
    if value.is_empty() {
        return Err(CliError(format!(
            "{name} needs a directory, got an empty value"
        )));
    }
    Ok(PathBuf::from(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Args, String> {
        match parse(args.iter().copied()) {
            Ok(Command::Run(a)) => Ok(a),
            Ok(Command::Help) => Err("help".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn defaults() {
        assert_eq!(run(&[]), Ok(Args::default()));
        let d = Args::default();
        assert_eq!(
            (d.gateways, d.persistence, d.cleanup, d.completion),
            (1, 1, 1, 1)
        );
        assert_eq!(d.run_dir, PathBuf::from(".run"));
        assert_eq!(d.bin_dir, None);
    }

    #[test]
    fn makefile_form_and_equals_form() {
        let a = run(&[
            "--gateways",
            "3",
            "--persistence",
            "2",
            "--cleanup=0",
            "--completion",
            "4",
            "--bin-dir",
            "/opt/confab/bin",
            "--run-dir=/tmp/state",
        ]);
        assert_eq!(
            a,
            Ok(Args {
                gateways: 3,
                persistence: 2,
                cleanup: 0,
                completion: 4,
                redis_nodes: 0,
                bin_dir: Some(PathBuf::from("/opt/confab/bin")),
                run_dir: PathBuf::from("/tmp/state"),
            })
        );
    }

    #[test]
    fn redis_nodes_is_zero_or_three_to_eight() {
        assert_eq!(run(&["--redis-nodes", "3"]).map(|a| a.redis_nodes), Ok(3));
        assert_eq!(run(&["--redis-nodes=0"]).map(|a| a.redis_nodes), Ok(0));
        for bad in ["1", "2", "9", "many"] {
            let err = run(&["--redis-nodes", bad]).err().unwrap_or_default();
            assert!(err.contains("--redis-nodes"), "{bad}: {err}");
        }
    }

    #[test]
    fn last_value_wins() {
        assert_eq!(
            run(&["--gateways", "2", "--gateways", "5"]).map(|a| a.gateways),
            Ok(5)
        );
    }

    #[test]
    fn help() {
        assert_eq!(run(&["--help"]), Err("help".into()));
        assert_eq!(run(&["--gateways", "2", "-h"]), Err("help".into()));
    }

    #[test]
    fn bad_numbers_are_explained() {
        let err = run(&["--gateways", "many"]).err().unwrap_or_default();
        assert_eq!(
            err,
            "--gateways expects a whole number from 1 to 64, got \"many\""
        );
        let err = run(&["--completion=-1"]).err().unwrap_or_default();
        assert!(
            err.contains("--completion expects a whole number from 0 to 64"),
            "{err}"
        );
        let err = run(&["--persistence", "65"]).err().unwrap_or_default();
        assert!(err.contains("from 0 to 64, got \"65\""), "{err}");
        let err = run(&["--gateways", "0"]).err().unwrap_or_default();
        assert!(
            err.contains("--gateways expects a whole number from 1 to 64"),
            "{err}"
        );
        let err = run(&["--cleanup", "1.5"]).err().unwrap_or_default();
        assert!(err.contains("got \"1.5\""), "{err}");
    }

    #[test]
    fn missing_values_are_explained() {
        // `make up GATEWAYS=` expands to `--gateways --persistence 1 ...`.
        assert_eq!(
            run(&["--gateways", "--persistence", "1"]),
            Err("--gateways needs a value".into())
        );
        assert_eq!(run(&["--cleanup"]), Err("--cleanup needs a value".into()));
        assert_eq!(
            run(&["--run-dir="]),
            Err("--run-dir needs a directory, got an empty value".into())
        );
    }

    #[test]
    fn unknown_arguments_are_rejected() {
        assert_eq!(
            run(&["--gateway", "2"]),
            Err("unknown option \"--gateway\" (see --help)".into())
        );
        assert_eq!(
            run(&["up"]),
            Err("unexpected argument \"up\" (see --help)".into())
        );
        assert_eq!(
            run(&["-g", "2"]),
            Err("unknown option \"-g\" (see --help)".into())
        );
    }
}
