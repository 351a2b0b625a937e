//! Server-sent-event streaming of `chat.completion.chunk` objects.
//!
//! Each response gets a producer task that paces chunks with its own
//! [`tokio::time::Interval`] and pushes them through a small channel to the
//! HTTP body. When the client disconnects, hyper drops the body, the
//! channel closes and the producer stops at once (counted as `aborted`).
//!
//! With `stamp`, the producer sends [`Frame::Stamp`] placeholders and the
//! chunk is rendered when the body is polled, i.e. when hyper is about to
//! write it: the token's `⟨t=<unix micros>⟩` is the send time, not the time
//! the chunk was queued.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use warp::http::{header, HeaderValue};
use warp::reply::Response;
use warp::sse::Event;
use warp::Reply;

use crate::errors::stream_error_event;
use crate::stats::{Outcome, RequestGuard};
use crate::text::{now_micros, stamp_token};
use crate::wire::{Envelope, Usage};

/// Pause before `cut` so the chunks already sent are flushed first.
const SETTLE_BEFORE_CUT: Duration = Duration::from_millis(25);
/// Chunks buffered between the producer and the socket.
const CHANNEL_CAPACITY: usize = 16;

/// Everything a stream needs, decided before the first byte.
#[derive(Debug)]
pub struct StreamPlan {
    pub envelope: Envelope,
    /// Content tokens, already cut to `max_tokens`.
    pub tokens: Vec<String>,
    pub finish_reason: &'static str,
    /// Tokens per second; 0 = unpaced.
    pub tps: u32,
    pub prompt_tokens: u32,
    /// `cut=K`: drop the connection after K content chunks.
    pub cut_after: Option<usize>,
    /// `stream_error=K`: send an error event after K content chunks.
    pub error_after: Option<usize>,
    /// `stamp`: each content token is replaced by its send time.
    pub stamp: bool,
}

enum Frame {
    /// A `data:` payload (JSON or `[DONE]`).
    Data(String),
    /// A content chunk whose token is the wall-clock time it is handed to hyper.
    Stamp,
    /// Abort the connection without finishing the chunked body.
    Cut,
}

/// Error that makes hyper abort the connection mid-body.
#[derive(Debug)]
struct CutError;

impl std::fmt::Display for CutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("mock connection cut")
    }
}

impl std::error::Error for CutError {}

struct FrameStream {
    rx: mpsc::Receiver<Frame>,
    /// Renders [`Frame::Stamp`] (absent on the non-streaming `cut` response).
    envelope: Option<Envelope>,
}

impl Stream for FrameStream {
    type Item = Result<Event, CutError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|frame| {
            frame.map(|f| match f {
                // warp writes `data:` + text; the leading space gives the
                // exact OpenAI framing `data: {json}\n\n`.
                Frame::Data(payload) => Ok(Event::default().data(format!(" {payload}"))),
                Frame::Stamp => {
                    let token = stamp_token(now_micros());
                    let payload = self
                        .envelope
                        .as_ref()
                        .map(|env| env.content_chunk(&token))
                        .unwrap_or_default();
                    Ok(Event::default().data(format!(" {payload}")))
                }
                Frame::Cut => Err(CutError),
            })
        })
    }
}

fn sse_response(
    rx: mpsc::Receiver<Frame>,
    envelope: Option<Envelope>,
    request_id: &str,
) -> Response {
    let mut resp = warp::sse::reply(FrameStream { rx, envelope }).into_response();
    let headers = resp.headers_mut();
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert("x-request-id", v);
    }
    resp
}

/// Starts the producer task and returns the streaming 200 response.
pub fn respond(plan: StreamPlan, mut guard: RequestGuard) -> Response {
    guard.respond(200);
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let envelope = plan.stamp.then(|| plan.envelope.clone());
    let resp = sse_response(rx, envelope, &plan.envelope.id);
    tokio::spawn(async move {
        let mut sent = 0;
        let outcome = produce(&plan, &tx, &mut sent).await;
        guard.log.tokens = sent;
        guard.finish(outcome);
    });
    resp
}

/// A 200 response whose body is aborted right after the headers: the
/// non-streaming flavour of `cut`.
pub fn cut_json_response(mut guard: RequestGuard, request_id: &str) -> Response {
    guard.respond(200);
    guard.finish(Outcome::Cut);
    let (tx, rx) = mpsc::channel(1);
    // The receiver is alive and the channel empty, so this cannot fail.
    let _ = tx.try_send(Frame::Cut);
    let mut resp = sse_response(rx, None, request_id);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

struct Pacer(Option<Interval>);

impl Pacer {
    fn new(tps: u32) -> Self {
        if tps == 0 {
            return Self(None);
        }
        let period = Duration::from_secs_f64(1.0 / f64::from(tps));
        let mut interval = tokio::time::interval_at(Instant::now() + period, period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self(Some(interval))
    }

    /// Waits for the next slot; false when the client has gone away.
    async fn wait(&mut self, tx: &mpsc::Sender<Frame>) -> bool {
        match &mut self.0 {
            None => !tx.is_closed(),
            Some(interval) => tokio::select! {
                _ = interval.tick() => true,
                () = tx.closed() => false,
            },
        }
    }
}

async fn send(tx: &mpsc::Sender<Frame>, payload: String) -> bool {
    tx.send(Frame::Data(payload)).await.is_ok()
}

/// Emits the whole stream; returns how it ended. `Pending` = client gone.
async fn produce(plan: &StreamPlan, tx: &mpsc::Sender<Frame>, sent: &mut usize) -> Outcome {
    let env = &plan.envelope;
    if !send(tx, env.role_chunk()).await {
        return Outcome::Pending;
    }
    let len = plan.tokens.len();
    let cut_at = plan.cut_after.map(|k| k.min(len));
    let error_at = plan.error_after.map(|k| k.min(len));
    let mut pacer = Pacer::new(plan.tps);
    for i in 0..=len {
        if cut_at == Some(i) {
            tokio::select! {
                _ = tokio::time::sleep(SETTLE_BEFORE_CUT) => {}
                () = tx.closed() => return Outcome::Pending,
            }
            return match tx.send(Frame::Cut).await {
                Ok(()) => Outcome::Cut,
                Err(_) => Outcome::Pending,
            };
        }
        if error_at == Some(i) {
            if !pacer.wait(tx).await || !send(tx, stream_error_event()).await {
                return Outcome::Pending;
            }
            // Dropping the sender ends the body cleanly, without [DONE].
            return Outcome::StreamError;
        }
        let Some(token) = plan.tokens.get(i) else {
            break;
        };
        let sent_ok = if plan.stamp {
            pacer.wait(tx).await && tx.send(Frame::Stamp).await.is_ok()
        } else {
            pacer.wait(tx).await && send(tx, env.content_chunk(token)).await
        };
        if !sent_ok {
            return Outcome::Pending;
        }
        *sent += 1;
    }
    if !send(tx, env.finish_chunk(plan.finish_reason)).await {
        return Outcome::Pending;
    }
    if env.include_usage {
        let usage = Usage::new(plan.prompt_tokens, *sent);
        if !send(tx, env.usage_chunk(usage)).await {
            return Outcome::Pending;
        }
    }
    if !send(tx, "[DONE]".to_string()).await {
        return Outcome::Pending;
    }
    Outcome::Completed
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::text::parse_stamps;

    /// The stamp is taken when the body is polled (about to be written), not when queued.
    #[tokio::test]
    async fn stamp_frames_carry_the_poll_time() {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let envelope = Envelope::new("m", false, false);
        let mut stream = FrameStream {
            rx,
            envelope: Some(envelope),
        };
        for _ in 0..3 {
            tx.send(Frame::Stamp).await.unwrap();
        }
        tx.send(Frame::Data("[DONE]".into())).await.unwrap();
        drop(tx);
        let queued_at = now_micros();
        let mut stamps = Vec::new();
        let mut polled_at = Vec::new();
        let mut other = Vec::new();
        while let Some(item) = stream.next().await {
            let text = item.unwrap().to_string();
            polled_at.push(now_micros());
            let found = parse_stamps(&text);
            if found.is_empty() {
                other.push(text);
            } else {
                let json: serde_json::Value =
                    serde_json::from_str(text.trim().strip_prefix("data:").unwrap().trim())
                        .unwrap();
                let content = json["choices"][0]["delta"]["content"].as_str().unwrap();
                assert_eq!(parse_stamps(content), found);
                assert!(content.ends_with("\u{27e9} "), "{content:?}");
                stamps.extend(found);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(other.len(), 1, "{other:?}");
        assert!(other[0].contains("[DONE]"));
        assert_eq!(stamps.len(), 3);
        // Each stamp lies between the previous read and its own, so they were taken at poll
        // time (5 ms apart), not all at queueing time.
        assert!(stamps[0] >= queued_at);
        for i in 0..3 {
            assert!(stamps[i] <= polled_at[i]);
            if i > 0 {
                assert!(
                    stamps[i] >= polled_at[i - 1] + 4_000,
                    "{stamps:?} {polled_at:?}"
                );
            }
        }
    }
}
