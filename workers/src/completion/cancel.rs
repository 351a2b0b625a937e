//! "Stop answering": cancel requests arrive on `confab:cancel:{conversation}`, a channel in
//! the conversation's slot (sharded Pub/Sub on a cluster). A replica listens only to the
//! conversations it is answering: it subscribes before taking the answer lease — so no
//! cancel can fall between the two — and unsubscribes when it is done.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use confab_shared::db::Redis;
use confab_shared::keys;
use redis::{PushKind, RedisResult, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The conversations this replica is answering, with the token that stops each.
pub type Active = Arc<Mutex<HashMap<Uuid, CancellationToken>>>;

enum Request {
    Subscribe(Uuid, oneshot::Sender<RedisResult<()>>),
    Unsubscribe(Uuid),
}

#[derive(Clone)]
pub struct CancelListener {
    requests: mpsc::UnboundedSender<Request>,
}

impl CancelListener {
    /// Opens the Pub/Sub connection and routes cancels to `active` until `stop` fires.
    pub async fn start(
        redis: &Redis,
        active: Active,
        stop: CancellationToken,
    ) -> RedisResult<Self> {
        let (push_tx, push_rx) = mpsc::unbounded_channel();
        let conn = redis.pubsub(push_tx).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(serve(conn, rx, push_rx, active, stop));
        Ok(Self { requests: tx })
    }

    /// Resolves once Redis confirmed the subscription.
    pub async fn subscribe(&self, id: Uuid) -> RedisResult<()> {
        let (tx, rx) = oneshot::channel();
        if self.requests.send(Request::Subscribe(id, tx)).is_err() {
            return Err(closed());
        }
        rx.await.unwrap_or_else(|_| Err(closed()))
    }

    pub fn unsubscribe(&self, id: Uuid) {
        let _ = self.requests.send(Request::Unsubscribe(id));
    }
}

fn closed() -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Client, "the cancel listener has stopped"))
}

async fn serve(
    mut conn: confab_shared::db::Conn,
    mut requests: mpsc::UnboundedReceiver<Request>,
    mut pushes: mpsc::UnboundedReceiver<redis::PushInfo>,
    active: Active,
    stop: CancellationToken,
) {
    // What is subscribed, to subscribe again if a wedged cluster connection is replaced.
    let mut subscribed: HashSet<Uuid> = HashSet::new();
    let mut generation = conn.generation();
    let mut check = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = check.tick() => {
                if conn.generation() != generation {
                    generation = conn.generation();
                    for id in &subscribed {
                        if let Err(e) = conn.subscribe(&keys::cancel_channel(id)).await {
                            tracing::warn!(error = %e, "subscribing to cancels again failed");
                        }
                    }
                }
            }
            r = requests.recv() => match r {
                Some(Request::Subscribe(id, done)) => {
                    let result = conn.subscribe(&keys::cancel_channel(&id)).await;
                    if result.is_ok() {
                        subscribed.insert(id);
                    }
                    let _ = done.send(result);
                }
                Some(Request::Unsubscribe(id)) => {
                    subscribed.remove(&id);
                    if let Err(e) = conn.unsubscribe(&keys::cancel_channel(&id)).await {
                        tracing::debug!(error = %e, "unsubscribing from cancels failed");
                    }
                }
                None => return,
            },
            p = pushes.recv() => match p {
                Some(push) => cancelled(&push, &active),
                None => return,
            },
        }
    }
}

/// A message on a cancel channel stops that conversation's answer.
fn cancelled(push: &redis::PushInfo, active: &Active) {
    if !matches!(push.kind, PushKind::Message | PushKind::SMessage) {
        return;
    }
    let Some(Value::BulkString(channel)) = push.data.first() else {
        return;
    };
    let channel = String::from_utf8_lossy(channel);
    let Some(id) = channel
        .strip_prefix("confab:cancel:{")
        .and_then(|r| r.strip_suffix('}'))
        .and_then(|r| Uuid::parse_str(r).ok())
    else {
        return;
    };
    if let Some(t) = active.lock().ok().and_then(|a| a.get(&id).cloned()) {
        tracing::info!(conversation_id = %id, "cancel requested");
        t.cancel();
    }
}
