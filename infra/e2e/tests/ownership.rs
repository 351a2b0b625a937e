//! Partition ownership with several persistence replicas: an even split that follows joins,
//! graceful leaves and crashes; per-conversation order for pipelined WebSocket senders while
//! replicas are SIGKILLed mid-burst (standalone and cluster); and a replica paused past its
//! lease (SIGSTOP), fenced once it wakes up. Timings are printed, never asserted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use confab_e2e::*;
use tokio::sync::Semaphore;

const CLAIM_IDLE_MS: &str = "1500";

/// Partitions held per live member, sorted descending, e.g. `[6, 5, 5]`.
async fn split(stack: &Stack) -> Vec<usize> {
    let owners = stack.redis.partition_owners().await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for o in owners.into_iter().flatten() {
        *counts.entry(o).or_default() += 1;
    }
    let mut v: Vec<usize> = counts.into_values().collect();
    v.sort_unstable_by(|a, b| b.cmp(a));
    v
}

/// The split every partition count P and replica count N settle to: ⌈P/N⌉ for P mod N of
/// them, ⌊P/N⌋ for the rest.
fn even(p: usize, n: usize) -> Vec<usize> {
    (0..n).map(|i| p / n + usize::from(i < p % n)).collect()
}

async fn settles_to(stack: &Stack, want: Vec<usize>, what: &str) -> Duration {
    let start = Instant::now();
    eventually_true(what, DEADLINE, async || split(stack).await == want).await;
    let took = start.elapsed();
    println!("{what}: {took:?}");
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_split_evenly_and_follow_joins_leaves_and_crashes() {
    let env = [("CLAIM_IDLE_MS", CLAIM_IDLE_MS)];
    let mut stack = Stack::with(1, 3, 0, &env).await;
    let p = stack.redis.partitions().len();
    assert_eq!(split(&stack).await, even(p, 3));
    let http = stack.http();
    let conv = http.create_conversation().await;

    stack.add_worker("persistence", &env).await;
    settles_to(&stack, even(p, 4), "a fourth replica joins: 4/4/4/4").await;
    http.send_ok(&conv, "agent", "after the join").await;

    let mut leaving = stack.workers.remove(0);
    let status = leaving.terminate().await;
    assert!(status.success(), "{status}");
    settles_to(&stack, even(p, 3), "one leaves with SIGTERM: 6/5/5").await;
    http.send_ok(&conv, "agent", "after the leave").await;

    stack.workers[0].kill9();
    settles_to(
        &stack,
        even(p, 2),
        "one is SIGKILLed: 8/8 once its leases lapse",
    )
    .await;
    http.send_ok(&conv, "agent", "after the crash").await;
    assert_eq!(http.messages(&conv).await.len(), 3);
}

/// What one WebSocket client saw.
#[derive(Default)]
struct Seen {
    /// clientId → messageId for every acknowledged send.
    acks: HashMap<String, String>,
    errors: Vec<Value>,
    /// `message` events in arrival order: (eventId, messageId).
    events: Vec<(u64, String)>,
}

impl Seen {
    fn take(&mut self, frame: Value) {
        match frame["type"].as_str() {
            Some("ack") => {
                self.acks.insert(
                    str_field(&frame, "clientId"),
                    str_field(&frame, "messageId"),
                );
            }
            Some("error") => self.errors.push(frame),
            Some("message") => self.events.push((
                frame["eventId"].as_u64().unwrap_or(0),
                str_field(&frame["message"], "messageId"),
            )),
            _ => {}
        }
    }
}

/// A client that pipelines `bursts` bursts of `per` sends (each burst without waiting for an
/// ack), then returns its socket, still subscribed, with what it saw. With a `gate`, each
/// burst first takes a permit from it.
async fn pipelined_client(
    mut ws: Ws,
    conv: String,
    name: String,
    (bursts, per): (usize, usize),
    answered: Arc<AtomicUsize>,
    gate: Option<Arc<Semaphore>>,
) -> (Ws, Seen) {
    let mut seen = Seen::default();
    for b in 0..bursts {
        if let Some(gate) = &gate {
            gate.acquire().await.expect("the gate stays open").forget();
        }
        for i in 0..per {
            let n = b * per + i;
            let frame = send_frame(
                &conv,
                &format!("{name}-{n}"),
                "customer",
                &format!("{name} {n}"),
            );
            ws.feed_text(&frame.to_string()).await;
        }
        ws.flush().await;
        while seen.acks.len() + seen.errors.len() < (b + 1) * per {
            match ws.next_event(Duration::from_secs(90)).await {
                WsEvent::Frame(f) => {
                    let before = seen.acks.len() + seen.errors.len();
                    seen.take(f);
                    if seen.acks.len() + seen.errors.len() > before {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
                WsEvent::Timeout => panic!("{name}: no answer within 90 s"),
                WsEvent::Closed(code) => panic!("{name}: socket closed ({code:?})"),
            }
        }
    }
    (ws, seen)
}

in_both_modes!(order_holds_for_pipelined_senders_while_replicas_are_killed);

/// 4 replicas, 3 conversations with 2 pipelining clients each (one per gateway). Two
/// replicas are SIGKILLed mid-burst and replaced. For every client, its acknowledged sends
/// are stored once each, in the order it sent them; every subscriber receives the
/// conversation's stored history, in order, with no gap and nothing twice.
async fn order_holds_for_pipelined_senders_while_replicas_are_killed(mode: Mode) {
    let env = [
        ("CLAIM_IDLE_MS", CLAIM_IDLE_MS),
        ("REQUEST_TIMEOUT_MS", "60000"),
    ];
    let mut stack = Stack::in_mode(mode, 2, 4, 0, &env).await;
    let http = stack.http();
    let (bursts, per) = (6, 20);
    let answered = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    let mut convs = Vec::new();
    for c in 0..3 {
        let conv = http.create_conversation().await;
        for g in 0..2 {
            let mut ws = Ws::connect(&stack.gateways[g].ws_url(), None).await;
            ws.subscribe(&conv, Some(0)).await;
            let name = format!("k{c}{g}");
            clients.push(tokio::spawn(pipelined_client(
                ws,
                conv.clone(),
                name.clone(),
                (bursts, per),
                answered.clone(),
                None,
            )));
            convs.push((conv.clone(), name));
        }
    }
    let total = convs.len() * bursts * per;
    // Kill two replicas mid-burst, then bring two fresh ones.
    for (i, at) in [total / 4, total / 2].into_iter().enumerate() {
        eventually_true(
            "the burst progresses",
            Duration::from_secs(120),
            async || answered.load(Ordering::Relaxed) >= at,
        )
        .await;
        stack.workers[i].kill9();
        println!("SIGKILLed replica {i} after {at} of {total} answers");
    }
    stack.add_worker("persistence", &env).await;
    stack.add_worker("persistence", &env).await;

    let mut results = Vec::new();
    for c in clients {
        results.push(c.await.unwrap());
    }
    // Stored: each client's acknowledged sends once each, in its order.
    let mut stored_by_conv: HashMap<String, Vec<String>> = HashMap::new();
    for ((conv, name), (_, seen)) in convs.iter().zip(&results) {
        assert!(seen.errors.is_empty(), "{name}: {:?}", seen.errors);
        assert_eq!(
            seen.acks.len(),
            bursts * per,
            "{name}: every send acknowledged"
        );
        let stored = match stored_by_conv.get(conv) {
            Some(s) => s.clone(),
            None => {
                let m = http.messages(conv).await;
                let contents: Vec<String> = m.iter().map(|m| str_field(m, "content")).collect();
                let ids: Vec<String> = m.iter().map(|m| str_field(m, "messageId")).collect();
                let unique: HashSet<&String> = ids.iter().collect();
                assert_eq!(unique.len(), ids.len(), "{conv}: a message stored twice");
                assert_eq!(
                    ids.len(),
                    2 * bursts * per,
                    "{conv}: exactly the acknowledged sends"
                );
                stored_by_conv.insert(conv.clone(), ids.clone());
                stored_by_conv.insert(format!("{conv}:contents"), contents);
                ids
            }
        };
        let contents = &stored_by_conv[&format!("{conv}:contents")];
        let mine: Vec<usize> = contents
            .iter()
            .filter_map(|c| c.strip_prefix(&format!("{name} "))?.parse().ok())
            .collect();
        let want: Vec<usize> = (0..bursts * per).collect();
        assert_eq!(mine, want, "{name}: stored in send order");
        let acked: HashSet<&String> = seen.acks.values().collect();
        assert!(stored.iter().filter(|id| acked.contains(id)).count() == bursts * per);
    }
    // Delivered: every subscriber sees exactly the stored history, in order.
    for ((conv, name), (mut ws, mut seen)) in convs.iter().zip(results) {
        let stored = &stored_by_conv[conv];
        while seen.events.len() < stored.len() {
            match ws.next_event(Duration::from_secs(30)).await {
                WsEvent::Frame(f) => seen.take(f),
                other => panic!(
                    "{name}: {} of {} events, then {other:?}",
                    seen.events.len(),
                    stored.len()
                ),
            }
        }
        let eids: Vec<u64> = seen.events.iter().map(|e| e.0).collect();
        let want: Vec<u64> = (1..=stored.len() as u64).collect();
        assert_eq!(eids, want, "{name}: eventIds in order, no gap, no repeat");
        let ids: Vec<String> = seen.events.iter().map(|e| e.1.clone()).collect();
        assert_eq!(&ids, stored, "{name}: delivered in the stored order");
    }
}

/// A replica frozen (SIGSTOP) past its lease loses its partitions to the other; woken up, it
/// finds its leases gone and applies nothing, and order still holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_paused_past_its_lease_is_fenced_and_order_holds() {
    let env = [
        ("CLAIM_IDLE_MS", CLAIM_IDLE_MS),
        ("REQUEST_TIMEOUT_MS", "60000"),
    ];
    let mut stack = Stack::with(1, 2, 0, &env).await;
    let http = stack.http();
    let victim = stack.workers[0].name().to_string();
    // A conversation in one of the victim's partitions.
    let owners = stack.redis.partition_owners().await;
    let conv = loop {
        let c = http.create_conversation().await;
        if owners[stack.redis.partition_of(&c).index as usize].as_deref() == Some(victim.as_str()) {
            break c;
        }
    };
    let mut ws = Ws::connect(&stack.gw().ws_url(), None).await;
    ws.subscribe(&conv, Some(0)).await;
    let answered = Arc::new(AtomicUsize::new(0));
    // Three bursts before the freeze, the other five once the survivor has taken over: the
    // client cannot be done before the takeover, however fast or slow the machine is.
    let gate = Arc::new(Semaphore::new(3));
    let sender = tokio::spawn(pipelined_client(
        ws,
        conv.clone(),
        "p".into(),
        (8, 25),
        answered.clone(),
        Some(gate.clone()),
    ));
    eventually_true("some sends answered", Duration::from_secs(60), async || {
        answered.load(Ordering::Relaxed) >= 50
    })
    .await;
    stack.workers[0].process().signal(libc::SIGSTOP);
    let frozen = Instant::now();
    let survivor = stack.workers[1].name().to_string();
    eventually_true("the survivor takes every partition", DEADLINE, async || {
        stack
            .redis
            .partition_owners()
            .await
            .iter()
            .all(|o| o.as_deref() == Some(survivor.as_str()))
    })
    .await;
    println!("taken over {:?} after the freeze", frozen.elapsed());
    let at = answered.load(Ordering::Relaxed);
    assert!(at <= 75, "{at} answered with three bursts allowed");
    gate.add_permits(5);
    eventually_true(
        "sends go on meanwhile",
        Duration::from_secs(60),
        async || answered.load(Ordering::Relaxed) >= at + 25,
    )
    .await;
    stack.workers[0].process().signal(libc::SIGCONT);
    let (mut ws, mut seen) = sender.await.unwrap();
    assert!(seen.errors.is_empty(), "{:?}", seen.errors);
    let stored: Vec<Value> = http.messages(&conv).await;
    let contents: Vec<String> = stored.iter().map(|m| str_field(m, "content")).collect();
    let want: Vec<String> = (0..200).map(|n| format!("p {n}")).collect();
    assert_eq!(contents, want, "stored once each, in send order");
    let ids: Vec<String> = stored.iter().map(|m| str_field(m, "messageId")).collect();
    while seen.events.len() < ids.len() {
        match ws.next_event(Duration::from_secs(30)).await {
            WsEvent::Frame(f) => seen.take(f),
            other => panic!(
                "{} of {} events, then {other:?}",
                seen.events.len(),
                ids.len()
            ),
        }
    }
    let delivered: Vec<String> = seen.events.iter().map(|e| e.1.clone()).collect();
    assert_eq!(delivered, ids, "delivered in the stored order, once");
    // The woken replica noticed it had lost its partitions (and rejoins for a fresh share).
    eventually_true("the woken replica noticed", DEADLINE, async || {
        let log = stack.workers[0].log();
        log.contains("lease lost to another replica") || log.contains("fenced")
    })
    .await;
    assert!(stack.workers[0].is_running());
}
