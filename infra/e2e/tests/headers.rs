//! HTTP hygiene (issue 10, items 9, 10 and 13): 405 with `Allow`, a repeated or unreadable
//! query or header is a 400 (not a 405), security headers on every response, and no caching
//! of API answers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use confab_e2e::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn raw(gw: &Gateway, request: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", gw.port())).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
        .await
        .expect("the gateway did not answer and close")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn header<'a>(res: &'a reqwest::Response, name: &str) -> &'a str {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn a_405_names_the_allowed_methods() {
    let stack = Stack::start(&[]).await;
    let client = reqwest::Client::new();
    for (method, path, allow) in [
        (reqwest::Method::PUT, "/api/conversations", "POST, GET"),
        (reqwest::Method::PATCH, "/api/sessions", "POST, DELETE"),
        (reqwest::Method::POST, "/healthz", "GET"),
        (
            reqwest::Method::PUT,
            "/api/conversations/5d3c0c7e-0000-4000-8000-000000000000/messages",
            "POST",
        ),
    ] {
        let res = client
            .request(method.clone(), format!("{}{path}", stack.gw().url()))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 405, "{method} {path}");
        assert_eq!(header(&res, "allow"), allow, "{method} {path}");
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "method_not_allowed");
    }
}

#[tokio::test]
async fn a_repeated_query_or_an_unreadable_header_is_a_400() {
    let stack = Stack::start(&[]).await;
    let http = stack.http();
    let authed = http.user("qalice").await;
    let (status, body) = authed.get("/api/users?prefix=al&prefix=al").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_query", "{body}");
    // Without a token the answer is still not a 405.
    let (status, body) = http.get("/api/users?prefix=al&prefix=al").await;
    assert!(status == 400 || status == 401, "{status} {body}");

    for (name, request) in [
        (
            "authorization",
            &b"GET /api/conversations HTTP/1.1\r\nHost: confab\r\nConnection: close\r\nAuthorization: Bearer \xff\xfe\r\n\r\n"[..],
        ),
        (
            "content-type",
            &b"POST /api/conversations HTTP/1.1\r\nHost: confab\r\nConnection: close\r\nContent-Type: application/\xffjson\r\nContent-Length: 2\r\n\r\n{}"[..],
        ),
    ] {
        let answer = raw(stack.gw(), request).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{name}: {answer}");
        assert!(answer.contains("\"code\":\"invalid_header\""), "{name}: {answer}");
    }
}

#[tokio::test]
async fn every_response_carries_the_security_headers_and_api_answers_are_not_cached() {
    let stack = Stack::start(&[]).await;
    let client = reqwest::Client::new();
    let base = stack.gw().url();
    for path in ["/", "/healthz", "/api/conversations", "/api/nope"] {
        let res = client.get(format!("{base}{path}")).send().await.unwrap();
        let csp = header(&res, "content-security-policy");
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(csp.contains("connect-src 'self'"), "{path}: {csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(header(&res, "x-frame-options"), "DENY", "{path}");
        assert_eq!(header(&res, "referrer-policy"), "no-referrer", "{path}");
        assert_eq!(header(&res, "x-content-type-options"), "nosniff", "{path}");
    }
    // A sign-in's answer carries a token: never stored by a cache.
    let http = stack.http();
    assert_eq!(http.sign_up("qbob", "password-qbob").await.0, 201);
    let res = client
        .post(format!("{base}/api/sessions"))
        .json(&serde_json::json!({"username": "qbob", "password": "password-qbob"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "cache-control"), "no-store");
}

#[tokio::test]
async fn websockets_from_other_sites_are_refused_unless_allowed() {
    let stack = Stack::start(&[("ALLOWED_ORIGINS", "https://app.example")]).await;
    let ws = stack.gw().ws_url();
    let port = stack.gw().port();
    let with_origin = |origin: &str| WsOptions {
        headers: vec![("origin".into(), origin.into())],
        ..WsOptions::default()
    };
    // A cross-site page: refused before the upgrade.
    match Ws::try_connect(&ws, None, with_origin("https://evil.example")).await {
        Err((status, body)) => {
            assert_eq!(status, 403, "{body}");
            assert!(body.contains("origin_not_allowed"), "{body}");
        }
        Ok(_) => panic!("a cross-site page opened a WebSocket"),
    }
    // The page's own origin, a listed origin, and clients that send no Origin at all.
    let mut own =
        Ws::connect_with(&ws, None, with_origin(&format!("http://127.0.0.1:{port}"))).await;
    let mut listed = Ws::connect_with(&ws, None, with_origin("https://app.example")).await;
    let mut bare = Ws::connect(&ws, None).await;
    let conv = stack.http().create_conversation().await;
    for socket in [&mut own, &mut listed, &mut bare] {
        socket.subscribe(&conv, None).await;
    }
}
