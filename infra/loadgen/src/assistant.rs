//! `assistant`: S open conversations with the assistant, one WebSocket each; at the same moment
//! each sends one question asking the mock model for `--tokens` tokens at `--tps`, then every
//! `assistant_delta` is timed: time to first token, gaps between deltas (ideal 1000/tps ms),
//! deltas/s, time to `assistant_done`, and any `assistant_error`.
//!
//! The question carries the mock's `stamp` directive, so every token's text is the model's
//! wall-clock send time `⟨t=<unix µs>⟩ `. For each live delta, receipt − stamp (same machine,
//! same clock) of every token in it gives the model→client latency: for the first token of a
//! response that is what Confab adds to time to first token (the headline figure); for later
//! tokens it also includes the completion worker's deliberate coalescing hold (up to 40 ms).
//! Snapshot deltas (the text so far, sent on subscribe mid-answer) are not timed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::{stream, SinkExt, StreamExt, TryStreamExt};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::args::Args;
use crate::http::{targets, HttpConn, Target};
use crate::report::{bump, merge_counts, ms, per_sec, Counts, Hist, Report, Section};
use crate::{api, sys, ws};

#[derive(Default)]
struct Hists {
    ttft: Hist,
    gap: Hist,
    done: Hist,
    /// First delta → `assistant_done`.
    streaming: Hist,
    /// Stamp of a response's first token → receipt of the delta carrying it.
    first_token: Hist,
    /// Stamp of every token → receipt of its delta (includes the coalescing hold).
    all_tokens: Hist,
}

#[derive(Default)]
struct Outcome {
    subscribed: bool,
    deltas: u64,
    /// Whitespace-separated words in the deltas (the mock model's tokens are words).
    words: u64,
    stale_deltas: u64,
    /// "Text so far" deltas sent on subscribe mid-answer: not timed.
    snapshot_deltas: u64,
    /// Stamps read from live deltas.
    stamps: u64,
    /// Live deltas without any stamp (the model ignored `stamp`?).
    unstamped_deltas: u64,
    /// Stamps later than their receipt (clock step): recorded as 0.
    future_stamps: u64,
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

    /// True once a delta of this response was observed (or skipped over).
    pub fn started(&self) -> bool {
        self.last_seq.is_some()
    }

    /// A snapshot up to `seq`: later live deltas with seq ≤ `seq` are stale; the next live one
    /// gets no gap (the snapshot's receipt is not a delta time).
    pub fn skip_to(&mut self, seq: u64) {
        self.last_seq = Some(self.last_seq.map_or(seq, |l| l.max(seq)));
        self.last_at = None;
    }
}

/// The mock model directive of every question.
pub fn directive(tps: u32, tokens: u32) -> String {
    format!("[[mock tps={tps} tokens={tokens} stamp]]")
}

pub fn question(n: usize, tps: u32, tokens: u32) -> String {
    format!(
        "loadgen question {n}: please answer. {}",
        directive(tps, tokens)
    )
}

/// Opening of a mock `stamp` token `⟨t=<unix micros>⟩ ` (mock-openai's `STAMP_OPEN`).
const STAMP_OPEN: &str = "\u{27e8}t=";
/// Its closing (mock-openai's `STAMP_CLOSE`).
const STAMP_CLOSE: &str = "\u{27e9}";

/// Every `⟨t=<micros>⟩` stamp in a delta's text, in order; malformed ones are skipped.
pub fn parse_stamps(text: &str) -> Vec<u64> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(STAMP_OPEN) {
        rest = &rest[at + STAMP_OPEN.len()..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && rest[digits..].starts_with(STAMP_CLOSE) {
            if let Ok(v) = rest[..digits].parse() {
                out.push(v);
            }
        }
    }
    out
}

/// receipt − stamp in µs for every stamp in `delta` (negative if a stamp is later than the
/// receipt, which only a clock step can cause: both are this machine's wall clock).
pub fn stamp_lags(delta: &str, received_us: u64) -> Vec<i64> {
    parse_stamps(delta)
        .into_iter()
        .map(|s| i64::try_from(received_us).unwrap_or(i64::MAX) - i64::try_from(s).unwrap_or(0))
        .collect()
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
        let now_us = ws::now_micros();
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
                let seq = f.seq.unwrap_or(0);
                if f.snapshot == Some(true) {
                    // Text so far from before we listened: neither timed nor a first token.
                    out.snapshot_deltas += 1;
                    clock.skip_to(seq);
                    continue;
                }
                let first_token = !clock.started() && seq == 0;
                let Some(gap) = clock.observe(seq, now) else {
                    out.stale_deltas += 1;
                    continue;
                };
                let lags = stamp_lags(f.delta.as_deref().unwrap_or(""), now_us);
                if lags.is_empty() {
                    out.unstamped_deltas += 1;
                }
                out.stamps += lags.len() as u64;
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
                    for (i, &lag) in lags.iter().enumerate() {
                        if lag < 0 {
                            out.future_stamps += 1;
                        }
                        let lag = lag.max(0).unsigned_abs();
                        h.all_tokens.record_us(lag);
                        if i == 0 && first_token {
                            h.first_token.record_us(lag);
                        }
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

/// Target for the first token's model→client latency at p99.
const FIRST_TOKEN_TARGET_US: u64 = 15_000;

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
        total.snapshot_deltas += o.snapshot_deltas;
        total.stamps += o.stamps;
        total.unstamped_deltas += o.unstamped_deltas;
        total.future_stamps += o.future_stamps;
        total.restarted += o.restarted;
        total.assistant_messages += o.assistant_messages;
        merge_counts(&mut total.errors, &o.errors);
        if let Some(t) = o.last_at {
            last = last.max(t);
        }
    }
    let active = last.saturating_duration_since(start);
    let (mut procs, usages) = watch_procs.measure("processes (measured phase)");
    let h = hists.lock().map(|h| {
        (
            (
                h.ttft.summary(),
                h.gap.summary(),
                h.done.summary(),
                h.streaming.summary(),
            ),
            (h.first_token.summary(), h.all_tokens.summary()),
        )
    });
    let ((ttft, gap, total_time, streaming), (first_token, all_tokens)) = h.unwrap_or_default();
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
            .text("directive", directive(args.tps, args.tokens)),
    );
    let target = match first_token.count {
        0 => "no samples".to_string(),
        _ if first_token.p99_us < FIRST_TOKEN_TARGET_US => {
            format!(
                "met (p99 {} < {})",
                ms(first_token.p99_us),
                ms(FIRST_TOKEN_TARGET_US)
            )
        }
        _ => format!(
            "MISSED (p99 {} >= {})",
            ms(first_token.p99_us),
            ms(FIRST_TOKEN_TARGET_US)
        ),
    };
    r.push(
        Section::new("model to client (stamped tokens, receipt - stamp)")
            .latency("first token: model->client latency", first_token)
            .text("first token target", target)
            .latency(
                "all tokens: model->client (incl. coalescing hold <= 40 ms)",
                all_tokens,
            )
            .int("stamps read", total.stamps)
            .int("live deltas without a stamp", total.unstamped_deltas)
            .int("snapshot deltas (not timed)", total.snapshot_deltas)
            .int("stamps after receipt (clock step)", total.future_stamps),
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
    // What one concurrent answer costs the completion workers (--worker-pid).
    let answers = held.max(1) as f64;
    procs = procs.int("concurrent answers", held);
    for u in usages.iter().filter(|u| u.label.starts_with("worker ")) {
        procs = procs
            .num(
                &format!("{} cpu per concurrent answer", u.label),
                u.cpu_pct / answers,
                "% of a core",
            )
            .num(
                &format!("{} VmRSS delta per concurrent answer", u.label),
                u.rss_delta_kib() / answers,
                "KiB",
            );
    }
    r.push(procs);
    if let Some(s) = sys::redis_section(args, redis_before, None).await {
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
    fn snapshot_skips_ahead_without_a_gap() {
        let t0 = Instant::now();
        let mut c = DeltaClock::default();
        assert!(!c.started());
        c.skip_to(4);
        assert!(c.started());
        // Live deltas already in the snapshot are stale; the next one has no gap to time.
        assert_eq!(c.observe(4, t0), None);
        assert_eq!(c.observe(5, t0), Some(None));
        c.skip_to(2);
        assert_eq!(c.observe(5, t0), None);
    }

    #[test]
    fn question_carries_the_directive() {
        let q = question(3, 50, 100);
        assert!(q.contains("[[mock tps=50 tokens=100 stamp]]"), "{q}");
        let (d, _) = mock_openai::directives::parse(&q);
        assert!(d.stamp && d.unknown.is_empty());
        assert_eq!((d.tps, d.tokens), (Some(50), Some(100)));
    }

    #[test]
    fn stamps_match_the_mock_model() {
        assert_eq!(STAMP_OPEN, mock_openai::STAMP_OPEN);
        assert_eq!(STAMP_CLOSE, mock_openai::STAMP_CLOSE);
        // A coalesced delta: several tokens of the mock, as the gateway forwards them.
        let delta: String = [1_000_000u64, 1_020_000, 1_040_500]
            .iter()
            .map(|&t| mock_openai::stamp_token(t))
            .collect();
        assert_eq!(parse_stamps(&delta), vec![1_000_000, 1_020_000, 1_040_500]);
        assert_eq!(stamp_lags(&delta, 1_041_000), vec![41_000, 21_000, 500]);
        assert_eq!(stamp_lags(&delta, 1_030_000)[2], -10_500);
        assert!(parse_stamps("w1 w2 w3").is_empty());
        assert!(parse_stamps("\u{27e8}t=12 \u{27e8}t=\u{27e9} \u{27e8}t=3").is_empty());
        // Split across deltas, a stamp is only read where it is whole.
        assert_eq!(parse_stamps("\u{27e8}t=5\u{27e9} \u{27e8}t=6"), vec![5]);
    }
}
