//! Non-streaming answers, models, stats endpoints, routes and parsing.

use mock_openai::{demo_reply, MockConfig, StatsSnapshot, DEMO_MODEL};
use serde_json::{json, Value};

use crate::common::*;

#[tokio::test]
async fn non_streaming_completion_object() {
    let server = start(MockConfig::default()).await;
    let resp = post(&server, &body("Show me a table [[mock delay_ms=1]]", false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v: Value = resp.json().await.unwrap();
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-4o-mini");
    let choice = &v["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["message"]["role"], "assistant");
    let content = choice["message"]["content"].as_str().unwrap();
    assert_eq!(content, demo_reply("Show me a table"));
    assert!(
        content.contains("> Show me a table\n"),
        "directive stripped from echo"
    );
    assert!(!content.contains("[[mock"));
    let usage = &v["usage"];
    let completion = usage["completion_tokens"].as_u64().unwrap();
    assert_eq!(completion as usize, mock_openai::tokenize(content).len());
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + completion
    );
    assert_eq!(server.stats().completed, 1);
}

#[tokio::test]
async fn lenient_request_parsing() {
    let server = start(MockConfig::fast()).await;
    // Content parts, null content, names, no model, unknown fields.
    let b = json!({
        "temperature": 0.2,
        "tools": [],
        "messages": [
            {"role": "assistant", "content": null},
            {"role": "user", "name": "ann",
             "content": [{"type": "text", "text": "[[mock tokens=2]]"},
                         {"type": "image_url", "image_url": {"url": "data:x"}}]},
        ],
    });
    let v: Value = post(&server, &b).await.json().await.unwrap();
    assert_eq!(v["model"], DEMO_MODEL);
    assert_eq!(v["choices"][0]["message"]["content"], "w1 w2");

    for bad in [json!({"model": "m"}), json!([1, 2])] {
        let resp = post(&server, &bad).await;
        assert_eq!(resp.status(), 400);
        let e: Value = resp.json().await.unwrap();
        assert_eq!(e["error"]["type"], "invalid_request_error");
    }
    let resp = client()
        .post(format!("{}/chat/completions", server.base_url()))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(server.stats().by_status.get("400"), Some(&3));
}

#[tokio::test]
async fn models_and_routes() {
    let server = start(MockConfig::fast()).await;
    let c = client();
    let list: Value = c
        .get(format!("{}/models", server.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, MockConfig::default().models);
    assert!(list["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["object"] == "model"));

    let one = c
        .get(format!("{}/models/{DEMO_MODEL}", server.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 200);
    let missing = c
        .get(format!("{}/models/nope", server.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let e: Value = missing.json().await.unwrap();
    assert_eq!(e["error"]["code"], "model_not_found");

    // Base URL without /v1.
    let resp = c
        .post(format!("http://{}/chat/completions", server.addr()))
        .json(&body("[[mock tokens=1]]", false))
        .send()
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "w1");

    let unknown = c
        .get(format!("http://{}/v1/nothing", server.addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let e: Value = unknown.json().await.unwrap();
    assert_eq!(e["error"]["type"], "invalid_request_error");
    let wrong_method = c
        .get(format!("{}/chat/completions", server.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), 405);
}

#[tokio::test]
async fn stats_and_reset_endpoints() {
    let server = start(MockConfig::fast()).await;
    let c = client();
    post(&server, &body("[[mock tokens=2]]", false)).await;
    post(&server, &body("[[mock status=429]]", false)).await;
    let stats: StatsSnapshot = c
        .get(format!("http://{}/_mock/stats", server.addr()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            stats.requests,
            stats.completed,
            stats.aborted,
            stats.in_flight
        ),
        (2, 1, 0, 0)
    );
    assert_eq!(stats.by_status.get("200"), Some(&1));
    assert_eq!(stats.by_status.get("429"), Some(&1));
    let raw: Value = c
        .get(format!("http://{}/_mock/stats", server.addr()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for key in ["requests", "completed", "aborted", "in_flight", "by_status"] {
        assert!(raw.get(key).is_some(), "{key} missing in {raw}");
    }
    let after: StatsSnapshot = c
        .post(format!("http://{}/_mock/reset", server.addr()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(after, StatsSnapshot::default());
    assert_eq!(server.stats(), StatsSnapshot::default());
}

#[tokio::test]
async fn run_serves_until_shutdown() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(mock_openai::run(listener, MockConfig::fast(), async move {
        let _ = rx.await;
    }));
    let health = client()
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    tx.send(()).unwrap();
    let result = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
    assert!(matches!(result, Ok(Ok(Ok(())))), "{result:?}");
    assert!(client()
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .is_err());
}
