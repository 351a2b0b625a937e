//! The chaos run (issue 10, item 15): `CHAOS_SECS` (default 15; `make chaos` runs 60) of
//! mixed load — REST sends, pipelined WebSocket sends across two gateways, assistant
//! answers from the mock OpenAI server, and a subscriber per conversation resuming with
//! `since` whenever its socket dies — while every `CHAOS_KILL_EVERY_MS` (default 2500) a
//! random gateway, persistence, completion or cleanup worker is SIGKILLed and restarted, and
//! Redis (AOF `appendfsync always`) is SIGKILLed and restarted once, half-way.
//!
//! Clients never retry blindly: a send that got no acknowledgement is not sent again, so it
//! may be stored (its command was applied after the error) or not. The ledger check after
//! the run: every acknowledged message stored exactly once and in its client's order, no
//! message stored twice at all; every subscriber's view, after a last resume, equal to the
//! stored history; every assistant answer stored once for each stored prompt; the
//! dead-letter streams empty. The counts are printed; timings are never asserted.
//! `CHAOS_SEED` replays a run's choice of victims.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use confab_e2e::*;
use mock_openai::{MockConfig, MockServer};

const LONG: Duration = Duration::from_secs(90);
const REST_CLIENTS: usize = 3;
const WS_CLIENTS: usize = 2;
/// Frames a WebSocket client sends before reading the replies.
const BURST: u64 = 5;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small deterministic generator (xorshift), so a seed replays the victims.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // Xorshift must not start at 0; mix the seed so small ones spread too.
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// What a client sent and what it was told: `(n, acknowledged messageId)`.
#[derive(Default)]
struct Ledger {
    sent: u64,
    acked: Vec<(u64, String)>,
    errors: u64,
}

/// A REST client on its own conversation, alternating gateways, one send at a time.
async fn rest_client(
    gws: Vec<Http>,
    conv: String,
    i: usize,
    stop: Arc<AtomicBool>,
) -> (String, Ledger) {
    let mut ledger = Ledger::default();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let http = &gws[n as usize % gws.len()];
        let rb = http
            .request(
                reqwest::Method::POST,
                &format!("/api/conversations/{conv}/messages"),
            )
            .json(
                &json!({"sender": "customer", "content": format!("r{i}-{n}"),
                          "timestamp": "2025-04-05T14:00:00Z"}),
            );
        ledger.sent += 1;
        match http.try_send(rb).await {
            Ok((201, body)) => ledger.acked.push((n, str_field(&body, "messageId"))),
            Ok((status, body)) => {
                assert!(
                    [503, 504].contains(&status),
                    "r{i}-{n}: unexpected {status} {body}"
                );
                ledger.errors += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // The gateway was killed mid-request, or is restarting.
            Err(_) => {
                ledger.errors += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        n += 1;
    }
    (conv, ledger)
}

/// A WebSocket client on its own conversation: bursts of [`BURST`] pipelined sends, then
/// the replies; a dead socket is replaced by one to the other gateway.
async fn ws_client(
    urls: Vec<String>,
    conv: String,
    i: usize,
    stop: Arc<AtomicBool>,
) -> (String, Ledger) {
    let mut ledger = Ledger::default();
    let mut n = 0u64;
    let mut k = i;
    'connect: while !stop.load(Ordering::Relaxed) {
        k += 1;
        let Ok(mut ws) = Ws::try_connect(&urls[k % urls.len()], None, WsOptions::default()).await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while !stop.load(Ordering::Relaxed) {
            let mut waiting: HashMap<String, u64> = HashMap::new();
            for _ in 0..BURST {
                let cid = format!("{i}-{n}");
                let frame = send_frame(&conv, &cid, "agent", &format!("w{i}-{n}"));
                ledger.sent += 1;
                waiting.insert(cid, n);
                n += 1;
                if !ws.try_send_text(&frame.to_string()).await {
                    ledger.errors += waiting.len() as u64;
                    continue 'connect;
                }
            }
            while !waiting.is_empty() {
                match ws.next_event(Duration::from_secs(30)).await {
                    WsEvent::Frame(f) if f["type"] == "ack" => {
                        if let Some(n) = waiting.remove(&str_field(&f, "clientId")) {
                            ledger.acked.push((n, str_field(&f, "messageId")));
                        }
                    }
                    WsEvent::Frame(f) if f["type"] == "error" => {
                        let code = f["code"].as_str().unwrap_or_default();
                        assert!(
                            [
                                "unavailable",
                                "timeout",
                                "overloaded",
                                "replicas_unavailable"
                            ]
                            .contains(&code),
                            "w{i}: unexpected error frame {f}"
                        );
                        if let Some(r) = f["ref"].as_str() {
                            if waiting.remove(r).is_some() {
                                ledger.errors += 1;
                            }
                        }
                    }
                    WsEvent::Frame(_) => {}
                    WsEvent::Closed(_) | WsEvent::Timeout => {
                        ledger.errors += waiting.len() as u64;
                        continue 'connect;
                    }
                }
            }
        }
    }
    ledger.acked.sort();
    (conv, ledger)
}

/// Subscribes, riding out a dying gateway: `Some(subscribed frame)`, or `None` if the socket
/// died or the gateway answered an error (e.g. `unavailable` while Redis restarts).
async fn try_subscribe(ws: &mut Ws, conv: &str, since: u64) -> Option<Value> {
    let frame = json!({"type": "subscribe", "conversationId": conv, "since": since});
    if !ws.try_send_text(&frame.to_string()).await {
        return None;
    }
    // The subscribed frame comes first: anything else before it is a protocol error.
    match ws.next_event(Duration::from_secs(15)).await {
        WsEvent::Frame(f) if f["type"] == "subscribed" => Some(f),
        WsEvent::Frame(f) if f["type"] == "error" => None,
        WsEvent::Frame(f) => panic!("{conv}: {f} before the subscribed frame"),
        _ => None,
    }
}

/// A subscriber's view: every event with an eventId, in the order received.
#[derive(Default)]
struct View {
    events: Vec<(u64, String, String)>,
    resumes: u64,
}

impl View {
    fn last(&self) -> u64 {
        self.events.last().map_or(0, |e| e.0)
    }

    /// Takes in one frame of the subscription.
    fn take(&mut self, conv: &str, f: &Value) {
        assert_ne!(f["resync"], true, "{conv}: asked to resync: {f}");
        let Some(eid) = f["eventId"].as_u64() else {
            return;
        };
        if f["conversationId"] != conv {
            return;
        }
        let mid = f["message"]["messageId"]
            .as_str()
            .or(f["messageId"].as_str())
            .unwrap_or_default();
        self.events.push((
            eid,
            f["type"].as_str().unwrap_or_default().to_string(),
            mid.to_string(),
        ));
    }

    /// Subscribes from where it left off and reads until `until` says stop; `false` when the
    /// socket died first.
    async fn follow(
        &mut self,
        url: &str,
        conv: &str,
        mut until: impl FnMut(&View) -> bool,
    ) -> bool {
        let Ok(mut ws) = Ws::try_connect(url, None, WsOptions::default()).await else {
            return false;
        };
        let Some(sub) = try_subscribe(&mut ws, conv, self.last()).await else {
            return false;
        };
        self.resumes += 1;
        assert_ne!(sub["resync"], true, "{conv}: asked to resync: {sub}");
        loop {
            if until(self) {
                return true;
            }
            match ws.next_event(Duration::from_millis(500)).await {
                WsEvent::Frame(f) => self.take(conv, &f),
                WsEvent::Timeout => {}
                WsEvent::Closed(_) => return false,
            }
        }
    }
}

/// Follows a conversation, starting on gateway `i % 2` and moving to the other one whenever
/// its socket dies.
async fn subscriber(
    urls: Vec<String>,
    conv: String,
    i: usize,
    stop: Arc<AtomicBool>,
) -> (String, View) {
    let mut view = View::default();
    let mut k = i + 1;
    while !stop.load(Ordering::Relaxed) {
        k += 1;
        if !view
            .follow(&urls[k % urls.len()], &conv, |_| {
                stop.load(Ordering::Relaxed)
            })
            .await
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    (conv, view)
}

/// Asks the assistant something in a new conversation now and then: `(conversation,
/// prompt acknowledged)` for every prompt sent.
async fn assistant_client(gws: Vec<Http>, stop: Arc<AtomicBool>) -> Vec<(String, bool)> {
    let mut asked = Vec::new();
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let http = &gws[n % gws.len()];
        let rb = http
            .request(reqwest::Method::POST, "/api/conversations")
            .json(&json!({"assistant": true}));
        let conv = match http.try_send(rb).await {
            Ok((201, body)) => conversation_id(&body),
            _ => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let rb = http
            .request(
                reqwest::Method::POST,
                &format!("/api/conversations/{conv}/messages"),
            )
            .json(
                &json!({"sender": "customer", "content": format!("q{n} [[mock tps=100 tokens=8]]"),
                          "timestamp": "2025-04-05T14:00:00Z"}),
            );
        let acked = match http.try_send(rb).await {
            Ok((201, _)) => true,
            Ok((status, body)) => {
                assert!(
                    [503, 504].contains(&status),
                    "q{n}: unexpected {status} {body}"
                );
                false
            }
            Err(_) => false,
        };
        asked.push((conv, acked));
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    asked
}

/// `(eventId, type, messageId)` of a conversation's stored history.
async fn stored_view(redis: &Redis, conv: &str) -> Vec<(u64, String, String)> {
    redis
        .history(conv)
        .await
        .iter()
        .map(|e| {
            let mid = e["message"]["messageId"]
                .as_str()
                .or(e["messageId"].as_str())
                .unwrap_or_default();
            (
                e["eventId"].as_u64().unwrap_or(0),
                e["type"].as_str().unwrap_or_default().to_string(),
                mid.to_string(),
            )
        })
        .collect()
}

/// `(messageId, content)` of a conversation's stored messages, in order.
async fn stored_messages(redis: &Redis, conv: &str) -> Vec<(String, String, String)> {
    redis
        .history(conv)
        .await
        .iter()
        .filter(|e| e["type"] == "message")
        .map(|e| {
            (
                str_field(&e["message"], "messageId"),
                str_field(&e["message"], "content"),
                str_field(&e["message"], "sender"),
            )
        })
        .collect()
}

/// Checks one writer's ledger against its conversation; returns (stored, stored unacked,
/// unacked stored after a later send).
async fn check_writer(redis: &Redis, conv: &str, prefix: &str, ledger: &Ledger) -> (u64, u64, u64) {
    let stored = stored_messages(redis, conv).await;
    let ids: HashSet<&str> = stored.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(ids.len(), stored.len(), "{conv}: a messageId stored twice");
    let contents: HashSet<&str> = stored.iter().map(|(_, c, _)| c.as_str()).collect();
    assert_eq!(
        contents.len(),
        stored.len(),
        "{conv}: a send applied twice (same content stored twice)"
    );
    let position: HashMap<&str, usize> = stored
        .iter()
        .enumerate()
        .map(|(p, (id, _, _))| (id.as_str(), p))
        .collect();
    let mut last = None;
    for (n, id) in &ledger.acked {
        let p = *position
            .get(id.as_str())
            .unwrap_or_else(|| panic!("{conv}: {prefix}{n} was acknowledged but is lost"));
        assert!(
            last.is_none_or(|l| l < p),
            "{conv}: {prefix}{n} stored out of its client's order"
        );
        last = Some(p);
        assert_eq!(stored[p].1, format!("{prefix}{n}"), "{conv}: wrong message");
    }
    // A send whose client gave up on it (its socket died, or it got 503/504) may still be
    // in flight on the old gateway and land after the client's next sends on a new one: it
    // is stored once, but late. Only unacknowledged sends may be late.
    let acked: HashSet<&str> = ledger.acked.iter().map(|(_, id)| id.as_str()).collect();
    let mut newest = None;
    let mut late = 0;
    for (id, content, _) in &stored {
        let Some(n) = content
            .strip_prefix(prefix)
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if newest.is_some_and(|m| n < m) {
            assert!(
                !acked.contains(id.as_str()),
                "{conv}: the acknowledged {prefix}{n} was stored after a later send"
            );
            late += 1;
        }
        newest = newest.max(Some(n));
    }
    let unacked = ids.iter().filter(|id| !acked.contains(*id)).count() as u64;
    (stored.len() as u64, unacked, late)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos() {
    let secs = env_u64("CHAOS_SECS", 15);
    let every = Duration::from_millis(env_u64("CHAOS_KILL_EVERY_MS", 2500));
    let seed = env_u64(
        "CHAOS_SEED",
        (random_id().as_bytes()[0] as u64) << 32 | 0x9e37_79b9,
    ) | 1;
    println!("chaos: {secs} s, a kill every {every:?}, CHAOS_SEED={seed}");
    let mut rng = Rng::new(seed);

    let mock = MockServer::start(MockConfig::fast()).await.unwrap();
    let base = mock.base_url();
    let env = [
        ("OPENAI_BASE_URL", base.as_str()),
        ("OPENAI_API_KEY", "e2e-key"),
        ("ASSISTANT_IN_OPEN_CONVERSATIONS", "true"),
        // Every prompt comes from 127.0.0.1: the per-address limit would refuse most.
        ("ASSISTANT_OPEN_MESSAGES_PER_MIN_PER_ADDR", "0"),
        // The pipelined WebSocket writers are a load generator, not a client to throttle
        // (on a fast machine they pass the default 100 frames/s per connection).
        ("WS_RATE_PER_SEC", "100000"),
        ("WS_RATE_BURST", "100000"),
        ("CLAIM_IDLE_MS", "2000"),
        ("REQUEST_TIMEOUT_MS", "3000"),
    ];
    let redis = Redis::start_aof().await;
    let mut stack = Stack::around(redis, None, 2, 2, 1, &env).await;
    stack.add_worker("completion", &env).await;
    let gws: Vec<Http> = stack.gateways.iter().map(Gateway::http).collect();
    let urls: Vec<String> = stack.gateways.iter().map(Gateway::ws_url).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let stop_subs = Arc::new(AtomicBool::new(false));
    let mut rest = Vec::new();
    let mut ws = Vec::new();
    let mut subs = Vec::new();
    for i in 0..REST_CLIENTS + WS_CLIENTS {
        let conv = gws[i % 2].create_conversation().await;
        subs.push(tokio::spawn(subscriber(
            urls.clone(),
            conv.clone(),
            i,
            stop_subs.clone(),
        )));
        if i < REST_CLIENTS {
            rest.push(tokio::spawn(rest_client(
                gws.clone(),
                conv,
                i,
                stop.clone(),
            )));
        } else {
            ws.push(tokio::spawn(ws_client(urls.clone(), conv, i, stop.clone())));
        }
    }
    let assistant = tokio::spawn(assistant_client(gws.clone(), stop.clone()));

    // The chaos: a victim every few seconds, and Redis once, half-way.
    let started = Instant::now();
    let run = Duration::from_secs(secs);
    let mut kills: HashMap<String, u32> = HashMap::new();
    let mut redis_restarted = false;
    while started.elapsed() < run {
        tokio::time::sleep(every).await;
        if !redis_restarted && started.elapsed() >= run / 2 {
            stack.redis.restart().await;
            redis_restarted = true;
            println!("{:?}: restarted Redis", started.elapsed());
            continue;
        }
        let victims = stack.gateways.len() + stack.workers.len();
        let v = rng.below(victims);
        let what = if v < stack.gateways.len() {
            stack.gateways[v].restart().await;
            format!("gateway {v}")
        } else {
            let w = &mut stack.workers[v - stack.gateways.len()];
            w.restart(&stack.redis).await;
            w.role().to_string()
        };
        println!("{:?}: SIGKILLed and restarted {what}", started.elapsed());
        *kills.entry(what).or_default() += 1;
    }
    assert!(redis_restarted, "CHAOS_SECS too short to restart Redis");
    stop.store(true, Ordering::Relaxed);
    println!("{:?}: load stopped", started.elapsed());

    let mut rest_ledgers = Vec::new();
    for t in rest {
        rest_ledgers.push(t.await.unwrap());
    }
    let mut ws_ledgers = Vec::new();
    for t in ws {
        ws_ledgers.push(t.await.unwrap());
    }
    let asked = assistant.await.unwrap();
    // Everything appended is applied: the command streams drain.
    eventually_true("the command streams drain", LONG, async || {
        stack.redis.backlog().await == 0
    })
    .await;

    // Writers: acknowledged = stored once, in order; nothing stored twice.
    let (mut sent, mut acked, mut errors, mut stored, mut unacked_stored, mut late) =
        (0, 0, 0, 0, 0, 0);
    for (ledgers, prefix, kind) in [
        (&rest_ledgers, "r", "REST"),
        (&ws_ledgers, "w", "WebSocket"),
    ] {
        let (mut s, mut a, mut e) = (0, 0, 0);
        for (i, (conv, ledger)) in ledgers.iter().enumerate() {
            let i = if prefix == "r" { i } else { i + REST_CLIENTS };
            let (st, un, lt) =
                check_writer(&stack.redis, conv, &format!("{prefix}{i}-"), ledger).await;
            s += ledger.sent;
            a += ledger.acked.len() as u64;
            e += ledger.errors;
            stored += st;
            unacked_stored += un;
            late += lt;
        }
        println!("{kind}: {s} sent, {a} acknowledged, {e} errors");
        sent += s;
        acked += a;
        errors += e;
    }
    assert!(acked > 0, "nothing was acknowledged");

    // Subscribers: stop, resume once more from where each left off, and compare.
    stop_subs.store(true, Ordering::Relaxed);
    let mut compared = 0;
    let mut resumes = 0;
    for t in subs {
        let (conv, mut view) = t.await.unwrap();
        let history = stored_view(&stack.redis, &conv).await;
        let newest = history.last().map_or(0, |e| e.0);
        eventually_true("the last resume catches up", LONG, async || {
            view.follow(&urls[0], &conv, |v| v.last() >= newest).await
        })
        .await;
        if view.events != history {
            let at = view
                .events
                .iter()
                .zip(&history)
                .position(|(a, b)| a != b)
                .unwrap_or(view.events.len().min(history.len()));
            let near = |v: &[(u64, String, String)]| {
                v[at.saturating_sub(2)..(at + 3).min(v.len())].to_vec()
            };
            panic!(
                "{conv}: the subscriber's view ({} events) differs from the stored history ({}) \
                 at index {at}: seen {:?}, stored {:?}",
                view.events.len(),
                history.len(),
                near(&view.events),
                near(&history)
            );
        }
        compared += history.len();
        resumes += view.resumes;
    }

    // The assistant: one answer for every stored prompt, none for the others.
    let prompts_acked = asked.iter().filter(|(_, a)| *a).count();
    let mut prompts_stored = 0;
    for (conv, acked) in &asked {
        let messages = stored_messages(&stack.redis, conv).await;
        let prompt = messages.iter().any(|(_, _, s)| s == "customer");
        assert!(prompt || !acked, "{conv}: an acknowledged prompt is lost");
        if !prompt {
            continue;
        }
        prompts_stored += 1;
        eventually_true("the assistant answers", LONG, async || {
            stored_messages(&stack.redis, conv)
                .await
                .iter()
                .any(|(_, _, s)| s == "assistant")
        })
        .await;
    }
    // Answers in flight could still be stored twice: check once all have arrived.
    let full: String = (1..=8).map(|i| format!("w{i} ")).collect();
    let mut answers = 0;
    for (conv, _) in &asked {
        let messages = stored_messages(&stack.redis, conv).await;
        let replies: Vec<&str> = messages
            .iter()
            .filter(|(_, _, s)| s == "assistant")
            .map(|(_, c, _)| c.as_str())
            .collect();
        assert!(
            replies.len() <= 1,
            "{conv}: the assistant's answer stored {} times",
            replies.len()
        );
        for r in &replies {
            assert_eq!(
                r.trim_end(),
                full.trim_end(),
                "{conv}: an incomplete answer"
            );
        }
        answers += replies.len();
    }
    assert_eq!(answers, prompts_stored, "an answer for every stored prompt");

    let dead = stack.redis.dead_letters().await;
    assert!(dead.is_empty(), "dead letters: {dead:?}");
    println!(
        "ledger: {sent} sent, {acked} acknowledged (all stored once, in order), {errors} errors, \
         {stored} stored ({unacked_stored} of them unacknowledged, {late} of those after a later send); subscribers: {compared} \
         events equal to the history after {resumes} (re)subscriptions; assistant: {} prompts, \
         {prompts_stored} stored, {prompts_acked} acknowledged, {answers} answers stored once each; dead letters: 0; \
         kills: {kills:?}, Redis restarted once",
        asked.len()
    );
}
