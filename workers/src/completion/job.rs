//! Answering one conversation: lease, context, stream, coalesce, retry, store.
//!
//! One replica answers a conversation at a time (a lease in the conversation's `answer` hash,
//! renewed while streaming). Each reply answers every human message up to the newest one
//! (`hseq`); messages that arrive meanwhile are answered together by the next reply, which
//! the lease holder starts itself after releasing — so a job that found the lease taken can be
//! acknowledged safely. A reply is stored through the persistence pipeline with its
//! `answers_up_to`, and `assistant_done` is published atomically with it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use confab_shared::commands::{
    AssistantReply, Command, CommandEnvelope, CompletionJob, ASSISTANT_ACTOR, COMMAND_FIELD,
};
use confab_shared::db::Conn;
use confab_shared::domain::{self, Message, SENDER_ASSISTANT};
use confab_shared::events::Event;
use confab_shared::keys::{self, PartitionKeys};
use confab_shared::metrics;
use confab_shared::partition::Partitions;
use confab_shared::scripting::is_noscript;
use confab_shared::streams::Disposition;
use confab_shared::Config;
use futures::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::cancel::{Active, CancelListener};
use super::coalesce::Coalescer;
use super::lease::{AnswerLease, Lease};
use super::openai::{Failure, Model};

const MAX_ATTEMPTS: u32 = 6;
/// How often a job whose conversation another replica is answering checks again.
const BUSY_POLL: Duration = Duration::from_millis(300);
/// No chunk for this long counts as a stalled stream (retried).
const IDLE: Duration = Duration::from_secs(15);

enum End {
    /// The answer is over (stored, or an error told to clients): look for newer messages.
    Finished,
    /// The conversation disappeared or another replica took over.
    Gone,
    /// Shutdown ran out of time: leave the job pending for another replica.
    Aborted,
}

pub struct Answerer {
    conn: Conn,
    cfg: Arc<Config>,
    parts: Partitions,
    model: Model,
    lease: Arc<AnswerLease>,
    active: Active,
    cancels: CancelListener,
    abort: CancellationToken,
}

impl Answerer {
    pub async fn new(
        mut conn: Conn,
        cfg: Arc<Config>,
        owner: String,
        active: Active,
        cancels: CancelListener,
        abort: CancellationToken,
    ) -> anyhow::Result<Self> {
        let lease = Arc::new(AnswerLease::new(owner, cfg.claim_idle()));
        lease.load(&mut conn).await?;
        let model = Model::new(&cfg)?;
        if let Err(why) = model.configured() {
            tracing::warn!("{why}");
        }
        Ok(Self {
            conn,
            parts: cfg.partitions(),
            cfg,
            model,
            lease,
            active,
            cancels,
            abort,
        })
    }

    pub fn answering(&self) -> usize {
        self.active.lock().map(|a| a.len()).unwrap_or(0)
    }

    #[tracing::instrument(skip_all, fields(conversation_id = %job.conversation_id))]
    pub async fn handle(&self, job: CompletionJob) -> Disposition {
        let id = job.conversation_id;
        // Already answering this conversation here: that loop answers newer messages when it is
        // done. Wait until our message is answered, or until that loop has ended (it may have
        // checked for new messages just before ours arrived) and then take over.
        loop {
            let busy_here = match self.active.lock() {
                Ok(mut active) => match active.entry(id) {
                    std::collections::hash_map::Entry::Occupied(_) => true,
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        slot.insert(CancellationToken::new());
                        false
                    }
                },
                Err(_) => return Disposition::Retry,
            };
            if !busy_here {
                break;
            }
            if self.answered(id, job.up_to_event).await {
                return Disposition::Ack;
            }
            tokio::select! {
                _ = tokio::time::sleep(BUSY_POLL) => {}
                _ = self.abort.cancelled() => return Disposition::Retry,
            }
        }
        let _forget = Forget {
            active: &self.active,
            cancels: &self.cancels,
            id,
        };
        // Listen for "stop" before taking the lease, so no cancel falls in between.
        if let Err(e) = self.cancels.subscribe(id).await {
            tracing::warn!(error = %e, "cannot listen for cancels");
            return Disposition::Retry;
        }
        let mut first = true;
        loop {
            let rid = Uuid::new_v4();
            let lease = match self.lease.acquire(&mut self.conn.clone(), id, rid).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take the answer lease");
                    return Disposition::Retry;
                }
            };
            let (hseq, previous) = match lease {
                Lease::Gone => return Disposition::Ack,
                Lease::Busy => {
                    // Another replica is answering. It answers newer messages itself when done;
                    // if it dies, its lease lapses within CLAIM_IDLE_MS and we take over here.
                    if self.answered(id, job.up_to_event).await {
                        return Disposition::Ack;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(BUSY_POLL) => continue,
                        _ = self.abort.cancelled() => return Disposition::Retry,
                    }
                }
                Lease::Mine {
                    previous,
                    hseq,
                    aseq,
                    assistant,
                } => {
                    if !assistant || aseq >= hseq {
                        let _ = self.lease.release(&mut self.conn.clone(), id).await;
                        return Disposition::Ack;
                    }
                    (hseq, previous)
                }
            };
            if let Some(prev) = previous {
                tracing::warn!(response_id = %prev, "taking over an answer from a replica that stopped");
                self.publish(
                    id,
                    &Event::AssistantRestarted {
                        conversation_id: id,
                        response_id: prev,
                    },
                )
                .await;
            }
            // The first answer keeps the token a cancel may already have hit; later answers
            // (for messages that came meanwhile) start afresh.
            let cancel = match self.active.lock() {
                Ok(mut a) => {
                    let token = a.entry(id).or_default();
                    if !first {
                        *token = CancellationToken::new();
                    }
                    token.clone()
                }
                Err(_) => return Disposition::Retry,
            };
            first = false;
            match self.answer(id, rid, hseq, &cancel).await {
                End::Finished => {
                    let _ = self.lease.release(&mut self.conn.clone(), id).await;
                }
                End::Gone => return Disposition::Ack,
                End::Aborted => {
                    // Keep the text so far, let the lease lapse: the next replica announces a restart.
                    let _ = self.lease.lapse(&mut self.conn.clone(), id).await;
                    return Disposition::Retry;
                }
            }
        }
    }

    /// Whether the message with eventId `up_to` has been answered (or the chat is gone).
    async fn answered(&self, id: Uuid, up_to: u64) -> bool {
        match self.lease.status(&mut self.conn.clone(), id).await {
            Ok((exists, aseq)) => !exists || aseq >= up_to,
            Err(_) => false,
        }
    }

    async fn publish(&self, id: Uuid, event: &Event) {
        let mut conn = self.conn.clone();
        let r: redis::RedisResult<()> = self
            .conn
            .publish(&keys::conv_channel(&id), event.to_json())
            .query_async(&mut conn)
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "publishing an assistant event failed");
        }
    }

    /// Sends one delta and records the text so far for clients that join mid-answer.
    async fn delta(&self, id: Uuid, rid: Uuid, seq: u64, delta: String, shown: &str) {
        let event = Event::AssistantDelta {
            conversation_id: id,
            response_id: rid,
            seq,
            delta,
        }
        .to_json();
        // One slot (the conversation's): a pipeline in cluster mode too.
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.add_command(conn.publish(&keys::conv_channel(&id), event))
            .ignore();
        pipe.add_command(self.lease.progress(id, rid, shown, seq))
            .ignore();
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            if is_noscript(&e) {
                self.lease.reload(&mut conn).await;
            }
            tracing::debug!(error = %e, "publishing a delta failed");
        }
    }

    /// The conversation's recent messages as chat messages, within the configured budget.
    async fn context(&self, id: Uuid) -> redis::RedisResult<Vec<serde_json::Value>> {
        let mut conn = self.conn.clone();
        let n = self.cfg.assistant_context_messages.max(1) as isize;
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(keys::conv_order(&id))
            .arg(-n)
            .arg(-1)
            .query_async(&mut conn)
            .await?;
        let raw: Vec<Option<String>> = if ids.is_empty() {
            Vec::new()
        } else {
            redis::cmd("HMGET")
                .arg(keys::conv_msgs(&id))
                .arg(&ids)
                .query_async(&mut conn)
                .await?
        };
        let messages: Vec<Message> = raw
            .into_iter()
            .flatten()
            .filter_map(|m| serde_json::from_str(&m).ok())
            .collect();
        Ok(build_context(
            &self.cfg.assistant_system_prompt,
            &messages,
            self.cfg.assistant_context_chars,
        ))
    }

    async fn answer(
        &self,
        id: Uuid,
        first_rid: Uuid,
        hseq: u64,
        cancel: &CancellationToken,
    ) -> End {
        let context = match self.context(id).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "reading the conversation failed");
                return End::Aborted;
            }
        };
        let started = Instant::now();
        let give_up = Duration::from_secs(self.cfg.assistant_give_up_secs);
        let mut rid = first_rid;
        let mut attempt = 0u32;
        let mut shown = String::new();
        let mut usage = None;
        let mut stopped = false;
        // The lease is renewed for as long as this answer runs — while connecting, streaming
        // or backing off — and `lost` fires if the conversation goes or another replica took over.
        let lost = CancellationToken::new();
        let _keeper = self.keep_lease(id, lost.clone()).drop_guard();
        let _active = ActiveGauge::start();
        let mut first_token = true;
        loop {
            attempt += 1;
            shown.clear();
            let attempt_started = Instant::now();
            let mut co = Coalescer::new();
            let mut finished = false;
            let failure: Option<Failure> = 'run: {
                if let Err(message) = self.model.configured() {
                    break 'run Some(Failure::Fatal {
                        code: "not_configured",
                        message,
                    });
                }
                let mut stream = tokio::select! {
                    r = self.model.stream(&context) => match r {
                        Ok(s) => s,
                        Err(f) => break 'run Some(f),
                    },
                    _ = cancel.cancelled() => { stopped = true; break 'run None }
                    _ = self.abort.cancelled() => return End::Aborted,
                    _ = lost.cancelled() => return End::Gone,
                    _ = tokio::time::sleep(IDLE) => break 'run Some(Failure::Retry { after: None, reason: "no answer from the model API".into() }),
                };
                // Only an arriving chunk moves this deadline: a stream that goes silent is retried.
                let stall = tokio::time::sleep(IDLE);
                tokio::pin!(stall);
                loop {
                    let flush_at = co.deadline().map(tokio::time::Instant::from_std);
                    tokio::select! {
                        biased;
                        _ = cancel.cancelled() => { stopped = true; break 'run None }
                        _ = self.abort.cancelled() => return End::Aborted,
                        _ = lost.cancelled() => {
                            tracing::info!("conversation gone or answer taken over; stopping");
                            return End::Gone;
                        }
                        _ = &mut stall => break 'run Some(Failure::Retry { after: None, reason: "the model stream stalled".into() }),
                        _ = async { if let Some(t) = flush_at { tokio::time::sleep_until(t).await } }, if flush_at.is_some() => {
                            if let Some((seq, d)) = co.take(Instant::now()) {
                                shown.push_str(&d);
                                self.delta(id, rid, seq, d, &shown).await;
                            }
                        }
                        item = stream.next() => match item {
                            None if finished => break 'run None,
                            None => break 'run Some(Failure::Retry { after: None, reason: "the model stream ended before it finished".into() }),
                            Some(Err(e)) => break 'run Some(self.model.classify(&e)),
                            Some(Ok(chunk)) => {
                                stall.as_mut().reset(tokio::time::Instant::now() + IDLE);
                                if let Some(err) = chunk.error {
                                    let msg = err["message"].as_str().unwrap_or("error").to_string();
                                    break 'run Some(Failure::Retry { after: None, reason: self.model.redact(&format!("error inside the stream: {msg}")) });
                                }
                                for choice in chunk.choices {
                                    if let Some(text) = choice.delta.and_then(|d| d.content) {
                                        if first_token && !text.is_empty() {
                                            first_token = false;
                                            metrics::get().assistant_first_token.observe(attempt_started.elapsed().as_secs_f64());
                                        }
                                        if let Some((seq, d)) = co.push(&text, Instant::now()) {
                                            shown.push_str(&d);
                                            self.delta(id, rid, seq, d, &shown).await;
                                        }
                                    }
                                    if choice.finish_reason.is_some() {
                                        finished = true;
                                    }
                                }
                                if chunk.usage.is_some() {
                                    usage = chunk.usage;
                                }
                            }
                        },
                    }
                }
            };
            if let Some((seq, d)) = co.take(Instant::now()) {
                shown.push_str(&d);
                self.delta(id, rid, seq, d, &shown).await;
            }
            match failure {
                None => break,
                Some(Failure::Fatal { code, message }) => {
                    tracing::warn!(code, %message, "the assistant cannot answer");
                    return self.give_up(id, rid, hseq, code, message).await;
                }
                Some(Failure::Retry { after, reason }) => {
                    let wait = after
                        .unwrap_or_else(|| backoff(attempt))
                        .min(Duration::from_secs(10));
                    if attempt >= MAX_ATTEMPTS || started.elapsed() + wait >= give_up {
                        tracing::warn!(attempt, %reason, "giving up on the model API");
                        let message = format!(
                            "The assistant could not reach its model after {attempt} attempts; try again later"
                        );
                        return self.give_up(id, rid, hseq, "unavailable", message).await;
                    }
                    tracing::warn!(attempt, %reason, wait_ms = wait.as_millis() as u64, "model call failed; retrying");
                    if co.last_seq().is_some() {
                        self.publish(
                            id,
                            &Event::AssistantRestarted {
                                conversation_id: id,
                                response_id: rid,
                            },
                        )
                        .await;
                        rid = Uuid::new_v4();
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = cancel.cancelled() => { stopped = true; shown.clear(); break }
                        _ = self.abort.cancelled() => return End::Aborted,
                        _ = lost.cancelled() => return End::Gone,
                    }
                }
            }
        }
        self.store(id, rid, hseq, shown, stopped, usage).await
    }

    /// Renews this replica's answer lease every `CLAIM_IDLE_MS / 3` until the returned token
    /// is cancelled (dropped guard); cancels `lost` when the lease cannot be kept.
    fn keep_lease(&self, id: Uuid, lost: CancellationToken) -> CancellationToken {
        let stop = CancellationToken::new();
        let (stop2, mut conn, lease) = (stop.clone(), self.conn.clone(), self.lease.clone());
        let every = Duration::from_millis((self.cfg.claim_idle_ms / 3).max(100));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop2.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                match lease.renew(&mut conn, id).await {
                    Ok(true) => {}
                    Ok(false) => {
                        lost.cancel();
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "renewing the answer lease failed"),
                }
            }
        });
        stop
    }

    async fn give_up(&self, id: Uuid, rid: Uuid, hseq: u64, code: &str, message: String) -> End {
        metrics::get()
            .assistant_errors
            .with_label_values(&[code])
            .inc();
        self.publish(
            id,
            &Event::AssistantError {
                conversation_id: id,
                response_id: rid,
                code: code.into(),
                message,
            },
        )
        .await;
        let _ = self.lease.mark(&mut self.conn.clone(), id, hseq).await;
        End::Finished
    }

    /// Stores the reply through the persistence pipeline and waits until it is applied.
    async fn store(
        &self,
        id: Uuid,
        rid: Uuid,
        hseq: u64,
        text: String,
        stopped: bool,
        usage: Option<serde_json::Value>,
    ) -> End {
        count_tokens(usage.as_ref());
        let content = match (text.trim().is_empty(), stopped) {
            (false, _) => text,
            (true, true) => "_(stopped before any text)_".to_string(),
            (true, false) => "_(the model returned an empty answer)_".to_string(),
        };
        let message = Message {
            message_id: Uuid::new_v4(),
            sender: SENDER_ASSISTANT.into(),
            content,
            timestamp: domain::now_rfc3339(),
            stopped,
        };
        let done = Event::AssistantDone {
            conversation_id: id,
            response_id: rid,
            message_id: message.message_id,
            stopped,
            usage,
        }
        .to_json();
        let envelope = CommandEnvelope {
            id: rid,
            trace: None,
            reply_to: None,
            command: Command::SendMessage {
                conversation_id: id,
                message,
                actor: Some(ASSISTANT_ACTOR.into()),
                assistant_reply: Some(AssistantReply {
                    answers_up_to: hseq,
                    done_event: done,
                }),
                fingerprint: None,
            },
        };
        let mut conn = self.conn.clone();
        let stream = PartitionKeys::new(&self.parts, self.parts.of_conversation(&id)).commands;
        let added: redis::RedisResult<String> = redis::cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg(COMMAND_FIELD)
            .arg(serde_json::to_string(&envelope).unwrap_or_default())
            .query_async(&mut conn)
            .await;
        if let Err(e) = added {
            tracing::warn!(error = %e, "storing the reply failed");
            return End::Aborted;
        }
        let until = Instant::now() + self.cfg.request_timeout();
        while Instant::now() < until {
            match self.lease.status(&mut conn, id).await {
                Ok((false, _)) => return End::Gone,
                Ok((true, aseq)) if aseq >= hseq => return End::Finished,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        tracing::warn!("the reply was not applied in time; marking the messages answered");
        let _ = self.lease.mark(&mut conn, id, hseq).await;
        End::Finished
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250u64.saturating_mul(1 << attempt.saturating_sub(1).min(5)))
        .min(Duration::from_secs(4))
}

/// System prompt, then the newest messages that fit `max_chars`, oldest first; people's
/// messages are attributed to their sender.
pub fn build_context(
    system: &str,
    messages: &[Message],
    max_chars: usize,
) -> Vec<serde_json::Value> {
    let mut picked = Vec::new();
    let mut used = 0usize;
    for m in messages.iter().rev() {
        let cost = m.content.chars().count() + m.sender.len() + 2;
        if used + cost > max_chars && !picked.is_empty() {
            break;
        }
        used += cost;
        picked.push(m);
    }
    picked.reverse();
    let mut out = vec![json!({"role": "system", "content": system})];
    for m in picked {
        if m.sender == SENDER_ASSISTANT {
            out.push(json!({"role": "assistant", "content": m.content}));
        } else {
            let content: String = if m.content.chars().count() > max_chars {
                m.content
                    .chars()
                    .rev()
                    .take(max_chars)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect()
            } else {
                m.content.clone()
            };
            let name: String = m
                .sender
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            out.push(json!({"role": "user", "name": name, "content": format!("{}: {}", m.sender, content)}));
        }
    }
    out
}

/// Forgets an answered conversation and stops listening for its cancels.
struct Forget<'a> {
    active: &'a Active,
    cancels: &'a CancelListener,
    id: Uuid,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if let Ok(mut a) = self.active.lock() {
            a.remove(&self.id);
        }
        self.cancels.unsubscribe(self.id);
    }
}

/// `confab_assistant_active` while an answer runs.
struct ActiveGauge;

impl ActiveGauge {
    fn start() -> Self {
        metrics::get().assistant_active.inc();
        ActiveGauge
    }
}

impl Drop for ActiveGauge {
    fn drop(&mut self) {
        metrics::get().assistant_active.dec();
    }
}

/// Adds a reply's usage report (`prompt_tokens`, `completion_tokens`) to the token counters.
fn count_tokens(usage: Option<&serde_json::Value>) {
    let Some(u) = usage else { return };
    let m = metrics::get();
    for (field, kind) in [
        ("prompt_tokens", "prompt"),
        ("completion_tokens", "completion"),
    ] {
        if let Some(n) = u.get(field).and_then(serde_json::Value::as_u64) {
            m.assistant_tokens.with_label_values(&[kind]).inc_by(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(sender: &str, content: &str) -> Message {
        Message {
            message_id: Uuid::new_v4(),
            sender: sender.into(),
            content: content.into(),
            timestamp: String::new(),
            stopped: false,
        }
    }

    #[test]
    fn context_attributes_and_keeps_order() {
        let ms = [
            msg("alice", "hi"),
            msg("assistant", "hello"),
            msg("bob.b", "and me"),
        ];
        let c = build_context("sys", &ms, 1000);
        assert_eq!(c.len(), 4);
        assert_eq!(c[0]["role"], "system");
        assert_eq!(c[1]["content"], "alice: hi");
        assert_eq!(c[2]["role"], "assistant");
        assert_eq!(c[3]["name"], "bob_b");
    }

    #[test]
    fn context_respects_the_char_budget_newest_first() {
        let ms: Vec<Message> = (0..50)
            .map(|i| msg("alice", &format!("message number {i:02}")))
            .collect();
        let c = build_context("sys", &ms, 100);
        assert!(c.len() < 10, "{}", c.len());
        assert_eq!(
            c.last().map(|v| v["content"].clone()),
            Some(json!("alice: message number 49"))
        );
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::from_millis(250));
        assert_eq!(backoff(2), Duration::from_millis(500));
        assert_eq!(backoff(10), Duration::from_secs(4));
    }
}
