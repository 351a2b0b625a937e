//! The `confab-run` sequence: plan → pre-flight checks → start in order → wait → stop.
//!
//! Start order: redis (until it answers PING) → mock-openai → workers → gateways, then the
//! `Confab is up` line once the gateways accept connections. A signal (SIGINT, SIGTERM,
//! SIGHUP), the death of the runner's Redis or a start-up error leads to the graceful stop of
//! [`Supervisor::shutdown`]; a second signal kills everything at once.

use std::convert::Infallible;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use tokio::signal::unix::{signal, SignalKind};

use crate::assistant::Assistant;
use crate::cli::Args;
use crate::net;
use crate::output::Output;
use crate::redis::{self, LocalRedis};
use crate::supervisor::{ChildSpec, Stage, Supervisor, SupervisorOptions};

/// `GATEWAY_ADDR` default (the same as the gateway's own).
pub const DEFAULT_GATEWAY_ADDR: &str = "127.0.0.1:3000";

/// `METRICS_PORT_BASE` default: worker *k* (from 0, in start order) serves `/metrics`,
/// `/healthz` and `/readyz` on `127.0.0.1:<base + k>`; 0 turns the worker endpoints off.
pub const DEFAULT_METRICS_PORT_BASE: u16 = 9101;

/// The worker roles, in start order.
pub const WORKER_ROLES: [&str; 3] = ["persistence", "cleanup", "completion"];

/// Everything `confab-run` will start, computed before anything starts.
#[derive(Clone, Debug)]
pub struct Plan {
    /// `None`: `REDIS_URL` is set and used as it is.
    pub local_redis: Option<LocalRedis>,
    /// `REDIS_URL` from the environment, when set.
    pub external_redis: Option<String>,
    pub assistant: Assistant,
    pub gateway_addr: SocketAddr,
    pub mock: Option<ChildSpec>,
    pub workers: Vec<ChildSpec>,
    pub gateways: Vec<ChildSpec>,
    /// Each worker's `METRICS_ADDR`, by child name.
    pub metrics: Vec<(String, SocketAddr)>,
}

impl Plan {
    /// Builds the plan from the options and environment lookups (empty values count as
    /// unset). Fails when `redis-server` is needed but not on `PATH`, or on a bad address.
    pub fn build(
        args: &Args,
        bin_dir: &Path,
        lookup: &dyn Fn(&str) -> Option<OsString>,
    ) -> anyhow::Result<Self> {
        let text = |k: &str| {
            lookup(k)
                .and_then(|v| v.into_string().ok())
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let external_redis = text("REDIS_URL");
        let local_redis = match external_redis {
            Some(_) => None,
            None => {
                let redis = LocalRedis::locate(lookup("PATH").as_deref(), &args.run_dir)?;
                Some(match args.redis_nodes {
                    0 => redis,
                    n => redis.as_cluster(n as u16, &args.run_dir),
                })
            }
        };
        let assistant = Assistant::from_lookup(text)?;
        let raw_addr = text("GATEWAY_ADDR").unwrap_or_else(|| DEFAULT_GATEWAY_ADDR.to_string());
        let gateway_addr: SocketAddr = raw_addr.parse().map_err(|_| {
            anyhow!(
                "GATEWAY_ADDR must be an address such as {DEFAULT_GATEWAY_ADDR} (got {raw_addr:?})"
            )
        })?;

        let mut common: Vec<(String, String)> = Vec::new();
        if let Some(redis) = &local_redis {
            common.extend(redis.child_env());
        }
        common.extend(assistant.child_env());

        let mock = match &assistant {
            Assistant::Demo(demo) => Some(
                ChildSpec::new("mock-openai", bin_dir.join("mock-openai"))
                    .env("MOCK_OPENAI_ADDR", demo.addr.to_string())
                    .stage(Stage::Assistant),
            ),
            Assistant::Real { .. } => None,
        };

        let metrics_base: u16 = match text("METRICS_PORT_BASE") {
            None => DEFAULT_METRICS_PORT_BASE,
            Some(v) => v.parse().map_err(|_| {
                anyhow!("METRICS_PORT_BASE must be a port number, or 0 for none (got {v:?})")
            })?,
        };
        let mut metrics = Vec::new();
        let worker_name = text("WORKER_NAME");
        let mut workers = Vec::new();
        for (role, count) in WORKER_ROLES.into_iter().zip(worker_counts(args)) {
            for i in 1..=count {
                let mut spec =
                    ChildSpec::new(format!("{role}-{i}"), bin_dir.join("workers")).arg(role);
                spec = with_env(spec, &common);
                if let Some(name) = replica_value(worker_name.as_deref(), count, i) {
                    spec = spec.env("WORKER_NAME", name);
                }
                if metrics_base != 0 {
                    let port =
                        u16::try_from(usize::from(metrics_base) + workers.len()).map_err(|_| {
                            anyhow!(
                                "METRICS_PORT_BASE {metrics_base} leaves no port for every worker"
                            )
                        })?;
                    let addr = SocketAddr::from(([127, 0, 0, 1], port));
                    spec = spec.env("METRICS_ADDR", addr.to_string());
                    metrics.push((spec.name.clone(), addr));
                }
                workers.push(spec);
            }
        }

        let gateway_id = text("GATEWAY_ID");
        let mut gateways = Vec::new();
        for i in 1..=args.gateways {
            let mut spec = ChildSpec::new(format!("gateway-{i}"), bin_dir.join("gateway"))
                .env("GATEWAY_ADDR", gateway_addr.to_string());
            spec = with_env(spec, &common);
            if let Some(id) = replica_value(gateway_id.as_deref(), args.gateways, i) {
                spec = spec.env("GATEWAY_ID", id);
            }
            gateways.push(spec);
        }

        Ok(Self {
            local_redis,
            external_redis,
            assistant,
            gateway_addr,
            mock,
            workers,
            gateways,
            metrics,
        })
    }

    /// Adds `key=value` to every child's environment.
    pub fn set_env_all(&mut self, key: &str, value: &str) {
        let specs = self
            .mock
            .iter_mut()
            .chain(&mut self.workers)
            .chain(&mut self.gateways);
        for spec in specs {
            spec.env.push((key.into(), value.into()));
        }
    }

    /// Process names in start order.
    pub fn names(&self) -> Vec<&str> {
        let redis = self.local_redis.as_ref().map(|_| "redis");
        redis
            .into_iter()
            .chain(self.mock.iter().map(|s| s.name.as_str()))
            .chain(self.workers.iter().map(|s| s.name.as_str()))
            .chain(self.gateways.iter().map(|s| s.name.as_str()))
            .collect()
    }

    /// Every program the plan runs from the bin dir must exist.
    pub fn check_binaries(&self) -> anyhow::Result<()> {
        let specs = self.mock.iter().chain(&self.workers).chain(&self.gateways);
        let mut checked: Vec<&PathBuf> = Vec::new();
        for spec in specs {
            if checked.contains(&&spec.program) {
                continue;
            }
            checked.push(&spec.program);
            if !spec.program.is_file() {
                let name = spec
                    .program
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let dir = spec
                    .program
                    .parent()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default();
                bail!(
                    "cannot find `{name}` in {dir}: build Confab first (`cargo build --release` \
                     for target/release), or pass --bin-dir DIR with gateway, workers and \
                     mock-openai in it"
                );
            }
        }
        Ok(())
    }

    /// Refuses to start when a port the plan needs is already taken, with advice.
    pub async fn preflight(&self) -> anyhow::Result<()> {
        if let Some(redis) = &self.local_redis {
            for port in redis.ports() {
                redis::ensure_port_free(port).await?;
            }
        }
        if let Assistant::Demo(demo) = &self.assistant {
            if net::accepts(demo.addr, Duration::from_secs(1)).await {
                bail!(
                    "something is already listening on {} (MOCK_OPENAI_ADDR), perhaps a \
                     mock-openai left over from an earlier run; stop it or set MOCK_OPENAI_ADDR \
                     to a free address",
                    demo.addr
                );
            }
        }
        for (name, addr) in &self.metrics {
            if net::accepts(*addr, Duration::from_secs(1)).await {
                bail!(
                    "something is already listening on {addr}, the METRICS_ADDR of {name}; stop \
                     it or set METRICS_PORT_BASE to a free range (0: no worker metrics)"
                );
            }
        }
        if !self.gateways.is_empty()
            && net::accepts(self.gateway_addr, Duration::from_secs(1)).await
        {
            bail!(
                "something is already listening on {} (GATEWAY_ADDR), perhaps a gateway left \
                 over from an earlier run; stop it or set GATEWAY_ADDR to a free address",
                self.gateway_addr
            );
        }
        Ok(())
    }

    /// Starts everything in order, prints the `Confab is up` line, then waits forever.
    pub async fn start(&self, sup: &Supervisor) -> anyhow::Result<Infallible> {
        let out = sup.output();
        match (&self.local_redis, &self.external_redis) {
            (Some(redis), _) => {
                let what = match redis.cluster {
                    None => format!("redis-server on 127.0.0.1:{}", redis.port),
                    Some(n) => format!(
                        "a Redis Cluster of {n} primaries with one replica each on 127.0.0.1:{}-{}",
                        redis.port,
                        redis.port + 2 * n - 1
                    ),
                };
                out.runner(&format!(
                    "starting {what} (data in {})",
                    redis.dir.display()
                ));
                redis.start(sup).await?;
                let cluster = if redis.cluster.is_some() {
                    " REDIS_CLUSTER=true"
                } else {
                    ""
                };
                out.runner(&format!(
                    "redis is ready: REDIS_URL={}{cluster}",
                    redis.url()
                ));
            }
            (None, Some(url)) => out.runner(&format!(
                "using the Redis at REDIS_URL={} (not starting one)",
                redact_url(url)
            )),
            (None, None) => {}
        }
        for line in self.assistant.banner() {
            out.runner(&line);
        }
        if let Some(mock) = &self.mock {
            sup.spawn(mock.clone())?;
            if let Assistant::Demo(demo) = &self.assistant {
                if !net::wait_accepting(demo.addr, Duration::from_secs(10)).await {
                    out.runner(&format!(
                        "mock-openai is not accepting connections on {} yet; see its output above",
                        demo.addr
                    ));
                }
            }
        }
        for (role, count) in WORKER_ROLES.into_iter().zip(worker_counts_of(self)) {
            if count == 0 {
                out.runner(&format!("note: no {role} workers (--{role} 0)"));
            }
        }
        for spec in self.workers.iter().chain(&self.gateways) {
            sup.spawn(spec.clone())?;
        }
        let shown = net::connectable(self.gateway_addr);
        if !net::wait_accepting(self.gateway_addr, Duration::from_secs(20)).await {
            out.runner(&format!(
                "the gateways are not accepting connections on {shown} yet; still waiting (see \
                 their output above)"
            ));
            while !net::wait_accepting(self.gateway_addr, Duration::from_secs(3600)).await {}
        }
        out.runner(&format!(
            "metrics: gateways http://{shown}/metrics (API port)"
        ));
        for (name, addr) in &self.metrics {
            out.runner(&format!(
                "metrics: {name} http://{addr}/metrics  (/healthz, /readyz)"
            ));
        }
        out.headline(&format!(
            "Confab is up: http://{shown}/  (Ctrl-C stops everything)"
        ));
        std::future::pending().await
    }
}

fn worker_counts(args: &Args) -> [u32; 3] {
    [args.persistence, args.cleanup, args.completion]
}

fn worker_counts_of(plan: &Plan) -> [usize; 3] {
    WORKER_ROLES.map(|role| {
        plan.workers
            .iter()
            .filter(|w| w.args.first().is_some_and(|a| a == role))
            .count()
    })
}

fn with_env(mut spec: ChildSpec, env: &[(String, String)]) -> ChildSpec {
    for (k, v) in env {
        spec = spec.env(k, v);
    }
    spec
}

/// A user-chosen `WORKER_NAME`/`GATEWAY_ID` must stay unique across replicas: `name-2`.
fn replica_value(base: Option<&str>, count: u32, i: u32) -> Option<String> {
    let base = base?;
    Some(if count > 1 {
        format!("{base}-{i}")
    } else {
        base.to_string()
    })
}

/// `redis://:pw@host` → `redis://***@host`.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// SIGINT, SIGTERM and SIGHUP.
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn new() -> anyhow::Result<Self> {
        let install = |kind: SignalKind, name: &str| {
            signal(kind).with_context(|| format!("cannot handle {name}"))
        };
        Ok(Self {
            int: install(SignalKind::interrupt(), "SIGINT")?,
            term: install(SignalKind::terminate(), "SIGTERM")?,
            hup: install(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// The name of the next signal received.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            Some(()) = self.int.recv() => "SIGINT",
            Some(()) = self.term.recv() => "SIGTERM",
            Some(()) = self.hup.recv() => "SIGHUP",
            else => std::future::pending().await,
        }
    }
}

enum Outcome {
    Signal(&'static str),
    Fatal(String),
    Failed(anyhow::Error),
}

/// The directory of the running executable (where cargo puts the other binaries too).
pub fn own_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the confab-run executable")?;
    exe.parent()
        .map(Path::to_path_buf)
        .context("the confab-run executable has no parent directory")
}

/// Runs Confab until a signal (exit 0 after a clean stop) or a failure (an error).
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => own_dir()?,
    };
    let mut plan = Plan::build(&args, &bin_dir, &|k| std::env::var_os(k))?;
    plan.check_binaries()?;
    plan.preflight().await?;

    let output = Output::stdout(plan.names());
    if !output.color() && std::env::var_os("NO_COLOR").is_none() {
        // Output goes to a file or pipe: ask the children (tracing) for plain text too.
        plan.set_env_all("NO_COLOR", "1");
    }
    let sup = Supervisor::new(output.clone(), SupervisorOptions::default());
    let mut signals = Signals::new()?;

    let outcome = tokio::select! {
        sig = signals.recv() => Outcome::Signal(sig),
        reason = sup.fatal() => Outcome::Fatal(reason),
        result = plan.start(&sup) => match result {
            Ok(never) => match never {},
            Err(e) => Outcome::Failed(e),
        },
    };
    match &outcome {
        Outcome::Signal(sig) => output.runner(&format!(
            "{sig} received: stopping everything (Ctrl-C again to kill at once)"
        )),
        Outcome::Fatal(reason) => output.runner(&format!("{reason}: stopping everything")),
        Outcome::Failed(_) => output.runner("start-up failed: stopping everything"),
    }

    let shutdown = sup.shutdown();
    tokio::pin!(shutdown);
    let forced = tokio::select! {
        () = &mut shutdown => false,
        sig = signals.recv() => {
            output.runner(&format!("{sig} received again: killing everything now"));
            sup.kill_now();
            shutdown.await;
            true
        }
    };

    match outcome {
        Outcome::Signal(_) if !forced => {
            output.runner("everything stopped");
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Signal(_) => Ok(ExitCode::FAILURE),
        Outcome::Fatal(reason) => Err(anyhow!(reason)),
        Outcome::Failed(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(spec: &ChildSpec, key: &str) -> Option<String> {
        spec.env
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.to_string_lossy().into_owned())
    }

    fn plan(args: &Args, pairs: &[(&str, &str)]) -> anyhow::Result<Plan> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        Plan::build(args, Path::new("/opt/confab"), &|k| map.get(k).cloned())
    }

    #[test]
    fn default_plan_starts_redis_and_the_demo_model() -> anyhow::Result<()> {
        let p = plan(&Args::default(), &[("PATH", "/usr/bin:/bin")])?;
        assert_eq!(
            p.names(),
            [
                "redis",
                "mock-openai",
                "persistence-1",
                "cleanup-1",
                "completion-1",
                "gateway-1"
            ]
        );
        let redis = p.local_redis.as_ref().map(|r| (r.port, r.dir.clone()));
        assert_eq!(redis, Some((6380, PathBuf::from(".run/redis"))));
        let completion = &p.workers[2];
        assert_eq!(completion.program, PathBuf::from("/opt/confab/workers"));
        assert_eq!(completion.args, [OsString::from("completion")]);
        assert_eq!(
            env_of(completion, "REDIS_URL").as_deref(),
            Some("redis://127.0.0.1:6380")
        );
        assert_eq!(
            env_of(completion, "OPENAI_BASE_URL").as_deref(),
            Some("http://127.0.0.1:8089/v1")
        );
        assert_eq!(
            env_of(completion, "OPENAI_API_KEY").as_deref(),
            Some("local-demo")
        );
        let mock = p
            .mock
            .as_ref()
            .map(|m| (m.program.clone(), env_of(m, "MOCK_OPENAI_ADDR")));
        assert_eq!(
            mock,
            Some((
                PathBuf::from("/opt/confab/mock-openai"),
                Some("127.0.0.1:8089".into())
            ))
        );
        assert_eq!(
            env_of(&p.gateways[0], "GATEWAY_ADDR").as_deref(),
            Some("127.0.0.1:3000")
        );
        Ok(())
    }

    #[test]
    fn every_worker_gets_its_own_metrics_port() -> anyhow::Result<()> {
        let args = Args {
            gateways: 1,
            persistence: 2,
            cleanup: 1,
            completion: 1,
            ..Args::default()
        };
        let p = plan(
            &args,
            &[("PATH", "/nonexistent"), ("REDIS_URL", "redis://h")],
        )?;
        let addrs: Vec<Option<String>> = p
            .workers
            .iter()
            .map(|w| env_of(w, "METRICS_ADDR"))
            .collect();
        assert_eq!(
            addrs,
            ["9101", "9102", "9103", "9104"].map(|port| Some(format!("127.0.0.1:{port}")))
        );
        assert_eq!(p.metrics.len(), 4);
        assert_eq!(env_of(&p.gateways[0], "METRICS_ADDR"), None);

        let off = plan(
            &args,
            &[
                ("PATH", "/nonexistent"),
                ("REDIS_URL", "redis://h"),
                ("METRICS_PORT_BASE", "0"),
            ],
        )?;
        assert!(off.metrics.is_empty());
        assert!(off
            .workers
            .iter()
            .all(|w| env_of(w, "METRICS_ADDR").is_none()));
        let bad = plan(
            &args,
            &[
                ("PATH", "/nonexistent"),
                ("REDIS_URL", "redis://h"),
                ("METRICS_PORT_BASE", "x"),
            ],
        );
        assert!(format!("{:?}", bad.err()).contains("METRICS_PORT_BASE"));
        Ok(())
    }

    #[test]
    fn redis_url_and_key_mean_nothing_extra_is_started() -> anyhow::Result<()> {
        let args = Args {
            gateways: 2,
            persistence: 0,
            cleanup: 2,
            completion: 1,
            ..Args::default()
        };
        let p = plan(
            &args,
            &[
                ("PATH", "/nonexistent"),
                ("REDIS_URL", "redis://10.0.0.5:6379"),
                ("OPENAI_API_KEY", "sk-secret"),
                ("GATEWAY_ADDR", "0.0.0.0:4000"),
                ("GATEWAY_ID", "gw"),
                ("WORKER_NAME", "w"),
            ],
        )?;
        assert_eq!(
            p.names(),
            [
                "cleanup-1",
                "cleanup-2",
                "completion-1",
                "gateway-1",
                "gateway-2"
            ]
        );
        assert!(p.local_redis.is_none() && p.mock.is_none());
        for spec in p.workers.iter().chain(&p.gateways) {
            assert_eq!(env_of(spec, "REDIS_URL"), None, "inherited, not overridden");
            assert_eq!(
                env_of(spec, "OPENAI_API_KEY"),
                None,
                "inherited, not overridden"
            );
        }
        assert_eq!(env_of(&p.workers[1], "WORKER_NAME").as_deref(), Some("w-2"));
        assert_eq!(env_of(&p.workers[2], "WORKER_NAME").as_deref(), Some("w"));
        assert_eq!(
            env_of(&p.gateways[1], "GATEWAY_ID").as_deref(),
            Some("gw-2")
        );
        Ok(())
    }

    #[test]
    fn missing_redis_server_gives_the_install_hint() {
        let err = plan(&Args::default(), &[("PATH", "/nonexistent")]).err();
        assert_eq!(
            err.map(|e| format!("{e:#}")).as_deref(),
            Some(redis::NOT_INSTALLED)
        );
    }

    #[test]
    fn bad_gateway_addr_is_named() {
        let err = plan(
            &Args::default(),
            &[("REDIS_URL", "redis://x"), ("GATEWAY_ADDR", "localhost")],
        )
        .err();
        assert!(err.is_some_and(|e| e.to_string().contains("GATEWAY_ADDR")));
    }

    #[test]
    fn missing_binaries_are_explained() -> anyhow::Result<()> {
        let p = plan(&Args::default(), &[("REDIS_URL", "redis://x")])?;
        let err = p
            .check_binaries()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("cannot find `mock-openai` in /opt/confab"),
            "{err}"
        );
        assert!(err.contains("cargo build --release"), "{err}");
        Ok(())
    }

    #[test]
    fn redis_passwords_are_redacted() {
        assert_eq!(redact_url("redis://:pw@h:1"), "redis://***@h:1");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
    }
}
