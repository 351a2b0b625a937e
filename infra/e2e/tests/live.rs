//! Users, member chats and the WebSocket protocol (README: WebSocket protocol): sessions, privacy, fan-out
//! across gateways, resume without gaps, resync, revocation, bad and abusive frames, slow
//! consumers, typing, and expiry notices.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use confab_e2e::*;

in_both_modes!(
    member_chats_create_list_and_invite,
    every_subscriber_on_two_gateways_gets_every_message_once_in_order,
    resume_on_the_other_gateway_after_its_gateway_is_killed,
);

const TS: &str = "2025-04-05T14:00:00Z";
const QUIET: Duration = Duration::from_millis(500);

/// The eventIds and messageIds of `message` frames.
fn message_ids(frames: &[Value]) -> (Vec<u64>, Vec<String>) {
    frames
        .iter()
        .filter(|f| f["type"] == "message")
        .map(|f| {
            (
                f["eventId"].as_u64().unwrap_or(0),
                f["message"]["messageId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .unzip()
}

fn range(from: u64, to: u64) -> Vec<u64> {
    (from..=to).collect()
}

// ---------------------------------------------------------------- users and sessions

#[tokio::test]
async fn sign_up_sign_in_search_and_sign_out() {
    let stack = Stack::start(&[]).await;
    let http = stack.http();

    assert_eq!(
        http.sign_up("Alice", "correct horse").await,
        (201, json!({"username": "alice"}))
    );
    assert_error(
        &http.sign_up("alice", "another password").await,
        409,
        "username_taken",
    );
    assert_error(
        &http.sign_up("ALICE", "another password").await,
        409,
        "username_taken",
    );
    for reserved in ["assistant", "customer", "agent", "system", "Assistant"] {
        let answer = http.sign_up(reserved, "long enough pw").await;
        assert_error(&answer, 409, "username_taken");
    }
    assert_error(
        &http.sign_up("al", "long enough pw").await,
        400,
        "invalid_username",
    );
    assert_error(
        &http.sign_up("bad name", "long enough pw").await,
        400,
        "invalid_username",
    );
    assert_error(
        &http.sign_up("bobby", "short").await,
        400,
        "invalid_password",
    );
    assert_error(
        &http.post("/api/users", &json!({})).await,
        400,
        "invalid_username",
    );
    assert_error(
        &http
            .post_raw("/api/users", Some("application/json"), "{oops")
            .await,
        400,
        "invalid_json",
    );

    let (status, body) = http.sign_in("alice", "correct horse").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(keys_of(&body), ["expiresAt", "token", "username"]);
    assert_eq!(body["username"], "alice");
    let token = str_field(&body, "token");
    assert!(token.len() >= 32, "{token}");
    let expires = str_field(&body, "expiresAt");
    assert!(
        expires.len() >= 20 && expires.ends_with('Z') && expires.contains('T'),
        "{expires}"
    );
    // Names are case-insensitive at sign-in too.
    let (status, second) = http.sign_in("ALICE", "correct horse").await;
    assert_eq!(status, 200);
    let second = http.with_token(&str_field(&second, "token"));

    // A wrong password and an unknown user are indistinguishable.
    let wrong = http.sign_in("alice", "wrong horse").await;
    let unknown = http.sign_in("nobody", "correct horse").await;
    assert_error(&wrong, 401, "invalid_credentials");
    assert_eq!(wrong, unknown);

    // Prefix search, signed in only.
    assert_eq!(http.sign_up("alan", "password-alan").await.0, 201);
    assert_eq!(http.sign_up("bob", "password-bob").await.0, 201);
    let alice = http.with_token(&token);
    assert_eq!(
        alice.get("/api/users?prefix=al").await,
        (200, json!({"users": ["alan", "alice"]}))
    );
    assert_eq!(
        alice.get("/api/users?prefix=AL").await,
        (200, json!({"users": ["alan", "alice"]}))
    );
    assert_eq!(
        alice.get("/api/users?prefix=ali").await,
        (200, json!({"users": ["alice"]}))
    );
    assert_eq!(
        alice.get("/api/users?prefix=b").await,
        (200, json!({"users": ["bob"]}))
    );
    assert_eq!(
        alice.get("/api/users?prefix=zz").await,
        (200, json!({"users": []}))
    );
    assert_error(&http.get("/api/users?prefix=al").await, 401, "unauthorized");
    assert_error(
        &http
            .with_token("not-a-token")
            .get("/api/users?prefix=al")
            .await,
        401,
        "invalid_token",
    );

    // Sign out ends that session only.
    assert_eq!(
        alice.delete("/api/sessions").await,
        (200, json!({"message": "Signed out"}))
    );
    // The signed-out token is now a bad credential: 401, never anonymous.
    assert_error(
        &alice.get("/api/users?prefix=al").await,
        401,
        "invalid_token",
    );
    assert_error(&alice.delete("/api/sessions").await, 401, "invalid_token");
    assert_eq!(
        second.get("/api/users?prefix=bo").await,
        (200, json!({"users": ["bob"]}))
    );
    assert_error(&http.delete("/api/sessions").await, 401, "unauthorized");
}

#[tokio::test]
async fn sign_in_is_rate_limited_after_repeated_failures() {
    let stack = Stack::start(&[("LOGIN_MAX_FAILURES", "3")]).await;
    let http = stack.http();
    assert_eq!(http.sign_up("carol", "password-carol").await.0, 201);
    for _ in 0..3 {
        assert_error(
            &http.sign_in("carol", "not her password").await,
            401,
            "invalid_credentials",
        );
    }
    assert_error(
        &http.sign_in("carol", "not her password").await,
        429,
        "rate_limited",
    );
    // Even the right password is refused while limited.
    assert_error(
        &http.sign_in("carol", "password-carol").await,
        429,
        "rate_limited",
    );
}

// ---------------------------------------------------------------- member chats

async fn member_chats_create_list_and_invite(mode: Mode) {
    let stack = Stack::in_mode(mode, 1, 1, 0, &[]).await;
    let http = stack.http();
    let alice = http.user("alice").await;
    let bob = http.user("bob").await;
    let carol = http.user("carol").await;

    // An unknown member: 404 naming them, and nothing is created.
    let answer = alice
        .post(
            "/api/conversations",
            &json!({"title": "t", "members": ["bob", "nobody"]}),
        )
        .await;
    assert_eq!(answer.0, 404, "{}", answer.1);
    assert_eq!(answer.1["error"]["code"], "not_found");
    assert_eq!(answer.1["error"]["usernames"], json!(["nobody"]));
    assert!(answer.1["error"]["message"]
        .as_str()
        .unwrap()
        .contains("nobody"));
    assert_eq!(
        alice.get("/api/conversations").await,
        (200, json!({"conversations": []}))
    );
    assert_eq!(
        bob.get("/api/conversations").await,
        (200, json!({"conversations": []}))
    );
    assert!(stack.redis.keys("confab:conv:*").await.is_empty());
    assert_error(&http.get("/api/conversations").await, 401, "unauthorized");

    // Malformed chat requests.
    for (body, code) in [
        (json!({"members": "bob"}), "invalid_members"),
        (json!({"members": ["bob", 7]}), "invalid_members"),
        (json!({"title": 5}), "invalid_field"),
        (json!({"assistant": "yes"}), "invalid_field"),
        (json!({"title": "t".repeat(201)}), "invalid_title"),
    ] {
        assert_error(&alice.post("/api/conversations", &body).await, 400, code);
    }
    assert!(stack.redis.keys("confab:conv:*").await.is_empty());

    let c1 = alice.create_chat("first", &["bob"], false).await;
    let c2 = alice.create_chat("second", &["Bob", "carol"], false).await;
    let (status, list) = alice.get("/api/conversations").await;
    assert_eq!(status, 200);
    let list = list["conversations"].as_array().unwrap().clone();
    let ids: Vec<&str> = list
        .iter()
        .map(|c| c["conversationId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [c2.as_str(), c1.as_str()], "newest activity first");
    assert_eq!(
        keys_of(&list[1]),
        [
            "assistant",
            "conversationId",
            "createdAt",
            "lastActivity",
            "members",
            "title"
        ]
    );
    assert_eq!(list[1]["title"], "first");
    assert_eq!(list[1]["members"], json!(["alice", "bob"]));
    assert_eq!(list[1]["assistant"], false);
    assert_eq!(list[0]["members"], json!(["alice", "bob", "carol"]));

    // Activity moves a chat to the top.
    alice.say(&c1, "bump").await;
    let ids_of = |v: Value| -> Vec<String> {
        v["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["conversationId"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        ids_of(alice.get("/api/conversations").await.1),
        [c1.clone(), c2.clone()]
    );
    assert_eq!(
        ids_of(bob.get("/api/conversations").await.1),
        [c1.clone(), c2.clone()]
    );
    assert_eq!(
        ids_of(carol.get("/api/conversations").await.1),
        std::slice::from_ref(&c2)
    );

    // A member chat's GET adds title, members, assistant and lastEventId.
    let (status, body) = bob.conversation(&c1).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        keys_of(&body),
        [
            "assistant",
            "conversationId",
            "lastEventId",
            "members",
            "messages",
            "title"
        ]
    );
    assert_eq!(body["lastEventId"], 1);
    assert_eq!(body["messages"].as_array().unwrap().len(), 1);

    // Invite: the invitee's socket gets conversation_added, subscribers get member_joined.
    let gw = stack.gw();
    let mut carol_ws = Ws::connect(&gw.ws_url(), carol.token()).await;
    let mut bob_ws = Ws::connect(&gw.ws_url(), bob.token()).await;
    let sub = bob_ws.subscribe(&c1, None).await;
    assert_eq!(sub["lastEventId"], 1);
    assert_error(&carol.conversation(&c1).await, 404, "not_found");
    let answer = alice
        .post(
            &format!("/api/conversations/{c1}/members"),
            &json!({"username": "Carol"}),
        )
        .await;
    assert_eq!(
        answer,
        (
            200,
            json!({"conversationId": c1, "members": ["alice", "bob", "carol"]})
        )
    );
    let joined = bob_ws.expect_type("member_joined").await;
    assert_eq!(
        joined,
        json!({"type": "member_joined", "conversationId": c1, "eventId": 2, "username": "carol"})
    );
    let added = carol_ws.expect_type("conversation_added").await;
    assert_eq!(keys_of(&added), ["conversation", "type"]);
    assert_eq!(added["conversation"]["conversationId"], c1.as_str());
    assert_eq!(
        added["conversation"]["members"],
        json!(["alice", "bob", "carol"])
    );
    assert_eq!(added["conversation"]["title"], "first");
    assert_eq!(added["conversation"]["assistant"], false);
    assert_eq!(carol.messages(&c1).await.len(), 1);
    assert_eq!(
        ids_of(carol.get("/api/conversations").await.1),
        [c1.clone(), c2.clone()]
    );

    // Inviting a member again changes nothing; an unknown user is a 404 naming them.
    let again = alice
        .post(
            &format!("/api/conversations/{c1}/members"),
            &json!({"username": "carol"}),
        )
        .await;
    assert_eq!(again.1["members"], json!(["alice", "bob", "carol"]));
    let ghost = alice
        .post(
            &format!("/api/conversations/{c1}/members"),
            &json!({"username": "ghost"}),
        )
        .await;
    assert_eq!(ghost.0, 404);
    assert!(ghost.1["error"]["message"]
        .as_str()
        .unwrap()
        .contains("ghost"));
    bob_ws.expect_silence(QUIET).await;
    carol_ws.expect_silence(QUIET).await;
}

#[tokio::test]
async fn member_chat_messages_are_signed_by_their_author() {
    let stack = Stack::start(&[]).await;
    let http = stack.http();
    let alice = http.user("alice").await;
    let bob = http.user("bob").await;
    let chat = alice.create_chat("signed", &["bob"], false).await;
    let path = format!("/api/conversations/{chat}/messages");

    // Whatever sender the body claims, the author is the signed-in user.
    let (status, body) = alice
        .post(
            &path,
            &json!({"content": "I am the agent", "sender": "agent", "timestamp": TS}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["message"], "Message added successfully");
    let (status, _) = bob.post(&path, &json!({"content": "no timestamp"})).await;
    assert_eq!(status, 201);
    let msgs = alice.messages(&chat).await;
    assert_eq!(msgs[0]["sender"], "alice");
    assert_eq!(msgs[0]["content"], "I am the agent");
    // Member chats take the server's time, never the client's.
    let ts0 = msgs[0]["timestamp"].as_str().unwrap();
    assert_ne!(ts0, TS);
    assert!(
        ts0.ends_with('Z') && ts0.contains('T'),
        "server time: {ts0}"
    );
    assert_eq!(msgs[1]["sender"], "bob");
    let ts = msgs[1]["timestamp"].as_str().unwrap();
    assert!(ts.ends_with('Z') && ts.contains('T'), "server time: {ts}");
    assert_error(
        &alice.post(&path, &json!({"content": ""})).await,
        400,
        "invalid_content",
    );

    // Only the author deletes a message.
    let alices = str_field(&msgs[0], "messageId");
    assert_error(&bob.delete_message(&chat, &alices).await, 403, "forbidden");
    assert_eq!(alice.delete_message(&chat, &alices).await.0, 200);
    assert_eq!(bob.messages(&chat).await.len(), 1);
}

#[tokio::test]
async fn member_chats_are_invisible_to_outsiders() {
    let stack = Stack::start(&[]).await;
    let http = stack.http();
    let alice = http.user("alice").await;
    let carol = http.user("carol").await;
    let chat = alice.create_chat("private", &[], false).await;
    let mid = alice.say(&chat, "secret").await;
    let unknown = http.conversation(&random_id()).await;
    assert_error(&unknown, 404, "not_found");

    for (who, client) in [("a non-member", carol.clone()), ("no token", http.clone())] {
        println!("as {who}");
        let seen = client.conversation(&chat).await;
        assert_eq!(
            seen, unknown,
            "{who} must see exactly an unknown conversation"
        );
        for answer in [
            client
                .post(
                    &format!("/api/conversations/{chat}/messages"),
                    &json!({"content": "x", "sender": "customer", "timestamp": TS}),
                )
                .await,
            client.delete_message(&chat, &mid).await,
            client
                .post(
                    &format!("/api/conversations/{chat}/members"),
                    &json!({"username": "carol"}),
                )
                .await,
            client
                .post_empty(&format!("/api/conversations/{chat}/assistant/cancel"))
                .await,
        ] {
            assert_error(&answer, 404, "not_found");
        }
    }
    let (_, body) = alice.conversation(&chat).await;
    assert_eq!(body["members"], json!(["alice"]));
    assert_eq!(body["messages"].as_array().unwrap().len(), 1);

    // WebSocket: subscribing, sending or cancelling is not_found for outsiders.
    let ws_url = stack.gw().ws_url();
    for token in [carol.token(), None] {
        let mut ws = Ws::connect(&ws_url, token).await;
        ws.send_json(&json!({"type": "subscribe", "conversationId": chat}))
            .await;
        let err = ws.expect_type("error").await;
        assert_eq!(err["code"], "not_found", "{err}");
        assert_eq!(err["ref"], chat.as_str());
        ws.send_json(
            &json!({"type": "send", "conversationId": chat, "content": "x", "clientId": "k1"}),
        )
        .await;
        let err = ws.expect_type("error").await;
        assert_eq!(
            (err["code"].as_str(), err["ref"].as_str()),
            (Some("not_found"), Some("k1"))
        );
        ws.send_json(&json!({"type": "cancel", "conversationId": chat}))
            .await;
        assert_eq!(ws.expect_type("error").await["code"], "not_found");
        ws.ping().await;
    }
    // A bad token cannot even open a socket.
    match Ws::try_connect(&ws_url, Some("forged-token"), WsOptions::default()).await {
        Err((status, body)) => {
            assert_eq!(status, 401, "{body}");
            assert!(body.contains("invalid_token"), "{body}");
        }
        Ok(_) => panic!("a forged token opened a WebSocket"),
    }
    assert_eq!(alice.messages(&chat).await.len(), 1);
}

// ---------------------------------------------------------------- fan-out and resume

async fn every_subscriber_on_two_gateways_gets_every_message_once_in_order(mode: Mode) {
    let stack = Stack::in_mode(mode, 2, 1, 0, &[]).await;
    let gws = [stack.gateways[0].http(), stack.gateways[1].http()];
    let conv = gws[0].create_conversation().await;
    let mut clients = Vec::new();
    for i in 0..4 {
        let mut ws = Ws::connect(&stack.gateways[i % 2].ws_url(), None).await;
        let sub = ws.subscribe(&conv, None).await;
        assert_eq!(
            sub,
            json!({"type": "subscribed", "conversationId": conv, "lastEventId": 0})
        );
        clients.push(ws);
    }
    // A writer on gateway 1 sends over its socket; REST sends alternate between gateways.
    let mut writer = Ws::connect(&stack.gateways[1].ws_url(), None).await;
    let total = 60;
    let mut sent = Vec::new();
    for n in 0..total {
        if n % 5 == 4 {
            let cid = format!("client-{n}");
            writer
                .send_json(&send_frame(&conv, &cid, "agent", &format!("m{n}")))
                .await;
            let ack = writer.expect_type("ack").await;
            assert_eq!(keys_of(&ack), ["clientId", "messageId", "type"]);
            assert_eq!(ack["clientId"], cid.as_str());
            sent.push(str_field(&ack, "messageId"));
        } else {
            sent.push(
                gws[n % 2]
                    .send_ok(&conv, "customer", &format!("m{n}"))
                    .await,
            );
        }
    }
    let results = futures::future::join_all(clients.iter_mut().map(|ws| async {
        let frames = ws.collect("message", total, Duration::from_secs(30)).await;
        ws.expect_silence(QUIET).await;
        frames
    }))
    .await;
    for frames in &results {
        let (eids, mids) = message_ids(frames);
        assert_eq!(eids, range(1, total as u64), "eventIds");
        assert_eq!(mids, sent, "messages in send order, each once");
        let f = &frames[4];
        assert_eq!(keys_of(f), ["conversationId", "eventId", "message", "type"]);
        assert_eq!(f["conversationId"], conv.as_str());
        assert_eq!(
            f["message"],
            json!({"messageId": sent[4], "sender": "agent", "content": "m4", "timestamp": TS})
        );
    }
    // The writer was not subscribed: it got its acks and nothing else.
    writer.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn resume_with_since_after_a_dropped_connection() {
    let stack = Stack::start(&[]).await;
    let http = stack.http();
    let conv = http.create_conversation().await;
    let ws_url = stack.gw().ws_url();

    let mut ws = Ws::connect(&ws_url, None).await;
    ws.subscribe(&conv, None).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(http.send_ok(&conv, "customer", &format!("m{n}")).await);
    }
    let frames = ws.collect("message", 5, WS_WAIT).await;
    let last = frames.last().unwrap()["eventId"].as_u64().unwrap();
    assert_eq!(last, 5);
    ws.close().await;

    // Missed while away: messages and a delete.
    for n in 5..12 {
        ids.push(http.send_ok(&conv, "agent", &format!("m{n}")).await);
    }
    assert_eq!(http.delete_message(&conv, &ids[2]).await.0, 200);

    let mut ws = Ws::connect(&ws_url, None).await;
    let sub = ws.subscribe(&conv, Some(last)).await;
    assert_eq!(
        sub,
        json!({"type": "subscribed", "conversationId": conv, "lastEventId": 13})
    );
    let mut replay = Vec::new();
    for _ in 6..=13 {
        replay.push(ws.next_json(WS_WAIT).await.expect("a replayed event"));
    }
    let eids: Vec<u64> = replay
        .iter()
        .map(|f| f["eventId"].as_u64().unwrap())
        .collect();
    assert_eq!(eids, range(6, 13));
    let (_, mids) = message_ids(&replay);
    assert_eq!(mids, ids[5..12].to_vec());
    assert_eq!(
        replay[7],
        json!({"type": "message_deleted", "conversationId": conv, "eventId": 13, "messageId": ids[2]})
    );
    // Then live events, continuing the sequence.
    ids.push(http.send_ok(&conv, "customer", "live").await);
    let live = ws.expect_type("message").await;
    assert_eq!(live["eventId"], 14);
    ws.expect_silence(QUIET).await;

    // Subscribing with an up-to-date since replays nothing.
    let mut other = Ws::connect(&ws_url, None).await;
    let sub = other.subscribe(&conv, Some(14)).await;
    assert_eq!(sub["lastEventId"], 14);
    assert!(sub.get("resync").is_none());
    other.expect_silence(QUIET).await;
}

async fn resume_on_the_other_gateway_after_its_gateway_is_killed(mode: Mode) {
    let mut stack = Stack::in_mode(mode, 2, 1, 0, &[]).await;
    let via_b = stack.gateways[1].http();
    let conv = via_b.create_conversation().await;

    let mut ws = Ws::connect(&stack.gateways[0].ws_url(), None).await;
    ws.subscribe(&conv, None).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(via_b.send_ok(&conv, "customer", &format!("m{n}")).await);
    }
    let (eids, _) = message_ids(&ws.collect("message", 5, WS_WAIT).await);
    let last = *eids.last().unwrap();

    stack.gateways[0].kill9();
    let (code, _) = ws.wait_close(WS_WAIT).await;
    assert_ne!(code, Some(1000), "a killed gateway cannot close cleanly");
    for n in 5..12 {
        ids.push(via_b.send_ok(&conv, "agent", &format!("m{n}")).await);
    }

    // The client reconnects to the surviving gateway and resumes.
    let mut ws = Ws::connect(&stack.gateways[1].ws_url(), None).await;
    let sub = ws.subscribe(&conv, Some(last)).await;
    assert_eq!(sub["lastEventId"], 12);
    let (eids, mids) = message_ids(&ws.collect("message", 7, WS_WAIT).await);
    assert_eq!(eids, range(6, 12));
    assert_eq!(mids, ids[5..].to_vec());
    ids.push(via_b.send_ok(&conv, "customer", "live").await);
    assert_eq!(ws.expect_type("message").await["eventId"], 13);
    ws.expect_silence(QUIET).await;

    // The killed gateway comes back on its port and serves again.
    stack.gateways[0].restart().await;
    let mut again = Ws::connect(&stack.gateways[0].ws_url(), None).await;
    let sub = again.subscribe(&conv, Some(13)).await;
    assert_eq!(sub["lastEventId"], 13);
    stack.gateways[0]
        .http()
        .send_ok(&conv, "agent", "back")
        .await;
    assert_eq!(again.expect_type("message").await["eventId"], 14);
    assert_eq!(ws.expect_type("message").await["eventId"], 14);
}

/// A resume that finds nothing after `since` in the history while a write lands right after
/// that read: the new event is in the queue (the channel was joined first) and must be sent,
/// not dropped as already sent because `subscribed` reported the newer `lastEventId`. Found by
/// the chaos run. Each round resumes from the newest event while one write races the
/// subscription; whichever way the race goes, the next frame must be that write's event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_while_a_write_lands_misses_no_event() {
    let stack = Stack::start(&[]).await;
    let http = stack.http();
    let conv = http.create_conversation().await;
    let mut ws = Ws::connect(&stack.gw().ws_url(), None).await;
    for since in 0..200u64 {
        let write = {
            let (http, conv) = (http.clone(), conv.clone());
            tokio::spawn(async move { http.send_ok(&conv, "customer", &format!("m{since}")).await })
        };
        // Staggered a little, so the write lands at different points of the subscription.
        for _ in 0..since % 3 {
            tokio::task::yield_now().await;
        }
        let sub = ws.subscribe(&conv, Some(since)).await;
        assert_ne!(sub["resync"], true, "{sub}");
        match ws.next_event(WS_WAIT).await {
            WsEvent::Frame(f) if f["type"] == "message" => assert_eq!(
                f["eventId"].as_u64(),
                Some(since + 1),
                "resumed after {since} ({sub}), got {f}"
            ),
            other => panic!(
                "resumed after {since} ({sub}): no event {}, got {other:?}",
                since + 1
            ),
        }
        write.await.unwrap();
        ws.send_json(&json!({"type": "unsubscribe", "conversationId": conv}))
            .await;
        ws.expect_type("unsubscribed").await;
    }
}

#[tokio::test]
async fn since_older_than_the_kept_history_asks_for_a_resync() {
    let stack = Stack::start(&[]).await;
    let http = stack.http();
    let conv = http.create_conversation().await;
    let mut ids = Vec::new();
    for n in 0..6 {
        ids.push(http.send_ok(&conv, "customer", &format!("m{n}")).await);
    }
    // Four deletes are events 7..=10; the bounded history then drops 7 and 8 (as a long busy
    // history would drop its oldest events).
    for id in &ids[..4] {
        assert_eq!(http.delete_message(&conv, id).await.0, 200);
    }
    let _: u64 = stack
        .redis
        .q(&["XTRIM", &events_key(&conv), "MAXLEN", "2"])
        .await;
    let ws_url = stack.gw().ws_url();

    for since in [0, 3, 7] {
        let mut ws = Ws::connect(&ws_url, None).await;
        let sub = ws.subscribe(&conv, Some(since)).await;
        assert_eq!(
            sub,
            json!({"type": "subscribed", "conversationId": conv, "lastEventId": 10, "resync": true}),
            "since {since}"
        );
        ws.expect_silence(Duration::from_millis(200)).await;
        if since == 7 {
            // After a resync the live stream continues from the newest event.
            http.send_ok(&conv, "agent", "live").await;
            assert_eq!(ws.expect_type("message").await["eventId"], 11);
        }
    }
    // From the newest dropped event on: a normal replay of what is left.
    let mut ws = Ws::connect(&ws_url, None).await;
    let sub = ws.subscribe(&conv, Some(8)).await;
    assert_eq!(
        sub,
        json!({"type": "subscribed", "conversationId": conv, "lastEventId": 11})
    );
    let deleted = ws.collect("message_deleted", 2, WS_WAIT).await;
    let deleted_ids: Vec<u64> = deleted
        .iter()
        .map(|e| e["eventId"].as_u64().unwrap())
        .collect();
    assert_eq!(deleted_ids, [9, 10]);
    let (eids, _) = message_ids(&ws.collect("message", 1, WS_WAIT).await);
    assert_eq!(eids, [11]);
    // REST still has every message that was not deleted.
    assert_eq!(http.messages(&conv).await.len(), 3);
}

// ---------------------------------------------------------------- sessions on sockets

#[tokio::test]
async fn signing_out_closes_that_sessions_sockets_with_4001() {
    let stack = Stack::with(2, 1, 0, &[]).await;
    let http = stack.http();
    let alice = http.user("alice").await;
    let alice2 = http.another_session("alice").await;
    let chat = alice.create_chat("mine", &[], false).await;

    let mut ws1 = Ws::connect(&stack.gateways[0].ws_url(), alice.token()).await;
    let mut ws1b = Ws::connect(&stack.gateways[1].ws_url(), alice.token()).await;
    let mut ws2 = Ws::connect(&stack.gateways[0].ws_url(), alice2.token()).await;
    for ws in [&mut ws1, &mut ws1b, &mut ws2] {
        ws.subscribe(&chat, None).await;
    }
    assert_eq!(alice.delete("/api/sessions").await.0, 200);
    let (code, _) = ws1.wait_close(WS_WAIT).await;
    assert_eq!(code, Some(4001));
    let (code, _) = ws1b.wait_close(WS_WAIT).await;
    assert_eq!(code, Some(4001), "the other gateway closes it too");

    // The other session's socket is unaffected.
    ws2.ping().await;
    alice2.say(&chat, "still here").await;
    assert_eq!(
        ws2.expect_type("message").await["message"]["content"],
        "still here"
    );
    // The revoked token opens nothing.
    let refused = Ws::try_connect(
        &stack.gateways[0].ws_url(),
        alice.token(),
        WsOptions::default(),
    )
    .await;
    assert_eq!(refused.err().map(|(s, _)| s), Some(401));
}

// ---------------------------------------------------------------- bad and abusive frames

#[tokio::test]
async fn bad_frames_get_error_frames_and_the_socket_stays_usable() {
    let stack = Stack::start(&[("WS_MAX_FRAME_BYTES", "1024")]).await;
    let http = stack.http();
    let conv = http.create_conversation().await;
    let mut ws = Ws::connect(&stack.gw().ws_url(), None).await;
    let ghost = random_id();

    let cases: Vec<(String, &str, Option<&str>)> = vec![
        ("not json".into(), "invalid_json", None),
        ("[1,2]".into(), "invalid_frame", None),
        ("{}".into(), "invalid_frame", None),
        (r#"{"type":5}"#.into(), "invalid_frame", None),
        (r#"{"type":"dance"}"#.into(), "unknown_type", Some("dance")),
        (r#"{"type":"subscribe"}"#.into(), "invalid_frame", Some("subscribe")),
        (r#"{"type":"subscribe","conversationId":"nope"}"#.into(), "invalid_frame", Some("subscribe")),
        (json!({"type": "subscribe", "conversationId": conv, "since": -1}).to_string(), "invalid_frame", Some("subscribe")),
        (json!({"type": "subscribe", "conversationId": conv, "since": "5"}).to_string(), "invalid_frame", Some("subscribe")),
        (json!({"type": "subscribe", "conversationId": ghost}).to_string(), "not_found", Some(ghost.as_str())),
        (r#"{"type":"unsubscribe"}"#.into(), "invalid_frame", Some("unsubscribe")),
        (json!({"type": "send", "conversationId": conv, "clientId": "c1", "sender": "customer", "timestamp": TS}).to_string(), "invalid_content", Some("c1")),
        (json!({"type": "send", "conversationId": conv, "clientId": "c2", "sender": "bot", "content": "x", "timestamp": TS}).to_string(), "invalid_sender", Some("c2")),
        (json!({"type": "send", "conversationId": conv, "clientId": "c3", "sender": "agent", "content": "x", "timestamp": "soon"}).to_string(), "invalid_timestamp", Some("c3")),
        (json!({"type": "send", "conversationId": conv, "clientId": "c4", "sender": "agent", "content": 7, "timestamp": TS}).to_string(), "invalid_content", Some("c4")),
        (json!({"type": "send", "conversationId": conv, "sender": "agent", "content": "", "timestamp": TS}).to_string(), "invalid_content", Some("send")),
        (json!({"type": "send", "conversationId": ghost, "clientId": "c5", "sender": "agent", "content": "x", "timestamp": TS}).to_string(), "not_found", Some("c5")),
        (json!({"type": "typing", "conversationId": conv}).to_string(), "not_subscribed", Some("typing")),
        (json!({"type": "ping", "pad": "x".repeat(2000)}).to_string(), "frame_too_large", None),
    ];
    for (frame, code, reference) in &cases {
        ws.send_text(frame).await;
        let err = ws.expect_type("error").await;
        println!("{} → {err}", frame.chars().take(80).collect::<String>());
        assert_eq!(err["code"], *code, "frame {frame}");
        assert!(!err["message"].as_str().unwrap_or("").is_empty(), "{err}");
        if let Some(r) = reference {
            assert_eq!(err["ref"], *r, "frame {frame}");
        }
        ws.ping().await;
    }
    ws.send_binary(b"{\"type\":\"ping\"}".to_vec()).await;
    assert_eq!(
        ws.expect_type("error").await["code"],
        "binary_not_supported"
    );
    ws.ping().await;

    // Still fully usable.
    ws.subscribe(&conv, None).await;
    ws.send_json(&send_frame(&conv, "ok-1", "customer", "fine"))
        .await;
    let mut got = [
        ws.next_json(WS_WAIT).await.unwrap(),
        ws.next_json(WS_WAIT).await.unwrap(),
    ];
    got.sort_by_key(|f| f["type"].as_str().unwrap_or_default().to_string());
    assert_eq!(got[0]["type"], "ack");
    assert_eq!(got[1]["type"], "message");
    assert_eq!(got[0]["messageId"], got[1]["message"]["messageId"]);
    // None of the bad sends stored anything.
    assert_eq!(http.messages(&conv).await.len(), 1);
    assert!(!stack.gw().log().contains("panicked"));
}

#[tokio::test]
async fn a_flood_of_frames_is_rate_limited_and_then_cut_off_with_4029() {
    let stack = Stack::start(&[("WS_RATE_PER_SEC", "5"), ("WS_RATE_BURST", "5")]).await;
    let ws_url = stack.gw().ws_url();

    // A burst over the limit: the excess is refused frame by frame, the socket stays open.
    let mut ws = Ws::connect(&ws_url, None).await;
    for _ in 0..12 {
        ws.feed_text(r#"{"type":"ping"}"#).await;
    }
    ws.flush().await;
    let mut pongs = 0;
    let mut limited = 0;
    for _ in 0..12 {
        let f = ws
            .next_json(WS_WAIT)
            .await
            .expect("every frame is answered");
        match (f["type"].as_str(), f["code"].as_str()) {
            (Some("pong"), _) => pongs += 1,
            (Some("error"), Some("rate_limited")) => limited += 1,
            _ => panic!("unexpected {f}"),
        }
    }
    println!("{pongs} pongs, {limited} rate_limited");
    assert!(pongs >= 5, "the burst of 5 is allowed ({pongs} pongs)");
    assert!(limited >= 1, "frames past the burst are refused");
    // Once the bucket refills (5 tokens a second), frames are served again. Probing sooner
    // would itself be refused and count towards the cut-off, so this waits the refill time.
    tokio::time::sleep(Duration::from_millis(600)).await;
    ws.ping().await;
    ws.ping().await;

    // A sustained flood goes past the tolerance: the server closes with 4029.
    let mut flood = Ws::connect(&ws_url, None).await;
    for _ in 0..60 {
        flood.feed_text(r#"{"type":"ping"}"#).await;
    }
    flood.flush().await;
    let (code, frames) = flood.wait_close(WS_WAIT).await;
    assert_eq!(code, Some(4029), "after {} frames", frames.len());
    assert!(frames.iter().any(|f| f["code"] == "rate_limited"));

    // Other clients are not affected.
    let mut calm = Ws::connect(&ws_url, None).await;
    calm.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_closed_with_4008_while_others_get_everything() {
    let stack = Stack::start(&[("WS_SEND_QUEUE", "16"), ("MAX_MESSAGE_BYTES", "65536")]).await;
    let http = stack.http();
    let conv = http.create_conversation().await;
    let ws_url = stack.gw().ws_url();

    // The slow client subscribes and then reads nothing (a small receive buffer makes the
    // backlog land in the server's queue sooner).
    let mut slow = Ws::connect_with(
        &ws_url,
        None,
        WsOptions {
            recv_buffer: Some(4096),
            ..WsOptions::default()
        },
    )
    .await;
    slow.subscribe(&conv, None).await;
    // The fast client reads everything, in its own task.
    let mut fast = Ws::connect(&ws_url, None).await;
    fast.subscribe(&conv, None).await;
    let fast_frames = Arc::new(Mutex::new(Vec::<Value>::new()));
    let stop_reading = Arc::new(AtomicBool::new(false));
    let fast_task = {
        let (frames, stop) = (fast_frames.clone(), stop_reading.clone());
        tokio::spawn(async move {
            loop {
                match fast.next_event(Duration::from_millis(200)).await {
                    WsEvent::Frame(f) => frames.lock().unwrap().push(f),
                    WsEvent::Timeout if stop.load(Ordering::Relaxed) => return fast,
                    WsEvent::Timeout => {}
                    WsEvent::Closed(code) => panic!("the fast client was closed ({code:?})"),
                }
            }
        })
    };

    // Publish large messages until the gateway gives up on the slow client.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            let (http, conv, stop, acked) =
                (http.clone(), conv.clone(), stop.clone(), acked.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let content = format!("p{p} n{n} {}", "z".repeat(60_000));
                    let id = http.send_ok(&conv, "agent", &content).await;
                    acked.lock().unwrap().push(id);
                    n += 1;
                }
            })
        })
        .collect();
    let gateway = stack.gw();
    eventually_true(
        "the gateway closes the slow consumer",
        Duration::from_secs(60),
        async || gateway.log().contains("slow WebSocket consumer"),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    // The slow client reads what was buffered for it, then the 4008 close.
    let (code, got) = slow.wait_close(Duration::from_secs(30)).await;
    assert_eq!(code, Some(4008), "after {} frames", got.len());
    for p in publishers {
        p.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let total = acked.len() as u64;
    let (slow_eids, _) = message_ids(&got);
    println!(
        "{total} messages published; the slow client read {} before 4008",
        slow_eids.len()
    );
    assert!((slow_eids.len() as u64) < total);
    assert_eq!(
        slow_eids,
        range(1, slow_eids.len() as u64),
        "no gap before the close"
    );

    // The fast client got every message, in order, once.
    eventually_true(
        "the fast client has every message",
        Duration::from_secs(60),
        async || fast_frames.lock().unwrap().len() as u64 >= total,
    )
    .await;
    stop_reading.store(true, Ordering::Relaxed);
    let mut fast = fast_task.await.unwrap();
    let frames = fast_frames.lock().unwrap().clone();
    let (eids, mids) = message_ids(&frames);
    assert_eq!(eids, range(1, total), "the fast client's eventIds");
    let mids: HashSet<String> = mids.into_iter().collect();
    assert_eq!(mids, acked.iter().cloned().collect::<HashSet<_>>());
    fast.ping().await;

    // The slow client resumes with since and misses nothing.
    let resume_from = slow_eids.last().copied().unwrap_or(0);
    let mut back = Ws::connect(&ws_url, None).await;
    let sub = back.subscribe(&conv, Some(resume_from)).await;
    assert_eq!(sub["lastEventId"], total);
    let rest = back
        .collect(
            "message",
            (total - resume_from) as usize,
            Duration::from_secs(30),
        )
        .await;
    let (eids, _) = message_ids(&rest);
    assert_eq!(eids, range(resume_from + 1, total));
}

// ---------------------------------------------------------------- typing and expiry

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_reaches_the_other_members_but_not_the_typist() {
    let stack = Stack::with(2, 1, 0, &[]).await;
    let http = stack.http();
    let alice = http.user("alice").await;
    let bob = http.user("bob").await;
    let carol = http.user("carol").await;
    let chat = alice.create_chat("typing", &["bob", "carol"], false).await;
    let mut a = Ws::connect(&stack.gateways[0].ws_url(), alice.token()).await;
    let mut b = Ws::connect(&stack.gateways[0].ws_url(), bob.token()).await;
    let mut c = Ws::connect(&stack.gateways[1].ws_url(), carol.token()).await;
    for ws in [&mut a, &mut b, &mut c] {
        ws.subscribe(&chat, None).await;
    }
    // The frame's sender field cannot impersonate anyone in a member chat.
    a.send_json(&json!({"type": "typing", "conversationId": chat, "sender": "agent"}))
        .await;
    let want = json!({"type": "typing", "conversationId": chat, "username": "alice"});
    assert_eq!(b.expect_type("typing").await, want);
    assert_eq!(c.expect_type("typing").await, want);
    a.ping().await;
    a.expect_silence(QUIET).await;
    b.expect_silence(QUIET).await;
    // Typing is not stored.
    assert_eq!(stack.redis.history(&chat).await, Vec::<Value>::new());
}

#[tokio::test]
async fn typing_in_an_open_conversation_is_not_echoed_to_the_typist() {
    let stack = Stack::start(&[]).await;
    let conv = stack.http().create_conversation().await;
    let mut a = Ws::connect(&stack.gw().ws_url(), None).await;
    let mut b = Ws::connect(&stack.gw().ws_url(), None).await;
    a.subscribe(&conv, None).await;
    b.subscribe(&conv, None).await;
    a.send_json(&json!({"type": "typing", "conversationId": conv, "sender": "customer"}))
        .await;
    assert_eq!(
        b.expect_type("typing").await,
        json!({"type": "typing", "conversationId": conv, "username": "customer"})
    );
    a.ping().await;
    a.expect_silence(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_conversation_notifies_its_subscribers_once() {
    let env = [
        ("MEMBER_CHAT_TTL_SECS", "2"),
        ("CONVERSATION_TTL_SECS", "2"),
    ];
    let stack = Stack::with(2, 1, 1, &env).await;
    let http = stack.http();
    let alice = http.user("alice").await;
    let bob = http.user("bob").await;
    let carol = http.user("carol").await;
    // Subscribed members (on both gateways), a member who only listens for notices, and an
    // anonymous subscriber of an open conversation. Sockets first, so that subscribing
    // follows creation at once (the timeout is short).
    let mut a = Ws::connect(&stack.gateways[0].ws_url(), alice.token()).await;
    let mut b = Ws::connect(&stack.gateways[1].ws_url(), bob.token()).await;
    let mut c = Ws::connect(&stack.gateways[1].ws_url(), carol.token()).await;
    let mut anon = Ws::connect(&stack.gateways[0].ws_url(), None).await;
    let chat = alice
        .create_chat("short-lived", &["bob", "carol"], false)
        .await;
    let open = http.create_conversation().await;
    anon.subscribe(&open, None).await;
    for ws in [&mut a, &mut b, &mut c] {
        let added = ws.wait_type("conversation_added").await;
        assert_eq!(added["conversation"]["conversationId"], chat.as_str());
    }
    a.subscribe(&chat, None).await;
    b.subscribe(&chat, None).await;
    let created_list = alice.get("/api/conversations").await.1;
    assert_eq!(created_list["conversations"].as_array().unwrap().len(), 1);

    let expired = json!({"type": "conversation_expired", "conversationId": chat});
    for ws in [&mut a, &mut b, &mut c] {
        assert_eq!(ws.wait_type("conversation_expired").await, expired);
    }
    assert_eq!(
        anon.wait_type("conversation_expired").await,
        json!({"type": "conversation_expired", "conversationId": open})
    );
    // Once each, although members hear it on both the chat's and their own channel.
    for ws in [&mut a, &mut b, &mut c, &mut anon] {
        ws.expect_silence(Duration::from_secs(1)).await;
        ws.ping().await;
    }
    assert_error(&alice.conversation(&chat).await, 404, "not_found");
    assert_error(&http.conversation(&open).await, 404, "not_found");
    assert_eq!(
        alice.get("/api/conversations").await,
        (200, json!({"conversations": []}))
    );
    assert_eq!(
        bob.get("/api/conversations").await,
        (200, json!({"conversations": []}))
    );
}

#[tokio::test]
async fn ws_sends_keep_their_order_and_are_acknowledged() {
    let stack = Stack::start(&[]).await;
    let http = stack.http();
    let conv = http.create_conversation().await;
    let mut ws = Ws::connect(&stack.gw().ws_url(), None).await;
    let n = 50;
    for i in 0..n {
        ws.feed_text(
            &send_frame(&conv, &format!("c{i}"), "customer", &format!("w{i}")).to_string(),
        )
        .await;
    }
    ws.flush().await;
    let acks = ws.collect("ack", n, Duration::from_secs(30)).await;
    let acked: HashSet<String> = acks.iter().map(|a| str_field(a, "clientId")).collect();
    assert_eq!(acked.len(), n, "one ack per clientId");
    let contents: Vec<String> = http
        .messages(&conv)
        .await
        .iter()
        .map(|m| str_field(m, "content"))
        .collect();
    let want: Vec<String> = (0..n).map(|i| format!("w{i}")).collect();
    assert_eq!(
        contents, want,
        "a socket's sends are applied in the order sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pubsub_outage_is_caught_up_from_history_without_gaps() {
    let stack = Stack::start(&[]).await;
    let http = stack.http();
    let conv = http.create_conversation().await;
    let mut ws = Ws::connect(&stack.gw().ws_url(), None).await;
    ws.subscribe(&conv, None).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(
            http.send_ok(&conv, "customer", &format!("before {n}"))
                .await,
        );
    }
    ws.collect("message", 3, WS_WAIT).await;

    // Cut the gateway's Pub/Sub connection and keep it from reconnecting: Redis refuses new
    // clients while maxclients is below the number connected (ours stays connected).
    let _: () = stack.redis.q(&["CONFIG", "SET", "maxclients", "1"]).await;
    let list: String = stack.redis.q(&["CLIENT", "LIST"]).await;
    let subscribers: Vec<String> = list
        .lines()
        .filter(|l| {
            l.split(' ')
                .any(|kv| kv.starts_with("sub=") && kv != "sub=0")
        })
        .filter_map(|l| {
            l.split(' ')
                .find_map(|kv| kv.strip_prefix("id="))
                .map(str::to_string)
        })
        .collect();
    assert_eq!(
        subscribers.len(),
        1,
        "the gateway's Pub/Sub connection: {list}"
    );
    let _: u64 = stack
        .redis
        .q(&["CLIENT", "KILL", "ID", &subscribers[0]])
        .await;

    // Meanwhile messages are written (straight into the command stream: the gateway could
    // not hear a reply now) and published to nobody.
    for n in 0..4 {
        let (command, id) = send_command(&conv, "agent", &format!("during {n}"));
        stack.redis.append_command(&conv, &command).await;
        ids.push(id);
    }
    eventually_true("the outage messages are stored", DEADLINE, async || {
        stack.redis.history(&conv).await.len() == 7
    })
    .await;
    let _: () = stack
        .redis
        .q(&["CONFIG", "SET", "maxclients", "10000"])
        .await;

    // The client gets them from the history, in order, once.
    let (eids, mids) = message_ids(&ws.collect("message", 4, Duration::from_secs(20)).await);
    assert_eq!(eids, range(4, 7));
    assert_eq!(mids, ids[3..7].to_vec());
    // The gateway resubscribes: replies and live events flow again.
    let channel = format!("confab:ev:{{{conv}}}");
    eventually_true("the gateway resubscribed", DEADLINE, async || {
        let v: Vec<(String, u64)> = stack.redis.q(&["PUBSUB", "NUMSUB", &channel]).await;
        v.first().is_some_and(|(_, n)| *n == 1)
    })
    .await;
    ids.push(http.send_ok(&conv, "customer", "after").await);
    let live = ws.expect_type("message").await;
    assert_eq!(live["eventId"], 8);
    assert_eq!(live["message"]["messageId"], ids[7].as_str());
    // The second scheduled resync finds nothing new.
    ws.expect_silence(Duration::from_secs(4)).await;
    for line in stack.gw().log().lines().filter(|l| l.contains("Pub/Sub")) {
        println!("gateway: {line}");
    }
}

#[tokio::test]
async fn an_expired_open_conversation_cannot_be_subscribed_to_again() {
    let stack = Stack::with(1, 1, 1, &[("CONVERSATION_TTL_SECS", "2")]).await;
    let http = stack.http();
    let conv = http.create_conversation().await;
    let mut ws = Ws::connect(&stack.gw().ws_url(), None).await;
    ws.subscribe(&conv, None).await;
    assert_eq!(
        ws.wait_type("conversation_expired").await,
        json!({"type": "conversation_expired", "conversationId": conv})
    );
    assert_error(&http.conversation(&conv).await, 404, "not_found");
    // Gone is gone: this gateway must not answer `subscribed` for it, on any connection.
    for mut client in [ws, Ws::connect(&stack.gw().ws_url(), None).await] {
        client
            .send_json(&json!({"type": "subscribe", "conversationId": conv}))
            .await;
        let answer = client.next_json(WS_WAIT).await.expect("an answer");
        assert_eq!(
            (answer["type"].as_str(), answer["code"].as_str()),
            (Some("error"), Some("not_found")),
            "subscribing to an expired conversation: {answer}"
        );
    }
}

#[tokio::test]
async fn unsubscribe_and_the_subscription_limit() {
    let stack = Stack::start(&[("WS_MAX_SUBSCRIPTIONS", "2")]).await;
    let http = stack.http();
    let convs = [
        http.create_conversation().await,
        http.create_conversation().await,
        http.create_conversation().await,
    ];
    let mut ws = Ws::connect(&stack.gw().ws_url(), None).await;
    ws.subscribe(&convs[0], None).await;
    ws.subscribe(&convs[1], None).await;
    ws.send_json(&json!({"type": "subscribe", "conversationId": convs[2]}))
        .await;
    let err = ws.expect_type("error").await;
    assert_eq!(err["code"], "too_many_subscriptions", "{err}");
    // Subscribing again to one already held is not a new subscription.
    ws.subscribe(&convs[1], None).await;

    ws.send_json(&json!({"type": "unsubscribe", "conversationId": convs[0]}))
        .await;
    let _ = ws
        .next_json(WS_WAIT)
        .await
        .expect("an answer to unsubscribe");
    http.send_ok(&convs[0], "agent", "not for you").await;
    http.send_ok(&convs[1], "agent", "for you").await;
    let m = ws.expect_type("message").await;
    assert_eq!(m["conversationId"], convs[1].as_str());
    ws.expect_silence(QUIET).await;
    // The freed slot can be used.
    ws.subscribe(&convs[2], None).await;
}

#[tokio::test]
async fn a_gateway_stopped_with_sigterm_closes_sockets_with_1001_and_exits_0() {
    let mut stack = Stack::with(2, 1, 0, &[]).await;
    let conv = stack.http().create_conversation().await;
    let mut ws = Ws::connect(&stack.gateways[0].ws_url(), None).await;
    ws.subscribe(&conv, None).await;
    let mut gw = stack.gateways.remove(0);
    let status = gw.terminate().await;
    assert!(status.success(), "exit status {status}");
    let (code, _) = ws.wait_close(WS_WAIT).await;
    assert_eq!(code, Some(1001));
    assert!(!gw.log().contains("panicked"));
    // The other gateway carries on.
    let via = stack.gateways[0].http();
    via.send_ok(&conv, "agent", "still served").await;
    assert_eq!(via.messages(&conv).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_overflowing_event_history_len_asks_for_a_resync() {
    let stack = Stack::start(&[("EVENT_HISTORY_LEN", "1000")]).await;
    let http = stack.http();
    let conv = http.create_conversation().await;
    let total = 1100;
    futures::future::join_all((0..20).map(|w| {
        let (http, conv) = (http.clone(), conv.clone());
        async move {
            for n in 0..total / 20 {
                http.send_ok(&conv, "customer", &format!("w{w} n{n}")).await;
            }
        }
    }))
    .await;
    // A resume more than EVENT_HISTORY_LEN events back refetches by REST instead.
    let ws_url = stack.gw().ws_url();
    let mut ws = Ws::connect(&ws_url, None).await;
    let sub = ws.subscribe(&conv, Some(1)).await;
    assert_eq!(
        sub,
        json!({"type": "subscribed", "conversationId": conv, "lastEventId": total, "resync": true})
    );
    ws.expect_silence(Duration::from_millis(300)).await;
    // Within EVENT_HISTORY_LEN, the replay is complete.
    let oldest = total as u64 - 1000 + 1;
    let mut ws = Ws::connect(&ws_url, None).await;
    let sub = ws.subscribe(&conv, Some(oldest - 1)).await;
    assert_eq!(sub["lastEventId"], total);
    assert!(sub.get("resync").is_none(), "{sub}");
    let (eids, _) = message_ids(&ws.collect("message", 1000, Duration::from_secs(30)).await);
    assert_eq!(eids, range(oldest, total as u64));
    assert_eq!(http.messages(&conv).await.len(), total);
}

/// Issue 10, item 5: a `since` past the conversation's newest event (a stale id from another
/// deployment, or a made-up one) used to mute the subscription for good. It now resyncs to the
/// real position, and live events arrive.
#[tokio::test]
async fn since_ahead_of_the_conversation_resyncs_and_stays_live() {
    let stack = Stack::start(&[]).await;
    let http = stack.http();
    let conv = http.create_conversation().await;
    http.send_ok(&conv, "customer", "m0").await;
    let ws_url = stack.gw().ws_url();
    for since in [1000, u64::MAX - 1] {
        let mut ws = Ws::connect(&ws_url, None).await;
        let sub = ws.subscribe(&conv, Some(since)).await;
        assert_eq!(sub["resync"], true, "since {since}: {sub}");
        let last = sub["lastEventId"].as_u64().unwrap();
        http.send_ok(&conv, "agent", &format!("live after {since}"))
            .await;
        let live = ws.expect_type("message").await;
        assert_eq!(live["eventId"].as_u64().unwrap(), last + 1, "{live}");
    }
    // Up to date is still not a resync.
    let mut ws = Ws::connect(&ws_url, None).await;
    let now = ws.subscribe(&conv, None).await["lastEventId"]
        .as_u64()
        .unwrap();
    let mut again = Ws::connect(&ws_url, None).await;
    let sub = again.subscribe(&conv, Some(now)).await;
    assert_eq!(
        sub,
        json!({"type": "subscribed", "conversationId": conv, "lastEventId": now})
    );
}

/// Issue 10, item 13: a frame over the hard limit (`WS_MAX_FRAME_BYTES` × 4, at least 1 MiB)
/// closes the socket with the documented 1009, not a TCP reset.
#[tokio::test]
async fn a_frame_over_the_hard_limit_closes_with_1009() {
    let stack = Stack::start(&[]).await;
    let mut ws = Ws::connect(&stack.gw().ws_url(), None).await;
    ws.ping().await;
    let big = json!({"type": "ping", "pad": "x".repeat(2 << 20)}).to_string();
    let _ = ws.try_send_text(&big).await;
    let (code, _) = ws.wait_close(Duration::from_secs(30)).await;
    assert_eq!(code, Some(1009));
}
