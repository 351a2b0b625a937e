//! A Redis Cluster connection that replaces itself when it stops answering.
//!
//! redis-rs' cluster-async connection repairs itself after most faults: it reconnects to
//! nodes and refreshes its slot map on `MOVED` and connection errors. During a primary
//! failover under CPU pressure it can also wedge: its recovery task waits on its own lock
//! forever (seen with redis 1.8.1 and 1.8.2 in the failover e2e test beside `stress --cpu 2`),
//! and from then on every command through it times out while the cluster itself is healthy.
//!
//! [`ClusterConn`] wraps the connection with the one signal such a wedge gives, a timeout:
//! after a command times out, a fresh connection is built from the seed nodes in the
//! background (at most one rebuild at a time, at most one per [`MIN_GAP`]) and swapped in.
//! Commands already sent finish on the old connection; new ones go to the new one. A timeout
//! that came from a slow but healthy cluster costs one needless reconnect.
//!
//! A rebuilt connection has no subscriptions: Pub/Sub owners watch [`ClusterConn::generation`]
//! and subscribe again when it changes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::aio::ConnectionLike;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// The least time between two rebuilds.
pub const MIN_GAP: Duration = Duration::from_secs(1);
/// How long building a new connection may take before the attempt is given up.
const BUILD_TIMEOUT: Duration = Duration::from_secs(10);

/// A cluster connection shared by clones; see the module notes.
#[derive(Clone)]
pub struct ClusterConn {
    shared: Arc<Shared>,
}

struct Shared {
    client: ClusterClient,
    current: RwLock<ClusterConnection>,
    generation: AtomicU64,
    rebuilding: AtomicBool,
    last_rebuild: Mutex<Option<Instant>>,
}

impl ClusterConn {
    /// Connects through `client` (seed nodes, timeouts and push sender are the client's).
    pub async fn connect(client: ClusterClient) -> RedisResult<Self> {
        let conn = client.get_async_connection().await?;
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                current: RwLock::new(conn),
                generation: AtomicU64::new(0),
                rebuilding: AtomicBool::new(false),
                last_rebuild: Mutex::new(None),
            }),
        })
    }

    /// How many times the connection was rebuilt; a change means subscriptions are gone.
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    /// The connection commands go to now.
    pub fn current(&self) -> ClusterConnection {
        match self.shared.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the connection in the background, unless a rebuild is running or ran less
    /// than [`MIN_GAP`] ago.
    pub fn rebuild(&self) {
        let shared = self.shared.clone();
        let recent = shared
            .last_rebuild
            .lock()
            .ok()
            .and_then(|l| *l)
            .is_some_and(|at| at.elapsed() < MIN_GAP);
        if recent || shared.rebuilding.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            shared.rebuilding.store(false, Ordering::Release);
            return;
        };
        runtime.spawn(async move {
            match tokio::time::timeout(BUILD_TIMEOUT, shared.client.get_async_connection()).await {
                Ok(Ok(conn)) => {
                    if let Ok(mut cur) = shared.current.write() {
                        *cur = conn;
                    }
                    let generation = shared.generation.fetch_add(1, Ordering::AcqRel) + 1;
                    tracing::warn!(
                        generation,
                        "a Redis Cluster command timed out; replaced the cluster connection"
                    );
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "rebuilding the Redis Cluster connection failed")
                }
                Err(_) => tracing::warn!("rebuilding the Redis Cluster connection timed out"),
            }
            if let Ok(mut last) = shared.last_rebuild.lock() {
                *last = Some(Instant::now());
            }
            shared.rebuilding.store(false, Ordering::Release);
        });
    }

    /// Runs `op` on the current connection; a timeout asks for a rebuild.
    fn watch<'a, T: Send + 'a>(
        &self,
        op: impl std::future::Future<Output = RedisResult<T>> + Send + 'a,
    ) -> RedisFuture<'a, T> {
        let this = self.clone();
        Box::pin(async move {
            let result = op.await;
            if let Err(e) = &result {
                if e.is_timeout() {
                    this.rebuild();
                }
            }
            result
        })
    }

    pub async fn ssubscribe(&mut self, channel: &str) -> RedisResult<()> {
        let mut conn = self.current();
        self.watch(async move { conn.ssubscribe(channel).await })
            .await
    }

    pub async fn sunsubscribe(&mut self, channel: &str) -> RedisResult<()> {
        let mut conn = self.current();
        self.watch(async move { conn.sunsubscribe(channel).await })
            .await
    }
}

impl ConnectionLike for ClusterConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let mut conn = self.current();
        self.watch(async move { conn.req_packed_command(cmd).await })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let mut conn = self.current();
        self.watch(async move { conn.req_packed_commands(pipeline, offset, count).await })
    }

    fn get_db(&self) -> i64 {
        0
    }
}
