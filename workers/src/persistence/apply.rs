//! One command, one call of `lua/apply.lua`: the typed request that goes in, the typed reply
//! that comes out, and what that reply means — for the waiting client ([`Applied::reply`])
//! and for the side effects that follow ([`Applied::effects`]).

use confab_shared::commands::{Command, CommandEnvelope, Reply};
use confab_shared::domain::SENDER_ASSISTANT;
use confab_shared::events::Event;
use confab_shared::keys;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use uuid::Uuid;

/// Keys outlive the inactivity deadline by this much, so cleanup workers (which publish
/// `conversation_expired`) get there first, and data still goes if none runs.
pub const KEY_GRACE_MS: u64 = 3000;

/// The limits and fencing token every request carries.
pub struct Context<'a> {
    pub part: &'a str,
    pub epoch: u64,
    pub publish: &'static str,
    pub history: u64,
    pub max_messages: u64,
    /// `MAX_CONVERSATION_BYTES`: the most stored message JSON one conversation holds (0 = no
    /// limit).
    pub max_bytes: u64,
    pub open_ttl_ms: u64,
    pub member_ttl_ms: u64,
    /// How long idempotency records are kept (ms) and how many per conversation (0 = off).
    pub idem_window_ms: u64,
    pub idem_max: u64,
}

/// `ARGV[1]` of apply.lua: one MessagePack map with the same fields for every op
/// ([`ApplyRequest::FIELDS`], read by name in the script's first lines). Numbers the script
/// stores go as decimal strings (a Lua number passed to Redis is formatted with printf);
/// absent values are empty strings.
#[derive(Debug)]
pub struct ApplyRequest<'a> {
    /// The command's stream entry (`ms-seq`): commands apply in entry order, each once; `ms`
    /// is the command's time, when Redis accepted it.
    pub ms: &'a str,
    pub seq: &'a str,
    /// The entry of the previous command of the same conversation in this batch.
    pub after_ms: Option<&'a str>,
    pub after_seq: Option<&'a str>,
    pub part: &'a str,
    pub epoch: String,
    pub publish: &'static str,
    pub channel: String,
    pub history: u64,
    pub grace_ms: u64,
    pub event_head: String,
    pub event_tail: String,
    /// The metadata line published before each event (publish time and trace id; gateways
    /// strip it — see `confab_shared::trace`).
    pub prefix: String,
    pub op: Op<'a>,
}

#[derive(Debug)]
pub enum Op<'a> {
    Create {
        owner: &'a str,
        title: &'a str,
        assistant: bool,
        ttl_ms: u64,
        members: &'a [String],
        /// The request's fingerprint when the id derives from the client's key ('' = none).
        fingerprint: &'a str,
    },
    Send {
        actor: &'a str,
        message_id: String,
        message: String,
        human: bool,
        max_messages: u64,
        max_bytes: u64,
        answers_up_to: Option<u64>,
        done_event: Option<&'a str>,
        /// The message's fingerprint when its id derives from the client's key ('' = none).
        fingerprint: &'a str,
        idem_window_ms: u64,
        idem_max: u64,
    },
    Delete {
        actor: &'a str,
        message_id: String,
    },
    AddMember {
        actor: &'a str,
        username: &'a str,
    },
}

impl ApplyRequest<'_> {
    /// The request's fields, as the script names them; `members` (a list) follows.
    pub const FIELDS: [&'static str; 30] = [
        "op",
        "prefix",
        "ms",
        "seq",
        "after_ms",
        "after_seq",
        "part",
        "epoch",
        "publish",
        "channel",
        "history",
        "grace_ms",
        "event_head",
        "event_tail",
        "actor",
        "message_id",
        "message",
        "human",
        "max_messages",
        "max_bytes",
        "answers_up_to",
        "done_event",
        "owner",
        "title",
        "assistant_arg",
        "ttl_ms",
        "username",
        "fingerprint",
        "idem_window",
        "idem_max",
    ];

    /// The request as apply.lua's one argument; empty fields are left out (the script reads
    /// them as '').
    pub fn encode(&self) -> Vec<u8> {
        let mut map: std::collections::BTreeMap<&str, serde_json::Value> =
            std::collections::BTreeMap::new();
        let mut set = |name: &'static str, value: String| {
            debug_assert!(Self::FIELDS.contains(&name), "{name}");
            if !value.is_empty() {
                map.insert(name, value.into());
            }
        };
        set("ms", self.ms.into());
        set("seq", self.seq.into());
        set("after_ms", self.after_ms.unwrap_or_default().into());
        set("after_seq", self.after_seq.unwrap_or_default().into());
        set("part", self.part.into());
        set("epoch", self.epoch.clone());
        set("publish", self.publish.into());
        set("channel", self.channel.clone());
        set("history", self.history.to_string());
        set("grace_ms", self.grace_ms.to_string());
        set("event_head", self.event_head.clone());
        set("event_tail", self.event_tail.clone());
        set("prefix", self.prefix.clone());
        let mut members: Vec<String> = Vec::new();
        match &self.op {
            Op::Create {
                owner,
                title,
                assistant,
                ttl_ms,
                members: m,
                fingerprint,
            } => {
                set("fingerprint", (*fingerprint).into());
                set("op", "create".into());
                set("owner", (*owner).into());
                set("title", (*title).into());
                set("assistant_arg", if *assistant { "1" } else { "" }.into());
                set("ttl_ms", ttl_ms.to_string());
                members = m.to_vec();
            }
            Op::Send {
                actor,
                message_id,
                message,
                human,
                max_messages,
                max_bytes,
                answers_up_to,
                done_event,
                fingerprint,
                idem_window_ms,
                idem_max,
            } => {
                set("op", "send".into());
                set("fingerprint", (*fingerprint).into());
                set("idem_window", idem_window_ms.to_string());
                set("idem_max", idem_max.to_string());
                set("actor", (*actor).into());
                set("message_id", message_id.clone());
                set("message", message.clone());
                set("human", if *human { "1" } else { "" }.into());
                set("max_messages", max_messages.to_string());
                set("max_bytes", max_bytes.to_string());
                set(
                    "answers_up_to",
                    answers_up_to.map(|n| n.to_string()).unwrap_or_default(),
                );
                set("done_event", done_event.unwrap_or_default().into());
            }
            Op::Delete { actor, message_id } => {
                set("op", "delete".into());
                set("actor", (*actor).into());
                set("message_id", message_id.clone());
            }
            Op::AddMember { actor, username } => {
                set("op", "add_member".into());
                set("actor", (*actor).into());
                set("username", (*username).into());
            }
        }
        if !members.is_empty() {
            map.insert("members", members.into());
        }
        confab_shared::scripting::encode_request(&map)
    }
}

/// The request of send.lua, the hot path for a plain new message: positional ARGV in
/// [`SendRequest::ARGV`] order (the script names them in its first line).
#[derive(Debug)]
pub struct SendRequest {
    argv: Vec<String>,
}

impl SendRequest {
    pub const ARGV: [&'static str; 20] = [
        "ms",
        "seq",
        "after_ms",
        "after_seq",
        "part",
        "epoch",
        "publish",
        "channel",
        "grace_ms",
        "event_head",
        "event_tail",
        "actor",
        "message_id",
        "message",
        "human",
        "max_messages",
        "max_bytes",
        "fingerprint",
        "idem_window",
        "idem_max",
    ];

    /// send.lua's request for a plain send (not an assistant reply, which goes to apply.lua).
    pub fn for_command(req: &ApplyRequest<'_>) -> Option<SendRequest> {
        let Op::Send {
            actor,
            message_id,
            message,
            human,
            max_messages,
            max_bytes,
            answers_up_to: None,
            done_event: None,
            fingerprint,
            idem_window_ms,
            idem_max,
        } = &req.op
        else {
            return None;
        };
        let argv = vec![
            req.ms.to_string(),
            req.seq.to_string(),
            req.after_ms.unwrap_or_default().to_string(),
            req.after_seq.unwrap_or_default().to_string(),
            req.part.to_string(),
            req.epoch.clone(),
            req.publish.to_string(),
            req.channel.clone(),
            req.grace_ms.to_string(),
            // send.lua publishes the head and never stores it: the metadata line goes first.
            format!("{}{}", req.prefix, req.event_head),
            req.event_tail.clone(),
            actor.to_string(),
            message_id.clone(),
            message.clone(),
            if *human { "1" } else { "" }.to_string(),
            max_messages.to_string(),
            max_bytes.to_string(),
            fingerprint.to_string(),
            idem_window_ms.to_string(),
            idem_max.to_string(),
        ];
        Some(SendRequest { argv })
    }

    pub fn argv(&self) -> &[String] {
        &self.argv
    }

    /// The keys send.lua takes: meta, order, msgs, members, events, failed, idem, idemat.
    pub fn keys(id: &Uuid) -> [String; 8] {
        [
            keys::conv_meta(id),
            keys::conv_order(id),
            keys::conv_msgs(id),
            keys::conv_members(id),
            keys::conv_events(id),
            keys::conv_failed(id),
            keys::conv_idem(id),
            keys::conv_idem_at(id),
        ]
    }

    /// send.lua's flat reply: `None` when it declined (apply.lua decides then).
    pub fn reply(v: &redis::Value) -> redis::RedisResult<Option<ApplyReply>> {
        let n: Vec<u64> = redis::from_redis_value_ref(v)?;
        Ok(match n.as_slice() {
            [1, event_id, deadline, assistant, hseq] => Some(ApplyReply {
                outcome: Outcome::Applied,
                event_id: *event_id,
                deadline: *deadline,
                assistant: *assistant == 1,
                hseq: *hseq,
                members: Vec::new(),
                failed: None,
            }),
            _ => None,
        })
    }
}

/// What apply.lua decided.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Applied,
    /// Applied before (a redelivery): nothing written; the side effects are redone.
    Duplicate,
    NotFound,
    MessageNotFound,
    Forbidden,
    Full,
    /// The message would take the conversation past `MAX_CONVERSATION_BYTES`.
    FullBytes,
    Exists,
    /// The client's idempotency key was used before for another request.
    KeyReused,
    /// Another replica owns the partition now and has written here: stop.
    Fenced,
    /// The command before it in the batch did not apply: retry both, in order.
    OutOfOrder,
}

/// The reply of apply.lua.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ApplyReply {
    pub outcome: Outcome,
    #[serde(default)]
    pub event_id: u64,
    #[serde(default)]
    pub deadline: u64,
    #[serde(default)]
    pub assistant: bool,
    /// The newest human message's eventId (what a completion job answers up to).
    #[serde(default)]
    pub hseq: u64,
    #[serde(default)]
    pub members: Vec<String>,
    /// For a duplicate: the refusal the first delivery answered, if it was refused.
    #[serde(default)]
    pub failed: Option<Outcome>,
}

/// Builds apply.lua's request for `env`, stored at stream entry `entry`.
pub fn request<'a>(
    ctx: &Context<'a>,
    entry: &'a str,
    after: Option<&'a str>,
    env: &'a CommandEnvelope,
) -> ApplyRequest<'a> {
    let cid = env.command.conversation_id();
    let (op, event) = match &env.command {
        Command::CreateConversation {
            owner,
            members,
            title,
            assistant,
            fingerprint,
            ..
        } => (
            Op::Create {
                owner: owner.as_deref().unwrap_or(""),
                title: title.as_deref().unwrap_or(""),
                assistant: *assistant,
                ttl_ms: if owner.is_some() {
                    ctx.member_ttl_ms
                } else {
                    ctx.open_ttl_ms
                },
                members,
                fingerprint: fingerprint.as_deref().unwrap_or(""),
            },
            None,
        ),
        Command::SendMessage {
            message,
            actor,
            assistant_reply,
            fingerprint,
            ..
        } => {
            // The message ends its event; the script appends it to the tail (`0}` here).
            let event = RawValue::from_string("0".into())
                .ok()
                .map(|message| Event::Message {
                    conversation_id: cid,
                    event_id: 0,
                    message,
                });
            (
                Op::Send {
                    actor: actor.as_deref().unwrap_or(""),
                    message_id: message.message_id.to_string(),
                    message: serde_json::to_string(message).unwrap_or_default(),
                    human: message.sender != SENDER_ASSISTANT,
                    max_messages: ctx.max_messages,
                    max_bytes: ctx.max_bytes,
                    answers_up_to: assistant_reply.as_ref().map(|r| r.answers_up_to),
                    done_event: assistant_reply.as_ref().map(|r| r.done_event.as_str()),
                    fingerprint: fingerprint.as_deref().unwrap_or(""),
                    idem_window_ms: ctx.idem_window_ms,
                    idem_max: ctx.idem_max,
                },
                event,
            )
        }
        Command::DeleteMessage {
            message_id, actor, ..
        } => (
            Op::Delete {
                actor: actor.as_deref().unwrap_or(""),
                message_id: message_id.to_string(),
            },
            Some(Event::MessageDeleted {
                conversation_id: cid,
                event_id: 0,
                message_id: *message_id,
            }),
        ),
        Command::AddMember {
            username, actor, ..
        } => (
            Op::AddMember { actor, username },
            Some(Event::MemberJoined {
                conversation_id: cid,
                event_id: 0,
                username: username.clone(),
            }),
        ),
    };
    let (event_head, mut event_tail) = event.map(|e| e.template()).unwrap_or_default();
    if matches!(env.command, Command::SendMessage { .. }) {
        event_tail.truncate(event_tail.len().saturating_sub("0}".len()));
    }
    let (ms, seq) = entry.split_once('-').unwrap_or((entry, "0"));
    let after = after.and_then(|a| a.split_once('-'));
    ApplyRequest {
        ms,
        seq,
        after_ms: after.map(|a| a.0),
        after_seq: after.map(|a| a.1),
        part: ctx.part,
        epoch: ctx.epoch.to_string(),
        publish: ctx.publish,
        channel: keys::conv_channel(&cid),
        history: ctx.history,
        grace_ms: KEY_GRACE_MS,
        event_head,
        event_tail,
        prefix: confab_shared::trace::publish_prefix(
            confab_shared::db::now_ms(),
            env.trace.as_deref(),
        ),
        op,
    }
}

/// A command together with what apply.lua answered for it.
pub struct Applied<'a> {
    pub env: &'a CommandEnvelope,
    pub reply: &'a ApplyReply,
}

/// What follows an applied command; everything here is idempotent.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Conversation id and deadline for the cleanup index (creation only: activity moves the
    /// deadline stored with the conversation, and cleanup re-indexes from it).
    pub index: Option<(Uuid, u64)>,
    /// Users who now have this chat: their chat list and a `conversation_added` notice.
    pub added: Vec<String>,
    /// A completion job answering up to this eventId.
    pub job: Option<u64>,
}

impl Applied<'_> {
    /// The refusal, if the command was refused (now or on its first delivery).
    fn refusal(&self) -> Option<Outcome> {
        match self.reply.outcome {
            Outcome::Applied => None,
            Outcome::Duplicate => self.reply.failed,
            other => Some(other),
        }
    }

    /// The answer for the client that sent the command: exactly the REST status and body.
    pub fn reply(&self, max_messages: u64, max_bytes: u64) -> Reply {
        let id = self.env.id;
        let cid = self.env.command.conversation_id();
        let error = |status, code: &str, message: &str| Reply::error(id, status, code, message);
        match self.refusal() {
            Some(Outcome::NotFound) => error(404, "not_found", "Conversation not found"),
            Some(Outcome::MessageNotFound) => error(404, "not_found", "Message not found"),
            Some(Outcome::Forbidden) => {
                error(403, "forbidden", "Only the author can delete a message")
            }
            Some(Outcome::Full) => error(
                409,
                "conversation_full",
                &format!("This conversation already holds the maximum of {max_messages} messages"),
            ),
            Some(Outcome::FullBytes) => error(
                409,
                "conversation_full",
                &format!(
                    "This conversation is full: its messages may take at most {max_bytes} bytes                      (MAX_CONVERSATION_BYTES)"
                ),
            ),
            Some(Outcome::Exists) => error(409, "conflict", "Conversation already exists"),
            Some(Outcome::KeyReused) => error(
                422,
                "idempotency_key_reused",
                "This idempotency key was already used for a different request",
            ),
            Some(Outcome::Fenced | Outcome::OutOfOrder) => error(
                503,
                "unavailable",
                "The command could not be applied; try again",
            ),
            Some(Outcome::Applied | Outcome::Duplicate) | None => {
                let (status, body) = match &self.env.command {
                    Command::CreateConversation { .. } => (201, json!({ "conversationId": cid })),
                    Command::SendMessage { message, .. } => (
                        201,
                        json!({"message": "Message added successfully", "messageId": message.message_id}),
                    ),
                    Command::DeleteMessage { .. } => {
                        (200, json!({"message": "Message deleted successfully"}))
                    }
                    Command::AddMember { .. } => (
                        200,
                        json!({"conversationId": cid, "members": self.reply.members}),
                    ),
                };
                Reply { id, status, body }
            }
        }
    }

    /// The side effects of the command; none for a refused one.
    pub fn effects(&self) -> Effects {
        let mut out = Effects::default();
        if self.refusal().is_some() {
            return out;
        }
        let cid = self.env.command.conversation_id();
        let dup = self.reply.outcome == Outcome::Duplicate;
        match &self.env.command {
            Command::CreateConversation { owner, .. } => {
                out.index = Some((cid, self.reply.deadline));
                if owner.is_some() {
                    out.added = self.reply.members.clone();
                }
            }
            Command::AddMember { username, .. } if dup || self.reply.event_id > 0 => {
                out.added = vec![username.clone()];
            }
            Command::SendMessage { message, .. }
                if self.reply.assistant && message.sender != SENDER_ASSISTANT =>
            {
                let up_to = if dup {
                    self.reply.hseq
                } else {
                    self.reply.event_id
                };
                if up_to > 0 {
                    out.job = Some(up_to);
                }
            }
            _ => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab_shared::domain::Message;

    fn ctx() -> Context<'static> {
        Context {
            part: "p0-1",
            epoch: 3,
            publish: "PUBLISH",
            history: 2000,
            max_messages: 10,
            max_bytes: 0,
            open_ttl_ms: 1_800_000,
            member_ttl_ms: 7_000_000,
            idem_window_ms: 86_400_000,
            idem_max: 1000,
        }
    }

    fn send(sender: &str) -> CommandEnvelope {
        CommandEnvelope {
            id: Uuid::new_v4(),
            trace: None,
            reply_to: Some("gw".into()),
            command: Command::SendMessage {
                conversation_id: Uuid::new_v4(),
                message: Message {
                    message_id: Uuid::new_v4(),
                    sender: sender.into(),
                    content: "hi \"there\"".into(),
                    timestamp: "2025-04-05T14:00:00Z".into(),
                    stopped: false,
                },
                actor: None,
                assistant_reply: None,
                fingerprint: None,
            },
        }
    }

    fn reply(outcome: Outcome) -> ApplyReply {
        ApplyReply {
            outcome,
            event_id: 0,
            deadline: 0,
            assistant: false,
            hseq: 0,
            members: Vec::new(),
            failed: None,
        }
    }

    #[test]
    fn a_send_request_carries_the_event_template_and_the_message_once() {
        let env = send("agent");
        let req = request(&ctx(), "5-0", Some("4-0"), &env);
        assert!(req.event_head.ends_with("\"eventId\":"));
        let Op::Send { message, .. } = &req.op else {
            panic!("not a send");
        };
        // What the script publishes: head, eventId, tail, the message, '}'.
        assert_eq!(req.event_tail, ",\"message\":");
        let full = format!("{}7{}{message}}}", req.event_head, req.event_tail);
        let v: serde_json::Value = serde_json::from_str(&full).unwrap_or_default();
        assert_eq!(v["type"], "message");
        assert_eq!(v["eventId"], 7);
        assert_eq!(v["message"]["content"], "hi \"there\"");
        let Op::Send { human, .. } = &req.op else {
            panic!("not a send");
        };
        assert!(human);
        assert!(message.starts_with("{\"messageId\":\""), "{message}");
        let packed: std::collections::BTreeMap<String, serde_json::Value> =
            confab_shared::scripting::decode_reply(&redis::Value::BulkString(req.encode()))
                .unwrap_or_default();
        assert_eq!(packed["op"], "send");
        assert_eq!(packed["after_ms"], "4");
        assert!(!packed.contains_key("owner"), "empty fields are left out");
    }

    /// send.lua names its ARGV in its first line: exactly these, in this order.
    #[test]
    fn send_lua_reads_argv_in_the_order_rust_writes_it() {
        let lua = include_str!("../lua/send.lua");
        let start = lua
            .find("local ms,")
            .unwrap_or_else(|| panic!("no unpack line"));
        let end = lua[start..]
            .find(" = unpack(ARGV")
            .unwrap_or_else(|| panic!("no unpack"));
        let names: Vec<&str> = lua[start + "local ".len()..start + end]
            .split(',')
            .map(str::trim)
            .collect();
        assert_eq!(names, SendRequest::ARGV);
        let env = send("agent");
        let req = request(&ctx(), "5-0", Some("4-0"), &env);
        let fast = SendRequest::for_command(&req).unwrap_or_else(|| panic!("a plain send"));
        assert_eq!(fast.argv().len(), SendRequest::ARGV.len());
        assert_eq!(fast.argv()[2], "4");
    }

    /// The script reads the request's fields by name in its first lines: exactly these.
    #[test]
    fn the_script_reads_the_fields_rust_writes() {
        let lua = include_str!("../lua/apply.lua");
        let start = lua
            .find("local op,")
            .unwrap_or_else(|| panic!("no field line"));
        let end = lua[start..]
            .find(" = req.op or")
            .unwrap_or_else(|| panic!("no field line"));
        let names: Vec<&str> = lua[start + "local ".len()..start + end]
            .split(',')
            .map(str::trim)
            .collect();
        assert_eq!(names, ApplyRequest::FIELDS);
    }

    #[test]
    fn replies_follow_the_rest_contract() {
        let env = send("agent");
        let ok = reply(Outcome::Applied);
        let r = Applied {
            env: &env,
            reply: &ok,
        }
        .reply(10, 0);
        assert_eq!(r.status, 201);
        assert_eq!(r.body["message"], "Message added successfully");
        let mut dup_of_full = reply(Outcome::Duplicate);
        dup_of_full.failed = Some(Outcome::Full);
        let r = Applied {
            env: &env,
            reply: &dup_of_full,
        }
        .reply(10, 0);
        assert_eq!(r.status, 409);
        assert_eq!(r.body["error"]["code"], "conversation_full");
        let reused = reply(Outcome::KeyReused);
        let r = Applied {
            env: &env,
            reply: &reused,
        }
        .reply(10, 0);
        assert_eq!(r.status, 422);
        assert_eq!(r.body["error"]["code"], "idempotency_key_reused");
        let nf = reply(Outcome::NotFound);
        assert_eq!(
            Applied {
                env: &env,
                reply: &nf
            }
            .reply(10, 0)
            .status,
            404
        );
    }

    #[test]
    fn assistant_chats_get_a_job_per_human_message_also_on_redelivery() {
        let env = send("agent");
        let mut r = reply(Outcome::Applied);
        r.assistant = true;
        r.event_id = 9;
        assert_eq!(
            Applied {
                env: &env,
                reply: &r
            }
            .effects()
            .job,
            Some(9)
        );
        r.outcome = Outcome::Duplicate;
        r.hseq = 12;
        assert_eq!(
            Applied {
                env: &env,
                reply: &r
            }
            .effects()
            .job,
            Some(12)
        );
        let bot = send("assistant");
        assert_eq!(
            Applied {
                env: &bot,
                reply: &r
            }
            .effects()
            .job,
            None
        );
        r.failed = Some(Outcome::Full);
        assert_eq!(
            Applied {
                env: &env,
                reply: &r
            }
            .effects(),
            Effects::default()
        );
    }
}
