//! The command pipeline under stress: several gateways and persistence workers on one Redis,
//! a worker killed mid-load, poison entries, replayed commands, stream trimming, and a
//! graceful worker stop. "Exactly once" is checked three ways: the REST view, the
//! conversation's event history (one `message` event per message), and its counters.
//! Partition ownership and order with several replicas live in `ownership.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use confab_e2e::*;

in_both_modes!(a_worker_killed_mid_load_loses_and_duplicates_nothing,);

/// How long a test waits for load to make progress (a slow machine is not a failure).
const PROGRESS: std::time::Duration = std::time::Duration::from_secs(60);

/// Checks one conversation: REST shows `expected` ids in this order, the history holds one
/// `message` event per message with eventIds 1..=n, and the message counter equals n.
async fn assert_exactly_once(stack: &Stack, http: &Http, conv: &str, expected: &[String]) {
    let got: Vec<String> = http
        .messages(conv)
        .await
        .iter()
        .map(|m| str_field(m, "messageId"))
        .collect();
    assert_eq!(got, expected, "messages of {conv}");
    let history = stack.redis.history(conv).await;
    let in_history: Vec<String> = history
        .iter()
        .filter(|e| e["type"] == "message")
        .map(|e| {
            e["message"]["messageId"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(in_history, expected, "message events of {conv}");
    let event_ids: Vec<u64> = history
        .iter()
        .map(|e| e["eventId"].as_u64().unwrap_or(0))
        .collect();
    let want: Vec<u64> = (1..=history.len() as u64).collect();
    assert_eq!(
        event_ids, want,
        "eventIds of {conv} are 1..=n without gaps or repeats"
    );
    let held: u64 = stack
        .redis
        .q(&["HGET", &format!("confab:conv:{{{conv}}}"), "cnt"])
        .await;
    assert_eq!(held, expected.len() as u64, "message counter of {conv}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_through_two_gateways_land_once_in_order() {
    let stack = Stack::with(2, 2, 0, &[]).await;
    let gws = [stack.gateways[0].http(), stack.gateways[1].http()];
    let mut convs = Vec::new();
    for i in 0..4 {
        convs.push(gws[i % 2].create_conversation().await);
    }
    // Each conversation gets sequential sends alternating between the gateways; the
    // conversations are written concurrently.
    let per_conv = 40;
    let sent: Vec<Vec<String>> =
        futures::future::join_all(convs.iter().enumerate().map(|(c, conv)| {
            let gws = gws.clone();
            async move {
                let mut ids = Vec::new();
                for n in 0..per_conv {
                    let gw = &gws[(c + n) % 2];
                    let sender = if n % 2 == 0 { "customer" } else { "agent" };
                    ids.push(gw.send_ok(conv, sender, &format!("c{c} n{n}")).await);
                }
                ids
            }
        }))
        .await;
    for (conv, ids) in convs.iter().zip(&sent) {
        assert_exactly_once(&stack, &gws[0], conv, ids).await;
        // Both gateways read the same thing.
        assert_eq!(
            gws[0].conversation(conv).await,
            gws[1].conversation(conv).await
        );
    }
    let all: HashSet<&String> = sent.iter().flatten().collect();
    assert_eq!(all.len(), 4 * per_conv, "message ids are unique");
    stack.redis.assert_no_dead_letters().await;
}

/// Creates conversations until there are `n` in partitions of each persistence worker.
async fn conversations_of_each(stack: &Stack, http: &Http, n: usize) -> Vec<String> {
    let owners = stack.redis.partition_owners().await;
    let mut picked: HashMap<String, Vec<String>> = HashMap::new();
    for _ in 0..200 {
        let conv = http.create_conversation().await;
        let p = stack.redis.partition_of(&conv).index as usize;
        let owner = owners[p].clone().unwrap_or_default();
        let mine = picked.entry(owner).or_default();
        if mine.len() < n {
            mine.push(conv);
        }
        if picked.len() == stack.workers.len() && picked.values().all(|v| v.len() == n) {
            let mut all: Vec<String> = picked.into_values().flatten().collect();
            all.sort();
            return all;
        }
    }
    panic!("could not place conversations on every worker: {picked:?}");
}

/// One sender's record: content → (status, messageId if 201).
type Outcomes = Vec<(String, u16, Option<String>)>;

async fn a_worker_killed_mid_load_loses_and_duplicates_nothing(mode: Mode) {
    let env = [("CLAIM_IDLE_MS", "1000"), ("REQUEST_TIMEOUT_MS", "30000")];
    let mut stack = Stack::in_mode(mode, 2, 2, 0, &env).await;
    let gws = [stack.gateways[0].http(), stack.gateways[1].http()];
    // Two conversations in partitions of each worker, so the victim certainly dies with work.
    let convs = conversations_of_each(&stack, &gws[0], 2).await;

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    for s in 0..8usize {
        let http = gws[s % 2].clone();
        let conv = convs[s % 4].clone();
        let (stop, acked) = (stop.clone(), acked.clone());
        senders.push(tokio::spawn(async move {
            let mut out: Outcomes = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let content = format!("sender{s}-{n}");
                let (status, body) = http
                    .send_message(&conv, "customer", &content, "2025-04-05T14:00:00Z")
                    .await;
                let id = body["messageId"].as_str().map(str::to_string);
                if status == 201 {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                out.push((content, status, id));
                n += 1;
            }
            (conv, out)
        }));
    }

    let count = || acked.load(Ordering::Relaxed);
    eventually_true(
        "300 sends acknowledged before the kill",
        PROGRESS,
        async || count() >= 300,
    )
    .await;

    // The victim is frozen first so that it certainly dies with commands of its partitions
    // waiting unapplied (its leases hold them until they lapse).
    let victim_name = stack.workers[0].name().to_string();
    stack.workers[0].process().signal(libc::SIGSTOP);
    let redis = &stack.redis;
    let orphaned = eventually(
        "commands waiting on the frozen worker",
        PROGRESS,
        async || {
            let owners = redis.partition_owners().await;
            let mut waiting = 0;
            for (pk, owner) in redis.partitions().iter().zip(owners) {
                if owner.as_deref() == Some(victim_name.as_str()) {
                    waiting += redis.q::<u64>(&["XLEN", &pk.commands]).await;
                }
            }
            (waiting > 0).then_some(waiting)
        },
    )
    .await;
    stack.workers[0].kill9();
    println!("SIGKILLed {victim_name} with {orphaned} commands waiting in its partitions");

    let at_kill = count();
    eventually_true(
        "400 more sends acknowledged after the kill",
        PROGRESS,
        async || count() >= at_kill + 400,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut results = Vec::new();
    for s in senders {
        results.push(s.await.unwrap());
    }

    // The survivor took over every partition and applied what waited.
    let survivor = stack.workers[1].name().to_string();
    eventually_true(
        "the survivor owns every partition and nothing waits",
        DEADLINE,
        async || {
            stack
                .redis
                .partition_owners()
                .await
                .iter()
                .all(|o| o.as_deref() == Some(survivor.as_str()))
                && stack.redis.backlog().await == 0
        },
    )
    .await;

    // Every send was answered 201 (the orphans after the reclaim), and each is stored once.
    let mut by_conv: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for (conv, outcomes) in &results {
        for (content, status, id) in outcomes {
            assert_eq!(*status, 201, "{content} answered {status}");
            by_conv
                .entry(conv.clone())
                .or_default()
                .push((content.clone(), id.clone().unwrap()));
        }
    }
    let total: usize = by_conv.values().map(Vec::len).sum();
    println!("{total} messages acknowledged");
    for (conv, sent) in &by_conv {
        let stored = gws[0].messages(conv).await;
        let stored_ids: Vec<String> = stored.iter().map(|m| str_field(m, "messageId")).collect();
        let unique: HashSet<&String> = stored_ids.iter().collect();
        assert_eq!(
            unique.len(),
            stored_ids.len(),
            "duplicate message ids in {conv}"
        );
        let stored_set: HashSet<&String> = stored_ids.iter().collect();
        for (content, id) in sent {
            assert!(
                stored_set.contains(id),
                "{content} ({id}) got 201 but is missing"
            );
        }
        assert_eq!(
            stored_ids.len(),
            sent.len(),
            "{conv} holds exactly the acknowledged messages"
        );
        // Each sender's messages keep its send order.
        for s in 0..8 {
            let prefix = format!("sender{s}-");
            let order: Vec<u64> = stored
                .iter()
                .filter_map(|m| m["content"].as_str()?.strip_prefix(&prefix)?.parse().ok())
                .collect();
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(order, sorted, "{prefix} messages out of order in {conv}");
        }
        // The history (the last EVENT_HISTORY_LEN events or more) holds one event per
        // message: exactly the newest stored messages, in the same order.
        let history: Vec<String> = stack
            .redis
            .history(conv)
            .await
            .iter()
            .filter(|e| e["type"] == "message")
            .map(|e| str_field(&e["message"], "messageId"))
            .collect();
        assert!(!history.is_empty());
        assert_eq!(
            history[..],
            stored_ids[stored_ids.len() - history.len()..],
            "the message events of {conv}"
        );
        let held: u64 = stack
            .redis
            .q(&["HGET", &format!("confab:conv:{{{conv}}}"), "cnt"])
            .await;
        assert_eq!(held, sent.len() as u64, "message counter of {conv}");
    }
    stack.redis.assert_no_dead_letters().await;
    assert!(stack.workers[1].is_running());
}

#[tokio::test]
async fn poison_entries_are_dead_lettered_and_the_worker_goes_on() {
    let mut stack = Stack::start(&[]).await;
    stack.expect_dead_letters();
    let http = stack.http();
    let conv = http.create_conversation().await;
    let stream = stack.redis.partition_of(&conv).commands;

    let garbage: String = stack
        .redis
        .q(&["XADD", &stream, "*", "c", "this is {not json"])
        .await;
    let no_field: String = stack
        .redis
        .q(&["XADD", &stream, "*", "x", "no command field"])
        .await;
    let bad_kind: String = stack
        .redis
        .q(&[
            "XADD",
            &stream,
            "*",
            "c",
            &format!(
                r#"{{"id":"{}","kind":"explode","conversationId":"{conv}"}}"#,
                random_id()
            ),
        ])
        .await;
    let dead = eventually("three dead letters", DEADLINE, async || {
        let d = stack.redis.dead_letters().await;
        (d.len() >= 3).then_some(d)
    })
    .await;
    assert_eq!(dead.len(), 3, "{dead:?}");
    let by_entry: HashMap<String, &HashMap<String, String>> =
        dead.iter().map(|(_, f)| (f["entry"].clone(), f)).collect();
    for (entry, needle) in [
        (&garbage, "this is {not json"),
        (&no_field, "no command field"),
        (&bad_kind, "explode"),
    ] {
        let f = by_entry
            .get(entry)
            .unwrap_or_else(|| panic!("entry {entry} not dead-lettered: {dead:?}"));
        assert_eq!(f["stream"], stream);
        assert!(!f["reason"].trim().is_empty(), "{f:?}");
        assert!(f["payload"].contains(needle), "{f:?}");
    }

    // The worker goes on: new commands are applied, nothing is left waiting.
    http.send_ok(&conv, "customer", "after the poison").await;
    assert_eq!(http.messages(&conv).await.len(), 1);
    eventually_true("nothing waiting", DEADLINE, async || {
        stack.redis.backlog().await == 0
    })
    .await;
    assert!(stack.workers[0].is_running());
    assert!(!stack.workers[0].log().contains("panicked"));
}

#[tokio::test]
async fn a_replayed_command_is_applied_once() {
    let stack = Stack::start(&[]).await;
    let http = stack.http();
    let conv = http.create_conversation().await;
    let first = http.send_ok(&conv, "customer", "first").await;

    // What a redelivery looks like: the same command (same id) in the stream again.
    let command_id = random_id();
    let message_id = random_id();
    let command = json!({
        "id": command_id,
        "kind": "send_message",
        "conversationId": conv,
        "message": {
            "messageId": message_id,
            "sender": "agent",
            "content": "replayed",
            "timestamp": "2025-04-05T14:00:00Z",
        },
    })
    .to_string();
    for _ in 0..2 {
        stack.redis.append_command(&conv, &command).await;
    }
    // A REST send after both entries is applied after them (one worker, stream order).
    let second = http.send_ok(&conv, "customer", "second").await;
    // And a replay long after the original.
    stack.redis.append_command(&conv, &command).await;
    let third = http.send_ok(&conv, "customer", "third").await;

    assert_exactly_once(&stack, &http, &conv, &[first, message_id, second, third]).await;
    let contents: Vec<String> = http
        .messages(&conv)
        .await
        .iter()
        .map(|m| str_field(m, "content"))
        .collect();
    assert_eq!(contents, ["first", "replayed", "second", "third"]);
    stack.redis.assert_no_dead_letters().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_stream_is_trimmed_after_processing() {
    let stack = Stack::start(&[]).await;
    let http = stack.http();
    let conv = http.create_conversation().await;
    let total = 600;
    futures::future::join_all((0..20).map(|w| {
        let http = http.clone();
        let conv = conv.clone();
        async move {
            for n in 0..total / 20 {
                http.send_ok(&conv, "agent", &format!("w{w} n{n}")).await;
            }
        }
    }))
    .await;
    assert_eq!(http.messages(&conv).await.len(), total);
    let stream = stack.redis.partition_of(&conv).commands;
    let info: HashMap<String, redis::Value> = stack.redis.q(&["XINFO", "STREAM", &stream]).await;
    let added: u64 = redis::from_redis_value_ref(&info["entries-added"]).unwrap();
    assert!(added > total as u64, "entries-added {added}");
    // Committed entries are trimmed at once: nothing is left once the load is applied.
    let len = eventually("the partition's stream trimmed", DEADLINE, async || {
        let len: u64 = stack.redis.q(&["XLEN", &stream]).await;
        (len == 0).then_some(len)
    })
    .await;
    println!("XLEN {stream} = {len} after {added} entries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_with_sigterm_finishes_its_batch_and_exits_0() {
    let env = [("REQUEST_TIMEOUT_MS", "30000"), ("CLAIM_IDLE_MS", "1000")];
    let mut stack = Stack::start(&env).await;
    let http = stack.http();
    let conv = http.create_conversation().await;

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    for s in 0..6 {
        let (http, conv, stop, acked) = (http.clone(), conv.clone(), stop.clone(), acked.clone());
        senders.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let (status, body) = http
                    .send_message(&conv, "agent", &format!("s{s}-{n}"), "2025-04-05T14:00:00Z")
                    .await;
                if status == 201 {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                out.push((status, body["messageId"].as_str().map(str::to_string)));
                n += 1;
            }
            out
        }));
    }
    eventually_true("100 sends acknowledged", DEADLINE, async || {
        acked.load(Ordering::Relaxed) >= 100
    })
    .await;

    let mut worker = stack.workers.remove(0);
    let status = worker.terminate().await;
    assert!(status.success(), "SIGTERM exit status: {status}");
    assert!(
        worker.log().contains("persistence worker stopped"),
        "{}",
        worker.log()
    );
    // It committed what it did and handed every partition back.
    assert!(stack
        .redis
        .partition_owners()
        .await
        .iter()
        .all(Option::is_none));
    assert!(!stack
        .redis
        .persistence_members()
        .await
        .contains(&worker.name().to_string()));

    // Sends made meanwhile wait in the stream; a new worker applies them.
    stack.add_worker("persistence", &env).await;
    let at = acked.load(Ordering::Relaxed);
    eventually_true("sends acknowledged again", DEADLINE, async || {
        acked.load(Ordering::Relaxed) >= at + 50
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut ids = Vec::new();
    for s in senders {
        for (status, id) in s.await.unwrap() {
            assert_eq!(status, 201);
            ids.push(id.unwrap());
        }
    }
    let stored: Vec<String> = http
        .messages(&conv)
        .await
        .iter()
        .map(|m| str_field(m, "messageId"))
        .collect();
    let stored_set: HashSet<&String> = stored.iter().collect();
    assert_eq!(stored_set.len(), stored.len(), "no duplicates");
    assert_eq!(stored.len(), ids.len());
    for id in &ids {
        assert!(stored_set.contains(id), "{id} acknowledged but missing");
    }
}

/// SIGTERM while a write waits for its reply: the gateway stops accepting but keeps its
/// Pub/Sub connection until in-flight requests are answered, so the client gets its 201.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_in_flight_at_sigterm_still_gets_its_reply() {
    let mut stack = Stack::start(&[("REQUEST_TIMEOUT_MS", "8000")]).await;
    let http = stack.http();
    let conv = http.create_conversation().await;
    // Freeze the worker so the write is queued but not applied when SIGTERM arrives.
    stack.workers[0].process().signal(libc::SIGSTOP);
    let pending = {
        let (http, conv) = (http.clone(), conv.clone());
        tokio::spawn(async move {
            http.send_message(&conv, "customer", "in flight", "2025-04-05T14:00:00Z")
                .await
        })
    };
    // Wait until the command is in the stream: the request is in flight, its reply pending.
    let redis = &stack.redis;
    let stream = redis.partition_of(&conv).commands;
    eventually_true("the write is queued", PROGRESS, async || {
        redis
            .stream(&stream)
            .await
            .iter()
            .any(|(_, fields)| fields.get("c").is_some_and(|c| c.contains("in flight")))
    })
    .await;
    let pid = stack.gateways[0].process().pid();
    stack.gateways[0].process().signal(libc::SIGTERM);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stack.workers[0].process().signal(libc::SIGCONT);
    let (status, body) = pending.await.unwrap();
    assert_eq!(status, 201, "gateway {pid}: {body}");
    assert!(body["messageId"].is_string());
    let mut gw = stack.gateways.remove(0);
    let exit = gw.terminate().await;
    assert!(exit.success(), "exit status {exit}");
}
