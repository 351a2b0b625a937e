//! # confab-workers
//!
//! The worker roles, each a consumer of Redis and nothing else (never of the gateway):
//!
//! - [`persistence`]: owns partitions of the command streams (`confab:cmd:{p}`), one replica
//!   per partition at a time, and applies their commands in order (`lua/apply.lua`):
//!   writes, events, replies, completion jobs.
//! - [`cleanup`]: deletes conversations after their inactivity timeout (`lua/expire.lua`).
//! - [`completion`]: the `completion` consumer group on every partition's job stream
//!   (`confab:jobs:{p}`) — streams the assistant's answers from an OpenAI-compatible API
//!   through async-openai.
//!
//! [`run`] starts one role and returns when the shutdown token fires and in-flight work is
//! done and acknowledged. Any number of replicas of each role may run.

pub mod cleanup;
pub mod completion;
pub mod health;
pub mod persistence;

use std::sync::Arc;
use std::time::Duration;

use confab_shared::db::Redis;
use confab_shared::streams::GroupConfig;
use confab_shared::Config;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Persistence,
    Cleanup,
    Completion,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Persistence => "persistence",
            Role::Cleanup => "cleanup",
            Role::Completion => "completion",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "persistence" => Ok(Role::Persistence),
            "cleanup" => Ok(Role::Cleanup),
            "completion" => Ok(Role::Completion),
            other => Err(format!(
                "unknown role {other:?}: expected persistence, cleanup or completion"
            )),
        }
    }
}

/// A consumer name unique to this process: `WORKER_NAME` or host-pid-random.
pub fn consumer_name(cfg: &Config, role: Role) -> String {
    cfg.worker_name.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "host".into());
        format!(
            "{role:?}-{host}-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        )
        .to_lowercase()
    })
}

/// A consumer of `group` on `stream`, dead-lettering into `dead_letters`.
pub fn group_config(
    cfg: &Config,
    stream: &str,
    group: &str,
    dead_letters: &str,
    consumer: String,
    batch: usize,
) -> GroupConfig {
    GroupConfig {
        stream: stream.into(),
        group: group.into(),
        consumer,
        batch,
        block: Duration::from_millis(1000),
        claim_idle: cfg.claim_idle(),
        max_deliveries: cfg.max_deliveries,
        dead_letter_stream: dead_letters.into(),
        dead_letter_max_len: cfg.dead_letter_max_len,
    }
}

/// `workers drained`: whether nothing is queued in the deployment's command and job streams
/// (the check before changing `STREAM_PARTITIONS`). Prints what is still queued.
pub async fn drained(cfg: Config) -> anyhow::Result<bool> {
    let redis = Redis::from_config(&cfg);
    let mut conn = redis.connect(Duration::from_secs(5)).await?;
    let recorded: Option<u32> = redis::cmd("HGET")
        .arg(confab_shared::layout::LAYOUT_KEY)
        .arg("partitions")
        .query_async(&mut conn)
        .await?;
    let parts =
        confab_shared::partition::Partitions::new(recorded.unwrap_or(cfg.stream_partitions));
    let backlog = confab_shared::layout::backlog(&mut conn, &parts).await?;
    println!("layout: {} partitions", parts.count());
    for (p, n) in &backlog.commands {
        println!("partition {p}: {n} commands queued");
    }
    for (p, n) in &backlog.jobs {
        println!("partition {p}: {n} completion jobs unfinished");
    }
    if backlog.is_empty() {
        println!("drained: nothing queued");
    }
    Ok(backlog.is_empty())
}

/// Runs one role until `cancel` fires.
pub async fn run(role: Role, cfg: Config, cancel: CancellationToken) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    confab_shared::metrics::init(health::ROUTES, &cfg.partitions());
    if let Some(addr) = cfg.metrics_socket_addr() {
        health::serve(addr, cancel.clone()).await?;
    }
    let redis = Redis::from_config(&cfg);
    let Some(conn) = redis
        .connect_with_retry(Duration::from_secs(5), &cancel)
        .await
    else {
        return Ok(());
    };
    confab_shared::layout::ensure(&mut conn.clone(), &cfg.partitions()).await?;
    tokio::spawn(confab_shared::metrics::sample_forever(
        conn.clone(),
        cfg.partitions(),
        cancel.clone(),
    ));
    match role {
        Role::Persistence => {
            let name = consumer_name(&cfg, role);
            persistence::run(cfg, redis, conn, name, cancel).await?;
        }
        Role::Cleanup => {
            cleanup::Cleanup::new(conn, &cfg).await?.run(cancel).await;
        }
        Role::Completion => {
            completion::run(cfg, redis, conn, cancel).await?;
        }
    }
    Ok(())
}
