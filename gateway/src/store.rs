//! Reads straight from Redis (writes go through the command pipeline).
//!
//! - [`Store::head`] and [`Store::message_pages`]: a conversation for `GET`, its messages
//!   read and sent page by page (each page at most `RESPONSE_CHUNK_BYTES`, or one message).
//! - [`Store::kind`]: open or member chat — immutable once created, so cached (bounded).
//! - [`Store::summaries`]: a user's chat list, newest activity first.
//! - [`Store::history`]: a conversation's stored events after an eventId, for WebSocket resume.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use confab_shared::db::Conn;
use confab_shared::events::{ConversationSummary, Event};
use confab_shared::keys;
use confab_shared::scripting::Lua;
use redis::{RedisResult, Value};
use serde::Serialize;
use serde_json::value::RawValue;
use uuid::Uuid;

const KIND_CACHE_MAX: usize = 100_000;
/// History entries read per round trip of a resume.
const HISTORY_PAGE: usize = 256;

/// The most messages one page of [`Store::message_pages`] looks at.
const MESSAGE_PAGE_MAX: usize = 1000;

/// `ARGV[1]` of messages.lua: messages with `after < eventId <= upto`, at most `budget` bytes
/// (or one message) and `count` messages.
#[derive(Serialize)]
struct PageRequest {
    after: String,
    upto: String,
    budget: usize,
    count: usize,
}

/// `ARGV[1]` of history.lua.
#[derive(Serialize)]
struct HistoryRequest {
    after: u64,
    count: usize,
}
/// A resume replays the whole kept history (`EVENT_HISTORY_LEN`, trimmed approximately) but
/// never more than this many bytes; beyond it `subscribed` says `resync` and the client
/// refetches by REST — one socket cannot pin more memory than this.
pub const REPLAY_MAX_BYTES: usize = 8 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Open,
    Member,
}

/// A conversation without its messages, as [`Store::head`] reads it: what the REST body says
/// before the messages, which [`Store::message_pages`] streams after it.
#[derive(Debug)]
pub struct ConversationHead {
    pub id: Uuid,
    pub kind: Kind,
    pub title: String,
    pub assistant: bool,
    /// The newest eventId when the head was read: the body holds the messages up to it, and
    /// a member chat's client resumes from it.
    pub last_event_id: u64,
    pub created_ms: u64,
    pub last_ms: u64,
    pub members: Vec<String>,
}

/// What closes the REST body after the last message.
pub const BODY_END: &[u8] = b"]}";

impl ConversationHead {
    /// The REST body up to the messages: exactly the seed's shape for open conversations
    /// (`{"conversationId":…,"messages":[` … `]}`); member chats add their title, members,
    /// assistant flag and the eventId to resume from.
    pub fn json_prefix(&self) -> String {
        let mut out = format!(r#"{{"conversationId":"{}","#, self.id);
        if self.kind == Kind::Member {
            out.push_str(&format!(
                r#""title":{},"members":{},"assistant":{},"lastEventId":{},"#,
                serde_json::Value::from(self.title.clone()),
                serde_json::Value::from(self.members.clone()),
                self.assistant,
                self.last_event_id
            ));
        }
        out.push_str(r#""messages":["#);
        out
    }
}

#[derive(Clone)]
pub struct Store {
    conn: Conn,
    history: Arc<Lua>,
    messages: Arc<Lua>,
    kinds: Arc<Mutex<HashMap<Uuid, (Kind, bool)>>>,
}

impl Store {
    pub fn new(conn: Conn) -> Self {
        Self {
            conn,
            history: Arc::new(Lua::new(include_str!("lua/history.lua"))),
            messages: Arc::new(Lua::new(include_str!("lua/messages.lua"))),
            kinds: Arc::default(),
        }
    }

    pub fn conn(&self) -> Conn {
        self.conn.clone()
    }

    /// `None` when the conversation does not exist, is past its inactivity deadline (cleanup
    /// deletes it shortly), or is a member chat `actor` may not see. One round trip, no
    /// message read: those follow with [`Store::message_pages`].
    pub async fn head(
        &self,
        id: Uuid,
        actor: Option<&str>,
    ) -> RedisResult<Option<ConversationHead>> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET")
            .arg(keys::conv_meta(&id))
            .arg(&[
                "kind",
                "title",
                "assistant",
                "eseq",
                "created",
                "last",
                "ttl",
            ])
            .cmd("SMEMBERS")
            .arg(keys::conv_members(&id))
            .cmd("TIME");
        let values: Vec<Value> = pipe.query_async(&mut conn).await?;
        let mut head = values.into_iter();
        let meta: Vec<Option<String>> = redis::from_redis_value(head.next().unwrap_or(Value::Nil))?;
        let members: Vec<String> = redis::from_redis_value(head.next().unwrap_or(Value::Nil))?;
        let now: Vec<u64> = redis::from_redis_value(head.next().unwrap_or(Value::Nil))?;
        let field = |i: usize| meta.get(i).cloned().flatten();
        let num = |i: usize| field(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let Some(kind) = field(0) else {
            return Ok(None);
        };
        let now_ms =
            now.first().copied().unwrap_or(0) * 1000 + now.get(1).copied().unwrap_or(0) / 1000;
        if num(5) + num(6) <= now_ms {
            return Ok(None);
        }
        let kind = if kind == "member" {
            Kind::Member
        } else {
            Kind::Open
        };
        self.remember(id, kind, field(2).as_deref() == Some("1"));
        if kind == Kind::Member && !actor.is_some_and(|a| members.iter().any(|m| m == a)) {
            return Ok(None);
        }
        let mut members = if kind == Kind::Member {
            members
        } else {
            Vec::new()
        };
        members.sort();
        Ok(Some(ConversationHead {
            id,
            kind,
            title: field(1).unwrap_or_default(),
            assistant: field(2).as_deref() == Some("1"),
            last_event_id: num(3),
            created_ms: num(4),
            last_ms: num(5),
            members,
        }))
    }

    /// The messages of conversation `id` up to eventId `upto`, in send order, as the rest of
    /// the REST body after [`ConversationHead::json_prefix`]: comma-separated stored JSON,
    /// then [`BODY_END`]. Read one page (messages.lua: at most `budget` bytes, or one message)
    /// per item, and the next only when the item was taken — so a streamed response holds
    /// about one page, whatever the conversation's size. A Redis error ends the stream with it.
    pub fn message_pages(
        &self,
        id: Uuid,
        upto: u64,
        budget: usize,
    ) -> impl futures::Stream<Item = RedisResult<bytes::Bytes>> + Send + 'static {
        struct Cursor {
            conn: Conn,
            script: Arc<Lua>,
            keys: [String; 2],
            after: u64,
            upto: u64,
            budget: usize,
            first: bool,
            done: bool,
        }
        let cursor = Cursor {
            conn: self.conn.clone(),
            script: self.messages.clone(),
            keys: [keys::conv_order(&id), keys::conv_msgs(&id)],
            after: 0,
            upto,
            budget: budget.max(1),
            first: true,
            done: false,
        };
        futures::stream::unfold(cursor, |mut c| async move {
            if c.done {
                return None;
            }
            let request = PageRequest {
                after: c.after.to_string(),
                upto: c.upto.to_string(),
                budget: c.budget,
                count: MESSAGE_PAGE_MAX,
            };
            let page: Value = match c.script.run_raw(&mut c.conn, &c.keys, &request).await {
                Ok(v) => v,
                Err(e) => {
                    c.done = true;
                    return Some((Err(e), c));
                }
            };
            let items = match page {
                Value::Array(items) => items,
                _ => Vec::new(),
            };
            let mut items = items.into_iter();
            let next = items
                .next()
                .and_then(|v| redis::from_redis_value_ref::<u64>(&v).ok())
                .unwrap_or(0);
            let bodies: Vec<Vec<u8>> = items
                .filter_map(|v| match v {
                    Value::BulkString(b) => Some(b),
                    _ => None,
                })
                .collect();
            let mut chunk =
                Vec::with_capacity(bodies.iter().map(|b| b.len() + 1).sum::<usize>() + 2);
            for body in bodies {
                if !c.first {
                    chunk.push(b',');
                }
                c.first = false;
                chunk.extend_from_slice(&body);
            }
            if next > c.after {
                c.after = next;
            } else {
                c.done = true;
                chunk.extend_from_slice(BODY_END);
            }
            Some((Ok(bytes::Bytes::from(chunk)), c))
        })
    }

    fn cached(&self, id: Uuid) -> Option<(Kind, bool)> {
        self.kinds.lock().ok().and_then(|k| k.get(&id).copied())
    }

    /// Open or member chat; `None` when it does not exist.
    pub async fn kind(&self, id: Uuid) -> RedisResult<Option<Kind>> {
        Ok(self.kind_and_assistant(id).await?.map(|(k, _)| k))
    }

    /// Open or member chat, and whether its assistant is on (both fixed at creation);
    /// `None` when it does not exist.
    pub async fn kind_and_assistant(&self, id: Uuid) -> RedisResult<Option<(Kind, bool)>> {
        if let Some(k) = self.cached(id) {
            return Ok(Some(k));
        }
        let mut conn = self.conn.clone();
        let meta: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(keys::conv_meta(&id))
            .arg("kind")
            .arg("assistant")
            .query_async(&mut conn)
            .await?;
        let kind = match meta.first().cloned().flatten().as_deref() {
            Some("member") => Kind::Member,
            Some(_) => Kind::Open,
            None => return Ok(None),
        };
        let assistant = meta.get(1).cloned().flatten().as_deref() == Some("1");
        self.remember(id, kind, assistant);
        Ok(Some((kind, assistant)))
    }

    fn remember(&self, id: Uuid, kind: Kind, assistant: bool) {
        if let Ok(mut k) = self.kinds.lock() {
            if k.len() >= KIND_CACHE_MAX {
                k.clear();
            }
            k.insert(id, (kind, assistant));
        }
    }

    /// Whether `user` is a member of chat `id`.
    pub async fn is_member(&self, id: Uuid, user: &str) -> RedisResult<bool> {
        let mut conn = self.conn.clone();
        redis::cmd("SISMEMBER")
            .arg(keys::conv_members(&id))
            .arg(user)
            .query_async(&mut conn)
            .await
    }

    /// Whether the conversation still exists (the kind cache outlives expired ones).
    pub async fn exists(&self, id: Uuid) -> RedisResult<bool> {
        let mut conn = self.conn.clone();
        redis::cmd("EXISTS")
            .arg(keys::conv_meta(&id))
            .query_async(&mut conn)
            .await
    }

    /// The newest eventId of a conversation (0 when it has none or does not exist).
    pub async fn last_event_id(&self, id: Uuid) -> RedisResult<u64> {
        let mut conn = self.conn.clone();
        let v: Option<u64> = redis::cmd("HGET")
            .arg(keys::conv_meta(&id))
            .arg("eseq")
            .query_async(&mut conn)
            .await?;
        Ok(v.unwrap_or(0))
    }

    /// The assistant's answer in progress: `(responseId, text so far, last seq)`.
    pub async fn answer_snapshot(&self, id: Uuid) -> RedisResult<Option<(String, String, u64)>> {
        let mut conn = self.conn.clone();
        let v: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(keys::conv_answer(&id))
            .arg(&["rid", "text", "seq"])
            .query_async(&mut conn)
            .await?;
        let field = |i: usize| v.get(i).cloned().flatten();
        match (
            field(0),
            field(1),
            field(2).and_then(|s| s.parse::<u64>().ok()),
        ) {
            (Some(rid), Some(text), Some(seq)) if !text.is_empty() => Ok(Some((rid, text, seq))),
            _ => Ok(None),
        }
    }

    pub async fn members_count(&self, id: Uuid) -> RedisResult<usize> {
        let mut conn = self.conn.clone();
        redis::cmd("SCARD")
            .arg(keys::conv_members(&id))
            .query_async(&mut conn)
            .await
    }

    /// Asks the completion worker answering `id` (if any) to stop.
    pub async fn request_cancel(&self, id: Uuid) -> RedisResult<()> {
        self.publish(&keys::cancel_channel(&id), "cancel").await
    }

    /// Publishes on a channel (sharded on a cluster).
    pub async fn publish(&self, channel: &str, payload: &str) -> RedisResult<()> {
        let mut conn = self.conn.clone();
        self.conn
            .publish(channel, payload)
            .query_async(&mut conn)
            .await
    }

    /// One chat's summary if `user` may see it.
    pub async fn summary(&self, id: Uuid, user: &str) -> RedisResult<Option<ConversationSummary>> {
        Ok(self.summaries_of(&[id], user).await?.into_iter().next())
    }

    /// A user's chats, newest activity first; expired ones are dropped from the list.
    pub async fn summaries(&self, user: &str) -> RedisResult<Vec<ConversationSummary>> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(keys::user_convs(user))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await?;
        let parsed: Vec<Uuid> = ids.iter().filter_map(|s| Uuid::parse_str(s).ok()).collect();
        let mut list = self.summaries_of(&parsed, user).await?;
        if list.len() < ids.len() {
            let alive: std::collections::HashSet<String> =
                list.iter().map(|c| c.conversation_id.to_string()).collect();
            let gone: Vec<&String> = ids.iter().filter(|id| !alive.contains(*id)).collect();
            let _: RedisResult<()> = redis::cmd("ZREM")
                .arg(keys::user_convs(user))
                .arg(gone)
                .query_async(&mut conn)
                .await;
        }
        list.sort_by(|a, b| b.last_activity.cmp(&a.last_activity));
        Ok(list)
    }

    async fn summaries_of(
        &self,
        ids: &[Uuid],
        user: &str,
    ) -> RedisResult<Vec<ConversationSummary>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmds = Vec::with_capacity(2 * ids.len());
        for id in ids {
            let mut meta = redis::cmd("HMGET");
            meta.arg(keys::conv_meta(id))
                .arg(&["kind", "title", "assistant", "created", "last"]);
            let mut members = redis::cmd("SMEMBERS");
            members.arg(keys::conv_members(id));
            cmds.push(meta);
            cmds.push(members);
        }
        let mut conn = self.conn.clone();
        let rows: Vec<Value> = conn
            .query_many(cmds)
            .await?
            .into_iter()
            .collect::<RedisResult<_>>()?;
        let mut out = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let meta: Vec<Option<String>> = rows
                .get(2 * i)
                .and_then(|v| redis::from_redis_value_ref(v).ok())
                .unwrap_or_default();
            let mut members: Vec<String> = rows
                .get(2 * i + 1)
                .and_then(|v| redis::from_redis_value_ref(v).ok())
                .unwrap_or_default();
            if meta.first().cloned().flatten().as_deref() != Some("member")
                || !members.iter().any(|m| m == user)
            {
                continue;
            }
            members.sort();
            let field = |j: usize| meta.get(j).cloned().flatten().unwrap_or_default();
            out.push(ConversationSummary {
                conversation_id: *id,
                title: field(1),
                members,
                assistant: field(2) == "1",
                created_at: ms_to_rfc3339(field(3).parse().unwrap_or(0)),
                last_activity: ms_to_rfc3339(field(4).parse().unwrap_or(0)),
            });
        }
        Ok(out)
    }

    /// Stored events with eventId > `since`, oldest first, and whether the client must refetch
    /// by REST instead: `since` is more than `max_events` (`EVENT_HISTORY_LEN`) behind, events
    /// after it were dropped from the bounded history, or the replay would exceed
    /// [`REPLAY_MAX_BYTES`] — checked page by page while reading, so a resume never holds
    /// more than the cap.
    pub async fn history(
        &self,
        id: Uuid,
        since: u64,
        max_events: usize,
    ) -> RedisResult<(Vec<(u64, String)>, bool)> {
        let mut conn = self.conn.clone();
        let keys = [
            keys::conv_events(&id),
            keys::conv_order(&id),
            keys::conv_msgs(&id),
            keys::conv_meta(&id),
        ];
        let mut events: Vec<(u64, String)> = Vec::new();
        let mut bytes = 0usize;
        let mut after = since;
        loop {
            let request = HistoryRequest {
                after,
                count: HISTORY_PAGE,
            };
            let page: Value = self.history.run_raw(&mut conn, &keys, &request).await?;
            let page = parse_history_page(&page);
            if page.trimmed > since || page.last.saturating_sub(since) > max_events as u64 {
                // Too far back: events after `since` were dropped, or the replay is too long.
                return Ok((Vec::new(), true));
            }
            for (eid, event) in page.events {
                let json = match event {
                    HistoryEvent::Whole(json) => json,
                    HistoryEvent::Message(raw) => match RawValue::from_string(raw) {
                        Ok(message) => Event::Message {
                            conversation_id: id,
                            event_id: eid,
                            message,
                        }
                        .to_json(),
                        Err(_) => continue,
                    },
                };
                bytes += json.len();
                events.push((eid, json));
                if bytes > REPLAY_MAX_BYTES {
                    // Too much to replay over one socket: the client refetches by REST.
                    return Ok((Vec::new(), true));
                }
            }
            match page.next {
                Some(next) if next > after => after = next,
                _ => break,
            }
        }
        Ok((events, false))
    }
}

/// One stored event of history.lua's page: whole, or a message to wrap in a message event.
enum HistoryEvent {
    Whole(String),
    Message(String),
}

/// history.lua's flat reply.
struct HistoryPage {
    /// The newest eventId the bounded history dropped.
    trimmed: u64,
    /// Where the next page starts, if there is one.
    next: Option<u64>,
    /// The conversation's newest eventId.
    last: u64,
    events: Vec<(u64, HistoryEvent)>,
}

fn parse_history_page(v: &Value) -> HistoryPage {
    let items: &[Value] = match v {
        Value::Array(items) => items,
        _ => &[],
    };
    let int = |v: &Value| redis::from_redis_value_ref::<u64>(v).ok();
    let text = |v: &Value| redis::from_redis_value_ref::<String>(v).ok();
    let events = items
        .get(3..)
        .unwrap_or_default()
        .chunks(3)
        .filter_map(|e| match e {
            [eid, kind, payload] => {
                let event = match (text(kind).as_deref(), text(payload)) {
                    (Some("m"), Some(p)) => HistoryEvent::Message(p),
                    (Some("e"), Some(p)) => HistoryEvent::Whole(p),
                    _ => return None,
                };
                Some((int(eid)?, event))
            }
            _ => None,
        })
        .collect();
    HistoryPage {
        trimmed: items.first().and_then(int).unwrap_or(0),
        next: items.get(1).and_then(int).filter(|&n| n > 0),
        last: items.get(2).and_then(int).unwrap_or(0),
        events,
    }
}

pub fn ms_to_rfc3339(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(i64::try_from(ms).unwrap_or(0))
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
