//! A WebSocket client for the gateway's `/ws`, over tokio-tungstenite.
//!
//! Reads skip WebSocket control frames (ping/pong) and hand back JSON text frames; a close
//! frame or the end of the connection is reported as [`WsEvent::Closed`] with its code.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// How long a read waits when the test names no timeout.
pub const WS_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq)]
pub enum WsEvent {
    /// A JSON text frame.
    Frame(Value),
    /// A close frame (its code) or the connection ended (`None`).
    Closed(Option<u16>),
    /// Nothing arrived in time.
    Timeout,
}

/// Options for [`Ws::connect_with`].
#[derive(Debug, Clone, Default)]
pub struct WsOptions {
    /// `SO_RCVBUF` for the client's socket (a small one makes a slow reader fill up sooner).
    pub recv_buffer: Option<u32>,
    /// Extra request headers for the handshake (e.g. `Authorization`).
    pub headers: Vec<(String, String)>,
    /// Connect from this local address (any of 127.0.0.0/8 reaches a loopback gateway), so
    /// the gateway sees another client address.
    pub local_addr: Option<std::net::IpAddr>,
}

pub struct Ws {
    stream: WebSocketStream<TcpStream>,
    closed: Option<Option<u16>>,
    /// Every JSON frame this client has read, in order.
    pub seen: Vec<Value>,
}

impl Ws {
    /// Connects to `<base>/ws?token=…` (`base` is `ws://127.0.0.1:<port>`); panics on failure.
    pub async fn connect(base: &str, token: Option<&str>) -> Ws {
        Self::try_connect(base, token, WsOptions::default())
            .await
            .unwrap_or_else(|(status, body)| {
                panic!("WebSocket handshake to {base} refused: {status} {body}")
            })
    }

    pub async fn connect_with(base: &str, token: Option<&str>, opts: WsOptions) -> Ws {
        Self::try_connect(base, token, opts)
            .await
            .unwrap_or_else(|(status, body)| {
                panic!("WebSocket handshake to {base} refused: {status} {body}")
            })
    }

    /// Connects, or answers the HTTP status and body the handshake was refused with
    /// (status 0 for a transport failure).
    pub async fn try_connect(
        base: &str,
        token: Option<&str>,
        opts: WsOptions,
    ) -> Result<Ws, (u16, String)> {
        let url = match token {
            Some(t) => format!("{base}/ws?token={t}"),
            None => format!("{base}/ws"),
        };
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| (0, e.to_string()))?;
        for (name, value) in &opts.headers {
            let name =
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|e| (0, e.to_string()))?;
            let value = tokio_tungstenite::tungstenite::http::HeaderValue::from_str(value)
                .map_err(|e| (0, e.to_string()))?;
            request.headers_mut().insert(name, value);
        }
        let authority = base
            .trim_start_matches("ws://")
            .trim_end_matches('/')
            .to_string();
        let addr = tokio::net::lookup_host(&authority)
            .await
            .map_err(|e| (0, e.to_string()))?
            .next()
            .ok_or((0, format!("cannot resolve {authority}")))?;
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| (0, e.to_string()))?;
        if let Some(ip) = opts.local_addr {
            socket
                .bind(std::net::SocketAddr::new(ip, 0))
                .map_err(|e| (0, e.to_string()))?;
        }
        if let Some(size) = opts.recv_buffer {
            socket
                .set_recv_buffer_size(size)
                .map_err(|e| (0, e.to_string()))?;
        }
        let tcp = socket.connect(addr).await.map_err(|e| (0, e.to_string()))?;
        match tokio_tungstenite::client_async(request, tcp).await {
            Ok((stream, _)) => Ok(Ws {
                stream,
                closed: None,
                seen: Vec::new(),
            }),
            Err(WsError::Http(res)) => {
                let status = res.status().as_u16();
                let body = res
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                Err((status, body))
            }
            Err(e) => Err((0, e.to_string())),
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.stream
            .send(Message::text(text))
            .await
            .unwrap_or_else(|e| panic!("WebSocket send failed: {e}"));
    }

    /// Sends a text frame, saying whether it went out (the server may close mid-frame).
    pub async fn try_send_text(&mut self, text: &str) -> bool {
        self.stream.send(Message::text(text)).await.is_ok()
    }

    pub async fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.stream
            .send(Message::binary(bytes))
            .await
            .unwrap_or_else(|e| panic!("WebSocket send failed: {e}"));
    }

    /// Sends without waiting for the flush (floods): queues the frame in the client.
    pub async fn feed_text(&mut self, text: &str) {
        self.stream
            .feed(Message::text(text))
            .await
            .unwrap_or_else(|e| panic!("WebSocket send failed: {e}"));
    }

    pub async fn flush(&mut self) {
        self.stream
            .flush()
            .await
            .unwrap_or_else(|e| panic!("WebSocket flush failed: {e}"));
    }

    /// The next JSON frame, a close, or a timeout.
    pub async fn next_event(&mut self, timeout: Duration) -> WsEvent {
        if let Some(code) = self.closed {
            return WsEvent::Closed(code);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let item = match tokio::time::timeout(left, self.stream.next()).await {
                Err(_) => return WsEvent::Timeout,
                Ok(item) => item,
            };
            match item {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str())
                        .unwrap_or_else(|e| panic!("the server sent a non-JSON frame ({e}): {t}"));
                    self.seen.push(v.clone());
                    return WsEvent::Frame(v);
                }
                Some(Ok(Message::Binary(b))) => {
                    panic!("the server sent a binary frame of {} bytes", b.len())
                }
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map(|f| u16::from(f.code));
                    self.closed = Some(code);
                    return WsEvent::Closed(code);
                }
                Some(Ok(_)) => continue, // ping, pong, raw frame
                Some(Err(_)) | None => {
                    self.closed = Some(None);
                    return WsEvent::Closed(None);
                }
            }
        }
    }

    /// The next JSON frame within `timeout`, `None` on timeout; panics if the socket closed.
    pub async fn next_json(&mut self, timeout: Duration) -> Option<Value> {
        match self.next_event(timeout).await {
            WsEvent::Frame(v) => Some(v),
            WsEvent::Timeout => None,
            WsEvent::Closed(code) => panic!("the WebSocket closed (code {code:?})"),
        }
    }

    /// The next frame, which must be of type `kind` (within [`WS_WAIT`]).
    #[track_caller]
    pub fn expect_type<'a>(
        &'a mut self,
        kind: &'a str,
    ) -> impl std::future::Future<Output = Value> + 'a {
        let caller = std::panic::Location::caller();
        async move {
            match self.next_event(WS_WAIT).await {
                WsEvent::Frame(v) if v["type"] == kind => v,
                other => panic!("{caller}: expected a {kind:?} frame, got {other:?}"),
            }
        }
    }

    /// Skips frames until one of type `kind` (within [`WS_WAIT`]); the skipped ones stay in
    /// [`Ws::seen`].
    pub async fn wait_type(&mut self, kind: &str) -> Value {
        let deadline = Instant::now() + WS_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left).await {
                WsEvent::Frame(v) if v["type"] == kind => return v,
                WsEvent::Frame(_) => continue,
                other => panic!("waiting for a {kind:?} frame: {other:?}"),
            }
        }
    }

    /// Subscribes and returns the `subscribed` frame (which must come next).
    pub async fn subscribe(&mut self, conversation: &str, since: Option<u64>) -> Value {
        let mut frame = json!({"type": "subscribe", "conversationId": conversation});
        if let Some(s) = since {
            frame["since"] = s.into();
        }
        self.send_json(&frame).await;
        let v = self.expect_type("subscribed").await;
        assert_eq!(v["conversationId"], conversation, "{v}");
        v
    }

    /// Sends a ping frame and insists that the next frame is the pong.
    pub async fn ping(&mut self) {
        self.send_json(&json!({"type": "ping"})).await;
        self.expect_type("pong").await;
    }

    /// Collects `n` frames of type `kind` (others are skipped), waiting up to `timeout`
    /// overall; panics with what it got if they do not all arrive.
    pub async fn collect(&mut self, kind: &str, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left).await {
                WsEvent::Frame(v) if v["type"] == kind => out.push(v),
                WsEvent::Frame(_) => {}
                other => panic!(
                    "collected {} of {n} {kind:?} frames, then {other:?}",
                    out.len()
                ),
            }
        }
        out
    }

    /// Asserts that no frame arrives for `quiet` (a check for duplicates or leaks; this is
    /// the only fixed wait, since "nothing happens" cannot be polled for).
    pub async fn expect_silence(&mut self, quiet: Duration) {
        match self.next_event(quiet).await {
            WsEvent::Timeout => {}
            other => panic!("expected no frame, got {other:?}"),
        }
    }

    /// Reads until the connection closes; returns the close code and the frames read first.
    pub async fn wait_close(&mut self, timeout: Duration) -> (Option<u16>, Vec<Value>) {
        let deadline = Instant::now() + timeout;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left).await {
                WsEvent::Frame(v) => frames.push(v),
                WsEvent::Closed(code) => return (code, frames),
                WsEvent::Timeout => panic!(
                    "the WebSocket did not close within {timeout:?} ({} frames read)",
                    frames.len()
                ),
            }
        }
    }

    /// Closes from the client side (normal closure).
    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }
}

/// `{"type":"send", …}` for an open conversation.
pub fn send_frame(conversation: &str, client_id: &str, sender: &str, content: &str) -> Value {
    json!({
        "type": "send",
        "conversationId": conversation,
        "clientId": client_id,
        "sender": sender,
        "content": content,
        "timestamp": "2025-04-05T14:00:00Z",
    })
}
