//! The reply publisher on a real Redis: what [`Publisher::send`] returns resolves only once
//! Redis has executed the answers. A partition commits its offset only after that (a new
//! owner redoes replies only after the committed offset), so a replica SIGKILLed between a
//! round and its publish can no longer lose a reply for good.
//!
//! Pause and checks go over a connection of their own (`nodes[0].q`): the publisher's is
//! held up by the pause.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use confab_e2e::Redis;
use confab_shared::commands::Reply;
use confab_shared::keys;
use confab_workers::persistence::answers::{Answers, Published, Publisher};
use uuid::Uuid;

fn answers(user: &str, cid: Uuid) -> Answers {
    Answers {
        replies: [(
            "gw-1".to_string(),
            vec![Reply::error(Uuid::new_v4(), 503, "x", "y")],
        )]
        .into(),
        added: vec![(user.to_string(), cid)],
    }
}

/// Holds back (or lets through) every write for up to 5 s.
async fn pause_writes(redis: &Redis, on: bool) {
    let args: &[&str] = if on {
        &["CLIENT", "PAUSE", "5000", "WRITE"]
    } else {
        &["CLIENT", "UNPAUSE"]
    };
    let _: () = redis.nodes[0].q(args).await.unwrap();
}

/// The chat's score in the user's chat list (set by the notice's `ZADD`).
async fn listed(redis: &Redis, key: &str, cid: Uuid) -> Option<u64> {
    redis.nodes[0]
        .q(&["ZSCORE", key, &cid.to_string()])
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_resolves_only_once_redis_executed_the_answers() {
    let redis = Redis::start().await;
    let publisher = Publisher::start(redis.conn());
    let cid = Uuid::new_v4();
    let key = keys::user_convs("alice");

    // Writes held back: the answers are handed over but cannot be executed yet.
    pause_writes(&redis, true).await;
    let mut published = publisher.send(answers("alice", cid)).await;
    let early = tokio::time::timeout(Duration::from_millis(500), published.wait()).await;
    assert!(early.is_err(), "resolved while Redis could not have run it");
    let score = listed(&redis, &key, cid).await;
    assert_eq!(score, None, "nothing executed while paused");

    pause_writes(&redis, false).await;
    tokio::time::timeout(Duration::from_secs(30), published.wait())
        .await
        .expect("resolves once Redis runs it");
    let score = listed(&redis, &key, cid).await;
    assert!(
        score.is_some(),
        "the notice's ZADD ran before Published resolved"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_with_nothing_to_publish_keeps_waiting_for_the_one_before() {
    let redis = Redis::start().await;
    let publisher = Publisher::start(redis.conn());
    let cid = Uuid::new_v4();
    let key = keys::user_convs("bob");

    pause_writes(&redis, true).await;
    let mut latest = Published::default();
    latest.follow(publisher.send(answers("bob", cid)).await);
    // The next round answered nobody: it must not let a commit skip the wait.
    latest.follow(publisher.send(Answers::default()).await);
    let early = tokio::time::timeout(Duration::from_millis(500), latest.wait()).await;
    assert!(
        early.is_err(),
        "an empty round dropped the wait for the one before"
    );

    pause_writes(&redis, false).await;
    tokio::time::timeout(Duration::from_secs(30), latest.wait())
        .await
        .expect("resolves once Redis runs it");
    let score = listed(&redis, &key, cid).await;
    assert!(score.is_some());
}
