//! Events: what happened, fanned out to WebSocket clients by every gateway.
//!
//! Stored events (message, message_deleted, member_joined) carry an `eventId` that increases
//! within their conversation; they are written by the persistence Lua script, which appends
//! them to the conversation's history stream and publishes them on its channel in one atomic
//! step, so Pub/Sub order is eventId order. Live-only events (typing, assistant deltas,
//! conversation_expired) have no `eventId`. The JSON shapes here are the WebSocket protocol.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::Message;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum Event {
    Message {
        conversation_id: Uuid,
        event_id: u64,
        message: Message,
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
    /// Internal: ask the completion worker answering this conversation to stop.
    CancelRequested {
        conversation_id: Uuid,
    },
}

impl Event {
    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail.
        serde_json::to_string(self).unwrap_or_default()
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

/// Just enough of an event to route and order it without parsing the payload.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventHeader {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub conversation_id: Option<Uuid>,
    #[serde(default)]
    pub event_id: Option<u64>,
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
        let h: EventHeader = serde_json::from_str(r#"{"type":"message","conversationId":"00000000-0000-0000-0000-000000000000","eventId":7,"message":{}}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(h.event_id, Some(7));
    }
}
