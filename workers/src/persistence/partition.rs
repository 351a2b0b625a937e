//! One owned partition: read its command stream after the committed offset, apply each
//! command in order, answer, commit.
//!
//! ```text
//! loop {
//!   read  XREAD after the last entry in hand (blocking only when nothing is left to retry)
//!   apply one apply.lua call per command, in stream order, chained per conversation
//!   answer replies to the waiting gateways (one publish per gateway), user notices
//!   commit the done prefix: offset + trim + completion jobs + cleanup index + dead letters,
//!         fenced by the lease epoch (commit.lua)
//! }
//! ```
//!
//! **Order.** Entries are read with `XREAD` from the committed offset, not handed out by a
//! consumer group, so a replica that lost the partition cannot take entries away from the
//! new owner. Every apply.lua call names the entry of the previous command of its
//! conversation in the batch (`after`); if that one did not apply (a transient error), this
//! one refuses too and both are retried, in order. Conversations are independent: one whose
//! shard is failing over waits without holding up the others.
//!
//! **Exactly once.** A conversation remembers the last entry applied to it (its cursor);
//! an entry at or before it is a duplicate — a redelivery after a crash, or work the previous
//! owner did after its last commit — and only its (idempotent) side effects are redone.
//!
//! **Fencing.** apply.lua refuses a writer whose epoch is older than the last writer of the
//! conversation in the same partition; commit.lua refuses anyone but the lease holder. Before
//! every batch the task checks its lease by its own clock ([`LeaseClock`]).
//!
//! **Poison.** A command that cannot be parsed, or whose script fails `MAX_DELIVERIES` times,
//! is dead-lettered with its reason and the partition moves on.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use confab_shared::commands::{CommandEnvelope, CompletionJob, Reply, COMMAND_FIELD};
use confab_shared::db::{Conn, Redis};
use confab_shared::keys::{self, PartitionKeys};
use confab_shared::partition::key_slot;
use confab_shared::scripting::{decode_reply, is_noscript, Lua};
use confab_shared::Config;
use redis::{RedisError, RedisResult, Value};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::apply::{self, Applied, ApplyReply, Outcome};
use super::lease::LeaseClock;
use super::replicas::ReplicaHealth;

/// How long a read waits for new commands.
const BLOCK: Duration = Duration::from_millis(1000);
/// Pause before retrying after a transient failure, doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_millis(1000);
/// How often a partition prunes cleanup-index entries whose conversation Redis expired.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// What every partition task of a process shares.
pub struct Shared {
    pub cfg: Arc<Config>,
    pub redis: Redis,
    /// For replies and notices (other slots than the partition's).
    pub conn: Conn,
    pub apply: Lua,
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

/// An entry of the stream in hand.
struct Slot {
    id: String,
    command: Result<CommandEnvelope, String>,
    raw: String,
    done: bool,
    failures: u64,
}

/// `ARGV[1]` of commit.lua.
#[derive(Serialize)]
struct CommitRequest<'a> {
    owner: &'a str,
    epoch: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<&'a str>,
    jobs: &'a [String],
    jobs_max: u64,
    /// Flat: conversation id, deadline, …
    index: Vec<String>,
    /// Flat: entry, reason, payload, …
    dead: Vec<String>,
    dead_max: u64,
}

#[derive(Deserialize)]
struct CommitReply {
    ok: bool,
}

/// Side effects waiting for the next commit.
#[derive(Default)]
struct Outbox {
    jobs: Vec<String>,
    index: Vec<(Uuid, u64)>,
    dead: Vec<(String, String, String)>,
}

impl Outbox {
    fn is_empty(&self) -> bool {
        self.jobs.is_empty() && self.index.is_empty() && self.dead.is_empty()
    }
}

pub struct Partition {
    shared: Arc<Shared>,
    own: Ownership,
    conn: Conn,
    window: VecDeque<Slot>,
    outbox: Outbox,
    backoff: Duration,
}

/// What one apply round found.
#[derive(Default)]
struct Round {
    transient: bool,
    fenced: bool,
    reload: bool,
}

impl Partition {
    pub async fn new(shared: Arc<Shared>, own: Ownership) -> RedisResult<Self> {
        let conn = shared.redis.dedicated(BLOCK).await?;
        Ok(Self {
            shared,
            own,
            conn,
            window: VecDeque::new(),
            outbox: Outbox::default(),
            backoff: Duration::ZERO,
        })
    }

    /// Runs until `stop` fires or the lease is lost.
    pub async fn run(mut self, stop: CancellationToken) -> Exit {
        let p = self.own.keys.index;
        tracing::info!(partition = p, epoch = self.own.epoch, offset = %self.own.offset, "partition taken");
        let mut last_prune = tokio::time::Instant::now();
        let exit = loop {
            if stop.is_cancelled() {
                break Exit::Stopped;
            }
            if !self.own.clock.valid() {
                // The lease may have lapsed (a pause, Redis unreachable): wait for a renewal.
                if pause(&stop, Duration::from_millis(50)).await {
                    break Exit::Stopped;
                }
                continue;
            }
            match self.step(&stop).await {
                Ok(true) => {}
                Ok(false) => break Exit::Lost,
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "partition step failed; retrying");
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
                break Exit::Stopped;
            }
        };
        tracing::info!(partition = p, ?exit, "partition released");
        exit
    }

    /// Read, apply, answer, commit once. `Ok(false)`: the partition is lost.
    async fn step(&mut self, stop: &CancellationToken) -> RedisResult<bool> {
        let todo = self.window.iter().any(|s| !s.done);
        let room = self.window_max().saturating_sub(self.window.len());
        if room > 0 {
            let block = !todo && self.outbox.is_empty();
            let read = self.read(room.min(self.shared.cfg.worker_batch_size), block);
            let entries = tokio::select! {
                r = read => r?,
                // Nothing is in hand while blocked: stopping here loses nothing.
                _ = stop.cancelled(), if block => return Ok(true),
            };
            self.window.extend(entries);
        }
        let mut round = Round::default();
        if self.window.iter().any(|s| !s.done) {
            round = self.apply_round().await?;
            if round.fenced {
                return Ok(false);
            }
            if round.reload {
                self.shared.apply.load(&mut self.conn).await?;
            }
        }
        if !self.commit().await? {
            return Ok(false);
        }
        self.backoff = if round.transient {
            next_backoff(self.backoff)
        } else {
            Duration::ZERO
        };
        Ok(true)
    }

    fn window_max(&self) -> usize {
        self.shared.cfg.worker_batch_size.saturating_mul(4)
    }

    /// Up to `count` entries after the last one in hand (or the committed offset).
    async fn read(&mut self, count: usize, block: bool) -> RedisResult<Vec<Slot>> {
        let from = self
            .window
            .back()
            .map(|s| s.id.clone())
            .unwrap_or_else(|| self.own.offset.clone());
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(count);
        if block {
            cmd.arg("BLOCK").arg(BLOCK.as_millis() as u64);
        }
        cmd.arg("STREAMS").arg(&self.own.keys.commands).arg(from);
        let reply: Option<redis::streams::StreamReadReply> =
            cmd.query_async(&mut self.conn).await?;
        Ok(reply
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).map(slot).collect())
            .unwrap_or_default())
    }

    /// Applies every entry in hand that is not done yet, answers, and queues side effects.
    async fn apply_round(&mut self) -> RedisResult<Round> {
        let cfg = self.shared.cfg.clone();
        let wait = cfg.redis_wait_replicas;
        let mut round = Round::default();
        let mut replies: HashMap<String, Vec<Reply>> = HashMap::new();
        let mut added: Vec<(String, Uuid)> = Vec::new();

        // Poison, and shards that cannot confirm a write right now, are settled without a call.
        let mut calls: Vec<usize> = Vec::new();
        for (i, s) in self.window.iter_mut().enumerate() {
            if s.done {
                continue;
            }
            match &s.command {
                Err(reason) => {
                    tracing::error!(entry = %s.id, %reason, "dead-lettering a command");
                    self.outbox
                        .dead
                        .push((s.id.clone(), reason.clone(), s.raw.clone()));
                    s.done = true;
                }
                Ok(env) if wait > 0 && !self.shared.replicas.enough(conv_slot(env), wait) => {
                    push_reply(&mut replies, env, replicas_unavailable(env.id));
                    s.done = true;
                }
                Ok(_) => calls.push(i),
            }
        }
        if calls.is_empty() {
            self.answer(replies, added).await;
            return Ok(round);
        }

        let ctx = apply::Context {
            part: &self.own.keys.tag,
            epoch: self.own.epoch,
            publish: self.shared.redis.publish_command(),
            history: cfg.event_history_len,
            max_messages: cfg.max_messages_per_conversation,
            open_ttl_ms: cfg.conversation_ttl_secs * 1000,
            member_ttl_ms: cfg.member_chat_ttl_secs * 1000,
        };
        // The previous command of each conversation in this round, for the `after` chain.
        let mut previous: HashMap<Uuid, &str> = HashMap::new();
        let mut batch: Vec<(Uuid, redis::Cmd)> = Vec::with_capacity(calls.len());
        for &i in &calls {
            let s = &self.window[i];
            let Ok(env) = &s.command else { continue };
            let cid = env.command.conversation_id();
            let after = previous.insert(cid, s.id.as_str());
            let req = apply::request(&ctx, &s.id, after, env);
            let keys = keys::conv_keys(&cid);
            batch.push((cid, self.shared.apply.call(&keys, &req)));
        }
        let results = execute(&mut self.conn, batch, wait, cfg.redis_wait_timeout_ms).await?;

        for (&i, (result, replicated)) in calls.iter().zip(results) {
            let s = &mut self.window[i];
            let Ok(env) = &s.command else { continue };
            let reply = match result.and_then(|v| decode_reply::<ApplyReply>(&v)) {
                Ok(r) => r,
                Err(e) if is_noscript(&e) => {
                    round.reload = true;
                    continue;
                }
                Err(e) if is_transient(&e) => {
                    if wait > 0 && e.code() == Some("NOREPLICAS") {
                        push_reply(&mut replies, env, replicas_unavailable(env.id));
                        s.done = true;
                    } else {
                        tracing::debug!(entry = %s.id, error = %e, "transient error; retrying");
                        round.transient = true;
                    }
                    continue;
                }
                Err(e) => {
                    s.failures += 1;
                    round.transient = true;
                    if s.failures >= cfg.max_deliveries {
                        let reason = format!("failed {} times: {e}", s.failures);
                        tracing::error!(entry = %s.id, %reason, "dead-lettering a command");
                        push_reply(
                            &mut replies,
                            env,
                            Reply::error(
                                env.id,
                                500,
                                "internal",
                                "The command could not be applied",
                            ),
                        );
                        self.outbox.dead.push((s.id.clone(), reason, s.raw.clone()));
                        s.done = true;
                    } else {
                        tracing::warn!(entry = %s.id, error = %e, attempt = s.failures, "applying a command failed");
                    }
                    continue;
                }
            };
            match reply.outcome {
                Outcome::Fenced => {
                    tracing::warn!(
                        partition = self.own.keys.index,
                        epoch = self.own.epoch,
                        "fenced: another replica owns this partition"
                    );
                    round.fenced = true;
                    return Ok(round);
                }
                Outcome::OutOfOrder => {
                    round.transient = true;
                    continue;
                }
                _ => {}
            }
            let applied = Applied { env, reply: &reply };
            let answer = if replicated {
                applied.reply(cfg.max_messages_per_conversation)
            } else {
                replicas_unavailable(env.id)
            };
            push_reply(&mut replies, env, answer);
            let effects = applied.effects();
            let cid = env.command.conversation_id();
            if let Some((id, deadline)) = effects.index {
                self.outbox.index.push((id, deadline));
            }
            if let Some(up_to) = effects.job {
                let job = CompletionJob {
                    conversation_id: cid,
                    up_to_event: up_to,
                };
                self.outbox
                    .jobs
                    .push(serde_json::to_string(&job).unwrap_or_default());
            }
            added.extend(effects.added.into_iter().map(|u| (u, cid)));
            s.done = true;
        }
        self.answer(replies, added).await;
        Ok(round)
    }

    /// Publishes replies (one message per waiting gateway) and "chat added" notices.
    async fn answer(&self, replies: HashMap<String, Vec<Reply>>, added: Vec<(String, Uuid)>) {
        if replies.is_empty() && added.is_empty() {
            return;
        }
        let mut conn = self.shared.conn.clone();
        let now = confab_shared::db::now_ms();
        let mut cmds = Vec::with_capacity(replies.len() + 2 * added.len());
        for (gateway, batch) in &replies {
            let payload = serde_json::to_string(batch).unwrap_or_default();
            cmds.push(conn.publish(&keys::reply_channel(gateway), payload));
        }
        for (user, cid) in &added {
            let mut zadd = redis::cmd("ZADD");
            zadd.arg(keys::user_convs(user))
                .arg("NX")
                .arg(now)
                .arg(cid.to_string());
            cmds.push(zadd);
            cmds.push(conn.publish(&keys::user_channel(user), user_notice(cid)));
        }
        match conn.query_many(cmds).await {
            Ok(results) => {
                for e in results.into_iter().filter_map(Result::err) {
                    tracing::warn!(error = %e, "publishing a reply or notice failed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "publishing replies failed"),
        }
    }

    /// Commits the done prefix of the window with the side effects waiting in the outbox.
    /// `Ok(false)`: the lease is not ours any more.
    async fn commit(&mut self) -> RedisResult<bool> {
        let prefix = self.window.iter().take_while(|s| s.done).count();
        if prefix == 0 && self.outbox.is_empty() {
            return Ok(true);
        }
        let offset = prefix
            .checked_sub(1)
            .and_then(|last| self.window.get(last))
            .map(|s| s.id.clone());
        let cfg = &self.shared.cfg;
        let req = CommitRequest {
            owner: &self.shared.owner,
            epoch: self.own.epoch,
            offset: offset.as_deref(),
            jobs: &self.outbox.jobs,
            jobs_max: cfg.command_stream_max_len,
            index: self
                .outbox
                .index
                .iter()
                .flat_map(|(id, d)| [id.to_string(), d.to_string()])
                .collect(),
            dead: self
                .outbox
                .dead
                .iter()
                .flat_map(|(e, r, p)| [e.clone(), r.clone(), p.clone()])
                .collect(),
            dead_max: cfg.dead_letter_max_len,
        };
        let k = &self.own.keys;
        let keys = [&k.lease, &k.commands, &k.jobs, &k.activity, &k.dead_letters];
        let reply: CommitReply = self.shared.commit.run(&mut self.conn, &keys, &req).await?;
        if !reply.ok {
            tracing::warn!(
                partition = k.index,
                "commit refused: another replica owns this partition"
            );
            return Ok(false);
        }
        if let Some(offset) = offset {
            self.own.offset = offset;
            self.window.drain(..prefix);
        }
        self.outbox = Outbox::default();
        Ok(true)
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

/// Runs the apply calls — each with whether `WAIT` confirmed it on `wait` replicas (always
/// true when `wait` is 0). Standalone: one pipeline. Cluster: one pipeline per conversation
/// (its slot), concurrently, each ending in its own `WAIT` on that node's connection.
async fn execute(
    conn: &mut Conn,
    batch: Vec<(Uuid, redis::Cmd)>,
    wait: u32,
    wait_ms: u64,
) -> RedisResult<Vec<(RedisResult<Value>, bool)>> {
    let pipeline = |cmds: Vec<redis::Cmd>| {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for c in cmds {
            pipe.add_command(c);
        }
        if wait > 0 {
            pipe.cmd("WAIT").arg(wait).arg(wait_ms);
        }
        pipe
    };
    let split = |mut values: Vec<Value>, n: usize| -> Vec<(RedisResult<Value>, bool)> {
        let replicated = wait == 0
            || values
                .get(n)
                .and_then(|v| redis::from_redis_value_ref::<u32>(v).ok())
                .is_some_and(|acked| acked >= wait);
        values.truncate(n);
        values
            .into_iter()
            .map(|v| (v.extract_error(), replicated))
            .collect()
    };
    match conn {
        Conn::Single(_) => {
            let n = batch.len();
            let pipe = pipeline(batch.into_iter().map(|(_, c)| c).collect());
            let values: Vec<Value> = pipe.query_async(conn).await?;
            Ok(split(values, n))
        }
        Conn::Cluster(cluster) => {
            // Group by conversation, keeping each group's order.
            let mut groups: Vec<(Uuid, Vec<usize>, Vec<redis::Cmd>)> = Vec::new();
            let mut index: HashMap<Uuid, usize> = HashMap::new();
            for (pos, (cid, cmd)) in batch.into_iter().enumerate() {
                let g = *index.entry(cid).or_insert_with(|| {
                    groups.push((cid, Vec::new(), Vec::new()));
                    groups.len() - 1
                });
                groups[g].1.push(pos);
                groups[g].2.push(cmd);
            }
            let total: usize = groups.iter().map(|g| g.1.len()).sum();
            let futures = groups.into_iter().map(|(_, positions, cmds)| {
                let mut c = cluster.clone();
                let n = cmds.len();
                let pipe = pipeline(cmds);
                async move {
                    let out = match pipe.query_async::<Vec<Value>>(&mut c).await {
                        Ok(values) => split(values, n),
                        Err(e) => (0..n).map(|_| (Err(clone_error(&e)), false)).collect(),
                    };
                    (positions, out)
                }
            });
            let mut results: Vec<Option<(RedisResult<Value>, bool)>> =
                (0..total).map(|_| None).collect();
            for (positions, out) in futures::future::join_all(futures).await {
                for (pos, r) in positions.into_iter().zip(out) {
                    results[pos] = Some(r);
                }
            }
            Ok(results
                .into_iter()
                .map(|r| r.unwrap_or_else(|| (Err(lost()), false)))
                .collect())
        }
    }
}

fn lost() -> RedisError {
    RedisError::from((redis::ErrorKind::Io, "no result for a command"))
}

/// redis-rs errors are not `Clone`; a group's one failure becomes each command's.
fn clone_error(e: &RedisError) -> RedisError {
    let kind = if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
        redis::ErrorKind::Io
    } else {
        e.kind()
    };
    match e.code() {
        Some(code) => RedisError::from((kind, "pipeline failed", format!("{code}: {e}"))),
        None => RedisError::from((kind, "pipeline failed", e.to_string())),
    }
}

/// Redis refused for now (out of memory, a replica, loading, failover, resharding, a
/// connection problem): retry without counting it against the command.
fn is_transient(e: &RedisError) -> bool {
    const CODES: [&str; 10] = [
        "OOM",
        "READONLY",
        "BUSY",
        "LOADING",
        "MASTERDOWN",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "NOREPLICAS",
        "MOVED",
        "ASK",
    ];
    e.is_io_error()
        || e.is_cluster_error()
        || e.kind() == redis::ErrorKind::ClusterConnectionNotFound
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.kind() == redis::ErrorKind::Io
        || e.code().is_some_and(|c| CODES.contains(&c))
        || CODES
            .iter()
            .any(|c| e.to_string().contains(&format!("{c}: ")))
}

fn conv_slot(env: &CommandEnvelope) -> u16 {
    key_slot(&keys::conv_meta(&env.command.conversation_id()))
}

fn replicas_unavailable(id: Uuid) -> Reply {
    Reply::error(
        id,
        503,
        "replicas_unavailable",
        "Not enough Redis replicas are online to confirm the write; try again shortly",
    )
}

fn push_reply(replies: &mut HashMap<String, Vec<Reply>>, env: &CommandEnvelope, reply: Reply) {
    if let Some(gw) = &env.reply_to {
        replies.entry(gw.clone()).or_default().push(reply);
    }
}

/// Tells a user's gateways that a chat now includes them; each gateway sends its clients
/// the full `conversation_added` (it reads the chat's summary).
fn user_notice(cid: &Uuid) -> String {
    serde_json::json!({"type": "conversation_added", "conversationId": cid}).to_string()
}

fn slot(entry: redis::streams::StreamId) -> Slot {
    let raw = entry
        .map
        .get(COMMAND_FIELD)
        .and_then(|v| redis::from_redis_value_ref::<String>(v).ok());
    let command = match &raw {
        Some(raw) => serde_json::from_str(raw).map_err(|e| format!("malformed command: {e}")),
        None => Err(format!("entry has no '{COMMAND_FIELD}' field")),
    };
    // What a dead letter keeps: the command, or the whole entry when there is none.
    let raw = raw.unwrap_or_else(|| {
        let fields: HashMap<&String, String> = entry
            .map
            .iter()
            .map(|(k, v)| {
                (
                    k,
                    redis::from_redis_value_ref::<String>(v).unwrap_or_default(),
                )
            })
            .collect();
        serde_json::to_string(&fields).unwrap_or_default()
    });
    Slot {
        id: entry.id,
        command,
        raw,
        done: false,
        failures: 0,
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

    #[test]
    fn failover_errors_are_transient_and_script_errors_are_not() {
        let server = |code: &str| {
            RedisError::from((redis::ErrorKind::Client, "x", format!("{code}: detail")))
        };
        assert!(is_transient(&server("CLUSTERDOWN")));
        assert!(is_transient(&server("READONLY")));
        assert!(is_transient(&RedisError::from((
            redis::ErrorKind::Io,
            "broken pipe"
        ))));
        assert!(!is_transient(&server("ERR user_script:1")));
    }

    #[test]
    fn entries_without_a_command_are_poison() {
        let entry = redis::streams::StreamId {
            id: "1-0".into(),
            map: HashMap::new(),
            milliseconds_elapsed_from_delivery: None,
            delivered_count: None,
        };
        assert!(slot(entry).command.is_err());
    }
}
