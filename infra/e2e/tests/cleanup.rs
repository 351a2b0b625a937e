//! Inactive conversations disappear: deleted by the cleanup workers (which announce it with
//! one `conversation_expired` per conversation, however many workers run), kept alive by
//! activity, and still removed by Redis's own key TTLs when no cleanup worker runs.
//! `CONVERSATION_TTL_SECS=2` throughout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use confab_e2e::*;
use futures::StreamExt;

const TTL: Duration = Duration::from_secs(2);
const ENV: [(&str, &str); 1] = [("CONVERSATION_TTL_SECS", "2")];

/// Gone for clients and in Redis: GET is 404 and no `confab:conv:{id}*` key is left.
async fn is_gone(stack: &Stack, http: &Http, conv: &str) -> bool {
    http.conversation(conv).await.0 == 404
        && stack.redis.keys(&conv_key_pattern(conv)).await.is_empty()
}

/// Collects every Pub/Sub message on `confab:ev:*` in the background.
async fn watch_events(stack: &Stack) -> Arc<Mutex<Vec<(String, String)>>> {
    let mut pubsub = stack.redis.pubsub().await;
    pubsub.psubscribe("confab:ev:*").await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    tokio::spawn(async move {
        let mut messages = pubsub.into_on_message();
        while let Some(msg) = messages.next().await {
            let payload: String = msg.get_payload().unwrap_or_default();
            sink.lock()
                .unwrap()
                .push((msg.get_channel_name().to_string(), payload));
        }
    });
    seen
}

/// The `conversation_expired` notices seen so far, per channel.
fn expiries(seen: &Mutex<Vec<(String, String)>>) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for (channel, payload) in seen.lock().unwrap().iter() {
        if payload.contains("conversation_expired") {
            out.entry(channel.clone())
                .or_default()
                .push(payload.clone());
        }
    }
    out
}

#[tokio::test]
async fn an_idle_conversation_is_deleted_after_its_ttl() {
    let stack = Stack::with(1, 1, 1, &ENV).await;
    let http = stack.http();
    let events = watch_events(&stack).await;
    let conv = http.create_conversation().await;
    let last_write = Instant::now();
    let mid = http.send_ok(&conv, "customer", "hello").await;
    assert_eq!(http.messages(&conv).await.len(), 1);
    let keys = stack.redis.keys(&conv_key_pattern(&conv)).await;
    assert!(keys.len() >= 4, "the conversation's keys exist: {keys:?}");
    let deadline: Option<u64> = stack.redis.q(&["ZSCORE", "confab:activity", &conv]).await;
    assert!(
        deadline.is_some(),
        "the conversation is in the cleanup index"
    );

    eventually_true("the idle conversation is deleted", DEADLINE, async || {
        is_gone(&stack, &http, &conv).await
    })
    .await;
    let after = last_write.elapsed();
    println!("gone {after:?} after the last write");
    assert!(
        after >= TTL,
        "deleted after {after:?}, before its {TTL:?} timeout"
    );

    // The cleanup worker deleted it (not the keys' TTL): it announced it once, and forgot it.
    let channel = format!("confab:ev:{conv}");
    let notices = eventually("conversation_expired is published", DEADLINE, async || {
        expiries(&events).remove(&channel)
    })
    .await;
    assert_eq!(notices.len(), 1, "{notices:?}");
    let notice: Value = serde_json::from_str(&notices[0]).unwrap();
    assert_eq!(
        notice,
        json!({"type": "conversation_expired", "conversationId": conv})
    );
    let index: Option<u64> = stack.redis.q(&["ZSCORE", "confab:activity", &conv]).await;
    assert_eq!(index, None, "removed from the cleanup index");

    // Every endpoint treats it as unknown now.
    assert_error(&http.conversation(&conv).await, 404, "not_found");
    assert_error(
        &http
            .send_message(&conv, "agent", "late", "2025-04-05T14:00:00Z")
            .await,
        404,
        "not_found",
    );
    assert_error(&http.delete_message(&conv, &mid).await, 404, "not_found");
    assert!(
        stack.redis.keys(&conv_key_pattern(&conv)).await.is_empty(),
        "a late write recreated keys"
    );
}

#[tokio::test]
async fn activity_keeps_a_conversation_alive_until_it_stops() {
    let stack = Stack::with(1, 1, 1, &ENV).await;
    let http = stack.http();
    let conv = http.create_conversation().await;
    // Writes every 500 ms for twice the timeout: every one must find the conversation.
    let start = Instant::now();
    let mut last_write = Instant::now();
    let mut n = 0;
    while start.elapsed() < TTL * 2 {
        last_write = Instant::now();
        http.send_ok(&conv, "agent", &format!("keep-alive {n}"))
            .await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(start.elapsed() > TTL);
    assert_eq!(
        http.messages(&conv).await.len(),
        n,
        "alive, with every message"
    );
    // Deletes are activity too.
    let first = str_field(&http.messages(&conv).await[0], "messageId");
    last_write = {
        let t = Instant::now();
        assert_eq!(http.delete_message(&conv, &first).await.0, 200);
        t.max(last_write)
    };

    eventually_true("deleted once the writes stop", DEADLINE, async || {
        is_gone(&stack, &http, &conv).await
    })
    .await;
    let after = last_write.elapsed();
    println!("gone {after:?} after the last write");
    assert!(
        after >= TTL,
        "deleted {after:?} after the last write, before its {TTL:?} timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_cleanup_workers_expire_each_conversation_exactly_once() {
    let stack = Stack::with(1, 1, 2, &ENV).await;
    let http = stack.http();
    let events = watch_events(&stack).await;
    let mut convs = Vec::new();
    for i in 0..8 {
        let conv = http.create_conversation().await;
        if i % 2 == 0 {
            http.send_ok(&conv, "customer", "hi").await;
        }
        convs.push(conv);
    }
    for conv in &convs {
        eventually_true("every conversation is deleted", DEADLINE, async || {
            is_gone(&stack, &http, conv).await
        })
        .await;
    }
    eventually_true("each conversation is announced", DEADLINE, async || {
        let seen = expiries(&events);
        convs
            .iter()
            .all(|c| seen.contains_key(&format!("confab:ev:{c}")))
    })
    .await;
    // A duplicate would come from the other worker's next pass (every 200 ms): give it
    // several passes before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = expiries(&events);
    assert_eq!(seen.len(), convs.len(), "{seen:?}");
    for conv in &convs {
        let notices = &seen[&format!("confab:ev:{conv}")];
        assert_eq!(notices.len(), 1, "{conv} expired {} times", notices.len());
        let notice: Value = serde_json::from_str(&notices[0]).unwrap();
        assert_eq!(
            notice,
            json!({"type": "conversation_expired", "conversationId": conv})
        );
    }
    let index: u64 = stack.redis.q(&["ZCARD", "confab:activity"]).await;
    assert_eq!(index, 0, "the cleanup index is empty");
}

#[tokio::test]
async fn without_a_cleanup_worker_the_keys_still_vanish() {
    let stack = Stack::with(1, 1, 0, &ENV).await;
    let http = stack.http();
    let conv = http.create_conversation().await;
    let last_write = Instant::now();
    http.send_ok(&conv, "customer", "nobody cleans up").await;
    for key in stack.redis.keys(&conv_key_pattern(&conv)).await {
        let ttl: i64 = stack.redis.q(&["PTTL", &key]).await;
        assert!(ttl > 0, "{key} has no expiry (PTTL {ttl})");
    }
    eventually_true("Redis expires the keys", DEADLINE, async || {
        is_gone(&stack, &http, &conv).await
    })
    .await;
    let after = last_write.elapsed();
    println!("gone {after:?} after the last write");
    assert!(
        after >= TTL,
        "gone after {after:?}, before its {TTL:?} timeout"
    );
}
