//! Every Redis key, stream and channel name Confab uses, in one place.
//!
//! A conversation's keys share the hash tag `{<conversationId>}` so they live in one Redis
//! Cluster slot and one Lua script can touch all of them atomically:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `confab:conv:{id}` | hash | metadata: kind, title, assistant, owner, created/last activity, ttl, event and message counters |
//! | `confab:conv:{id}:order` | sorted set | message ids scored by send order (deletes keep the others' order) |
//! | `confab:conv:{id}:msgs` | hash | message id → message JSON |
//! | `confab:conv:{id}:events` | stream | the last `EVENT_HISTORY_LEN` events, entry id `<eventId>-0` |
//! | `confab:conv:{id}:applied` | hash | command id → reply, so a redelivered command is applied once (rotates to `…:applied-old` past 2000 entries) |
//! | `confab:conv:{id}:members` | set | usernames of a member chat |
//! | `confab:conv:{id}:answer` | hash | the assistant's answer in progress (text so far, response id) |
//!
//! Global keys: the command and completion streams, the dead-letter stream, the activity
//! index used by cleanup, users, sessions and per-user chat lists.

use uuid::Uuid;

/// Commands from gateways to persistence workers.
pub const COMMANDS_STREAM: &str = "confab:commands";
pub const PERSISTENCE_GROUP: &str = "persistence";
/// Completion jobs from persistence workers to completion workers.
pub const COMPLETIONS_STREAM: &str = "confab:completions";
pub const COMPLETION_GROUP: &str = "completion";
/// Entries that failed `MAX_DELIVERIES` times, with the reason.
pub const DEAD_LETTER_STREAM: &str = "confab:dead-letter";
/// Sorted set: conversation id → deadline (ms since epoch) for the cleanup workers.
pub const ACTIVITY_INDEX: &str = "confab:activity";
/// Pub/Sub channel on which completion workers hear "stop answering conversation X".
pub const CANCEL_CHANNEL: &str = "confab:cancel";
/// Sorted set of all usernames (score 0) for prefix search.
pub const USERNAMES: &str = "confab:usernames";

pub fn conv_meta(id: &Uuid) -> String {
    format!("confab:conv:{{{id}}}")
}
pub fn conv_order(id: &Uuid) -> String {
    format!("confab:conv:{{{id}}}:order")
}
pub fn conv_msgs(id: &Uuid) -> String {
    format!("confab:conv:{{{id}}}:msgs")
}
pub fn conv_events(id: &Uuid) -> String {
    format!("confab:conv:{{{id}}}:events")
}
pub fn conv_applied(id: &Uuid) -> String {
    format!("confab:conv:{{{id}}}:applied")
}
/// The previous generation of `applied` (the record rotates to stay bounded).
pub fn conv_applied_old(id: &Uuid) -> String {
    format!("confab:conv:{{{id}}}:applied-old")
}
pub fn conv_members(id: &Uuid) -> String {
    format!("confab:conv:{{{id}}}:members")
}
pub fn conv_answer(id: &Uuid) -> String {
    format!("confab:conv:{{{id}}}:answer")
}

/// All keys a conversation owns, in the order the Lua scripts expect them.
pub fn conv_keys(id: &Uuid) -> [String; 8] {
    [
        conv_meta(id),
        conv_order(id),
        conv_msgs(id),
        conv_events(id),
        conv_applied(id),
        conv_members(id),
        conv_answer(id),
        conv_applied_old(id),
    ]
}

/// Pub/Sub channel carrying a conversation's events (stored and live-only).
pub fn conv_channel(id: &Uuid) -> String {
    format!("confab:ev:{id}")
}
/// Pub/Sub channel for events addressed to one user (chat added, chat expired, sign-out).
pub fn user_channel(username: &str) -> String {
    format!("confab:uev:{username}")
}
/// Pub/Sub channel on which a gateway receives the replies to its commands.
pub fn reply_channel(gateway_id: &str) -> String {
    format!("confab:reply:{gateway_id}")
}

pub fn user(username: &str) -> String {
    format!("confab:user:{{{username}}}")
}
/// Sorted set: conversation id → last activity (ms) for a user's chat list.
pub fn user_convs(username: &str) -> String {
    format!("confab:user:{{{username}}}:convs")
}
pub fn session(token_hash: &str) -> String {
    format!("confab:session:{token_hash}")
}
/// Login failure counters for rate limiting.
pub fn login_failures(subject: &str) -> String {
    format!("confab:login-fail:{subject}")
}
