//! The completion role against a real `redis-server` and the workspace's OpenAI-compatible
//! server (in-process), with real persistence workers applying the replies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command as Proc, Stdio};
use std::time::{Duration, Instant};

use confab_shared::commands::{Command, CommandEnvelope, COMMAND_FIELD};
use confab_shared::domain::Message;
use confab_shared::keys::{self, PartitionKeys};
use confab_shared::Config;
use confab_workers::Role;
use futures::StreamExt;
use mock_openai::{MockConfig, MockServer};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

struct Redis {
    child: Child,
    url: String,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn redis() -> Redis {
    let port = free_port();
    let child = Proc::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (make test installs it)");
    let url = format!("redis://127.0.0.1:{port}");
    // From here on the guard kills and reaps the process on every path.
    let guard = Redis {
        child,
        url: url.clone(),
    };
    let client = redis::Client::open(url.as_str()).unwrap();
    for _ in 0..400 {
        if let Ok(mut c) = client
            .get_multiplexed_async_connection_with_config(&patient())
            .await
        {
            if redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .is_ok()
            {
                return guard;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("redis-server did not start");
}

struct Stack {
    redis: Redis,
    mock: MockServer,
    conn: redis::aio::MultiplexedConnection,
    cancel: CancellationToken,
    cfg: Config,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn stack(extra: &[(&str, &str)], roles: &[Role]) -> Stack {
    let redis = redis().await;
    let mock = MockServer::start(MockConfig {
        tokens_per_sec: 50,
        ..MockConfig::fast()
    })
    .await
    .unwrap();
    let mut vars = vec![
        ("REDIS_URL".to_string(), redis.url.clone()),
        (
            "OPENAI_BASE_URL".to_string(),
            format!("{}/v1", mock.base_url().trim_end_matches("/v1")),
        ),
        ("OPENAI_API_KEY".to_string(), "test-key-123".to_string()),
        ("CLAIM_IDLE_MS".to_string(), "1500".to_string()),
        ("ASSISTANT_GIVE_UP_SECS".to_string(), "8".to_string()),
    ];
    for (k, v) in extra {
        vars.retain(|(key, _)| key != k);
        vars.push((k.to_string(), v.to_string()));
    }
    let cfg = Config::from_vars(vars).unwrap();
    let cancel = CancellationToken::new();
    for role in roles {
        tokio::spawn(confab_workers::run(*role, cfg.clone(), cancel.clone()));
    }
    let conn = redis::Client::open(redis.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection_with_config(&patient())
        .await
        .unwrap();
    Stack {
        redis,
        mock,
        conn,
        cancel,
        cfg,
    }
}

/// The test's own Redis connections wait as long as it takes: redis-rs' default 1 s connect
/// and 500 ms response timeouts fail on a busy machine.
fn patient() -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(30)))
        .set_response_timeout(Some(Duration::from_secs(30)))
}

impl Stack {
    /// The keys of the partition conversation `id` belongs to.
    fn partition(&self, id: &Uuid) -> PartitionKeys {
        let parts = self.cfg.partitions();
        PartitionKeys::new(&parts, parts.of_conversation(id))
    }

    async fn submit(&self, command: Command) {
        let stream = self.partition(&command.conversation_id()).commands;
        let env = CommandEnvelope {
            id: Uuid::new_v4(),
            trace: None,
            reply_to: None,
            command,
        };
        let mut c = self.conn.clone();
        let _: String = redis::cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg(COMMAND_FIELD)
            .arg(serde_json::to_string(&env).unwrap())
            .query_async(&mut c)
            .await
            .unwrap();
    }

    async fn open_chat(&self) -> Uuid {
        let id = Uuid::new_v4();
        self.submit(Command::CreateConversation {
            conversation_id: id,
            owner: None,
            members: vec![],
            title: None,
            assistant: true,
            fingerprint: None,
        })
        .await;
        let mut c = self.conn.clone();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let exists: bool = redis::cmd("EXISTS")
                .arg(keys::conv_meta(&id))
                .query_async(&mut c)
                .await
                .unwrap();
            if exists {
                return id;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("conversation was not created");
    }

    async fn say(&self, id: Uuid, text: &str) {
        let message = Message {
            message_id: Uuid::new_v4(),
            sender: "customer".into(),
            content: text.into(),
            timestamp: "2025-04-05T14:00:00Z".into(),
            stopped: false,
        };
        self.submit(Command::SendMessage {
            conversation_id: id,
            message,
            actor: None,
            assistant_reply: None,
            fingerprint: None,
        })
        .await;
    }

    async fn events(&self, id: Uuid) -> Events {
        let client = redis::Client::open(self.redis.url.as_str()).unwrap();
        let mut ps = client.get_async_pubsub().await.unwrap();
        ps.subscribe(keys::conv_channel(&id)).await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut s = ps.into_on_message();
            while let Some(m) = s.next().await {
                let payload: String = m.get_payload().unwrap_or_default();
                let event = confab_shared::trace::split_published(&payload).body;
                if let Ok(v) = serde_json::from_str::<Value>(event) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        Events {
            rx,
            seen: Vec::new(),
        }
    }

    async fn messages(&self, id: Uuid) -> Vec<Message> {
        let mut c = self.conn.clone();
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(keys::conv_order(&id))
            .arg(0)
            .arg(-1)
            .query_async(&mut c)
            .await
            .unwrap();
        if ids.is_empty() {
            return vec![];
        }
        let raw: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(keys::conv_msgs(&id))
            .arg(&ids)
            .query_async(&mut c)
            .await
            .unwrap();
        raw.into_iter()
            .flatten()
            .map(|m| serde_json::from_str(&m).unwrap())
            .collect()
    }

    async fn assistant_messages(&self, id: Uuid) -> Vec<Message> {
        self.messages(id)
            .await
            .into_iter()
            .filter(|m| m.sender == "assistant")
            .collect()
    }
}

struct Events {
    rx: tokio::sync::mpsc::UnboundedReceiver<Value>,
    seen: Vec<Value>,
}

impl Events {
    /// Collects events until one of type `kind` arrives (returns it) or `within` passes.
    async fn until(&mut self, kind: &str, within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(v)) => {
                    self.seen.push(v.clone());
                    if v["type"] == kind {
                        return v;
                    }
                }
                _ => panic!("no {kind} within {within:?}; saw {:?}", self.types()),
            }
        }
    }

    fn types(&self) -> Vec<String> {
        self.seen
            .iter()
            .map(|v| v["type"].as_str().unwrap_or("").to_string())
            .collect()
    }

    fn deltas(&self, rid: &str) -> Vec<(u64, String)> {
        self.seen
            .iter()
            .filter(|v| v["type"] == "assistant_delta" && v["responseId"] == rid)
            .map(|v| {
                (
                    v["seq"].as_u64().unwrap(),
                    v["delta"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

const ROLES: [Role; 2] = [Role::Persistence, Role::Completion];

#[tokio::test]
async fn streams_coalesced_deltas_then_stores_the_reply() {
    let s = stack(&[], &ROLES).await;
    let id = s.open_chat().await;
    let mut ev = s.events(id).await;
    s.say(id, "hello [[mock tps=100 tokens=60]]").await;
    let done = ev.until("assistant_done", Duration::from_secs(20)).await;
    let rid = done["responseId"].as_str().unwrap().to_string();
    let deltas = ev.deltas(&rid);
    assert!(
        deltas
            .iter()
            .enumerate()
            .all(|(i, (seq, _))| *seq == i as u64),
        "seq must count from 0: {deltas:?}"
    );
    assert!(
        deltas.len() < 60,
        "60 tokens must be coalesced into fewer deltas, got {}",
        deltas.len()
    );
    assert!(
        deltas.len() >= 3,
        "a paced answer streams in several deltas, got {}",
        deltas.len()
    );
    let streamed: String = deltas.iter().map(|(_, d)| d.as_str()).collect();
    let stored = s.assistant_messages(id).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].content, streamed);
    assert_eq!(
        stored[0].message_id.to_string(),
        done["messageId"].as_str().unwrap()
    );
    assert!(streamed.starts_with("w1 w2"), "{streamed}");
    assert!(
        done["usage"]["completion_tokens"].as_u64().is_some(),
        "usage is forwarded: {done}"
    );
    // The stored reply also arrives as an ordinary message event, right before assistant_done.
    let types = ev.types();
    let n = types.len();
    assert_eq!(&types[n - 2..], ["message", "assistant_done"], "{types:?}");
    assert_eq!(ev.seen[n - 2]["message"]["sender"], "assistant");
}

#[tokio::test]
async fn a_burst_is_answered_in_order_without_interleaving() {
    let s = stack(&[], &ROLES).await;
    let id = s.open_chat().await;
    let mut ev = s.events(id).await;
    s.say(id, "first [[mock tps=20 tokens=100]]").await;
    // The first answer is streaming (5 s of it left): the next four arrive during it.
    ev.until("assistant_delta", Duration::from_secs(30)).await;
    for i in 0..4 {
        s.say(id, &format!("more {i} [[mock tps=200 tokens=10]]"))
            .await;
    }
    // Wait until every human message is answered.
    let mut c = s.conn.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (h, a): (Option<u64>, Option<u64>) = redis::cmd("HMGET")
            .arg(keys::conv_meta(&id))
            .arg("hseq")
            .arg("aseq")
            .query_async(&mut c)
            .await
            .unwrap();
        if h.is_some() && h == a {
            break;
        }
        assert!(Instant::now() < deadline, "not all messages were answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ev.until("message", Duration::from_secs(30)).await;
    while let Ok(Some(v)) = tokio::time::timeout(Duration::from_millis(300), ev.rx.recv()).await {
        ev.seen.push(v);
    }
    let replies = s.assistant_messages(id).await;
    assert!(
        !replies.is_empty() && replies.len() <= 2,
        "messages sent during an answer are answered together: {} replies",
        replies.len()
    );
    // Never two responses interleaved: each response's deltas end before the next one's begin.
    let mut current: Option<String> = None;
    let mut finished: Vec<String> = Vec::new();
    for v in &ev.seen {
        match v["type"].as_str().unwrap_or("") {
            "assistant_delta" => {
                let rid = v["responseId"].as_str().unwrap().to_string();
                assert!(!finished.contains(&rid), "delta after done");
                if let Some(c) = &current {
                    assert_eq!(c, &rid, "two answers interleaved");
                }
                current = Some(rid);
            }
            "assistant_done" => {
                finished.push(v["responseId"].as_str().unwrap().to_string());
                current = None;
            }
            _ => {}
        }
    }
    // The last message of the conversation is the assistant's.
    assert_eq!(
        s.messages(id).await.last().map(|m| m.sender.clone()),
        Some("assistant".into())
    );
}

#[tokio::test]
async fn cancel_aborts_upstream_and_stores_the_partial_reply() {
    let s = stack(&[], &ROLES).await;
    let id = s.open_chat().await;
    let mut ev = s.events(id).await;
    s.say(id, "long one [[mock tps=20 tokens=400]]").await;
    ev.until("assistant_delta", Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut c = s.conn.clone();
    let _: i64 = redis::cmd("PUBLISH")
        .arg(keys::cancel_channel(&id))
        .arg("cancel")
        .query_async(&mut c)
        .await
        .unwrap();
    // How fast the cancel lands depends on the machine; that it lands does not: the reply
    // is marked stopped, cut before its last token (400 tokens at 20/s take 20 s) and the
    // upstream stream is aborted rather than completed. The deadline only guards a hang.
    let done = ev.until("assistant_done", Duration::from_secs(60)).await;
    assert_eq!(done["stopped"], true);
    let stored = s.assistant_messages(id).await;
    assert_eq!(stored.len(), 1);
    assert!(stored[0].stopped);
    assert!(
        stored[0].content.starts_with("w1 "),
        "{}",
        stored[0].content
    );
    assert!(!stored[0].content.contains("w400"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.mock.stats().aborted < 1 {
        assert!(
            Instant::now() < deadline,
            "the upstream request was not aborted: {:?}",
            s.mock.stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(s.mock.stats().completed, 0, "{:?}", s.mock.stats());
}

async fn answer_with(directive: &str, extra: &[(&str, &str)]) -> (Stack, Events, Value, Uuid) {
    let s = stack(extra, &ROLES).await;
    let id = s.open_chat().await;
    let mut ev = s.events(id).await;
    s.say(id, &format!("question [[mock tps=0 tokens=8 {directive}]]"))
        .await;
    let end = ev
        .until_any(
            &["assistant_done", "assistant_error"],
            Duration::from_secs(40),
        )
        .await;
    (s, ev, end, id)
}

impl Events {
    async fn until_any(&mut self, kinds: &[&str], within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(v)) => {
                    self.seen.push(v.clone());
                    if kinds.iter().any(|k| v["type"] == *k) {
                        return v;
                    }
                }
                _ => panic!(
                    "none of {kinds:?} within {within:?}; saw {:?}",
                    self.types()
                ),
            }
        }
    }
}

#[tokio::test]
async fn rate_limits_honour_retry_after_then_succeed() {
    let started = Instant::now();
    let (s, _ev, end, id) = answer_with("status=429 retry_after=1 fail=2", &[]).await;
    assert_eq!(end["type"], "assistant_done", "{end}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "two Retry-After: 1 waits"
    );
    assert_eq!(
        s.mock.stats().by_status.get("429").copied().unwrap_or(0),
        2,
        "{:?}",
        s.mock.stats()
    );
    assert_eq!(s.assistant_messages(id).await.len(), 1);
}

#[tokio::test]
async fn server_errors_are_retried() {
    let (s, _ev, end, id) = answer_with("status=500 fail=2", &[]).await;
    assert_eq!(end["type"], "assistant_done", "{end}");
    assert_eq!(s.assistant_messages(id).await.len(), 1);
}

#[tokio::test]
async fn a_cut_stream_restarts_cleanly() {
    let (s, ev, end, id) = answer_with("cut=3 fail=1", &[]).await;
    assert_eq!(end["type"], "assistant_done", "{end}");
    assert!(
        ev.types().contains(&"assistant_restarted".to_string()),
        "{:?}",
        ev.types()
    );
    let stored = s.assistant_messages(id).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].content.trim_end(), "w1 w2 w3 w4 w5 w6 w7 w8");
}

#[tokio::test]
async fn an_error_inside_the_stream_is_retried() {
    let (s, ev, end, id) = answer_with("stream_error=2 fail=1", &[]).await;
    assert_eq!(end["type"], "assistant_done", "{end}");
    assert!(ev.types().contains(&"assistant_restarted".to_string()));
    assert_eq!(s.assistant_messages(id).await.len(), 1);
}

#[tokio::test]
async fn lenient_chunks_still_stream() {
    let (s, _ev, end, id) = answer_with("lenient", &[]).await;
    assert_eq!(end["type"], "assistant_done", "{end}");
    assert_eq!(
        s.assistant_messages(id).await[0].content.trim_end(),
        "w1 w2 w3 w4 w5 w6 w7 w8"
    );
}

#[tokio::test]
async fn bad_credentials_are_not_retried() {
    let (s, _ev, end, id) = answer_with("status=401", &[]).await;
    assert_eq!(end["type"], "assistant_error");
    assert_eq!(end["code"], "auth_failed");
    assert!(end["message"].as_str().unwrap().contains("OPENAI_API_KEY"));
    assert!(
        !end.to_string().contains("test-key-123"),
        "the key must never reach clients"
    );
    assert_eq!(s.mock.stats().requests, 1, "no retry after 401");
    assert!(s.assistant_messages(id).await.is_empty());
}

#[tokio::test]
async fn unknown_model_is_not_retried() {
    let (s, _ev, end, _) = answer_with("status=404", &[]).await;
    assert_eq!(end["code"], "model_not_found");
    assert_eq!(s.mock.stats().requests, 1);
}

#[tokio::test]
async fn a_permanently_failing_api_gives_up_in_time() {
    let (s, _ev, end, _) = answer_with("status=503", &[("ASSISTANT_GIVE_UP_SECS", "4")]).await;
    assert_eq!(end["type"], "assistant_error");
    assert_eq!(end["code"], "unavailable");
    // Back-offs of 0.25, 0.5, 1 and 2 s: the fifth failure's 4 s wait would pass the 4 s
    // give-up time, so the clock (not the cap of 6 attempts) ends it after at most 5
    // requests; a slower machine only makes that fewer.
    let requests = s.mock.stats().requests;
    assert!(requests >= 2, "retried before giving up");
    assert!(
        requests <= 5,
        "{requests} requests: the give-up time was not applied"
    );
}

#[tokio::test]
async fn without_a_key_the_error_says_how_to_configure_it() {
    let s = stack(
        &[
            ("OPENAI_API_KEY", ""),
            ("OPENAI_BASE_URL", "https://api.openai.com/v1"),
        ],
        &ROLES,
    )
    .await;
    let id = s.open_chat().await;
    let mut ev = s.events(id).await;
    s.say(id, "anyone?").await;
    let end = ev.until("assistant_error", Duration::from_secs(10)).await;
    assert_eq!(end["code"], "not_configured");
    assert!(end["message"]
        .as_str()
        .unwrap()
        .contains("set OPENAI_API_KEY"));
}

#[tokio::test]
async fn a_conversation_that_expires_mid_answer_stops_the_answer() {
    let s = stack(
        &[("CONVERSATION_TTL_SECS", "2")],
        &[Role::Persistence, Role::Completion, Role::Cleanup],
    )
    .await;
    let id = s.open_chat().await;
    let mut ev = s.events(id).await;
    s.say(id, "slow [[mock tps=10 tokens=400]]").await;
    ev.until("assistant_delta", Duration::from_secs(10)).await;
    ev.until("conversation_expired", Duration::from_secs(30))
        .await;
    // The stream would run 40 s (400 tokens at 10/s): it must end aborted, not completed.
    // The deadline only guards a hang.
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.mock.stats().aborted < 1 && s.mock.stats().completed < 1 {
        assert!(
            Instant::now() < deadline,
            "the stream neither ended nor was aborted: {:?}",
            s.mock.stats()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = s.mock.stats();
    assert!(
        stats.aborted >= 1 && stats.completed == 0,
        "the stream kept running after expiry: {stats:?}"
    );
    let mut c = s.conn.clone();
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("confab:conv:{{{id}}}*"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(left.is_empty(), "keys left behind: {left:?}");
    let _ = &s.cfg;
}

#[tokio::test]
async fn the_context_respects_the_history_budget() {
    let s = stack(&[("ASSISTANT_CONTEXT_MESSAGES", "3")], &[Role::Persistence]).await;
    let id = s.open_chat().await;
    for i in 0..6 {
        s.say(id, &format!("note {i}")).await;
    }
    // Wait until all six are stored, then let a completion worker answer the newest.
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.messages(id).await.len() < 6 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut ev = s.events(id).await;
    tokio::spawn(confab_workers::run(
        Role::Completion,
        s.cfg.clone(),
        s.cancel.clone(),
    ));
    ev.until("assistant_done", Duration::from_secs(20)).await;
    let sent = s.mock.stats().last_messages;
    assert_eq!(
        sent.len(),
        4,
        "system prompt + the 3 newest messages: {sent:?}"
    );
    assert!(sent[0].starts_with("system: "));
    assert_eq!(sent[1], "user: customer: note 3");
    assert_eq!(sent[3], "user: customer: note 5");
}

/// At-least-once: a command delivered twice is applied once, but its side effects (here the
/// completion job) are redone, so a worker dying between its two round trips loses nothing.
#[tokio::test]
async fn a_redelivered_send_is_applied_once_and_its_side_effects_are_redone() {
    let s = stack(&[], &[Role::Persistence]).await;
    let id = s.open_chat().await;
    let message = Message {
        message_id: Uuid::new_v4(),
        sender: "customer".into(),
        content: "once".into(),
        timestamp: "2025-04-05T14:00:00Z".into(),
        stopped: false,
    };
    let env = CommandEnvelope {
        id: Uuid::new_v4(),
        trace: None,
        reply_to: None,
        command: Command::SendMessage {
            conversation_id: id,
            message,
            actor: None,
            assistant_reply: None,
            fingerprint: None,
        },
    };
    let mut c = s.conn.clone();
    let part = s.partition(&id);
    for _ in 0..2 {
        let _: String = redis::cmd("XADD")
            .arg(&part.commands)
            .arg("*")
            .arg(COMMAND_FIELD)
            .arg(serde_json::to_string(&env).unwrap())
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let jobs: u64 = redis::cmd("XLEN")
            .arg(&part.jobs)
            .query_async(&mut c)
            .await
            .unwrap();
        if jobs >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the redelivery did not redo the completion job ({jobs})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.messages(id).await.len(), 1, "applied once");
    let events: u64 = redis::cmd("ZCARD")
        .arg(keys::conv_order(&id))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(events, 1, "one message event");
}
