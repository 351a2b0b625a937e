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
    /// In open conversations exactly as the client sent it (the server's RFC 3339 time when a
    /// WebSocket `send` gave none); in member chats always the server's time.
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
    #[error("content must not be empty or only whitespace and invisible characters")]
    EmptyContent,
    #[error(
        "content must not contain control characters (U+0000-U+001F) other than tab, line feed \
         and carriage return"
    )]
    ControlCharacter,
    #[error("content is {size} bytes; the limit is {limit}")]
    ContentTooLarge { size: usize, limit: usize },
    #[error("timestamp is required")]
    MissingTimestamp,
    #[error("timestamp must be an ISO 8601 date-time such as 2025-04-05T14:00:00Z")]
    InvalidTimestamp,
    #[error(
        "username must be 3-32 characters of a-z, 0-9, '_', '.', '-', starting with a letter or digit"
    )]
    InvalidUsername,
    #[error("password must be at least 8 characters")]
    PasswordTooShort,
    #[error("password must be at most {MAX_PASSWORD_BYTES} bytes")]
    PasswordTooLong,
}

/// The longest password accepted, in bytes (UTF-8).
pub const MAX_PASSWORD_BYTES: usize = 1024;

impl ValidationError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidSender => "invalid_sender",
            Self::MissingContent
            | Self::ContentNotString
            | Self::EmptyContent
            | Self::ControlCharacter => "invalid_content",
            Self::ContentTooLarge { .. } => "content_too_large",
            Self::MissingTimestamp | Self::InvalidTimestamp => "invalid_timestamp",
            Self::InvalidUsername => "invalid_username",
            Self::PasswordTooShort | Self::PasswordTooLong => "invalid_password",
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

/// Characters that show nothing on their own: whitespace, control characters, and the
/// zero-width, joiner, bidi-control, filler, variation-selector and tag characters.
pub fn is_invisible(c: char) -> bool {
    c.is_whitespace()
        || c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{17B4}'
                | '\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{2800}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF0}'..='\u{FFFB}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E0FFF}'
        )
}

/// The C0 control characters a message may not hold: all of U+0000–U+001F but tab, line
/// feed and carriage return. JSON escapes each as `\u00XX`, six stored bytes for one byte of
/// content; refusing them keeps what a message stores within twice its size (a `"` or `\`
/// still takes two).
pub fn is_refused_control(c: char) -> bool {
    c < '\u{20}' && !matches!(c, '\t' | '\n' | '\r')
}

/// Content: a string of at most `limit` bytes with at least one visible character and no
/// [refused control character](is_refused_control).
pub fn validate_content(content: &str, limit: usize) -> Result<(), ValidationError> {
    if content.len() <= limit && content.chars().all(is_invisible) {
        return Err(ValidationError::EmptyContent);
    }
    if content.len() > limit {
        return Err(ValidationError::ContentTooLarge {
            size: content.len(),
            limit,
        });
    }
    if content.chars().any(is_refused_control) {
        return Err(ValidationError::ControlCharacter);
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

/// Lower-cases and checks a username: 3–32 of `a-z 0-9 _ . -`, the first a letter or digit
/// (so no `...`, and nothing that reads as a command-line option such as `-rf`).
pub fn normalize_username(raw: &str) -> Result<String, ValidationError> {
    let raw = raw.trim();
    // Checked before copying: a sign-in may carry a username of any size.
    if !(3..=32).contains(&raw.len()) {
        return Err(ValidationError::InvalidUsername);
    }
    let name = raw.to_ascii_lowercase();
    let ok_first = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'));
    if ok_first && ok_chars {
        Ok(name)
    } else {
        Err(ValidationError::InvalidUsername)
    }
}

pub fn is_reserved_username(name: &str) -> bool {
    RESERVED_USERNAMES.contains(&name)
}

/// At least 8 characters and at most [`MAX_PASSWORD_BYTES`] bytes.
pub fn validate_password(pw: &str) -> Result<(), ValidationError> {
    if pw.len() > MAX_PASSWORD_BYTES {
        Err(ValidationError::PasswordTooLong)
    } else if pw.chars().count() < 8 {
        Err(ValidationError::PasswordTooShort)
    } else {
        Ok(())
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
    fn invisible_only_content_is_empty() {
        for content in [
            "",
            " \t\n",
            "\u{200B}",
            "\u{200B}\u{200C}\u{200D}\u{2060}\u{FEFF}",
            "\u{00A0}\u{3000}\u{2800}",
            "\u{0001}\u{0001}",
            "\u{202E}\u{2066}\u{FE0F}\u{E0041}\u{3164}",
        ] {
            assert_eq!(
                validate_content(content, 100),
                Err(ValidationError::EmptyContent),
                "{content:?}"
            );
        }
        for content in ["a", "\u{200B}a\u{200B}", "👍", "\u{00E9}", "·"] {
            assert_eq!(validate_content(content, 100), Ok(()), "{content:?}");
        }
        // An oversized invisible body is still reported as too large (413).
        assert!(matches!(
            validate_content(&"\u{200B}".repeat(10), 5),
            Err(ValidationError::ContentTooLarge { .. })
        ));
    }

    /// Each would be stored as `\u00XX`, six bytes for one (issue 10 item 4).
    #[test]
    fn c0_control_characters_but_tab_and_line_breaks_are_refused() {
        for content in [
            "a\u{0001}",
            "\u{0000}x",
            "x\u{001B}[31m",
            "\u{007}bell",
            "a\u{1F}",
        ] {
            let err = validate_content(content, 100);
            assert_eq!(err, Err(ValidationError::ControlCharacter), "{content:?}");
            assert_eq!(ValidationError::ControlCharacter.code(), "invalid_content");
        }
        for content in [
            "a\tb",
            "line\nline",
            "crlf\r\n",
            "\u{7F}a",
            "\u{85}a",
            "a\"b\\",
        ] {
            assert_eq!(validate_content(content, 100), Ok(()), "{content:?}");
        }
        // Too large is still reported first (413), whatever the content holds.
        assert!(matches!(
            validate_content(&"\u{0001}a".repeat(10), 5),
            Err(ValidationError::ContentTooLarge { .. })
        ));
    }

    #[test]
    fn usernames_start_with_a_letter_or_digit() {
        for bad in ["...", "-rf", "_ab", ".abc", "--help"] {
            assert_eq!(
                normalize_username(bad),
                Err(ValidationError::InvalidUsername),
                "{bad}"
            );
        }
        for good in ["a..", "7up", "al-ice", "bob_", "x.y"] {
            assert_eq!(normalize_username(good), Ok(good.to_string()), "{good}");
        }
        assert_eq!(
            normalize_username(&"a".repeat(100_000)),
            Err(ValidationError::InvalidUsername)
        );
    }

    #[test]
    fn password_limits_have_their_own_messages() {
        assert_eq!(validate_password("12345678"), Ok(()));
        assert_eq!(validate_password(&"p".repeat(MAX_PASSWORD_BYTES)), Ok(()));
        let short = validate_password("1234567").err();
        assert_eq!(short, Some(ValidationError::PasswordTooShort));
        let long = validate_password(&"p".repeat(MAX_PASSWORD_BYTES + 1)).err();
        assert_eq!(long, Some(ValidationError::PasswordTooLong));
        let msg = long.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("at most 1024 bytes"), "{msg}");
        assert_eq!(
            ValidationError::PasswordTooLong.code(),
            ValidationError::PasswordTooShort.code()
        );
        // Multi-byte: 300 × 4 bytes = 1200 bytes although only 300 characters.
        assert_eq!(
            validate_password(&"😀".repeat(300)),
            Err(ValidationError::PasswordTooLong)
        );
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
        fn valid_usernames_are_accepted(s in "[a-z0-9][a-z0-9_.-]{2,31}") {
            prop_assert_eq!(normalize_username(&s), Ok(s.clone()));
        }

        #[test]
        fn usernames_with_other_chars_are_rejected(s in "[a-z]{2,10}[ /@#A-Z!]{1,3}[a-z]{0,10}") {
            // Upper case is folded, so only count it invalid when other bad chars remain.
            let folded = s.trim().to_ascii_lowercase();
            let bad = folded.bytes().any(|b| !(b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')))
                || !folded.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            prop_assert_eq!(normalize_username(&s).is_err(), bad || !(3..=32).contains(&folded.len()));
        }

        #[test]
        fn content_within_limit_is_ok(s in "[a-zA-Z0-9 ]{0,50}[a-z]{1}") {
            prop_assert!(validate_content(&s, 1000).is_ok());
        }
    }
}
