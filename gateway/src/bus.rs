//! The gateway's Pub/Sub connection: replies to its commands, conversation events, user events.
//!
//! One RESP3 connection per gateway (redis-rs `ConnectionManager` with a push channel and
//! automatic resubscription after a reconnect). Channel membership is reconciled by a single
//! task ([`Bus::sync`]): callers say "channel X changed", the task compares who still needs X
//! with what Redis has, and issues `SUBSCRIBE`/`UNSUBSCRIBE` — so racing subscribe/unsubscribe
//! calls can never leave a needed channel unsubscribed. After a reconnect the hub is told to
//! resynchronise, since messages published while disconnected were lost (clients fetch them
//! from the conversation's history by eventId).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{PushInfo, PushKind, RedisResult, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::pipeline::Pipeline;
use crate::ws::hub::Hub;

type SyncRequest = (String, Option<oneshot::Sender<RedisResult<()>>>);

#[derive(Clone)]
pub struct Bus {
    requests: mpsc::UnboundedSender<SyncRequest>,
    healthy: Arc<AtomicBool>,
}

impl Bus {
    /// Connects, subscribes to this gateway's reply channel and starts dispatching.
    pub async fn start(
        redis_url: &str,
        reply_channel: String,
        pipeline: Pipeline,
        hub: Arc<Hub>,
        cancel: CancellationToken,
    ) -> RedisResult<Self> {
        let url = if redis_url.contains('?') {
            format!("{redis_url}&protocol=resp3")
        } else {
            format!("{redis_url}?protocol=resp3")
        };
        let client = redis::Client::open(url)?;
        let (push_tx, push_rx) = mpsc::unbounded_channel::<PushInfo>();
        let config = ConnectionManagerConfig::new()
            .set_push_sender(push_tx)
            .set_automatic_resubscription()
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_max_delay(Duration::from_secs(2));
        let mut conn = ConnectionManager::new_with_config(client, config).await?;
        conn.subscribe(&reply_channel).await?;
        let (req_tx, req_rx) = mpsc::unbounded_channel();
        let healthy = Arc::new(AtomicBool::new(true));
        let down = Arc::new(AtomicBool::new(false));
        tokio::spawn(dispatch(
            push_rx,
            reply_channel,
            pipeline,
            hub.clone(),
            down.clone(),
            cancel.clone(),
        ));
        tokio::spawn(reconcile(conn, req_rx, hub, healthy.clone(), down, cancel));
        Ok(Self {
            requests: req_tx,
            healthy,
        })
    }

    /// Brings Redis in line with whether anyone on this gateway still needs `channel`;
    /// resolves once the (un)subscription is confirmed.
    pub async fn sync(&self, channel: String) -> RedisResult<()> {
        let (tx, rx) = oneshot::channel();
        if self.requests.send((channel, Some(tx))).is_err() {
            return Err(closed());
        }
        rx.await.unwrap_or_else(|_| Err(closed()))
    }

    /// Whether the Pub/Sub connection answered its last heartbeat (readiness).
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Like [`Bus::sync`] without waiting (used on disconnect paths).
    pub fn sync_later(&self, channel: String) {
        let _ = self.requests.send((channel, None));
    }
}

fn closed() -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Client,
        "the gateway's Pub/Sub task has stopped",
    ))
}

/// Owns the Pub/Sub connection: applies subscription changes and sends a heartbeat every
/// second. The heartbeat is what makes the connection manager reconnect after an outage of
/// any length (it reconnects only when asked to send); once it answers again after a
/// disconnect, clients re-read what they missed from history.
async fn reconcile(
    mut conn: ConnectionManager,
    mut requests: mpsc::UnboundedReceiver<SyncRequest>,
    hub: Arc<Hub>,
    healthy: Arc<AtomicBool>,
    down: Arc<AtomicBool>,
    cancel: CancellationToken,
) {
    let mut subscribed: HashSet<String> = HashSet::new();
    let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
    loop {
        let (channel, done) = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = heartbeat.tick() => {
                let ok = redis::cmd("PING").query_async::<Value>(&mut conn).await.is_ok();
                if healthy.swap(ok, Ordering::Relaxed) != ok {
                    if ok {
                        tracing::info!("Pub/Sub connection is back");
                    } else {
                        tracing::warn!("Pub/Sub connection is down; retrying every second");
                    }
                }
                if ok && down.swap(false, Ordering::Relaxed) {
                    // Resubscribed (automatic resubscription): fill what Pub/Sub lost.
                    hub.resync_all();
                }
                continue;
            }
            r = requests.recv() => match r { Some(r) => r, None => break },
        };
        let wanted = hub.wants(&channel);
        let result = match (wanted, subscribed.contains(&channel)) {
            (true, false) => conn.subscribe(&channel).await.map(|_| {
                subscribed.insert(channel.clone());
            }),
            (false, true) => conn.unsubscribe(&channel).await.map(|_| {
                subscribed.remove(&channel);
            }),
            _ => Ok(()),
        };
        if let Err(e) = &result {
            tracing::warn!(error = %e, %channel, "changing a Pub/Sub subscription failed");
        }
        if let Some(done) = done {
            let _ = done.send(result);
        }
    }
}

async fn dispatch(
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
    reply_channel: String,
    pipeline: Pipeline,
    hub: Arc<Hub>,
    down: Arc<AtomicBool>,
    cancel: CancellationToken,
) {
    loop {
        let push = tokio::select! {
            _ = cancel.cancelled() => break,
            p = pushes.recv() => match p { Some(p) => p, None => break },
        };
        match push.kind {
            PushKind::Message => {
                let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
                    (push.data.first(), push.data.get(1))
                else {
                    continue;
                };
                let channel = String::from_utf8_lossy(channel);
                if channel == reply_channel {
                    pipeline.complete(payload);
                } else {
                    hub.deliver(&channel, payload);
                }
            }
            PushKind::Disconnection => {
                tracing::warn!("Pub/Sub connection lost; reconnecting");
                // Messages published meanwhile are gone from Pub/Sub but not from the
                // conversations' histories: the heartbeat resynchronises clients once back.
                down.store(true, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}
