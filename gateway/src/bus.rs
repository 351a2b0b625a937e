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
use std::sync::Arc;

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
            .set_response_timeout(Some(std::time::Duration::from_secs(5)))
            .set_max_delay(std::time::Duration::from_secs(2));
        let mut conn = ConnectionManager::new_with_config(client, config).await?;
        conn.subscribe(&reply_channel).await?;
        let (req_tx, req_rx) = mpsc::unbounded_channel();
        tokio::spawn(dispatch(
            push_rx,
            reply_channel,
            pipeline,
            hub.clone(),
            cancel.clone(),
        ));
        tokio::spawn(reconcile(conn, req_rx, hub, cancel));
        Ok(Self { requests: req_tx })
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

async fn reconcile(
    mut conn: ConnectionManager,
    mut requests: mpsc::UnboundedReceiver<SyncRequest>,
    hub: Arc<Hub>,
    cancel: CancellationToken,
) {
    let mut subscribed: HashSet<String> = HashSet::new();
    loop {
        let (channel, done) = tokio::select! {
            _ = cancel.cancelled() => break,
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
                tracing::warn!("Pub/Sub connection lost; reconnecting and resynchronising clients");
                // Messages published while disconnected are gone from Pub/Sub but not from the
                // conversations' histories: once resubscribed, clients re-read from their last eventId.
                let hub = hub.clone();
                tokio::spawn(async move {
                    for wait in [1, 3] {
                        tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
                        hub.resync_all();
                    }
                });
            }
            _ => {}
        }
    }
}
