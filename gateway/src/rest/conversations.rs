//! Conversation handlers: the seed's REST API (open conversations) and member chats.

use std::collections::BTreeSet;

use confab_shared::commands::Command;
use confab_shared::domain::{self, Message, ValidationError};
use futures::StreamExt;
use serde_json::{Map, Value};
use uuid::Uuid;
use warp::http::StatusCode;
use warp::reply::Response;

use super::body::{opt_str, Body};
use super::errors::{json, json_response, ApiError, ApiResult};
use crate::auth::Session;
use crate::idempotency;
use crate::state::AppState;
use crate::store::Kind;

pub const MAX_TITLE_CHARS: usize = 200;

fn parse_conv_id(raw: &str) -> Result<Uuid, ApiError> {
    domain::parse_id(raw)
        .ok_or_else(|| ApiError::bad_request("invalid_id", "The conversation id must be a UUID"))
}

/// Submits a command and answers with the persistence worker's status and body.
async fn apply(state: &AppState, command: Command) -> ApiResult {
    Ok(reply(state.pipeline.submit(command).await?))
}

fn reply(r: crate::pipeline::RawReply) -> Response {
    json_response(
        StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        r.body.get(),
    )
}

/// `POST /api/conversations`: open (no token) or member chat (signed in).
pub async fn create(
    state: AppState,
    session: Option<Session>,
    addr: Option<std::net::SocketAddr>,
    key: Result<Option<String>, ApiError>,
    body: Body,
) -> ApiResult {
    let key = key?;
    let obj = body.json_object(false)?.unwrap_or_default();
    let assistant_field = match obj.get("assistant") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_field",
                "assistant must be true or false",
            ))
        }
    };
    if session.is_none() {
        count_anonymous_write(&state, addr.map(|a| a.ip())).await?;
    }
    let user = session.as_ref().map(|s| s.username.clone());
    // With a key, the id is the key's (so a retry names the same conversation); without,
    // the next partition's in turn.
    let keyed = key.filter(|_| state.cfg.idempotency_window_secs > 0);
    let conversation_id = match &keyed {
        Some(k) => idempotency::conversation_id(user.as_deref(), k),
        None => state.pipeline.new_conversation_id(),
    };
    let mut command = match session {
        None if assistant_field == Some(true) && !state.cfg.assistant_in_open_conversations => {
            return Err(assistant_disabled())
        }
        None => Command::CreateConversation {
            conversation_id,
            owner: None,
            members: Vec::new(),
            title: None,
            assistant: assistant_field.unwrap_or(false),
            fingerprint: None,
        },
        Some(s) => {
            let title = opt_str(&obj, "title")?.unwrap_or("").trim().to_string();
            if title.chars().count() > MAX_TITLE_CHARS {
                return Err(ApiError::bad_request(
                    "invalid_title",
                    format!("title must be at most {MAX_TITLE_CHARS} characters"),
                ));
            }
            let members = member_list(&obj, &s.username, state.cfg.max_chat_members)?;
            let unknown = state.auth.unknown_users(&members).await?;
            if !unknown.is_empty() {
                return Err(
                    ApiError::not_found(format!("Unknown users: {}", unknown.join(", ")))
                        .with("usernames", unknown),
                );
            }
            Command::CreateConversation {
                conversation_id,
                owner: Some(s.username),
                members,
                title: Some(title),
                assistant: assistant_field.unwrap_or(true),
                fingerprint: None,
            }
        }
    };
    if keyed.is_some() {
        if let Command::CreateConversation {
            owner,
            members,
            title,
            assistant,
            fingerprint,
            ..
        } = &mut command
        {
            let kind = if owner.is_some() { "member" } else { "open" };
            let members = members.join("\n");
            *fingerprint = Some(idempotency::fingerprint(&[
                "create",
                kind,
                if *assistant { "1" } else { "0" },
                title.as_deref().unwrap_or(""),
                &members,
            ]));
        }
    }
    apply(&state, command).await
}

/// 403 for `{"assistant":true}` without a token while `ASSISTANT_IN_OPEN_CONVERSATIONS` is off.
pub fn assistant_disabled() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "assistant_disabled",
        "The assistant is not available in open conversations on this server: create one \
         without it, or sign in and create a member chat",
    )
}

/// Counts one event for `addr` in the fixed window `key` (shared by every gateway): a 429
/// `rate_limited` with `message` past `limit` (0 = off).
async fn addr_rate(
    state: &AppState,
    key: &str,
    window_secs: u64,
    limit: u64,
    message: impl FnOnce() -> String,
) -> Result<(), ApiError> {
    if crate::addr_limit::hit(&state.store.conn(), key, window_secs, limit)
        .await
        .map_err(|e| ApiError::internal("counting per-address writes", e))?
    {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            message(),
        ))
    }
}

/// Counts a write without a session from `addr`: 429 past `ANON_WRITES_PER_SEC_PER_ADDR` in
/// the current second.
pub async fn count_anonymous_write(
    state: &AppState,
    addr: Option<std::net::IpAddr>,
) -> Result<(), ApiError> {
    let limit = state.cfg.anon_writes_per_sec_per_addr;
    if limit == 0 {
        return Ok(());
    }
    let key = confab_shared::keys::anon_write_rate(&crate::addr_limit::addr_subject(addr));
    addr_rate(state, &key, 1, limit, || {
        format!("At most {limit} writes a second from one address without signing in; slow down")
    })
    .await
}

/// Counts a message from `addr` into an open conversation whose assistant is on (each may wake
/// the model): 429 past `ASSISTANT_OPEN_MESSAGES_PER_MIN_PER_ADDR` in the current minute.
pub async fn count_assistant_message(
    state: &AppState,
    addr: Option<std::net::IpAddr>,
) -> Result<(), ApiError> {
    let limit = state.cfg.assistant_open_messages_per_min_per_addr;
    let key = confab_shared::keys::assistant_open_rate(&crate::addr_limit::addr_subject(addr));
    addr_rate(state, &key, 60, limit, || {
        format!(
            "The assistant answers at most {limit} messages a minute from one address in \
             open conversations; try again shortly"
        )
    })
    .await
}

/// Whether `id` is an open conversation with the assistant on.
pub async fn open_with_assistant(state: &AppState, id: Uuid) -> Result<bool, ApiError> {
    let meta = state
        .store
        .kind_and_assistant(id)
        .await
        .map_err(|e| ApiError::internal("reading a conversation", e))?;
    Ok(meta == Some((Kind::Open, true)))
}

/// The invited usernames: normalized, without the creator, without repeats.
fn member_list(
    obj: &Map<String, Value>,
    creator: &str,
    max: usize,
) -> Result<Vec<String>, ApiError> {
    let raw = match obj.get("members") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_members",
                "members must be an array of usernames",
            ))
        }
    };
    let mut names = BTreeSet::new();
    for item in raw {
        let Value::String(s) = item else {
            return Err(ApiError::bad_request(
                "invalid_members",
                "members must be an array of usernames",
            ));
        };
        let name = domain::normalize_username(s).map_err(|_| {
            ApiError::not_found(format!("Unknown users: {s}")).with("usernames", vec![s.clone()])
        })?;
        if name != creator {
            names.insert(name);
        }
    }
    if names.len() + 1 > max {
        return Err(ApiError::bad_request(
            "too_many_members",
            format!("A chat holds at most {max} members"),
        ));
    }
    Ok(names.into_iter().collect())
}

/// `GET /api/conversations`: the signed-in user's chats, newest activity first.
pub async fn list(state: AppState, session: Option<Session>) -> ApiResult {
    let s = session.ok_or_else(ApiError::unauthorized)?;
    let list = state
        .store
        .summaries(&s.username)
        .await
        .map_err(|e| ApiError::internal("listing chats", e))?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "conversations": list }),
    ))
}

/// `GET /api/conversations/:id`: the head (one round trip: existence, access, title,
/// members, lastEventId), then the messages up to that lastEventId, streamed page by page
/// (`RESPONSE_CHUNK_BYTES` each), so the gateway holds about one page per request whatever the
/// conversation's size. Errors (404, 400) are known before the first byte; a Redis failure
/// later cuts the body.
pub async fn get(state: AppState, raw_id: String, session: Option<Session>) -> ApiResult {
    let id = parse_conv_id(&raw_id)?;
    let actor = session.as_ref().map(|s| s.username.as_str());
    let head = state
        .store
        .head(id, actor)
        .await
        .map_err(|e| ApiError::internal("reading a conversation", e))?
        .ok_or_else(ApiError::conversation_not_found)?;
    let prefix = bytes::Bytes::from(head.json_prefix());
    let pages = state
        .store
        .message_pages(id, head.last_event_id, state.cfg.response_chunk_bytes);
    let body = futures::stream::once(async move { Ok(prefix) }).chain(pages);
    Ok(crate::streamed::response(
        StatusCode::OK,
        "application/json",
        body,
    ))
}

/// Who may act on a conversation: open ones need nothing; member chats need a member's session.
async fn access(
    state: &AppState,
    id: Uuid,
    session: &Option<Session>,
) -> Result<(Kind, Option<String>), ApiError> {
    let kind = state
        .store
        .kind(id)
        .await
        .map_err(|e| ApiError::internal("reading a conversation", e))?;
    match (kind, session) {
        (None, _) => Err(ApiError::conversation_not_found()),
        (Some(Kind::Open), _) => Ok((Kind::Open, None)),
        (Some(Kind::Member), None) => Err(ApiError::conversation_not_found()),
        // Membership is checked atomically by the persistence script.
        (Some(Kind::Member), Some(s)) => Ok((Kind::Member, Some(s.username.clone()))),
    }
}

/// The error to answer with when a request about chat `id` is invalid: the error itself for
/// open conversations and members, 404 for a signed-in outsider of a member chat.
async fn hide_from_outsiders(
    state: &AppState,
    id: Uuid,
    kind: Kind,
    actor: Option<&str>,
    err: ApiError,
) -> ApiError {
    match (kind, actor) {
        (Kind::Member, Some(user)) => match state.store.is_member(id, user).await {
            Ok(true) => err,
            Ok(false) => ApiError::conversation_not_found(),
            Err(e) => ApiError::internal("checking membership", e),
        },
        _ => err,
    }
}

/// How a message arrived: the seed's REST API requires a `timestamp` in open conversations;
/// a WebSocket `send` may leave it out (the server's time is used).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Rest,
    WebSocket,
}

/// Validates a message for `kind`. In a member chat the sender is always the actor and the
/// timestamp always the server's (the body's are ignored); in an open conversation both are
/// the client's, as in the seed.
pub fn build_message(
    obj: &Map<String, Value>,
    kind: Kind,
    actor: Option<&str>,
    max_bytes: usize,
    via: Via,
) -> Result<Message, ApiError> {
    let content = match obj.get("content") {
        None | Some(Value::Null) => return Err(ValidationError::MissingContent.into()),
        Some(Value::String(s)) => s,
        Some(_) => return Err(ValidationError::ContentNotString.into()),
    };
    domain::validate_content(content, max_bytes)?;
    let (sender, timestamp) = match (kind, actor) {
        (Kind::Member, Some(user)) => (user.to_string(), domain::now_rfc3339()),
        _ => {
            let sender = match obj.get("sender") {
                Some(Value::String(s)) => s.clone(),
                _ => return Err(ValidationError::InvalidSender.into()),
            };
            domain::validate_open_sender(&sender)?;
            let timestamp = match (obj.get("timestamp"), via) {
                (Some(Value::String(s)), _) => {
                    domain::validate_timestamp(s)?;
                    s.clone()
                }
                (None | Some(Value::Null), Via::WebSocket) => domain::now_rfc3339(),
                (None | Some(Value::Null), Via::Rest) => {
                    return Err(ValidationError::MissingTimestamp.into())
                }
                (Some(_), _) => return Err(ValidationError::InvalidTimestamp.into()),
            };
            (sender, timestamp)
        }
    };
    Ok(Message {
        message_id: Uuid::new_v4(),
        sender,
        content: content.clone(),
        timestamp,
        stopped: false,
    })
}

/// Makes `message` the one idempotency `key` names in conversation `id` for `user` (its id
/// derives from the key) and returns its fingerprint: sender, content, and the client's
/// timestamp where the client gives one (open conversations). `None` (nothing changed)
/// without a key, for an empty one, or with `IDEMPOTENCY_WINDOW_SECS=0`.
pub fn keyed_message(
    state: &AppState,
    id: Uuid,
    user: Option<&str>,
    key: Option<&str>,
    obj: &Map<String, Value>,
    kind: Kind,
    message: &mut Message,
) -> Option<String> {
    let key = key.filter(|k| !k.is_empty() && state.cfg.idempotency_window_secs > 0)?;
    message.message_id = idempotency::message_id(&id, user, key);
    let timestamp = match kind {
        Kind::Open => obj.get("timestamp").and_then(Value::as_str).unwrap_or(""),
        Kind::Member => "",
    };
    Some(idempotency::fingerprint(&[
        "message",
        &message.sender,
        &message.content,
        timestamp,
    ]))
}

/// `POST /api/conversations/:id/messages`.
pub async fn send(
    state: AppState,
    raw_id: String,
    session: Option<Session>,
    addr: Option<std::net::SocketAddr>,
    key: Result<Option<String>, ApiError>,
    body: Body,
) -> ApiResult {
    let id = parse_conv_id(&raw_id)?;
    let key = key?;
    let (kind, actor) = access(&state, id, &session).await?;
    let built = body.json_object(true).and_then(|obj| {
        let obj = obj.unwrap_or_default();
        build_message(
            &obj,
            kind,
            actor.as_deref(),
            state.cfg.max_message_bytes,
            Via::Rest,
        )
        .map(|m| (m, obj))
    });
    let (mut message, obj) = match built {
        Ok(built) => built,
        // A member chat's existence is not revealed to outsiders, even by a validation error.
        Err(e) => return Err(hide_from_outsiders(&state, id, kind, actor.as_deref(), e).await),
    };
    let user = session.as_ref().map(|s| s.username.as_str());
    let fingerprint = keyed_message(&state, id, user, key.as_deref(), &obj, kind, &mut message);
    if session.is_none() {
        count_anonymous_write(&state, addr.map(|a| a.ip())).await?;
    }
    if open_with_assistant(&state, id).await? {
        count_assistant_message(&state, addr.map(|a| a.ip())).await?;
    }
    apply(
        &state,
        Command::SendMessage {
            conversation_id: id,
            message,
            actor,
            assistant_reply: None,
            fingerprint,
        },
    )
    .await
}

/// `DELETE /api/conversations/:id/messages/:messageId`.
pub async fn delete(
    state: AppState,
    raw_id: String,
    raw_mid: String,
    session: Option<Session>,
) -> ApiResult {
    let id = parse_conv_id(&raw_id)?;
    let message_id = domain::parse_id(&raw_mid)
        .ok_or_else(|| ApiError::bad_request("invalid_id", "The message id must be a UUID"))?;
    let (_, actor) = access(&state, id, &session).await?;
    apply(
        &state,
        Command::DeleteMessage {
            conversation_id: id,
            message_id,
            actor,
        },
    )
    .await
}

/// `POST /api/conversations/:id/members` `{"username"}`.
pub async fn add_member(
    state: AppState,
    raw_id: String,
    session: Option<Session>,
    body: Body,
) -> ApiResult {
    let id = parse_conv_id(&raw_id)?;
    let (kind, actor) = access(&state, id, &session).await?;
    let (Kind::Member, Some(actor)) = (kind, actor) else {
        return Err(ApiError::bad_request(
            "not_a_member_chat",
            "Open conversations have no members",
        ));
    };
    if !state
        .store
        .is_member(id, &actor)
        .await
        .map_err(|e| ApiError::internal("checking membership", e))?
    {
        return Err(ApiError::conversation_not_found());
    }
    let obj = body.json_object(true)?.unwrap_or_default();
    let raw = opt_str(&obj, "username")?
        .ok_or_else(|| ApiError::bad_request("invalid_username", "username is required"))?;
    let username = domain::normalize_username(raw)
        .map_err(|_| ApiError::not_found(format!("Unknown user: {raw}")))?;
    if !state
        .auth
        .unknown_users(std::slice::from_ref(&username))
        .await?
        .is_empty()
    {
        return Err(ApiError::not_found(format!("Unknown user: {username}"))
            .with("usernames", vec![username]));
    }
    let members = state
        .store
        .members_count(id)
        .await
        .map_err(|e| ApiError::internal("counting members", e))?;
    if members >= state.cfg.max_chat_members {
        return Err(ApiError::bad_request(
            "too_many_members",
            format!(
                "A chat holds at most {} members",
                state.cfg.max_chat_members
            ),
        ));
    }
    apply(
        &state,
        Command::AddMember {
            conversation_id: id,
            username,
            actor,
        },
    )
    .await
}

/// `POST /api/conversations/:id/assistant/cancel`: stops the answer being streamed.
pub async fn cancel_assistant(
    state: AppState,
    raw_id: String,
    session: Option<Session>,
) -> ApiResult {
    let id = parse_conv_id(&raw_id)?;
    let (kind, actor) = access(&state, id, &session).await?;
    if let (Kind::Member, Some(actor)) = (kind, &actor) {
        if !state
            .store
            .is_member(id, actor)
            .await
            .map_err(|e| ApiError::internal("checking membership", e))?
        {
            return Err(ApiError::conversation_not_found());
        }
    }
    state
        .store
        .request_cancel(id)
        .await
        .map_err(|e| ApiError::internal("requesting a cancel", e))?;
    Ok(json(
        StatusCode::ACCEPTED,
        &serde_json::json!({"message": "Cancel requested"}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    fn code(r: Result<Message, ApiError>) -> Option<&'static str> {
        r.err().map(|e| e.code)
    }

    #[test]
    fn member_chat_timestamps_are_the_servers() {
        let body = obj(json!({"content": "hi", "timestamp": "1999-01-01T00:00:00Z"}));
        let before = chrono::Utc::now() - chrono::Duration::seconds(1);
        let m = build_message(&body, Kind::Member, Some("alice"), 100, Via::Rest);
        let m = m.unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(m.sender, "alice");
        let ts = chrono::DateTime::parse_from_rfc3339(&m.timestamp)
            .unwrap_or_else(|e| panic!("{}: {e}", m.timestamp));
        assert!(ts >= before, "{} is the client's time", m.timestamp);
        // Even a malformed client timestamp is simply ignored there.
        let body = obj(json!({"content": "hi", "timestamp": 5}));
        let m = build_message(&body, Kind::Member, Some("alice"), 100, Via::WebSocket);
        assert!(m.is_ok());
    }

    #[test]
    fn open_conversations_keep_the_clients_timestamp() {
        let body =
            obj(json!({"sender": "agent", "content": "hi", "timestamp": "2025-04-05T14:00:00Z"}));
        for via in [Via::Rest, Via::WebSocket] {
            let m = build_message(&body, Kind::Open, None, 100, via);
            let m = m.unwrap_or_else(|e| panic!("{e:?}"));
            assert_eq!(m.timestamp, "2025-04-05T14:00:00Z");
        }
    }

    #[test]
    fn a_websocket_send_may_omit_the_timestamp_in_open_conversations() {
        let body = obj(json!({"sender": "customer", "content": "hi"}));
        let m = build_message(&body, Kind::Open, None, 100, Via::WebSocket);
        let m = m.unwrap_or_else(|e| panic!("{e:?}"));
        assert!(domain::validate_timestamp(&m.timestamp).is_ok());
        // The seed's REST API still requires it.
        let r = build_message(&body, Kind::Open, None, 100, Via::Rest);
        assert_eq!(code(r), Some("invalid_timestamp"));
        let bad = obj(json!({"sender": "customer", "content": "hi", "timestamp": "soon"}));
        let r = build_message(&bad, Kind::Open, None, 100, Via::WebSocket);
        assert_eq!(code(r), Some("invalid_timestamp"));
    }

    #[test]
    fn invisible_only_content_is_refused() {
        for content in [
            "\u{200B}",
            "\u{200B}\u{200D}\u{FEFF}",
            " \u{2060} ",
            "\u{0001}",
        ] {
            let body = obj(
                json!({"sender": "customer", "content": content, "timestamp": "2025-04-05T14:00:00Z"}),
            );
            let r = build_message(&body, Kind::Open, None, 100, Via::Rest);
            assert_eq!(code(r), Some("invalid_content"), "{content:?}");
        }
    }

    #[test]
    fn the_assistant_refusal_is_a_clear_403() {
        let e = assistant_disabled();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        assert_eq!(e.code, "assistant_disabled");
        assert!(e.message.contains("open conversations"));
    }
}
