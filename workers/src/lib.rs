//! # confab-workers
//!
//! The worker roles, each a consumer of Redis and nothing else (never of the gateway):
//!
//! - [`persistence`]: the `persistence` consumer group on `confab:commands` — applies commands
//!   atomically (`lua/apply.lua`), publishes events and replies, enqueues completion jobs.
//! - [`cleanup`]: deletes conversations after their inactivity timeout (`lua/expire.lua`).
//! - [`completion`]: the `completion` consumer group on `confab:completions` — streams the
//!   assistant's answers from an OpenAI-compatible API through async-openai.
//!
//! [`run`] starts one role and returns when the shutdown token fires and in-flight work is
//! done and acknowledged. Any number of replicas of each role may run.

pub mod cleanup;
pub mod completion;
pub mod persistence;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use confab_shared::keys;
use confab_shared::streams::{self, GroupConfig, GroupConsumer};
use confab_shared::{redis_util, Config};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Persistence,
    Cleanup,
    Completion,
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

pub fn group_config(
    cfg: &Config,
    stream: &str,
    group: &str,
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
        dead_letter_stream: keys::DEAD_LETTER_STREAM.into(),
        dead_letter_max_len: cfg.dead_letter_max_len,
    }
}

/// Runs one role until `cancel` fires.
pub async fn run(role: Role, cfg: Config, cancel: CancellationToken) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    let Some(conn) =
        redis_util::connect_with_retry(&cfg.redis_url, Duration::from_secs(5), &cancel).await
    else {
        return Ok(());
    };
    match role {
        Role::Persistence => {
            let name = consumer_name(&cfg, role);
            let gc = group_config(
                &cfg,
                keys::COMMANDS_STREAM,
                keys::PERSISTENCE_GROUP,
                name,
                cfg.worker_batch_size,
            );
            let consumer = GroupConsumer::new(&cfg.redis_url, conn.clone(), gc)
                .await
                .context("joining the persistence group")?;
            let handler = persistence::Persistence::new(conn.clone(), cfg.clone())
                .await
                .context("loading scripts")?;
            let upkeep = tokio::spawn(persistence::housekeeping(conn, cancel.clone()));
            streams::run(consumer, cancel, |batch| handler.handle(batch)).await;
            let _ = upkeep.await;
        }
        Role::Cleanup => {
            let cleanup = cleanup::Cleanup::new(conn)
                .await
                .context("loading scripts")?;
            cleanup.run(cancel).await;
        }
        Role::Completion => {
            completion::run(cfg, conn, cancel).await?;
        }
    }
    Ok(())
}
