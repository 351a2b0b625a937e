//! Submitting commands and waiting for their replies.
//!
//! [`Pipeline::submit`] registers a waiter under a fresh command id, appends the command to
//! its partition's stream (`confab:cmd:{p}`, chosen by the conversation) with a plain `XADD`,
//! and waits for the persistence worker's reply until `REQUEST_TIMEOUT_MS` after it began (a
//! slow `XADD` counts: the whole request is bounded, not each step), which arrives on
//! this gateway's reply channel ([`crate::bus`]) in a batch with the others of the worker's
//! round. A monitor ([`Pipeline::watch_backlog`]) reads every partition's length every
//! 100 ms; while a partition holds its share of `COMMAND_STREAM_MAX_LEN`, new commands for it
//! are refused with 503, so every stream stays bounded (workers trim what they committed).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use confab_shared::commands::{Command, CommandEnvelope, COMMAND_FIELD};
use confab_shared::db::Conn;
use confab_shared::keys::PartitionKeys;
use confab_shared::partition::Partitions;
use confab_shared::trace::TraceContext;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::oneshot;
use uuid::Uuid;
use warp::http::StatusCode;

use crate::rest::errors::ApiError;

/// A persistence worker's answer, with the REST body passed through untouched.
#[derive(Debug, Deserialize)]
pub struct RawReply {
    pub id: Uuid,
    pub status: u16,
    pub body: Box<RawValue>,
}

type Waiters = Arc<Mutex<HashMap<Uuid, oneshot::Sender<RawReply>>>>;

#[derive(Clone)]
pub struct Pipeline {
    conn: Conn,
    gateway_id: Arc<str>,
    parts: Arc<Partitions>,
    streams: Arc<Vec<String>>,
    placement: Arc<Placement>,
    waiters: Waiters,
    /// Per partition: its backlog is at its cap.
    overloaded: Arc<Vec<AtomicBool>>,
    timeout: Duration,
    max_backlog: u64,
}

impl Pipeline {
    pub fn new(
        conn: Conn,
        gateway_id: &str,
        parts: Partitions,
        timeout: Duration,
        max_backlog: u64,
    ) -> Self {
        let streams: Vec<String> = PartitionKeys::all(&parts)
            .into_iter()
            .map(|k| k.commands)
            .collect();
        let overloaded = streams.iter().map(|_| AtomicBool::new(false)).collect();
        // The cap is shared out: a partition holds at most its share.
        let share = max_backlog.div_ceil(u64::from(parts.count())).max(1);
        Self {
            conn,
            gateway_id: gateway_id.into(),
            placement: Arc::new(Placement::new(parts.clone())),
            parts: Arc::new(parts),
            streams: Arc::new(streams),
            waiters: Arc::default(),
            overloaded: Arc::new(overloaded),
            timeout,
            max_backlog: share,
        }
    }

    /// A fresh conversation id for the next partition in turn ([`Placement`]).
    pub fn new_conversation_id(&self) -> Uuid {
        self.placement.next_id()
    }

    /// Hands replies from the bus to whoever waits for them (nobody, after a timeout). A
    /// payload is one reply or an array of them (a worker's round for this gateway).
    pub fn complete(&self, payload: &[u8]) {
        let replies: Vec<RawReply> = match payload.first() {
            Some(b'[') => serde_json::from_slice(payload).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "malformed replies on the reply channel");
                Vec::new()
            }),
            _ => match serde_json::from_slice(payload) {
                Ok(r) => vec![r],
                Err(e) => {
                    tracing::warn!(error = %e, "malformed reply on the reply channel");
                    Vec::new()
                }
            },
        };
        let Ok(mut waiters) = self.waiters.lock() else {
            return;
        };
        for reply in replies {
            if let Some(tx) = waiters.remove(&reply.id) {
                let _ = tx.send(reply);
            }
        }
    }

    /// Keeps the overload flags current until `cancel` fires.
    pub async fn watch_backlog(self, cancel: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut conn = self.conn.clone();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let lens = self
                .streams
                .iter()
                .map(|s| {
                    let mut c = redis::cmd("XLEN");
                    c.arg(s);
                    c
                })
                .collect();
            let Ok(lens) = conn.query_many(lens).await else {
                continue;
            };
            for (p, len) in lens.into_iter().enumerate() {
                let Ok(len) = len.and_then(|v| Ok(redis::from_redis_value::<u64>(v)?)) else {
                    continue;
                };
                let Some(flag) = self.overloaded.get(p) else {
                    continue;
                };
                let full = len >= self.max_backlog;
                if full != flag.swap(full, Ordering::Relaxed) {
                    if full {
                        tracing::warn!(
                            partition = p,
                            backlog = len,
                            "command backlog full: refusing writes with 503"
                        );
                    } else {
                        tracing::info!(
                            partition = p,
                            backlog = len,
                            "command backlog below its cap again"
                        );
                    }
                }
            }
        }
    }

    /// Appends `command` for the request being handled (its trace) and waits for its reply.
    pub async fn submit(&self, command: Command) -> Result<RawReply, ApiError> {
        let trace = crate::server::current_trace().unwrap_or_else(TraceContext::new_root);
        self.begin(command, &trace).await?.wait().await
    }

    /// Appends `command`, made under `trace`, and returns a handle to wait for its reply
    /// with. Commands begun in sequence are appended in that order (a WebSocket's sends keep
    /// their order).
    pub async fn begin(
        &self,
        command: Command,
        trace: &TraceContext,
    ) -> Result<PendingReply, ApiError> {
        // The request's whole budget starts now: a slow append leaves less time to wait.
        let deadline = tokio::time::Instant::now() + self.timeout;
        let partition = self.parts.of_conversation(&command.conversation_id()) as usize;
        if self
            .overloaded
            .get(partition)
            .is_some_and(|f| f.load(Ordering::Relaxed))
        {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "Too many commands are waiting to be processed; try again shortly",
            ));
        }
        let id = Uuid::new_v4();
        tracing::debug!(trace_id = %trace.trace_id, command_id = %id, kind = command.kind(), "queueing a command");
        let envelope = CommandEnvelope {
            id,
            trace: Some(trace.child().header()),
            reply_to: Some(self.gateway_id.to_string()),
            command,
        };
        let payload = serde_json::to_string(&envelope)
            .map_err(|e| ApiError::internal("serializing a command", e))?;
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.waiters.lock() {
            w.insert(id, tx);
        }
        let pending = PendingReply {
            waiters: self.waiters.clone(),
            id,
            rx,
            deadline,
        };
        let mut conn = self.conn.clone();
        let stream = self
            .streams
            .get(partition)
            .map(String::as_str)
            .unwrap_or_default();
        let added: Option<String> = redis::cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg(COMMAND_FIELD)
            .arg(payload)
            .query_async(&mut conn)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "cannot append a command");
                ApiError::unavailable("The message queue is unreachable; try again")
            })?;
        if added.is_none() {
            return Err(ApiError::unavailable(
                "The message queue did not accept the command; try again",
            ));
        }
        Ok(pending)
    }
}

/// Where new conversations go: round the partitions, so each partition (and each cluster
/// primary) gets its share of them rather than what random ids happen to give. An id is
/// still a random v4 UUID: about P are drawn until one hashes to the partition wanted
/// (4 of its 122 random bits fixed for P = 16).
pub struct Placement {
    parts: Partitions,
    next: AtomicU32,
}

impl Placement {
    pub fn new(parts: Partitions) -> Self {
        // Gateways start at different partitions, so a fleet's first chats spread too.
        let start = (Uuid::new_v4().as_u128() % u128::from(parts.count().max(1))) as u32;
        Self {
            parts,
            next: AtomicU32::new(start),
        }
    }

    pub fn next_id(&self) -> Uuid {
        let wanted = self.next.fetch_add(1, Ordering::Relaxed) % self.parts.count();
        loop {
            let id = Uuid::new_v4();
            if self.parts.of_conversation(&id) == wanted {
                return id;
            }
        }
    }
}

/// A command in the stream whose reply has not arrived yet. Dropping it forgets the waiter.
pub struct PendingReply {
    waiters: Waiters,
    id: Uuid,
    rx: oneshot::Receiver<RawReply>,
    /// `REQUEST_TIMEOUT_MS` after [`Pipeline::begin`] was called.
    deadline: tokio::time::Instant,
}

impl PendingReply {
    pub async fn wait(mut self) -> Result<RawReply, ApiError> {
        match tokio::time::timeout_at(self.deadline, &mut self.rx).await {
            Ok(Ok(reply)) => Ok(reply),
            _ => Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "The command was queued but not applied in time; it may still be applied",
            )
            .with("commandId", self.id.to_string())),
        }
    }
}

impl Drop for PendingReply {
    fn drop(&mut self) {
        if let Ok(mut w) = self.waiters.lock() {
            w.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_conversations_go_round_the_partitions() {
        let parts = Partitions::new(16);
        let placement = Placement::new(parts.clone());
        let mut counts = [0u32; 16];
        for _ in 0..160 {
            let id = placement.next_id();
            assert_eq!(id.get_version_num(), 4);
            counts[parts.of_conversation(&id) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c == 10), "{counts:?}");
    }

    /// The append took most of the budget (a slow link to Redis): the wait gets only the
    /// rest, so the request still answers 504 at `REQUEST_TIMEOUT_MS`, not twice that.
    #[allow(clippy::unwrap_used)]
    #[tokio::test(start_paused = true)]
    async fn the_reply_deadline_counts_from_the_start_of_the_request() {
        let waiters = Waiters::default();
        let id = Uuid::new_v4();
        let (tx, rx) = oneshot::channel();
        waiters.lock().unwrap().insert(id, tx);
        let start = tokio::time::Instant::now();
        let pending = PendingReply {
            waiters: waiters.clone(),
            id,
            rx,
            deadline: start + Duration::from_secs(2),
        };
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let err = pending.wait().await.unwrap_err();
        assert_eq!(err.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert!(
            waiters.lock().unwrap().is_empty(),
            "the waiter is forgotten"
        );
    }
}
