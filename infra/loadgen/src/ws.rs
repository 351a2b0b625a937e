//! WebSocket helpers: small-buffer connections (optionally spread over source addresses),
//! borrowed frame parsing, send-time tags.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Result};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::http::Target;

pub type Ws = WebSocketStream<TcpStream>;

/// Small buffers: thousands of mostly idle sockets must not cost 128 KiB each.
fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(1 << 20)
}

/// Source addresses connections are bound to, round-robin (`--source-addrs`): one address has
/// about 28,000 ephemeral ports, so 100,000 sockets from one machine need several. The whole of
/// 127.0.0.0/8 is local on Linux, and only a loopback target can be reached from it.
static SOURCES: OnceLock<Sources> = OnceLock::new();

struct Sources {
    count: u32,
    next: AtomicU32,
}

/// Spreads every later WebSocket connection over `count` addresses from 127.0.0.1 on
/// (127.0.0.1, 127.0.0.2, … 127.0.1.0, …). 1 (the default) leaves the choice to the kernel.
pub fn spread_sources(count: u32) {
    let _ = SOURCES.set(Sources {
        count: count.max(1),
        next: AtomicU32::new(0),
    });
}

/// The `i`-th source address: 127.0.0.1 + i, staying inside 127.0.0.0/8.
pub fn source_addr(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 1)) + (i % 0x00ff_fffe))
}

async fn tcp_connect(authority: &str) -> Result<TcpStream> {
    let sources = SOURCES.get().filter(|s| s.count > 1);
    let Some(sources) = sources else {
        return Ok(TcpStream::connect(authority).await?);
    };
    let addr = tokio::net::lookup_host(authority)
        .await?
        .find(|a| a.ip().is_loopback() && a.is_ipv4())
        .ok_or_else(|| anyhow!("--source-addrs needs an IPv4 loopback target, not {authority}"))?;
    let i = sources.next.fetch_add(1, Relaxed) % sources.count;
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source_addr(i)), 0))?;
    Ok(socket.connect(addr).await?)
}

/// Opens `/ws` (with `?token=` when signed in).
pub async fn connect(target: &Target, token: Option<&str>) -> Result<Ws> {
    let tcp = tcp_connect(&target.authority).await?;
    let _ = tcp.set_nodelay(true);
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(target.ws_url(token), tcp, Some(config()))
            .await?;
    Ok(ws)
}

/// The fields of a server frame that the scenarios read; everything else is skipped.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(borrow)]
    pub conversation_id: Option<Cow<'a, str>>,
    pub event_id: Option<u64>,
    pub last_event_id: Option<u64>,
    /// An object in `message` events, a string in `error` frames: read with [`Frame::body`].
    #[serde(borrow)]
    pub message: Option<&'a RawValue>,
    #[serde(borrow)]
    pub code: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub response_id: Option<Cow<'a, str>>,
    pub seq: Option<u64>,
    #[serde(borrow)]
    pub delta: Option<Cow<'a, str>>,
    pub stopped: Option<bool>,
    /// `true` on the "text so far" `assistant_delta` a gateway sends on subscribe mid-answer.
    pub snapshot: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
pub struct FrameMessage<'a> {
    #[serde(borrow)]
    pub sender: Cow<'a, str>,
    #[serde(borrow)]
    pub content: Cow<'a, str>,
}

impl<'a> Frame<'a> {
    /// The `message` object of a `message` event.
    pub fn body(&self) -> Option<FrameMessage<'a>> {
        self.message
            .and_then(|m| serde_json::from_str(m.get()).ok())
    }
}

pub fn parse(text: &str) -> Option<Frame<'_>> {
    serde_json::from_str(text).ok()
}

/// Wall-clock microseconds since the Unix epoch (sender and receiver share the clock).
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The send time embedded in a message text as the word `t=<unix micros>`.
pub fn time_tag(content: &str) -> Option<u64> {
    content
        .split_ascii_whitespace()
        .find_map(|w| w.strip_prefix("t="))
        .and_then(|n| n.parse().ok())
}

/// Message text of about `len` bytes carrying the send time: `lg t=<micros> <label> xxxx…`.
pub fn tagged_content(t_us: u64, label: &str, len: usize) -> String {
    let mut s = format!("lg t={t_us} {label} ");
    while s.len() < len {
        s.push('x');
    }
    s
}

/// Subscribes to `conversation_id` and waits for `subscribed`; returns its `lastEventId`.
pub async fn subscribe(ws: &mut Ws, conversation_id: &str, timeout: Duration) -> Result<u64> {
    let frame = format!(r#"{{"type":"subscribe","conversationId":"{conversation_id}"}}"#);
    ws.send(Message::text(frame)).await?;
    let wait = async {
        while let Some(msg) = ws.next().await {
            let Message::Text(text) = msg? else { continue };
            let Some(f) = parse(text.as_str()) else {
                continue;
            };
            match f.kind.as_ref() {
                "subscribed" if f.conversation_id.as_deref() == Some(conversation_id) => {
                    return Ok(f.last_event_id.unwrap_or(0));
                }
                "error" => bail!("subscribe refused: {}", f.code.as_deref().unwrap_or("?")),
                _ => {}
            }
        }
        Err(anyhow!("closed before subscribed"))
    };
    tokio::time::timeout(timeout, wait)
        .await
        .map_err(|_| anyhow!("no subscribed within {timeout:?}"))?
}

/// A close frame's code as a label (`1000`, `4008`…), or `none`.
pub fn close_label(msg: &Message) -> Option<String> {
    match msg {
        Message::Close(Some(f)) => Some(u16::from(f.code).to_string()),
        Message::Close(None) => Some("none".into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_stay_in_127_slash_8() {
        assert_eq!(source_addr(0), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(source_addr(1), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_addr(255), Ipv4Addr::new(127, 0, 1, 0));
        for i in [0, 1000, 0x00ff_fffd, 0x00ff_fffe, u32::MAX] {
            let a = source_addr(i);
            assert!(a.is_loopback(), "{i}: {a}");
            assert_ne!(a, Ipv4Addr::new(127, 255, 255, 255), "{i}");
        }
    }

    #[test]
    fn tags_round_trip() {
        let c = tagged_content(1_700_000_000_123_456, "c=7 n=3", 100);
        assert_eq!(c.len(), 100);
        assert_eq!(time_tag(&c), Some(1_700_000_000_123_456));
        assert_eq!(time_tag("hello world"), None);
        assert_eq!(time_tag("at=5"), None);
        assert!(now_micros() > 1_600_000_000_000_000);
    }

    #[test]
    fn frames_parse_borrowed_and_skip_the_rest() {
        let text = r#"{"type":"message","conversationId":"c1","eventId":9,
            "message":{"messageId":"m","sender":"bob","content":"lg t=5 \"q\"","timestamp":"x"}}"#;
        let f = parse(text).unwrap_or_default();
        assert_eq!(f.kind, "message");
        assert_eq!(f.event_id, Some(9));
        let m = f.body().unwrap_or_default();
        assert_eq!(m.sender, "bob");
        assert_eq!(m.content, "lg t=5 \"q\"");
        assert_eq!(time_tag(&m.content), Some(5));
        let d = parse(r#"{"type":"assistant_delta","conversationId":"c","responseId":"r","seq":0,"delta":"w1"}"#)
            .unwrap_or_default();
        assert_eq!((d.seq, d.response_id.as_deref()), (Some(0), Some("r")));
        assert_eq!(d.delta.as_deref(), Some("w1"));
        assert_eq!(d.snapshot, None);
        let snap = parse(
            r#"{"type":"assistant_delta","responseId":"r","seq":4,"delta":"a b","snapshot":true}"#,
        )
        .unwrap_or_default();
        assert_eq!((snap.snapshot, snap.seq), (Some(true), Some(4)));
        let done =
            parse(r#"{"type":"assistant_done","responseId":"r","usage":{"total_tokens":3}}"#);
        assert_eq!(
            done.map(|d| d.kind.into_owned()),
            Some("assistant_done".into())
        );
        assert!(parse("not json").is_none());
        let e = parse(r#"{"type":"error","code":"not_found","message":"Conversation not found"}"#)
            .unwrap_or_default();
        assert_eq!(e.code.as_deref(), Some("not_found"));
        assert!(e.body().is_none());
    }
}
