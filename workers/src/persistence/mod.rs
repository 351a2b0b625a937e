//! The persistence role: every partition's commands applied by exactly one replica, in order.
//!
//! ## Who owns what ([`rebalance`], [`lease`])
//! Replicas announce themselves in a membership set and take partition leases: a replica
//! whose name sorts `i`-th of `N` owns ⌈P/N⌉ partitions if `i < P mod N`, else ⌊P/N⌋. Each
//! tick (`CLAIM_IDLE_MS / 4`, at most 500 ms) a replica renews its leases, releases what is
//! over its quota and takes free or lapsed leases up to it. A joining or leaving replica is
//! absorbed within two ticks; a SIGKILLed one's leases lapse after `CLAIM_IDLE_MS` and are
//! taken then; on SIGTERM a replica finishes its batches, commits, releases its leases and
//! leaves the set, so the others take over at their next tick.
//!
//! ## Applying ([`partition`], [`apply`])
//! Each owned partition runs its own task: entries read after the committed offset (one
//! shared `XREAD` for all owned partitions on standalone Redis), one `apply.lua` call per
//! command (atomic per conversation: the write, the event and its publish), replies and
//! notices, and a fenced commit — all on the replica's one multiplexed connection. See
//! [`partition`] for order, exactly-once and fencing.
//!
//! ## Durability ([`replicas`])
//! With `REDIS_WAIT_REPLICAS` above 0 every batch ends in `WAIT`, and a command is answered
//! with success only when that many replicas confirmed it; shards without enough online
//! replicas answer 503 `replicas_unavailable` at once.

pub mod answers;
pub mod apply;
pub mod lease;
pub mod partition;
pub mod rebalance;
pub mod replicas;

use std::sync::Arc;

use anyhow::Context;
use confab_shared::db::{Conn, Redis};
use confab_shared::scripting::Lua;
use confab_shared::Config;
use tokio_util::sync::CancellationToken;

/// Runs the persistence role until `cancel` fires; returns once every owned partition has
/// committed its work and its lease is released.
pub async fn run(
    cfg: Arc<Config>,
    redis: Redis,
    conn: Conn,
    owner: String,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut load_conn = conn.clone();
    let apply = Lua::new(include_str!("../lua/apply.lua"));
    let commit = Lua::new(include_str!("../lua/commit.lua"));
    let send = Lua::new(include_str!("../lua/send.lua"));
    apply
        .load(&mut load_conn)
        .await
        .context("loading apply.lua")?;
    send.load(&mut load_conn)
        .await
        .context("loading send.lua")?;
    commit
        .load(&mut load_conn)
        .await
        .context("loading commit.lua")?;
    let replicas = replicas::ReplicaHealth::default();
    let background = CancellationToken::new();
    if cfg.redis_wait_replicas > 0 {
        tokio::spawn(replicas.clone().watch(conn.clone(), background.clone()));
    }
    let feeds = partition::Feeds::start(&redis, cfg.worker_batch_size, background.clone())
        .await
        .context("opening the command-stream reader")?;
    let shared = Arc::new(partition::Shared {
        cfg: cfg.clone(),
        redis,
        conn: conn.clone(),
        answers: answers::Publisher::start(conn.clone()),
        feeds,
        apply,
        send,
        commit,
        replicas,
        owner: owner.clone(),
    });
    let result = rebalance::Rebalancer::new(shared, conn, &cfg)
        .run(cancel)
        .await;
    background.cancel();
    result
}
