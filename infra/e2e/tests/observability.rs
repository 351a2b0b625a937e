//! What an operator watches, through the real binaries: `/metrics` on the gateway's API port
//! and on each worker's `METRICS_ADDR` (every documented family from start-up, route labels
//! as templates), the workers' `/healthz` and `/readyz`, and one trace id followed through the
//! JSON logs of the gateway and the worker that applied the command.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use confab_e2e::*;
use reqwest::Method;

/// The families `infra/ops/metrics.txt` documents (alerts and dashboards are checked
/// against it), with the `process_*` ones every process exports.
fn documented_families() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../ops/metrics.txt");
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

async fn scrape(url: &str) -> (u16, String, String) {
    let r = reqwest::get(url).await.unwrap();
    let status = r.status().as_u16();
    let ctype = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (status, ctype, r.text().await.unwrap())
}

/// The value of the sample `series` (name and labels exactly as exposed), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Scrapes `url` until `series` reaches `at_least` (workers sample Redis every few seconds).
async fn wait_for_sample(url: &str, series: &str, at_least: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, _, text) = scrape(url).await;
        if sample(&text, series).is_some_and(|v| v >= at_least) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never reached {at_least} at {url}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn gateway_and_workers_export_every_family_from_start_up() {
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let mut stack = Stack::with(1, 0, 0, &[]).await;
    stack
        .add_worker("persistence", &[("METRICS_ADDR", metrics_addr.as_str())])
        .await;
    let worker = format!("http://{metrics_addr}");
    let gateway = format!("{}/metrics", stack.gw().url());

    // Before any traffic: every documented family, counters at zero with known labels.
    for url in [gateway.clone(), format!("{worker}/metrics")] {
        let (status, ctype, text) = scrape(&url).await;
        assert_eq!(status, 200, "{url}");
        assert!(ctype.starts_with("text/plain"), "{url}: {ctype}");
        for family in documented_families() {
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{url} lacks {family}:\n{text}"
            );
        }
        assert_eq!(
            sample(
                &text,
                r#"confab_commands_total{kind="send_message",outcome="dead_lettered"}"#
            ),
            Some(0.0),
            "{url}"
        );
    }
    let (_, _, text) = scrape(&gateway).await;
    assert_eq!(
        sample(
            &text,
            r#"confab_http_requests_total{method="POST",route="/api/conversations/:id/messages",status="201"}"#
        ),
        Some(0.0),
        "{text}"
    );
    let (status, _, _) = scrape(&format!("{worker}/healthz")).await;
    assert_eq!(status, 200);
    // The one persistence replica owns every partition once it is ready.
    let partitions = partition_count() as f64;
    wait_for_sample(
        &format!("{worker}/metrics"),
        "confab_partitions_owned",
        partitions,
    )
    .await;
    let (status, _, _) = scrape(&format!("{worker}/readyz")).await;
    assert_eq!(status, 200);

    // Traffic: a send is counted under its route template, never its ids.
    let http = stack.http();
    let conv = http.create_conversation().await;
    http.send_ok(&conv, "customer", "hello").await;
    let unknown = "/api/conversations/00000000-0000-4000-8000-000000000000";
    assert_eq!(http.get(unknown).await.0, 404);
    let (_, _, text) = scrape(&gateway).await;
    assert_eq!(
        sample(
            &text,
            r#"confab_http_requests_total{method="POST",route="/api/conversations/:id/messages",status="201"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"confab_http_requests_total{method="GET",route="/api/conversations/:id",status="404"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert!(!text.contains(&conv), "a raw id became a label:\n{text}");
    assert!(!text.contains("00000000-0000-4000"), "{text}");

    // The worker counts what it applied (create + send).
    wait_for_sample(
        &format!("{worker}/metrics"),
        r#"confab_commands_total{kind="send_message",outcome="applied"}"#,
        1.0,
    )
    .await;
    let text = wait_for_sample(
        &format!("{worker}/metrics"),
        r#"confab_commands_total{kind="create_conversation",outcome="applied"}"#,
        1.0,
    )
    .await;
    assert!(
        sample(&text, "confab_command_apply_seconds_count").is_some_and(|n| n >= 2.0),
        "{text}"
    );
    assert_eq!(sample(&text, "confab_dead_letters"), Some(0.0));
    assert_eq!(sample(&text, "confab_redis_up"), Some(1.0));
    assert!(sample(&text, "process_resident_memory_bytes").is_some_and(|b| b > 0.0));
}

/// Every line of `log` that mentions `trace_id`, parsed; panics on a line that is not JSON.
fn json_lines_with(log: &str, trace_id: &str) -> Vec<Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<Value>(l)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"))
        })
        .filter(|v| v.to_string().contains(trace_id))
        .collect()
}

#[tokio::test]
async fn a_known_traceparent_is_in_the_gateway_and_worker_json_logs() {
    let env = [
        ("LOG_FORMAT", "json"),
        ("RUST_LOG", "info,confab_gateway=debug,confab_workers=debug"),
    ];
    let stack = Stack::with(1, 1, 0, &env).await;
    let http = stack.http();
    let conv = http.create_conversation().await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let rb = http
        .request(Method::POST, &format!("/api/conversations/{conv}/messages"))
        .header("traceparent", &traceparent)
        .json(&json!({"sender": "customer", "content": "traced", "timestamp": "2025-04-05T14:00:00Z"}));
    let response = rb.send().await.unwrap();
    assert_eq!(
        response.status().as_u16(),
        201,
        "{:?}",
        response.text().await
    );
    // The answer continues the caller's trace (same trace id, the gateway's own span id).
    let answered = response
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        answered.starts_with(&format!("00-{trace_id}-")) && answered != traceparent,
        "{answered}"
    );

    // A request without one gets a fresh trace.
    let response = http
        .request(Method::GET, &format!("/api/conversations/{conv}"))
        .send()
        .await
        .unwrap();
    let fresh = response
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert_eq!(fresh.len(), 55, "{fresh}");
    assert!(!fresh.contains(trace_id));

    // A WebSocket send carries its own traceparent in the frame.
    let ws_trace = "5a0c4b0e1f2d3c4b5a697887a6b5c4d3";
    let mut ws = Ws::connect(&stack.gw().ws_url(), None).await;
    ws.subscribe(&conv, None).await;
    let mut frame = send_frame(&conv, "c-1", "customer", "traced over ws");
    frame["traceparent"] = json!(format!("00-{ws_trace}-1111111111111111-01"));
    ws.send_json(&frame).await;
    ws.wait_type("ack").await;

    // Both processes log under the caller's trace id, every line a JSON object; the
    // gateway also logs the event's delivery under it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let worker = &stack.workers[0];
    loop {
        let ws_applied = json_lines_with(&worker.log(), ws_trace)
            .iter()
            .any(|l| l["fields"]["message"] == "command applied");
        let ws_delivered = json_lines_with(&stack.gw().log(), ws_trace)
            .iter()
            .any(|l| l["fields"]["message"] == "delivering an event");
        let gw_lines = json_lines_with(&stack.gw().log(), trace_id);
        let worker_lines = json_lines_with(&worker.log(), trace_id);
        let applied = worker_lines
            .iter()
            .any(|l| l["fields"]["message"] == "command applied");
        let queued = gw_lines
            .iter()
            .any(|l| l["fields"]["message"] == "queueing a command");
        if applied && queued && ws_applied && ws_delivered {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "trace {trace_id} not in both logs\n--- gateway\n{}\n--- worker\n{}",
            stack.gw().log(),
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An OTLP/HTTP receiver on a free port: records every request body it is sent and answers
/// 200 (an empty `ExportTraceServiceResponse`). What it receives is checked byte for byte;
/// nothing about the gateway's behaviour depends on it.
async fn otlp_receiver() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // One request: headers, then Content-Length bytes of body.
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 8192];
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let path = head
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or_default()
                        .to_string();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        let mut chunk = [0u8; 8192];
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = buf[head_end..head_end + len].to_vec();
                    buf.drain(..head_end + len);
                    let _ = tx.send((path, body));
                    let reply = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if sock.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, rx)
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test]
async fn spans_of_one_send_are_exported_over_otlp_in_the_callers_trace() {
    let (endpoint, mut received) = otlp_receiver().await;
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let stack = Stack::with(1, 1, 0, &env).await;
    let http = stack.http();
    let conv = http.create_conversation().await;
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let response = http
        .request(Method::POST, &format!("/api/conversations/{conv}/messages"))
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .json(&json!({"sender": "customer", "content": "exported", "timestamp": "2025-04-05T14:00:00Z"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);

    // Both the gateway's request span and the worker's apply span reach the collector,
    // carrying the caller's trace id (raw 16 bytes in the protobuf body).
    let want = hex_bytes(trace_id);
    let (mut gateway_span, mut apply_span) = (false, false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !(gateway_span && apply_span) {
        let next = tokio::time::timeout_at(deadline, received.recv()).await;
        let Ok(Some((path, body))) = next else {
            panic!(
                "spans not exported (gateway {gateway_span}, worker {apply_span})\n--- gateway\n{}\n--- worker\n{}",
                stack.gw().log(),
                stack.workers[0].log()
            );
        };
        assert_eq!(path, "/v1/traces");
        let has_trace = body.windows(16).any(|w| w == want.as_slice());
        let has = |name: &[u8]| body.windows(name.len()).any(|w| w == name);
        gateway_span |= has_trace && has(b"request") && has(b"confab-gateway");
        apply_span |= has_trace && has(b"apply") && has(b"confab-persistence");
    }
}
