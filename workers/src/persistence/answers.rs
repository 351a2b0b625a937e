//! Replies and "chat added" notices of every partition task, published together.
//!
//! The partition tasks of a replica wake together (one shared read) and finish their rounds
//! at nearly the same moment; each hands its answers here. The publisher takes whatever has
//! arrived, merges the replies for each gateway into one message, and publishes — so a wave
//! of rounds costs one `PUBLISH` per waiting gateway, not one per partition. Nothing waits
//! for a timer: what arrives while a publish is under way goes out with the next one.
//!
//! **Before a commit.** A reply and a "chat added" notice are side effects that a new owner
//! redoes only for entries after the committed offset. So a partition never commits past an
//! entry whose answers Redis has not executed yet: [`Publisher::send`] returns a
//! [`Published`] that resolves once they were, and the partition waits for the newest one
//! before each commit (a replica SIGKILLed between the two would otherwise lose the reply
//! for good, and its client would time out on a command that was applied).

use std::collections::HashMap;

use confab_shared::commands::Reply;
use confab_shared::db::{now_ms, Conn};
use confab_shared::keys;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// What one round has to tell.
#[derive(Default)]
pub struct Answers {
    /// Replies per waiting gateway.
    pub replies: HashMap<String, Vec<Reply>>,
    /// Users who now have a chat: `(username, conversation)`.
    pub added: Vec<(String, Uuid)>,
}

impl Answers {
    fn merge(&mut self, other: Answers) {
        for (gw, mut r) in other.replies {
            self.replies.entry(gw).or_default().append(&mut r);
        }
        self.added.extend(other.added);
    }
}

/// Answers on their way, and who waits for them to be executed.
struct Queued {
    answers: Answers,
    done: oneshot::Sender<()>,
}

/// Resolves once the answers handed over with it, and every earlier one of the same
/// partition, were executed by Redis (or failed there: nothing would be gained by waiting).
#[derive(Default)]
pub struct Published(Option<oneshot::Receiver<()>>);

impl Published {
    /// Follows `newer` answers of the same partition, which resolve only after these: keeps
    /// waiting for these when `newer` had nothing to publish.
    pub fn follow(&mut self, newer: Published) {
        if newer.0.is_some() {
            *self = newer;
        }
    }

    /// Waits until the answers are out.
    pub async fn wait(&mut self) {
        if let Some(rx) = self.0.take() {
            // An error only means the publisher is gone: nothing left to wait for.
            let _ = rx.await;
        }
    }
}

/// The partition tasks' side.
#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::Sender<Queued>,
}

impl Publisher {
    /// Starts the publisher on `conn`; it ends when every [`Publisher`] is dropped.
    pub fn start(conn: Conn) -> Publisher {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(publish(conn, rx));
        Publisher { tx }
    }

    /// Hands `answers` over; what it returns resolves once they were published (at once
    /// when there is nothing to publish).
    pub async fn send(&self, answers: Answers) -> Published {
        if answers.replies.is_empty() && answers.added.is_empty() {
            return Published::default();
        }
        let (done, rx) = oneshot::channel();
        if self.tx.send(Queued { answers, done }).await.is_err() {
            tracing::warn!("the reply publisher has stopped; replies are lost (clients time out)");
            return Published::default();
        }
        Published(Some(rx))
    }
}

async fn publish(mut conn: Conn, mut rx: mpsc::Receiver<Queued>) {
    while let Some(first) = rx.recv().await {
        let mut answers = first.answers;
        let mut done = vec![first.done];
        while let Ok(more) = rx.try_recv() {
            answers.merge(more.answers);
            done.push(more.done);
        }
        let now = now_ms();
        let mut cmds = Vec::with_capacity(answers.replies.len() + 2 * answers.added.len());
        for (gateway, batch) in &answers.replies {
            let payload = serde_json::to_string(batch).unwrap_or_default();
            cmds.push(conn.publish(&keys::reply_channel(gateway), payload));
        }
        for (user, cid) in &answers.added {
            let mut zadd = redis::cmd("ZADD");
            zadd.arg(keys::user_convs(user))
                .arg("NX")
                .arg(now)
                .arg(cid.to_string());
            cmds.push(zadd);
            cmds.push(conn.publish(&keys::user_channel(user), user_notice(cid)));
        }
        match conn.query_many(cmds).await {
            Ok(results) => {
                for e in results.into_iter().filter_map(Result::err) {
                    tracing::warn!(error = %e, "publishing a reply or notice failed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "publishing replies failed"),
        }
        for d in done {
            let _ = d.send(());
        }
    }
}

/// Tells a user's gateways that a chat now includes them; each gateway sends its clients
/// the full `conversation_added` (it reads the chat's summary).
fn user_notice(cid: &Uuid) -> String {
    serde_json::json!({"type": "conversation_added", "conversationId": cid}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_for_one_gateway_merge_in_order() {
        let id = |n: u128| Uuid::from_u128(n);
        let one = |n: u128| Answers {
            replies: [("gw".to_string(), vec![Reply::error(id(n), 503, "x", "y")])].into(),
            added: vec![("alice".into(), id(n))],
        };
        let mut a = one(1);
        a.merge(one(2));
        let ids: Vec<Uuid> = a.replies["gw"].iter().map(|r| r.id).collect();
        assert_eq!(ids, [id(1), id(2)]);
        assert_eq!(a.added.len(), 2);
    }
}
