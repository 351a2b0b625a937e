//! Events: what happened, fanned out to WebSocket clients by every gateway.
//!
//! Stored events (message, message_deleted, member_joined) carry an `eventId` that increases
//! within their conversation. Rust encodes them ([`Event::template`]); the persistence Lua
//! script only splices in the eventId, appends them to the conversation's history and
//! publishes them on its channel in one atomic step, so Pub/Sub order is eventId order.
//! Live-only events (typing, assistant deltas, conversation_expired) have no `eventId`. The
//! JSON shapes here are the WebSocket protocol.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum Event {
    Message {
        conversation_id: Uuid,
        event_id: u64,
        /// The stored message JSON, passed through as it is.
        message: Box<RawValue>,
    },
    MessageDeleted {
        conversation_id: Uuid,
        event_id: u64,
        message_id: Uuid,
    },
    MemberJoined {
        conversation_id: Uuid,
        event_id: u64,
        username: String,
    },
    Typing {
        conversation_id: Uuid,
        username: String,
    },
    ConversationExpired {
        conversation_id: Uuid,
    },
    ConversationAdded {
        conversation: ConversationSummary,
    },
    AssistantDelta {
        conversation_id: Uuid,
        response_id: Uuid,
        seq: u64,
        delta: String,
    },
    AssistantDone {
        conversation_id: Uuid,
        response_id: Uuid,
        message_id: Uuid,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        stopped: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<serde_json::Value>,
    },
    AssistantRestarted {
        conversation_id: Uuid,
        response_id: Uuid,
    },
    AssistantError {
        conversation_id: Uuid,
        response_id: Uuid,
        code: String,
        message: String,
    },
    /// Internal: a user's session ended; gateways close that token's connections.
    SessionRevoked {
        token_hash: String,
    },
}

/// What a stored event's JSON looks like up to its eventId, and after it.
const EVENT_ID_SLOT: &str = "\"eventId\":0";

impl Event {
    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A stored event (built with `event_id: 0`) as the two halves around its eventId, for
    /// the script that assigns it. Fields serialize in declaration order and `eventId` comes
    /// before any payload, so its first occurrence is the field itself.
    pub fn template(&self) -> (String, String) {
        let json = self.to_json();
        match json.find(EVENT_ID_SLOT) {
            Some(at) => {
                let head = &json[..at + EVENT_ID_SLOT.len() - 1];
                let tail = &json[at + EVENT_ID_SLOT.len()..];
                (head.to_string(), tail.to_string())
            }
            None => (json, String::new()),
        }
    }
}

/// A chat as listed in `GET /api/conversations` and `conversation_added`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationSummary {
    pub conversation_id: Uuid,
    pub title: String,
    pub members: Vec<String>,
    pub assistant: bool,
    pub created_at: String,
    pub last_activity: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_match_the_protocol() {
        let id = Uuid::nil();
        let e = Event::AssistantDelta {
            conversation_id: id,
            response_id: id,
            seq: 3,
            delta: "hi".into(),
        };
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap_or_default();
        assert_eq!(v["type"], "assistant_delta");
        assert_eq!(v["responseId"], id.to_string());
        assert_eq!(v["seq"], 3);
        let done = Event::AssistantDone {
            conversation_id: id,
            response_id: id,
            message_id: id,
            stopped: false,
            usage: None,
        };
        let v: serde_json::Value = serde_json::from_str(&done.to_json()).unwrap_or_default();
        assert!(v.get("stopped").is_none());
    }

    #[test]
    fn templates_split_at_the_event_id() {
        let raw = RawValue::from_string(r#"{"content":"\"eventId\":0"}"#.to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        let e = Event::Message {
            conversation_id: Uuid::nil(),
            event_id: 0,
            message: raw,
        };
        let (head, tail) = e.template();
        let json = format!("{head}42{tail}");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(v["eventId"], 42);
        assert_eq!(v["message"]["content"], "\"eventId\":0");
        assert!(head.ends_with("\"eventId\":"), "{head}");
    }
}
