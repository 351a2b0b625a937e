//! One WebSocket connection: client frames in, events out, resume without gaps.
//!
//! Per subscription the session remembers the last eventId it sent. Subscribing joins the
//! conversation's channel first (confirmed by Redis), then replays the stored history after
//! `since`; live events that arrived meanwhile wait in the queue and are dropped if already
//! sent. A live event that skips an eventId (a Pub/Sub message lost in a reconnect) makes the
//! session read the gap from history first. So: every event once, in order, no gap.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use confab_shared::commands::Command;
use confab_shared::keys;
use confab_shared::trace::TraceContext;
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use uuid::Uuid;

use super::hub::{ConnHandle, ConnId, Header, Killer, Mailbox, Outbound};
use super::protocol::{self, ClientFrame, FrameError};
use crate::auth::Session;
use crate::rest::conversations::{
    build_message, count_anonymous_write, count_assistant_message, keyed_message,
    open_with_assistant, Via,
};
use crate::state::AppState;
use crate::store::Kind;

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

pub const CLOSE_REVOKED: u16 = 4001;
pub const CLOSE_IDLE: u16 = 4000;
pub const CLOSE_RATE_LIMITED: u16 = 4029;
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// A frame over the hard limit (`WS_MAX_FRAME_BYTES` × 4, at least 1 MiB).
pub const CLOSE_TOO_BIG: u16 = 1009;
const MAX_SENDS_IN_FLIGHT: usize = 64;
/// Event ids stay below 2^53, the integers Lua's doubles hold exactly: a `since` above it
/// cannot be a real position.
const MAX_EVENT_ID: u64 = 1 << 53;
const SESSION_CHECK: Duration = Duration::from_secs(30);
/// A write that cannot complete for this long means the client stopped reading (4008).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

struct Sub {
    kind: Kind,
    last: u64,
    last_typing: Option<Instant>,
}

/// A token bucket: `rate` frames per second, bursts up to `burst`.
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
    strikes: u32,
}

impl Bucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Conn {
    state: AppState,
    session: Option<Session>,
    /// The upgrade request's trace: sends without a `traceparent` of their own continue it.
    trace: TraceContext,
    id: ConnId,
    handle: ConnHandle,
    subs: HashMap<Uuid, Sub>,
    expired: HashSet<Uuid>,
    sends: Arc<Semaphore>,
    /// The client's address (per-address limits).
    client: Option<std::net::IpAddr>,
}

/// Sets the connection up and returns the future that serves it. What an async fn takes
/// stays in its future for as long as it runs, and this future is most of what an idle
/// socket costs (make bench hold): so the socket is split and the state moved into `Conn`
/// here, and [`run`] takes only what it keeps.
pub fn serve(
    ws: Socket,
    state: AppState,
    session: Option<Session>,
    trace: TraceContext,
    client: Option<std::net::IpAddr>,
) -> impl std::future::Future<Output = ()> + Send {
    let mailbox = Mailbox::new(state.cfg.ws_send_queue);
    let handle = ConnHandle {
        mailbox: mailbox.clone(),
        kill: Arc::new(Killer::default()),
    };
    let id = state.hub.register(handle.clone());
    confab_shared::metrics::get().ws_connections.inc();
    let conn = Conn {
        state,
        session,
        trace,
        id,
        handle,
        subs: HashMap::new(),
        expired: HashSet::new(),
        sends: Arc::new(Semaphore::new(MAX_SENDS_IN_FLIGHT)),
        client,
    };
    let (sink, stream) = ws.split();
    run(conn, sink, stream, mailbox)
}

async fn run(
    mut conn: Conn,
    mut sink: futures::stream::SplitSink<Socket, Message>,
    mut stream: futures::stream::SplitStream<Socket>,
    mailbox: Arc<Mailbox>,
) {
    let cfg = conn.state.cfg.clone();
    let shutdown = conn.state.shutdown.clone();
    let (id, handle) = (conn.id, conn.handle.clone());
    let metrics = confab_shared::metrics::get();
    // How the peer ended it when we did not: its close code, or 1006 (no close frame).
    let mut peer_code: u16 = 1006;
    if let Some(s) = &conn.session {
        let ch = keys::user_channel(&s.username);
        conn.state.hub.join(&ch, id, handle.clone());
        if let Err(e) = Box::pin(conn.state.bus.sync(ch)).await {
            tracing::warn!(error = %e, "cannot subscribe to user notices");
        }
    }
    let idle = Duration::from_secs(cfg.ws_idle_timeout_secs.max(2));
    let mut ticker = tokio::time::interval(idle / 2);
    ticker.reset();
    let mut last_seen = Instant::now();
    let mut last_session_check = Instant::now();
    let rate = f64::from(cfg.ws_rate_per_sec);
    let mut bucket = Bucket {
        tokens: f64::from(cfg.ws_rate_burst),
        rate,
        burst: f64::from(cfg.ws_rate_burst),
        at: Instant::now(),
        strikes: 0,
    };
    let kill = handle.kill.clone();

    // Per connection, this future is most of what an idle socket costs: the handlers of
    // client frames and events (large, rarely running) are boxed while they run, so the
    // future that waits holds only the `select!` (make bench hold: per-connection RSS).
    let close_code: Option<u16> = loop {
        let out: Vec<Utf8Bytes> = tokio::select! {
            _ = kill.token.cancelled() => break Some(kill.code()),
            _ = shutdown.cancelled() => break Some(CLOSE_GOING_AWAY),
            m = mailbox.recv() => Box::pin(conn.outbound(m)).await,
            frame = stream.next() => {
                last_seen = Instant::now();
                match frame {
                    // Over the hard frame limit: tungstenite stops reading it; say why (1009).
                    Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(_))) => {
                        break Some(CLOSE_TOO_BIG)
                    }
                    None | Some(Err(_)) => break None,
                    Some(Ok(Message::Text(text))) => {
                        if !bucket.take() {
                            bucket.strikes += 1;
                            if bucket.strikes > cfg.ws_rate_burst.max(10) {
                                break Some(CLOSE_RATE_LIMITED);
                            }
                            vec![protocol::error_frame("rate_limited", "Too many frames; slow down", None).into()]
                        } else if text.len() > cfg.ws_max_frame_bytes {
                            vec![protocol::error_frame("frame_too_large", &format!("Frames are limited to {} bytes", cfg.ws_max_frame_bytes), None).into()]
                        } else {
                            bucket.strikes = 0;
                            frames(Box::pin(conn.client_frame(text.as_str())).await)
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        metrics.frame_received("invalid");
                        vec![protocol::error_frame("binary_not_supported", "Send JSON text frames", None).into()]
                    }
                    Some(Ok(Message::Close(frame))) => {
                        peer_code = frame.map_or(1005, |f| u16::from(f.code));
                        break None;
                    }
                    Some(Ok(_)) => Vec::new(),
                }
            }
            _ = ticker.tick() => {
                if last_seen.elapsed() > idle {
                    break Some(CLOSE_IDLE);
                }
                if let Some(s) = &conn.session {
                    if last_session_check.elapsed() >= SESSION_CHECK {
                        last_session_check = Instant::now();
                        if !Box::pin(conn.state.auth.still_valid(&s.token_hash)).await {
                            break Some(CLOSE_REVOKED);
                        }
                    }
                }
                if Box::pin(send(&mut sink, &kill, Message::Ping(Default::default()))).await.is_err() {
                    break None;
                }
                Vec::new()
            }
        };
        let mut failed = false;
        for text in out {
            metrics.frame_sent(&text);
            if Box::pin(send_text(&mut sink, &kill, text)).await.is_err() {
                failed = true;
                break;
            }
        }
        if failed {
            break if kill.token.is_cancelled() {
                Some(kill.code())
            } else {
                None
            };
        }
    };
    if let Some(code) = close_code {
        Box::pin(close(&mut sink, &mut stream, code)).await;
    }
    mailbox.close();
    for channel in conn.state.hub.unregister(id) {
        conn.state.bus.sync_later(channel);
    }
    metrics.ws_connections.dec();
    let code = close_code.unwrap_or(peer_code).to_string();
    metrics.ws_disconnects.with_label_values(&[&code]).inc();
}

/// Says why the server ends the connection (a close frame, within a second).
async fn close<S, R>(sink: &mut S, stream: &mut R, code: u16)
where
    S: futures::Sink<Message> + Unpin,
    R: futures::Stream + Unpin,
{
    let reason = match code {
        CLOSE_REVOKED => "session ended",
        super::hub::CLOSE_SLOW_CONSUMER => "slow consumer: resume with since",
        CLOSE_IDLE => "idle timeout",
        CLOSE_RATE_LIMITED => "rate limited",
        CLOSE_TOO_BIG => "frame too large",
        _ => "server shutting down",
    };
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        sink.send(Message::Close(Some(frame))),
    )
    .await;
    // Wait (a moment at most) for the client's close, reading away what it still sends —
    // the rest of an oversized frame, a flood's queued frames: closing a socket with unread
    // data resets it, and the client would never read the close code.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        for _ in 0..4096 {
            if stream.next().await.is_none() {
                break;
            }
        }
    })
    .await;
}

/// Text frames longer than this go out as fragments of this size. tungstenite writes a frame
/// through a buffer that keeps its largest capacity for the connection's life: one 16 KiB
/// message to a chat would otherwise leave 16 KiB or more behind on every subscriber.
const FRAGMENT: usize = 4096;

/// Sends one text message, fragmented when long (RFC 6455 5.4: a text frame without FIN,
/// continuations, the last with FIN; the payload slices share the one allocation).
async fn send_text<S>(sink: &mut S, kill: &Killer, text: Utf8Bytes) -> Result<(), ()>
where
    S: futures::Sink<Message> + Unpin,
{
    if text.len() <= FRAGMENT {
        return send(sink, kill, Message::Text(text)).await;
    }
    let bytes = Bytes::from(text);
    let mut at = 0;
    while at < bytes.len() {
        let end = (at + FRAGMENT).min(bytes.len());
        let opcode = if at == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        let frame = Frame::message(bytes.slice(at..end), opcode, end == bytes.len());
        send(sink, kill, Message::Frame(frame)).await?;
        at = end;
    }
    Ok(())
}

fn frames(texts: Vec<String>) -> Vec<Utf8Bytes> {
    texts.into_iter().map(Utf8Bytes::from).collect()
}

/// Writes one message unless the connection is being killed (a slow client cannot hold us).
async fn send<S>(sink: &mut S, kill: &Killer, msg: Message) -> Result<(), ()>
where
    S: futures::Sink<Message> + Unpin,
{
    tokio::select! {
        r = tokio::time::timeout(WRITE_TIMEOUT, sink.send(msg)) => match r {
            Ok(r) => r.map_err(|_| ()),
            Err(_) => {
                // The client stopped reading and its socket buffer is full.
                kill.kill(super::hub::CLOSE_SLOW_CONSUMER);
                Err(())
            }
        },
        _ = kill.token.cancelled() => Err(()),
    }
}

impl Conn {
    /// This connection's id across all gateways.
    fn origin(&self) -> String {
        format!("{}:{}", self.state.gateway_id, self.id)
    }

    /// Events a resume may replay: `EVENT_HISTORY_LEN`.
    fn replay_max(&self) -> usize {
        usize::try_from(self.state.cfg.event_history_len).unwrap_or(usize::MAX / 4)
    }

    fn me(&self) -> Option<&str> {
        self.session.as_ref().map(|s| s.username.as_str())
    }

    async fn client_frame(&mut self, text: &str) -> Vec<String> {
        let metrics = confab_shared::metrics::get();
        let frame = match protocol::parse(text) {
            Ok(f) => f,
            Err(e) => {
                metrics.frame_received("invalid");
                return vec![e.to_frame()];
            }
        };
        metrics.frame_received(frame.kind());
        let result = match frame {
            ClientFrame::Ping => Ok(vec![protocol::pong()]),
            ClientFrame::Subscribe {
                conversation_id,
                since,
            } => {
                let result = self.subscribe(conversation_id, since).await;
                if result.is_err() && !self.subs.contains_key(&conversation_id) {
                    // Joined the channel but the subscription failed: do not keep listening.
                    let ch = keys::conv_channel(&conversation_id);
                    if self.state.hub.leave(&ch, self.id) {
                        self.state.bus.sync_later(ch);
                    }
                }
                result
            }
            ClientFrame::Unsubscribe { conversation_id } => {
                self.subs.remove(&conversation_id);
                let ch = keys::conv_channel(&conversation_id);
                if self.state.hub.leave(&ch, self.id) {
                    self.state.bus.sync_later(ch);
                }
                Ok(vec![
                    serde_json::json!({"type": "unsubscribed", "conversationId": conversation_id})
                        .to_string(),
                ])
            }
            ClientFrame::Send {
                conversation_id,
                client_id,
                body,
            } => self.send_message(conversation_id, client_id, body).await,
            ClientFrame::Typing {
                conversation_id,
                sender,
            } => self.typing(conversation_id, sender).await,
            ClientFrame::Cancel { conversation_id } => self.cancel(conversation_id).await,
        };
        result.unwrap_or_else(|e| vec![e.to_frame()])
    }

    /// Checks that this connection may use conversation `id`.
    async fn access(&self, id: Uuid, reference: Option<String>) -> Result<Kind, FrameError> {
        if let Some(sub) = self.subs.get(&id) {
            return Ok(sub.kind);
        }
        let not_found =
            || FrameError::new("not_found", "Conversation not found").with_ref(reference.clone());
        let internal =
            |_| FrameError::new("unavailable", "Try again shortly").with_ref(reference.clone());
        match self.state.store.kind(id).await.map_err(internal)? {
            None => Err(not_found()),
            Some(Kind::Open) => Ok(Kind::Open),
            Some(Kind::Member) => match self.me() {
                Some(me) if self.state.store.is_member(id, me).await.map_err(internal)? => {
                    Ok(Kind::Member)
                }
                _ => Err(not_found()),
            },
        }
    }

    async fn subscribe(&mut self, id: Uuid, since: Option<u64>) -> Result<Vec<String>, FrameError> {
        let reference = Some(id.to_string());
        if !self.subs.contains_key(&id) && self.subs.len() >= self.state.cfg.ws_max_subscriptions {
            return Err(FrameError::new(
                "too_many_subscriptions",
                format!(
                    "At most {} subscriptions per connection",
                    self.state.cfg.ws_max_subscriptions
                ),
            )
            .with_ref(reference));
        }
        let kind = self.access(id, reference.clone()).await?;
        let unavailable =
            |_| FrameError::new("unavailable", "Try again shortly").with_ref(reference.clone());
        if !self.state.store.exists(id).await.map_err(unavailable)? {
            return Err(FrameError::new("not_found", "Conversation not found").with_ref(reference));
        }
        let ch = keys::conv_channel(&id);
        self.state.hub.join(&ch, self.id, self.handle.clone());
        self.state.bus.sync(ch).await.map_err(unavailable)?;
        let mut out = Vec::new();
        // A `since` past 2^53 cannot be a real position (and the scripts' numbers are
        // doubles): it resyncs without asking for the history.
        let replay = match since {
            Some(s) if s <= MAX_EVENT_ID => Some(
                self.state
                    .store
                    .history(id, s, self.replay_max())
                    .await
                    .map_err(unavailable)?,
            ),
            _ => None,
        };
        let last = match replay {
            Some((events, false)) if !events.is_empty() => {
                let newest = events.last().map_or(0, |(e, _)| *e);
                out.push(protocol::subscribed(id, newest, false));
                out.extend(events.into_iter().map(|(_, e)| e));
                newest
            }
            replay => {
                let current = self
                    .state
                    .store
                    .last_event_id(id)
                    .await
                    .map_err(unavailable)?;
                // Resync when the history after `since` was trimmed (a gap), or `since` is
                // ahead of anything this conversation has (a stale or made-up id), which must
                // not mute the subscription.
                let resync = since
                    .is_some_and(|s| s > current || replay.as_ref().is_none_or(|(_, gap)| *gap));
                // No gap and nothing after `since` when the history was read: the client has
                // everything up to `since`. An event stored after that read (so `current` may
                // already count it) waits in the queue — the channel was joined first — and
                // must not be dropped as if it had been sent.
                let last = match since {
                    Some(s) if !resync => s,
                    _ => current,
                };
                out.push(protocol::subscribed(id, last, resync));
                last
            }
        };
        self.subs.insert(
            id,
            Sub {
                kind,
                last,
                last_typing: None,
            },
        );
        self.expired.remove(&id);
        // Joining mid-answer: the text so far, then live deltas (clients drop seq <= this one).
        if let Ok(Some((rid, text, seq))) = self.state.store.answer_snapshot(id).await {
            out.push(
                serde_json::json!({
                    "type": "assistant_delta",
                    "conversationId": id,
                    "responseId": rid,
                    "seq": seq,
                    "delta": text,
                    "snapshot": true
                })
                .to_string(),
            );
        }
        Ok(out)
    }

    async fn send_message(
        &mut self,
        id: Uuid,
        client_id: Option<String>,
        body: serde_json::Map<String, Value>,
    ) -> Result<Vec<String>, FrameError> {
        let reference = client_id.clone().or_else(|| Some("send".into()));
        let kind = self.access(id, reference.clone()).await?;
        let actor = match kind {
            Kind::Member => self.me().map(str::to_string),
            Kind::Open => None,
        };
        let mut message = build_message(
            &body,
            kind,
            actor.as_deref(),
            self.state.cfg.max_message_bytes,
            Via::WebSocket,
        )
        .map_err(|e| FrameError::new(e.code, e.message).with_ref(reference.clone()))?;
        // The clientId is the message's idempotency key: a retry is the same message.
        let fingerprint = keyed_message(
            &self.state,
            id,
            self.me(),
            client_id.as_deref(),
            &body,
            kind,
            &mut message,
        );
        if kind == Kind::Open {
            let gate = async {
                if self.session.is_none() {
                    count_anonymous_write(&self.state, self.client).await?;
                }
                if open_with_assistant(&self.state, id).await? {
                    count_assistant_message(&self.state, self.client).await?;
                }
                Ok::<(), crate::rest::errors::ApiError>(())
            };
            gate.await
                .map_err(|e| FrameError::new(e.code, e.message).with_ref(reference.clone()))?;
        }
        let permit = self
            .sends
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| FrameError::new("unavailable", "closing"))?;
        // The frame's own traceparent, else the connection's trace.
        let trace = body
            .get("traceparent")
            .and_then(Value::as_str)
            .and_then(TraceContext::parse)
            .unwrap_or_else(|| self.trace.child());
        let pending = self
            .state
            .pipeline
            .begin(
                Command::SendMessage {
                    conversation_id: id,
                    message,
                    actor,
                    assistant_reply: None,
                    fingerprint,
                },
                &trace,
            )
            .await
            .map_err(|e| FrameError::new(e.code, e.message).with_ref(reference.clone()))?;
        let handle = self.handle.clone();
        tokio::spawn(async move {
            let frame = match pending.wait().await {
                Ok(reply) => {
                    let body: Value = serde_json::from_str(reply.body.get()).unwrap_or_default();
                    if reply.status < 300 {
                        protocol::ack(
                            client_id.as_deref(),
                            body["messageId"].as_str().unwrap_or_default(),
                        )
                    } else {
                        let code = body["error"]["code"].as_str().unwrap_or("error");
                        let msg = body["error"]["message"]
                            .as_str()
                            .unwrap_or("The message was not accepted");
                        protocol::error_frame(code, msg, reference.as_deref())
                    }
                }
                Err(e) => protocol::error_frame(e.code, &e.message, reference.as_deref()),
            };
            drop(permit);
            handle.offer(Outbound::Frame(frame));
        });
        Ok(Vec::new())
    }

    async fn typing(
        &mut self,
        id: Uuid,
        sender: Option<String>,
    ) -> Result<Vec<String>, FrameError> {
        let me = self.me().map(str::to_string);
        let Some(sub) = self.subs.get_mut(&id) else {
            return Err(
                FrameError::new("not_subscribed", "Subscribe to the conversation first")
                    .with_ref(Some("typing".into())),
            );
        };
        if sub
            .last_typing
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return Ok(Vec::new());
        }
        sub.last_typing = Some(Instant::now());
        let username = match (sub.kind, me) {
            (Kind::Member, Some(me)) => me,
            _ => match sender.as_deref() {
                Some(s @ ("customer" | "agent")) => s.to_string(),
                _ => "guest".to_string(),
            },
        };
        let mut ev =
            serde_json::json!({"type": "typing", "conversationId": id, "username": username});
        // Tagged with its origin so the typist's own session skips it.
        ev["from"] = self.origin().into();
        if let Err(e) = self
            .state
            .store
            .publish(&keys::conv_channel(&id), &ev.to_string())
            .await
        {
            tracing::debug!(error = %e, "publishing a typing notice failed");
        }
        Ok(Vec::new())
    }

    async fn cancel(&mut self, id: Uuid) -> Result<Vec<String>, FrameError> {
        self.access(id, Some("cancel".into())).await?;
        self.state
            .store
            .request_cancel(id)
            .await
            .map_err(|_| FrameError::new("unavailable", "Try again shortly"))?;
        Ok(Vec::new())
    }

    /// Turns something from the hub into frames for this client.
    async fn outbound(&mut self, msg: Outbound) -> Vec<Utf8Bytes> {
        match msg {
            Outbound::Frame(f) => vec![f.into()],
            Outbound::Resync => {
                let ids: Vec<Uuid> = self.subs.keys().copied().collect();
                let mut out = Vec::new();
                for id in ids {
                    out.extend(self.catch_up(id).await);
                }
                out
            }
            Outbound::Channel(published) => self.event(&published.header, &published.payload).await,
        }
    }

    async fn event(&mut self, h: &Header, payload: &Utf8Bytes) -> Vec<Utf8Bytes> {
        match h.kind.as_str() {
            "session_revoked" => {
                if self
                    .session
                    .as_ref()
                    .is_some_and(|s| h.token_hash.as_deref() == Some(s.token_hash.as_str()))
                {
                    self.handle.kill.kill(CLOSE_REVOKED);
                }
                Vec::new()
            }
            "conversation_added" => {
                let (Some(id), Some(me)) = (h.conversation_id, self.me()) else {
                    return Vec::new();
                };
                match self.state.store.summary(id, me).await {
                    Ok(Some(summary)) => vec![
                        serde_json::json!({"type": "conversation_added", "conversation": summary})
                            .to_string()
                            .into(),
                    ],
                    _ => Vec::new(),
                }
            }
            "conversation_expired" => {
                let Some(id) = h.conversation_id else {
                    return Vec::new();
                };
                if self.subs.remove(&id).is_some() {
                    let ch = keys::conv_channel(&id);
                    if self.state.hub.leave(&ch, self.id) {
                        self.state.bus.sync_later(ch);
                    }
                }
                if self.expired.insert(id) {
                    vec![payload.clone()]
                } else {
                    Vec::new()
                }
            }
            "typing" => {
                let mine = h.from.as_deref() == Some(self.origin().as_str());
                match h.conversation_id {
                    Some(id) if self.subs.contains_key(&id) && !mine => vec![payload.clone()],
                    _ => Vec::new(),
                }
            }
            _ => {
                let Some(id) = h.conversation_id else {
                    return Vec::new();
                };
                let Some(sub) = self.subs.get_mut(&id) else {
                    return Vec::new();
                };
                match h.event_id {
                    None => vec![payload.clone()],
                    Some(eid) if eid <= sub.last => Vec::new(),
                    Some(eid) if eid == sub.last + 1 => {
                        sub.last = eid;
                        vec![payload.clone()]
                    }
                    Some(_) => self.catch_up(id).await,
                }
            }
        }
    }

    /// Sends the stored events after the subscription's last eventId.
    async fn catch_up(&mut self, id: Uuid) -> Vec<Utf8Bytes> {
        let Some(last) = self.subs.get(&id).map(|s| s.last) else {
            return Vec::new();
        };
        match self.state.store.history(id, last, self.replay_max()).await {
            Ok((_, true)) => {
                let newest = self.state.store.last_event_id(id).await.unwrap_or(last);
                if let Some(sub) = self.subs.get_mut(&id) {
                    sub.last = newest;
                }
                vec![protocol::subscribed(id, newest, true).into()]
            }
            Ok((events, false)) => {
                if let (Some(sub), Some((newest, _))) = (self.subs.get_mut(&id), events.last()) {
                    sub.last = *newest;
                }
                events.into_iter().map(|(_, e)| e.into()).collect()
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading history for a catch-up failed");
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    async fn sent(text: &str) -> Vec<Message> {
        let (mut tx, rx) = futures::channel::mpsc::unbounded::<Message>();
        let kill = Killer::default();
        assert!(send_text(&mut tx, &kill, text.into()).await.is_ok());
        drop(tx);
        rx.collect().await
    }

    #[tokio::test]
    async fn short_texts_go_as_one_frame() {
        let text = "é".repeat(FRAGMENT / 2);
        assert_eq!(sent(&text).await, vec![Message::text(text)]);
    }

    #[tokio::test]
    async fn long_texts_go_as_fragments_that_join_to_the_text() {
        // Multi-byte characters: fragments may split one; the receiver validates the whole.
        let text = "ü€x".repeat(FRAGMENT * 3 / 5);
        let frames: Vec<Frame> = sent(&text)
            .await
            .into_iter()
            .map(|m| match m {
                Message::Frame(f) => f,
                other => panic!("expected raw frames, got {other:?}"),
            })
            .collect();
        assert_eq!(frames.len(), text.len().div_ceil(FRAGMENT));
        for (i, f) in frames.iter().enumerate() {
            let h = f.header();
            let want = if i == 0 { Data::Text } else { Data::Continue };
            assert_eq!(h.opcode, OpCode::Data(want), "frame {i}");
            assert_eq!(h.is_final, i + 1 == frames.len(), "frame {i}");
            assert!(f.payload().len() <= FRAGMENT);
        }
        let joined: Vec<u8> = frames.iter().flat_map(|f| f.payload().to_vec()).collect();
        assert_eq!(joined, text.as_bytes());
    }
}
