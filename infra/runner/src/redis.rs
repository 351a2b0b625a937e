//! The runner's own Redis: find `redis-server`, refuse a busy port, start it under the
//! [`Supervisor`], wait until it answers `PING`.
//!
//! Redis runs with `--appendonly yes --save ""`: data survives restarts through the AOF in
//! `<run-dir>/redis` (SIGTERM makes it fsync before exiting). Readiness is checked with a raw
//! RESP `PING` over TCP.
//!
//! With `--redis-nodes N` it is a local Redis Cluster instead: N primaries and N replicas
//! on ports 7000 and up (bus ports +10000), each with its AOF and `nodes.conf` in
//! `<run-dir>/cluster/<port>`. The first start creates the cluster with
//! `redis-cli --cluster create --cluster-replicas 1`; later starts find it formed.

use std::ffi::OsStr;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout, Instant};

use crate::supervisor::{ChildHandle, ChildSpec, OnExit, Stage, Supervisor};

/// The port `confab-run` uses (6380, so a system Redis on 6379 is left alone).
pub const DEFAULT_PORT: u16 = 6380;

/// Printed verbatim when `redis-server` is missing.
pub const NOT_INSTALLED: &str = "redis-server is not installed: run `sudo apt-get install \
redis-server` (Debian/Ubuntu) or set REDIS_URL";

/// The first port of a local cluster.
pub const CLUSTER_BASE_PORT: u16 = 7000;

/// How to run the local Redis.
#[derive(Clone, Debug)]
pub struct LocalRedis {
    /// The `redis-server` executable.
    pub server: PathBuf,
    pub port: u16,
    /// Data directory (the AOF lives here).
    pub dir: PathBuf,
    /// How long Redis may take to answer PING (it answers `-LOADING` while reading a big AOF).
    pub ready_timeout: Duration,
    /// A cluster of this many primaries (each with a replica) instead of one server.
    pub cluster: Option<u16>,
}

impl LocalRedis {
    /// `redis-server` from the `PATH`-style list `path`, port [`DEFAULT_PORT`], data in
    /// `<run_dir>/redis`. Fails with [`NOT_INSTALLED`] when there is no `redis-server`.
    pub fn locate(path: Option<&OsStr>, run_dir: &Path) -> anyhow::Result<Self> {
        let server = find_in_path("redis-server", path).context(NOT_INSTALLED)?;
        Ok(Self {
            server,
            port: DEFAULT_PORT,
            dir: run_dir.join("redis"),
            ready_timeout: Duration::from_secs(60),
            cluster: None,
        })
    }

    /// The same, as a cluster of `primaries` primaries with one replica each.
    pub fn as_cluster(mut self, primaries: u16, run_dir: &Path) -> Self {
        self.cluster = Some(primaries);
        self.port = CLUSTER_BASE_PORT;
        self.dir = run_dir.join("cluster");
        self
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Every port it listens on: one, or two per cluster primary.
    pub fn ports(&self) -> Vec<u16> {
        match self.cluster {
            None => vec![self.port],
            Some(n) => (0..2 * n).map(|i| self.port + i).collect(),
        }
    }

    /// The `REDIS_URL` children get (every node, comma-separated, for a cluster).
    pub fn url(&self) -> String {
        self.ports()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// What children need besides `REDIS_URL`.
    pub fn child_env(&self) -> Vec<(String, String)> {
        let mut env = vec![("REDIS_URL".to_string(), self.url())];
        if self.cluster.is_some() {
            env.push(("REDIS_CLUSTER".into(), "true".into()));
        }
        env
    }

    /// The `redis` child (`redis-<port>` in a cluster): stopped last, and fatal if it dies.
    pub fn spec(&self) -> ChildSpec {
        let name = match self.cluster {
            None => "redis".to_string(),
            Some(_) => format!("redis-{}", self.port),
        };
        let spec = ChildSpec::new(name, &self.server);
        let spec = match self.cluster {
            None => spec,
            Some(_) => spec
                .arg("--cluster-enabled")
                .arg("yes")
                .arg("--cluster-config-file")
                .arg("nodes.conf")
                .arg("--cluster-node-timeout")
                .arg("2000"),
        };
        spec.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.as_os_str())
            .arg("--appendonly")
            .arg("yes")
            .arg("--save")
            .arg("")
            .arg("--daemonize")
            .arg("no")
            .stage(Stage::Store)
            .on_exit(OnExit::Fatal)
    }

    /// Starts Redis (or the cluster) under `sup` and waits until it serves; one handle per
    /// process.
    pub async fn start(&self, sup: &Supervisor) -> anyhow::Result<Vec<ChildHandle>> {
        match self.cluster {
            None => Ok(vec![self.start_one(sup).await?]),
            Some(n) => self.start_cluster(sup, n).await,
        }
    }

    /// Every node, then (first start only) `redis-cli --cluster create`, then waits until
    /// every node says `cluster_state:ok`.
    async fn start_cluster(
        &self,
        sup: &Supervisor,
        primaries: u16,
    ) -> anyhow::Result<Vec<ChildHandle>> {
        let mut handles = Vec::new();
        for port in self.ports() {
            let node = Self {
                port,
                dir: self.dir.join(port.to_string()),
                cluster: Some(primaries),
                ..self.clone()
            };
            handles.push(node.start_one(sup).await?);
        }
        let first = self.addr();
        let formed = match command(first, &["CLUSTER", "INFO"]).await? {
            Reply::Bulk(Some(info)) => {
                !String::from_utf8_lossy(&info).contains("cluster_known_nodes:1\r")
            }
            other => bail!("CLUSTER INFO answered {other:?}"),
        };
        if !formed {
            let cli = self.server.with_file_name("redis-cli");
            let cli = if cli.is_file() {
                cli
            } else {
                PathBuf::from("redis-cli")
            };
            let addrs: Vec<String> = self
                .ports()
                .iter()
                .map(|p| format!("127.0.0.1:{p}"))
                .collect();
            let out = tokio::process::Command::new(&cli)
                .arg("--cluster")
                .arg("create")
                .args(&addrs)
                .args(["--cluster-replicas", "1", "--cluster-yes"])
                .output()
                .await
                .with_context(|| {
                    format!(
                        "cannot run {} (Debian: apt-get install redis-tools)",
                        cli.display()
                    )
                })?;
            if !out.status.success() {
                bail!(
                    "redis-cli --cluster create failed: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let deadline = Instant::now() + self.ready_timeout;
        let nodes = self.ports().len();
        for port in self.ports() {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            loop {
                let ok = matches!(
                    command(addr, &["CLUSTER", "INFO"]).await,
                    Ok(Reply::Bulk(Some(info))) if cluster_ready(&String::from_utf8_lossy(&info), nodes)
                );
                if ok {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!(
                        "the cluster node on port {port} did not reach cluster_state:ok \
                         knowing all {nodes} nodes"
                    );
                }
                sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(handles)
    }

    /// Creates the data directory, checks the port is free, starts one Redis under `sup`
    /// and waits until it answers PING.
    async fn start_one(&self, sup: &Supervisor) -> anyhow::Result<ChildHandle> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let redis = Self {
            dir: std::fs::canonicalize(&self.dir)
                .with_context(|| format!("cannot resolve {}", self.dir.display()))?,
            ..self.clone()
        };
        ensure_port_free(redis.port).await?;
        let mut handle = sup.spawn(redis.spec())?;
        let exited = handle.clone();
        tokio::select! {
            ready = wait_ready(redis.addr(), redis.ready_timeout) => {
                ready?;
                Ok(exited)
            }
            how = handle.wait_exit() => bail!(
                "redis-server exited during start-up ({}); see its output above",
                how.unwrap_or_else(|| "status unknown".into())
            ),
        }
    }
}

/// The first executable file called `name` in the `PATH`-style list `path`.
pub fn find_in_path(name: &str, path: Option<&OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path?)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Fails with advice when something already listens on `127.0.0.1:port`.
pub async fn ensure_port_free(port: u16) -> anyhow::Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(Ok(_stream)) = timeout(Duration::from_secs(1), TcpStream::connect(addr)).await else {
        return Ok(());
    };
    match command(addr, &["PING"]).await {
        Ok(_) => bail!(
            "a Redis server is already running on 127.0.0.1:{port} (perhaps left over from an \
             earlier confab-run). Stop it (`redis-cli -p {port} shutdown`), or use it by \
             setting REDIS_URL=redis://127.0.0.1:{port}"
        ),
        Err(_) => bail!(
            "port {port} on 127.0.0.1 is already in use by another program; stop it or set \
             REDIS_URL to an existing Redis"
        ),
    }
}

/// Polls with PING until Redis answers `+PONG` (not `-LOADING`), for at most `limit`.
pub async fn wait_ready(addr: SocketAddr, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let last = match command(addr, &["PING"]).await {
            Ok(Reply::Simple(s)) if s == "PONG" => return Ok(()),
            Ok(other) => format!("{other:?}"),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("Redis on {addr} did not answer PING within {limit:?} (last: {last})");
        }
        sleep(Duration::from_millis(100)).await;
    }
}

/// A RESP reply (the subset a readiness check and a test need).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
}

/// Sends one command on a fresh connection and reads one reply (2 s limit).
pub async fn command(addr: SocketAddr, args: &[&str]) -> anyhow::Result<Reply> {
    timeout(Duration::from_secs(2), command_inner(addr, args))
        .await
        .with_context(|| format!("no reply from {addr} within 2s"))?
}

async fn command_inner(addr: SocketAddr, args: &[&str]) -> anyhow::Result<Reply> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let mut stream = BufReader::new(stream);
    let mut request = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        request.extend_from_slice(arg.as_bytes());
        request.extend_from_slice(b"\r\n");
    }
    stream.get_mut().write_all(&request).await?;
    let mut line = String::new();
    if stream.read_line(&mut line).await? == 0 {
        bail!("connection closed without a reply");
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at(line.len().min(1));
    Ok(match kind {
        "+" => Reply::Simple(rest.to_string()),
        "-" => Reply::Error(rest.to_string()),
        ":" => Reply::Integer(rest.parse().context("bad integer reply")?),
        "$" => {
            let len: i64 = rest.parse().context("bad bulk length")?;
            match usize::try_from(len) {
                Err(_) => Reply::Bulk(None),
                Ok(len) => {
                    let mut buf = vec![0; len + 2];
                    stream.read_exact(&mut buf).await?;
                    buf.truncate(len);
                    Reply::Bulk(Some(buf))
                }
            }
        }
        _ => bail!("not a Redis reply: {line:?}"),
    })
}

/// AOF files under `dir` (Redis 7 keeps them in `appendonlydir/`, older ones in `dir`).
pub fn aof_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for d in [dir.to_path_buf(), dir.join("appendonlydir")] {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_file()
                && path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().contains(".aof"))
            {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// A node is ready once its state is `ok` and gossip has told it about every node: right after
/// `--cluster create` (or a restart from `nodes.conf`) a node can say `ok` while it still knows
/// only some of the others, and a client that asks it for the topology would get part of it.
fn cluster_ready(info: &str, nodes: usize) -> bool {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.trim_end().strip_prefix(name)?.strip_prefix(':'))
            .map(str::to_owned)
    };
    field("cluster_state").as_deref() == Some("ok")
        && field("cluster_known_nodes").and_then(|n| n.parse::<usize>().ok()) == Some(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_node_is_ready_when_ok_and_it_knows_every_node() {
        let info = |state: &str, known: usize| {
            format!("cluster_state:{state}\r\ncluster_slots_assigned:16384\r\ncluster_known_nodes:{known}\r\ncluster_size:3\r\n")
        };
        assert!(cluster_ready(&info("ok", 6), 6));
        assert!(!cluster_ready(&info("ok", 5), 6), "gossip not finished");
        assert!(!cluster_ready(&info("fail", 6), 6));
        assert!(!cluster_ready(&info("ok", 16), 6), "16 is not 6");
        assert!(!cluster_ready("", 6));
    }

    #[test]
    fn finds_executables_on_path_only() -> std::io::Result<()> {
        let dir = std::env::temp_dir().join(format!("confab-run-path-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let plain = dir.join("not-executable");
        std::fs::write(&plain, "")?;
        let path = std::env::join_paths([dir.as_path(), Path::new("/bin")])
            .map_err(std::io::Error::other)?;
        assert_eq!(find_in_path("not-executable", Some(&path)), None);
        assert_eq!(
            find_in_path("sh", Some(&path)),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(find_in_path("sh", None), None);
        std::fs::remove_dir_all(&dir)
    }

    #[test]
    fn spec_matches_the_documented_command_line() {
        let r = LocalRedis {
            server: "/usr/bin/redis-server".into(),
            port: 6380,
            dir: "/tmp/x/redis".into(),
            ready_timeout: Duration::from_secs(1),
            cluster: None,
        };
        let spec = r.spec();
        let args: Vec<String> = spec
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--port",
                "6380",
                "--bind",
                "127.0.0.1",
                "--dir",
                "/tmp/x/redis",
                "--appendonly",
                "yes",
                "--save",
                "",
                "--daemonize",
                "no"
            ]
        );
        assert_eq!(spec.name, "redis");
        assert_eq!(spec.on_exit, OnExit::Fatal);
        assert_eq!(spec.stage, Stage::Store);
        assert_eq!(r.url(), "redis://127.0.0.1:6380");
    }
}
