//! Command-line parsing: `loadgen <scenario> [--flag value | --flag=value]...`.
//!
//! Hand-rolled (no CLI crate) so the rules are plain and unit-tested: every count and rate is
//! bounded, every run has a fixed duration, and unknown flags are errors.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

pub const USAGE: &str = "\
usage: loadgen <rest|fanout|assistant> [options]

common:
  --url URL             gateway base URL, repeatable (default http://127.0.0.1:3000);
                        clients are spread round-robin over the URLs
  --duration D          measured phase length: 10s, 500ms, 2m, 1h or plain seconds (default 10s)
  --threads N           tokio worker threads of the generator (default 1)
  --json FILE           also write the report as JSON to FILE
  --redis-url URL       read Redis INFO memory/cpu before and after (e.g. redis://127.0.0.1:6380)
  --gateway-pid PID     report CPU and VmRSS of this gateway process (repeatable)
  --worker-pid PID      report CPU and VmRSS of this worker process (repeatable)
  --redis-pid PID       report CPU and VmRSS of this redis-server process (repeatable)
  --setup-timeout D     bound on each setup phase (default 120s)
  --source-addrs N      bind WebSocket connections round-robin to N source addresses
                        127.0.0.1, 127.0.0.2, ... (loopback targets only; default 1: the
                        kernel's choice). One address has ~28,000 ephemeral ports.
rest:
  --clients N           concurrent keep-alive HTTP clients (default 64)
  --content-bytes N     message content size, rest and fanout (default 100)
  --get-every N         every Nth request is a GET of the conversation (default 20, 0 = never)
  --max-messages N      messages per conversation before a new one is created (default 500)
fanout:
  --connections N       WebSocket connections (default 2000)
  --members N           connections per chat; chats = ceil(connections / members) (default 10)
  --users N             users to create and sign in; connections reuse them (default 200)
  --rate R              messages per second in total over all chats, 0 = hold only (default 4000)
  --connect-batch N     connections opened concurrently while connecting (default 250)
  --drain D             after the send phase, wait this long at most for deliveries (default 5s)
  --setup-url URL       create users, sessions and chats through this gateway instead (repeatable);
                        keeps argon2 hashing out of the measured gateways' memory
  --user-prefix P       username prefix of the load users (default lg)
  --password PW         password of the load users (default loadgen-password)
  --churn R             during the send phase, R extra WebSockets per second connect, subscribe,
                        stay --churn-hold and close (half with a close frame, half by dropping
                        the TCP connection) (default 0)
  --churn-hold D        how long a churn connection stays (default 1s)
  --sample D            report the gateways' RSS and open fds, the send rate and the delivery
                        p99 every D of the send phase, and whether they stayed flat (default off)
  --warmup D            samples in the first D are not judged for flatness (default 60s)
assistant:
  --streams N           concurrent assistant answers (default 200)
  --tps N               tokens per second asked of the mock model (default 50)
  --tokens N            tokens per answer asked of the mock model (default 100)
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Rest,
    Fanout,
    Assistant,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Args {
    pub scenario: Scenario,
    pub urls: Vec<String>,
    pub setup_urls: Vec<String>,
    pub duration: Duration,
    pub threads: usize,
    pub json: Option<PathBuf>,
    pub redis_url: Option<String>,
    pub gateway_pids: Vec<u32>,
    pub worker_pids: Vec<u32>,
    pub redis_pids: Vec<u32>,
    pub setup_timeout: Duration,
    pub clients: usize,
    pub content_bytes: usize,
    pub get_every: u64,
    pub max_messages: u64,
    pub connections: usize,
    pub members: usize,
    pub users: usize,
    pub rate: f64,
    pub connect_batch: usize,
    pub drain: Duration,
    pub user_prefix: String,
    pub password: String,
    pub streams: usize,
    pub tps: u32,
    pub tokens: u32,
    pub source_addrs: u32,
    pub churn: f64,
    pub churn_hold: Duration,
    pub sample: Option<Duration>,
    pub warmup: Duration,
}

impl Args {
    pub fn defaults(scenario: Scenario) -> Self {
        Args {
            scenario,
            urls: vec!["http://127.0.0.1:3000".into()],
            setup_urls: Vec::new(),
            duration: Duration::from_secs(10),
            threads: 1,
            json: None,
            redis_url: None,
            gateway_pids: Vec::new(),
            worker_pids: Vec::new(),
            redis_pids: Vec::new(),
            setup_timeout: Duration::from_secs(120),
            clients: 64,
            content_bytes: 100,
            get_every: 20,
            max_messages: 500,
            connections: 2000,
            members: 10,
            users: 200,
            rate: 4000.0,
            connect_batch: 250,
            drain: Duration::from_secs(5),
            user_prefix: "lg".into(),
            password: "loadgen-password".into(),
            streams: 200,
            tps: 50,
            tokens: 100,
            source_addrs: 1,
            churn: 0.0,
            churn_hold: Duration::from_secs(1),
            sample: None,
            warmup: Duration::from_secs(60),
        }
    }
}

/// What the command line asks for.
#[derive(Debug, PartialEq)]
pub enum Command {
    Help,
    Run(Box<Args>),
}

/// Parses a duration: `10s`, `1.5s`, `500ms`, `2m`, or a plain number of seconds.
pub fn parse_duration(raw: &str) -> Result<Duration> {
    let s = raw.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| anyhow!("invalid duration {raw:?} (try 10s, 500ms, 2m)"))?;
    let secs = v * scale;
    if !secs.is_finite() || secs <= 0.0 {
        bail!("duration {raw:?} must be positive");
    }
    Ok(Duration::from_secs_f64(secs))
}

fn num<T>(flag: &str, raw: &str, min: T, max: T) -> Result<T>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let v: T = raw
        .trim()
        .parse()
        .map_err(|_| anyhow!("{flag}: {raw:?} is not a valid number"))?;
    if v < min || v > max {
        bail!("{flag}: {v} is out of range {min}..={max}");
    }
    Ok(v)
}

fn bounded(flag: &str, d: Duration, max: Duration) -> Result<Duration> {
    if d > max {
        bail!("{flag}: at most {}s", max.as_secs());
    }
    Ok(d)
}

fn check_url(raw: &str) -> Result<String> {
    crate::http::Target::parse(raw).with_context(|| format!("--url {raw:?}"))?;
    Ok(raw.to_string())
}

/// Parses the arguments after the program name.
pub fn parse<I, S>(argv: I) -> Result<Command>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let argv: Vec<String> = argv.into_iter().map(Into::into).collect();
    let Some(first) = argv.first() else {
        bail!("missing scenario\n\n{USAGE}");
    };
    let scenario = match first.as_str() {
        "-h" | "--help" | "help" => return Ok(Command::Help),
        "rest" => Scenario::Rest,
        "fanout" => Scenario::Fanout,
        "assistant" => Scenario::Assistant,
        other => bail!("unknown scenario {other:?}\n\n{USAGE}"),
    };
    let mut a = Args::defaults(scenario);
    let mut urls = Vec::new();
    let mut rest = argv[1..].iter();
    while let Some(arg) = rest.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(Command::Help);
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        if !flag.starts_with("--") {
            bail!("unexpected argument {arg:?}");
        }
        let value = match inline {
            Some(v) => v,
            None => rest
                .next()
                .cloned()
                .ok_or_else(|| anyhow!("{flag} needs a value"))?,
        };
        let v = value.as_str();
        const HOUR: Duration = Duration::from_secs(3600);
        match flag {
            "--url" => urls.push(check_url(v)?),
            "--setup-url" => a.setup_urls.push(check_url(v)?),
            "--duration" => a.duration = bounded(flag, parse_duration(v)?, HOUR)?,
            "--threads" => a.threads = num(flag, v, 1, 64)?,
            "--json" => a.json = Some(PathBuf::from(v)),
            "--redis-url" => a.redis_url = Some(v.to_string()),
            "--gateway-pid" => a.gateway_pids.push(num(flag, v, 1, u32::MAX)?),
            "--worker-pid" => a.worker_pids.push(num(flag, v, 1, u32::MAX)?),
            "--redis-pid" => a.redis_pids.push(num(flag, v, 1, u32::MAX)?),
            "--setup-timeout" => a.setup_timeout = bounded(flag, parse_duration(v)?, HOUR)?,
            "--clients" => a.clients = num(flag, v, 1, 10_000)?,
            "--content-bytes" => a.content_bytes = num(flag, v, 1, 16 * 1024)?,
            "--get-every" => a.get_every = num(flag, v, 0, 1_000_000)?,
            "--max-messages" => a.max_messages = num(flag, v, 1, 10_000)?,
            "--connections" => a.connections = num(flag, v, 1, 200_000)?,
            "--members" => a.members = num(flag, v, 1, 256)?,
            "--users" => a.users = num(flag, v, 1, 10_000)?,
            "--rate" => a.rate = num(flag, v, 0.0, 1_000_000.0)?,
            "--connect-batch" => a.connect_batch = num(flag, v, 1, 10_000)?,
            "--drain" => a.drain = bounded(flag, parse_duration(v)?, Duration::from_secs(600))?,
            "--user-prefix" => {
                if v.is_empty()
                    || v.len() > 16
                    || !v
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                {
                    bail!("--user-prefix: 1 to 16 lowercase letters or digits");
                }
                a.user_prefix = v.to_string();
            }
            "--password" => {
                if v.chars().count() < 8 {
                    bail!("--password: at least 8 characters");
                }
                a.password = v.to_string();
            }
            "--streams" => a.streams = num(flag, v, 1, 10_000)?,
            "--tps" => a.tps = num(flag, v, 0, 100_000)?,
            "--tokens" => a.tokens = num(flag, v, 1, 100_000)?,
            "--source-addrs" => a.source_addrs = num(flag, v, 1, 65_536)?,
            "--churn" => a.churn = num(flag, v, 0.0, 10_000.0)?,
            "--churn-hold" => {
                a.churn_hold = bounded(flag, parse_duration(v)?, Duration::from_secs(60))?
            }
            "--sample" => a.sample = Some(bounded(flag, parse_duration(v)?, HOUR)?),
            "--warmup" => a.warmup = bounded(flag, parse_duration(v)?, HOUR)?,
            _ => bail!("unknown option {flag}\n\n{USAGE}"),
        }
    }
    if !urls.is_empty() {
        a.urls = urls;
    }
    if a.scenario == Scenario::Fanout && a.users < a.members.min(a.connections) {
        bail!(
            "--users ({}) must be at least --members ({}): a chat's members are distinct users",
            a.users,
            a.members
        );
    }
    Ok(Command::Run(Box::new(a)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(argv: &[&str]) -> Args {
        match parse(argv.iter().copied()) {
            Ok(Command::Run(a)) => *a,
            other => panic!("expected Run, got {other:?}"),
        }
    }

    fn err(argv: &[&str]) -> String {
        match parse(argv.iter().copied()) {
            Err(e) => e.to_string(),
            Ok(c) => panic!("expected an error, got {c:?}"),
        }
    }

    #[test]
    fn defaults_per_brief() {
        let a = run(&["rest"]);
        assert_eq!(a.scenario, Scenario::Rest);
        assert_eq!(a.urls, vec!["http://127.0.0.1:3000".to_string()]);
        assert_eq!(a.duration, Duration::from_secs(10));
        assert_eq!(
            (a.clients, a.threads, a.get_every, a.max_messages),
            (64, 1, 20, 500)
        );
        let f = run(&["fanout"]);
        assert_eq!((f.connections, f.members, f.users), (2000, 10, 200));
        assert_eq!(f.rate, 4000.0);
        assert_eq!(run(&["assistant"]).streams, 200);
    }

    #[test]
    fn flags_in_both_forms_and_repeats() {
        let a = run(&[
            "fanout",
            "--url",
            "http://127.0.0.1:3991",
            "--url=http://127.0.0.1:3992/",
            "--connections=10000",
            "--rate",
            "0",
            "--duration",
            "1.5s",
            "--gateway-pid",
            "12",
            "--gateway-pid=13",
            "--json",
            "/tmp/r.json",
        ]);
        assert_eq!(a.urls.len(), 2);
        assert_eq!(a.urls[1], "http://127.0.0.1:3992/");
        assert_eq!(a.connections, 10_000);
        assert_eq!(a.rate, 0.0);
        assert_eq!(a.duration, Duration::from_millis(1500));
        assert_eq!(a.gateway_pids, vec![12, 13]);
        assert_eq!(a.json, Some(PathBuf::from("/tmp/r.json")));
    }

    #[test]
    fn soak_flags() {
        let a = run(&[
            "fanout",
            "--connections=100000",
            "--source-addrs=16",
            "--churn",
            "500",
            "--churn-hold=2s",
            "--sample",
            "10s",
            "--warmup",
            "1m",
        ]);
        assert_eq!((a.connections, a.source_addrs), (100_000, 16));
        assert_eq!(a.churn, 500.0);
        assert_eq!(a.churn_hold, Duration::from_secs(2));
        assert_eq!(a.sample, Some(Duration::from_secs(10)));
        assert_eq!(a.warmup, Duration::from_secs(60));
        let d = run(&["fanout"]);
        assert_eq!((d.source_addrs, d.churn, d.sample), (1, 0.0, None));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10").ok(), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("10s").ok(), Some(Duration::from_secs(10)));
        assert_eq!(
            parse_duration("250ms").ok(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_duration("2m").ok(), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h").ok(), Some(Duration::from_secs(3600)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("ten").is_err());
        assert!(err(&["rest", "--duration", "2h"]).contains("at most"));
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(err(&[]).contains("missing scenario"));
        assert!(err(&["bench"]).contains("unknown scenario"));
        assert!(err(&["rest", "--nope", "1"]).contains("unknown option --nope"));
        assert!(err(&["rest", "--clients"]).contains("needs a value"));
        assert!(err(&["rest", "--clients", "0"]).contains("out of range"));
        assert!(err(&["rest", "--clients", "many"]).contains("not a valid number"));
        assert!(err(&["rest", "--url", "https://x"]).contains("--url"));
        assert!(err(&["rest", "stray"]).contains("unexpected argument"));
        assert!(err(&["fanout", "--users", "5", "--members", "10"]).contains("--users"));
        assert!(err(&["fanout", "--password", "short"]).contains("8 characters"));
        assert!(err(&["fanout", "--user-prefix", "A!"]).contains("--user-prefix"));
        assert!(err(&["fanout", "--source-addrs", "0"]).contains("out of range"));
        assert!(err(&["fanout", "--churn", "-1"]).contains("out of range"));
        assert!(err(&["fanout", "--churn-hold", "2m"]).contains("at most"));
    }

    #[test]
    fn help() {
        assert_eq!(parse(["--help"]).ok(), Some(Command::Help));
        assert_eq!(parse(["rest", "-h"]).ok(), Some(Command::Help));
    }
}
