//! Where a partition's entries come from: [`Feeds`] reads the command streams of every
//! partition this replica owns and hands each partition task its entries, in order.
//!
//! Reads are `XREAD` from the committed offset on: non-destructive, so a replica that lost a
//! partition cannot take entries away from the new owner. A blocking read holds its
//! connection, and on this kind of machine a round trip costs Redis more CPU than a command,
//! so reads are shared as far as Redis allows:
//!
//! - **Standalone**: one reader per replica, one `XREAD … STREAMS s1 … sN` over every owned
//!   partition that has room, blocking up to [`IDLE_BLOCK`]. A burst wakes every partition
//!   with one reply.
//! - **Cluster**: a multi-key `XREAD` must stay in one slot, so each partition has a reader
//!   of its own, on a connection of its own.
//!
//! Flow control: each partition's channel holds [`QUEUED_BATCHES`] batches; a partition whose
//! task has not taken them is left out of the next read until it has.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use confab_shared::db::{Conn, Redis};
use confab_shared::keys::PartitionKeys;
use redis::{RedisResult, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::window::Slot;

/// The longest a read waits for new entries; also how soon a newly owned partition is read.
pub const IDLE_BLOCK: Duration = Duration::from_millis(100);
/// Batches read ahead per partition.
const QUEUED_BATCHES: usize = 2;

/// A partition's side of its feed.
pub type Entries = mpsc::Receiver<Vec<Slot>>;

struct Feed {
    stream: String,
    /// The newest entry handed over (the committed offset at first).
    after: String,
    tx: mpsc::Sender<Vec<Slot>>,
}

#[derive(Clone)]
pub struct Feeds {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    /// One reader task over every registered partition.
    Shared(Arc<Mutex<HashMap<u32, Feed>>>),
    /// A reader task per partition.
    Own {
        redis: Redis,
        readers: Arc<Mutex<HashMap<u32, CancellationToken>>>,
    },
}

impl Feeds {
    /// Starts the shared reader (standalone) on a connection of its own, until `stop`.
    pub async fn start(redis: &Redis, batch: usize, stop: CancellationToken) -> RedisResult<Feeds> {
        if redis.is_cluster() {
            return Ok(Feeds {
                kind: Kind::Own {
                    redis: redis.clone(),
                    readers: Arc::default(),
                },
            });
        }
        let conn = redis.dedicated(IDLE_BLOCK).await?;
        let feeds: Arc<Mutex<HashMap<u32, Feed>>> = Arc::default();
        tokio::spawn(shared_reader(conn, feeds.clone(), batch, stop));
        Ok(Feeds {
            kind: Kind::Shared(feeds),
        })
    }

    /// Starts feeding partition `pk` from after `offset`.
    pub async fn open(
        &self,
        pk: &PartitionKeys,
        offset: &str,
        batch: usize,
    ) -> RedisResult<Entries> {
        let (tx, rx) = mpsc::channel(QUEUED_BATCHES);
        let feed = Feed {
            stream: pk.commands.clone(),
            after: offset.to_string(),
            tx,
        };
        match &self.kind {
            Kind::Shared(feeds) => {
                if let Ok(mut f) = feeds.lock() {
                    f.insert(pk.index, feed);
                }
            }
            Kind::Own { redis, readers } => {
                let conn = redis.dedicated(IDLE_BLOCK * 10).await?;
                let stop = CancellationToken::new();
                if let Ok(mut r) = readers.lock() {
                    if let Some(old) = r.insert(pk.index, stop.clone()) {
                        old.cancel();
                    }
                }
                tokio::spawn(own_reader(conn, feed, batch, stop));
            }
        }
        Ok(rx)
    }

    /// Stops feeding partition `index` (its entries stay in the stream for the next owner).
    pub fn close(&self, index: u32) {
        match &self.kind {
            Kind::Shared(feeds) => {
                if let Ok(mut f) = feeds.lock() {
                    f.remove(&index);
                }
            }
            Kind::Own { readers, .. } => {
                if let Some(stop) = readers.lock().ok().and_then(|mut r| r.remove(&index)) {
                    stop.cancel();
                }
            }
        }
    }
}

/// Standalone: one `XREAD` over every registered partition whose channel has room.
async fn shared_reader(
    mut conn: Conn,
    feeds: Arc<Mutex<HashMap<u32, Feed>>>,
    batch: usize,
    stop: CancellationToken,
) {
    let mut block = true;
    while !stop.is_cancelled() {
        let wanted: Vec<(u32, String, String)> = match feeds.lock() {
            Ok(f) => f
                .iter()
                .filter(|(_, feed)| feed.tx.capacity() > 0)
                .map(|(p, feed)| (*p, feed.stream.clone(), feed.after.clone()))
                .collect(),
            Err(_) => return,
        };
        if wanted.is_empty() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(5)) => continue,
            }
        }
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(batch);
        if block {
            cmd.arg("BLOCK").arg(IDLE_BLOCK.as_millis() as u64);
        }
        cmd.arg("STREAMS");
        for (_, stream, _) in &wanted {
            cmd.arg(stream);
        }
        for (_, _, after) in &wanted {
            cmd.arg(after);
        }
        let reply = tokio::select! {
            _ = stop.cancelled() => return,
            r = cmd.query_async::<Value>(&mut conn) => r,
        };
        let batches = match reply.map(by_stream) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "reading the command streams failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        // Block again only when nothing came: under load the next read follows at once.
        block = batches.is_empty();
        let Ok(mut f) = feeds.lock() else { return };
        for (stream, slots) in batches {
            // Only to the feed this read was for: one released (or released and taken again)
            // meanwhile reads from its committed offset instead.
            let asked = wanted.iter().find(|(_, s, _)| *s == stream);
            let Some(feed) = f.values_mut().find(|feed| {
                feed.stream == stream && asked.is_some_and(|(_, _, after)| *after == feed.after)
            }) else {
                continue;
            };
            let Some(last) = slots.last().map(|s| s.id.clone()) else {
                continue;
            };
            if feed.tx.try_send(slots).is_ok() {
                feed.after = last;
            }
        }
    }
}

/// Cluster: one partition's reader, blocking on its own connection.
async fn own_reader(mut conn: Conn, mut feed: Feed, batch: usize, stop: CancellationToken) {
    while !stop.is_cancelled() {
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            p = feed.tx.reserve() => match p { Ok(p) => p, Err(_) => return },
        };
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(batch)
            .arg("BLOCK")
            .arg((IDLE_BLOCK * 10).as_millis() as u64)
            .arg("STREAMS")
            .arg(&feed.stream)
            .arg(&feed.after);
        let reply = tokio::select! {
            _ = stop.cancelled() => return,
            r = cmd.query_async::<Value>(&mut conn) => r,
        };
        match reply.map(by_stream) {
            Ok(mut batches) => {
                if let Some((_, slots)) = batches.pop() {
                    if let Some(last) = slots.last() {
                        feed.after = last.id.clone();
                        permit.send(slots);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(stream = %feed.stream, error = %e, "reading a command stream failed; retrying");
                drop(permit);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }
    }
}

/// An `XREAD` reply as `(stream, entries)` (nil: none).
fn by_stream(v: Value) -> Vec<(String, Vec<Slot>)> {
    let reply: Option<redis::streams::StreamReadReply> = redis::from_redis_value(v).ok().flatten();
    reply
        .map(|r| {
            r.keys
                .into_iter()
                .map(|k| (k.key, k.ids.into_iter().map(Slot::from_entry).collect()))
                .filter(|(_, slots): &(String, Vec<Slot>)| !slots.is_empty())
                .collect()
        })
        .unwrap_or_default()
}
