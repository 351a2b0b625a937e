//! Lenient parsing of a Chat Completions request body.
//!
//! Only what the mock needs is read; unknown fields are ignored, message
//! `content` may be a string, an array of parts (`{"type":"text","text":…}`)
//! or null, and malformed optional fields fall back to their defaults.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use serde_json::Value;

/// One chat message, reduced to its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub text: String,
    pub name: Option<String>,
}

/// The parts of a Chat Completions request the mock acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    pub stream: bool,
    pub include_usage: bool,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<usize>,
}

/// Why a request body was rejected (400 `invalid_request_error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    pub message: String,
    pub param: Option<&'static str>,
}

impl ChatRequest {
    /// Parses the JSON body; `default_model` is used when `model` is absent.
    pub fn parse(body: &[u8], default_model: &str) -> Result<Self, RequestError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| RequestError {
            message: format!(
                "We could not parse the JSON body of your request. ({e}) \
                 (HINT: This likely means you aren't using your HTTP library correctly.)"
            ),
            param: None,
        })?;
        let Some(obj) = value.as_object() else {
            return Err(RequestError {
                message: "The request body must be a JSON object.".to_string(),
                param: None,
            });
        };
        let Some(raw_messages) = obj.get("messages").and_then(Value::as_array) else {
            return Err(RequestError {
                message: "Missing required parameter: 'messages'.".to_string(),
                param: Some("messages"),
            });
        };
        let messages = raw_messages.iter().map(parse_message).collect();
        let model = obj
            .get("model")
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty())
            .unwrap_or(default_model)
            .to_string();
        let stream = obj.get("stream").and_then(Value::as_bool).unwrap_or(false);
        let include_usage = obj
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let max_tokens = ["max_completion_tokens", "max_tokens"]
            .iter()
            .find_map(|k| obj.get(*k).and_then(Value::as_u64))
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        Ok(Self {
            model,
            messages,
            stream,
            include_usage,
            max_tokens,
        })
    }

    /// Text of the last `user` message (or of the last message when no
    /// message has the `user` role).
    pub fn last_user_text(&self) -> &str {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .or_else(|| self.messages.last())
            .map(|m| m.text.as_str())
            .unwrap_or("")
    }

    /// Stable key of the conversation: a hash of every message's role and text.
    pub fn conversation_key(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        for m in &self.messages {
            m.role.hash(&mut hasher);
            m.text.hash(&mut hasher);
        }
        hasher.finish()
    }
}

fn parse_message(value: &Value) -> Message {
    let role = value
        .get("role")
        .and_then(Value::as_str)
        .unwrap_or("user")
        .to_string();
    let name = value
        .get("name")
        .and_then(Value::as_str)
        .map(str::to_string);
    let text = value.get("content").map(content_text).unwrap_or_default();
    Message { role, text, name }
}

fn content_text(content: &Value) -> String {
    match content {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| match p {
                Value::String(s) => Some(s.as_str()),
                other => other.get("text").and_then(Value::as_str),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Object(_) => content
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_request() {
        let body = br#"{"model":"gpt-4o-mini","stream":true,
            "stream_options":{"include_usage":true},"max_tokens":7,
            "messages":[{"role":"system","content":"be nice"},
                        {"role":"user","content":"hi","name":"bob"},
                        {"role":"assistant","content":null},
                        {"role":"user","content":[{"type":"text","text":"part one"},
                            {"type":"image_url","image_url":{"url":"x"}},
                            {"type":"text","text":"part two"}]}]}"#;
        let r = ChatRequest::parse(body, "demo").expect("valid");
        assert_eq!(r.model, "gpt-4o-mini");
        assert!(r.stream && r.include_usage);
        assert_eq!(r.max_tokens, Some(7));
        assert_eq!(r.messages.len(), 4);
        assert_eq!(r.messages[1].name.as_deref(), Some("bob"));
        assert_eq!(r.messages[2].text, "");
        assert_eq!(r.last_user_text(), "part one\npart two");
    }

    #[test]
    fn defaults_and_precedence() {
        let body = br#"{"messages":[{"role":"user","content":"x"}],
            "max_tokens":50,"max_completion_tokens":5,"stream":"yes"}"#;
        let r = ChatRequest::parse(body, "demo").expect("valid");
        assert_eq!(r.model, "demo");
        assert!(!r.stream);
        assert!(!r.include_usage);
        assert_eq!(r.max_tokens, Some(5));
    }

    #[test]
    fn rejects_bad_bodies() {
        assert!(ChatRequest::parse(b"not json", "m").is_err());
        assert!(ChatRequest::parse(b"[1]", "m").is_err());
        let e = ChatRequest::parse(br#"{"model":"m"}"#, "m").expect_err("no messages");
        assert_eq!(e.param, Some("messages"));
    }

    #[test]
    fn conversation_key_depends_on_all_messages() {
        let a = ChatRequest::parse(br#"{"messages":[{"role":"user","content":"a"}]}"#, "m");
        let b = ChatRequest::parse(br#"{"messages":[{"role":"user","content":"b"}]}"#, "m");
        let a2 = ChatRequest::parse(br#"{"messages":[{"role":"user","content":"a"}]}"#, "m");
        let (a, b, a2) = (a.expect("a"), b.expect("b"), a2.expect("a2"));
        assert_ne!(a.conversation_key(), b.conversation_key());
        assert_eq!(a.conversation_key(), a2.conversation_key());
    }
}
