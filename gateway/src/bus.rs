//! The gateway's Pub/Sub connection: replies to its commands, conversation events, user events.
//!
//! One RESP3 connection per gateway: standalone, a `ConnectionManager` with a push channel
//! and automatic resubscription; on a Redis Cluster, a cluster connection with sharded
//! subscriptions (`SSUBSCRIBE`), one per channel on the node that serves its slot.
//! Channel membership is reconciled by a single task ([`Bus::sync`]): callers say "channel X
//! changed", the task compares who still needs X with what Redis has, and subscribes or
//! unsubscribes — so racing subscribe/unsubscribe calls can never leave a needed channel
//! unsubscribed.
//!
//! Messages published while a connection was down, or while a slot moved to another node
//! (failover, resharding), are lost to Pub/Sub but not to the conversations' histories: once
//! the connection is back, the task resubscribes what is still needed (on a cluster it
//! re-issues every subscription, which follows the slot to its new node) and has every client
//! catch up from history by eventId.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use confab_shared::db::{Conn, Redis};
use redis::{PushInfo, PushKind, RedisResult, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::pipeline::Pipeline;
use crate::ws::hub::Hub;

enum Request {
    /// Bring Redis in line with whether anyone still needs this channel.
    Sync(String, Option<oneshot::Sender<RedisResult<()>>>),
    /// Redis dropped this subscription (a slot moved): subscribe again if still needed.
    Dropped(String),
}

#[derive(Clone)]
pub struct Bus {
    requests: mpsc::UnboundedSender<Request>,
    healthy: Arc<AtomicBool>,
}

impl Bus {
    /// Connects, subscribes to this gateway's reply channel and starts dispatching.
    pub async fn start(
        redis: &Redis,
        reply_channel: String,
        pipeline: Pipeline,
        hub: Arc<Hub>,
        cancel: CancellationToken,
    ) -> RedisResult<Self> {
        let (push_tx, push_rx) = mpsc::unbounded_channel::<PushInfo>();
        let mut conn = redis.pubsub(push_tx).await?;
        conn.subscribe(&reply_channel).await?;
        let (req_tx, req_rx) = mpsc::unbounded_channel();
        let healthy = Arc::new(AtomicBool::new(true));
        let down = Arc::new(AtomicBool::new(false));
        tokio::spawn(dispatch(
            push_rx,
            reply_channel.clone(),
            pipeline,
            hub.clone(),
            down.clone(),
            req_tx.clone(),
            cancel.clone(),
        ));
        let subscriptions = Subscriptions {
            generation: conn.generation(),
            conn,
            reply_channel,
            subscribed: HashSet::new(),
            hub,
            healthy: healthy.clone(),
            down,
        };
        tokio::spawn(subscriptions.reconcile(req_rx, cancel));
        Ok(Self {
            requests: req_tx,
            healthy,
        })
    }

    /// Brings Redis in line with whether anyone on this gateway still needs `channel`;
    /// resolves once the (un)subscription is confirmed.
    pub async fn sync(&self, channel: String) -> RedisResult<()> {
        let (tx, rx) = oneshot::channel();
        if self
            .requests
            .send(Request::Sync(channel, Some(tx)))
            .is_err()
        {
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
        let _ = self.requests.send(Request::Sync(channel, None));
    }
}

fn closed() -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Client,
        "the gateway's Pub/Sub task has stopped",
    ))
}

/// The one owner of the Pub/Sub connection and of what it is subscribed to.
struct Subscriptions {
    conn: Conn,
    /// The connection's [`Conn::generation`] when its subscriptions were last made.
    generation: u64,
    reply_channel: String,
    subscribed: HashSet<String>,
    hub: Arc<Hub>,
    healthy: Arc<AtomicBool>,
    down: Arc<AtomicBool>,
}

impl Subscriptions {
    /// Applies subscription changes and sends a heartbeat every second. The heartbeat is what
    /// makes a connection manager reconnect after an outage of any length (it reconnects only
    /// when asked to send); once it answers again after a disconnect, subscriptions are
    /// restored and clients re-read what they missed from history.
    async fn reconcile(
        mut self,
        mut requests: mpsc::UnboundedReceiver<Request>,
        cancel: CancellationToken,
    ) {
        let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
        loop {
            let request = tokio::select! {
                _ = cancel.cancelled() => break,
                _ = heartbeat.tick() => {
                    self.heartbeat().await;
                    continue;
                }
                r = requests.recv() => match r { Some(r) => r, None => break },
            };
            match request {
                Request::Sync(channel, done) => {
                    let result = self.sync(&channel).await;
                    if let Some(done) = done {
                        let _ = done.send(result);
                    }
                }
                Request::Dropped(channel) => {
                    self.subscribed.remove(&channel);
                    if channel == self.reply_channel || self.hub.wants(&channel) {
                        // Resubscribed by the next heartbeat, then clients catch up.
                        self.down.store(true, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    async fn sync(&mut self, channel: &str) -> RedisResult<()> {
        let wanted = self.hub.wants(channel);
        let result = match (wanted, self.subscribed.contains(channel)) {
            (true, false) => self.conn.subscribe(channel).await.map(|_| {
                self.subscribed.insert(channel.to_string());
            }),
            (false, true) => self.conn.unsubscribe(channel).await.map(|_| {
                self.subscribed.remove(channel);
            }),
            _ => Ok(()),
        };
        if let Err(e) = &result {
            tracing::warn!(error = %e, %channel, "changing a Pub/Sub subscription failed");
        }
        result
    }

    async fn heartbeat(&mut self) {
        let ok = redis::cmd("PING")
            .query_async::<Value>(&mut self.conn)
            .await
            .is_ok();
        let generation = self.conn.generation();
        if generation != self.generation {
            // A wedged cluster connection was replaced: the new one has no subscriptions.
            tracing::warn!("Pub/Sub connection was replaced; subscribing again");
            self.generation = generation;
            self.subscribed.clear();
            self.down.store(true, Ordering::Relaxed);
        }
        if self.healthy.swap(ok, Ordering::Relaxed) != ok {
            if ok {
                tracing::info!("Pub/Sub connection is back");
            } else {
                tracing::warn!("Pub/Sub connection is down; retrying every second");
            }
        }
        if !ok || !self.down.load(Ordering::Relaxed) {
            return;
        }
        if self.conn.is_cluster() && !self.resubscribe_all().await {
            return;
        }
        self.down.store(false, Ordering::Relaxed);
        // Subscriptions are back: fill what Pub/Sub lost meanwhile.
        self.hub.resync_all();
    }

    /// Cluster: subscribes every needed channel again, so each follows its slot to the node
    /// that serves it now. True when all succeeded.
    async fn resubscribe_all(&mut self) -> bool {
        let mut channels: Vec<String> = self.hub.channels();
        channels.push(self.reply_channel.clone());
        let mut all = true;
        for channel in channels {
            match self.conn.subscribe(&channel).await {
                Ok(()) => {
                    self.subscribed.insert(channel);
                }
                Err(e) => {
                    tracing::warn!(error = %e, %channel, "resubscribing failed; retrying");
                    all = false;
                }
            }
        }
        all
    }
}

async fn dispatch(
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
    reply_channel: String,
    pipeline: Pipeline,
    hub: Arc<Hub>,
    down: Arc<AtomicBool>,
    requests: mpsc::UnboundedSender<Request>,
    cancel: CancellationToken,
) {
    loop {
        let push = tokio::select! {
            _ = cancel.cancelled() => break,
            p = pushes.recv() => match p { Some(p) => p, None => break },
        };
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
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
            PushKind::SUnsubscribe => {
                // Also the confirmation of our own unsubscribes: the reconcile task tells them
                // apart (a channel still wanted was dropped by Redis).
                if let Some(Value::BulkString(channel)) = push.data.first() {
                    let channel = String::from_utf8_lossy(channel).into_owned();
                    let _ = requests.send(Request::Dropped(channel));
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
