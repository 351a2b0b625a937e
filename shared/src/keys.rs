//! Every Redis key, stream and channel name Confab uses, in one place.
//!
//! ## A conversation
//! A conversation's keys share the hash tag `{<conversationId>}`, so they live in one Redis
//! Cluster slot and one Lua script can touch all of them atomically:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `confab:conv:{id}` | hash | metadata: kind, title, assistant, owner, times, ttl, counters, the apply cursor and fence |
//! | `confab:conv:{id}:order` | sorted set | message ids scored by send order (deletes keep the others' order) |
//! | `confab:conv:{id}:msgs` | hash | message id → message JSON: the one copy of each message |
//! | `confab:conv:{id}:events` | stream | the last `EVENT_HISTORY_LEN` events, entry id `<eventId>-1`; a message event holds only its message id |
//! | `confab:conv:{id}:members` | set | usernames of a member chat |
//! | `confab:conv:{id}:answer` | hash | the assistant's answer in progress (lease, text so far, response id) |
//! | `confab:conv:{id}:failed` | hash | stream entry → error of commands that were refused, so a redelivery answers the same (bounded) |
//!
//! ## A partition
//! Partition `p`'s keys share the tag of [`crate::partition::Partitions::tag`], chosen so the
//! partitions spread evenly over a cluster's primaries ([`PartitionKeys`]): its command
//! stream, its ownership lease (with the committed offset), its completion jobs, its slice
//! of the cleanup index and its dead letters. No pipeline key is global.
//!
//! ## Channels
//! Conversation events `confab:ev:{id}` (the conversation's slot), user notices
//! `confab:uev:{user}`, a gateway's replies `confab:reply:{gateway}`, and "stop answering"
//! requests `confab:cancel:{id}`. In cluster mode they are sharded channels (`SPUBLISH`).

use uuid::Uuid;

use crate::partition::Partitions;

/// Consumer group of the completion workers on every partition's job stream.
pub const COMPLETION_GROUP: &str = "completion";
/// Sorted set of all usernames (score 0) for prefix search.
pub const USERNAMES: &str = "confab:usernames";
/// Sorted set: live persistence replicas → heartbeat deadline (ms). Coordination only: each
/// replica writes it once per rebalance tick; no command passes through it.
pub const PERSISTENCE_MEMBERS: &str = "confab:members:{persistence}";

/// The keys of one partition, all in one slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionKeys {
    pub index: u32,
    pub tag: String,
    /// Commands from gateways (and assistant replies) to the partition's owner.
    pub commands: String,
    /// Hash: owner, epoch, lease deadline, committed offset.
    pub lease: String,
    /// Completion jobs for the completion workers' group.
    pub jobs: String,
    /// Sorted set: conversation id → deadline (ms) for the cleanup workers.
    pub activity: String,
    /// Entries that could not be applied, with the reason.
    pub dead_letters: String,
}

impl PartitionKeys {
    pub fn new(parts: &Partitions, index: u32) -> Self {
        let tag = parts.tag(index).to_string();
        Self {
            index,
            commands: format!("confab:cmd:{{{tag}}}"),
            lease: format!("confab:part:{{{tag}}}"),
            jobs: format!("confab:jobs:{{{tag}}}"),
            activity: format!("confab:activity:{{{tag}}}"),
            dead_letters: format!("confab:dead:{{{tag}}}"),
            tag,
        }
    }

    /// Every partition's keys.
    pub fn all(parts: &Partitions) -> Vec<PartitionKeys> {
        parts.all().map(|p| Self::new(parts, p)).collect()
    }
}

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
pub fn conv_members(id: &Uuid) -> String {
    format!("confab:conv:{{{id}}}:members")
}
pub fn conv_answer(id: &Uuid) -> String {
    format!("confab:conv:{{{id}}}:answer")
}
pub fn conv_failed(id: &Uuid) -> String {
    format!("confab:conv:{{{id}}}:failed")
}
/// Idempotency records: message id (derived from the client's key) → content fingerprint.
pub fn conv_idem(id: &Uuid) -> String {
    format!("confab:conv:{{{id}}}:idem")
}
/// The same records by age (score: when the first command was accepted, ms), for trimming.
pub fn conv_idem_at(id: &Uuid) -> String {
    format!("confab:conv:{{{id}}}:idemat")
}

/// All keys a conversation owns, in the order the Lua scripts expect them.
pub fn conv_keys(id: &Uuid) -> [String; 9] {
    [
        conv_meta(id),
        conv_order(id),
        conv_msgs(id),
        conv_events(id),
        conv_members(id),
        conv_answer(id),
        conv_failed(id),
        conv_idem(id),
        conv_idem_at(id),
    ]
}

/// Channel carrying a conversation's events (stored and live-only); in its slot.
pub fn conv_channel(id: &Uuid) -> String {
    format!("confab:ev:{{{id}}}")
}
/// Channel on which the completion worker answering a conversation hears "stop".
pub fn cancel_channel(id: &Uuid) -> String {
    format!("confab:cancel:{{{id}}}")
}
/// Channel for events addressed to one user (chat added, chat expired, sign-out).
pub fn user_channel(username: &str) -> String {
    format!("confab:uev:{{{username}}}")
}
/// Channel on which a gateway receives the replies to its commands.
pub fn reply_channel(gateway_id: &str) -> String {
    format!("confab:reply:{{{gateway_id}}}")
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
/// Failed sign-in counter of a hashed subject (an address, or an address and username).
pub fn login_failures(subject: &str) -> String {
    format!("confab:login-fail:{subject}")
}
/// Sign-up counter of a hashed client address (one fixed window).
pub fn signup_rate(subject: &str) -> String {
    format!("confab:signup-rate:{subject}")
}
/// Counter of messages into open conversations with the assistant, per hashed address.
pub fn assistant_open_rate(subject: &str) -> String {
    format!("confab:assist-rate:{subject}")
}
/// Counter of writes without a session in the current second, per hashed address.
pub fn anon_write_rate(subject: &str) -> String {
    format!("confab:anon-rate:{subject}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::key_slot;

    #[test]
    fn a_conversations_keys_and_channels_share_one_slot() {
        let id = Uuid::new_v4();
        let slot = key_slot(&conv_meta(&id));
        for k in conv_keys(&id) {
            assert_eq!(key_slot(&k), slot, "{k}");
        }
        assert_eq!(key_slot(&conv_channel(&id)), slot);
        assert_eq!(key_slot(&cancel_channel(&id)), slot);
        assert_eq!(key_slot(&user_convs("alice")), key_slot(&user("alice")));
    }

    #[test]
    fn a_partitions_keys_share_one_slot() {
        let parts = Partitions::new(16);
        for pk in PartitionKeys::all(&parts) {
            let slot = key_slot(&pk.commands);
            for k in [&pk.lease, &pk.jobs, &pk.activity, &pk.dead_letters] {
                assert_eq!(key_slot(k), slot, "{k}");
            }
        }
    }
}
