//! One owned partition: read its command stream after the committed offset, apply each
//! command in order, answer, commit.
//!
//! ```text
//! loop {
//!   take    the entries the feed read (feed.rs: one XREAD for every owned partition)
//!   apply   one apply.lua call per command, in stream order, chained per conversation,
//!           + the due commit: one pipeline on the replica's shared connection
//!   answer  replies to the waiting gateways (one publish per gateway), user notices
//! }
//! ```
//!
//! All partition tasks of a replica send on one multiplexed connection, so what they send at
//! the same moment travels together: Redis pays for round trips, not for partitions.
//!
//! **Order.** Entries are read with `XREAD` from the committed offset, not handed out by a
//! consumer group, so a replica that lost the partition cannot take entries away from the
//! new owner. Every apply.lua call names the entry of the previous command of its
//! conversation in the round (`after`); if that one did not apply (a transient error), this
//! one refuses too and both are retried, in order. Conversations are independent: one whose
//! shard is failing over waits without holding up the others.
//!
//! **Exactly once.** A conversation remembers the last entry applied to it (its cursor); an
//! entry at or before it is a duplicate — a redelivery after a crash, or work the previous
//! owner did after its last commit — and only its (idempotent) side effects are redone.
//!
//! **Fencing.** apply.lua refuses a writer whose epoch is older than the last writer of the
//! conversation in the same partition; commit.lua refuses anyone but the lease holder. Before
//! every round the task checks its lease by its own clock ([`LeaseClock`]).
//!
//! **Poison.** A command that cannot be parsed, or whose script fails `MAX_DELIVERIES` times,
//! is dead-lettered with its reason and the partition moves on.

mod commit;
mod exec;
mod feed;
mod round;
mod window;

use std::sync::Arc;
use std::time::Duration;

use confab_shared::db::{Conn, Redis};
use confab_shared::keys::{self, PartitionKeys};
use confab_shared::scripting::{decode_reply, Lua};
use confab_shared::Config;
use redis::{RedisResult, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::answers::{Answers, Published, Publisher};
use super::lease::LeaseClock;
use super::replicas::ReplicaHealth;
use commit::{CommitReply, Limits, Outbox, Pending, Schedule};
pub use feed::{Entries, Feeds};
use round::Settled;
use window::Window;

/// How long an idle partition waits for entries before looking at its commit again.
const IDLE: Duration = Duration::from_millis(1000);
/// Pause before retrying after a transient failure, doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_millis(1000);
/// How often a partition prunes cleanup-index entries whose conversation Redis expired.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// What every partition task of a process shares.
pub struct Shared {
    pub cfg: Arc<Config>,
    pub redis: Redis,
    /// Every partition task's commands: applies, commits.
    pub conn: Conn,
    /// Where replies and notices go (published together, see answers.rs).
    pub answers: Publisher,
    /// The owned partitions' entries.
    pub feeds: Feeds,
    pub apply: Lua,
    /// The hot path for a plain new message.
    pub send: Lua,
    pub commit: Lua,
    pub replicas: ReplicaHealth,
    pub owner: String,
}

/// A partition this replica holds the lease of.
pub struct Ownership {
    pub keys: PartitionKeys,
    pub epoch: u64,
    /// The committed offset: everything up to here is done.
    pub offset: String,
    pub clock: Arc<LeaseClock>,
}

/// Why a partition task ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// Asked to stop (rebalance, shutdown): everything done was committed.
    Stopped,
    /// Another replica owns the partition now.
    Lost,
}

pub struct Partition {
    shared: Arc<Shared>,
    own: Ownership,
    conn: Conn,
    entries: Entries,
    window: Window,
    outbox: Outbox,
    schedule: Schedule,
    backoff: Duration,
    /// The newest answers handed to the publisher: a commit waits for them (answers.rs).
    published: Published,
}

impl Partition {
    pub async fn new(shared: Arc<Shared>, own: Ownership) -> RedisResult<Self> {
        let batch = shared.cfg.worker_batch_size;
        let entries = shared.feeds.open(&own.keys, &own.offset, batch).await?;
        Ok(Self {
            conn: shared.conn.clone(),
            shared,
            own,
            entries,
            window: Window::default(),
            outbox: Outbox::default(),
            schedule: Schedule::new(),
            backoff: Duration::ZERO,
            published: Published::default(),
        })
    }

    /// Runs until `stop` fires (committing what is done first) or the lease is lost.
    pub async fn run(mut self, stop: CancellationToken) -> Exit {
        let p = self.own.keys.index;
        tracing::info!(partition = p, epoch = self.own.epoch, offset = %self.own.offset, "partition taken");
        let mut last_prune = tokio::time::Instant::now();
        let exit = loop {
            if stop.is_cancelled() {
                break self.final_commit().await;
            }
            if !self.own.clock.valid() {
                // The lease may have lapsed (a pause, Redis unreachable): wait for a renewal.
                if pause(&stop, Duration::from_millis(50)).await {
                    break self.final_commit().await;
                }
                continue;
            }
            match self.step(&stop).await {
                Ok(true) => {}
                Ok(false) => break Exit::Lost,
                Err(e) => {
                    if confab_shared::scripting::is_noscript(&e) {
                        // Redis restarted or flushed its scripts: nothing of this step ran.
                        let _ = self.shared.commit.load(&mut self.conn).await;
                        let _ = self.shared.apply.load(&mut self.conn).await;
                        let _ = self.shared.send.load(&mut self.conn).await;
                    } else {
                        tracing::warn!(partition = p, error = %e, "partition step failed; retrying");
                    }
                    self.backoff = next_backoff(self.backoff);
                }
            }
            if last_prune.elapsed() >= PRUNE_EVERY {
                last_prune = tokio::time::Instant::now();
                if let Err(e) = self.prune().await {
                    tracing::debug!(partition = p, error = %e, "pruning the cleanup index failed");
                }
            }
            if !self.backoff.is_zero() && pause(&stop, self.backoff).await {
                break self.final_commit().await;
            }
        };
        self.shared.feeds.close(p);
        tracing::info!(partition = p, ?exit, "partition released");
        exit
    }

    /// One round: read when idle, else apply what is in hand. `Ok(false)`: the lease is lost.
    async fn step(&mut self, stop: &CancellationToken) -> RedisResult<bool> {
        self.take_ready();
        if !self.window.has_todo() {
            return self.idle(stop).await;
        }
        // Re-checked after any read: a replica paused inside it must not apply on waking.
        if !self.own.clock.valid() {
            return Ok(true);
        }
        let mut settled = Settled::default();
        let (positions, calls) = round::plan(
            &mut self.window,
            &self.shared,
            &self.own,
            &mut self.outbox,
            &mut settled,
        );
        let pending = self.due_commit();
        let mut partition_cmds = Vec::new();
        if let Some(p) = &pending {
            // Never commit past an entry whose reply is not out yet.
            self.published.wait().await;
            partition_cmds.push(self.commit_command(p));
        }
        let round = exec::Round {
            calls,
            wait: self.shared.cfg.redis_wait_replicas,
            wait_ms: self.shared.cfg.redis_wait_timeout_ms,
            partition: partition_cmds,
        };
        let started = std::time::Instant::now();
        let executed = exec::execute(&mut self.conn, round).await;
        confab_shared::metrics::get()
            .command_apply
            .observe(started.elapsed().as_secs_f64());
        let answers = match executed {
            Ok(a) => a,
            Err(e) => {
                if let Some(p) = pending {
                    self.outbox.restore(p.outbox);
                }
                return Err(e);
            }
        };
        round::settle(
            &mut self.window,
            &positions,
            answers.calls,
            &self.shared,
            &self.own,
            &mut self.outbox,
            &mut settled,
        );
        if settled.fenced {
            return Ok(false);
        }
        let mut extra = answers.partition.into_iter();
        if let Some(p) = pending {
            if !self.settle_commit(p, extra.next())? {
                return Ok(false);
            }
        }
        if settled.reload {
            self.shared.apply.load(&mut self.conn).await?;
            self.shared.send.load(&mut self.conn).await?;
        }
        let published = self
            .shared
            .answers
            .send(Answers {
                replies: settled.replies,
                added: settled.added,
            })
            .await;
        self.published.follow(published);
        self.backoff = if settled.transient && !settled.again {
            next_backoff(self.backoff)
        } else {
            Duration::ZERO
        };
        Ok(true)
    }

    /// Moves the entries the feed has read into the window, as far as it has room.
    fn take_ready(&mut self) {
        while self.window.len() < self.window_max() {
            match self.entries.try_recv() {
                Ok(slots) => self.window.extend(slots),
                Err(_) => return,
            }
        }
    }

    /// Nothing to apply: commit what is due, then wait for new entries (no longer than a
    /// done entry may wait for its commit).
    async fn idle(&mut self, stop: &CancellationToken) -> RedisResult<bool> {
        if let Some(p) = self.due_commit() {
            if !self.commit_now(p).await? {
                return Ok(false);
            }
        }
        if self.window.len() >= self.window_max() {
            // Only done entries, too many to take more: commit them now.
            let (n, last) = self.window.done_prefix();
            let p = Pending {
                prefix: n,
                offset: last,
                outbox: std::mem::take(&mut self.outbox),
            };
            return self.commit_now(p).await;
        }
        let (done, _) = self.window.done_prefix();
        let wait = self.schedule.wait_at_most(done).unwrap_or(IDLE).min(IDLE);
        tokio::select! {
            slots = self.entries.recv() => match slots {
                Some(slots) => self.window.extend(slots),
                None => return Ok(false),
            },
            _ = tokio::time::sleep(wait) => {}
            // Nothing is in hand but done entries: stopping here loses nothing.
            _ = stop.cancelled() => {}
        }
        Ok(true)
    }

    fn window_max(&self) -> usize {
        self.shared.cfg.worker_batch_size.saturating_mul(4)
    }

    /// The commit to send with this round, if one is due; it takes the outbox with it.
    fn due_commit(&mut self) -> Option<Pending> {
        let (n, last) = self.window.done_prefix();
        if !self.schedule.due(n, &self.outbox, self.window_max()) {
            return None;
        }
        Some(Pending {
            prefix: n,
            offset: last,
            outbox: std::mem::take(&mut self.outbox),
        })
    }

    fn commit_command(&self, pending: &Pending) -> redis::Cmd {
        let cfg = &self.shared.cfg;
        commit::command(
            &self.shared.commit,
            &self.own.keys,
            &self.shared.owner,
            self.own.epoch,
            pending,
            &Limits {
                jobs_max: cfg.command_stream_max_len,
                dead_max: cfg.dead_letter_max_len,
            },
        )
    }

    /// Sends a commit on its own, once the answers of what it covers are out.
    async fn commit_now(&mut self, pending: Pending) -> RedisResult<bool> {
        self.published.wait().await;
        let cmd = self.commit_command(&pending);
        let result = cmd.query_async::<Value>(&mut self.conn).await;
        self.settle_commit(pending, Some(result))
    }

    /// Applies a commit's answer: the window's committed front goes; on a refusal the lease
    /// is lost (`Ok(false)`); on an error the side effects wait for the next commit.
    fn settle_commit(
        &mut self,
        pending: Pending,
        result: Option<RedisResult<Value>>,
    ) -> RedisResult<bool> {
        let reply = result
            .unwrap_or_else(|| {
                Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "no commit answer",
                )))
            })
            .and_then(|v| decode_reply::<CommitReply>(&v));
        match reply {
            Ok(r) if r.ok => {
                if let Some(offset) = pending.offset {
                    self.own.offset = offset;
                    self.window.drop_front(pending.prefix);
                }
                self.schedule.committed();
                Ok(true)
            }
            Ok(_) => {
                tracing::warn!(
                    partition = self.own.keys.index,
                    "commit refused: another replica owns this partition"
                );
                Ok(false)
            }
            Err(e) => {
                self.outbox.restore(pending.outbox);
                Err(e)
            }
        }
    }

    /// On stop: commits everything done, so the next owner starts right after it.
    async fn final_commit(&mut self) -> Exit {
        for _ in 0..5 {
            let (n, last) = self.window.done_prefix();
            if n == 0 && self.outbox.is_empty() {
                return Exit::Stopped;
            }
            let p = Pending {
                prefix: n,
                offset: last,
                outbox: std::mem::take(&mut self.outbox),
            };
            match self.commit_now(p).await {
                Ok(true) => return Exit::Stopped,
                Ok(false) => return Exit::Lost,
                Err(e) => {
                    if confab_shared::scripting::is_noscript(&e) {
                        let _ = self.shared.commit.load(&mut self.conn).await;
                    }
                    tracing::warn!(partition = self.own.keys.index, error = %e, "final commit failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        Exit::Stopped
    }

    /// Removes cleanup-index entries long past due whose conversation Redis already expired
    /// (no cleanup worker ran); entries of conversations that still exist stay.
    async fn prune(&mut self) -> RedisResult<()> {
        let stale = confab_shared::db::now_ms().saturating_sub(10 * 60 * 1000);
        let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(&self.own.keys.activity)
            .arg("-inf")
            .arg(stale)
            .arg("LIMIT")
            .arg(0)
            .arg(500)
            .query_async(&mut self.conn)
            .await?;
        let parsed: Vec<(String, Uuid)> = ids
            .into_iter()
            .filter_map(|s| Uuid::parse_str(&s).ok().map(|u| (s, u)))
            .collect();
        if parsed.is_empty() {
            return Ok(());
        }
        let mut conn = self.shared.conn.clone();
        let exists = conn
            .query_many(
                parsed
                    .iter()
                    .map(|(_, id)| {
                        let mut c = redis::cmd("EXISTS");
                        c.arg(keys::conv_meta(id));
                        c
                    })
                    .collect(),
            )
            .await?;
        let gone: Vec<&String> = parsed
            .iter()
            .zip(exists)
            .filter(|(_, e)| matches!(e, Ok(Value::Int(0))))
            .map(|((raw, _), _)| raw)
            .collect();
        if gone.is_empty() {
            return Ok(());
        }
        redis::cmd("ZREM")
            .arg(&self.own.keys.activity)
            .arg(gone)
            .query_async(&mut self.conn)
            .await
    }
}

fn next_backoff(current: Duration) -> Duration {
    if current.is_zero() {
        MIN_BACKOFF
    } else {
        (current * 2).min(MAX_BACKOFF)
    }
}

/// Sleeps for `d`; true when `stop` fired meanwhile.
async fn pause(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(next_backoff(Duration::ZERO), MIN_BACKOFF);
        assert_eq!(next_backoff(MIN_BACKOFF), MIN_BACKOFF * 2);
        assert_eq!(next_backoff(MAX_BACKOFF), MAX_BACKOFF);
    }
}
