//! The partition layout a deployment runs, recorded in Redis, and the one safe way to change
//! it.
//!
//! Which partition a conversation's commands go to depends on `STREAM_PARTITIONS`, so two
//! layouts must never carry commands of the same conversation at once: commands queued
//! under the old layout would be applied after newer ones under the new layout. Every
//! process checks at start-up ([`ensure`]):
//!
//! - no layout recorded: it records its own;
//! - the same layout: it goes on;
//! - another layout, and every command and completion-job stream of the recorded layout is
//!   drained: it moves the recorded layout's cleanup-index entries to their new partitions
//!   and records the new layout;
//! - another layout with work still queued: it refuses to start, naming `STREAM_PARTITIONS`
//!   and what is queued.
//!
//! So the procedure is: stop the gateways (nothing new is queued), wait until
//! `workers drained` says so, restart everything with the new `STREAM_PARTITIONS`.

use redis::RedisResult;

use crate::db::Conn;
use crate::keys::{self, PartitionKeys};
use crate::partition::Partitions;

/// Hash: `partitions` → the deployment's `STREAM_PARTITIONS`.
pub const LAYOUT_KEY: &str = "confab:layout";

/// What is still queued under a layout.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Backlog {
    /// Command-stream entries not yet applied, per partition.
    pub commands: Vec<(u32, u64)>,
    /// Completion jobs not yet delivered or acknowledged, per partition.
    pub jobs: Vec<(u32, u64)>,
}

impl Backlog {
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty() && self.jobs.is_empty()
    }

    pub fn total(&self) -> u64 {
        self.commands.iter().chain(&self.jobs).map(|(_, n)| n).sum()
    }
}

/// Why a process must not start with its `STREAM_PARTITIONS`.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "STREAM_PARTITIONS={wanted} but the deployment runs {recorded} partitions and {queued} \
         commands or jobs are still queued under them: stop the gateways, wait until \
         `workers drained` reports nothing queued, then restart every process with the new \
         STREAM_PARTITIONS (README: Changing STREAM_PARTITIONS)"
    )]
    NotDrained {
        wanted: u32,
        recorded: u32,
        queued: u64,
    },
    #[error("reading the partition layout failed: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Checks (and when safe, moves to) `parts` as the deployment's layout.
pub async fn ensure(conn: &mut Conn, parts: &Partitions) -> Result<(), LayoutError> {
    let wanted = parts.count();
    let recorded: Option<u32> = redis::cmd("HGET")
        .arg(LAYOUT_KEY)
        .arg("partitions")
        .query_async(conn)
        .await?;
    let Some(recorded) = recorded else {
        let _: bool = redis::cmd("HSETNX")
            .arg(LAYOUT_KEY)
            .arg("partitions")
            .arg(wanted)
            .query_async(conn)
            .await?;
        return Ok(());
    };
    if recorded == wanted {
        return Ok(());
    }
    let old = Partitions::new(recorded);
    let queued = backlog(conn, &old).await?;
    if !queued.is_empty() {
        return Err(LayoutError::NotDrained {
            wanted,
            recorded,
            queued: queued.total(),
        });
    }
    move_cleanup_index(conn, &old, parts).await?;
    let _: () = redis::cmd("HSET")
        .arg(LAYOUT_KEY)
        .arg("partitions")
        .arg(wanted)
        .query_async(conn)
        .await?;
    tracing::warn!(
        from = recorded,
        to = wanted,
        "the partition layout changed (the old streams were drained)"
    );
    Ok(())
}

/// What is queued under `parts`: command entries not yet committed by an owner, and jobs a
/// completion worker has not acknowledged (or not even read).
pub async fn backlog(conn: &mut Conn, parts: &Partitions) -> RedisResult<Backlog> {
    let mut out = Backlog::default();
    for pk in PartitionKeys::all(parts) {
        let commands: u64 = redis::cmd("XLEN")
            .arg(&pk.commands)
            .query_async(conn)
            .await?;
        if commands > 0 {
            out.commands.push((pk.index, commands));
        }
        let jobs = unfinished_jobs(conn, &pk.jobs).await?;
        if jobs > 0 {
            out.jobs.push((pk.index, jobs));
        }
    }
    Ok(out)
}

/// Jobs the completion group has not acknowledged: pending plus never delivered.
async fn unfinished_jobs(conn: &mut Conn, stream: &str) -> RedisResult<u64> {
    let groups: redis::RedisResult<redis::streams::StreamInfoGroupsReply> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await;
    let groups = match groups {
        Ok(g) => g,
        // No stream: nothing queued.
        Err(e) if e.to_string().contains("no such key") => return Ok(0),
        Err(e) => return Err(e),
    };
    let Some(g) = groups
        .groups
        .iter()
        .find(|g| g.name == keys::COMPLETION_GROUP)
    else {
        let len: u64 = redis::cmd("XLEN").arg(stream).query_async(conn).await?;
        return Ok(len);
    };
    let lag = g.lag.unwrap_or(0) as u64;
    Ok(g.pending as u64 + lag)
}

/// Moves every cleanup-index entry of `old` to its conversation's partition in `new` (each
/// index is a plain sorted set: moving is safe at any time, and repeating it does nothing).
async fn move_cleanup_index(
    conn: &mut Conn,
    old: &Partitions,
    new: &Partitions,
) -> RedisResult<()> {
    for pk in PartitionKeys::all(old) {
        let entries: Vec<(String, u64)> = redis::cmd("ZRANGE")
            .arg(&pk.activity)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(conn)
            .await?;
        for (id, deadline) in entries {
            let Ok(cid) = uuid::Uuid::parse_str(&id) else {
                continue;
            };
            let target = PartitionKeys::new(new, new.of_conversation(&cid));
            if target.activity == pk.activity {
                continue;
            }
            let _: () = redis::cmd("ZADD")
                .arg(&target.activity)
                .arg(deadline)
                .arg(&id)
                .query_async(conn)
                .await?;
            let _: () = redis::cmd("ZREM")
                .arg(&pk.activity)
                .arg(&id)
                .query_async(conn)
                .await?;
        }
    }
    Ok(())
}
