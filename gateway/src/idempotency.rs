//! Idempotency keys: a client's retry of a write is the same write again.
//!
//! A WebSocket `send`'s `clientId` and a REST write's `Idempotency-Key` header name the write.
//! The gateway derives the id of what the write creates from the key — a message id from
//! (conversation, author, key), a conversation id from (author, key) — and sends a fingerprint
//! of the request along. A retry therefore carries the same id, and the persistence worker
//! decides atomically with the write (apply.lua / send.lua, in the conversation's slot)
//! whether it is the first time (applied), a retry (the first result) or a reuse of the key
//! for a different request (`idempotency_key_reused`). No gateway-side check: two gateways
//! handling a retry at once cannot both win.
//!
//! The author is the signed-in user when there is a session, else "anonymous", so one user
//! can neither hit nor probe another's keys. Ids are SHA-256 based and look like random v4
//! UUIDs; a key cannot be recovered from them.

use sha2::{Digest, Sha256};
use uuid::Uuid;
use warp::http::header::{GetAll, HeaderValue};

use crate::rest::errors::ApiError;

/// The longest key accepted (characters; a REST key is ASCII, so also bytes).
pub const MAX_KEY_CHARS: usize = 128;

/// The REST header carrying the key.
pub const HEADER: &str = "idempotency-key";

/// Who a key belongs to.
fn scope(user: Option<&str>) -> String {
    match user {
        Some(u) => format!("u:{u}"),
        None => "a".to_string(),
    }
}

fn digest(parts: &[&str]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        // Length-prefixed, so no two lists of parts hash alike.
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().into()
}

fn uuid_of(d: [u8; 32]) -> Uuid {
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&d[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// The id of the message `key` names in `conversation` for `user` (`None`: anonymous).
pub fn message_id(conversation: &Uuid, user: Option<&str>, key: &str) -> Uuid {
    uuid_of(digest(&[
        "confab-idem-message-v1",
        &conversation.to_string(),
        &scope(user),
        key,
    ]))
}

/// The id of the conversation `key` names for `user` (`None`: anonymous).
pub fn conversation_id(user: Option<&str>, key: &str) -> Uuid {
    uuid_of(digest(&["confab-idem-conversation-v1", &scope(user), key]))
}

/// A request's fingerprint (32 hex digits): what a retry must repeat.
pub fn fingerprint(parts: &[&str]) -> String {
    let d = digest(parts);
    d[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The `Idempotency-Key` of a request: `None` without the header, the key when it is 1 to
/// [`MAX_KEY_CHARS`] visible ASCII characters (`!` to `~`), else 400 `invalid_idempotency_key`.
pub fn from_headers(values: GetAll<'_, HeaderValue>) -> Result<Option<String>, ApiError> {
    let mut values = values.iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(invalid("send one Idempotency-Key header, not several"));
    }
    parse_key(value.as_bytes()).map(Some)
}

/// Validates a REST key's bytes.
pub fn parse_key(raw: &[u8]) -> Result<String, ApiError> {
    if raw.is_empty() {
        return Err(invalid("Idempotency-Key must not be empty"));
    }
    if raw.len() > MAX_KEY_CHARS {
        return Err(invalid(&format!(
            "Idempotency-Key must be at most {MAX_KEY_CHARS} characters"
        )));
    }
    if !raw.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(invalid(
            "Idempotency-Key must be visible ASCII characters (! to ~), without spaces",
        ));
    }
    Ok(String::from_utf8_lossy(raw).into_owned())
}

fn invalid(message: &str) -> ApiError {
    ApiError::bad_request("invalid_idempotency_key", message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use warp::http::HeaderMap;

    fn parse(values: &[&[u8]]) -> Result<Option<String>, &'static str> {
        let mut h = HeaderMap::new();
        for v in values {
            if let Ok(v) = HeaderValue::from_bytes(v) {
                h.append(HEADER, v);
            }
        }
        from_headers(h.get_all(HEADER)).map_err(|e| e.code)
    }

    #[test]
    fn rest_keys_are_checked_for_length_and_charset() {
        assert_eq!(parse(&[]), Ok(None));
        assert_eq!(parse(&[b"abc-123_X:~!"]), Ok(Some("abc-123_X:~!".into())));
        let longest = "k".repeat(MAX_KEY_CHARS);
        assert_eq!(parse(&[longest.as_bytes()]), Ok(Some(longest.clone())));
        let over = "k".repeat(MAX_KEY_CHARS + 1);
        assert_eq!(parse(&[over.as_bytes()]), Err("invalid_idempotency_key"));
        assert_eq!(parse(&[b""]), Err("invalid_idempotency_key"));
        assert_eq!(parse(&[b"has space"]), Err("invalid_idempotency_key"));
        assert_eq!(parse(&[b"tab\there"]), Err("invalid_idempotency_key"));
        assert_eq!(parse(&[b"caf\xc3\xa9"]), Err("invalid_idempotency_key"));
        assert_eq!(parse(&[b"a", b"b"]), Err("invalid_idempotency_key"));
    }

    #[test]
    fn ids_depend_on_conversation_author_and_key_only() {
        let c1 = Uuid::new_v4();
        let c2 = Uuid::new_v4();
        let id = message_id(&c1, Some("alice"), "k1");
        assert_eq!(id, message_id(&c1, Some("alice"), "k1"));
        assert_eq!(id.get_version_num(), 4);
        assert_ne!(id, message_id(&c1, Some("bob"), "k1"));
        assert_ne!(id, message_id(&c1, None, "k1"));
        assert_ne!(id, message_id(&c2, Some("alice"), "k1"));
        assert_ne!(id, message_id(&c1, Some("alice"), "k2"));
        // A user named like the anonymous scope is still another scope.
        assert_ne!(message_id(&c1, Some("a"), "k"), message_id(&c1, None, "k"));
        let conv = conversation_id(Some("alice"), "k1");
        assert_eq!(conv, conversation_id(Some("alice"), "k1"));
        assert_ne!(conv, conversation_id(None, "k1"));
        assert_ne!(conv, id);
    }

    #[test]
    fn fingerprints_tell_requests_apart() {
        let f = fingerprint(&["agent", "hello", ""]);
        assert_eq!(f.len(), 32);
        assert_eq!(f, fingerprint(&["agent", "hello", ""]));
        assert_ne!(f, fingerprint(&["agent", "hello!", ""]));
        assert_ne!(f, fingerprint(&["customer", "hello", ""]));
        // Parts are length-prefixed: moving a boundary changes the fingerprint.
        assert_ne!(fingerprint(&["ab", "c"]), fingerprint(&["a", "bc"]));
    }
}
