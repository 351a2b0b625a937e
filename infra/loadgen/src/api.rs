//! Confab REST calls used while setting a scenario up (users, sessions, conversations).

use anyhow::{anyhow, bail, Result};
use http::Method;
use serde_json::{json, Value};

use crate::http::HttpConn;

fn describe(status: u16, body: &Value) -> String {
    let code = body["error"]["code"].as_str().unwrap_or("?");
    let msg = body["error"]["message"].as_str().unwrap_or("");
    format!("HTTP {status} {code}: {msg}")
}

fn field(body: &Value, name: &str) -> Result<String> {
    body[name]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("the answer has no {name:?}: {body}"))
}

/// `POST /api/conversations` without a token: an open conversation.
pub async fn create_open(conn: &mut HttpConn, assistant: bool) -> Result<String> {
    let body = json!({ "assistant": assistant });
    let (status, v) = conn
        .json(Method::POST, "/api/conversations", None, Some(&body))
        .await?;
    if status != 201 {
        bail!("creating a conversation: {}", describe(status, &v));
    }
    field(&v, "conversationId")
}

/// `POST /api/users`; `Ok(false)` when the name is already taken (a rerun reuses it).
pub async fn create_user(conn: &mut HttpConn, username: &str, password: &str) -> Result<bool> {
    let body = json!({ "username": username, "password": password });
    let (status, v) = conn
        .json(Method::POST, "/api/users", None, Some(&body))
        .await?;
    match status {
        201 => Ok(true),
        409 => Ok(false),
        _ => bail!("creating user {username}: {}", describe(status, &v)),
    }
}

/// `POST /api/sessions` → the bearer token.
pub async fn sign_in(conn: &mut HttpConn, username: &str, password: &str) -> Result<String> {
    let body = json!({ "username": username, "password": password });
    let (status, v) = conn
        .json(Method::POST, "/api/sessions", None, Some(&body))
        .await?;
    if status != 200 {
        bail!("signing in as {username}: {}", describe(status, &v));
    }
    field(&v, "token")
}

/// `POST /api/conversations` with a token: a member chat without the assistant.
pub async fn create_chat(
    conn: &mut HttpConn,
    token: &str,
    title: &str,
    members: &[String],
) -> Result<String> {
    let body = json!({ "title": title, "members": members, "assistant": false });
    let (status, v) = conn
        .json(Method::POST, "/api/conversations", Some(token), Some(&body))
        .await?;
    if status != 201 {
        bail!("creating chat {title:?}: {}", describe(status, &v));
    }
    field(&v, "conversationId")
}
