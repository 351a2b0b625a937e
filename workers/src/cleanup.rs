//! The cleanup role: deletes conversations after their inactivity timeout.
//!
//! Creating a conversation puts its deadline in its partition's slice of the cleanup index
//! (`confab:activity:{p}`); activity moves the real deadline (stored with the conversation)
//! later without touching the index. Each cleanup replica polls the due part of every
//! partition's index every [`POLL`] and runs `expire.lua` on each due conversation; the script
//! re-checks the stored deadline — if activity moved it, the index entry is moved too — and
//! otherwise deletes every key atomically, so with any number of replicas each conversation
//! is deleted — and `conversation_expired` published — exactly once.

use std::time::Duration;

use confab_shared::db::Conn;
use confab_shared::events::Event;
use confab_shared::keys::{self, PartitionKeys};
use confab_shared::scripting::{decode_reply, Lua};
use confab_shared::Config;
use redis::RedisResult;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const POLL: Duration = Duration::from_millis(200);
const BATCH: usize = 500;

/// `ARGV[1]` of expire.lua.
#[derive(Serialize)]
struct ExpireRequest<'a> {
    publish: &'static str,
    channel: String,
    event: &'a str,
}

/// The reply of expire.lua.
#[derive(Deserialize, Debug)]
#[serde(tag = "outcome", rename_all = "snake_case")]
enum ExpireReply {
    Gone,
    NotDue {
        deadline: u64,
    },
    Expired {
        #[serde(default)]
        members: Vec<String>,
    },
}

pub struct Cleanup {
    conn: Conn,
    expire: Lua,
    parts: Vec<PartitionKeys>,
}

impl Cleanup {
    pub async fn new(mut conn: Conn, cfg: &Config) -> RedisResult<Self> {
        let expire = Lua::new(include_str!("lua/expire.lua"));
        expire.load(&mut conn).await?;
        Ok(Self {
            conn,
            expire,
            parts: PartitionKeys::all(&cfg.partitions()),
        })
    }

    /// Polls until cancelled; a pass in progress is finished first.
    pub async fn run(self, cancel: CancellationToken) {
        tracing::info!(partitions = self.parts.len(), "cleanup worker started");
        confab_shared::metrics::set_serving(true);
        while !cancel.is_cancelled() {
            let busy = match self.pass().await {
                Ok(n) => n >= BATCH,
                Err(e) => {
                    tracing::warn!(error = %e, "cleanup pass failed; retrying");
                    false
                }
            };
            if !busy {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
        }
        tracing::info!("cleanup worker stopped");
    }

    /// One pass over every partition's due conversations; returns the most looked at in
    /// one partition (a full batch means: go again at once).
    pub async fn pass(&self) -> RedisResult<usize> {
        let mut most = 0;
        for pk in &self.parts {
            most = most.max(self.pass_partition(pk).await?);
        }
        Ok(most)
    }

    async fn pass_partition(&self, pk: &PartitionKeys) -> RedisResult<usize> {
        let mut conn = self.conn.clone();
        let due: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(&pk.activity)
            .arg("-inf")
            .arg(confab_shared::db::now_ms())
            .arg("LIMIT")
            .arg(0)
            .arg(BATCH)
            .query_async(&mut conn)
            .await?;
        if due.is_empty() {
            return Ok(0);
        }
        let (ids, junk): (Vec<(String, Option<Uuid>)>, Vec<_>) = due
            .into_iter()
            .map(|s| {
                let id = Uuid::parse_str(&s).ok();
                (s, id)
            })
            .partition(|(_, id)| id.is_some());
        let ids: Vec<(String, Uuid)> = ids
            .into_iter()
            .filter_map(|(s, id)| id.map(|id| (s, id)))
            .collect();
        let replies = self.expire_all(&ids).await?;
        let mut index = redis::pipe();
        for (raw, _) in &junk {
            index.cmd("ZREM").arg(&pk.activity).arg(raw).ignore();
        }
        let mut notices = Vec::new();
        for ((raw, id), reply) in ids.iter().zip(replies) {
            match reply {
                Ok(ExpireReply::Gone) => {
                    index.cmd("ZREM").arg(&pk.activity).arg(raw).ignore();
                }
                Ok(ExpireReply::NotDue { deadline }) => {
                    index
                        .cmd("ZADD")
                        .arg(&pk.activity)
                        .arg(deadline)
                        .arg(raw)
                        .ignore();
                }
                Ok(ExpireReply::Expired { members }) => {
                    index.cmd("ZREM").arg(&pk.activity).arg(raw).ignore();
                    tracing::info!(conversation_id = %id, "conversation expired");
                    confab_shared::metrics::get().conversations_expired.inc();
                    notices.extend(self.member_notices(id, &members));
                }
                Err(e) => tracing::warn!(conversation_id = %id, error = %e, "expire script failed"),
            }
        }
        index.query_async::<()>(&mut conn).await?;
        for e in conn
            .query_many(notices)
            .await?
            .into_iter()
            .filter_map(Result::err)
        {
            tracing::warn!(error = %e, "telling a member about an expiry failed");
        }
        Ok(ids.len() + junk.len())
    }

    /// Runs expire.lua on each conversation (different slots: one call each).
    async fn expire_all(
        &self,
        ids: &[(String, Uuid)],
    ) -> RedisResult<Vec<RedisResult<ExpireReply>>> {
        let mut conn = self.conn.clone();
        let prefix = confab_shared::trace::publish_prefix(confab_shared::db::now_ms(), None);
        let events: Vec<String> = ids
            .iter()
            .map(|(_, id)| {
                let event = Event::ConversationExpired {
                    conversation_id: *id,
                };
                format!("{prefix}{}", event.to_json())
            })
            .collect();
        let publish = conn.publish_command();
        let results = self
            .expire
            .run_many(&mut conn, || {
                ids.iter()
                    .zip(&events)
                    .map(|((_, id), event)| {
                        let req = ExpireRequest {
                            publish,
                            channel: keys::conv_channel(id),
                            event,
                        };
                        self.expire.call(&keys::conv_keys(id), &req)
                    })
                    .collect()
            })
            .await?;
        Ok(results
            .into_iter()
            .map(|r| r.and_then(|v| decode_reply(&v)))
            .collect())
    }

    /// Removes an expired chat from its members' lists and tells their gateways.
    fn member_notices(&self, id: &Uuid, members: &[String]) -> Vec<redis::Cmd> {
        let notice = Event::ConversationExpired {
            conversation_id: *id,
        }
        .to_json();
        let mut out = Vec::with_capacity(2 * members.len());
        for member in members {
            let mut zrem = redis::cmd("ZREM");
            zrem.arg(keys::user_convs(member)).arg(id.to_string());
            out.push(zrem);
            out.push(
                self.conn
                    .publish(&keys::user_channel(member), notice.as_str()),
            );
        }
        out
    }
}
