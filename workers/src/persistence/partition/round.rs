//! One apply round over the entries in hand that are not done: which get an apply.lua call
//! ([`plan`]), and what each answer means ([`settle`]) — done (with its reply and side
//! effects), retried (transient, or out of order behind one that did not apply), or
//! dead-lettered (poison, or a script that failed `MAX_DELIVERIES` times).

use std::collections::HashMap;

use confab_shared::commands::{CommandEnvelope, CompletionJob, Reply};
use confab_shared::keys;
use confab_shared::metrics::{self, Outcome as Counted};
use confab_shared::partition::key_slot;
use confab_shared::scripting::{decode_reply, is_noscript};
use confab_shared::trace::TraceContext;
use redis::{Cmd, RedisResult, Value};
use uuid::Uuid;

use super::super::apply::{self, Applied, ApplyReply, Outcome, SendRequest};
use super::commit::Outbox;
use super::exec::is_transient;
use super::window::Window;
use super::{Ownership, Shared};

/// What a round produced besides the window's new state.
#[derive(Default)]
pub struct Settled {
    /// Replies per waiting gateway.
    pub replies: HashMap<String, Vec<Reply>>,
    /// Users who now have a chat: `(username, conversation)`.
    pub added: Vec<(String, Uuid)>,
    /// Something is to be retried: back off.
    pub transient: bool,
    /// Another replica owns the partition: stop.
    pub fenced: bool,
    /// Redis lost the script: load it again.
    pub reload: bool,
    /// Something goes again at once (send.lua declined it).
    pub again: bool,
}

impl Settled {
    fn reply(&mut self, env: &CommandEnvelope, reply: Reply) {
        if let Some(gw) = &env.reply_to {
            self.replies.entry(gw.clone()).or_default().push(reply);
        }
    }
}

/// The apply.lua calls for every entry still to do, chained per conversation. Poison, and
/// commands for shards that cannot confirm a write now, are settled here without a call.
/// Returns the window positions called, with their calls.
pub fn plan(
    window: &mut Window,
    shared: &Shared,
    own: &Ownership,
    outbox: &mut Outbox,
    settled: &mut Settled,
) -> (Vec<usize>, Vec<(Uuid, Cmd)>) {
    let cfg = &shared.cfg;
    let wait = cfg.redis_wait_replicas;
    let mut positions = Vec::new();
    for (i, s) in window.iter_mut().enumerate() {
        if s.done {
            continue;
        }
        match &s.command {
            Err(reason) => {
                metrics::get()
                    .command("unknown", Counted::DeadLettered)
                    .inc();
                tracing::error!(entry = %s.id, %reason, "dead-lettering a command");
                outbox
                    .dead
                    .push((s.id.clone(), reason.clone(), s.raw.clone()));
                s.done = true;
            }
            Ok(env) if wait > 0 && !shared.replicas.enough(conv_slot(env), wait) => {
                settled.reply(env, replicas_unavailable(env.id));
                s.done = true;
            }
            Ok(_) => positions.push(i),
        }
    }
    let ctx = apply::Context {
        part: &own.keys.tag,
        epoch: own.epoch,
        publish: shared.redis.publish_command(),
        history: cfg.event_history_len,
        max_messages: cfg.max_messages_per_conversation,
        max_bytes: cfg.max_conversation_bytes,
        open_ttl_ms: cfg.conversation_ttl_secs * 1000,
        member_ttl_ms: cfg.member_chat_ttl_secs * 1000,
        idem_window_ms: cfg.idempotency_window_secs * 1000,
        idem_max: cfg.idempotency_max_keys,
    };
    // The previous command of each conversation in this round, for the `after` chain.
    let mut previous: HashMap<Uuid, String> = HashMap::new();
    let mut calls = Vec::with_capacity(positions.len());
    for &i in &positions {
        let Some(s) = window.get(i) else { continue };
        let Ok(env) = &s.command else { continue };
        let cid = env.command.conversation_id();
        let after = previous.insert(cid, s.id.clone());
        let req = apply::request(&ctx, &s.id, after.as_deref(), env);
        let fast = if s.fast {
            SendRequest::for_command(&req)
        } else {
            None
        };
        let call = match fast {
            Some(f) => shared.send.call_argv(&SendRequest::keys(&cid), f.argv()),
            None => shared.apply.call_raw(&keys::conv_keys(&cid), req.encode()),
        };
        calls.push((cid, call));
    }
    (positions, calls)
}

/// An answer of send.lua (flat) or apply.lua (MessagePack); `Ok(None)`: send.lua declined.
fn decode(v: &Value, fast: bool) -> RedisResult<Option<ApplyReply>> {
    if fast && matches!(v, Value::Array(_)) {
        return SendRequest::reply(v);
    }
    decode_reply::<ApplyReply>(v).map(Some)
}

/// Reads each call's answer into the window, the outbox and `settled`.
pub fn settle(
    window: &mut Window,
    positions: &[usize],
    answers: Vec<(RedisResult<Value>, bool)>,
    shared: &Shared,
    own: &Ownership,
    outbox: &mut Outbox,
    settled: &mut Settled,
) {
    let cfg = &shared.cfg;
    let wait = cfg.redis_wait_replicas;
    let m = metrics::get();
    for (&i, (result, replicated)) in positions.iter().zip(answers) {
        let Some(s) = window.get_mut(i) else { continue };
        let Ok(env) = &s.command else { continue };
        let kind = env.command.kind();
        let reply = match result.and_then(|v| decode(&v, s.fast)) {
            Ok(Some(r)) => r,
            Ok(None) => {
                // send.lua declined: apply.lua decides, in the next round.
                s.fast = false;
                settled.again = true;
                continue;
            }
            Err(e) if is_noscript(&e) => {
                settled.reload = true;
                settled.transient = true;
                continue;
            }
            Err(e) if is_transient(&e) => {
                if wait > 0 && e.code() == Some("NOREPLICAS") {
                    settled.reply(env, replicas_unavailable(env.id));
                    s.done = true;
                } else {
                    tracing::debug!(entry = %s.id, error = %e, "transient error; retrying");
                    m.command(kind, Counted::Retried).inc();
                    settled.transient = true;
                }
                continue;
            }
            Err(e) => {
                s.failures += 1;
                settled.transient = true;
                if s.failures >= cfg.max_deliveries {
                    m.command(kind, Counted::DeadLettered).inc();
                    let reason = format!("failed {} times: {e}", s.failures);
                    tracing::error!(entry = %s.id, %reason, "dead-lettering a command");
                    settled.reply(
                        env,
                        Reply::error(env.id, 500, "internal", "The command could not be applied"),
                    );
                    outbox.dead.push((s.id.clone(), reason, s.raw.clone()));
                    s.done = true;
                } else {
                    m.command(kind, Counted::Retried).inc();
                    tracing::warn!(entry = %s.id, error = %e, attempt = s.failures, "applying a command failed");
                }
                continue;
            }
        };
        match reply.outcome {
            Outcome::Fenced => {
                tracing::warn!(
                    partition = own.keys.index,
                    epoch = own.epoch,
                    "fenced: another replica owns this partition"
                );
                settled.fenced = true;
                return;
            }
            Outcome::OutOfOrder => {
                m.command(kind, Counted::Retried).inc();
                settled.transient = true;
                continue;
            }
            Outcome::Duplicate => m.command(kind, Counted::Duplicate).inc(),
            _ => m.command(kind, Counted::Applied).inc(),
        }
        if confab_shared::telemetry::exporting() || tracing::enabled!(tracing::Level::DEBUG) {
            traced(env, &s.id, &reply.outcome);
        }
        let applied = Applied { env, reply: &reply };
        let answer = if replicated {
            applied.reply(
                cfg.max_messages_per_conversation,
                cfg.max_conversation_bytes,
            )
        } else {
            replicas_unavailable(env.id)
        };
        settled.reply(env, answer);
        let effects = applied.effects();
        let cid = env.command.conversation_id();
        if let Some(index) = effects.index {
            outbox.index.push(index);
        }
        if let Some(up_to) = effects.job {
            let job = CompletionJob {
                conversation_id: cid,
                up_to_event: up_to,
            };
            outbox
                .jobs
                .push(serde_json::to_string(&job).unwrap_or_default());
        }
        settled
            .added
            .extend(effects.added.into_iter().map(|u| (u, cid)));
        s.done = true;
    }
}

fn conv_slot(env: &CommandEnvelope) -> u16 {
    key_slot(&keys::conv_meta(&env.command.conversation_id()))
}

fn replicas_unavailable(id: Uuid) -> Reply {
    Reply::error(
        id,
        503,
        "replicas_unavailable",
        "Not enough Redis replicas are online to confirm the write; try again shortly",
    )
}

/// The span of an applied command, in its request's trace (exported with OTLP), and a debug
/// line under the same trace id.
fn traced(env: &CommandEnvelope, entry: &str, outcome: &Outcome) {
    let Some(trace) = env.trace.as_deref().and_then(TraceContext::parse) else {
        return;
    };
    let span = tracing::info_span!(
        "apply",
        trace_id = %trace.trace_id,
        kind = env.command.kind(),
        entry,
    );
    confab_shared::telemetry::hop(&span, Some(&trace));
    let _entered = span.enter();
    tracing::debug!(?outcome, "command applied");
}
