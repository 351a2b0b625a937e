//! Helpers shared by the API tests: start the mock, post requests, read SSE.

use std::time::{Duration, Instant};

use futures::StreamExt;
use mock_openai::{MockConfig, MockServer, StatsSnapshot};
use serde_json::{json, Value};

pub async fn start(config: MockConfig) -> MockServer {
    MockServer::start(config).await.expect("mock starts")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// A request with one system and one user message.
pub fn body(user: &str, stream: bool) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "stream": stream,
        "messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": user},
        ],
    })
}

pub async fn post(server: &MockServer, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}/chat/completions", server.base_url()))
        .json(body)
        .send()
        .await
        .expect("request sent")
}

/// One received body piece.
pub struct Piece {
    pub bytes: Vec<u8>,
}

/// Reads the body until it ends or fails; returns the pieces and the error.
pub async fn read_all(resp: reqwest::Response) -> (Vec<Piece>, Option<reqwest::Error>) {
    let mut pieces = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(item) = stream.next().await {
        match item {
            Ok(b) => pieces.push(Piece { bytes: b.to_vec() }),
            Err(e) => return (pieces, Some(e)),
        }
    }
    (pieces, None)
}

pub fn text_of(pieces: &[Piece]) -> String {
    let bytes: Vec<u8> = pieces.iter().flat_map(|p| p.bytes.clone()).collect();
    String::from_utf8(bytes).expect("utf-8 body")
}

/// Splits an SSE body into its `data:` payloads, asserting the exact
/// `data: <payload>\n\n` framing of every event.
pub fn events(raw: &str) -> Vec<String> {
    assert!(
        raw.is_empty() || raw.ends_with("\n\n"),
        "unterminated event in {raw:?}"
    );
    raw.split_terminator("\n\n")
        .map(|event| {
            assert!(!event.contains('\n'), "multi-line event {event:?}");
            event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("event without `data: ` prefix: {event:?}"))
                .to_string()
        })
        .collect()
}

/// Parses every payload except a trailing `[DONE]`.
pub fn json_events(payloads: &[String]) -> Vec<Value> {
    payloads
        .iter()
        .filter(|p| p.as_str() != "[DONE]")
        .map(|p| serde_json::from_str(p).expect("chunk is JSON"))
        .collect()
}

/// Concatenated `delta.content` of content chunks.
pub fn content_of(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"].get(0)?["delta"]["content"].as_str())
        .collect()
}

/// Number of chunks carrying non-empty content.
pub fn content_chunks(chunks: &[Value]) -> usize {
    chunks
        .iter()
        .filter(|c| {
            c["choices"]
                .get(0)
                .and_then(|ch| ch["delta"]["content"].as_str())
                .is_some_and(|s| !s.is_empty())
        })
        .count()
}

/// Polls the stats until `pred` holds (or panics after 30 s: only a guard against hanging).
pub async fn wait_stats(
    server: &MockServer,
    pred: impl Fn(&StatsSnapshot) -> bool,
) -> StatsSnapshot {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = server.stats();
        if pred(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "stats never matched: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
