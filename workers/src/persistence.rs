//! The persistence role: applies commands from `confab:commands` to Redis.
//!
//! Each batch is applied with one pipelined round trip of `EVALSHA apply.lua` calls — one
//! atomic script per command, in stream order — and a second round trip carrying the side
//! effects: replies to the waiting gateways, the cleanup index (on creation), users' chat lists,
//! `conversation_added` notices and completion jobs. Only then are the entries acknowledged
//! (by the runner). A redelivered command finds its id in the conversation's `applied` hash
//! and only re-sends its reply; the side effects are idempotent.

use std::collections::BTreeSet;
use std::sync::Arc;

use confab_shared::commands::{Command, CommandEnvelope, CompletionJob, COMMAND_FIELD};
use confab_shared::domain::SENDER_ASSISTANT;
use confab_shared::keys;
use confab_shared::scripting::Lua;
use confab_shared::streams::{Delivery, Disposition};
use confab_shared::Config;
use redis::aio::ConnectionManager;
use redis::Value;
use uuid::Uuid;

/// Keys outlive the inactivity deadline by this much, so cleanup workers (which publish
/// `conversation_expired`) get there first, and data still goes if none runs.
pub const KEY_GRACE_MS: u64 = 3000;

pub struct Persistence {
    conn: ConnectionManager,
    apply: Lua,
    cfg: Arc<Config>,
}

/// What `apply.lua` answered for one command.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub status: u16,
    pub body: String,
    pub event_id: u64,
    pub assistant: bool,
    pub kind: String,
    pub deadline: u64,
}

impl Persistence {
    pub async fn new(mut conn: ConnectionManager, cfg: Arc<Config>) -> redis::RedisResult<Self> {
        let apply = Lua::new(include_str!("lua/apply.lua"));
        apply.load(&mut conn).await?;
        Ok(Self { conn, apply, cfg })
    }

    /// Applies a batch; every entry comes back with what to do with it.
    pub async fn handle(&self, batch: Vec<Delivery>) -> Vec<(Delivery, Disposition)> {
        let mut out = Vec::with_capacity(batch.len());
        let mut work = Vec::with_capacity(batch.len());
        for d in batch {
            match parse(&d) {
                Ok(env) => work.push((d, env)),
                Err(reason) => out.push((d, Disposition::Poison(reason))),
            }
        }
        if work.is_empty() {
            return out;
        }
        let results = match self.apply_all(&work).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, n = work.len(), "applying a batch failed; it will be retried");
                out.extend(work.into_iter().map(|(d, _)| (d, Disposition::Retry)));
                return out;
            }
        };
        let mut effects = redis::pipe();
        let mut dispositions = Vec::with_capacity(work.len());
        for ((d, env), result) in work.into_iter().zip(results) {
            match result {
                Ok(applied) => {
                    self.side_effects(&mut effects, &env, &applied);
                    dispositions.push((d, Disposition::Ack));
                }
                Err(reason) if transient(&reason) => {
                    // Redis is out of memory, failing over or loading: retry, don't dead-letter.
                    tracing::warn!(%reason, "transient Redis error; the command will be retried");
                    dispositions.push((d, Disposition::Retry));
                }
                Err(reason) => {
                    if let Some(gw) = &env.reply_to {
                        let reply = confab_shared::commands::Reply::error(
                            env.id,
                            500,
                            "internal",
                            "The command could not be applied",
                        );
                        effects
                            .cmd("PUBLISH")
                            .arg(keys::reply_channel(gw))
                            .arg(serde_json::to_string(&reply).unwrap_or_default())
                            .ignore();
                    }
                    dispositions.push((d, Disposition::Poison(reason)));
                }
            }
        }
        let mut conn = self.conn.clone();
        if let Err(e) = effects.query_async::<()>(&mut conn).await {
            // The writes are done; redelivery re-runs the (idempotent) side effects.
            tracing::warn!(error = %e, "side effects failed; the batch will be retried");
            out.extend(
                dispositions
                    .into_iter()
                    .map(|(d, _)| (d, Disposition::Retry)),
            );
            return out;
        }
        out.extend(dispositions);
        out
    }

    /// One pipelined round trip of scripts. `Err` for the whole batch on a connection problem;
    /// per command `Err(reason)` when Redis rejected that script call.
    async fn apply_all(
        &self,
        work: &[(Delivery, CommandEnvelope)],
    ) -> redis::RedisResult<Vec<Result<Applied, String>>> {
        let mut conn = self.conn.clone();
        for attempt in 0..2 {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for (_, env) in work {
                pipe.add_command(self.script_call(env));
            }
            let values: Vec<Value> = pipe.query_async(&mut conn).await?;
            let noscript = values
                .iter()
                .any(|v| matches!(v, Value::ServerError(e) if e.code() == "NOSCRIPT"));
            if noscript && attempt == 0 {
                // Redis restarted or flushed its scripts; nothing in this batch ran.
                self.apply.load(&mut conn).await?;
                continue;
            }
            return Ok(values.into_iter().map(parse_applied).collect());
        }
        Err(redis::RedisError::from((
            redis::ErrorKind::Client,
            "script could not be loaded",
        )))
    }

    fn script_call(&self, env: &CommandEnvelope) -> redis::Cmd {
        let cid = env.command.conversation_id();
        let keys = keys::conv_keys(&cid);
        let mut args: Vec<String> = vec![
            env.id.to_string(),
            String::new(),
            cid.to_string(),
            KEY_GRACE_MS.to_string(),
            self.cfg.event_history_len.to_string(),
            keys::conv_channel(&cid),
        ];
        match &env.command {
            Command::CreateConversation {
                owner,
                members,
                title,
                assistant,
                ..
            } => {
                args[1] = "create".into();
                let ttl = if owner.is_some() {
                    self.cfg.member_chat_ttl_secs
                } else {
                    self.cfg.conversation_ttl_secs
                };
                args.push((ttl * 1000).to_string());
                args.push(owner.clone().unwrap_or_default());
                args.push(title.clone().unwrap_or_default());
                args.push(if *assistant { "1" } else { "0" }.into());
                args.extend(members.iter().cloned());
            }
            Command::SendMessage {
                message,
                actor,
                assistant_reply,
                ..
            } => {
                args[1] = "send".into();
                args.push(message.message_id.to_string());
                args.push(serde_json::to_string(message).unwrap_or_default());
                args.push(actor.clone().unwrap_or_default());
                args.push(self.cfg.max_messages_per_conversation.to_string());
                args.push(
                    if message.sender == SENDER_ASSISTANT {
                        "0"
                    } else {
                        "1"
                    }
                    .into(),
                );
                args.push(
                    assistant_reply
                        .as_ref()
                        .map(|r| r.answers_up_to.to_string())
                        .unwrap_or_default(),
                );
                args.push(
                    assistant_reply
                        .as_ref()
                        .map(|r| r.done_event.clone())
                        .unwrap_or_default(),
                );
            }
            Command::DeleteMessage {
                message_id, actor, ..
            } => {
                args[1] = "delete".into();
                args.push(message_id.to_string());
                args.push(actor.clone().unwrap_or_default());
            }
            Command::AddMember {
                username, actor, ..
            } => {
                args[1] = "add_member".into();
                args.push(username.clone());
                args.push(actor.clone());
            }
        }
        self.apply.call(&keys, &args)
    }

    /// Replies, indexes and notices that follow a command; all idempotent.
    fn side_effects(&self, pipe: &mut redis::Pipeline, env: &CommandEnvelope, applied: &Applied) {
        let cid = env.command.conversation_id();
        if let Some(gw) = &env.reply_to {
            let reply = format!(
                r#"{{"id":"{}","status":{},"body":{}}}"#,
                env.id, applied.status, applied.body
            );
            pipe.cmd("PUBLISH")
                .arg(keys::reply_channel(gw))
                .arg(reply)
                .ignore();
        }
        // Only creation indexes the deadline: activity moves it later, and a cleanup worker that
        // finds a conversation not yet due re-indexes it from the deadline stored with it.
        if applied.deadline > 0 && matches!(env.command, Command::CreateConversation { .. }) {
            pipe.cmd("ZADD")
                .arg(keys::ACTIVITY_INDEX)
                .arg(applied.deadline)
                .arg(cid.to_string())
                .ignore();
        }
        if applied.status >= 300 {
            return;
        }
        let now = confab_shared::redis_util::now_ms();
        match &env.command {
            Command::CreateConversation {
                owner: Some(owner),
                members,
                ..
            } => {
                let everyone: BTreeSet<&String> =
                    members.iter().chain(std::iter::once(owner)).collect();
                let notice = user_notice(&cid);
                for user in everyone {
                    pipe.cmd("ZADD")
                        .arg(keys::user_convs(user))
                        .arg("NX")
                        .arg(now)
                        .arg(cid.to_string())
                        .ignore();
                    pipe.cmd("PUBLISH")
                        .arg(keys::user_channel(user))
                        .arg(&notice)
                        .ignore();
                }
            }
            Command::AddMember { username, .. } if applied.event_id > 0 => {
                pipe.cmd("ZADD")
                    .arg(keys::user_convs(username))
                    .arg("NX")
                    .arg(now)
                    .arg(cid.to_string())
                    .ignore();
                pipe.cmd("PUBLISH")
                    .arg(keys::user_channel(username))
                    .arg(user_notice(&cid))
                    .ignore();
            }
            Command::SendMessage { message, .. }
                if applied.event_id > 0
                    && applied.assistant
                    && message.sender != SENDER_ASSISTANT =>
            {
                let job = CompletionJob {
                    conversation_id: cid,
                    up_to_event: applied.event_id,
                };
                // Bounded even if no completion worker ever runs: past the cap the oldest
                // unanswered jobs go (with a live worker the backlog stays near zero).
                pipe.cmd("XADD")
                    .arg(keys::COMPLETIONS_STREAM)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(self.cfg.command_stream_max_len)
                    .arg("*")
                    .arg("j")
                    .arg(serde_json::to_string(&job).unwrap_or_default())
                    .ignore();
            }
            _ => {}
        }
    }
}

/// Redis errors that pass: out of memory (noeviction), a replica or failover, a busy script,
/// loading a dataset, cluster resharding.
fn transient(reason: &str) -> bool {
    [
        "OOM",
        "READONLY",
        "BUSY",
        "LOADING",
        "MASTERDOWN",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "NOREPLICAS",
    ]
    .iter()
    .any(|code| reason.contains(code))
}

fn parse(d: &Delivery) -> Result<CommandEnvelope, String> {
    let raw = d
        .field(COMMAND_FIELD)
        .ok_or_else(|| format!("entry has no '{COMMAND_FIELD}' field"))?;
    serde_json::from_str(&raw).map_err(|e| format!("malformed command: {e}"))
}

/// Reads `{status, body, eventId, assistant, kind, deadline}` from the script's answer.
pub fn parse_applied(v: Value) -> Result<Applied, String> {
    let items = match v {
        Value::Array(items) if items.len() == 6 => items,
        Value::ServerError(e) => return Err(format!("script error: {e:?}")),
        other => return Err(format!("unexpected script answer: {other:?}")),
    };
    let int = |v: &Value| redis::from_redis_value_ref::<i64>(v).map_err(|e| e.to_string());
    let text = |v: &Value| redis::from_redis_value_ref::<String>(v).map_err(|e| e.to_string());
    Ok(Applied {
        status: u16::try_from(int(&items[0])?).map_err(|e| e.to_string())?,
        body: text(&items[1])?,
        event_id: u64::try_from(int(&items[2])?).unwrap_or(0),
        assistant: int(&items[3])? == 1,
        kind: text(&items[4])?,
        deadline: u64::try_from(int(&items[5])?).unwrap_or(0),
    })
}

/// Tells a user's gateways that a chat now includes them; each gateway sends its clients
/// the full `conversation_added` (it reads the chat's summary).
fn user_notice(cid: &Uuid) -> String {
    format!(r#"{{"type":"conversation_added","conversationId":"{cid}"}}"#)
}

/// Removes cleanup-index entries long past due whose conversation Redis already expired (no
/// cleanup worker ran); entries of conversations that still exist stay for the cleanup workers.
async fn forget_expired(conn: &mut ConnectionManager) -> redis::RedisResult<()> {
    let stale = confab_shared::redis_util::now_ms().saturating_sub(10 * 60 * 1000);
    let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(keys::ACTIVITY_INDEX)
        .arg("-inf")
        .arg(stale)
        .arg("LIMIT")
        .arg(0)
        .arg(500)
        .query_async(conn)
        .await?;
    let parsed: Vec<(String, Uuid)> = ids
        .into_iter()
        .filter_map(|s| Uuid::parse_str(&s).ok().map(|u| (s, u)))
        .collect();
    if parsed.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for (_, id) in &parsed {
        pipe.cmd("EXISTS").arg(keys::conv_meta(id));
    }
    let exists: Vec<bool> = pipe.query_async(conn).await?;
    let gone: Vec<&String> = parsed
        .iter()
        .zip(exists)
        .filter(|(_, e)| !e)
        .map(|((raw, _), _)| raw)
        .collect();
    if gone.is_empty() {
        return Ok(());
    }
    redis::cmd("ZREM")
        .arg(keys::ACTIVITY_INDEX)
        .arg(gone)
        .query_async(conn)
        .await
}

/// Background upkeep run by every persistence replica: trims acknowledged commands and
/// forgets cleanup-index entries whose keys Redis already expired (no cleanup worker ran).
pub async fn housekeeping(
    mut conn: ConnectionManager,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    while !cancel.is_cancelled() {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Err(e) =
            confab_shared::streams::trim_consumed(&mut conn, keys::COMMANDS_STREAM).await
        {
            tracing::debug!(error = %e, "trimming the command stream failed");
        }
        if let Err(e) = forget_expired(&mut conn).await {
            tracing::debug!(error = %e, "pruning the cleanup index failed");
        }
    }
}
