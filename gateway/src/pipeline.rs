//! Submitting commands and waiting for their replies.
//!
//! [`Pipeline::submit`] registers a waiter under a fresh command id, appends the command to
//! `confab:commands` with a plain `XADD`, and waits up to `REQUEST_TIMEOUT_MS` for the
//! persistence worker's reply, which arrives on this gateway's reply channel ([`crate::bus`]).
//! A monitor ([`Pipeline::watch_backlog`]) reads the stream's length every 100 ms; while it is
//! at `COMMAND_STREAM_MAX_LEN` new commands are refused with 503, so the stream stays bounded
//! (acknowledged entries are trimmed every second by the workers).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use confab_shared::commands::{Command, CommandEnvelope, COMMAND_FIELD};
use confab_shared::keys;
use redis::aio::ConnectionManager;
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
    conn: ConnectionManager,
    gateway_id: Arc<str>,
    waiters: Waiters,
    overloaded: Arc<AtomicBool>,
    timeout: Duration,
    max_backlog: u64,
}

impl Pipeline {
    pub fn new(
        conn: ConnectionManager,
        gateway_id: &str,
        timeout: Duration,
        max_backlog: u64,
    ) -> Self {
        Self {
            conn,
            gateway_id: gateway_id.into(),
            waiters: Arc::default(),
            overloaded: Arc::default(),
            timeout,
            max_backlog,
        }
    }

    /// Hands a reply from the bus to whoever waits for it (nobody, after a timeout).
    pub fn complete(&self, payload: &[u8]) {
        let reply: RawReply = match serde_json::from_slice(payload) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "malformed reply on the reply channel");
                return;
            }
        };
        let waiter = self
            .waiters
            .lock()
            .ok()
            .and_then(|mut w| w.remove(&reply.id));
        if let Some(tx) = waiter {
            let _ = tx.send(reply);
        }
    }

    /// Keeps the overload flag current until `cancel` fires.
    pub async fn watch_backlog(self, cancel: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut conn = self.conn.clone();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let len: redis::RedisResult<u64> = redis::cmd("XLEN")
                .arg(keys::COMMANDS_STREAM)
                .query_async(&mut conn)
                .await;
            if let Ok(len) = len {
                let full = len >= self.max_backlog;
                if full != self.overloaded.swap(full, Ordering::Relaxed) {
                    if full {
                        tracing::warn!(
                            backlog = len,
                            "command backlog full: refusing writes with 503"
                        );
                    } else {
                        tracing::info!(backlog = len, "command backlog below its cap again");
                    }
                }
            }
        }
    }

    /// How many requests wait for replies (metrics, tests).
    pub fn in_flight(&self) -> usize {
        self.waiters.lock().map(|w| w.len()).unwrap_or(0)
    }

    /// Appends `command` and waits for its reply.
    pub async fn submit(&self, command: Command) -> Result<RawReply, ApiError> {
        self.begin(command).await?.wait().await
    }

    /// Appends `command` and returns a handle to wait for its reply with. Commands begun in
    /// sequence are appended in that order (a WebSocket's sends keep their order).
    pub async fn begin(&self, command: Command) -> Result<PendingReply, ApiError> {
        let id = Uuid::new_v4();
        let envelope = CommandEnvelope {
            id,
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
            timeout: self.timeout,
        };
        let mut conn = self.conn.clone();
        if self.overloaded.load(Ordering::Relaxed) {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "Too many commands are waiting to be processed; try again shortly",
            ));
        }
        let added: Option<String> = redis::cmd("XADD")
            .arg(keys::COMMANDS_STREAM)
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

/// A command in the stream whose reply has not arrived yet. Dropping it forgets the waiter.
pub struct PendingReply {
    waiters: Waiters,
    id: Uuid,
    rx: oneshot::Receiver<RawReply>,
    timeout: Duration,
}

impl PendingReply {
    pub async fn wait(mut self) -> Result<RawReply, ApiError> {
        match tokio::time::timeout(self.timeout, &mut self.rx).await {
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
