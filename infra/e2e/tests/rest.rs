//! The seed's REST API through the real gateway and persistence worker: every endpoint
//! field for field, every bad input with its status and error shape, limits, routing, and
//! what a client sees when no worker answers in time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use confab_e2e::*;
use reqwest::Method;

in_both_modes!(seed_endpoints_answer_field_for_field,);

const TS1: &str = "2025-04-05T14:00:00Z";
const TS2: &str = "2025-04-05T14:00:00.5+02:00";

/// Every gateway still runs, answers `/healthz`, and never logged a panic.
async fn assert_healthy(stack: &mut Stack) {
    for gw in &mut stack.gateways {
        assert!(gw.is_running(), "gateway {} died\n{}", gw.id(), gw.log());
        let (status, body) = gw.http().get("/healthz").await;
        assert_eq!((status, body), (200, json!({"status": "ok"})));
        assert!(
            !gw.log().contains("panicked"),
            "gateway {} panicked:\n{}",
            gw.id(),
            gw.log()
        );
    }
    for w in &mut stack.workers {
        assert!(w.is_running(), "worker {} died\n{}", w.name(), w.log());
        assert!(
            !w.log().contains("panicked"),
            "worker panicked:\n{}",
            w.log()
        );
    }
}

async fn seed_endpoints_answer_field_for_field(mode: Mode) {
    let mut stack = Stack::in_mode(mode, 1, 1, 0, &[]).await;
    let http = stack.http();

    // Create, exactly as the seed's curl does it: no body at all.
    let (status, body) = http.post_empty("/api/conversations").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(keys_of(&body), ["conversationId"]);
    let conv = conversation_id(&body);
    assert!(is_uuid(&conv), "{conv}");

    // Create with an empty JSON object.
    let (status, body) = http.post("/api/conversations", &json!({})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(keys_of(&body), ["conversationId"]);
    let other = conversation_id(&body);
    assert!(is_uuid(&other) && other != conv);

    // Send: the seed's body and answer.
    let (status, body) = http
        .send_message(&conv, "customer", "Hi, I need help!", TS1)
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(keys_of(&body), ["message", "messageId"]);
    assert_eq!(body["message"], "Message added successfully");
    let m1 = str_field(&body, "messageId");
    assert!(is_uuid(&m1));
    let (status, body) = http
        .send_message(&conv, "agent", "Hello, how can I help?", TS2)
        .await;
    assert_eq!(status, 201, "{body}");
    let m2 = str_field(&body, "messageId");
    let odd = "Grüße 👋 \"quoted\" <b>bold</b> \\ back\nslash";
    let (status, body) = http
        .send_message(&conv, "customer", odd, "2025-04-05T14:01:00Z")
        .await;
    assert_eq!(status, 201, "{body}");
    let m3 = str_field(&body, "messageId");
    assert!(m1 != m2 && m2 != m3 && m1 != m3);

    // Get: exactly the seed's shape, messages in send order, timestamps as sent.
    let res = http
        .request(Method::GET, &format!("/api/conversations/{conv}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let ct = res.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("application/json"), "{ct}");
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body,
        json!({
            "conversationId": conv,
            "messages": [
                {"messageId": m1, "sender": "customer", "content": "Hi, I need help!", "timestamp": TS1},
                {"messageId": m2, "sender": "agent", "content": "Hello, how can I help?", "timestamp": TS2},
                {"messageId": m3, "sender": "customer", "content": odd, "timestamp": "2025-04-05T14:01:00Z"},
            ]
        })
    );

    // Delete: the seed's answer; the message is gone, the others keep their order.
    let answer = http.delete_message(&conv, &m2).await;
    assert_eq!(
        answer,
        (200, json!({"message": "Message deleted successfully"}))
    );
    let ids: Vec<Value> = http
        .messages(&conv)
        .await
        .iter()
        .map(|m| m["messageId"].clone())
        .collect();
    assert_eq!(ids, [json!(m1), json!(m3)]);

    // The other conversation exists and is empty.
    assert_eq!(
        http.conversation(&other).await,
        (200, json!({"conversationId": other, "messages": []}))
    );
    assert_healthy(&mut stack).await;
}

#[tokio::test]
async fn every_iso_8601_form_is_kept_exactly_as_sent() {
    let mut stack = Stack::start(&[]).await;
    let http = stack.http();
    let conv = http.create_conversation().await;
    let forms = [
        "2025-04-05T14:00:00Z",
        "2025-04-05T14:00:00.5+02:00",
        "2025-04-05T14:00:00.123456789Z",
        "2025-04-05T14:00:00+0200",
        "2025-04-05T14:00:00-05:30",
        "2025-04-05T14:00:00",
        "2025-04-05T14:00",
        "2024-02-29T23:59:59.999Z",
    ];
    for ts in forms {
        let (status, body) = http.send_message(&conv, "agent", ts, ts).await;
        assert_eq!(status, 201, "{ts}: {body}");
    }
    let got: Vec<(String, String)> = http
        .messages(&conv)
        .await
        .iter()
        .map(|m| (str_field(m, "content"), str_field(m, "timestamp")))
        .collect();
    let want: Vec<(String, String)> = forms
        .iter()
        .map(|t| (t.to_string(), t.to_string()))
        .collect();
    assert_eq!(got, want);
    assert_healthy(&mut stack).await;
}

#[tokio::test]
async fn a_get_right_after_a_post_sees_it() {
    let stack = Stack::with(2, 1, 0, &[]).await;
    let a = stack.gateways[0].http();
    let b = stack.gateways[1].http();
    let conv = a.create_conversation().await;
    // The 201 comes after the write: the next read, through either gateway, sees it.
    assert_eq!(b.messages(&conv).await, Vec::<Value>::new());
    for i in 0..30 {
        let (writer, reader) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let id = writer.send_ok(&conv, "customer", &format!("m{i}")).await;
        let msgs = reader.messages(&conv).await;
        assert_eq!(msgs.len(), i + 1);
        assert_eq!(msgs[i]["messageId"], id.as_str());
        let (status, _) = writer.delete_message(&conv, &id).await;
        assert_eq!(status, 200);
        let msgs = reader.messages(&conv).await;
        assert!(msgs.iter().all(|m| m["messageId"] != id.as_str()));
        writer.send_ok(&conv, "customer", &format!("m{i}")).await;
    }
}

#[tokio::test]
async fn order_is_send_order_after_deletes() {
    let stack = Stack::start(&[]).await;
    let http = stack.http();
    let conv = http.create_conversation().await;
    let mut ids = Vec::new();
    for i in 0..12 {
        let sender = if i % 3 == 0 { "agent" } else { "customer" };
        ids.push(http.send_ok(&conv, sender, &format!("message {i}")).await);
    }
    for i in [0, 5, 6, 11] {
        let (status, body) = http.delete_message(&conv, &ids[i]).await;
        assert_eq!(status, 200, "{body}");
    }
    let mut want: Vec<String> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| ![0, 5, 6, 11].contains(i))
        .map(|(_, id)| id.clone())
        .collect();
    for i in 12..15 {
        want.push(http.send_ok(&conv, "agent", &format!("message {i}")).await);
    }
    let got: Vec<String> = http
        .messages(&conv)
        .await
        .iter()
        .map(|m| str_field(m, "messageId"))
        .collect();
    assert_eq!(got, want);
    let contents: Vec<String> = http
        .messages(&conv)
        .await
        .iter()
        .map(|m| str_field(m, "content"))
        .collect();
    let want_contents: Vec<String> = [1, 2, 3, 4, 7, 8, 9, 10, 12, 13, 14]
        .iter()
        .map(|i| format!("message {i}"))
        .collect();
    assert_eq!(contents, want_contents);
}

#[tokio::test]
async fn bad_messages_are_refused_with_the_error_shape_and_store_nothing() {
    let mut stack = Stack::start(&[]).await;
    let http = stack.http();
    let conv = http.create_conversation().await;
    let path = format!("/api/conversations/{conv}/messages");

    let json_cases: Vec<(&str, Value, &str)> = vec![
        (
            "no sender",
            json!({"content": "x", "timestamp": TS1}),
            "invalid_sender",
        ),
        (
            "sender bot",
            json!({"sender": "bot", "content": "x", "timestamp": TS1}),
            "invalid_sender",
        ),
        (
            "sender Customer",
            json!({"sender": "Customer", "content": "x", "timestamp": TS1}),
            "invalid_sender",
        ),
        (
            "sender assistant",
            json!({"sender": "assistant", "content": "x", "timestamp": TS1}),
            "invalid_sender",
        ),
        (
            "sender number",
            json!({"sender": 7, "content": "x", "timestamp": TS1}),
            "invalid_sender",
        ),
        (
            "no content",
            json!({"sender": "agent", "timestamp": TS1}),
            "invalid_content",
        ),
        (
            "content null",
            json!({"sender": "agent", "content": null, "timestamp": TS1}),
            "invalid_content",
        ),
        (
            "empty content",
            json!({"sender": "agent", "content": "", "timestamp": TS1}),
            "invalid_content",
        ),
        (
            "blank content",
            json!({"sender": "agent", "content": " \n\t ", "timestamp": TS1}),
            "invalid_content",
        ),
        (
            "content number",
            json!({"sender": "agent", "content": 42, "timestamp": TS1}),
            "invalid_content",
        ),
        (
            "content array",
            json!({"sender": "agent", "content": ["hi"], "timestamp": TS1}),
            "invalid_content",
        ),
        (
            "content object",
            json!({"sender": "agent", "content": {"text": "hi"}, "timestamp": TS1}),
            "invalid_content",
        ),
        (
            "no timestamp",
            json!({"sender": "agent", "content": "x"}),
            "invalid_timestamp",
        ),
        (
            "timestamp null",
            json!({"sender": "agent", "content": "x", "timestamp": null}),
            "invalid_timestamp",
        ),
        (
            "timestamp words",
            json!({"sender": "agent", "content": "x", "timestamp": "yesterday"}),
            "invalid_timestamp",
        ),
        (
            "date only",
            json!({"sender": "agent", "content": "x", "timestamp": "2025-04-05"}),
            "invalid_timestamp",
        ),
        (
            "month 13",
            json!({"sender": "agent", "content": "x", "timestamp": "2025-13-05T14:00:00Z"}),
            "invalid_timestamp",
        ),
        (
            "hour 25",
            json!({"sender": "agent", "content": "x", "timestamp": "2025-04-05T25:00:00Z"}),
            "invalid_timestamp",
        ),
        (
            "empty timestamp",
            json!({"sender": "agent", "content": "x", "timestamp": ""}),
            "invalid_timestamp",
        ),
        (
            "epoch number",
            json!({"sender": "agent", "content": "x", "timestamp": 1743861600}),
            "invalid_timestamp",
        ),
        (
            "rfc 2822",
            json!({"sender": "agent", "content": "x", "timestamp": "Sat, 05 Apr 2025 14:00:00 +0000"}),
            "invalid_timestamp",
        ),
    ];
    for (what, body, code) in &json_cases {
        let answer = http.post(&path, body).await;
        println!("{what}: {answer:?}");
        assert_error(&answer, 400, code);
    }

    let raw_cases: [(&str, &str); 6] = [
        ("truncated JSON", r#"{"sender":"customer","content":"#),
        ("not JSON", "sender=customer&content=hi"),
        ("a JSON array", r#"[{"sender":"customer"}]"#),
        ("a JSON string", r#""hello""#),
        (
            "trailing garbage",
            r#"{"sender":"customer","content":"x","timestamp":"2025-04-05T14:00:00Z"} x"#,
        ),
        ("empty body", ""),
    ];
    for (what, raw) in raw_cases {
        let answer = http
            .post_raw(&path, Some("application/json"), raw.to_string())
            .await;
        println!("{what}: {answer:?}");
        assert_error(&answer, 400, "invalid_json");
    }

    // Malformed ids are a 400, not a 404.
    let good = json!({"sender": "agent", "content": "x", "timestamp": TS1});
    assert_error(
        &http.get("/api/conversations/not-a-uuid").await,
        400,
        "invalid_id",
    );
    assert_error(
        &http.post("/api/conversations/12345/messages", &good).await,
        400,
        "invalid_id",
    );
    assert_error(
        &http
            .delete(&format!("/api/conversations/nope/messages/{}", random_id()))
            .await,
        400,
        "invalid_id",
    );
    assert_error(
        &http
            .delete(&format!("/api/conversations/{conv}/messages/not-a-uuid"))
            .await,
        400,
        "invalid_id",
    );

    // Nothing was stored, and the gateway is fine.
    assert_eq!(http.messages(&conv).await, Vec::<Value>::new());
    assert_eq!(
        stack
            .redis
            .q::<u64>(&["HLEN", &format!("confab:conv:{{{conv}}}:msgs")])
            .await,
        0
    );
    http.send_ok(&conv, "customer", "still works").await;
    assert_eq!(http.messages(&conv).await.len(), 1);
    assert_healthy(&mut stack).await;
}

#[tokio::test]
async fn oversized_content_and_bodies_are_413() {
    let mut stack = Stack::start(&[("MAX_MESSAGE_BYTES", "1024")]).await;
    let http = stack.http();
    let conv = http.create_conversation().await;

    // Exactly at the limit is fine; one byte over is 413; the limit counts bytes, not chars.
    let (status, body) = http
        .send_message(&conv, "agent", &"a".repeat(1024), TS1)
        .await;
    assert_eq!(status, 201, "{body}");
    let over = http
        .send_message(&conv, "agent", &"a".repeat(1025), TS1)
        .await;
    assert_error(&over, 413, "content_too_large");
    let euros = "€".repeat(342); // 342 chars, 1026 bytes
    assert_error(
        &http.send_message(&conv, "agent", &euros, TS1).await,
        413,
        "content_too_large",
    );
    let (status, _) = http
        .send_message(&conv, "agent", &"€".repeat(341), TS1)
        .await;
    assert_eq!(status, 201);

    // A body far over any limit gets its 413 answer (read, not a reset connection).
    let huge = format!(
        r#"{{"sender":"agent","timestamp":"{TS1}","content":"{}"}}"#,
        "x".repeat(4 * 1024 * 1024)
    );
    let path = format!("/api/conversations/{conv}/messages");
    let answer = http
        .try_send(
            http.request(Method::POST, &path)
                .header("content-type", "application/json")
                .body(huge.clone()),
        )
        .await
        .unwrap_or_else(|e| panic!("a 4 MB body must get an answer, not a transport error: {e}"));
    assert_error(&answer, 413, "payload_too_large");
    let answer = http
        .try_send(
            http.request(Method::POST, "/api/conversations")
                .header("content-type", "application/json")
                .body(huge),
        )
        .await
        .unwrap_or_else(|e| panic!("a 4 MB body must get an answer, not a transport error: {e}"));
    assert_error(&answer, 413, "payload_too_large");

    let msgs = http.messages(&conv).await;
    assert_eq!(
        msgs.len(),
        2,
        "only the two messages within the limit are stored"
    );
    assert_healthy(&mut stack).await;
}

#[tokio::test]
async fn a_huge_body_at_default_limits_is_answered_413() {
    let mut stack = Stack::start(&[]).await;
    let http = stack.http();
    let conv = http.create_conversation().await;
    let huge = format!(
        r#"{{"sender":"agent","timestamp":"{TS1}","content":"{}"}}"#,
        "y".repeat(4 * 1024 * 1024)
    );
    for _ in 0..3 {
        let answer = http
            .try_send(
                http.request(Method::POST, &format!("/api/conversations/{conv}/messages"))
                    .header("content-type", "application/json")
                    .body(huge.clone()),
            )
            .await
            .unwrap_or_else(|e| panic!("no answer to a 4 MB body: {e}"));
        assert_error(&answer, 413, "payload_too_large");
    }
    assert_eq!(http.messages(&conv).await.len(), 0);
    assert_healthy(&mut stack).await;
}

#[tokio::test]
async fn wrong_content_type_is_415() {
    let mut stack = Stack::start(&[]).await;
    let http = stack.http();
    let conv = http.create_conversation().await;
    let path = format!("/api/conversations/{conv}/messages");
    let good = json!({"sender": "agent", "content": "x", "timestamp": TS1}).to_string();
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/xml"),
        None,
    ] {
        let answer = http.post_raw(&path, ct, good.clone()).await;
        println!("{ct:?}: {answer:?}");
        assert_error(&answer, 415, "unsupported_media_type");
    }
    assert_error(
        &http
            .post_raw("/api/conversations", Some("text/plain"), "{}")
            .await,
        415,
        "unsupported_media_type",
    );
    assert_eq!(http.messages(&conv).await.len(), 0);
    // Parameters on the JSON type are fine.
    let (status, body) = http
        .post_raw(&path, Some("application/json; charset=utf-8"), good)
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(http.messages(&conv).await.len(), 1);
    assert_healthy(&mut stack).await;
}

#[tokio::test]
async fn unknown_conversations_and_messages_are_404() {
    let mut stack = Stack::start(&[]).await;
    let http = stack.http();
    let conv = http.create_conversation().await;
    let ghost = random_id();

    assert_error(&http.conversation(&ghost).await, 404, "not_found");
    assert_error(
        &http.send_message(&ghost, "agent", "x", TS1).await,
        404,
        "not_found",
    );
    assert_error(
        &http.delete_message(&ghost, &random_id()).await,
        404,
        "not_found",
    );
    assert_error(
        &http.delete_message(&conv, &random_id()).await,
        404,
        "not_found",
    );
    // A deleted message is unknown the second time.
    let id = http.send_ok(&conv, "agent", "once").await;
    assert_eq!(http.delete_message(&conv, &id).await.0, 200);
    assert_error(&http.delete_message(&conv, &id).await, 404, "not_found");
    // A message id from another conversation is unknown here.
    let conv2 = http.create_conversation().await;
    let id2 = http.send_ok(&conv2, "agent", "elsewhere").await;
    assert_error(&http.delete_message(&conv, &id2).await, 404, "not_found");
    assert_eq!(http.messages(&conv2).await.len(), 1);
    // Nothing was created for the unknown conversation.
    assert!(stack.redis.keys(&conv_key_pattern(&ghost)).await.is_empty());
    assert_healthy(&mut stack).await;
}

#[tokio::test]
async fn unknown_routes_are_404_whatever_the_method() {
    let mut stack = Stack::start(&[]).await;
    let http = stack.http();
    let conv = http.create_conversation().await;
    let mid = http.send_ok(&conv, "agent", "x").await;

    for path in [
        "/api/nope".to_string(),
        "/api".to_string(),
        format!("/api/conversations/{conv}/nope"),
        format!("/api/conversations/{conv}/messages/{mid}/extra"),
        "/readyz/extra".to_string(),
    ] {
        let answer = http.get(&path).await;
        println!("GET {path}: {answer:?}");
        assert_error(&answer, 404, "not_found");
    }
    // A path no route has is a 404 for every method, not a 405.
    for (method, path) in [
        (Method::POST, "/api/nope".to_string()),
        (Method::POST, format!("/api/conversations/{conv}/nope")),
        (Method::DELETE, "/api/nope/1".to_string()),
        (Method::PUT, "/api/users/alice".to_string()),
    ] {
        let answer = http
            .send(http.request(method.clone(), &path).json(&json!({})))
            .await;
        println!("{method} {path}: {answer:?}");
        assert_error(&answer, 404, "not_found");
    }
    assert_eq!(http.messages(&conv).await.len(), 1);
    assert_healthy(&mut stack).await;
}

#[tokio::test]
async fn known_routes_with_the_wrong_method_are_405() {
    let mut stack = Stack::start(&[]).await;
    let http = stack.http();
    let conv = http.create_conversation().await;
    let mid = http.send_ok(&conv, "agent", "x").await;
    let cases = [
        (Method::PUT, "/api/conversations".to_string()),
        (Method::DELETE, "/api/conversations".to_string()),
        (Method::DELETE, format!("/api/conversations/{conv}")),
        (Method::POST, format!("/api/conversations/{conv}")),
        (Method::GET, format!("/api/conversations/{conv}/messages")),
        (Method::PUT, format!("/api/conversations/{conv}/messages")),
        (
            Method::GET,
            format!("/api/conversations/{conv}/messages/{mid}"),
        ),
        (
            Method::PATCH,
            format!("/api/conversations/{conv}/messages/{mid}"),
        ),
        (Method::POST, "/healthz".to_string()),
    ];
    for (method, path) in cases {
        let answer = http.send(http.request(method.clone(), &path)).await;
        println!("{method} {path}: {answer:?}");
        assert_error(&answer, 405, "method_not_allowed");
    }
    // `/ws` is for WebSocket upgrades only.
    assert_error(&http.get("/ws").await, 400, "websocket_required");
    assert_error(
        &http.post("/ws", &json!({})).await,
        405,
        "method_not_allowed",
    );
    // None of that touched the conversation.
    assert_eq!(http.messages(&conv).await.len(), 1);
    assert_healthy(&mut stack).await;
}

#[tokio::test]
async fn a_full_conversation_refuses_more_with_409() {
    let mut stack = Stack::start(&[("MAX_MESSAGES_PER_CONVERSATION", "3")]).await;
    let http = stack.http();
    let conv = http.create_conversation().await;
    let ids = [
        http.send_ok(&conv, "customer", "1").await,
        http.send_ok(&conv, "agent", "2").await,
        http.send_ok(&conv, "customer", "3").await,
    ];
    let full = http.send_message(&conv, "agent", "4", TS1).await;
    assert_error(&full, 409, "conversation_full");
    assert_eq!(http.messages(&conv).await.len(), 3);
    // Deleting one makes room again.
    assert_eq!(http.delete_message(&conv, &ids[1]).await.0, 200);
    let five = http.send_ok(&conv, "agent", "5").await;
    assert_error(
        &http.send_message(&conv, "agent", "6", TS1).await,
        409,
        "conversation_full",
    );
    let got: Vec<String> = http
        .messages(&conv)
        .await
        .iter()
        .map(|m| str_field(m, "messageId"))
        .collect();
    assert_eq!(got, [ids[0].clone(), ids[2].clone(), five]);
    // Other conversations are not affected.
    let other = http.create_conversation().await;
    http.send_ok(&other, "agent", "fine").await;
    assert_healthy(&mut stack).await;
}

#[tokio::test]
async fn health_and_readiness() {
    let mut stack = Stack::start(&[]).await;
    let http = stack.http();
    assert_eq!(http.get("/healthz").await, (200, json!({"status": "ok"})));
    let (status, body) = http.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["gatewayId"], stack.gw().id());

    // Without Redis the gateway is alive but not ready.
    stack.redis.kill();
    eventually_true(
        "readyz turns 503 once Redis is gone",
        DEADLINE,
        async || {
            let (status, body) = http.get("/readyz").await;
            status == 503 && body["status"] == "not_ready"
        },
    )
    .await;
    assert_eq!(http.get("/healthz").await, (200, json!({"status": "ok"})));
    assert!(stack.gateways[0].is_running());
}

#[tokio::test]
async fn without_a_worker_a_send_times_out_with_504_and_is_applied_once_later() {
    let mut stack = Stack::start(&[("REQUEST_TIMEOUT_MS", "700")]).await;
    let http = stack.http();
    let conv = http.create_conversation().await;
    http.send_ok(&conv, "customer", "before").await;

    // No persistence worker: the command waits in the stream, the client gets a 504.
    let status = stack.workers.remove(0).terminate().await;
    assert!(status.success(), "persistence worker exit status: {status}");
    let answer = http
        .send_message(&conv, "agent", "while nobody works", TS1)
        .await;
    assert_error(&answer, 504, "timeout");
    let command_id = answer.1["error"]["commandId"]
        .as_str()
        .unwrap_or_else(|| panic!("no commandId in the 504 body: {}", answer.1))
        .to_string();
    assert!(is_uuid(&command_id), "{command_id}");
    assert_eq!(http.messages(&conv).await.len(), 1, "nothing applied yet");
    // The command is queued in the stream under that id.
    let stream = stack.redis.partition_of(&conv).commands;
    let entries: Vec<(String, Vec<(String, String)>)> = {
        let v: redis::Value = stack.redis.q(&["XRANGE", &stream, "-", "+"]).await;
        let reply: redis::streams::StreamRangeReply = redis::from_redis_value(v).unwrap();
        reply
            .ids
            .into_iter()
            .map(|e| {
                let c: String = e.get("c").unwrap_or_default();
                (e.id, vec![("c".to_string(), c)])
            })
            .collect()
    };
    let queued: Vec<&String> = entries
        .iter()
        .filter(|(_, f)| f[0].1.contains(&command_id))
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        queued.len(),
        1,
        "the timed-out command is in its partition's stream once"
    );
    let entry = queued[0].clone();

    // A worker arrives: the command is applied, exactly once.
    stack.add_worker("persistence", &[]).await;
    let msgs = eventually("the queued message is applied", DEADLINE, async || {
        let m = http.messages(&conv).await;
        (m.len() == 2).then_some(m)
    })
    .await;
    assert_eq!(msgs[1]["content"], "while nobody works");
    assert_eq!(msgs[1]["sender"], "agent");
    let (ms, seq): (String, String) = stack
        .redis
        .q(&["HMGET", &format!("confab:conv:{{{conv}}}"), "cm", "cs"])
        .await;
    assert_eq!(
        format!("{ms}-{seq}"),
        entry,
        "the conversation's cursor is the command's entry: a redelivery is a duplicate"
    );
    // A later send lands after it, and the late one was not applied twice.
    http.send_ok(&conv, "customer", "after").await;
    let contents: Vec<String> = http
        .messages(&conv)
        .await
        .iter()
        .map(|m| str_field(m, "content"))
        .collect();
    assert_eq!(contents, ["before", "while nobody works", "after"]);
    let history = stack.redis.history(&conv).await;
    assert_eq!(history.len(), 3, "one event per applied message");
    assert_healthy(&mut stack).await;
}

#[tokio::test]
async fn a_full_command_backlog_is_refused_with_503_and_nothing_is_lost() {
    // The cap is shared out over the 16 partitions: 5 per partition.
    let mut stack = Stack::start(&[
        ("COMMAND_STREAM_MAX_LEN", "80"),
        ("REQUEST_TIMEOUT_MS", "300"),
    ])
    .await;
    let http = stack.http();
    let conv = http.create_conversation().await;
    let stream = stack.redis.partition_of(&conv).commands;
    let status = stack.workers.remove(0).terminate().await;
    assert!(status.success());

    // With nobody consuming, commands pile up until the cap; then the gateway refuses.
    let mut queued = Vec::new();
    let refused = loop {
        let content = format!("queued {}", queued.len());
        let answer = http.send_message(&conv, "customer", &content, TS1).await;
        match answer.0 {
            504 => {
                assert_error(&answer, 504, "timeout");
                queued.push(content);
            }
            503 => break answer,
            other => panic!("unexpected {other}: {}", answer.1),
        }
        assert!(queued.len() <= 5, "the backlog cap of 5 was not enforced");
    };
    assert_error(&refused, 503, "overloaded");
    assert_eq!(stack.redis.q::<u64>(&["XLEN", &stream]).await, 5);

    // A worker drains the backlog: every queued message lands once, the refused one never.
    stack.add_worker("persistence", &[]).await;
    let n = queued.len();
    eventually_true("the backlog is applied", DEADLINE, async || {
        http.messages(&conv).await.len() == n
    })
    .await;
    let contents: Vec<String> = http
        .messages(&conv)
        .await
        .iter()
        .map(|m| str_field(m, "content"))
        .collect();
    assert_eq!(contents, queued);
    // Processed entries are trimmed, so the backlog frees up and sends are accepted again.
    eventually_true("the processed commands are trimmed", DEADLINE, async || {
        let len: u64 = stack.redis.q(&["XLEN", &stream]).await;
        len < 5
    })
    .await;
    eventually_true("sends are accepted again", DEADLINE, async || {
        http.send_message(&conv, "agent", "accepted again", TS1)
            .await
            .0
            == 201
    })
    .await;
    assert_healthy(&mut stack).await;
}
