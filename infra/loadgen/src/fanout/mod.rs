//! `fanout`: C WebSocket connections in chats of M members over the given gateways; each
//! connection sends its share of `--rate` messages/s (or none: `--rate 0` only holds), and
//! every delivery is checked for order, loss and send→receipt latency. `--churn` adds
//! short-lived connections beside them and `--sample` watches the gateways over time: the
//! soak of `make bench soak`.

mod churn;
mod conn;
mod setup;
mod soak;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::args::Args;
use crate::http::targets;
use crate::order::Tally;
use crate::report::{bump, merge_counts, per_sec, Counts, Report, Section};
use crate::sys;
use conn::{Outcome, Phase, Shared, Spec};

/// A connection sending faster than this is throttled by the gateway (100 frames/s default).
const PER_CONNECTION_RATE_WARN: f64 = 90.0;

fn rss_kib(pids: &[u32]) -> Vec<Option<u64>> {
    pids.iter()
        .map(|p| sys::sample(&p.to_string()).map(|s| s.rss_kib))
        .collect()
}

pub async fn run(args: &Args) -> Result<Report> {
    let targets = targets(&args.urls)?;
    let setup_targets = if args.setup_urls.is_empty() {
        targets.clone()
    } else {
        crate::http::targets(&args.setup_urls)?
    };
    let mut watch_procs = sys::Watch::start(args);
    let t0 = Instant::now();
    let users = tokio::time::timeout(args.setup_timeout, setup::users(args, &setup_targets))
        .await
        .context("creating and signing in users: --setup-timeout")??;
    let users_time = t0.elapsed();
    let t1 = Instant::now();
    let chats = tokio::time::timeout(
        args.setup_timeout,
        setup::chats(args, &setup_targets, &users),
    )
    .await
    .context("creating chats: --setup-timeout")??;
    let chats_time = t1.elapsed();

    let shared = Arc::new(Shared {
        chat_subs: chats.iter().map(|_| AtomicU64::new(0)).collect(),
        ..Default::default()
    });
    let conversations: Vec<Arc<str>> = chats.iter().map(|c| Arc::from(c.as_str())).collect();
    let tokens: Vec<Arc<str>> = users.tokens.iter().map(|t| Arc::from(t.as_str())).collect();
    let (phase_tx, phase_rx) = watch::channel(Phase::Setup);
    let rss_before = rss_kib(&args.gateway_pids);
    let t2 = Instant::now();
    let connect_deadline = t2 + args.setup_timeout;
    let mut handles = Vec::with_capacity(args.connections);
    let mut connect_failures = Counts::new();
    let mut held = 0u64;
    let mut cut_short = false;
    for batch in (0..args.connections).step_by(args.connect_batch) {
        let end = (batch + args.connect_batch).min(args.connections);
        let remaining = connect_deadline.saturating_duration_since(Instant::now());
        let mut readies = Vec::with_capacity(end - batch);
        for j in batch..end {
            let chat = j / args.members;
            let spec = Spec {
                idx: j,
                chat,
                conversation: conversations[chat].clone(),
                target: targets[j % targets.len()].clone(),
                token: tokens[j % args.users].clone(),
                content_bytes: args.content_bytes,
                connect_timeout: remaining.min(Duration::from_secs(30)),
            };
            let (tx, rx) = oneshot::channel();
            handles.push(tokio::spawn(conn::run(
                spec,
                shared.clone(),
                phase_rx.clone(),
                tx,
            )));
            readies.push(rx);
        }
        for rx in readies {
            match rx.await {
                Ok(Ok(())) => held += 1,
                Ok(Err(e)) => bump(&mut connect_failures, &e),
                Err(_) => bump(&mut connect_failures, "task ended"),
            }
        }
        if Instant::now() >= connect_deadline {
            cut_short = end < args.connections;
            break;
        }
    }
    let connect_time = t2.elapsed();
    let rss_after = rss_kib(&args.gateway_pids);

    // The measured phase.
    let period =
        (args.rate > 0.0 && held > 0).then(|| Duration::from_secs_f64(held as f64 / args.rate));
    let per_conn_rate = if held > 0 {
        args.rate / held as f64
    } else {
        0.0
    };
    if per_conn_rate > PER_CONNECTION_RATE_WARN {
        eprintln!(
            "loadgen: warning: {per_conn_rate:.0} sends/s per connection; the gateway allows ~100 frames/s"
        );
    }
    // Redis is measured over the measured phase only: setup (users, chats, subscriptions)
    // would otherwise count as cost per send.
    let redis_before = sys::redis_before(args).await;
    watch_procs.restart();
    let run_start = Instant::now();
    let until = run_start + args.duration;
    let fds_before = soak::gateways(&args.gateway_pids).map(|(_, fds)| fds);
    let churn_stats = Arc::new(churn::Stats::default());
    let churn_task = tokio::spawn(churn::run(
        Arc::new(churn::Spec {
            targets: targets.clone(),
            // The stable connections' (user, chat) pairs: every one is a member.
            members: (0..args.connections)
                .map(|j| {
                    (
                        tokens[j % args.users].clone(),
                        conversations[j / args.members].clone(),
                    )
                })
                .collect(),
            rate: args.churn,
            hold: args.churn_hold,
        }),
        churn_stats.clone(),
        until,
    ));
    let sampler = args.sample.map(|every| {
        tokio::spawn(soak::sample(
            args.gateway_pids.clone(),
            shared.clone(),
            churn_stats.clone(),
            run_start,
            until,
            every,
        ))
    });
    let _ = phase_tx.send(Phase::Run { until, period });
    tokio::time::sleep_until(until).await;
    let drain_deadline = until + args.drain;
    let mut drained = true;
    if period.is_some() {
        loop {
            let settled = shared.answered.load(Relaxed) >= shared.sent.load(Relaxed)
                && shared.received.load(Relaxed) >= shared.expected.load(Relaxed);
            if settled {
                break;
            }
            if Instant::now() >= drain_deadline {
                drained = false;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let run_elapsed = run_start.elapsed();
    let open_at_end = shared.open.load(Relaxed);
    let procs = watch_procs.section("processes (measured phase)");
    let samples = match sampler {
        Some(t) => Some(t.await.unwrap_or_default()),
        None => None,
    };
    // The churn's last connections go; then the gateways should hold what they held before.
    let _ = churn_task.await;
    let fds_after = if samples.is_some() {
        tokio::time::sleep(Duration::from_secs(2)).await;
        soak::gateways(&args.gateway_pids).map(|(_, fds)| fds)
    } else {
        None
    };
    let _ = phase_tx.send(Phase::Stop);

    let join_deadline = Instant::now() + Duration::from_secs(15);
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(handles.len());
    let mut unjoined = 0u64;
    for mut h in handles {
        match tokio::time::timeout_at(join_deadline, &mut h).await {
            Ok(Ok(o)) => outcomes.push(o),
            _ => {
                h.abort();
                unjoined += 1;
            }
        }
    }

    // Deliveries expected per connection: every acknowledged send of its chat.
    let mut acked_in_chat = vec![0u64; chats.len()];
    for o in &outcomes {
        acked_in_chat[o.chat] += o.acked;
    }
    let mut tally = Tally::default();
    let (mut sent, mut acked) = (0u64, 0u64);
    let (mut errors, mut other, mut closes) = (Counts::new(), Counts::new(), Counts::new());
    for o in &outcomes {
        sent += o.sent;
        acked += o.acked;
        merge_counts(&mut errors, &o.errors);
        merge_counts(&mut other, &o.other);
        if let Some(c) = &o.closed {
            bump(&mut closes, c);
        }
        if o.subscribed {
            tally.add(acked_in_chat[o.chat], &o.seq);
        }
    }
    let latency = shared
        .latency
        .lock()
        .map(|h| h.summary())
        .unwrap_or_default();

    let mut r = Report::new("fanout");
    r.push(
        Section::new("setup")
            .text("targets", args.urls.join(" "))
            .text(
                "setup through",
                if args.setup_urls.is_empty() {
                    args.urls.join(" ")
                } else {
                    args.setup_urls.join(" ")
                },
            )
            .int("users", users.names.len() as u64)
            .int("users created", users.created as u64)
            .num("users + sign-ins", users_time.as_secs_f64(), "s")
            .int("chats", chats.len() as u64)
            .int("members per chat", args.members as u64)
            .num("chats created in", chats_time.as_secs_f64(), "s")
            .int("fd limit", sys::raise_fd_limit()),
    );
    let mut c = Section::new("connections")
        .int("asked", args.connections as u64)
        .int("subscribed", held)
        .num("connect + subscribe", connect_time.as_secs_f64(), "s")
        .num("connects/s", per_sec(held, connect_time), "/s")
        .counts("connect failures", connect_failures)
        .int("held at end", open_at_end)
        .counts("closed early", closes);
    if cut_short {
        c = c.text(
            "note",
            "--setup-timeout reached before every connection was tried",
        );
    }
    r.push(c);
    r.push(memory_section(args, &rss_before, &rss_after, held));
    let mut run = Section::new("sends")
        .num("duration", args.duration.as_secs_f64(), "s")
        .num("rate asked", args.rate, "/s")
        .num("per connection", per_conn_rate, "/s")
        .int("sent", sent)
        .int("acked", acked)
        .num("sent/s", per_sec(sent, args.duration), "/s")
        .counts("errors", errors);
    if unjoined > 0 {
        run = run.int("connections not joined", unjoined);
    }
    r.push(run);
    r.push(
        Section::new("deliveries")
            .int("expected", tally.expected)
            .int("received", tally.received)
            .int("lost", tally.lost)
            .int("extra", tally.extra)
            .int("duplicates", tally.duplicates)
            .int("out of order", tally.out_of_order)
            .int("eventId gaps", tally.gaps)
            .int("connections with problems", tally.bad_connections)
            .num("deliveries/s", per_sec(tally.received, run_elapsed), "/s")
            .num("send + drain", run_elapsed.as_secs_f64(), "s")
            .text(
                "drained",
                if drained {
                    "yes"
                } else {
                    "no (--drain reached)"
                },
            )
            .latency("latency send->receipt", latency)
            .counts("other frames", other),
    );
    if args.churn > 0.0 {
        let connect = churn_stats
            .connect
            .lock()
            .map(|h| h.summary())
            .unwrap_or_default();
        let opened = churn_stats.opened.load(Relaxed);
        r.push(
            Section::new("churn")
                .num("asked", args.churn, "/s")
                .int("connected + subscribed", opened)
                .num("connects/s", per_sec(opened, args.duration), "/s")
                .int("closed", churn_stats.closed.load(Relaxed))
                .int(
                    "skipped (too many in flight)",
                    churn_stats.skipped.load(Relaxed),
                )
                .counts("failures", churn_stats.failures())
                .latency("connect + subscribe", connect),
        );
    }
    if let Some(samples) = &samples {
        r.push(soak::section(samples, args.warmup, fds_before, fds_after));
    }
    r.push(procs);
    if let Some(s) = sys::redis_section(args, redis_before, Some(acked)).await {
        r.push(s);
    }
    Ok(r)
}

fn memory_section(
    args: &Args,
    before: &[Option<u64>],
    after: &[Option<u64>],
    held: u64,
) -> Section {
    let mut s = Section::new("gateway memory");
    let mut delta_kib = 0i64;
    for (i, pid) in args.gateway_pids.iter().enumerate() {
        match (
            before.get(i).copied().flatten(),
            after.get(i).copied().flatten(),
        ) {
            (Some(b), Some(a)) => {
                delta_kib += a as i64 - b as i64;
                s = s.text(
                    &format!("pid {pid} VmRSS"),
                    format!("{:.1} -> {:.1} MiB", b as f64 / 1024.0, a as f64 / 1024.0),
                );
            }
            _ => s = s.text(&format!("pid {pid} VmRSS"), "not readable"),
        }
    }
    if args.gateway_pids.is_empty() {
        return s.text("note", "pass --gateway-pid PID to measure");
    }
    let per_1000 = if held > 0 {
        delta_kib as f64 / 1024.0 / held as f64 * 1000.0
    } else {
        0.0
    };
    s.num("growth", delta_kib as f64 / 1024.0, "MiB")
        .num("per 1000 connections", per_1000, "MiB")
        .text(
            "note",
            "VmRSS before the first connection vs after the last subscribed; only meaningful \
             on freshly started gateways (memory freed by earlier runs is reused)",
        )
}
