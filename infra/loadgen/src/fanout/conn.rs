//! One fan-out connection: connect, subscribe, then receive (and send at its share of the
//! rate) until told to stop.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::sync::{oneshot, watch};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

use crate::http::Target;
use crate::order::Sequence;
use crate::report::{bump, Counts, Hist};
use crate::ws;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Setup,
    /// Send every `period` (if any) until `until`, keep receiving.
    Run {
        until: Instant,
        period: Option<Duration>,
    },
    Stop,
}

/// Counters every connection updates, read by the coordinator.
#[derive(Default)]
pub struct Shared {
    /// Subscribed connections per chat (a send is expected once by each).
    pub chat_subs: Vec<AtomicU64>,
    pub expected: AtomicU64,
    pub received: AtomicU64,
    pub sent: AtomicU64,
    pub answered: AtomicU64,
    pub open: AtomicU64,
    pub latency: Mutex<Hist>,
    /// Latencies since the last `--sample` window (taken by the sampler).
    pub window: Mutex<Hist>,
}

pub struct Spec {
    pub idx: usize,
    pub chat: usize,
    pub conversation: Arc<str>,
    pub target: Target,
    pub token: Arc<str>,
    pub content_bytes: usize,
    pub connect_timeout: Duration,
}

#[derive(Default)]
pub struct Outcome {
    pub chat: usize,
    pub subscribed: bool,
    pub seq: Sequence,
    pub sent: u64,
    pub acked: u64,
    pub errors: Counts,
    pub other: Counts,
    /// Why the connection ended before `Stop` (close code, `eof`, `error`).
    pub closed: Option<String>,
}

/// Spreads first sends over one period: golden-ratio offsets, no two connections alike.
pub fn offset(idx: usize, period: Duration) -> Duration {
    let frac = (idx as f64 * 0.618_033_988_749_895).fract();
    period.mul_f64(frac)
}

async fn next_tick(t: &mut Option<Interval>) {
    match t {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

pub async fn run(
    spec: Spec,
    shared: Arc<Shared>,
    mut phase: watch::Receiver<Phase>,
    ready: oneshot::Sender<Result<(), String>>,
) -> Outcome {
    let mut out = Outcome {
        chat: spec.chat,
        ..Default::default()
    };
    let connected = tokio::time::timeout(spec.connect_timeout, async {
        let mut ws = ws::connect(&spec.target, Some(&spec.token)).await?;
        let last = ws::subscribe(&mut ws, &spec.conversation, spec.connect_timeout).await?;
        Ok::<_, anyhow::Error>((ws, last))
    })
    .await;
    let (mut ws, last) = match connected {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            let _ = ready.send(Err(short_error(&e)));
            return out;
        }
        Err(_) => {
            let _ = ready.send(Err("timeout".into()));
            return out;
        }
    };
    if let Some(n) = shared.chat_subs.get(spec.chat) {
        n.fetch_add(1, Relaxed);
    }
    shared.open.fetch_add(1, Relaxed);
    out.subscribed = true;
    out.seq = Sequence::after(last);
    let _ = ready.send(Ok(()));

    let mut ticker: Option<Interval> = None;
    let mut until: Option<Instant> = None;
    let mut label = String::with_capacity(32);
    loop {
        tokio::select! {
            changed = phase.changed() => {
                if changed.is_err() {
                    break;
                }
                let p = *phase.borrow_and_update();
                match p {
                    Phase::Setup => {}
                    Phase::Run { until: u, period } => {
                        until = Some(u);
                        if let Some(period) = period {
                            let start = Instant::now() + offset(spec.idx, period);
                            let mut t = tokio::time::interval_at(start, period);
                            t.set_missed_tick_behavior(MissedTickBehavior::Skip);
                            ticker = Some(t);
                        }
                    }
                    Phase::Stop => break,
                }
            }
            _ = next_tick(&mut ticker) => {
                if until.is_none_or(|u| Instant::now() >= u) {
                    ticker = None;
                    continue;
                }
                out.sent += 1;
                label.clear();
                use std::fmt::Write as _;
                let _ = write!(label, "c={} n={}", spec.idx, out.sent);
                let content = ws::tagged_content(ws::now_micros(), &label, spec.content_bytes);
                // The clientId is an idempotency key: unique per connection and message.
                let frame = format!(
                    r#"{{"type":"send","conversationId":"{}","clientId":"{}-{}","content":"{content}"}}"#,
                    spec.conversation, spec.idx, out.sent
                );
                shared.sent.fetch_add(1, Relaxed);
                if ws.send(Message::text(frame)).await.is_err() {
                    out.closed = Some("send failed".into());
                    break;
                }
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => on_text(text.as_str(), &mut out, &shared),
                Some(Ok(m @ Message::Close(_))) => {
                    out.closed = ws::close_label(&m);
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) => {
                    out.closed = Some("error".into());
                    break;
                }
                None => {
                    out.closed = Some("eof".into());
                    break;
                }
            },
        }
    }
    if out.closed.is_some() {
        shared.open.fetch_sub(1, Relaxed);
    } else {
        let _ = tokio::time::timeout(Duration::from_millis(200), ws.close(None)).await;
    }
    out
}

fn on_text(text: &str, out: &mut Outcome, shared: &Shared) {
    let Some(f) = ws::parse(text) else {
        bump(&mut out.other, "unparsable");
        return;
    };
    match f.kind.as_ref() {
        "message" => {
            if let Some(eid) = f.event_id {
                out.seq.observe(eid);
            }
            shared.received.fetch_add(1, Relaxed);
            if let Some(t) = f.body().and_then(|m| ws::time_tag(&m.content)) {
                let us = ws::now_micros().saturating_sub(t);
                if let Ok(mut h) = shared.latency.lock() {
                    h.record_us(us);
                }
                if let Ok(mut h) = shared.window.lock() {
                    h.record_us(us);
                }
            }
        }
        "ack" => {
            out.acked += 1;
            shared.answered.fetch_add(1, Relaxed);
            let subs = shared
                .chat_subs
                .get(out.chat)
                .map_or(0, |n| n.load(Relaxed));
            shared.expected.fetch_add(subs, Relaxed);
        }
        "error" => {
            shared.answered.fetch_add(1, Relaxed);
            bump(&mut out.errors, f.code.as_deref().unwrap_or("?"));
        }
        "subscribed" => bump(&mut out.other, "resync"),
        k => bump(&mut out.other, k),
    }
}

pub(super) fn short_error(e: &anyhow::Error) -> String {
    let s = format!("{e}");
    s.split(':')
        .next()
        .unwrap_or_default()
        .trim()
        .chars()
        .take(60)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_spread_over_the_period() {
        let p = Duration::from_millis(500);
        let mut buckets = [0u32; 10];
        for i in 0..1000 {
            let o = offset(i, p);
            assert!(o < p);
            buckets[(o.as_micros() * 10 / p.as_micros()) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&b| (80..=120).contains(&b)),
            "{buckets:?}"
        );
    }

    #[test]
    fn frames_update_the_tallies() {
        let shared = Shared {
            chat_subs: vec![AtomicU64::new(0), AtomicU64::new(3)],
            ..Default::default()
        };
        let mut out = Outcome {
            chat: 1,
            seq: Sequence::after(4),
            ..Default::default()
        };
        let t = ws::now_micros();
        let msg = format!(
            r#"{{"type":"message","conversationId":"c","eventId":5,"message":{{"messageId":"m","sender":"u","content":"lg t={t} c=1 n=1 xx","timestamp":"x"}}}}"#
        );
        on_text(&msg, &mut out, &shared);
        on_text(&msg, &mut out, &shared);
        on_text(
            r#"{"type":"ack","clientId":"1","messageId":"m"}"#,
            &mut out,
            &shared,
        );
        on_text(
            r#"{"type":"error","code":"rate_limited","message":"x"}"#,
            &mut out,
            &shared,
        );
        on_text(r#"{"type":"typing"}"#, &mut out, &shared);
        on_text("{", &mut out, &shared);
        assert_eq!(out.seq.received, 2);
        assert_eq!(out.seq.duplicates, 1);
        assert_eq!(shared.received.load(Relaxed), 2);
        assert_eq!(out.acked, 1);
        assert_eq!(shared.expected.load(Relaxed), 3);
        assert_eq!(shared.answered.load(Relaxed), 2);
        assert_eq!(out.errors.get("rate_limited"), Some(&1));
        assert_eq!(out.other.get("typing"), Some(&1));
        assert_eq!(out.other.get("unparsable"), Some(&1));
        assert_eq!(shared.latency.lock().map(|h| h.len()).unwrap_or(0), 2);
    }
}
