//! The assistant end to end: real gateways and workers (completion replicas included), the
//! workspace's OpenAI-compatible server standing in for the paid API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use confab_e2e::{in_both_modes, Mode, Stack, Ws};
use mock_openai::{MockConfig, MockServer};
use serde_json::Value;

in_both_modes!(
    the_answer_streams_to_two_members_on_two_gateways,
    a_completion_worker_killed_mid_answer_is_taken_over_cleanly,
);

const LONG: Duration = Duration::from_secs(30);

async fn stack_with_assistant(mode: Mode, completion_workers: usize) -> (Stack, MockServer) {
    let mock = MockServer::start(MockConfig {
        tokens_per_sec: 50,
        ..MockConfig::fast()
    })
    .await
    .unwrap();
    let base = mock.base_url();
    let env = [
        ("OPENAI_BASE_URL", base.as_str()),
        ("OPENAI_API_KEY", "e2e-key"),
        ("CLAIM_IDLE_MS", "1500"),
        // One scenario drives the assistant from an open conversation.
        ("ASSISTANT_IN_OPEN_CONVERSATIONS", "true"),
    ];
    let mut stack = Stack::in_mode(mode, 2, 1, 0, &env).await;
    for _ in 0..completion_workers {
        stack.add_worker("completion", &env).await;
    }
    (stack, mock)
}

/// Frames of one kind-set until `assistant_done`.
async fn until_done(ws: &mut Ws) -> Vec<Value> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + LONG;
    while tokio::time::Instant::now() < deadline {
        let Some(v) = ws.next_json(Duration::from_secs(10)).await else {
            break;
        };
        let done = v["type"] == "assistant_done";
        seen.push(v);
        if done {
            return seen;
        }
    }
    panic!(
        "no assistant_done; saw {:?}",
        seen.iter().map(|v| v["type"].clone()).collect::<Vec<_>>()
    );
}

fn text_of(frames: &[Value], rid: &Value) -> String {
    frames
        .iter()
        .filter(|v| v["type"] == "assistant_delta" && &v["responseId"] == rid)
        .map(|v| v["delta"].as_str().unwrap().to_string())
        .collect()
}

async fn the_answer_streams_to_two_members_on_two_gateways(mode: Mode) {
    let (stack, _mock) = stack_with_assistant(mode, 1).await;
    let alice = stack.gateways[0].http().user("alice").await;
    let bob = stack.gateways[1].http().user("bob").await;
    let chat = alice.create_chat("assistant", &["bob"], true).await;
    let mut a = Ws::connect(&stack.gateways[0].ws_url(), alice.token()).await;
    let mut b = Ws::connect(&stack.gateways[1].ws_url(), bob.token()).await;
    a.subscribe(&chat, None).await;
    b.subscribe(&chat, None).await;
    let (status, _) = alice
        .post(
            &format!("/api/conversations/{chat}/messages"),
            &serde_json::json!({"content": "what is up? [[mock tps=50 tokens=30]]"}),
        )
        .await;
    assert_eq!(status, 201);
    let fa = until_done(&mut a).await;
    let fb = until_done(&mut b).await;
    let done_a = fa.last().unwrap();
    let done_b = fb.last().unwrap();
    assert_eq!(done_a["responseId"], done_b["responseId"]);
    let rid = &done_a["responseId"];
    for frames in [&fa, &fb] {
        let seqs: Vec<u64> = frames
            .iter()
            .filter(|v| v["type"] == "assistant_delta")
            .map(|v| v["seq"].as_u64().unwrap())
            .collect();
        assert!(!seqs.is_empty());
        assert_eq!(
            seqs,
            (0..seqs.len() as u64).collect::<Vec<_>>(),
            "deltas in order, once"
        );
    }
    let streamed = text_of(&fa, rid);
    assert_eq!(streamed, text_of(&fb, rid));
    assert!(streamed.starts_with("w1 w2 "));
    let (_, body) = bob.get(&format!("/api/conversations/{chat}")).await;
    let messages = body["messages"].as_array().unwrap();
    let reply = messages.last().unwrap();
    assert_eq!(reply["sender"], "assistant");
    assert_eq!(reply["content"].as_str().unwrap(), streamed);
    assert_eq!(reply["messageId"], done_a["messageId"]);
}

async fn a_completion_worker_killed_mid_answer_is_taken_over_cleanly(mode: Mode) {
    let (mut stack, _mock) = stack_with_assistant(mode, 2).await;
    let http = stack.http();
    let (status, body) = http
        .post(
            "/api/conversations",
            &serde_json::json!({"assistant": true}),
        )
        .await;
    assert_eq!(status, 201);
    let conv = body["conversationId"].as_str().unwrap().to_string();
    let mut ws = Ws::connect(&stack.gw().ws_url(), None).await;
    ws.subscribe(&conv, None).await;
    http.send_ok(
        &conv,
        "customer",
        "tell me a long story [[mock tps=25 tokens=60]]",
    )
    .await;
    // Wait until the answer streams, then find and SIGKILL the replica that owns it.
    let first = ws.wait_type("assistant_delta").await;
    let old_rid = first["responseId"].clone();
    let owner: String = stack
        .redis
        .q(&["HGET", &format!("confab:conv:{{{conv}}}:answer"), "owner"])
        .await;
    let victim = stack
        .workers
        .iter_mut()
        .find(|w| w.name() == owner)
        .unwrap_or_else(|| panic!("no worker named {owner}"));
    victim.kill9();
    let mut frames = vec![first];
    frames.extend(until_done(&mut ws).await);
    let types: Vec<&str> = frames
        .iter()
        .map(|v| v["type"].as_str().unwrap_or(""))
        .collect();
    let restarted = frames
        .iter()
        .position(|v| v["type"] == "assistant_restarted")
        .unwrap_or_else(|| panic!("no assistant_restarted in {types:?}"));
    assert_eq!(frames[restarted]["responseId"], old_rid);
    let done = frames.last().unwrap();
    let new_rid = done["responseId"].clone();
    assert_ne!(new_rid, old_rid);
    // After the restart: only the new response, from seq 0, never the two interleaved.
    let after: Vec<&Value> = frames[restarted..]
        .iter()
        .filter(|v| v["type"] == "assistant_delta")
        .collect();
    assert!(
        after.iter().all(|v| v["responseId"] == new_rid),
        "old deltas after the restart"
    );
    let seqs: Vec<u64> = after.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
    let full: String = (1..=60).map(|i| format!("w{i} ")).collect();
    assert_eq!(
        text_of(&frames[restarted..], &new_rid).trim_end(),
        full.trim_end()
    );
    // Exactly one reply stored.
    let messages = http.messages(&conv).await;
    let replies: Vec<&Value> = messages
        .iter()
        .filter(|m| m["sender"] == "assistant")
        .collect();
    assert_eq!(replies.len(), 1, "{messages:?}");
    assert_eq!(
        replies[0]["content"].as_str().unwrap().trim_end(),
        full.trim_end()
    );
}
