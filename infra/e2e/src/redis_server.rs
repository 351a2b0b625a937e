//! A private Redis per test: one `redis-server` ([`Redis::start`]) or a real local Redis
//! Cluster of 3 primaries with one replica each ([`Redis::cluster`]), on free ports, nothing
//! persisted.
//!
//! The cluster is what `redis-cli --cluster create` builds: six `redis-server
//! --cluster-enabled yes` processes (a node's bus port is its port + 10000, so both must be
//! free), `--cluster-node-timeout 2000`, and `--cluster-replicas 1`. It is ready when every
//! node says `cluster_state:ok` and every replica has finished its initial sync — before
//! that a failover could not promote it. Nodes can be SIGKILLed and restarted with their
//! `nodes.conf`, so a killed primary comes back as a replica of the node that replaced it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use confab_shared::db::Conn;
use confab_shared::keys::{self, PartitionKeys};
use confab_shared::partition::Partitions;
use redis::streams::StreamRangeReply;
use redis::FromRedisValue;
use serde_json::Value;

use crate::process::{free_port, log_dir, next_seq, redis_server_binary, ChildProc};

/// Standalone Redis or a Redis Cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Standalone,
    Cluster,
}

/// One `redis-server` process of the deployment.
pub struct Node {
    pub port: u16,
    args: Vec<String>,
    proc: ChildProc,
    restarts: u32,
}

impl Node {
    fn spawn(port: u16, extra: &[String]) -> Node {
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &log_dir().to_string_lossy(),
            "--loglevel",
            "warning",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().cloned());
        let proc = ChildProc::spawn(
            &format!("redis-{port}-{}", next_seq()),
            &redis_server_binary(),
            &args,
            &[],
        );
        Node {
            port,
            args,
            proc,
            restarts: 0,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A plain connection to this node alone.
    pub async fn direct(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.url())?;
        tokio::time::timeout(
            Duration::from_secs(2),
            client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "connect timed out")))?
    }

    /// One command on this node alone.
    pub async fn q<T: FromRedisValue>(&self, args: &[&str]) -> redis::RedisResult<T> {
        let mut conn = self.direct().await?;
        let mut cmd = redis::cmd(args.first().copied().unwrap_or("PING"));
        for a in args.iter().skip(1) {
            cmd.arg(*a);
        }
        tokio::time::timeout(Duration::from_secs(5), cmd.query_async(&mut conn))
            .await
            .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "command timed out")))?
    }

    async fn wait_ping(&mut self) -> Result<(), String> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < Duration::from_secs(10) {
            if let Some(status) = self.proc.exited() {
                return Err(format!(
                    "redis-server exited with {status}\n{}",
                    self.proc.log_tail(20)
                ));
            }
            match self.q::<String>(&["PING"]).await {
                Ok(_) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!("no PONG from port {}: {last}", self.port))
    }

    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// Starts the node again on its port with its arguments (and, on a cluster, its
    /// nodes.conf: it rejoins as what the cluster now says it is).
    pub async fn restart(&mut self) {
        self.proc.kill9();
        self.restarts += 1;
        self.proc = ChildProc::spawn(
            &format!("redis-{}-restart{}", self.port, self.restarts),
            &redis_server_binary(),
            &self.args,
            &[],
        );
        if let Err(e) = self.wait_ping().await {
            panic!("restarting redis on {}: {e}", self.port);
        }
    }

    pub fn process(&mut self) -> &mut ChildProc {
        &mut self.proc
    }
}

pub struct Redis {
    mode: Mode,
    url: String,
    conn: Conn,
    pub nodes: Vec<Node>,
}

impl Redis {
    /// One `redis-server`, waiting until it answers PING.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// One `redis-server` that persists every write before answering (`appendonly yes`,
    /// `appendfsync always`, its own AOF directory under the test's log directory), so
    /// `nodes[0].kill9()` + `nodes[0].restart()` loses nothing it acknowledged.
    pub async fn start_aof() -> Self {
        let dir = format!("aof-{}", next_seq());
        Self::start_with(&[
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--appenddirname",
            &dir,
        ])
        .await
    }

    /// One `redis-server` with `extra` arguments (later ones override the defaults).
    async fn start_with(extra: &[&str]) -> Self {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut last_err = String::new();
        for _attempt in 0..3 {
            let mut node = Node::spawn(free_port(), &extra);
            match node.wait_ping().await {
                Ok(()) => {
                    let url = node.url();
                    let conn = connect(&url, false).await;
                    return Self {
                        mode: Mode::Standalone,
                        url,
                        conn,
                        nodes: vec![node],
                    };
                }
                Err(e) => last_err = e,
            }
        }
        panic!("redis-server did not start: {last_err}");
    }

    /// A Redis Cluster: 3 primaries with one replica each, created by `redis-cli --cluster
    /// create`, ready when every node is `cluster_state:ok` and every replica has synced.
    pub async fn cluster() -> Self {
        let extra: Vec<String> = [
            "--cluster-enabled",
            "yes",
            "--cluster-node-timeout",
            "2000",
            // A replica may always take over, however long it was cut off (tests kill nodes).
            "--cluster-replica-validity-factor",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // `redis-cli --cluster create` waits for the nodes to meet on their bus ports, forever
        // if one cannot (a bus port taken meanwhile): bounded, and tried again on new ports.
        let mut last_err = String::new();
        let mut created = None;
        for _attempt in 0..3 {
            let mut nodes = Vec::new();
            for _ in 0..6 {
                let port = cluster_port();
                let mut args = extra.clone();
                args.push("--cluster-config-file".into());
                args.push(format!("nodes-{port}.conf"));
                let mut node = Node::spawn(port, &args);
                if let Err(e) = node.wait_ping().await {
                    panic!("a cluster node did not start: {e}");
                }
                nodes.push(node);
            }
            match create_cluster(&nodes, Duration::from_secs(90)).await {
                Ok(()) => {
                    created = Some(nodes);
                    break;
                }
                Err(e) => {
                    eprintln!("creating the test cluster failed, trying new ports: {e}");
                    last_err = e;
                }
            }
        }
        let Some(nodes) = created else {
            panic!("redis-cli --cluster create failed three times: {last_err}");
        };
        wait_healthy(&nodes, Duration::from_secs(60)).await;
        let url = nodes.iter().map(Node::url).collect::<Vec<_>>().join(",");
        Self {
            mode: Mode::Cluster,
            conn: connect(&url, true).await,
            url,
            nodes,
        }
    }

    pub async fn start_in(mode: Mode) -> Self {
        match mode {
            Mode::Standalone => Self::start().await,
            Mode::Cluster => Self::cluster().await,
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn is_cluster(&self) -> bool {
        self.mode == Mode::Cluster
    }

    /// The first node's port (standalone: the server's).
    pub fn port(&self) -> u16 {
        self.nodes.first().map_or(0, |n| n.port)
    }

    /// `REDIS_URL`: the server, or every cluster node comma-separated.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// What a gateway or worker needs to reach this Redis.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![("REDIS_URL".to_string(), self.url.clone())];
        if self.is_cluster() {
            env.push(("REDIS_CLUSTER".into(), "true".into()));
        }
        env
    }

    /// A shared connection (cluster-aware; cheap to clone).
    pub fn conn(&self) -> Conn {
        self.conn.clone()
    }

    /// Waits until every node that answers reports `cluster_state:ok` and every replica is
    /// in sync with its primary.
    pub async fn wait_cluster_ok(&self, timeout: Duration) {
        wait_healthy(&self.nodes, timeout).await;
    }

    /// The node currently serving `key` as primary (cluster), or the server (standalone).
    pub async fn primary_of(&self, key: &str) -> usize {
        if !self.is_cluster() {
            return 0;
        }
        let slot = confab_shared::partition::key_slot(key);
        for n in &self.nodes {
            let Ok(v) = n.q::<redis::Value>(&["CLUSTER", "SHARDS"]).await else {
                continue;
            };
            if let Some(port) = primary_port(&v, slot) {
                if let Some(i) = self.nodes.iter().position(|n| n.port == port) {
                    return i;
                }
            }
        }
        panic!("no primary serves slot {slot}");
    }

    /// Runs one command given as words, panicking with the command on error:
    /// `redis.q::<u64>(&["XLEN", "confab:cmd:{p0-10786}"]).await`.
    pub async fn q<T: FromRedisValue>(&self, args: &[&str]) -> T {
        let mut cmd = redis::cmd(args.first().copied().unwrap_or("PING"));
        for a in args.iter().skip(1) {
            cmd.arg(*a);
        }
        self.run(&cmd).await
    }

    /// Runs a prepared command, panicking with it on error.
    pub async fn run<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        let mut conn = self.conn.clone();
        cmd.query_async(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("Redis command {:?} failed: {e}", cmd_words(cmd)))
    }

    /// Like [`Redis::q`] but returns the error instead of panicking.
    pub async fn try_q<T: FromRedisValue>(&self, args: &[&str]) -> redis::RedisResult<T> {
        let mut cmd = redis::cmd(args.first().copied().unwrap_or("PING"));
        for a in args.iter().skip(1) {
            cmd.arg(*a);
        }
        let mut conn = self.conn.clone();
        cmd.query_async(&mut conn).await
    }

    /// Keys matching `pattern` on every node (SCAN, so large databases are fine).
    pub async fn keys(&self, pattern: &str) -> Vec<String> {
        let mut out = Vec::new();
        for n in &self.nodes {
            let mut cursor = "0".to_string();
            loop {
                let Ok((next, batch)) = n
                    .q::<(String, Vec<String>)>(&[
                        "SCAN", &cursor, "MATCH", pattern, "COUNT", "1000",
                    ])
                    .await
                else {
                    break;
                };
                out.extend(batch);
                if next == "0" {
                    break;
                }
                cursor = next;
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Every entry of a stream: `(entry id, fields)`.
    pub async fn stream(&self, key: &str) -> Vec<(String, HashMap<String, String>)> {
        let reply: StreamRangeReply = self.q(&["XRANGE", key, "-", "+"]).await;
        reply
            .ids
            .into_iter()
            .map(|e| {
                let fields = e
                    .map
                    .iter()
                    .map(|(k, v)| {
                        let text = redis::from_redis_value_ref::<String>(v).unwrap_or_default();
                        (k.clone(), text)
                    })
                    .collect();
                (e.id, fields)
            })
            .collect()
    }

    /// A conversation's stored events, oldest first, as a client receives them on resume:
    /// its messages (ordered by eventId in `…:order`, stored once in `…:msgs`) merged with
    /// the other events (`…:events`).
    pub async fn history(&self, conversation: &str) -> Vec<Value> {
        let base = format!("confab:conv:{{{conversation}}}");
        let ids: Vec<(String, u64)> = self
            .q(&["ZRANGE", &format!("{base}:order"), "0", "-1", "WITHSCORES"])
            .await;
        let mut out: Vec<(u64, Value)> = Vec::new();
        for (mid, eid) in ids {
            let stored: Option<String> = self.q(&["HGET", &format!("{base}:msgs"), &mid]).await;
            let message = stored
                .map(|s| serde_json::from_str::<Value>(&s).unwrap_or(Value::Null))
                .unwrap_or(Value::Null);
            out.push((
                eid,
                serde_json::json!({
                    "type": "message",
                    "conversationId": conversation,
                    "eventId": eid,
                    "message": message,
                }),
            ));
        }
        for (id, f) in self.stream(&crate::events_key(conversation)).await {
            let eid: u64 = id
                .split('-')
                .next()
                .and_then(|e| e.parse().ok())
                .unwrap_or(0);
            let raw = f.get("e").cloned().unwrap_or_default();
            let event = serde_json::from_str(&raw)
                .unwrap_or_else(|e| panic!("history entry {id} is not JSON ({e}): {raw}"));
            out.push((eid, event));
        }
        out.sort_by_key(|(eid, _)| *eid);
        out.into_iter().map(|(_, e)| e).collect()
    }

    /// The partition layout the processes use (`STREAM_PARTITIONS`, default 16).
    pub fn partitions(&self) -> Vec<PartitionKeys> {
        PartitionKeys::all(&Partitions::new(partition_count()))
    }

    /// The partition layout the deployment recorded (`confab:layout`), else the default.
    pub async fn recorded_partitions(&self) -> Vec<PartitionKeys> {
        let recorded: Option<u32> = self
            .q(&["HGET", confab_shared::layout::LAYOUT_KEY, "partitions"])
            .await;
        PartitionKeys::all(&Partitions::new(recorded.unwrap_or_else(partition_count)))
    }

    /// The keys of the partition conversation `id`'s commands go to.
    pub fn partition_of(&self, conversation: &str) -> PartitionKeys {
        let parts = Partitions::new(partition_count());
        let id = uuid::Uuid::parse_str(conversation)
            .unwrap_or_else(|e| panic!("{conversation} is not a conversation id: {e}"));
        PartitionKeys::new(&parts, parts.of_conversation(&id))
    }

    /// Appends a raw command entry (`c` = `command`) to its conversation's partition stream.
    pub async fn append_command(&self, conversation: &str, command: &str) -> String {
        let stream = self.partition_of(conversation).commands;
        self.q(&["XADD", &stream, "*", "c", command]).await
    }

    /// Every partition's dead letters: `(partition stream, entry fields)`.
    pub async fn dead_letters(&self) -> Vec<(String, HashMap<String, String>)> {
        let mut out = Vec::new();
        for pk in self.partitions() {
            for (_, f) in self.stream(&pk.dead_letters).await {
                out.push((pk.commands.clone(), f));
            }
        }
        out
    }

    /// Panics unless every dead-letter stream is empty (what normal operation looks like).
    pub async fn assert_no_dead_letters(&self) {
        let dead = self.dead_letters().await;
        assert!(dead.is_empty(), "dead letters: {dead:?}");
    }

    /// Dead letters over all partitions, read without async (for `Drop`): a fresh blocking
    /// connection, so it works whatever the runtime is doing. 0 when Redis is unreachable.
    pub fn dead_letter_count_blocking(&self) -> u64 {
        let keys: Vec<String> = self
            .partitions()
            .into_iter()
            .map(|p| p.dead_letters)
            .collect();
        let count = |conn: &mut dyn redis::ConnectionLike| -> u64 {
            keys.iter()
                .map(|k| redis::cmd("XLEN").arg(k).query::<u64>(conn).unwrap_or(0))
                .sum()
        };
        let urls: Vec<&str> = self.url.split(',').collect();
        if self.is_cluster() {
            match redis::cluster::ClusterClient::new(urls).and_then(|c| c.get_connection()) {
                Ok(mut conn) => count(&mut conn),
                Err(_) => 0,
            }
        } else {
            match redis::Client::open(self.url.as_str()).and_then(|c| c.get_connection()) {
                Ok(mut conn) => count(&mut conn),
                Err(_) => 0,
            }
        }
    }

    /// Entries waiting in the command streams, over all partitions.
    pub async fn backlog(&self) -> u64 {
        let mut total = 0;
        for pk in self.partitions() {
            total += self.q::<u64>(&["XLEN", &pk.commands]).await;
        }
        total
    }

    /// Who holds each partition's lease now (`None`: free or lapsed).
    pub async fn partition_owners(&self) -> Vec<Option<String>> {
        let mut out = Vec::new();
        let now = now_ms();
        for pk in self.recorded_partitions().await {
            let (owner, until): (Option<String>, Option<u64>) = self
                .run(redis::cmd("HMGET").arg(&pk.lease).arg("owner").arg("until"))
                .await;
            out.push(owner.filter(|o| !o.is_empty() && until.unwrap_or(0) > now));
        }
        out
    }

    /// The live persistence replicas, as the rebalancer sees them.
    pub async fn persistence_members(&self) -> Vec<String> {
        self.q(&[
            "ZRANGEBYSCORE",
            keys::PERSISTENCE_MEMBERS,
            &now_ms().to_string(),
            "+inf",
        ])
        .await
    }

    /// Subscribes to `channels` (sharded on a cluster) and yields `(channel, event)`: the
    /// payload without its metadata line.
    pub async fn subscribe(
        &self,
        channels: &[String],
    ) -> tokio::sync::mpsc::UnboundedReceiver<(String, String)> {
        let (push_tx, mut push_rx) = tokio::sync::mpsc::unbounded_channel::<redis::PushInfo>();
        let mut conn = confab_shared::db::Redis::new(&self.url, self.is_cluster())
            .pubsub(push_tx)
            .await
            .unwrap_or_else(|e| panic!("cannot open a Pub/Sub connection: {e}"));
        for c in channels {
            conn.subscribe(c)
                .await
                .unwrap_or_else(|e| panic!("cannot subscribe to {c}: {e}"));
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let _keep = conn;
            while let Some(push) = push_rx.recv().await {
                if !matches!(
                    push.kind,
                    redis::PushKind::Message | redis::PushKind::SMessage
                ) {
                    continue;
                }
                let text = |v: Option<&redis::Value>| {
                    v.and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
                        .unwrap_or_default()
                };
                // The metadata line before a published event is the gateways' to strip.
                let payload = text(push.data.get(1));
                let event = confab_shared::trace::split_published(&payload)
                    .body
                    .to_string();
                if tx.send((text(push.data.first()), event)).is_err() {
                    return;
                }
            }
        });
        rx
    }

    /// SIGKILLs the standalone server and starts it again on its port (with [`start_aof`]
    /// it comes back with everything it acknowledged), then waits until the shared
    /// connection has reconnected, so the kit's helpers work again at once.
    ///
    /// [`start_aof`]: Redis::start_aof
    pub async fn restart(&mut self) {
        let Some(node) = self.nodes.first_mut() else {
            panic!("no Redis process");
        };
        node.restart().await;
        let start = Instant::now();
        while self.try_q::<String>(&["PING"]).await.is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the shared connection did not reconnect to the restarted Redis"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILLs the server (standalone) or every node.
    pub fn kill(&mut self) {
        for n in &mut self.nodes {
            n.kill9();
        }
    }

    /// The server's process (standalone).
    pub fn process(&mut self) -> &mut ChildProc {
        match self.nodes.first_mut() {
            Some(n) => n.process(),
            None => panic!("no Redis process"),
        }
    }
}

/// Every node that answers is `cluster_state:ok`, and no replica is still syncing.
async fn wait_healthy(nodes: &[Node], timeout: Duration) {
    let start = Instant::now();
    let mut last = String::new();
    'poll: while start.elapsed() < timeout {
        for n in nodes {
            let (Ok(info), Ok(repl)) = (
                n.q::<String>(&["CLUSTER", "INFO"]).await,
                n.q::<String>(&["INFO", "replication"]).await,
            ) else {
                // A node that is down (killed by the test) does not count.
                continue;
            };
            let problem = if !info.contains("cluster_state:ok") {
                Some(format!("node {} is not ok", n.port))
            } else if repl.contains("role:slave")
                && (!repl.contains("master_link_status:up")
                    || repl.contains("master_sync_in_progress:1"))
            {
                Some(format!("replica {} has not synced", n.port))
            } else {
                None
            };
            if let Some(p) = problem {
                last = p;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue 'poll;
            }
        }
        return;
    }
    panic!("the cluster did not become healthy within {timeout:?}: {last}");
}

/// The port of the online primary serving `slot`, from `CLUSTER SHARDS`.
fn primary_port(v: &redis::Value, slot: u16) -> Option<u16> {
    let redis::Value::Array(shards) = v else {
        return None;
    };
    shards.iter().find_map(|shard| {
        let f = pairs(shard);
        let slots: Vec<u16> = f
            .get("slots")
            .and_then(|s| redis::from_redis_value_ref(s).ok())
            .unwrap_or_default();
        if !slots
            .chunks(2)
            .any(|r| matches!(r, [a, b] if (*a..=*b).contains(&slot)))
        {
            return None;
        }
        let Some(redis::Value::Array(nodes)) = f.get("nodes") else {
            return None;
        };
        nodes.iter().find_map(|n| {
            let nf = pairs(n);
            let text = |k: &str| {
                nf.get(k)
                    .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
                    .unwrap_or_default()
            };
            (text("role") == "master" && text("health") == "online")
                .then(|| {
                    nf.get("port")
                        .and_then(|v| redis::from_redis_value_ref::<u16>(v).ok())
                })
                .flatten()
        })
    })
}

fn pairs(v: &redis::Value) -> HashMap<String, &redis::Value> {
    match v {
        redis::Value::Array(items) => items
            .chunks(2)
            .filter_map(|kv| match kv {
                [k, v] => redis::from_redis_value_ref::<String>(k)
                    .ok()
                    .map(|k| (k, v)),
                _ => None,
            })
            .collect(),
        redis::Value::Map(items) => items
            .iter()
            .filter_map(|(k, v)| {
                redis::from_redis_value_ref::<String>(k)
                    .ok()
                    .map(|k| (k, v))
            })
            .collect(),
        _ => HashMap::new(),
    }
}

/// `STREAM_PARTITIONS` of the processes the kit starts (the default unless a test sets it
/// through `CONFAB_E2E_PARTITIONS`).
pub fn partition_count() -> u32 {
    std::env::var("CONFAB_E2E_PARTITIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A port whose cluster bus port (+10000) is free too.
fn cluster_port() -> u16 {
    loop {
        let port = free_port();
        if !(1024..=55000).contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

/// `redis-cli --cluster create` over `nodes` (3 primaries, one replica each), within `limit`.
async fn create_cluster(nodes: &[Node], limit: Duration) -> Result<(), String> {
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let mut child = std::process::Command::new(redis_cli_binary())
        .arg("--cluster")
        .arg("create")
        .args(&addrs)
        .args(["--cluster-replicas", "1", "--cluster-yes"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run redis-cli --cluster create: {e}"))?;
    let deadline = std::time::Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("redis-cli --cluster create took over {limit:?}"));
            }
            Err(e) => return Err(format!("waiting for redis-cli: {e}")),
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("reading redis-cli's output: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn redis_cli_binary() -> std::path::PathBuf {
    let server = redis_server_binary();
    let beside = server.with_file_name("redis-cli");
    if beside.is_file() {
        beside
    } else {
        std::path::PathBuf::from("redis-cli")
    }
}

async fn connect(url: &str, cluster: bool) -> Conn {
    confab_shared::db::Redis::new(url, cluster)
        .connect(Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("cannot connect to Redis at {url}: {e}"))
}

fn cmd_words(cmd: &redis::Cmd) -> Vec<String> {
    cmd.args_iter()
        .map(|a| match a {
            redis::Arg::Simple(b) => {
                let s = String::from_utf8_lossy(b);
                if s.chars().count() > 80 {
                    format!("{}…", s.chars().take(80).collect::<String>())
                } else {
                    s.into_owned()
                }
            }
            _ => "<cursor>".into(),
        })
        .collect()
}
