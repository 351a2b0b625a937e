//! Connecting to Redis: standalone (the default) or Redis Cluster (`REDIS_CLUSTER=true`).
//!
//! [`Redis`] knows the deployment and opens connections; [`Conn`] is one connection of
//! either kind and implements redis-rs' `ConnectionLike`, so every command, script and
//! pipeline works unchanged on both. What differs is kept here:
//!
//! - **Shared connections** ([`Redis::connect`]): a standalone `ConnectionManager` or a
//!   cluster-async connection, multiplexed and auto-reconnecting, wrapped in a
//!   [`ClusterConn`] that replaces it when it wedges; the short commands of a whole process
//!   share one.
//! - **Blocking reads** ([`Redis::dedicated`]): a blocking `XREAD`/`XREADGROUP` holds its
//!   connection (and, on a cluster, the node connection behind it), so each reader gets its own.
//! - **Pub/Sub**: classic `PUBLISH`/`SUBSCRIBE` standalone, sharded `SPUBLISH`/`SSUBSCRIBE` on
//!   a cluster (a classic `PUBLISH` is broadcast to every node). [`Conn::publish`] builds the
//!   right command; Lua scripts are told which one to call.
//! - **Multi-slot work** ([`Conn::query_many`]): a pipeline standalone; on a cluster, where a
//!   pipeline must stay in one slot, the commands are sent concurrently and routed one by one.

use std::time::Duration;

use futures::future::join_all;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::{Cmd, Pipeline, PushInfo, RedisFuture, RedisResult, Value};
use tokio::sync::mpsc::UnboundedSender;

use crate::cluster::ClusterConn;
use crate::config::{redact_url, Config};

/// How to reach Redis: one server, or the seed nodes of a cluster.
#[derive(Clone)]
pub struct Redis {
    urls: Vec<String>,
    cluster: bool,
}

impl Redis {
    /// From `REDIS_URL` (comma-separated seeds when `REDIS_CLUSTER=true`).
    pub fn from_config(cfg: &Config) -> Self {
        Self::new(&cfg.redis_url, cfg.redis_cluster)
    }

    pub fn new(url: &str, cluster: bool) -> Self {
        let urls = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(String::from)
            .collect();
        Self { urls, cluster }
    }

    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// For logs: the addresses without passwords.
    pub fn describe(&self) -> String {
        let urls: Vec<String> = self.urls.iter().map(|u| redact_url(u)).collect();
        if self.cluster {
            format!("cluster {}", urls.join(","))
        } else {
            urls.join(",")
        }
    }

    /// `PUBLISH` or `SPUBLISH`.
    pub fn publish_command(&self) -> &'static str {
        if self.cluster {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    fn first_url(&self) -> &str {
        self.urls.first().map(String::as_str).unwrap_or_default()
    }

    fn cluster_builder(&self, response_timeout: Duration) -> ClusterClientBuilder {
        ClusterClientBuilder::new(self.urls.clone())
            .connection_timeout(Duration::from_secs(3))
            .response_timeout(response_timeout)
            .retries(4)
            .min_retry_wait(50)
            .max_retry_wait(1000)
    }

    /// A shared, multiplexed, auto-reconnecting connection for ordinary commands.
    pub async fn connect(&self, response_timeout: Duration) -> RedisResult<Conn> {
        if self.cluster {
            let client: ClusterClient = self.cluster_builder(response_timeout).build()?;
            return Ok(Conn::Cluster(ClusterConn::connect(client).await?));
        }
        let client = redis::Client::open(self.first_url())?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(response_timeout))
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_number_of_retries(3)
            .set_max_delay(Duration::from_secs(2));
        Ok(Conn::Single(
            ConnectionManager::new_with_config(client, config).await?,
        ))
    }

    /// A connection of its own for blocking reads of up to `block`.
    pub async fn dedicated(&self, block: Duration) -> RedisResult<Conn> {
        self.connect(block + Duration::from_secs(5)).await
    }

    /// Retries [`Redis::connect`] until it succeeds or `cancel` fires.
    pub async fn connect_with_retry(
        &self,
        response_timeout: Duration,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Option<Conn> {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.connect(response_timeout).await {
                Ok(conn) => return Some(conn),
                Err(err) => {
                    tracing::warn!(error = %err, redis = %self.describe(), "cannot reach Redis; retrying");
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return None,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// A RESP3 connection whose pushes (messages, subscription changes, disconnections) go to
    /// `push`; subscriptions are restored after reconnects and topology changes.
    pub async fn pubsub(&self, push: UnboundedSender<PushInfo>) -> RedisResult<Conn> {
        if self.cluster {
            let client = self
                .cluster_builder(Duration::from_secs(5))
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(push)
                .build()?;
            return Ok(Conn::Cluster(ClusterConn::connect(client).await?));
        }
        let url = self.first_url();
        let url = if url.contains('?') {
            format!("{url}&protocol=resp3")
        } else {
            format!("{url}?protocol=resp3")
        };
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_push_sender(push)
            .set_automatic_resubscription()
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_max_delay(Duration::from_secs(2));
        Ok(Conn::Single(
            ConnectionManager::new_with_config(client, config).await?,
        ))
    }
}

/// One connection, to a standalone server or to a cluster.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConn),
}

impl Conn {
    pub fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    /// Changes when the connection was replaced (cluster only, see [`ClusterConn`]): its
    /// subscriptions are gone and must be made again.
    pub fn generation(&self) -> u64 {
        match self {
            Conn::Single(_) => 0,
            Conn::Cluster(c) => c.generation(),
        }
    }

    /// `PUBLISH channel payload`, or `SPUBLISH` on a cluster.
    pub fn publish(&self, channel: &str, payload: impl redis::ToRedisArgs) -> Cmd {
        let mut cmd = redis::cmd(if self.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        });
        cmd.arg(channel).arg(payload);
        cmd
    }

    /// `PUBLISH` or `SPUBLISH`, for scripts that publish.
    pub fn publish_command(&self) -> &'static str {
        if self.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// Subscribes (sharded on a cluster). Needs a connection from [`Redis::pubsub`].
    pub async fn subscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Conn::Single(c) => c.subscribe(channel).await,
            Conn::Cluster(c) => c.ssubscribe(channel).await,
        }
    }

    pub async fn unsubscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Conn::Single(c) => c.unsubscribe(channel).await,
            Conn::Cluster(c) => c.sunsubscribe(channel).await,
        }
    }

    /// Runs commands that may touch different slots; one result per command, in order.
    /// Standalone: one pipelined round trip. Cluster: routed one by one, concurrently (a
    /// pipeline must stay in one slot there). `Err` only when the connection itself failed.
    pub async fn query_many(&mut self, cmds: Vec<Cmd>) -> RedisResult<Vec<RedisResult<Value>>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Conn::Single(c) => {
                let mut pipe = redis::pipe();
                pipe.ignore_errors();
                for cmd in cmds {
                    pipe.add_command(cmd);
                }
                let values: Vec<Value> = pipe.query_async(c).await?;
                Ok(values.into_iter().map(Value::extract_error).collect())
            }
            Conn::Cluster(c) => {
                let futures = cmds.into_iter().map(|cmd| {
                    let mut conn = c.clone();
                    async move { cmd.query_async::<Value>(&mut conn).await }
                });
                Ok(join_all(futures).await)
            }
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0)
}
