//! Commands: what a gateway asks the persistence workers to do.
//!
//! A command travels as the JSON field `c` of an entry in its partition's command stream.
//! Its `id` is chosen by the gateway and is the idempotency key: a command delivered twice is
//! applied once. Ids of the things it creates (conversation, message) are chosen by the
//! gateway too, so a redelivery creates nothing new; when the client gave an idempotency key,
//! they derive from it, so a client's retry (a second command) is the same thing again. `reply_to` names the gateway waiting for
//! the [`Reply`] on its reply channel.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::Message;

/// The stream field holding the serialized envelope.
pub const COMMAND_FIELD: &str = "c";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandEnvelope {
    pub id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// The W3C `traceparent` of the request that made it (see [`crate::trace`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    #[serde(flatten)]
    pub command: Command,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum Command {
    /// An open conversation (no owner) or a member chat (owner plus members).
    CreateConversation {
        conversation_id: Uuid,
        #[serde(default)]
        owner: Option<String>,
        #[serde(default)]
        members: Vec<String>,
        #[serde(default)]
        title: Option<String>,
        #[serde(default)]
        assistant: bool,
        /// Set when the conversation id derives from the client's `Idempotency-Key`: the
        /// fingerprint of the request, so a retry is told from a reuse of the key.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fingerprint: Option<String>,
    },
    /// `actor` is the signed-in user (member chats); `None` for open conversations.
    SendMessage {
        conversation_id: Uuid,
        message: Message,
        #[serde(default)]
        actor: Option<String>,
        /// Set when the completion worker stores the assistant's reply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        assistant_reply: Option<AssistantReply>,
        /// Set when the message id derives from the client's idempotency key (`clientId`,
        /// `Idempotency-Key`): the fingerprint of the message, so that a retry (same key, same
        /// message) gets the first result and a reuse (same key, other message) is refused.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fingerprint: Option<String>,
    },
    DeleteMessage {
        conversation_id: Uuid,
        message_id: Uuid,
        #[serde(default)]
        actor: Option<String>,
    },
    AddMember {
        conversation_id: Uuid,
        username: String,
        actor: String,
    },
}

impl Command {
    pub fn conversation_id(&self) -> Uuid {
        match self {
            Command::CreateConversation {
                conversation_id, ..
            }
            | Command::SendMessage {
                conversation_id, ..
            }
            | Command::DeleteMessage {
                conversation_id, ..
            }
            | Command::AddMember {
                conversation_id, ..
            } => *conversation_id,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Command::CreateConversation { .. } => "create_conversation",
            Command::SendMessage { .. } => "send_message",
            Command::DeleteMessage { .. } => "delete_message",
            Command::AddMember { .. } => "add_member",
        }
    }
}

/// What the completion worker adds when it stores a reply: the newest human message the
/// reply answers (so it is not answered twice) and the `assistant_done` event to publish
/// right after the reply's `message` event, atomically with storing it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssistantReply {
    pub answers_up_to: u64,
    pub done_event: String,
}

/// The actor name the completion worker uses; it is a reserved username, so no person can
/// act as it.
pub const ASSISTANT_ACTOR: &str = "assistant";

/// The answer to one command, published on the waiting gateway's reply channel.
/// `body` is exactly the JSON the REST API returns with `status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub id: Uuid,
    pub status: u16,
    pub body: serde_json::Value,
}

impl Reply {
    pub fn error(id: Uuid, status: u16, code: &str, message: &str) -> Self {
        Self {
            id,
            status,
            body: error_body(code, message),
        }
    }
}

/// The one error shape of the whole API: `{"error":{"code","message"}}`.
pub fn error_body(code: &str, message: &str) -> serde_json::Value {
    serde_json::json!({ "error": { "code": code, "message": message } })
}

/// A job for the completion workers: "answer conversation X, whose newest human message is
/// event `up_to_event`".
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompletionJob {
    pub conversation_id: Uuid,
    pub up_to_event: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_with_kind_tag() {
        let env = CommandEnvelope {
            id: Uuid::new_v4(),
            trace: None,
            reply_to: Some("gw-1".into()),
            command: Command::DeleteMessage {
                conversation_id: Uuid::new_v4(),
                message_id: Uuid::new_v4(),
                actor: None,
            },
        };
        let json = serde_json::to_value(&env).unwrap_or_default();
        assert_eq!(json["kind"], "delete_message");
        assert!(json["conversationId"].is_string());
        let back: CommandEnvelope = serde_json::from_value(json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, env);
    }
}
