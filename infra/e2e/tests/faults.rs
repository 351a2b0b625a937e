//! Network faults between the processes and Redis (issue 10, item 16): every gateway and
//! worker reaches a standalone `redis-server` only through the kit's [`FaultProxy`], which
//! adds latency, drops connections and black-holes traffic while clients write over REST
//! and WebSocket. Whatever happens, a request answers 201 or a clear 503/504 — never a hang
//! past `REQUEST_TIMEOUT_MS` (asserted loosely, with a margin of 10 s: a bound on a hang, not
//! a benchmark) — no command is applied twice, nothing acknowledged is lost, per-client
//! order holds, and after the heal the stack recovers by itself: writes succeed again,
//! `/readyz` is 200 again, and subscribers get live events.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use confab_e2e::*;

const REQUEST_TIMEOUT_MS: u64 = 2000;
const ENV: &[(&str, &str)] = &[
    ("REQUEST_TIMEOUT_MS", "2000"),
    // Leases lapse quickly, so a partition whose owner was cut off moves on soon.
    ("CLAIM_IDLE_MS", "2000"),
];
/// Longer than any answer may take: the request timeout plus a generous margin for a busy
/// machine. Going past it is a hang.
const HANG: Duration = Duration::from_millis(REQUEST_TIMEOUT_MS + 10_000);
const LONG: Duration = Duration::from_secs(60);

/// One REST send's outcome.
struct Outcome {
    n: u64,
    status: u16,
    message_id: Option<String>,
    took: Duration,
}

/// Sends one message and times it; a transport failure or no answer within [`HANG`] fails.
async fn timed_send(http: &Http, conv: &str, content: &str, n: u64) -> Outcome {
    let started = Instant::now();
    let rb = http
        .request(
            reqwest::Method::POST,
            &format!("/api/conversations/{conv}/messages"),
        )
        .json(
            &json!({"sender": "customer", "content": content, "timestamp": "2025-04-05T14:00:00Z"}),
        )
        .timeout(HANG + Duration::from_secs(20));
    let (status, body) = match http.try_send(rb).await {
        Ok(answer) => answer,
        Err(e) => panic!(
            "{content}: no HTTP answer after {:?}: {e}",
            started.elapsed()
        ),
    };
    if status != 201 {
        assert!(
            [503, 504].contains(&status),
            "{content}: unexpected {status} {body}"
        );
        assert!(body["error"]["code"].is_string(), "{content}: {body}");
    }
    Outcome {
        n,
        status,
        message_id: body["messageId"].as_str().map(str::to_string),
        took: started.elapsed(),
    }
}

/// REST writers, one per conversation (writer *i* on gateway *i* mod n), sending `"<conv index>-<n>"` one after the other
/// until told to stop (backing off a little after an error, as a client would).
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<(String, Vec<Outcome>)>>,
}

impl Load {
    fn start(gws: &[Http], convs: &[String]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let tasks = convs
            .iter()
            .enumerate()
            .map(|(i, conv)| {
                let (http, conv) = (gws[i % gws.len()].clone(), conv.clone());
                let (stop, acked, failed) = (stop.clone(), acked.clone(), failed.clone());
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let o = timed_send(&http, &conv, &format!("{i}-{n}"), n).await;
                        if o.status == 201 {
                            acked.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        out.push(o);
                        n += 1;
                    }
                    (conv, out)
                })
            })
            .collect();
        Load {
            stop,
            acked,
            failed,
            tasks,
        }
    }

    fn acked(&self) -> usize {
        self.acked.load(Ordering::Relaxed)
    }

    fn failed(&self) -> usize {
        self.failed.load(Ordering::Relaxed)
    }

    /// Waits until `more` further writes were acknowledged.
    async fn wait_acks(&self, more: usize, what: &str) {
        let at = self.acked();
        eventually_true(what, LONG, async || self.acked() >= at + more).await;
    }

    /// Stops the writers and checks the ledger against what Redis stored: every
    /// acknowledged message stored, none twice (by id or by content), each writer's in its
    /// order; every answer in time. Returns the statuses seen.
    async fn finish(self, redis: &Redis) -> HashMap<u16, usize> {
        self.stop.store(true, Ordering::Relaxed);
        let mut statuses: HashMap<u16, usize> = HashMap::new();
        let mut slowest = Duration::ZERO;
        for t in self.tasks {
            let (conv, outcomes) = t.await.unwrap();
            let stored = stored_messages(redis, &conv).await;
            let ids: Vec<&str> = stored.iter().map(|(id, _)| id.as_str()).collect();
            let unique: HashSet<&str> = ids.iter().copied().collect();
            assert_eq!(unique.len(), ids.len(), "{conv}: a message id stored twice");
            let contents: HashSet<&str> = stored.iter().map(|(_, c)| c.as_str()).collect();
            assert_eq!(
                contents.len(),
                stored.len(),
                "{conv}: a command applied twice (same content stored twice)"
            );
            for o in &outcomes {
                *statuses.entry(o.status).or_default() += 1;
                slowest = slowest.max(o.took);
                assert!(
                    o.took <= HANG,
                    "{conv} #{}: answered {} after {:?}",
                    o.n,
                    o.status,
                    o.took
                );
                if o.status == 201 {
                    let id = o.message_id.as_deref().unwrap_or_default();
                    assert!(unique.contains(id), "{conv} #{} acknowledged but lost", o.n);
                }
            }
            let order: Vec<u64> = stored
                .iter()
                .filter_map(|(_, c)| c.split_once('-')?.1.parse().ok())
                .collect();
            assert!(
                order.windows(2).all(|w| w[0] < w[1]),
                "{conv}: stored out of order: {order:?}"
            );
        }
        println!("statuses {statuses:?}, slowest answer {slowest:?}");
        statuses
    }
}

/// A conversation's stored messages, in order: `(messageId, content)`, read from Redis
/// directly.
async fn stored_messages(redis: &Redis, conv: &str) -> Vec<(String, String)> {
    redis
        .history(conv)
        .await
        .iter()
        .filter(|e| e["type"] == "message")
        .map(|e| {
            (
                str_field(&e["message"], "messageId"),
                str_field(&e["message"], "content"),
            )
        })
        .collect()
}

/// The subscriber gets the live event of a message sent now (the stack recovered).
async fn subscriber_gets_live_events(ws: &mut Ws, http: &Http, conv: &str) {
    let id = eventually("a write after the heal", LONG, async || {
        let (status, body) = http
            .send_message(conv, "agent", "after the heal", "2025-04-05T14:00:00Z")
            .await;
        (status == 201).then(|| str_field(&body, "messageId"))
    })
    .await;
    let deadline = Instant::now() + LONG;
    loop {
        assert!(Instant::now() < deadline, "the subscriber never saw {id}");
        match ws.next_event(Duration::from_secs(5)).await {
            WsEvent::Frame(f) if f["type"] == "message" && f["message"]["messageId"] == *id => {
                return
            }
            WsEvent::Frame(_) | WsEvent::Timeout => {}
            other => panic!("the subscription ended: {other:?}"),
        }
    }
}

async fn readyz(http: &Http) -> u16 {
    let rb = http.request(reqwest::Method::GET, "/readyz").timeout(HANG);
    match http.try_send(rb).await {
        Ok((status, _)) => status,
        Err(e) => panic!("/readyz did not answer: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_latency_slows_nothing_into_errors_and_keeps_order() {
    // Writes wait for several round trips, so the default request timeout applies here.
    let stack = Stack::through_proxy(1, 1, 0, &[("CLAIM_IDLE_MS", "2000")]).await;
    let http = stack.http();
    let conv = http.create_conversation().await;
    let mut sub = Ws::connect(&stack.gw().ws_url(), None).await;
    sub.subscribe(&conv, None).await;

    stack
        .faults()
        .set_latency(Duration::from_millis(100), Duration::from_millis(100));
    let mut sent = Vec::new();
    for n in 0..8 {
        sent.push(http.send_ok(&conv, "customer", &format!("r{n}")).await);
    }
    // A WebSocket pipelines its sends: all out before the first ack.
    let mut writer = Ws::connect(&stack.gw().ws_url(), None).await;
    for n in 0..8 {
        writer
            .send_json(&send_frame(
                &conv,
                &format!("c{n}"),
                "agent",
                &format!("w{n}"),
            ))
            .await;
    }
    // Acks may come in any order; what is stored must follow the sends.
    let acks: HashMap<String, String> = writer
        .collect("ack", 8, LONG)
        .await
        .iter()
        .map(|a| (str_field(a, "clientId"), str_field(a, "messageId")))
        .collect();
    for n in 0..8 {
        sent.push(acks[&format!("c{n}")].clone());
    }
    stack.faults().heal();

    let stored: Vec<String> = stored_messages(&stack.redis, &conv)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(stored, sent, "every write stored once, in order");
    let seen: Vec<String> = sub
        .collect("message", sent.len(), LONG)
        .await
        .iter()
        .map(|f| str_field(&f["message"], "messageId"))
        .collect();
    assert_eq!(seen, sent, "the subscriber saw the stored history");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_answer_clearly_apply_once_and_recover() {
    // Two gateways, and a cleanup worker beside the persistence worker: all behind the proxy.
    let stack = Stack::through_proxy(2, 1, 1, ENV).await;
    let gws: Vec<Http> = stack.gateways.iter().map(Gateway::http).collect();
    let http = stack.http();
    let mut convs = Vec::new();
    for _ in 0..3 {
        convs.push(http.create_conversation().await);
    }
    let mut sub = Ws::connect(&stack.gw().ws_url(), None).await;
    sub.subscribe(&convs[0], None).await;
    let load = Load::start(&gws, &convs);
    load.wait_acks(30, "load before the faults").await;

    let faults = stack.faults();
    // Every connection to Redis cut, again and again: resets and orderly closes by turns,
    // each after some traffic went through.
    for round in 0..12 {
        let accepted = faults.accepted();
        faults.drop_connections(round % 2 == 0);
        eventually_true("the processes reconnect", LONG, async || {
            faults.accepted() > accepted
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    println!(
        "dropped {} connections; {} writes acknowledged, {} refused so far",
        faults.dropped(),
        load.acked(),
        load.failed()
    );
    assert!(faults.dropped() >= 12, "the faults happened");

    // Recovery, by itself: writes go on being acknowledged, readiness is back, the
    // subscriber gets live events.
    load.wait_acks(30, "writes succeed after the faults").await;
    for gw in &gws {
        eventually_true("ready again", LONG, async || readyz(gw).await == 200).await;
    }
    load.finish(&stack.redis).await;
    subscriber_gets_live_events(&mut sub, &http, &convs[0]).await;
}

/// A black hole for a few seconds: requests answer 503/504 within the bound, `/readyz` says
/// 503, and after the heal everything works again. `long` also drops every connection before
/// the heal (a partition long enough for TCP to give up); otherwise what waited in the
/// buffers is delivered late, as after a short partition.
async fn a_black_hole(long: bool) {
    let stack = Stack::through_proxy(1, 1, 0, ENV).await;
    let http = stack.http();
    let mut convs = Vec::new();
    for _ in 0..3 {
        convs.push(http.create_conversation().await);
    }
    let mut sub = Ws::connect(&stack.gw().ws_url(), None).await;
    sub.subscribe(&convs[0], None).await;
    let load = Load::start(std::slice::from_ref(&http), &convs);
    load.wait_acks(30, "load before the black hole").await;

    let faults = stack.faults();
    faults.black_hole(true);
    let failed = load.failed();
    eventually_true("writes are refused in the black hole", LONG, async || {
        load.failed() >= failed + 6
    })
    .await;
    eventually_true("/readyz says 503", LONG, async || {
        readyz(&http).await == 503
    })
    .await;
    if long {
        faults.drop_connections(true);
    }
    faults.heal();
    println!(
        "healed; {} writes acknowledged, {} refused so far",
        load.acked(),
        load.failed()
    );

    load.wait_acks(30, "writes succeed after the heal").await;
    eventually_true("ready again", LONG, async || readyz(&http).await == 200).await;
    let statuses = load.finish(&stack.redis).await;
    assert!(
        statuses.get(&503).copied().unwrap_or(0) + statuses.get(&504).copied().unwrap_or(0) > 0,
        "the black hole was noticed"
    );
    subscriber_gets_live_events(&mut sub, &http, &convs[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_black_hole_answers_503_or_504_and_recovers() {
    a_black_hole(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_black_hole_answers_503_or_504_and_recovers() {
    a_black_hole(true).await;
}
