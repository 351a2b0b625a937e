//! Conversation handlers: the seed's REST API (open conversations) and member chats.

use std::collections::BTreeSet;

use confab_shared::commands::Command;
use confab_shared::domain::{self, Message, ValidationError};
use serde_json::{Map, Value};
use uuid::Uuid;
use warp::http::StatusCode;
use warp::reply::Response;

use super::body::{opt_str, Body};
use super::errors::{json, json_response, ApiError, ApiResult};
use crate::auth::Session;
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
pub async fn create(state: AppState, session: Option<Session>, body: Body) -> ApiResult {
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
    let conversation_id = state.pipeline.new_conversation_id();
    let command = match session {
        None => Command::CreateConversation {
            conversation_id,
            owner: None,
            members: Vec::new(),
            title: None,
            assistant: assistant_field.unwrap_or(false),
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
            }
        }
    };
    apply(&state, command).await
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

/// `GET /api/conversations/:id`.
pub async fn get(state: AppState, raw_id: String, session: Option<Session>) -> ApiResult {
    let id = parse_conv_id(&raw_id)?;
    let actor = session.as_ref().map(|s| s.username.as_str());
    match state
        .store
        .fetch(id, actor)
        .await
        .map_err(|e| ApiError::internal("reading a conversation", e))?
    {
        Some(c) => Ok(json_response(StatusCode::OK, &c.to_json())),
        None => Err(ApiError::conversation_not_found()),
    }
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

/// Validates a message for `kind`; the sender of a member chat message is always the actor.
pub fn build_message(
    obj: &Map<String, Value>,
    kind: Kind,
    actor: Option<&str>,
    max_bytes: usize,
) -> Result<Message, ApiError> {
    let content = match obj.get("content") {
        None | Some(Value::Null) => return Err(ValidationError::MissingContent.into()),
        Some(Value::String(s)) => s,
        Some(_) => return Err(ValidationError::ContentNotString.into()),
    };
    domain::validate_content(content, max_bytes)?;
    let ts = match obj.get("timestamp") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ValidationError::InvalidTimestamp.into()),
    };
    let (sender, timestamp) = match (kind, actor) {
        (Kind::Member, Some(user)) => (user.to_string(), ts.unwrap_or_else(domain::now_rfc3339)),
        _ => {
            let sender = match obj.get("sender") {
                Some(Value::String(s)) => s.clone(),
                _ => return Err(ValidationError::InvalidSender.into()),
            };
            domain::validate_open_sender(&sender)?;
            (sender, ts.ok_or(ValidationError::MissingTimestamp)?)
        }
    };
    domain::validate_timestamp(&timestamp)?;
    Ok(Message {
        message_id: Uuid::new_v4(),
        sender,
        content: content.clone(),
        timestamp,
        stopped: false,
    })
}

/// `POST /api/conversations/:id/messages`.
pub async fn send(
    state: AppState,
    raw_id: String,
    session: Option<Session>,
    body: Body,
) -> ApiResult {
    let id = parse_conv_id(&raw_id)?;
    let (kind, actor) = access(&state, id, &session).await?;
    let message = body.json_object(true).and_then(|obj| {
        build_message(
            &obj.unwrap_or_default(),
            kind,
            actor.as_deref(),
            state.cfg.max_message_bytes,
        )
    });
    let message = match message {
        Ok(m) => m,
        // A member chat's existence is not revealed to outsiders, even by a validation error.
        Err(e) => return Err(hide_from_outsiders(&state, id, kind, actor.as_deref(), e).await),
    };
    apply(
        &state,
        Command::SendMessage {
            conversation_id: id,
            message,
            actor,
            assistant_reply: None,
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
