//! Domain types and their validation: conversation and message ids, senders, ISO 8601
//! timestamps, message content and usernames. Validation lives here so the gateway (REST and
//! WebSocket) and the workers agree on every rule.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Who wrote a message: the seed's two roles, a signed-in user, or the assistant.
pub const SENDER_CUSTOMER: &str = "customer";
pub const SENDER_AGENT: &str = "agent";
pub const SENDER_ASSISTANT: &str = "assistant";

/// Names nobody can register: they would be confused with message senders.
pub const RESERVED_USERNAMES: [&str; 4] = ["assistant", "customer", "agent", "system"];

/// A stored message, field for field as the REST API returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub message_id: Uuid,
    pub sender: String,
    pub content: String,
    /// Exactly as the client sent it (or the server's RFC 3339 time when none was given).
    pub timestamp: String,
    /// Set on an assistant reply that was stopped before it finished.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped: bool,
}

/// Why a value was rejected; the gateway turns it into a 400/413 answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("sender must be \"customer\" or \"agent\"")]
    InvalidSender,
    #[error("content is required")]
    MissingContent,
    #[error("content must be a string")]
    ContentNotString,
    #[error("content must not be empty")]
    EmptyContent,
    #[error("content is {size} bytes; the limit is {limit}")]
    ContentTooLarge { size: usize, limit: usize },
    #[error("timestamp is required")]
    MissingTimestamp,
    #[error("timestamp must be an ISO 8601 date-time such as 2025-04-05T14:00:00Z")]
    InvalidTimestamp,
    #[error("username must be 3-32 characters of a-z, 0-9, '_', '.', '-'")]
    InvalidUsername,
    #[error("password must be at least 8 characters")]
    InvalidPassword,
}

impl ValidationError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidSender => "invalid_sender",
            Self::MissingContent | Self::ContentNotString | Self::EmptyContent => "invalid_content",
            Self::ContentTooLarge { .. } => "content_too_large",
            Self::MissingTimestamp | Self::InvalidTimestamp => "invalid_timestamp",
            Self::InvalidUsername => "invalid_username",
            Self::InvalidPassword => "invalid_password",
        }
    }
}

/// Parses an id from a URL path or frame; `None` for anything but a UUID.
pub fn parse_id(raw: &str) -> Option<Uuid> {
    Uuid::parse_str(raw).ok()
}

/// The seed's senders for open conversations.
pub fn validate_open_sender(sender: &str) -> Result<(), ValidationError> {
    match sender {
        SENDER_CUSTOMER | SENDER_AGENT => Ok(()),
        _ => Err(ValidationError::InvalidSender),
    }
}

/// Content: a non-blank string of at most `limit` bytes.
pub fn validate_content(content: &str, limit: usize) -> Result<(), ValidationError> {
    if content.trim().is_empty() {
        return Err(ValidationError::EmptyContent);
    }
    if content.len() > limit {
        return Err(ValidationError::ContentTooLarge {
            size: content.len(),
            limit,
        });
    }
    Ok(())
}

/// Accepts ISO 8601 extended date-times: `2025-04-05T14:00:00Z`, with an offset
/// (`+02:00`), with fractional seconds, or without a zone (`2025-04-05T14:00:00`).
pub fn validate_timestamp(ts: &str) -> Result<(), ValidationError> {
    if ts.len() > 64 {
        return Err(ValidationError::InvalidTimestamp);
    }
    if chrono::DateTime::parse_from_rfc3339(ts).is_ok() {
        return Ok(());
    }
    // RFC 3339 demands seconds and a zone; ISO 8601 also allows a local time and `+hhmm`.
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"] {
        if chrono::NaiveDateTime::parse_from_str(ts, fmt).is_ok() {
            return Ok(());
        }
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%dT%H:%M%z"] {
        if chrono::DateTime::parse_from_str(ts, fmt).is_ok() {
            return Ok(());
        }
    }
    Err(ValidationError::InvalidTimestamp)
}

/// The server's current time as an RFC 3339 UTC string with milliseconds.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Lower-cases and checks a username: 3–32 of `a-z 0-9 _ . -`.
pub fn normalize_username(raw: &str) -> Result<String, ValidationError> {
    let name = raw.trim().to_ascii_lowercase();
    let ok_len = (3..=32).contains(&name.len());
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'));
    if ok_len && ok_chars {
        Ok(name)
    } else {
        Err(ValidationError::InvalidUsername)
    }
}

pub fn is_reserved_username(name: &str) -> bool {
    RESERVED_USERNAMES.contains(&name)
}

pub fn validate_password(pw: &str) -> Result<(), ValidationError> {
    if pw.chars().count() >= 8 && pw.len() <= 1024 {
        Ok(())
    } else {
        Err(ValidationError::InvalidPassword)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn seed_timestamps_are_valid() {
        for ts in [
            "2025-04-05T14:00:00Z",
            "2025-04-05T14:01:00Z",
            "2025-04-05T14:00:00.123Z",
            "2025-04-05T14:00:00+02:00",
            "2025-04-05T14:00:00+0200",
            "2025-04-05T14:00:00",
            "2025-04-05T14:00",
        ] {
            assert_eq!(validate_timestamp(ts), Ok(()), "{ts}");
        }
    }

    #[test]
    fn bad_timestamps_are_rejected() {
        for ts in [
            "",
            "yesterday",
            "2025-13-05T14:00:00Z",
            "2025-04-05",
            "14:00",
            "2025-04-05T25:00:00Z",
        ] {
            assert_eq!(
                validate_timestamp(ts),
                Err(ValidationError::InvalidTimestamp),
                "{ts}"
            );
        }
    }

    #[test]
    fn senders() {
        assert!(validate_open_sender("customer").is_ok());
        assert!(validate_open_sender("agent").is_ok());
        assert!(validate_open_sender("Agent").is_err());
        assert!(validate_open_sender("assistant").is_err());
    }

    #[test]
    fn content_limits() {
        assert_eq!(
            validate_content("  ", 10),
            Err(ValidationError::EmptyContent)
        );
        assert!(validate_content("hello", 5).is_ok());
        assert!(matches!(
            validate_content("hello!", 5),
            Err(ValidationError::ContentTooLarge { size: 6, limit: 5 })
        ));
    }

    #[test]
    fn usernames() {
        assert_eq!(normalize_username("Alice"), Ok("alice".into()));
        assert!(normalize_username("al").is_err());
        assert!(normalize_username("a b c").is_err());
        assert!(normalize_username(&"x".repeat(33)).is_err());
        assert!(is_reserved_username("assistant"));
    }

    proptest! {
        #[test]
        fn any_utc_datetime_round_trips(secs in 0i64..4_000_000_000i64, millis in 0u32..1000) {
            let dt = chrono::DateTime::from_timestamp(secs, millis * 1_000_000).unwrap_or_default();
            let s = dt.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            prop_assert!(validate_timestamp(&s).is_ok());
        }

        #[test]
        fn timestamp_validation_never_panics(s in ".{0,80}") {
            let _ = validate_timestamp(&s);
        }

        #[test]
        fn valid_usernames_are_accepted(s in "[a-z0-9_.-]{3,32}") {
            prop_assert_eq!(normalize_username(&s), Ok(s.clone()));
        }

        #[test]
        fn usernames_with_other_chars_are_rejected(s in "[a-z]{2,10}[ /@#A-Z!]{1,3}[a-z]{0,10}") {
            // Upper case is folded, so only count it invalid when other bad chars remain.
            let folded = s.trim().to_ascii_lowercase();
            let bad = folded.bytes().any(|b| !(b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')));
            prop_assert_eq!(normalize_username(&s).is_err(), bad || !(3..=32).contains(&folded.len()));
        }

        #[test]
        fn content_within_limit_is_ok(s in "[a-zA-Z0-9 ]{0,50}[a-z]{1}") {
            prop_assert!(validate_content(&s, 1000).is_ok());
        }
    }
}
