//! Changing `STREAM_PARTITIONS` on a running deployment: refused while commands are queued
//! under the old layout (a silent reorder is not an option), accepted once they are drained
//! — `workers drained` says when — with every conversation going on in order and the
//! cleanup index moved to the new partitions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use confab_e2e::*;
use confab_shared::keys::PartitionKeys;
use confab_shared::partition::Partitions;

const TS: &str = "2025-04-05T14:00:00Z";

/// `workers <args>` with `env` until it exits: (success, its log).
async fn run_workers(redis: &Redis, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut all = redis.env();
    all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let mut proc = ChildProc::spawn(
        &format!("workers-{}", args.join("-")),
        &bin_dir().join("workers"),
        &args,
        &all,
    );
    let status = eventually("the process exits", DEADLINE, async || proc.exited()).await;
    (status.success(), proc.log())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_partitions_changes_only_once_the_old_layout_is_drained() {
    let env16 = [("REQUEST_TIMEOUT_MS", "500")];
    let mut stack = Stack::with(1, 1, 1, &env16).await;
    let http = stack.http();
    let mut convs = Vec::new();
    for c in 0..6 {
        let conv = http.create_conversation().await;
        for n in 0..3 {
            http.send_ok(&conv, "agent", &format!("c{c} m{n}")).await;
        }
        convs.push(conv);
    }
    // Commands wait in the streams (no persistence worker).
    let status = stack.workers.remove(0).terminate().await;
    assert!(status.success());
    let queued = http.send_message(&convs[0], "agent", "queued", TS).await;
    assert_error(&queued, 504, "timeout");
    let (drained, out) = run_workers(&stack.redis, &["drained"], &[]).await;
    assert!(!drained, "{out}");
    assert!(out.contains("commands queued"), "{out}");

    // A process with another layout refuses to start, naming the setting.
    let (ok, log) = run_workers(
        &stack.redis,
        &["persistence"],
        &[("STREAM_PARTITIONS", "8")],
    )
    .await;
    assert!(
        !ok,
        "started with a different layout while commands were queued"
    );
    assert!(log.contains("STREAM_PARTITIONS=8"), "{log}");
    assert!(log.contains("drained"), "{log}");

    // Drain: a worker of the old layout applies what waited; then nothing is queued.
    stack.add_worker("persistence", &env16).await;
    eventually_true("the queued send is applied", DEADLINE, async || {
        http.messages(&convs[0]).await.len() == 4
    })
    .await;
    let redis = &stack.redis;
    eventually_true("workers drained says so", DEADLINE, async || {
        run_workers(redis, &["drained"], &[]).await.0
    })
    .await;

    // Everything restarts with 8 partitions.
    for w in &mut stack.workers {
        assert!(w.terminate().await.success());
    }
    stack.workers.clear();
    assert!(stack.gateways.remove(0).terminate().await.success());
    let env8 = [("STREAM_PARTITIONS", "8")];
    stack.add_worker("persistence", &env8).await;
    stack.add_worker("cleanup", &env8).await;
    let gw = stack.add_gateway(&env8).await.http();
    let layout: u32 = stack
        .redis
        .q(&["HGET", "confab:layout", "partitions"])
        .await;
    assert_eq!(layout, 8);

    // Every conversation goes on, in order.
    for (c, conv) in convs.iter().enumerate() {
        gw.send_ok(conv, "customer", &format!("c{c} after")).await;
        let contents: Vec<String> = gw
            .messages(conv)
            .await
            .iter()
            .map(|m| str_field(m, "content"))
            .collect();
        let mut want: Vec<String> = (0..3).map(|n| format!("c{c} m{n}")).collect();
        if c == 0 {
            want.push("queued".into());
        }
        want.push(format!("c{c} after"));
        assert_eq!(contents, want);
    }
    // The cleanup index moved: every conversation is in its new partition's slice, none is
    // left in a slice of the old layout that the new one does not have.
    let new = Partitions::new(8);
    for conv in &convs {
        let id = uuid::Uuid::parse_str(conv).unwrap();
        let pk = PartitionKeys::new(&new, new.of_conversation(&id));
        let score: Option<u64> = stack.redis.q(&["ZSCORE", &pk.activity, conv]).await;
        assert!(score.is_some(), "{conv} is not in {}", pk.activity);
    }
    let new_slices: Vec<String> = PartitionKeys::all(&new)
        .into_iter()
        .map(|p| p.activity)
        .collect();
    for pk in PartitionKeys::all(&Partitions::new(16)) {
        if new_slices.contains(&pk.activity) {
            continue;
        }
        let left: u64 = stack.redis.q(&["ZCARD", &pk.activity]).await;
        assert_eq!(left, 0, "{} still holds entries", pk.activity);
    }
}
