//! Exactly once for retries (issue 10 item 7): a WebSocket `clientId` and a REST
//! `Idempotency-Key` name a write, so a client that retries — twice in a row, after a 504,
//! after a reconnect, on another gateway after the first was SIGKILLed — gets one message and
//! the first result each time. Keys are per conversation and per author; the same key for
//! other content is refused (422 / error frame `idempotency_key_reused`); bad keys are 400.
//! "Exactly one" is checked in the REST view and in the conversation's message counter.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use reqwest::Method;

use confab_e2e::*;

in_both_modes!(
    the_same_client_id_twice_is_one_message,
    the_same_idempotency_key_twice_is_one_message_and_the_same_body,
    a_retry_on_another_gateway_after_a_sigkill_is_exactly_one_message,
);

const TS: &str = "2025-04-05T14:00:00Z";

/// A POST of a seed message with `Idempotency-Key: key`.
async fn post_keyed(http: &Http, conv: &str, key: &str, content: &str) -> Answer {
    http.send(
        http.request(Method::POST, &format!("/api/conversations/{conv}/messages"))
            .header("Idempotency-Key", key)
            .json(&json!({"sender": "customer", "content": content, "timestamp": TS})),
    )
    .await
}

/// The conversation's message ids (REST) after checking that the stored counter agrees.
async fn stored(stack: &Stack, http: &Http, conv: &str) -> Vec<String> {
    let ids: Vec<String> = http
        .messages(conv)
        .await
        .iter()
        .map(|m| str_field(m, "messageId"))
        .collect();
    let held: u64 = stack
        .redis
        .q(&["HGET", &format!("confab:conv:{{{conv}}}"), "cnt"])
        .await;
    assert_eq!(held, ids.len() as u64, "message counter of {conv}");
    ids
}

/// How many queued commands (in any partition's stream) carry `needle`.
async fn queued(redis: &Redis, needle: &str) -> usize {
    let mut n = 0;
    for pk in redis.partitions() {
        let entries: Vec<(String, std::collections::HashMap<String, String>)> =
            redis.q(&["XRANGE", &pk.commands, "-", "+"]).await;
        n += entries
            .iter()
            .filter(|(_, fields)| fields.values().any(|v| v.contains(needle)))
            .count();
    }
    n
}

/// Retries a keyed REST send until it is answered with anything but 504 (what a client
/// does after a timeout), and returns that answer.
async fn retry_rest(http: &Http, conv: &str, key: &str, content: &str) -> Answer {
    eventually("a retry answered without a timeout", DEADLINE, async || {
        let a = post_keyed(http, conv, key, content).await;
        (a.0 != 504).then_some(a)
    })
    .await
}

/// Retries a WebSocket send until it is answered with anything but a timeout error.
async fn retry_ws(ws: &mut Ws, frame: &Value) -> Value {
    for _ in 0..20 {
        ws.send_json(frame).await;
        let a = answer(ws).await;
        if a["code"] != "timeout" {
            return a;
        }
    }
    panic!("20 retries of {frame} timed out");
}

/// The next `ack` or `error` frame (a send's answer; within [`WS_WAIT`]).
async fn answer(ws: &mut Ws) -> Value {
    loop {
        let v = ws.next_json(WS_WAIT).await.expect("an answer to the send");
        if v["type"] == "ack" || v["type"] == "error" {
            return v;
        }
    }
}

async fn the_same_client_id_twice_is_one_message(mode: Mode) {
    let stack = Stack::in_mode(mode, 1, 1, 0, &[]).await;
    let http = stack.http();
    let conv = http.create_conversation().await;
    let mut ws = Ws::connect(&stack.gw().ws_url(), None).await;
    ws.send_json(&send_frame(&conv, "k1", "customer", "hello"))
        .await;
    let first = answer(&mut ws).await;
    assert_eq!(first["type"], "ack", "{first}");
    ws.send_json(&send_frame(&conv, "k1", "customer", "hello"))
        .await;
    let second = answer(&mut ws).await;
    assert_eq!(second, first, "a retry gets the first ack");
    // Sent twice at once (neither answered yet): still one.
    ws.send_json(&send_frame(&conv, "k2", "agent", "both at once"))
        .await;
    ws.send_json(&send_frame(&conv, "k2", "agent", "both at once"))
        .await;
    let (a, b) = (answer(&mut ws).await, answer(&mut ws).await);
    assert_eq!(a["type"], "ack", "{a}");
    assert_eq!(a, b);
    // The same key for another message: refused, naming the frame.
    ws.send_json(&send_frame(&conv, "k1", "customer", "something else"))
        .await;
    let reused = answer(&mut ws).await;
    assert_eq!(reused["type"], "error", "{reused}");
    assert_eq!(reused["code"], "idempotency_key_reused");
    assert_eq!(reused["ref"], "k1");
    assert_eq!(
        stored(&stack, &http, &conv).await,
        [str_field(&first, "messageId"), str_field(&a, "messageId")]
    );
    // Keys are per conversation: k1 elsewhere is a new message.
    let other = http.create_conversation().await;
    ws.send_json(&send_frame(&other, "k1", "customer", "hello"))
        .await;
    let elsewhere = answer(&mut ws).await;
    assert_eq!(elsewhere["type"], "ack");
    assert_ne!(elsewhere["messageId"], first["messageId"]);
    // And per author: two members of a chat using the same clientId send two messages.
    let alice = http.user("alice").await;
    let bob = http.user("bob").await;
    let chat = alice.create_chat("keys", &["bob"], false).await;
    let mut ids = Vec::new();
    for who in [&alice, &bob] {
        let mut ws = Ws::connect(&stack.gw().ws_url(), who.token()).await;
        for _ in 0..2 {
            ws.send_json(
                &json!({"type": "send", "conversationId": chat, "clientId": "same", "content": "hi"}),
            )
            .await;
            let ack = answer(&mut ws).await;
            assert_eq!(ack["type"], "ack", "{ack}");
            ids.push(str_field(&ack, "messageId"));
        }
    }
    assert_eq!(ids[0], ids[1]);
    assert_eq!(ids[2], ids[3]);
    assert_ne!(ids[0], ids[2], "bob's key is not alice's");
    let in_chat: Vec<String> = alice
        .messages(&chat)
        .await
        .iter()
        .map(|m| str_field(m, "messageId"))
        .collect();
    assert_eq!(in_chat, [ids[0].clone(), ids[2].clone()]);
    // Idempotency records live in the conversation's slot, bounded and expiring with it.
    let records: Vec<String> = stack.redis.keys(&conv_key_pattern(&conv)).await;
    assert!(
        records.iter().any(|k| k.ends_with(":idem")),
        "a record in the conversation's keys: {records:?}"
    );
    for k in records.iter().filter(|k| k.contains(":idem")) {
        let ttl: i64 = stack.redis.q(&["PTTL", k]).await;
        assert!(ttl > 0, "{k} expires with the conversation ({ttl})");
    }
}

async fn the_same_idempotency_key_twice_is_one_message_and_the_same_body(mode: Mode) {
    let stack = Stack::in_mode(mode, 1, 1, 0, &[]).await;
    let http = stack.http();
    let conv = http.create_conversation().await;
    let first = post_keyed(&http, &conv, "order-1", "hello").await;
    assert_eq!(first.0, 201, "{}", first.1);
    let again = post_keyed(&http, &conv, "order-1", "hello").await;
    assert_eq!(again, first, "a retry gets the first status and body");
    let reused = post_keyed(&http, &conv, "order-1", "changed my mind").await;
    assert_error(&reused, 422, "idempotency_key_reused");
    assert_eq!(
        stored(&stack, &http, &conv).await,
        [str_field(&first.1, "messageId")]
    );
    // Without a key, the same message twice is two messages (as before).
    http.send_ok(&conv, "customer", "hello").await;
    http.send_ok(&conv, "customer", "hello").await;
    assert_eq!(stored(&stack, &http, &conv).await.len(), 3);
    // Bad keys: 400 with a clear code, nothing stored.
    for bad in ["", "has space", &"k".repeat(129)] {
        let answer = post_keyed(&http, &conv, bad, "x").await;
        assert_error(&answer, 400, "invalid_idempotency_key");
    }
    let two = http
        .send(
            http.request(Method::POST, &format!("/api/conversations/{conv}/messages"))
                .header("Idempotency-Key", "a")
                .header("Idempotency-Key", "b")
                .json(&json!({"sender": "customer", "content": "x", "timestamp": TS})),
        )
        .await;
    assert_error(&two, 400, "invalid_idempotency_key");
    assert_eq!(stored(&stack, &http, &conv).await.len(), 3);
    // Creation: the same key twice is the same conversation; another body is refused.
    let create = |key: &'static str, body: Value| {
        let http = http.clone();
        async move {
            http.send(
                http.request(Method::POST, "/api/conversations")
                    .header("Idempotency-Key", key)
                    .json(&body),
            )
            .await
        }
    };
    let made = create("new-chat-1", json!({})).await;
    assert_eq!(made.0, 201, "{}", made.1);
    assert_eq!(create("new-chat-1", json!({})).await, made);
    let created = conversation_id(&made.1);
    assert_eq!(http.conversation(&created).await.0, 200);
    // A member chat: per user, and a different title with the same key is a reuse.
    let alice = http.user("alice").await;
    http.user("bob").await;
    let chat = |key: &'static str, title: &'static str| {
        let alice = alice.clone();
        async move {
            alice
                .send(
                    alice
                        .request(Method::POST, "/api/conversations")
                        .header("Idempotency-Key", key)
                        .json(&json!({"title": title, "members": ["bob"]})),
                )
                .await
        }
    };
    let first = chat("new-chat-1", "plans").await;
    assert_eq!(first.0, 201, "{}", first.1);
    assert_ne!(first.1, made.1, "alice's key is not the anonymous one");
    assert_eq!(chat("new-chat-1", "plans").await, first);
    assert_error(
        &chat("new-chat-1", "other plans").await,
        422,
        "idempotency_key_reused",
    );
    let (status, list) = alice.get("/api/conversations").await;
    assert_eq!(status, 200);
    assert_eq!(
        list["conversations"].as_array().map(Vec::len),
        Some(1),
        "{list}"
    );
}

/// A client retrying after a 504 (the persistence worker frozen past REQUEST_TIMEOUT_MS, so
/// the first command waits in the stream) gets one message: the retry is answered with the
/// first message's id once the worker runs again — over REST and over WebSocket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_504_is_exactly_one_message() {
    let mut stack = Stack::start(&[("REQUEST_TIMEOUT_MS", "2000")]).await;
    let http = stack.http();
    let conv = http.create_conversation().await;
    let mut ws = Ws::connect(&stack.gw().ws_url(), None).await;
    stack.workers[0].process().signal(libc::SIGSTOP);
    let timed_out = post_keyed(&http, &conv, "rest-504", "after a timeout").await;
    assert_error(&timed_out, 504, "timeout");
    ws.send_json(&send_frame(&conv, "ws-504", "agent", "after a timeout too"))
        .await;
    let frame = answer(&mut ws).await;
    assert_eq!(frame["code"], "timeout", "{frame}");
    // A retry while the worker is still frozen: a second command in the stream, also 504.
    assert_error(
        &post_keyed(&http, &conv, "rest-504", "after a timeout").await,
        504,
        "timeout",
    );
    stack.workers[0].process().signal(libc::SIGCONT);
    let retried = retry_rest(&http, &conv, "rest-504", "after a timeout").await;
    assert_eq!(retried.0, 201, "{}", retried.1);
    let ack = retry_ws(
        &mut ws,
        &send_frame(&conv, "ws-504", "agent", "after a timeout too"),
    )
    .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let redis = &stack.redis;
    eventually_true("every queued command applied", DEADLINE, async || {
        redis.backlog().await == 0
    })
    .await;
    let ids = stored(&stack, &http, &conv).await;
    assert_eq!(
        ids,
        [
            str_field(&retried.1, "messageId"),
            str_field(&ack, "messageId")
        ],
        "two writes retried: two messages"
    );
}

/// A WebSocket client that lost its connection before the ack sends again on a new one:
/// one message, and the new connection's ack names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_reconnect_is_exactly_one_message() {
    let mut stack = Stack::start(&[]).await;
    let http = stack.http();
    let conv = http.create_conversation().await;
    let mut watcher = Ws::connect(&stack.gw().ws_url(), None).await;
    watcher.subscribe(&conv, None).await;
    stack.workers[0].process().signal(libc::SIGSTOP);
    let mut ws = Ws::connect(&stack.gw().ws_url(), None).await;
    ws.send_json(&send_frame(&conv, "lost-ack", "customer", "are you there?"))
        .await;
    let redis = &stack.redis;
    eventually_true("the send is queued", DEADLINE, async || {
        queued(redis, "are you there?").await == 1
    })
    .await;
    ws.close().await;
    stack.workers[0].process().signal(libc::SIGCONT);
    let mut again = Ws::connect(&stack.gw().ws_url(), None).await;
    let ack = retry_ws(
        &mut again,
        &send_frame(&conv, "lost-ack", "customer", "are you there?"),
    )
    .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let event = watcher.wait_type("message").await;
    assert_eq!(event["message"]["messageId"], ack["messageId"]);
    eventually_true("every queued command applied", DEADLINE, async || {
        redis.backlog().await == 0
    })
    .await;
    assert_eq!(
        stored(&stack, &http, &conv).await,
        [str_field(&ack, "messageId")]
    );
    // The subscriber saw the message once.
    watcher
        .expect_silence(std::time::Duration::from_millis(500))
        .await;
}

/// The gateway a client was talking to is SIGKILLed with its writes queued; the client
/// retries on another gateway: exactly one message per write (REST and WebSocket).
async fn a_retry_on_another_gateway_after_a_sigkill_is_exactly_one_message(mode: Mode) {
    // The killed gateway's request must still be waiting when it dies.
    let mut stack = Stack::in_mode(mode, 2, 1, 0, &[("REQUEST_TIMEOUT_MS", "120000")]).await;
    let (gw0, gw1) = (stack.gateways[0].http(), stack.gateways[1].http());
    let conv = gw0.create_conversation().await;
    stack.workers[0].process().signal(libc::SIGSTOP);
    let mut ws = Ws::connect(&stack.gateways[0].ws_url(), None).await;
    ws.send_json(&send_frame(&conv, "ws-killed", "agent", "via ws"))
        .await;
    let rest = {
        let gw0 = gw0.clone();
        let conv = conv.clone();
        tokio::spawn(async move {
            gw0.try_send(
                gw0.request(Method::POST, &format!("/api/conversations/{conv}/messages"))
                    .header("Idempotency-Key", "rest-killed")
                    .json(&json!({"sender": "customer", "content": "via rest", "timestamp": TS})),
            )
            .await
        })
    };
    let redis = &stack.redis;
    eventually_true("both writes are queued", DEADLINE, async || {
        queued(redis, "via ws").await == 1 && queued(redis, "via rest").await == 1
    })
    .await;
    stack.gateways[0].kill9();
    assert!(
        rest.await.unwrap().is_err(),
        "the killed gateway answered nothing"
    );
    stack.workers[0].process().signal(libc::SIGCONT);
    let retried = retry_rest(&gw1, &conv, "rest-killed", "via rest").await;
    assert_eq!(retried.0, 201, "{}", retried.1);
    let mut ws = Ws::connect(&stack.gateways[1].ws_url(), None).await;
    let ack = retry_ws(&mut ws, &send_frame(&conv, "ws-killed", "agent", "via ws")).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    eventually_true("every queued command applied", DEADLINE, async || {
        redis.backlog().await == 0
    })
    .await;
    let mut ids = stored(&stack, &gw1, &conv).await;
    ids.sort();
    let mut want = vec![
        str_field(&retried.1, "messageId"),
        str_field(&ack, "messageId"),
    ];
    want.sort();
    assert_eq!(ids, want, "one message per write");
}

/// An expired conversation takes its idempotency records with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_records_go_with_their_conversation() {
    let stack = Stack::with(1, 1, 1, &[("CONVERSATION_TTL_SECS", "2")]).await;
    let http = stack.http();
    let conv = http.create_conversation().await;
    assert_eq!(post_keyed(&http, &conv, "bye", "soon gone").await.0, 201);
    let idem = format!("confab:conv:{{{conv}}}:idem");
    assert_eq!(stack.redis.q::<u64>(&["HLEN", &idem]).await, 1);
    let redis = &stack.redis;
    eventually_true(
        "the conversation and its records are gone",
        DEADLINE,
        async || redis.keys(&conv_key_pattern(&conv)).await.is_empty(),
    )
    .await;
}

/// `IDEMPOTENCY_WINDOW_SECS=0` turns keys off: the same clientId or Idempotency-Key twice is
/// two messages, as before keys existed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_window_at_zero_keys_are_ignored() {
    let stack = Stack::start(&[("IDEMPOTENCY_WINDOW_SECS", "0")]).await;
    let http = stack.http();
    let conv = http.create_conversation().await;
    let a = post_keyed(&http, &conv, "k", "one").await;
    let b = post_keyed(&http, &conv, "k", "two").await;
    assert_eq!((a.0, b.0), (201, 201), "{a:?} {b:?}");
    assert_ne!(a.1["messageId"], b.1["messageId"]);
    let mut ws = Ws::connect(&stack.gw().ws_url(), None).await;
    for _ in 0..2 {
        ws.send_json(&send_frame(&conv, "w", "agent", "three"))
            .await;
        assert_eq!(answer(&mut ws).await["type"], "ack");
    }
    assert_eq!(stored(&stack, &http, &conv).await.len(), 4);
    assert!(stack
        .redis
        .keys(&conv_key_pattern(&conv))
        .await
        .iter()
        .all(|k| !k.contains(":idem")));
}
