//! Partition leases (`lua/lease.lua`) and the membership set the rebalancer reads.
//!
//! A lease names one owner per partition, expires `CLAIM_IDLE_MS` after its last renewal, and
//! carries an epoch that every acquisition raises: the fencing token that apply.lua and
//! commit.lua check. The committed offset lives beside it, so a new owner knows where to
//! start reading.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use confab_shared::db::Conn;
use confab_shared::keys::{self, PartitionKeys};
use confab_shared::scripting::Lua;
use redis::RedisResult;
use serde::{Deserialize, Serialize};

/// `ARGV[1]` of lease.lua.
#[derive(Serialize)]
struct LeaseRequest<'a> {
    op: &'static str,
    owner: &'a str,
    epoch: u64,
    ttl_ms: u64,
}

/// The reply of lease.lua.
#[derive(Deserialize, Debug, Default)]
pub struct LeaseReply {
    pub ok: bool,
    #[serde(default)]
    pub epoch: u64,
    #[serde(default)]
    pub offset: Option<String>,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub until_ms: u64,
}

pub struct Leases {
    script: Lua,
    owner: String,
    ttl: Duration,
}

impl Leases {
    pub fn new(owner: String, ttl: Duration) -> Self {
        Self {
            script: Lua::new(include_str!("../lua/lease.lua")),
            owner,
            ttl,
        }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    async fn op(
        &self,
        conn: &mut Conn,
        pk: &PartitionKeys,
        op: &'static str,
        epoch: u64,
    ) -> RedisResult<LeaseReply> {
        let req = LeaseRequest {
            op,
            owner: &self.owner,
            epoch,
            ttl_ms: self.ttl.as_millis() as u64,
        };
        self.script.run(conn, &[&pk.lease], &req).await
    }

    pub async fn acquire(&self, conn: &mut Conn, pk: &PartitionKeys) -> RedisResult<LeaseReply> {
        self.op(conn, pk, "acquire", 0).await
    }

    pub async fn renew(
        &self,
        conn: &mut Conn,
        pk: &PartitionKeys,
        epoch: u64,
    ) -> RedisResult<bool> {
        Ok(self.op(conn, pk, "renew", epoch).await?.ok)
    }

    pub async fn release(
        &self,
        conn: &mut Conn,
        pk: &PartitionKeys,
        epoch: u64,
    ) -> RedisResult<bool> {
        Ok(self.op(conn, pk, "release", epoch).await?.ok)
    }

    /// Who holds each partition now (`None`: free or lapsed); one call per partition, concurrently.
    pub async fn holders(
        &self,
        conn: &mut Conn,
        parts: &[PartitionKeys],
    ) -> RedisResult<Vec<Option<String>>> {
        let req = LeaseRequest {
            op: "status",
            owner: &self.owner,
            epoch: 0,
            ttl_ms: 0,
        };
        let results = self
            .script
            .run_many(conn, || {
                parts
                    .iter()
                    .map(|pk| self.script.call(&[&pk.lease], &req))
                    .collect()
            })
            .await?;
        results
            .into_iter()
            .map(|r| {
                let reply: LeaseReply = confab_shared::scripting::decode_reply(&r?)?;
                Ok(reply.owner.filter(|o| !o.is_empty()))
            })
            .collect()
    }
}

/// Announces this replica and returns the live ones, sorted: the heartbeat of the rebalancer.
/// Entries whose deadline passed (a SIGKILLed replica) are dropped.
pub async fn heartbeat(conn: &mut Conn, me: &str, ttl: Duration) -> RedisResult<Vec<String>> {
    let now = confab_shared::db::now_ms();
    let (members,): (Vec<String>,) = redis::pipe()
        .cmd("ZADD")
        .arg(keys::PERSISTENCE_MEMBERS)
        .arg(now + ttl.as_millis() as u64)
        .arg(me)
        .ignore()
        .cmd("ZREMRANGEBYSCORE")
        .arg(keys::PERSISTENCE_MEMBERS)
        .arg("-inf")
        .arg(now)
        .ignore()
        .cmd("ZRANGE")
        .arg(keys::PERSISTENCE_MEMBERS)
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await?;
    // By name, not by heartbeat time: every replica must see the same order.
    let mut members = members;
    members.sort_unstable();
    Ok(members)
}

/// Leaves the membership set (graceful shutdown), so the others rebalance at once.
pub async fn leave(conn: &mut Conn, me: &str) -> RedisResult<()> {
    redis::cmd("ZREM")
        .arg(keys::PERSISTENCE_MEMBERS)
        .arg(me)
        .query_async(conn)
        .await
}

/// How many partitions the replica at `index` of `members` sorted names should own: the first
/// `P mod N` own ⌈P/N⌉, the others ⌊P/N⌋, so the quotas add up to P exactly.
pub fn quota(partitions: u32, members: usize, index: usize) -> u32 {
    let n = members.max(1) as u32;
    let base = partitions / n;
    if (index as u32) < partitions % n {
        base + 1
    } else {
        base
    }
}

/// Until when this replica may act on a lease, by its own monotonic clock: the time the last
/// successful renewal was *sent* plus the lease's length, less a safety margin. A replica
/// that was paused (SIGSTOP, a long GC-like stall) sees its clock jump past it and stops
/// applying before anything else happens.
pub struct LeaseClock {
    origin: Instant,
    valid_until_ms: AtomicU64,
}

impl LeaseClock {
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            valid_until_ms: AtomicU64::new(0),
        }
    }

    /// Records a renewal (or acquisition) sent at `sent`.
    pub fn renewed(&self, sent: Instant, ttl: Duration) {
        let margin = ttl / 5;
        let until = sent.saturating_duration_since(self.origin) + ttl.saturating_sub(margin);
        self.valid_until_ms
            .fetch_max(until.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn valid(&self) -> bool {
        (self.origin.elapsed().as_millis() as u64) < self.valid_until_ms.load(Ordering::SeqCst)
    }
}

impl Default for LeaseClock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_add_up_and_differ_by_at_most_one() {
        for p in [1u32, 2, 7, 16, 100] {
            for n in 1usize..=20 {
                let qs: Vec<u32> = (0..n).map(|i| quota(p, n, i)).collect();
                assert_eq!(qs.iter().sum::<u32>(), p, "{p} over {n}");
                let (lo, hi) = (qs.iter().min(), qs.iter().max());
                assert!(hi.zip(lo).is_some_and(|(h, l)| h - l <= 1));
                assert!(qs
                    .iter()
                    .all(|&q| q == p / n as u32 || q == p.div_ceil(n as u32)));
            }
        }
    }

    #[test]
    fn a_lease_clock_expires_and_renews() {
        let c = LeaseClock::new();
        assert!(!c.valid());
        c.renewed(Instant::now(), Duration::from_secs(60));
        assert!(c.valid());
        // A renewal that was sent long ago gives nothing.
        let stale = LeaseClock::new();
        stale.renewed(stale.origin, Duration::from_millis(0));
        assert!(!stale.valid());
    }
}
