//! Memory amplification (issue 10 item 4): what one accepted message costs Redis, what one
//! conversation may store (`MAX_CONVERSATION_BYTES`), and what reading a large conversation
//! costs the gateway (`GET /api/conversations/:id` streams its messages page by page).
//!
//! These are memory bounds — bytes in Redis (`INFO memory`), the gateway's resident set
//! (`/proc/<pid>/status`) — never times: they hold on a busy machine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use confab_e2e::*;

const TS: &str = "2025-04-05T14:00:00Z";
const KIB: usize = 1024;
const MIB: u64 = 1024 * 1024;

/// Redis's `used_memory`, in bytes.
async fn used_memory(redis: &Redis) -> u64 {
    let info: String = redis.q(&["INFO", "memory"]).await;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no used_memory in INFO memory:\n{info}"))
}

/// Waits until every command was applied and its entry trimmed from the partition streams.
async fn drained(redis: &Redis) {
    eventually_true(
        "the command streams to be trimmed",
        Duration::from_secs(60),
        async || redis.backlog().await == 0,
    )
    .await;
}

/// A field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in bytes.
fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Resets the peak resident set (`VmHWM`) to the current one; false where the kernel does
/// not allow it (the peak then covers the process's whole life: a stricter check).
fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// Content of exactly `len` bytes, JSON's worst case now: every `"` is stored as `\"`.
fn quotes(tag: usize, len: usize) -> String {
    let head = format!("{tag:05}");
    format!("{head}{}", "\"".repeat(len - head.len()))
}

/// Before: 16 KB of U+0001 was stored as 96 KB of `\u0001` escapes (6×), and 2,000 such
/// posts grew Redis by 472 MB. Now such content is refused, and the worst accepted content
/// (16 KB of `"`, stored as `\"`) grows Redis by at most 3× its size per message, once the
/// commands' stream entries are trimmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_message_grows_redis_by_at_most_three_times_its_size() {
    let stack = Stack::start(&[]).await;
    let http = stack.http();
    let conv = http.create_conversation().await;

    // Control characters are refused over REST and WebSocket, and store nothing.
    // (Content of nothing but control characters was already refused as empty.)
    let controls = format!("a{}", "\u{0001}".repeat(16 * KIB - 1));
    let answer = http.send_message(&conv, "customer", &controls, TS).await;
    assert_error(&answer, 400, "invalid_content");
    assert!(
        answer.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("control characters"),
        "{}",
        answer.1
    );
    let mut ws = Ws::connect(&stack.gw().ws_url(), None).await;
    ws.subscribe(&conv, None).await;
    ws.send_json(&send_frame(&conv, "c1", "customer", "beep\u{0007}"))
        .await;
    let err = ws.expect_type("error").await;
    assert_eq!(
        (err["code"].as_str(), err["ref"].as_str()),
        (Some("invalid_content"), Some("c1")),
        "{err}"
    );
    // Tab and line breaks stay allowed.
    let (status, body) = http
        .send_message(&conv, "customer", "a\tb\r\nc\n", TS)
        .await;
    assert_eq!(status, 201, "{body}");

    drained(&stack.redis).await;
    let before = used_memory(&stack.redis).await;
    const N: usize = 200;
    let size = 16 * KIB;
    for i in 0..N {
        http.send_ok(&conv, "agent", &quotes(i, size)).await;
    }
    drained(&stack.redis).await;
    let after = used_memory(&stack.redis).await;
    let per_message = after.saturating_sub(before) / N as u64;
    println!(
        "Redis grew {} bytes for {N} messages of {size} bytes: {per_message} bytes each ({:.2}x)",
        after.saturating_sub(before),
        per_message as f64 / size as f64
    );
    assert!(
        per_message <= 3 * size as u64,
        "{per_message} bytes per {size}-byte message"
    );
    // Nothing was lost on the way: every message is there, intact.
    let messages = http.messages(&conv).await;
    assert_eq!(messages.len(), N + 1);
    assert_eq!(messages[N]["content"], quotes(N - 1, size));
}

/// `MAX_CONVERSATION_BYTES`: past it a message is refused with 409 `conversation_full`
/// (REST) or an error frame (WebSocket), and a delete makes room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_holds_at_most_max_conversation_bytes() {
    let stack = Stack::start(&[("MAX_CONVERSATION_BYTES", "40000")]).await;
    let http = stack.http();
    let conv = http.create_conversation().await;
    let content = "x".repeat(16 * KIB);
    let first = http.send_ok(&conv, "customer", &content).await;
    http.send_ok(&conv, "agent", &content).await;
    // A third would take it past 40,000 bytes of stored JSON.
    let answer = http.send_message(&conv, "customer", &content, TS).await;
    assert_error(&answer, 409, "conversation_full");
    assert!(
        answer.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("40000 bytes"),
        "{}",
        answer.1
    );
    let mut ws = Ws::connect(&stack.gw().ws_url(), None).await;
    ws.subscribe(&conv, None).await;
    ws.send_json(&send_frame(&conv, "big", "customer", &content))
        .await;
    let err = ws.wait_type("error").await;
    assert_eq!(
        (err["code"].as_str(), err["ref"].as_str()),
        (Some("conversation_full"), Some("big")),
        "{err}"
    );
    // A short one still fits.
    http.send_ok(&conv, "customer", "short").await;
    assert_eq!(http.messages(&conv).await.len(), 3);
    // Deleting frees the bytes.
    let (status, body) = http.delete_message(&conv, &first).await;
    assert_eq!(status, 200, "{body}");
    http.send_ok(&conv, "customer", &content).await;
    assert_eq!(http.messages(&conv).await.len(), 3);
}

/// Before: the gateway built each answer in memory (several copies of it), and four
/// concurrent GETs of a large conversation took it from 12 MiB to 792 MiB. Now it streams
/// the messages page by page: eight concurrent GETs of 300 messages of 16 KB (each answer
/// about 10 MB) grow it by at most 64 MiB, and every answer is complete and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_gets_of_a_large_conversation_stay_within_64_mib() {
    let mut stack = Stack::start(&[]).await;
    let http = stack.http();
    let conv = http.create_conversation().await;
    const N: usize = 300;
    let size = 16 * KIB;
    let mut ids = Vec::with_capacity(N);
    for i in 0..N {
        ids.push(http.send_ok(&conv, "customer", &quotes(i, size)).await);
    }
    drained(&stack.redis).await;

    let pid = stack.gateways[0].process().pid();
    let rss_before = proc_status_bytes(pid, "VmRSS");
    let reset = reset_peak(pid);
    let gets = (0..8).map(|_| {
        let http = http.clone();
        let conv = conv.clone();
        async move {
            let res = http
                .request(reqwest::Method::GET, &format!("/api/conversations/{conv}"))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            assert_eq!(res.headers()["content-type"], "application/json");
            let bytes = res.bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap();
            (bytes.len(), body)
        }
    });
    let answers = futures::future::join_all(gets).await;
    let peak = proc_status_bytes(pid, "VmHWM");
    let growth = peak.saturating_sub(rss_before);
    println!(
        "gateway RSS {} MiB before, peak {} MiB during 8 GETs of {} bytes each (growth {} KiB, \
         peak reset: {reset})",
        rss_before / MIB,
        peak / MIB,
        answers[0].0,
        growth / 1024
    );
    for (len, body) in &answers {
        assert!(*len > N * 2 * size, "{len} bytes");
        assert_eq!(keys_of(body), ["conversationId", "messages"]);
        assert_eq!(body["conversationId"], conv.as_str());
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(messages.len(), N);
        for (i, m) in messages.iter().enumerate() {
            assert_eq!(m["messageId"], ids[i].as_str(), "message {i}");
            assert_eq!(m["content"], quotes(i, size), "message {i}");
            assert_eq!(m["sender"], "customer");
            assert_eq!(m["timestamp"], TS);
        }
    }
    assert!(
        growth <= 64 * MIB,
        "the gateway grew by {} MiB",
        growth / MIB
    );
}

/// Streamed in pieces of one message each (`RESPONSE_CHUNK_BYTES=1`), the answer is the same:
/// every message once, in send order, none that was deleted, the member chat's head fields and
/// the `lastEventId` the messages stop at — and a member chat's messages are never sent to an
/// outsider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_streamed_one_message_at_a_time_is_the_same_answer() {
    let stack = Stack::start(&[("RESPONSE_CHUNK_BYTES", "1")]).await;
    let http = stack.http();
    let conv = http.create_conversation().await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(http.send_ok(&conv, "agent", &format!("m{i} \"q\"")).await);
    }
    let (status, _) = http.delete_message(&conv, &ids[2]).await;
    assert_eq!(status, 200);
    let (status, body) = http.conversation(&conv).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(keys_of(&body), ["conversationId", "messages"]);
    let got: Vec<&str> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["messageId"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, id)| id.as_str())
        .collect();
    assert_eq!(got, want);
    assert_eq!(body["messages"][4]["content"], "m5 \"q\"");
    // An empty conversation: an empty list.
    let empty = http.create_conversation().await;
    assert!(http.messages(&empty).await.is_empty());

    let alice = http.user("alice").await;
    let bob = http.user("bob").await;
    let chat = alice.create_chat("big talk", &["bob"], false).await;
    alice.say(&chat, "one").await;
    bob.say(&chat, "two").await;
    let (status, body) = bob.get(&format!("/api/conversations/{chat}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["title"], "big talk");
    assert_eq!(body["members"], json!(["alice", "bob"]));
    assert_eq!(body["lastEventId"], 2);
    let contents: Vec<&str> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["one", "two"]);
    let carol = http.user("carol").await;
    let answer = carol.get(&format!("/api/conversations/{chat}")).await;
    assert_error(&answer, 404, "not_found");
}
