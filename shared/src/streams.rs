//! The consumer-group runner every worker role uses.
//!
//! Design (after svix-webhooks' Redis Streams queue):
//! - **Groups** are created idempotently (`XGROUP CREATE … 0 MKSTREAM`, `BUSYGROUP` tolerated)
//!   from the start of the stream, so nothing written before a worker starts is skipped.
//! - **Reading**: `XREADGROUP … COUNT batch BLOCK 1s` on a connection of its own.
//! - **Reclaiming**: every `CLAIM_IDLE_MS / 2`, `XAUTOCLAIM` takes over entries idle for longer
//!   than `CLAIM_IDLE_MS` (their consumer died). Each claim raises the entry's delivery count.
//! - **Dead letters**: an entry delivered more than `MAX_DELIVERIES` times, or one a handler
//!   calls poison, is copied to the dead-letter stream with its reason, logged, and acked.
//! - **Trimming**: [`trim_consumed`] removes entries every group has acknowledged (`XTRIM MINID`),
//!   so a stream holds only the backlog; producers refuse work once the backlog hits its cap.
//! - **Shutdown**: [`run`] checks the token between batches, so the batch in hand is finished
//!   and acknowledged before the loop returns.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use redis::streams::{
    StreamAutoClaimReply, StreamId, StreamInfoGroupsReply, StreamPendingCountReply, StreamReadReply,
};
use redis::{RedisResult, Value};
use tokio_util::sync::CancellationToken;

use crate::db::{Conn, Redis};

/// Where and how one consumer reads.
#[derive(Clone, Debug)]
pub struct GroupConfig {
    pub stream: String,
    pub group: String,
    pub consumer: String,
    pub batch: usize,
    pub block: Duration,
    pub claim_idle: Duration,
    pub max_deliveries: u64,
    pub dead_letter_stream: String,
    pub dead_letter_max_len: u64,
}

/// One entry handed to a handler.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub id: String,
    pub fields: HashMap<String, Value>,
    /// 1 on first delivery; more after reclaims.
    pub deliveries: u64,
}

impl Delivery {
    pub fn field(&self, name: &str) -> Option<String> {
        self.fields
            .get(name)
            .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
    }
}

/// What to do with an entry once its handler is done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Done (or a duplicate): acknowledge.
    Ack,
    /// A transient failure: leave it pending so it is reclaimed and retried.
    Retry,
    /// It can never succeed: dead-letter it with this reason and acknowledge.
    Poison(String),
}

/// A consumer in a group, with its own blocking connection.
pub struct GroupConsumer {
    cfg: GroupConfig,
    conn: Conn,
    read_conn: Conn,
    claim_cursor: String,
    last_claim: Option<Instant>,
}

impl GroupConsumer {
    pub async fn new(redis: &Redis, conn: Conn, cfg: GroupConfig) -> RedisResult<Self> {
        let read_conn = redis.dedicated(cfg.block).await?;
        let mut me = Self {
            cfg,
            conn,
            read_conn,
            claim_cursor: "0-0".into(),
            last_claim: None,
        };
        ensure_group(&mut me.conn, &me.cfg.stream, &me.cfg.group).await?;
        Ok(me)
    }

    /// Entries to work on: reclaimed ones when a reclaim is due and finds some, else new ones
    /// (waiting up to `block`). Entries over the delivery limit are dead-lettered here.
    pub async fn next_batch(&mut self) -> RedisResult<Vec<Delivery>> {
        let due = self
            .last_claim
            .is_none_or(|t| t.elapsed() >= self.cfg.claim_idle / 2);
        if due {
            self.last_claim = Some(Instant::now());
            let claimed = self.reclaim().await?;
            if !claimed.is_empty() {
                return Ok(claimed);
            }
        }
        let reply: Option<StreamReadReply> = match redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.cfg.group)
            .arg(&self.cfg.consumer)
            .arg("COUNT")
            .arg(self.cfg.batch)
            .arg("BLOCK")
            .arg(self.cfg.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.cfg.stream)
            .arg(">")
            .query_async(&mut self.read_conn)
            .await
        {
            Ok(r) => r,
            Err(e) if e.code() == Some("NOGROUP") => {
                // The stream was deleted under us (FLUSHALL, operator): recreate and go on.
                ensure_group(&mut self.conn, &self.cfg.stream, &self.cfg.group).await?;
                return Ok(Vec::new());
            }
            Err(e) => return Err(e),
        };
        Ok(reply
            .map(|r| {
                r.keys
                    .into_iter()
                    .flat_map(|k| k.ids)
                    .map(|s| into_delivery(s, 1))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn reclaim(&mut self) -> RedisResult<Vec<Delivery>> {
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&self.cfg.stream)
            .arg(&self.cfg.group)
            .arg(&self.cfg.consumer)
            .arg(self.cfg.claim_idle.as_millis() as u64)
            .arg(&self.claim_cursor)
            .arg("COUNT")
            .arg(self.cfg.batch)
            .query_async(&mut self.conn)
            .await?;
        self.claim_cursor = reply.next_stream_id.clone();
        if reply.claimed.is_empty() {
            return Ok(Vec::new());
        }
        let counts = self.delivery_counts(&reply.claimed).await?;
        let mut fresh = Vec::new();
        let mut dead = Vec::new();
        for s in reply.claimed {
            let n = counts
                .get(&s.id)
                .copied()
                .unwrap_or(self.cfg.max_deliveries + 1);
            let d = into_delivery(s, n);
            if n > self.cfg.max_deliveries {
                dead.push((
                    d,
                    format!(
                        "delivered {n} times (MAX_DELIVERIES={})",
                        self.cfg.max_deliveries
                    ),
                ));
            } else {
                fresh.push(d);
            }
        }
        if !dead.is_empty() {
            let outcomes: Vec<_> = dead
                .iter()
                .map(|(d, why)| (d.clone(), Disposition::Poison(why.clone())))
                .collect();
            self.settle(&outcomes).await?;
        }
        tracing::warn!(stream = %self.cfg.stream, reclaimed = fresh.len(), "reclaimed entries from an idle consumer");
        Ok(fresh)
    }

    /// Delivery counts of just-claimed entries: one `XPENDING stream group id id 1` each, in one
    /// pipelined round trip (a range query would be cut short by this consumer's other entries).
    async fn delivery_counts(&mut self, claimed: &[StreamId]) -> RedisResult<HashMap<String, u64>> {
        let mut pipe = redis::pipe();
        for entry in claimed {
            pipe.cmd("XPENDING")
                .arg(&self.cfg.stream)
                .arg(&self.cfg.group)
                .arg(&entry.id)
                .arg(&entry.id)
                .arg(1);
        }
        let replies: Vec<StreamPendingCountReply> = pipe.query_async(&mut self.conn).await?;
        Ok(replies
            .into_iter()
            .flat_map(|r| r.ids)
            .map(|p| (p.id, p.times_delivered as u64))
            .collect())
    }

    /// Acknowledges `Ack` and `Poison` entries (dead-lettering the latter) in one round trip.
    pub async fn settle(&mut self, outcomes: &[(Delivery, Disposition)]) -> RedisResult<()> {
        self.acker().settle(outcomes).await
    }

    /// A cloneable handle for acknowledging from other tasks (long-running jobs).
    pub fn acker(&self) -> Acker {
        Acker {
            conn: self.conn.clone(),
            cfg: self.cfg.clone(),
        }
    }
}

/// Acknowledges, dead-letters and keeps alive entries of one consumer; cheap to clone.
#[derive(Clone)]
pub struct Acker {
    conn: Conn,
    cfg: GroupConfig,
}

impl Acker {
    /// Acknowledges `Ack` and `Poison` entries (dead-lettering the latter) in one round trip.
    pub async fn settle(&self, outcomes: &[(Delivery, Disposition)]) -> RedisResult<()> {
        let mut pipe = redis::pipe();
        let mut acks = Vec::new();
        for (d, disp) in outcomes {
            match disp {
                Disposition::Ack => acks.push(d.id.as_str()),
                Disposition::Retry => {}
                Disposition::Poison(reason) => {
                    tracing::error!(stream = %self.cfg.stream, id = %d.id, deliveries = d.deliveries, %reason, "entry moved to the dead-letter stream");
                    let payload: HashMap<&String, String> = d
                        .fields
                        .iter()
                        .map(|(k, v)| {
                            (
                                k,
                                redis::from_redis_value_ref::<String>(v).unwrap_or_default(),
                            )
                        })
                        .collect();
                    pipe.cmd("XADD")
                        .arg(&self.cfg.dead_letter_stream)
                        .arg("MAXLEN")
                        .arg("~")
                        .arg(self.cfg.dead_letter_max_len)
                        .arg("*")
                        .arg("stream")
                        .arg(&self.cfg.stream)
                        .arg("group")
                        .arg(&self.cfg.group)
                        .arg("entry")
                        .arg(&d.id)
                        .arg("deliveries")
                        .arg(d.deliveries)
                        .arg("reason")
                        .arg(reason)
                        .arg("payload")
                        .arg(serde_json::to_string(&payload).unwrap_or_default())
                        .ignore();
                    acks.push(d.id.as_str());
                }
            }
        }
        if acks.is_empty() {
            return Ok(());
        }
        pipe.cmd("XACK")
            .arg(&self.cfg.stream)
            .arg(&self.cfg.group)
            .arg(&acks)
            .ignore();
        pipe.query_async::<()>(&mut self.conn.clone()).await
    }

    /// Resets the idle time of entries still being worked on, so no one reclaims a live job.
    /// `JUSTID` leaves the delivery counter alone.
    pub async fn keep_alive(&self, ids: &[String]) -> RedisResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        redis::cmd("XCLAIM")
            .arg(&self.cfg.stream)
            .arg(&self.cfg.group)
            .arg(&self.cfg.consumer)
            .arg(0)
            .arg(ids)
            .arg("JUSTID")
            .query_async::<Value>(&mut self.conn.clone())
            .await
            .map(|_| ())
    }
}

fn into_delivery(s: StreamId, deliveries: u64) -> Delivery {
    Delivery {
        id: s.id,
        fields: s.map,
        deliveries,
    }
}

/// `XGROUP CREATE stream group 0 MKSTREAM`, tolerating an existing group.
pub async fn ensure_group(conn: &mut Conn, stream: &str, group: &str) -> RedisResult<()> {
    let res: RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match res {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// Whether `group` exists on `stream` (readiness checks).
pub async fn group_exists(conn: &mut Conn, stream: &str, group: &str) -> RedisResult<bool> {
    let res: RedisResult<StreamInfoGroupsReply> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await;
    match res {
        Ok(reply) => Ok(reply.groups.iter().any(|g| g.name == group)),
        Err(e) if e.to_string().contains("no such key") => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes entries that every group has delivered and acknowledged (exactly, not `~`: the
/// backlog cap counts `XLEN`, so acknowledged entries must really go). Returns how many went.
pub async fn trim_consumed(conn: &mut Conn, stream: &str) -> RedisResult<u64> {
    let groups: StreamInfoGroupsReply = match redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await
    {
        Ok(g) => g,
        Err(e) if e.to_string().contains("no such key") => return Ok(0),
        Err(e) => return Err(e),
    };
    if groups.groups.is_empty() {
        return Ok(0);
    }
    let mut min_id: Option<(u64, u64)> = None;
    for g in &groups.groups {
        let bound = if g.pending > 0 {
            // XPENDING summary: [count, smallest id, greatest id, consumers]
            let v: Value = redis::cmd("XPENDING")
                .arg(stream)
                .arg(&g.name)
                .query_async(conn)
                .await?;
            match v {
                Value::Array(items) if items.len() >= 2 => {
                    redis::from_redis_value_ref::<String>(&items[1]).ok()
                }
                _ => None,
            }
        } else {
            Some(g.last_delivered_id.clone())
        };
        let Some(id) = bound.as_deref().and_then(parse_stream_id) else {
            return Ok(0);
        };
        min_id = Some(min_id.map_or(id, |m| m.min(id)));
    }
    let Some((ms, seq)) = min_id else {
        return Ok(0);
    };
    redis::cmd("XTRIM")
        .arg(stream)
        .arg("MINID")
        .arg(format!("{ms}-{seq}"))
        .query_async(conn)
        .await
}

/// `"1700000000000-3"` → `(1700000000000, 3)`.
pub fn parse_stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// Runs `handle` on batch after batch until `cancel` fires; the batch in hand is finished
/// and settled first. Redis errors are logged and retried with a short pause.
pub async fn run<F, Fut>(mut consumer: GroupConsumer, cancel: CancellationToken, mut handle: F)
where
    F: FnMut(Vec<Delivery>) -> Fut,
    Fut: Future<Output = Vec<(Delivery, Disposition)>>,
{
    let name = format!("{}/{}", consumer.cfg.group, consumer.cfg.consumer);
    tracing::info!(consumer = %name, stream = %consumer.cfg.stream, "consumer started");
    while !cancel.is_cancelled() {
        let batch = match consumer.next_batch().await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, consumer = %name, "reading the stream failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        if batch.is_empty() {
            continue;
        }
        let outcomes = handle(batch).await;
        // Settling must not be abandoned on shutdown: retry briefly, then leave the entries
        // pending for another replica to reclaim.
        for attempt in 0..5 {
            match consumer.settle(&outcomes).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, attempt, consumer = %name, "acknowledging failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    tracing::info!(consumer = %name, "consumer stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_parse_and_order() {
        assert_eq!(parse_stream_id("5-1"), Some((5, 1)));
        assert!(parse_stream_id("5-1") < parse_stream_id("5-2"));
        assert!(parse_stream_id("4-9") < parse_stream_id("5-0"));
        assert_eq!(parse_stream_id("nonsense"), None);
    }
}
