//! The cleanup role: deletes conversations after their inactivity timeout.
//!
//! Creating a conversation puts its deadline in the `confab:activity` sorted set; activity
//! moves the real deadline (stored with the conversation) later without touching the index.
//! Each cleanup replica polls the due part of the index every `POLL` and runs `expire.lua` on
//! each due conversation; the script re-checks the stored deadline — if activity moved it, the
//! index entry is moved too — and otherwise deletes every key atomically, so with any number
//! of replicas each conversation is deleted — and `conversation_expired` published — exactly
//! once.

use std::time::Duration;

use confab_shared::events::Event;
use confab_shared::keys;
use confab_shared::scripting::Lua;
use redis::aio::ConnectionManager;
use redis::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const POLL: Duration = Duration::from_millis(200);
const BATCH: usize = 500;

pub struct Cleanup {
    conn: ConnectionManager,
    expire: Lua,
}

impl Cleanup {
    pub async fn new(mut conn: ConnectionManager) -> redis::RedisResult<Self> {
        let expire = Lua::new(include_str!("lua/expire.lua"));
        expire.load(&mut conn).await?;
        Ok(Self { conn, expire })
    }

    /// Polls until cancelled; a pass in progress is finished first.
    pub async fn run(self, cancel: CancellationToken) {
        tracing::info!("cleanup worker started");
        while !cancel.is_cancelled() {
            let expired = match self.pass().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "cleanup pass failed; retrying");
                    0
                }
            };
            if expired < BATCH {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
        }
        tracing::info!("cleanup worker stopped");
    }

    /// One pass over the due conversations; returns how many were looked at.
    pub async fn pass(&self) -> redis::RedisResult<usize> {
        let mut conn = self.conn.clone();
        let now = confab_shared::redis_util::now_ms();
        let due: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(keys::ACTIVITY_INDEX)
            .arg("-inf")
            .arg(now)
            .arg("LIMIT")
            .arg(0)
            .arg(BATCH)
            .query_async(&mut conn)
            .await?;
        if due.is_empty() {
            return Ok(0);
        }
        let ids: Vec<(String, Option<Uuid>)> = due
            .into_iter()
            .map(|s| {
                let id = Uuid::parse_str(&s).ok();
                (s, id)
            })
            .collect();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for (_, id) in ids.iter() {
            match id {
                Some(id) => {
                    pipe.add_command(self.expire.call(
                        &keys::conv_keys(id),
                        &[id.to_string(), keys::conv_channel(id)],
                    ));
                }
                None => {
                    pipe.cmd("ECHO").arg("invalid");
                }
            }
        }
        let mut results: Vec<Value> = pipe.query_async(&mut conn).await?;
        if results
            .iter()
            .any(|v| matches!(v, Value::ServerError(e) if e.code() == "NOSCRIPT"))
        {
            self.expire.load(&mut conn).await?;
            results = pipe.query_async(&mut conn).await?;
        }
        let mut effects = redis::pipe();
        for ((raw, id), result) in ids.iter().zip(results) {
            let Some(id) = id else {
                effects
                    .cmd("ZREM")
                    .arg(keys::ACTIVITY_INDEX)
                    .arg(raw)
                    .ignore();
                continue;
            };
            let items: Vec<Value> = match result {
                Value::Array(items) => items,
                other => {
                    tracing::warn!(conversation_id = %id, answer = ?other, "expire script failed");
                    continue;
                }
            };
            let code = items
                .first()
                .and_then(|v| redis::from_redis_value_ref::<i64>(v).ok())
                .unwrap_or(-1);
            match code {
                0 => {
                    effects
                        .cmd("ZREM")
                        .arg(keys::ACTIVITY_INDEX)
                        .arg(raw)
                        .ignore();
                }
                1 => {
                    let deadline = items
                        .get(1)
                        .and_then(|v| redis::from_redis_value_ref::<u64>(v).ok())
                        .unwrap_or(now);
                    effects
                        .cmd("ZADD")
                        .arg(keys::ACTIVITY_INDEX)
                        .arg(deadline)
                        .arg(raw)
                        .ignore();
                }
                2 => {
                    effects
                        .cmd("ZREM")
                        .arg(keys::ACTIVITY_INDEX)
                        .arg(raw)
                        .ignore();
                    let notice = Event::ConversationExpired {
                        conversation_id: *id,
                    }
                    .to_json();
                    for member in items
                        .iter()
                        .skip(1)
                        .filter_map(|v| redis::from_redis_value_ref::<String>(v).ok())
                    {
                        effects
                            .cmd("ZREM")
                            .arg(keys::user_convs(&member))
                            .arg(raw)
                            .ignore();
                        effects
                            .cmd("PUBLISH")
                            .arg(keys::user_channel(&member))
                            .arg(&notice)
                            .ignore();
                    }
                    tracing::info!(conversation_id = %id, "conversation expired");
                }
                _ => tracing::warn!(conversation_id = %id, "unexpected expire answer"),
            }
        }
        effects.query_async::<()>(&mut conn).await?;
        Ok(ids.len())
    }
}
