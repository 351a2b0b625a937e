//! Streaming wire format, usage, max_tokens, pacing, lenient, aborts.

use mock_openai::{demo_reply, MockConfig, SYSTEM_FINGERPRINT};
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn stream_wire_format_line_by_line() {
    let server = start(MockConfig::fast()).await;
    let resp = post(&server, &body("What is Confab?", true)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let (pieces, err) = read_all(resp).await;
    assert!(err.is_none(), "{err:?}");
    let raw = text_of(&pieces);

    // Every line alternates `data: …` / empty, ending with [DONE].
    let lines: Vec<&str> = raw.split('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        if i % 2 == 0 && i + 1 < lines.len() {
            assert!(
                line.starts_with("data: {") || *line == "data: [DONE]",
                "line {i}: {line}"
            );
        } else {
            assert_eq!(*line, "", "line {i} must be blank");
        }
    }
    assert!(raw.ends_with("data: [DONE]\n\n"));

    let payloads = events(&raw);
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(payloads.iter().filter(|p| *p == "[DONE]").count(), 1);
    let chunks = json_events(&payloads);
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"));
    for c in &chunks {
        assert_eq!(c["id"], id);
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "gpt-4o-mini");
        assert_eq!(c["system_fingerprint"], SYSTEM_FINGERPRINT);
        assert_eq!(c["created"], chunks[0]["created"]);
        assert!(c["created"].as_u64().unwrap() > 1_700_000_000);
        assert!(c.get("usage").is_none(), "no usage without include_usage");
        assert_eq!(c["choices"][0]["index"], 0);
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["delta"], json!({}));
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    for c in &chunks[..chunks.len() - 1] {
        assert!(c["choices"][0]["finish_reason"].is_null());
    }
    let content = content_of(&chunks);
    assert_eq!(content, demo_reply("What is Confab?"));
    assert!(content.contains("local demo model") && content.contains("```rust"));
    let n = content_chunks(&chunks);
    assert!((60..=120).contains(&n), "{n} tokens");
    assert_eq!(chunks.len(), n + 2);
    let stats = wait_stats(&server, |s| s.completed == 1).await;
    assert_eq!((stats.requests, stats.aborted, stats.in_flight), (1, 0, 0));
}

#[tokio::test]
async fn include_usage_adds_final_usage_chunk() {
    let server = start(MockConfig::fast()).await;
    let mut b = body("[[mock tokens=12]] count please", true);
    b["stream_options"] = json!({"include_usage": true});
    let (pieces, err) = read_all(post(&server, &b).await).await;
    assert!(err.is_none());
    let payloads = events(&text_of(&pieces));
    let chunks = json_events(&payloads);
    assert_eq!(payloads.last().unwrap(), "[DONE]");
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    let usage = &usage_chunk["usage"];
    assert_eq!(usage["completion_tokens"], 12);
    let prompt = usage["prompt_tokens"].as_u64().unwrap();
    assert!(prompt > 0);
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), prompt + 12);
    // All other chunks carry `usage: null`, the finish chunk precedes usage.
    for c in &chunks[..chunks.len() - 1] {
        assert!(c.get("usage").is_some_and(|u| u.is_null()), "{c}");
    }
    assert_eq!(
        chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
        "stop"
    );
    assert_eq!(
        content_of(&chunks),
        "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12"
    );
}

#[tokio::test]
async fn max_tokens_cuts_with_finish_reason_length() {
    let server = start(MockConfig::fast()).await;
    for key in ["max_tokens", "max_completion_tokens"] {
        let mut b = body("[[mock tokens=50]]", true);
        b[key] = json!(7);
        b["stream_options"] = json!({"include_usage": true});
        let (pieces, _) = read_all(post(&server, &b).await).await;
        let chunks = json_events(&events(&text_of(&pieces)));
        assert_eq!(content_of(&chunks), "w1 w2 w3 w4 w5 w6 w7 ");
        assert_eq!(content_chunks(&chunks), 7);
        let finish = &chunks[chunks.len() - 2]["choices"][0]["finish_reason"];
        assert_eq!(finish, "length", "{key}");
        assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 7);
    }
}

// Pacing itself (chunk k of a 20/s stream at exactly k × 50 ms, the configured default
// pace, tps=0, delay_ms, 200 streams side by side) is checked on tokio's paused clock in
// src/completion.rs; over HTTP these tests check what arrives, not when, so a busy machine
// cannot fail them. Throughput and latency belong to `make bench`.

#[tokio::test]
async fn tps_directive_streams_every_token() {
    // Server default is unpaced; the directive paces this stream at 20/s.
    let server = start(MockConfig::fast()).await;
    let resp = post(&server, &body("[[mock tps=20 tokens=10]]", true)).await;
    let (pieces, err) = read_all(resp).await;
    assert!(err.is_none(), "{err:?}");
    let payloads = events(&text_of(&pieces));
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    let chunks = json_events(&payloads);
    assert_eq!(content_chunks(&chunks), 10);
    assert_eq!(content_of(&chunks), "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10");

    // And tps=0 on a paced server (5/s would take a minute) streams all 300 tokens.
    let paced = start(MockConfig {
        tokens_per_sec: 5,
        ..MockConfig::default()
    })
    .await;
    let (pieces, err) =
        read_all(post(&paced, &body("[[mock tps=0 tokens=300]]", true)).await).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(
        content_chunks(&json_events(&events(&text_of(&pieces)))),
        300
    );
}

#[tokio::test]
async fn config_tokens_per_sec_server_streams_every_token() {
    let server = start(MockConfig {
        tokens_per_sec: 25,
        ..MockConfig::default()
    })
    .await;
    let (pieces, _) = read_all(post(&server, &body("[[mock tokens=10]]", true)).await).await;
    assert_eq!(content_chunks(&json_events(&events(&text_of(&pieces)))), 10);
}

#[tokio::test]
async fn lenient_chunks_omit_metadata() {
    let server = start(MockConfig::fast()).await;
    let (pieces, err) =
        read_all(post(&server, &body("[[mock lenient tokens=3]]", true)).await).await;
    assert!(err.is_none());
    let payloads = events(&text_of(&pieces));
    assert_eq!(payloads.last().unwrap(), "[DONE]");
    let chunks = json_events(&payloads);
    assert_eq!(chunks.len(), 5);
    for c in &chunks {
        for field in ["id", "object", "created", "model", "system_fingerprint"] {
            assert!(c.get(field).is_none(), "{field} in {c}");
        }
        assert!(c["choices"].is_array());
    }
    assert_eq!(content_of(&chunks), "w1 w2 w3");
    assert_eq!(chunks[4]["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn client_disconnect_is_counted_as_abort() {
    let server = start(MockConfig::fast()).await;
    let resp = post(&server, &body("[[mock tps=20 tokens=1000]]", true)).await;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut received = 0;
    while received < 3 {
        use futures::StreamExt;
        let piece = stream.next().await.expect("more data").expect("no error");
        received += events(std::str::from_utf8(&piece).unwrap()).len();
    }
    assert_eq!(server.stats().in_flight, 1);
    drop(stream);
    let stats = wait_stats(&server, |s| s.aborted == 1).await;
    assert_eq!(stats.in_flight, 0);
    assert_eq!(stats.completed, 0);
    assert_eq!(stats.by_status.get("200"), Some(&1));
}

#[tokio::test]
async fn delay_ms_still_answers() {
    let server = start(MockConfig::fast()).await;
    let resp = post(&server, &body("[[mock delay_ms=300 tokens=2]]", true)).await;
    assert_eq!(resp.status(), 200);
    let (pieces, _) = read_all(resp).await;
    assert_eq!(
        content_of(&json_events(&events(&text_of(&pieces)))),
        "w1 w2"
    );
}

#[tokio::test]
async fn holds_200_concurrent_paced_streams() {
    let server = start(MockConfig::default()).await;
    let client = client();
    let url = format!("{}/chat/completions", server.base_url());
    // Every stream must have started (its role chunk read) before any is read further:
    // a server serving them one after the other could not get all 200 past the barrier.
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(200));
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let (client, url, barrier) = (client.clone(), url.clone(), barrier.clone());
            tokio::spawn(async move {
                use futures::StreamExt;
                let b = body(&format!("stream {i} [[mock tps=50 tokens=50]]"), true);
                let resp = client.post(url).json(&b).send().await.expect("sent");
                let mut stream = resp.bytes_stream();
                let mut raw = String::new();
                while !raw.contains("\n\n") {
                    let piece = stream.next().await.expect("more data").expect("no error");
                    raw.push_str(std::str::from_utf8(&piece).expect("utf-8"));
                }
                barrier.wait().await;
                while let Some(piece) = stream.next().await {
                    let piece = piece.expect("no error");
                    raw.push_str(std::str::from_utf8(&piece).expect("utf-8"));
                }
                let payloads = events(&raw);
                assert_eq!(payloads.last().unwrap(), "[DONE]");
                content_chunks(&json_events(&payloads))
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.expect("task"), 50);
    }
    let stats = wait_stats(&server, |s| s.completed == 200).await;
    assert_eq!((stats.aborted, stats.in_flight), (0, 0));
}

#[tokio::test]
async fn stamp_tokens_carry_the_send_time() {
    use futures::StreamExt;
    use mock_openai::{now_micros, parse_stamps, stamp_token};

    let server = start(MockConfig::fast()).await;
    let resp = post(
        &server,
        &body("time me [[mock tps=50 tokens=20 stamp]]", true),
    )
    .await;
    assert_eq!(resp.status(), 200);
    // (stamp, receipt) per complete event, both wall-clock microseconds.
    let mut seen: Vec<(u64, u64)> = Vec::new();
    let mut buf = String::new();
    let mut raw = String::new();
    let mut stream = resp.bytes_stream();
    while let Some(piece) = stream.next().await {
        let received = now_micros();
        let piece = std::str::from_utf8(&piece.expect("no error"))
            .unwrap()
            .to_string();
        raw.push_str(&piece);
        buf.push_str(&piece);
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            seen.extend(parse_stamps(&event).into_iter().map(|s| (s, received)));
        }
    }
    let chunks = json_events(&events(&raw));
    assert_eq!(content_chunks(&chunks), 20);
    let content = content_of(&chunks);
    let stamps: Vec<u64> = seen.iter().map(|(s, _)| *s).collect();
    assert_eq!(parse_stamps(&content), stamps);
    // Every token is exactly one stamp token; nothing of `wN` is left.
    let rebuilt: String = stamps.iter().map(|s| stamp_token(*s)).collect();
    assert_eq!(content, rebuilt);
    assert!(!content.contains('w'));
    assert_eq!(stamps.len(), 20);
    // Stamps are send times, in send order: they never decrease (the gaps depend on the
    // machine's load, so they are not checked; the pacing is tested on a paused clock in
    // src/completion.rs).
    for w in stamps.windows(2) {
        assert!(w[0] <= w[1], "{stamps:?}");
    }
    // A stamp is taken before its chunk is written, so it is never after the receipt
    // (same machine, same clock); how long before depends on the load and is not checked.
    for (stamp, received) in &seen {
        assert!(stamp <= received, "stamp {stamp} after receipt {received}");
    }
}

#[tokio::test]
async fn stamp_respects_max_tokens_and_non_streaming() {
    use mock_openai::{now_micros, parse_stamps};

    let server = start(MockConfig::fast()).await;
    let mut b = body("[[mock tokens=30 stamp]]", true);
    b["max_tokens"] = json!(5);
    let (pieces, _) = read_all(post(&server, &b).await).await;
    let chunks = json_events(&events(&text_of(&pieces)));
    assert_eq!(parse_stamps(&content_of(&chunks)).len(), 5);
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );

    // The demo reply keeps its token count, each token replaced by a stamp.
    let (pieces, _) = read_all(post(&server, &body("hi [[mock stamp]]", true)).await).await;
    let chunks = json_events(&events(&text_of(&pieces)));
    let n = content_chunks(&chunks);
    assert!((60..=120).contains(&n), "{n}");
    assert_eq!(parse_stamps(&content_of(&chunks)).len(), n);

    let before = now_micros();
    let resp = post(&server, &body("[[mock tokens=4 stamp]]", false)).await;
    let v: serde_json::Value = resp.json().await.unwrap();
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    let stamps = parse_stamps(content);
    assert_eq!(stamps.len(), 4);
    assert!(stamps.iter().all(|s| *s >= before && *s <= now_micros()));
    assert_eq!(v["usage"]["completion_tokens"], 4);
}
