//! Replies and "chat added" notices of every partition task, published together.
//!
//! The partition tasks of a replica wake together (one shared read) and finish their rounds
//! at nearly the same moment; each hands its answers here. The publisher takes whatever has
//! arrived, merges the replies for each gateway into one message, and publishes — so a wave
//! of rounds costs one `PUBLISH` per waiting gateway, not one per partition. Nothing waits
//! for a timer: what arrives while a publish is under way goes out with the next one.

use std::collections::HashMap;

use confab_shared::commands::Reply;
use confab_shared::db::{now_ms, Conn};
use confab_shared::keys;
use tokio::sync::mpsc;
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

/// The partition tasks' side.
#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::Sender<Answers>,
}

impl Publisher {
    /// Starts the publisher on `conn`; it ends when every [`Publisher`] is dropped.
    pub fn start(conn: Conn) -> Publisher {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(publish(conn, rx));
        Publisher { tx }
    }

    pub async fn send(&self, answers: Answers) {
        if answers.replies.is_empty() && answers.added.is_empty() {
            return;
        }
        if self.tx.send(answers).await.is_err() {
            tracing::warn!("the reply publisher has stopped; replies are lost (clients time out)");
        }
    }
}

async fn publish(mut conn: Conn, mut rx: mpsc::Receiver<Answers>) {
    while let Some(mut answers) = rx.recv().await {
        while let Ok(more) = rx.try_recv() {
            answers.merge(more);
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
