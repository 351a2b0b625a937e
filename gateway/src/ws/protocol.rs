//! WebSocket frames: parsing what clients send, building what the server sends.

use serde_json::{json, Map, Value};
use uuid::Uuid;

/// A parsed client frame. `Send` keeps its object so the REST validation can be reused.
#[derive(Debug, PartialEq)]
pub enum ClientFrame {
    Subscribe {
        conversation_id: Uuid,
        since: Option<u64>,
    },
    Unsubscribe {
        conversation_id: Uuid,
    },
    Send {
        conversation_id: Uuid,
        client_id: Option<String>,
        body: Map<String, Value>,
    },
    Typing {
        conversation_id: Uuid,
        sender: Option<String>,
    },
    Cancel {
        conversation_id: Uuid,
    },
    Ping,
}

impl ClientFrame {
    /// The frame's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::Subscribe { .. } => "subscribe",
            ClientFrame::Unsubscribe { .. } => "unsubscribe",
            ClientFrame::Send { .. } => "send",
            ClientFrame::Typing { .. } => "typing",
            ClientFrame::Cancel { .. } => "cancel",
            ClientFrame::Ping => "ping",
        }
    }
}

/// Why a frame was refused: `(code, message, ref)`.
#[derive(Debug, PartialEq)]
pub struct FrameError {
    pub code: &'static str,
    pub message: String,
    pub reference: Option<String>,
}

impl FrameError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            reference: None,
        }
    }
    pub fn with_ref(mut self, r: Option<String>) -> Self {
        self.reference = r;
        self
    }
    pub fn to_frame(&self) -> String {
        error_frame(self.code, &self.message, self.reference.as_deref())
    }
}

pub const MAX_CLIENT_ID: usize = 128;

pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| FrameError::new("invalid_json", format!("Frames must be JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(FrameError::new(
            "invalid_frame",
            "A frame must be a JSON object",
        ));
    };
    let kind = match obj.get("type") {
        Some(Value::String(t)) => t.clone(),
        _ => return Err(FrameError::new("invalid_frame", "A frame needs a \"type\"")),
    };
    let client_id = match obj.get("clientId") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.chars().count() <= MAX_CLIENT_ID => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        // Refused rather than dropped: an ack without the client's id would be unusable.
        Some(Value::String(_)) => {
            return Err(FrameError::new(
                "invalid_frame",
                format!("clientId must be at most {MAX_CLIENT_ID} characters"),
            )
            .with_ref(Some(kind)))
        }
        Some(_) => {
            return Err(
                FrameError::new("invalid_frame", "clientId must be a string or a number")
                    .with_ref(Some(kind)),
            )
        }
    };
    let reference = client_id.clone().or_else(|| Some(kind.clone()));
    let conv = || -> Result<Uuid, FrameError> {
        match obj.get("conversationId") {
            Some(Value::String(s)) => Uuid::parse_str(s).map_err(|_| {
                FrameError::new("invalid_frame", "conversationId must be a UUID")
                    .with_ref(reference.clone())
            }),
            _ => Err(
                FrameError::new("invalid_frame", "conversationId is required")
                    .with_ref(reference.clone()),
            ),
        }
    };
    match kind.as_str() {
        "subscribe" => {
            let since = match obj.get("since") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => Some(n.as_u64().ok_or_else(|| {
                    FrameError::new("invalid_frame", "since must be a non-negative integer")
                        .with_ref(reference.clone())
                })?),
                Some(_) => {
                    return Err(FrameError::new(
                        "invalid_frame",
                        "since must be a non-negative integer",
                    )
                    .with_ref(reference))
                }
            };
            Ok(ClientFrame::Subscribe {
                conversation_id: conv()?,
                since,
            })
        }
        "unsubscribe" => Ok(ClientFrame::Unsubscribe {
            conversation_id: conv()?,
        }),
        "send" => {
            let conversation_id = conv()?;
            Ok(ClientFrame::Send {
                conversation_id,
                client_id,
                body: obj,
            })
        }
        "typing" => {
            let sender = obj
                .get("sender")
                .and_then(Value::as_str)
                .map(str::to_string);
            Ok(ClientFrame::Typing {
                conversation_id: conv()?,
                sender,
            })
        }
        "cancel" => Ok(ClientFrame::Cancel {
            conversation_id: conv()?,
        }),
        "ping" => Ok(ClientFrame::Ping),
        other => Err(
            FrameError::new("unknown_type", format!("Unknown frame type {other:?}"))
                .with_ref(Some(other.to_string())),
        ),
    }
}

pub fn error_frame(code: &str, message: &str, reference: Option<&str>) -> String {
    let mut v = json!({"type": "error", "code": code, "message": message});
    if let Some(r) = reference {
        v["ref"] = r.into();
    }
    v.to_string()
}

pub fn subscribed(conversation_id: Uuid, last_event_id: u64, resync: bool) -> String {
    let mut v = json!({"type": "subscribed", "conversationId": conversation_id, "lastEventId": last_event_id});
    if resync {
        v["resync"] = true.into();
    }
    v.to_string()
}

pub fn ack(client_id: Option<&str>, message_id: &str) -> String {
    json!({"type": "ack", "clientId": client_id, "messageId": message_id}).to_string()
}

pub fn pong() -> String {
    r#"{"type":"pong"}"#.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const C: &str = "6f1c2b1e-8a4c-4f7e-9a53-0d2f6c1d9b10";

    #[test]
    fn parses_every_frame_type() {
        let id = Uuid::parse_str(C).unwrap_or_default();
        assert_eq!(
            parse(&format!(
                r#"{{"type":"subscribe","conversationId":"{C}","since":4}}"#
            )),
            Ok(ClientFrame::Subscribe {
                conversation_id: id,
                since: Some(4)
            })
        );
        assert_eq!(
            parse(&format!(
                r#"{{"type":"unsubscribe","conversationId":"{C}"}}"#
            )),
            Ok(ClientFrame::Unsubscribe {
                conversation_id: id
            })
        );
        assert!(
            matches!(parse(&format!(r#"{{"type":"send","conversationId":"{C}","content":"x","clientId":"a1"}}"#)), Ok(ClientFrame::Send { client_id: Some(c), .. }) if c == "a1")
        );
        assert_eq!(
            parse(&format!(r#"{{"type":"cancel","conversationId":"{C}"}}"#)),
            Ok(ClientFrame::Cancel {
                conversation_id: id
            })
        );
        assert_eq!(parse(r#"{"type":"ping"}"#), Ok(ClientFrame::Ping));
    }

    #[test]
    fn bad_frames_get_precise_codes() {
        assert_eq!(parse("not json").map_err(|e| e.code), Err("invalid_json"));
        assert_eq!(parse("[1]").map_err(|e| e.code), Err("invalid_frame"));
        assert_eq!(
            parse(r#"{"type":"dance"}"#).map_err(|e| e.code),
            Err("unknown_type")
        );
        assert_eq!(
            parse(r#"{"type":"subscribe"}"#).map_err(|e| e.code),
            Err("invalid_frame")
        );
        assert_eq!(
            parse(r#"{"type":"subscribe","conversationId":"nope"}"#).map_err(|e| e.code),
            Err("invalid_frame")
        );
        assert_eq!(
            parse(&format!(
                r#"{{"type":"subscribe","conversationId":"{C}","since":-1}}"#
            ))
            .map_err(|e| e.code),
            Err("invalid_frame")
        );
        let e = parse(r#"{"type":"send","clientId":"c7"}"#).err();
        assert_eq!(e.and_then(|e| e.reference), Some("c7".to_string()));
    }

    #[test]
    fn an_overlong_client_id_is_refused_not_dropped() {
        let frame = |cid: Value| {
            json!({"type": "send", "conversationId": C, "content": "x", "clientId": cid})
                .to_string()
        };
        let ok = "é".repeat(MAX_CLIENT_ID);
        assert!(matches!(
            parse(&frame(ok.clone().into())),
            Ok(ClientFrame::Send { client_id: Some(c), .. }) if c == ok
        ));
        let err = parse(&frame("a".repeat(MAX_CLIENT_ID + 1).into())).err();
        assert_eq!(err.as_ref().map(|e| e.code), Some("invalid_frame"));
        assert_eq!(
            err.as_ref().and_then(|e| e.reference.as_deref()),
            Some("send")
        );
        assert!(err.is_some_and(|e| e.message.contains("128")));
        let err = parse(&frame(json!({"a": 1}))).err();
        assert_eq!(err.map(|e| e.code), Some("invalid_frame"));
        // Numbers are still accepted, and null means none.
        assert!(matches!(
            parse(&frame(json!(7))),
            Ok(ClientFrame::Send { client_id: Some(c), .. }) if c == "7"
        ));
        assert!(matches!(
            parse(&frame(Value::Null)),
            Ok(ClientFrame::Send {
                client_id: None,
                ..
            })
        ));
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_text(s in ".{0,200}") {
            let _ = parse(&s);
        }

        #[test]
        fn never_panics_on_arbitrary_objects(t in "[a-z_]{0,12}", id in ".{0,40}", since in proptest::num::i64::ANY) {
            let frame = json!({"type": t, "conversationId": id, "since": since, "content": id}).to_string();
            let _ = parse(&frame);
        }
    }
}
