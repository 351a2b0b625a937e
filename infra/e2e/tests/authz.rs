//! Hostile and careless clients against authentication and validation (issue 10): sign-in
//! throttling per address and per (address, username), bounded counters, sign-up limits, bad
//! credentials refused everywhere, identical 404s, the assistant in open conversations, and
//! the smaller validation rules. Other client addresses come from 127.0.0.0/8: the gateway
//! listens on 127.0.0.1 and sees each test client's own loopback address.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use confab_e2e::*;
use reqwest::Method;

const TS: &str = "2025-04-05T14:00:00Z";

async fn login_fail_keys(redis: &Redis) -> Vec<String> {
    redis.keys("confab:login-fail:*").await
}

// ---------------------------------------------------------------- sign-in throttling

#[tokio::test]
async fn a_limited_address_cannot_lock_an_account_for_other_addresses() {
    let stack = Stack::start(&[
        ("LOGIN_MAX_FAILURES", "3"),
        ("LOGIN_MAX_FAILURES_PER_ADDR", "5"),
    ])
    .await;
    let home = stack.http();
    assert_eq!(home.sign_up("carol", "password-carol").await.0, 201);

    // An attacker at 127.0.0.2 guesses carol's password until it is limited…
    let attacker = home.from_addr("127.0.0.2");
    for _ in 0..3 {
        let answer = attacker.sign_in("carol", "not her password").await;
        assert_error(&answer, 401, "invalid_credentials");
    }
    let answer = attacker.sign_in("carol", "not her password").await;
    assert_error(&answer, 429, "rate_limited");
    // …and while limited, even the right password is refused there.
    let answer = attacker.sign_in("carol", "password-carol").await;
    assert_error(&answer, 429, "rate_limited");

    // carol herself, from her own address, is not locked out.
    let (status, body) = home.sign_in("carol", "password-carol").await;
    assert_eq!(status, 200, "{body}");

    // Per address, whatever the usernames: a sixth failure from 127.0.0.3 is limited, for
    // any account, while other addresses go on.
    let sprayer = home.from_addr("127.0.0.3");
    for name in ["dave", "erin", "frank", "grace", "heidi"] {
        let answer = sprayer.sign_in(name, "password-guess").await;
        assert_error(&answer, 401, "invalid_credentials");
    }
    let answer = sprayer.sign_in("carol", "password-carol").await;
    assert_error(&answer, 429, "rate_limited");
    let (status, body) = home
        .from_addr("127.0.0.4")
        .sign_in("carol", "password-carol")
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_correct_sign_ins_are_never_counted() {
    let stack = Stack::start(&[
        ("LOGIN_MAX_FAILURES", "3"),
        ("LOGIN_MAX_FAILURES_PER_ADDR", "3"),
    ])
    .await;
    let http = stack.http();
    assert_eq!(http.sign_up("alice", "password-alice").await.0, 201);
    let tries = (0..12).map(|_| {
        let http = http.clone();
        async move { http.sign_in("alice", "password-alice").await }
    });
    for (status, body) in futures::future::join_all(tries).await {
        assert_eq!(status, 200, "{body}");
    }
    // Nothing was counted: the address still has its full allowance of failures.
    assert!(login_fail_keys(&stack.redis).await.is_empty());
    for _ in 0..3 {
        let answer = http.sign_in("alice", "wrong password").await;
        assert_error(&answer, 401, "invalid_credentials");
    }
    assert_error(
        &http.sign_in("alice", "wrong password").await,
        429,
        "rate_limited",
    );
}

#[tokio::test]
async fn sign_in_counters_are_bounded_and_stop_once_limited() {
    let stack = Stack::start(&[
        ("LOGIN_MAX_FAILURES", "3"),
        ("LOGIN_MAX_FAILURES_PER_ADDR", "5"),
    ])
    .await;
    let http = stack.http();
    let keys_before = stack.redis.keys("*").await.len();

    // Usernames no account can have (95 KB, bad characters) are refused without Redis.
    let huge = "a".repeat(95 * 1024);
    for name in [huge.as_str(), "-rf", "...", "bad name"] {
        let answer = http.sign_in(name, "password-guess").await;
        assert_error(&answer, 401, "invalid_credentials");
    }
    let answer = http.sign_in("alice", &"p".repeat(2000)).await;
    assert_error(&answer, 401, "invalid_credentials");
    assert_eq!(stack.redis.keys("*").await.len(), keys_before);

    // Valid names: five failures are counted, then the address is limited and nothing more
    // is counted — not 95 more keys, not a growing counter.
    for i in 0..100 {
        let answer = http.sign_in(&format!("user{i}"), "password-guess").await;
        let expected = if i < 5 { 401 } else { 429 };
        assert_eq!(answer.0, expected, "attempt {i}: {}", answer.1);
    }
    let keys = login_fail_keys(&stack.redis).await;
    assert_eq!(
        keys.len(),
        1 + 5,
        "one address counter and five pairs: {keys:?}"
    );
    for key in &keys {
        assert!(key.len() <= 64, "unbounded key {key}");
        assert!(!key.contains("user"), "the username is in the key {key}");
        let count: u64 = stack.redis.q(&["GET", key]).await;
        assert!(count <= 5, "{key} counted {count}");
        let ttl: i64 = stack.redis.q(&["TTL", key]).await;
        assert!(ttl > 0, "{key} has no expiry");
    }
}

// ---------------------------------------------------------------- sign-up

#[tokio::test]
async fn sign_up_is_rate_limited_per_address() {
    let stack = Stack::start(&[("SIGNUPS_PER_MIN_PER_ADDR", "3")]).await;
    let http = stack.http();
    for name in ["ann", "ben", "cat"] {
        assert_eq!(http.sign_up(name, "long enough pw").await.0, 201);
    }
    let answer = http.sign_up("dan", "long enough pw").await;
    assert_error(&answer, 429, "rate_limited");
    // Another address is not held up, and the refused name was not taken.
    let other = http.from_addr("127.0.0.2");
    assert_eq!(other.sign_up("dan", "long enough pw").await.0, 201);
    // Validation errors are answered before counting.
    let answer = http.sign_up("-rf", "long enough pw").await;
    assert_error(&answer, 400, "invalid_username");
}

// ---------------------------------------------------------------- bad credentials

#[tokio::test]
async fn credentials_that_do_not_verify_get_401_on_every_route_and_the_upgrade() {
    let stack = Stack::start(&[]).await;
    let http = stack.http();
    let alice = http.user("alice").await;
    let _bob = http.user("bob").await;
    let chat = alice.create_chat("c", &["bob"], false).await;
    let open = http.create_conversation().await;
    let mid = http.send_ok(&open, "customer", "hi").await;
    // A token that worked once and was signed out, and several that never did.
    let expired = http.another_session("alice").await;
    assert_eq!(expired.delete("/api/sessions").await.0, 200);
    let expired_token = expired.token().unwrap().to_string();
    let bad_headers = [
        format!("Bearer {expired_token}"),
        "Bearer forged-token".to_string(),
        "Bearer ".to_string(),
        "Basic YWxpY2U6cGFzc3dvcmQ=".to_string(),
        "forged-token".to_string(),
        format!("Bearer {}", "x".repeat(300)),
    ];
    let keys_before = stack.redis.keys("confab:conv:*").await.len();
    let routes: Vec<(Method, String, Option<Value>)> = vec![
        (
            Method::POST,
            "/api/conversations".into(),
            Some(json!({"title": "secret", "members": ["bob"]})),
        ),
        (Method::POST, "/api/conversations".into(), Some(json!({}))),
        (Method::GET, "/api/conversations".into(), None),
        (Method::GET, format!("/api/conversations/{open}"), None),
        (Method::GET, format!("/api/conversations/{chat}"), None),
        (
            Method::POST,
            format!("/api/conversations/{open}/messages"),
            Some(json!({"sender": "agent", "content": "x", "timestamp": TS})),
        ),
        (
            Method::DELETE,
            format!("/api/conversations/{open}/messages/{mid}"),
            None,
        ),
        (
            Method::POST,
            format!("/api/conversations/{chat}/members"),
            Some(json!({"username": "bob"})),
        ),
        (
            Method::POST,
            format!("/api/conversations/{open}/assistant/cancel"),
            None,
        ),
        (Method::GET, "/api/users?prefix=al".into(), None),
        (
            Method::POST,
            "/api/users".into(),
            Some(json!({"username": "mallory", "password": "long enough pw"})),
        ),
        (
            Method::POST,
            "/api/sessions".into(),
            Some(json!({"username": "alice", "password": "password-alice"})),
        ),
        (Method::DELETE, "/api/sessions".into(), None),
    ];
    let anonymous = http.anonymous();
    for header in &bad_headers {
        for (method, path, body) in &routes {
            let mut rb = anonymous
                .request(method.clone(), path)
                .header("authorization", header);
            if let Some(b) = body {
                rb = rb.json(b);
            }
            let answer = anonymous.send(rb).await;
            assert_eq!(
                answer.0, 401,
                "{method} {path} with {header:?}: {}",
                answer.1
            );
            assert_error(&answer, 401, "invalid_token");
        }
    }
    // Nothing was created or changed by any of them.
    assert_eq!(stack.redis.keys("confab:conv:*").await.len(), keys_before);
    assert_eq!(http.messages(&open).await.len(), 1);
    assert_error(
        &http.sign_in("mallory", "long enough pw").await,
        401,
        "invalid_credentials",
    );

    // The WebSocket upgrade: bad ?token=, an empty one, a bad Authorization header.
    let ws = stack.gw().ws_url();
    for token in [Some(expired_token.as_str()), Some("forged"), Some("")] {
        match Ws::try_connect(&ws, token, WsOptions::default()).await {
            Err((status, body)) => {
                assert_eq!(status, 401, "{token:?}: {body}");
                assert!(body.contains("invalid_token"), "{body}");
            }
            Ok(_) => panic!("{token:?} opened a WebSocket"),
        }
    }
    for header in &bad_headers {
        let opts = WsOptions {
            headers: vec![("authorization".into(), header.clone())],
            ..WsOptions::default()
        };
        match Ws::try_connect(&ws, None, opts).await {
            Err((status, body)) => assert_eq!(status, 401, "{header:?}: {body}"),
            Ok(_) => panic!("{header:?} opened a WebSocket"),
        }
    }
    // A good bearer header works on the upgrade too; no credentials at all is anonymous.
    let opts = WsOptions {
        headers: vec![(
            "authorization".into(),
            format!("Bearer {}", alice.token().unwrap()),
        )],
        ..WsOptions::default()
    };
    let mut signed_in = Ws::connect_with(&ws, None, opts).await;
    signed_in.subscribe(&chat, None).await;
    let mut guest = Ws::connect(&ws, None).await;
    guest.subscribe(&open, None).await;
    assert_eq!(http.get("/api/conversations").await.0, 401);
    assert_eq!(http.conversation(&open).await.0, 200);
}

// ---------------------------------------------------------------- identical 404s

/// Status, headers (without `date` and `traceparent`, which differ per request) and body bytes.
async fn raw(rb: reqwest::RequestBuilder) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let res = rb.send().await.unwrap();
    let status = res.status().as_u16();
    let mut headers: Vec<(String, String)> = res
        .headers()
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "date" | "traceparent"))
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    headers.sort();
    let body = res.bytes().await.unwrap().to_vec();
    (status, headers, body)
}

#[tokio::test]
async fn a_member_chat_and_an_unknown_id_give_byte_identical_404s() {
    let stack = Stack::start(&[]).await;
    let http = stack.http();
    let alice = http.user("alice").await;
    let carol = http.user("carol").await;
    let chat = alice.create_chat("private", &[], true).await;
    let mid = alice.say(&chat, "secret").await;
    let unknown = random_id();
    for (who, client) in [("a non-member", &carol), ("no token", &http)] {
        let requests = |id: &str| {
            vec![
                client.request(Method::GET, &format!("/api/conversations/{id}")),
                client
                    .request(Method::POST, &format!("/api/conversations/{id}/messages"))
                    .json(&json!({"content": "x", "sender": "customer", "timestamp": TS})),
                client
                    .request(Method::POST, &format!("/api/conversations/{id}/messages"))
                    .json(&json!({"content": ""})),
                client.request(
                    Method::DELETE,
                    &format!("/api/conversations/{id}/messages/{mid}"),
                ),
                client
                    .request(Method::POST, &format!("/api/conversations/{id}/members"))
                    .json(&json!({"username": "carol"})),
                client.request(
                    Method::POST,
                    &format!("/api/conversations/{id}/assistant/cancel"),
                ),
            ]
        };
        for (existing, missing) in requests(&chat).into_iter().zip(requests(&unknown)) {
            let a = raw(existing).await;
            let b = raw(missing).await;
            assert_eq!(a.0, 404, "{who}: {}", String::from_utf8_lossy(&a.2));
            assert_eq!(a, b, "{who}: the answers differ");
        }
    }
    assert_eq!(alice.messages(&chat).await.len(), 1);
}

// ---------------------------------------------------------------- the assistant

#[tokio::test]
async fn the_assistant_in_open_conversations_is_an_operator_switch_off_by_default() {
    let stack = Stack::start(&[]).await;
    let http = stack.http();
    let keys_before = stack.redis.keys("confab:conv:*").await.len();
    let answer = http
        .post("/api/conversations", &json!({"assistant": true}))
        .await;
    assert_error(&answer, 403, "assistant_disabled");
    assert_eq!(stack.redis.keys("confab:conv:*").await.len(), keys_before);
    for body in [json!({}), json!({"assistant": false})] {
        assert_eq!(http.post("/api/conversations", &body).await.0, 201);
    }
    // Signed-in member chats keep their assistant.
    let alice = http.user("alice").await;
    let chat = alice.create_chat("with the assistant", &[], true).await;
    assert_eq!(alice.conversation(&chat).await.1["assistant"], true);
}

#[tokio::test]
async fn when_switched_on_the_open_assistant_has_its_own_rate_limit() {
    let stack = Stack::start(&[
        ("ASSISTANT_IN_OPEN_CONVERSATIONS", "true"),
        ("ASSISTANT_OPEN_MESSAGES_PER_MIN_PER_ADDR", "2"),
    ])
    .await;
    let http = stack.http();
    let (status, body) = http
        .post("/api/conversations", &json!({"assistant": true}))
        .await;
    assert_eq!(status, 201, "{body}");
    let conv = conversation_id(&body);
    for i in 0..2 {
        let answer = http
            .send_message(&conv, "customer", &format!("q{i}"), TS)
            .await;
        assert_eq!(answer.0, 201, "{}", answer.1);
    }
    let answer = http.send_message(&conv, "customer", "q2", TS).await;
    assert_error(&answer, 429, "rate_limited");
    // Over the WebSocket too.
    let mut ws = Ws::connect(&stack.gw().ws_url(), None).await;
    ws.subscribe(&conv, None).await;
    ws.send_json(&send_frame(&conv, "k1", "customer", "q3"))
        .await;
    let err = ws.expect_type("error").await;
    assert_eq!(
        (err["code"].as_str(), err["ref"].as_str()),
        (Some("rate_limited"), Some("k1"))
    );
    // Another address has its own allowance; conversations without the assistant have none.
    let other = http.from_addr("127.0.0.2");
    assert_eq!(other.send_message(&conv, "agent", "a0", TS).await.0, 201);
    let plain = http.create_conversation().await;
    for i in 0..5 {
        http.send_ok(&plain, "customer", &format!("p{i}")).await;
    }
    assert_eq!(http.messages(&conv).await.len(), 3);
}

// ---------------------------------------------------------------- validation

#[tokio::test]
async fn usernames_passwords_content_and_client_ids_are_validated() {
    let stack = Stack::start(&[]).await;
    let http = stack.http();
    for name in ["...", "-rf", "_x_", ".hidden"] {
        assert_error(
            &http.sign_up(name, "long enough pw").await,
            400,
            "invalid_username",
        );
    }
    let answer = http.sign_up("longpw", &"p".repeat(1025)).await;
    assert_error(&answer, 400, "invalid_password");
    let message = answer.1["error"]["message"].as_str().unwrap();
    assert!(message.contains("at most 1024 bytes"), "{message}");
    let answer = http.sign_up("shortpw", "short").await;
    assert!(answer.1["error"]["message"]
        .as_str()
        .unwrap()
        .contains("at least 8"));
    assert_eq!(http.sign_up("longpw", &"p".repeat(1024)).await.0, 201);

    // Invisible-only content, in open conversations and member chats, REST and WebSocket.
    let open = http.create_conversation().await;
    let alice = http.user("alice").await;
    let chat = alice.create_chat("c", &[], false).await;
    for content in [
        "\u{200B}",
        "\u{200B}\u{200C}\u{200D}\u{2060}\u{FEFF}",
        " \u{00A0}\t",
    ] {
        let answer = http.send_message(&open, "customer", content, TS).await;
        assert_error(&answer, 400, "invalid_content");
        let answer = alice
            .post(
                &format!("/api/conversations/{chat}/messages"),
                &json!({"content": content}),
            )
            .await;
        assert_error(&answer, 400, "invalid_content");
    }
    let mut ws = Ws::connect(&stack.gw().ws_url(), None).await;
    ws.subscribe(&open, None).await;
    ws.send_json(&send_frame(&open, "z1", "customer", "\u{200B}"))
        .await;
    let err = ws.expect_type("error").await;
    assert_eq!(
        (err["code"].as_str(), err["ref"].as_str()),
        (Some("invalid_content"), Some("z1"))
    );

    // A clientId over 128 characters is refused, not acknowledged as null.
    let long_id = "c".repeat(129);
    ws.send_json(&send_frame(&open, &long_id, "customer", "hello"))
        .await;
    let err = ws.expect_type("error").await;
    assert_eq!(err["code"], "invalid_frame", "{err}");
    assert!(err["message"].as_str().unwrap().contains("128"), "{err}");
    assert_eq!(err["ref"], "send");
    ws.ping().await;
    assert!(http.messages(&open).await.is_empty());

    // A WebSocket send in an open conversation may omit the timestamp: the server's is used.
    ws.send_json(
        &json!({"type": "send", "conversationId": open, "clientId": "t1",
        "sender": "customer", "content": "no timestamp"}),
    )
    .await;
    let ack = ws.wait_type("ack").await;
    assert_eq!(ack["clientId"], "t1");
    let msgs = http.messages(&open).await;
    assert_eq!(msgs.len(), 1);
    let ts = msgs[0]["timestamp"].as_str().unwrap();
    assert!(ts.ends_with('Z') && ts.contains('T') && ts != TS, "{ts}");
    // The seed's REST API still requires one.
    let answer = http
        .post(
            &format!("/api/conversations/{open}/messages"),
            &json!({"sender": "customer", "content": "x"}),
        )
        .await;
    assert_error(&answer, 400, "invalid_timestamp");

    // Member chats: the server's time, whatever the client sends (REST and WebSocket).
    let mut aws = Ws::connect(&stack.gw().ws_url(), alice.token()).await;
    aws.subscribe(&chat, None).await;
    aws.send_json(
        &json!({"type": "send", "conversationId": chat, "clientId": "m1",
        "content": "from the socket", "timestamp": TS}),
    )
    .await;
    aws.wait_type("ack").await;
    alice
        .post(
            &format!("/api/conversations/{chat}/messages"),
            &json!({"content": "from REST", "timestamp": "1999-01-01T00:00:00Z"}),
        )
        .await;
    for m in alice.messages(&chat).await {
        let ts = m["timestamp"].as_str().unwrap();
        assert!(!ts.starts_with("1999") && ts != TS, "client time kept: {m}");
    }
}

// ---------------------------------------------------------------- anonymous write rate

/// Issue 10, item 4: writes without a session are limited per address and second
/// (`ANON_WRITES_PER_SEC_PER_ADDR`); signed-in users and other addresses are not affected.
#[tokio::test]
async fn anonymous_writes_are_limited_per_address() {
    let stack = Stack::start(&[("ANON_WRITES_PER_SEC_PER_ADDR", "1")]).await;
    let home = stack.http();
    let conv = home.from_addr("127.0.0.8").create_conversation().await;
    let flood = home.from_addr("127.0.0.7");
    // 30 at once: however slow the machine, they cannot spread over 30 one-second windows.
    let answers = futures::future::join_all((0..30).map(|n| {
        let (flood, conv) = (flood.clone(), conv.clone());
        async move {
            flood
                .send_message(&conv, "customer", &format!("flood {n}"), TS)
                .await
        }
    }))
    .await;
    let limited: Vec<_> = answers.iter().filter(|(s, _)| *s == 429).collect();
    assert!(!limited.is_empty(), "no 429 among {answers:?}");
    for answer in &limited {
        assert_error(answer, 429, "rate_limited");
    }
    assert!(
        answers.iter().all(|(s, _)| *s == 201 || *s == 429),
        "{answers:?}"
    );
    // Creating open conversations counts too.
    let creates = futures::future::join_all((0..30).map(|_| {
        let flood = flood.clone();
        async move {
            flood
                .post("/api/conversations", &serde_json::json!({}))
                .await
        }
    }))
    .await;
    assert!(creates.iter().any(|(s, _)| *s == 429), "{creates:?}");
    // A signed-in user at the same address is not limited, nor is another address.
    let member = flood.user("anonrate-alice").await;
    for n in 0..5 {
        assert_eq!(
            member
                .send_message(&conv, "customer", &format!("member {n}"), TS)
                .await
                .0,
            201
        );
    }
    let other = home.from_addr("127.0.0.9");
    assert_eq!(
        other
            .send_message(&conv, "customer", "elsewhere", TS)
            .await
            .0,
        201
    );
}
