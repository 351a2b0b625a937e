//! Inactive conversations disappear: deleted by the cleanup workers (which announce it with
//! one `conversation_expired` per conversation, however many workers run), kept alive by
//! activity, and still removed by Redis's own key TTLs when no cleanup worker runs.
//! `CONVERSATION_TTL_SECS=2` throughout; every scenario runs on standalone Redis and on a
//! Redis Cluster.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use confab_e2e::*;

const TTL: Duration = Duration::from_secs(2);
const ENV: [(&str, &str); 1] = [("CONVERSATION_TTL_SECS", "2")];

/// Gone for clients and in Redis: GET is 404 and no `confab:conv:{id}*` key is left.
async fn is_gone(stack: &Stack, http: &Http, conv: &str) -> bool {
    http.conversation(conv).await.0 == 404
        && stack.redis.keys(&conv_key_pattern(conv)).await.is_empty()
}

/// A conversation's event channel.
fn channel(conv: &str) -> String {
    format!("confab:ev:{{{conv}}}")
}

/// Collects every Pub/Sub message on the conversations' channels in the background.
async fn watch_events(stack: &Stack, convs: &[String]) -> Arc<Mutex<Vec<(String, String)>>> {
    let channels: Vec<String> = convs.iter().map(|c| channel(c)).collect();
    let mut rx = stack.redis.subscribe(&channels).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            sink.lock().unwrap().push(m);
        }
    });
    seen
}

/// The conversation's entry in its partition's cleanup index.
async fn indexed(stack: &Stack, conv: &str) -> Option<u64> {
    let index = stack.redis.partition_of(conv).activity;
    stack.redis.q(&["ZSCORE", &index, conv]).await
}

in_both_modes!(
    an_idle_conversation_is_deleted_after_its_ttl,
    activity_keeps_a_conversation_alive_until_it_stops,
    two_cleanup_workers_expire_each_conversation_exactly_once,
    without_a_cleanup_worker_the_keys_still_vanish,
);

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

async fn an_idle_conversation_is_deleted_after_its_ttl(mode: Mode) {
    let stack = Stack::in_mode(mode, 1, 1, 1, &ENV).await;
    let http = stack.http();
    let conv = http.create_conversation().await;
    let events = watch_events(&stack, std::slice::from_ref(&conv)).await;
    let last_write = Instant::now();
    let mid = http.send_ok(&conv, "customer", "hello").await;
    assert_eq!(http.messages(&conv).await.len(), 1);
    let keys = stack.redis.keys(&conv_key_pattern(&conv)).await;
    assert!(keys.len() >= 3, "the conversation's keys exist: {keys:?}");
    let deadline = indexed(&stack, &conv).await;
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
    let notices = eventually("conversation_expired is published", DEADLINE, async || {
        expiries(&events).remove(&channel(&conv))
    })
    .await;
    assert_eq!(notices.len(), 1, "{notices:?}");
    let notice: Value = serde_json::from_str(&notices[0]).unwrap();
    assert_eq!(
        notice,
        json!({"type": "conversation_expired", "conversationId": conv})
    );
    assert_eq!(
        indexed(&stack, &conv).await,
        None,
        "removed from the cleanup index"
    );

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

async fn activity_keeps_a_conversation_alive_until_it_stops(mode: Mode) {
    let stack = Stack::in_mode(mode, 1, 1, 1, &ENV).await;
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

async fn two_cleanup_workers_expire_each_conversation_exactly_once(mode: Mode) {
    let stack = Stack::in_mode(mode, 1, 1, 2, &ENV).await;
    let http = stack.http();
    let mut convs = Vec::new();
    for _ in 0..8 {
        convs.push(http.create_conversation().await);
    }
    let events = watch_events(&stack, &convs).await;
    for conv in convs.iter().step_by(2) {
        http.send_ok(conv, "customer", "hi").await;
    }
    for conv in &convs {
        eventually_true("every conversation is deleted", DEADLINE, async || {
            is_gone(&stack, &http, conv).await
        })
        .await;
    }
    eventually_true("each conversation is announced", DEADLINE, async || {
        let seen = expiries(&events);
        convs.iter().all(|c| seen.contains_key(&channel(c)))
    })
    .await;
    // A duplicate would come from the other worker's next pass (every 200 ms): give it
    // several passes before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = expiries(&events);
    assert_eq!(seen.len(), convs.len(), "{seen:?}");
    for conv in &convs {
        let notices = &seen[&channel(conv)];
        assert_eq!(notices.len(), 1, "{conv} expired {} times", notices.len());
        let notice: Value = serde_json::from_str(&notices[0]).unwrap();
        assert_eq!(
            notice,
            json!({"type": "conversation_expired", "conversationId": conv})
        );
    }
    let mut index = 0u64;
    for pk in stack.redis.partitions() {
        index += stack.redis.q::<u64>(&["ZCARD", &pk.activity]).await;
    }
    assert_eq!(index, 0, "the cleanup index is empty");
}

async fn without_a_cleanup_worker_the_keys_still_vanish(mode: Mode) {
    let stack = Stack::in_mode(mode, 1, 1, 0, &ENV).await;
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
