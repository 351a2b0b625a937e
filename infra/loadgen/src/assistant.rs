//! `assistant`: S open conversations with the assistant, one WebSocket each; at the same moment
//! each sends one question asking the mock model for `--tokens` tokens at `--tps`, then every
//! `assistant_delta` is timed: time to first token, gaps between deltas (ideal 1000/tps ms),
//! deltas/s, time to `assistant_done`, and any `assistant_error`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::{stream, SinkExt, StreamExt, TryStreamExt};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::args::Args;
use crate::http::{targets, HttpConn, Target};
use crate::report::{bump, merge_counts, per_sec, Counts, Hist, Report, Section};
use crate::{api, sys, ws};

#[derive(Default)]
struct Hists {
    ttft: Hist,
    gap: Hist,
    done: Hist,
    /// First delta → `assistant_done`.
    streaming: Hist,
}

#[derive(Default)]
struct Outcome {
    subscribed: bool,
    deltas: u64,
    /// Whitespace-separated words in the deltas (the mock model's tokens are words).
    words: u64,
    stale_deltas: u64,
    done: bool,
    stopped: bool,
    restarted: u64,
    assistant_messages: u64,
    errors: Counts,
    last_at: Option<Instant>,
}

/// Tracks one response's deltas: drops repeats (`seq` ≤ the last one), times the gaps.
#[derive(Default)]
pub struct DeltaClock {
    last_seq: Option<u64>,
    last_at: Option<Instant>,
}

impl DeltaClock {
    /// Returns `None` for a stale delta, else the gap since the previous one (`None` inside
    /// for the first).
    pub fn observe(&mut self, seq: u64, at: Instant) -> Option<Option<Duration>> {
        if self.last_seq.is_some_and(|l| seq <= l) {
            return None;
        }
        self.last_seq = Some(seq);
        let gap = self.last_at.map(|p| at.saturating_duration_since(p));
        self.last_at = Some(at);
        Some(gap)
    }
}

pub fn question(n: usize, tps: u32, tokens: u32) -> String {
    format!("loadgen question {n}: please answer. [[mock tps={tps} tokens={tokens}]]")
}

struct Spec {
    idx: usize,
    target: Target,
    conversation: String,
    text: String,
    connect_timeout: Duration,
}

async fn stream_task(
    spec: Spec,
    hists: Arc<Mutex<Hists>>,
    mut go: watch::Receiver<Option<Instant>>,
    ready: oneshot::Sender<Result<(), String>>,
) -> Outcome {
    let mut out = Outcome::default();
    let connected = tokio::time::timeout(spec.connect_timeout, async {
        let mut ws = ws::connect(&spec.target, None).await?;
        ws::subscribe(&mut ws, &spec.conversation, spec.connect_timeout).await?;
        Ok::<_, anyhow::Error>(ws)
    })
    .await;
    let mut ws = match connected {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            let _ = ready.send(Err(format!("{e}").chars().take(60).collect()));
            return out;
        }
        Err(_) => {
            let _ = ready.send(Err("timeout".into()));
            return out;
        }
    };
    out.subscribed = true;
    let _ = ready.send(Ok(()));
    // Wait for the common start, then ask.
    let deadline = loop {
        if let Some(d) = *go.borrow_and_update() {
            break d;
        }
        if go.changed().await.is_err() {
            return out;
        }
    };
    let frame = serde_json::json!({
        "type": "send",
        "conversationId": spec.conversation,
        "clientId": format!("q{}", spec.idx),
        "sender": "customer",
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "content": spec.text,
    })
    .to_string();
    let sent_at = Instant::now();
    if ws.send(Message::text(frame)).await.is_err() {
        bump(&mut out.errors, "send failed");
        return out;
    }
    let mut clock = DeltaClock::default();
    let mut response: Option<String> = None;
    let mut first_at: Option<Instant> = None;
    while !out.done {
        let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => {
                bump(&mut out.errors, "unfinished at --duration");
                break;
            }
            Ok(Some(Ok(Message::Text(t)))) => t,
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => {
                bump(&mut out.errors, "connection closed");
                break;
            }
            Ok(Some(Ok(_))) => continue,
        };
        let now = Instant::now();
        let Some(f) = ws::parse(msg.as_str()) else {
            continue;
        };
        match f.kind.as_ref() {
            "assistant_delta" => {
                if response.as_deref() != f.response_id.as_deref() {
                    // A new response (after a restart, say): its seq starts again at 0.
                    response = f.response_id.as_deref().map(str::to_string);
                    clock = DeltaClock::default();
                }
                let Some(gap) = clock.observe(f.seq.unwrap_or(0), now) else {
                    out.stale_deltas += 1;
                    continue;
                };
                out.deltas += 1;
                out.words +=
                    f.delta
                        .as_deref()
                        .map_or(0, |d| d.split_whitespace().count()) as u64;
                out.last_at = Some(now);
                if let Ok(mut h) = hists.lock() {
                    if first_at.is_none() {
                        h.ttft.record(now - sent_at);
                    }
                    if let Some(g) = gap {
                        h.gap.record(g);
                    }
                }
                first_at.get_or_insert(now);
            }
            "assistant_done" => {
                out.done = true;
                out.stopped = f.stopped.unwrap_or(false);
                out.last_at = Some(now);
                if let Ok(mut h) = hists.lock() {
                    h.done.record(now - sent_at);
                    if let Some(f) = first_at {
                        h.streaming.record(now - f);
                    }
                }
            }
            "assistant_restarted" => {
                out.restarted += 1;
                clock = DeltaClock::default();
            }
            "assistant_error" => {
                bump(
                    &mut out.errors,
                    f.code.as_deref().unwrap_or("assistant_error"),
                );
                break;
            }
            "message" if f.body().is_some_and(|m| m.sender == "assistant") => {
                out.assistant_messages += 1;
            }
            "error" => bump(&mut out.errors, f.code.as_deref().unwrap_or("error")),
            _ => {}
        }
    }
    let _ = tokio::time::timeout(Duration::from_millis(200), ws.close(None)).await;
    out
}

pub async fn run(args: &Args) -> Result<Report> {
    let targets = targets(&args.urls)?;
    let redis_before = sys::redis_before(args).await;
    let mut watch_procs = sys::Watch::start(args);
    let conversations: Vec<String> = tokio::time::timeout(
        args.setup_timeout,
        stream::iter(0..args.streams)
            .map(|i| {
                let t = targets[i % targets.len()].clone();
                async move {
                    let mut conn = HttpConn::new(t, Duration::from_secs(30))?;
                    api::create_open(&mut conn, true).await
                }
            })
            .buffered(16)
            .try_collect(),
    )
    .await
    .context("creating conversations: --setup-timeout")??;

    let hists = Arc::new(Mutex::new(Hists::default()));
    let (go_tx, go_rx) = watch::channel(None);
    let setup_deadline = Instant::now() + args.setup_timeout;
    let mut handles = Vec::new();
    let mut failures = Counts::new();
    let mut held = 0u64;
    for batch in (0..args.streams).step_by(args.connect_batch) {
        let end = (batch + args.connect_batch).min(args.streams);
        let mut readies = Vec::new();
        for (i, conversation) in conversations.iter().enumerate().take(end).skip(batch) {
            let spec = Spec {
                idx: i,
                target: targets[i % targets.len()].clone(),
                conversation: conversation.clone(),
                text: question(i, args.tps, args.tokens),
                connect_timeout: setup_deadline
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_secs(30)),
            };
            let (tx, rx) = oneshot::channel();
            handles.push(tokio::spawn(stream_task(
                spec,
                hists.clone(),
                go_rx.clone(),
                tx,
            )));
            readies.push(rx);
        }
        for rx in readies {
            match rx.await {
                Ok(Ok(())) => held += 1,
                Ok(Err(e)) => bump(&mut failures, &e),
                Err(_) => bump(&mut failures, "task ended"),
            }
        }
    }

    watch_procs.restart();
    let start = Instant::now();
    let _ = go_tx.send(Some(start + args.duration));
    let mut total = Outcome::default();
    let (mut done, mut stopped, mut unfinished) = (0u64, 0u64, 0u64);
    let mut last = start;
    let join_deadline = start + args.duration + Duration::from_secs(5);
    for mut h in handles {
        let o = match tokio::time::timeout_at(join_deadline, &mut h).await {
            Ok(Ok(o)) => o,
            _ => {
                h.abort();
                bump(&mut total.errors, "task not joined");
                continue;
            }
        };
        if !o.subscribed {
            continue;
        }
        done += u64::from(o.done);
        stopped += u64::from(o.stopped);
        unfinished += u64::from(!o.done);
        total.deltas += o.deltas;
        total.words += o.words;
        total.stale_deltas += o.stale_deltas;
        total.restarted += o.restarted;
        total.assistant_messages += o.assistant_messages;
        merge_counts(&mut total.errors, &o.errors);
        if let Some(t) = o.last_at {
            last = last.max(t);
        }
    }
    let active = last.saturating_duration_since(start);
    let procs = watch_procs.section("processes (measured phase)");
    let h = hists.lock().map(|h| {
        (
            h.ttft.summary(),
            h.gap.summary(),
            h.done.summary(),
            h.streaming.summary(),
        )
    });
    let (ttft, gap, total_time, streaming) = h.unwrap_or_default();
    let words_per_answer = total.words as f64 / done.max(1) as f64;
    // Pace a reader sees: words of an answer over (first delta → done), at the median.
    let pace = if streaming.p50_us > 0 {
        words_per_answer / (streaming.p50_us as f64 / 1e6)
    } else {
        0.0
    };
    let ideal_gap_ms = if args.tps > 0 {
        1000.0 / f64::from(args.tps)
    } else {
        0.0
    };

    let mut r = Report::new("assistant");
    r.push(
        Section::new("setup")
            .text("targets", args.urls.join(" "))
            .int("streams asked", args.streams as u64)
            .int("subscribed", held)
            .counts("connect failures", failures)
            .text(
                "directive",
                format!("[[mock tps={} tokens={}]]", args.tps, args.tokens),
            ),
    );
    r.push(
        Section::new("answers")
            .int("done", done)
            .int("stopped", stopped)
            .int("unfinished or failed", unfinished)
            .int("restarted", total.restarted)
            .int("assistant messages", total.assistant_messages)
            .counts("errors", total.errors)
            .latency("time to first delta", ttft)
            .latency("time to assistant_done", total_time)
            .latency("first delta to done", streaming),
    );
    r.push(
        Section::new("deltas")
            .int("received", total.deltas)
            .int("stale (dropped)", total.stale_deltas)
            .num(
                "per answer",
                if done > 0 {
                    total.deltas as f64 / done as f64
                } else {
                    0.0
                },
                "",
            )
            .num("deltas/s", per_sec(total.deltas, active), "/s")
            .num("words per answer", words_per_answer, "")
            .num(
                "words per delta",
                total.words as f64 / total.deltas.max(1) as f64,
                "",
            )
            .num("words/s per answer (p50)", pace, "/s")
            .num("active for", active.as_secs_f64(), "s")
            .latency("gap between deltas", gap)
            .num("ideal gap", ideal_gap_ms, "ms"),
    );
    r.push(procs);
    if let Some(s) = sys::redis_section(args, redis_before).await {
        r.push(s);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_clock_drops_repeats_and_times_gaps() {
        let t0 = Instant::now();
        let mut c = DeltaClock::default();
        assert_eq!(c.observe(0, t0), Some(None));
        let t1 = t0 + Duration::from_millis(20);
        assert_eq!(c.observe(1, t1), Some(Some(Duration::from_millis(20))));
        // A resubscribe replays "text so far" with an old seq: dropped, no gap recorded.
        assert_eq!(c.observe(1, t1 + Duration::from_millis(5)), None);
        assert_eq!(c.observe(0, t1), None);
        let t3 = t1 + Duration::from_millis(25);
        assert_eq!(c.observe(3, t3), Some(Some(Duration::from_millis(25))));
    }

    #[test]
    fn question_carries_the_directive() {
        let q = question(3, 50, 100);
        assert!(q.contains("[[mock tps=50 tokens=100]]"), "{q}");
    }
}
