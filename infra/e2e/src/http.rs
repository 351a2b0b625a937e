//! REST helpers: every call answers `(status, json)`; a body that is not JSON comes back as
//! a JSON string holding the text (so a test can still print it), an empty body as `null`.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

/// A client for one gateway, optionally signed in (`Authorization: Bearer`).
#[derive(Clone)]
pub struct Http {
    base: String,
    client: reqwest::Client,
    token: Option<String>,
}

pub type Answer = (u16, Value);

impl Http {
    /// `base` is `http://127.0.0.1:<port>`.
    pub fn new(base: impl Into<String>) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .no_proxy()
            .build()
            .unwrap_or_else(|e| panic!("cannot build an HTTP client: {e}"));
        Self {
            base: base.into(),
            client,
            token: None,
        }
    }

    /// The same client (and token), connecting from local address `ip` — any address of
    /// 127.0.0.0/8 reaches a gateway on 127.0.0.1, which then sees a different client.
    pub fn from_addr(&self, ip: &str) -> Self {
        let ip: std::net::IpAddr = ip
            .parse()
            .unwrap_or_else(|e| panic!("not an IP address {ip:?}: {e}"));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .no_proxy()
            .local_address(ip)
            .build()
            .unwrap_or_else(|e| panic!("cannot build an HTTP client: {e}"));
        Self {
            client,
            ..self.clone()
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The same client, signed in with `token`.
    pub fn with_token(&self, token: &str) -> Self {
        Self {
            token: Some(token.to_string()),
            ..self.clone()
        }
    }

    /// The same client without a token.
    pub fn anonymous(&self) -> Self {
        Self {
            token: None,
            ..self.clone()
        }
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// A request builder for `path` carrying the token, for anything the helpers lack.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let rb = self
            .client
            .request(method, format!("{}{}", self.base, path));
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// Sends a prepared request; panics only if no HTTP answer arrives at all.
    pub async fn send(&self, rb: reqwest::RequestBuilder) -> Answer {
        self.try_send(rb)
            .await
            .unwrap_or_else(|e| panic!("no HTTP answer: {e}"))
    }

    /// Sends a prepared request; `Err` on a transport failure (reset, refused, timeout).
    pub async fn try_send(&self, rb: reqwest::RequestBuilder) -> Result<Answer, reqwest::Error> {
        let res = rb.send().await?;
        let status = res.status().as_u16();
        let bytes = res.bytes().await?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Ok((status, body))
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(self.request(Method::GET, path)).await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        self.send(self.request(Method::DELETE, path)).await
    }

    /// POST with a JSON body (`Content-Type: application/json`).
    pub async fn post(&self, path: &str, body: &Value) -> Answer {
        self.send(self.request(Method::POST, path).json(body)).await
    }

    /// POST with no body and no content type.
    pub async fn post_empty(&self, path: &str) -> Answer {
        self.send(self.request(Method::POST, path)).await
    }

    /// POST raw bytes with the given content type (none when `None`).
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> Answer {
        let mut rb = self.request(Method::POST, path).body(body);
        if let Some(ct) = content_type {
            rb = rb.header("content-type", ct);
        }
        self.send(rb).await
    }

    // ----- the seed's API -----

    /// `POST /api/conversations` (no body) → the new id; panics unless 201.
    pub async fn create_conversation(&self) -> String {
        let (status, body) = self.post_empty("/api/conversations").await;
        assert_eq!(status, 201, "create conversation: {body}");
        conversation_id(&body)
    }

    /// `POST /api/conversations/:id/messages` with the seed's three fields.
    pub async fn send_message(
        &self,
        conversation: &str,
        sender: &str,
        content: &str,
        timestamp: &str,
    ) -> Answer {
        self.post(
            &format!("/api/conversations/{conversation}/messages"),
            &json!({"sender": sender, "content": content, "timestamp": timestamp}),
        )
        .await
    }

    /// Sends and insists on 201; returns the messageId.
    pub async fn send_ok(&self, conversation: &str, sender: &str, content: &str) -> String {
        let (status, body) = self
            .send_message(conversation, sender, content, "2025-04-05T14:00:00Z")
            .await;
        assert_eq!(status, 201, "send to {conversation}: {body}");
        str_field(&body, "messageId")
    }

    /// `GET /api/conversations/:id`.
    pub async fn conversation(&self, conversation: &str) -> Answer {
        self.get(&format!("/api/conversations/{conversation}"))
            .await
    }

    /// The messages of a conversation; panics unless 200.
    pub async fn messages(&self, conversation: &str) -> Vec<Value> {
        let (status, body) = self.conversation(conversation).await;
        assert_eq!(status, 200, "get {conversation}: {body}");
        body["messages"].as_array().cloned().unwrap_or_default()
    }

    /// `DELETE /api/conversations/:id/messages/:messageId`.
    pub async fn delete_message(&self, conversation: &str, message: &str) -> Answer {
        self.delete(&format!(
            "/api/conversations/{conversation}/messages/{message}"
        ))
        .await
    }

    // ----- users, sessions, member chats -----

    /// `POST /api/users`.
    pub async fn sign_up(&self, username: &str, password: &str) -> Answer {
        self.post(
            "/api/users",
            &json!({"username": username, "password": password}),
        )
        .await
    }

    /// `POST /api/sessions`.
    pub async fn sign_in(&self, username: &str, password: &str) -> Answer {
        self.post(
            "/api/sessions",
            &json!({"username": username, "password": password}),
        )
        .await
    }

    /// Registers `username` (password `password-<username>`) and signs in; returns a signed-in
    /// client.
    pub async fn user(&self, username: &str) -> Http {
        let password = format!("password-{username}");
        let (status, body) = self.sign_up(username, &password).await;
        assert_eq!(status, 201, "sign up {username}: {body}");
        let (status, body) = self.sign_in(username, &password).await;
        assert_eq!(status, 200, "sign in {username}: {body}");
        self.with_token(&str_field(&body, "token"))
    }

    /// Signs in again as an existing user made by [`Http::user`] (a second session).
    pub async fn another_session(&self, username: &str) -> Http {
        let (status, body) = self
            .sign_in(username, &format!("password-{username}"))
            .await;
        assert_eq!(status, 200, "sign in {username}: {body}");
        self.with_token(&str_field(&body, "token"))
    }

    /// A member chat (signed-in client): `POST /api/conversations` with title and members.
    pub async fn create_chat(&self, title: &str, members: &[&str], assistant: bool) -> String {
        let (status, body) = self
            .post(
                "/api/conversations",
                &json!({"title": title, "members": members, "assistant": assistant}),
            )
            .await;
        assert_eq!(status, 201, "create chat {title}: {body}");
        conversation_id(&body)
    }

    /// A member-chat message (signed in): `{"content"}`; panics unless 201.
    pub async fn say(&self, conversation: &str, content: &str) -> String {
        let (status, body) = self
            .post(
                &format!("/api/conversations/{conversation}/messages"),
                &json!({"content": content}),
            )
            .await;
        assert_eq!(status, 201, "say in {conversation}: {body}");
        str_field(&body, "messageId")
    }
}

/// `body.conversationId` as a string (panics if absent).
pub fn conversation_id(body: &Value) -> String {
    str_field(body, "conversationId")
}

/// A string field of a JSON object, or a panic naming it.
pub fn str_field(body: &Value, field: &str) -> String {
    body[field]
        .as_str()
        .unwrap_or_else(|| panic!("no string {field:?} in {body}"))
        .to_string()
}

/// Asserts the API's one error shape `{"error":{"code","message"}}` with `status` and `code`.
#[track_caller]
pub fn assert_error(answer: &Answer, status: u16, code: &str) {
    let (got, body) = answer;
    assert_eq!(*got, status, "expected {status} {code}, got {got}: {body}");
    let err = body
        .get("error")
        .and_then(Value::as_object)
        .unwrap_or_else(|| panic!("not the error shape: {body}"));
    assert_eq!(
        err.get("code").and_then(Value::as_str),
        Some(code),
        "{body}"
    );
    let message = err.get("message").and_then(Value::as_str).unwrap_or("");
    assert!(
        !message.trim().is_empty(),
        "error without a message: {body}"
    );
    assert_eq!(
        body.as_object().map(|o| o.len()),
        Some(1),
        "extra top-level fields next to \"error\": {body}"
    );
}

/// The object's keys, sorted (for field-for-field shape checks).
pub fn keys_of(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
}
