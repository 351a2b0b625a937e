//! Error statuses, cut connections, in-stream errors and `fail=N`.

use mock_openai::MockConfig;
use serde_json::{json, Value};

use crate::common::*;

async fn error_of(resp: reqwest::Response) -> Value {
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v: Value = resp.json().await.expect("error body is JSON");
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
    e.clone()
}

#[tokio::test]
async fn status_429_has_retry_after_and_openai_body() {
    let server = start(MockConfig::fast()).await;
    for stream in [true, false] {
        let resp = post(
            &server,
            &body("hi [[mock status=429 retry_after=7]]", stream),
        )
        .await;
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "7");
        let e = error_of(resp).await;
        assert_eq!(e["type"], "requests");
        assert_eq!(e["code"], "rate_limit_exceeded");
        assert!(e["param"].is_null());
    }
    let resp = post(&server, &body("[[mock status=429]]", true)).await;
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(server.stats().by_status.get("429"), Some(&3));
}

#[tokio::test]
async fn status_directives_map_to_openai_errors() {
    let server = start(MockConfig::fast()).await;
    let cases = [
        (401, "invalid_request_error", json!("invalid_api_key")),
        (404, "invalid_request_error", json!("model_not_found")),
        (500, "server_error", Value::Null),
        (503, "server_error", Value::Null),
    ];
    for (status, kind, code) in cases {
        let resp = post(&server, &body(&format!("[[mock status={status}]]"), true)).await;
        assert_eq!(resp.status().as_u16(), status);
        assert!(resp.headers().get("retry-after").is_none());
        let e = error_of(resp).await;
        assert_eq!(e["type"], kind, "{status}");
        assert_eq!(e["code"], code, "{status}");
    }
    let stats = server.stats();
    assert_eq!((stats.requests, stats.completed, stats.aborted), (4, 0, 0));
}

#[tokio::test]
async fn api_key_is_enforced_when_configured() {
    let server = start(MockConfig {
        api_key: Some("sk-test-secret".into()),
        ..MockConfig::fast()
    })
    .await;
    let url = format!("{}/chat/completions", server.base_url());
    let b = body("hello", false);
    for auth in [
        None,
        Some("Bearer wrong-key-123456"),
        Some("sk-test-secret"),
    ] {
        let mut req = client().post(&url).json(&b);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{auth:?}");
        let e = error_of(resp).await;
        assert_eq!(e["code"], "invalid_api_key");
        assert!(!e["message"].as_str().unwrap().contains("wrong-key-123456"));
    }
    let models = client()
        .get(format!("{}/models", server.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 401);
    let ok = client()
        .post(&url)
        .bearer_auth("sk-test-secret")
        .json(&b)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let v: Value = ok.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
}

#[tokio::test]
async fn cut_drops_the_connection_mid_stream() {
    let server = start(MockConfig::fast()).await;
    let resp = post(&server, &body("[[mock cut=3 tokens=20]]", true)).await;
    assert_eq!(resp.status(), 200);
    let (pieces, err) = read_all(resp).await;
    assert!(err.is_some(), "body must end with a transport error");
    let raw = text_of(&pieces);
    assert!(!raw.contains("[DONE]"));
    let chunks = json_events(&events(&raw));
    assert_eq!(content_of(&chunks), "w1 w2 w3 ");
    assert_eq!(chunks.len(), 4, "role chunk + 3 content chunks");
    assert!(chunks
        .iter()
        .all(|c| c["choices"][0]["finish_reason"].is_null()));
    let stats = wait_stats(&server, |s| s.cut == 1).await;
    assert_eq!((stats.completed, stats.aborted, stats.in_flight), (0, 0, 0));

    // Non-streaming: the connection drops before a complete body.
    let resp = client()
        .post(format!("{}/chat/completions", server.base_url()))
        .json(&body("[[mock cut=1]]", false))
        .send()
        .await;
    match resp {
        Err(_) => {}
        Ok(r) => assert!(r.bytes().await.is_err(), "body must not complete"),
    }
}

#[tokio::test]
async fn stream_error_sends_error_event_then_closes() {
    let server = start(MockConfig::fast()).await;
    for (directive, before) in [("stream_error", 2), ("stream_error=5", 5)] {
        let b = body(&format!("[[mock {directive} tokens=20]]"), true);
        let resp = post(&server, &b).await;
        assert_eq!(resp.status(), 200);
        let (pieces, err) = read_all(resp).await;
        assert!(err.is_none(), "stream closes cleanly");
        let payloads = events(&text_of(&pieces));
        assert!(!payloads.iter().any(|p| p == "[DONE]"));
        let chunks = json_events(&payloads);
        assert_eq!(content_chunks(&chunks), before, "{directive}");
        let last = chunks.last().unwrap();
        assert_eq!(last["error"]["type"], "server_error");
        assert!(last["error"]["code"].is_null());
        assert!(last["error"]["message"].as_str().is_some());
        assert!(last.get("choices").is_none());
    }
    assert_eq!(
        wait_stats(&server, |s| s.stream_errors == 2)
            .await
            .completed,
        0
    );
    let resp = post(&server, &body("[[mock stream_error]]", false)).await;
    assert_eq!(resp.status(), 500);
    assert_eq!(error_of(resp).await["type"], "server_error");
}

#[tokio::test]
async fn fail_n_fails_first_n_then_succeeds() {
    let server = start(MockConfig::fast()).await;
    let b = body("retry me [[mock status=503 fail=2 tokens=4]]", true);
    for _ in 0..2 {
        assert_eq!(post(&server, &b).await.status(), 503);
    }
    let (pieces, err) = read_all(post(&server, &b).await).await;
    assert!(err.is_none());
    let payloads = events(&text_of(&pieces));
    assert_eq!(payloads.last().unwrap(), "[DONE]");
    assert_eq!(content_of(&json_events(&payloads)), "w1 w2 w3 w4");

    // A different conversation has its own count; cut obeys fail= as well.
    let other = body("other [[mock cut=1 fail=1 tokens=4]]", true);
    let (_, err) = read_all(post(&server, &other).await).await;
    assert!(err.is_some(), "first attempt is cut");
    let (pieces, err) = read_all(post(&server, &other).await).await;
    assert!(err.is_none(), "second attempt succeeds");
    assert!(text_of(&pieces).ends_with("data: [DONE]\n\n"));

    // Without fail= the failure is permanent.
    let permanent = body("[[mock status=500]]", false);
    for _ in 0..3 {
        assert_eq!(post(&server, &permanent).await.status(), 500);
    }
    let stats = wait_stats(&server, |s| s.completed == 2).await;
    assert_eq!(stats.by_status.get("503"), Some(&2));
    assert_eq!(stats.by_status.get("500"), Some(&3));
    assert_eq!(stats.cut, 1);

    // Reset forgets the history: the first conversation fails again.
    server.reset();
    assert_eq!(post(&server, &b).await.status(), 503);
}
