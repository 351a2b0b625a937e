//! Local fan-out: which WebSocket connections on this gateway want which channels.
//!
//! The hub maps Pub/Sub channels (a conversation's events, a user's notices) to the bounded
//! outbound queues ([`Mailbox`]) of local connections. Delivery never waits: a connection
//! whose queue is full is a slow consumer and is closed with code 4008 (it resumes with `since`), so one
//! client that stops reading can never grow the gateway's memory. Payloads are shared
//! (`Arc<str>`), serialized once per gateway however many clients receive them.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

/// A Pub/Sub payload, parsed once per gateway however many connections receive it. The
/// payload is reference-counted bytes: every connection sends the same allocation.
#[derive(Debug)]
pub struct Published {
    pub payload: Utf8Bytes,
    pub header: Header,
}

/// The fields a session routes on; the rest of the payload is forwarded untouched.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Header {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub conversation_id: Option<uuid::Uuid>,
    #[serde(default)]
    pub event_id: Option<u64>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub token_hash: Option<String>,
    /// `<gateway>:<connection>` that produced an ephemeral event (typing).
    #[serde(default)]
    pub from: Option<String>,
}

/// What a connection's task receives from the hub.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A payload from a channel the connection subscribed to (conversation or user).
    Channel(Arc<Published>),
    /// Re-read every subscription's history from the last eventId (Pub/Sub reconnected).
    Resync,
    /// A frame produced for this connection alone (an `ack` or `error` for a `send`).
    Frame(String),
}

pub type ConnId = u64;

/// A connection's outbound queue, bounded by `WS_SEND_QUEUE`. It holds memory only while
/// frames wait: a tokio `mpsc` channel reserves a block of 32 slots and its cache-padded
/// counters up front, about 1.2 KiB of every idle socket (make bench hold).
pub struct Mailbox {
    queue: Mutex<VecDeque<Outbound>>,
    ready: Notify,
    cap: usize,
    closed: AtomicBool,
}

/// What [`Mailbox::push`] did.
#[derive(Debug, PartialEq, Eq)]
enum Pushed {
    Queued,
    Full,
    Closed,
}

/// A queue emptied after a burst keeps at most this many slots.
const KEEP_SLOTS: usize = 16;

impl Mailbox {
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            cap: cap.max(1),
            closed: AtomicBool::new(false),
        })
    }

    fn push(&self, msg: Outbound) -> Pushed {
        if self.closed.load(Ordering::Acquire) {
            return Pushed::Closed;
        }
        let Ok(mut q) = self.queue.lock() else {
            return Pushed::Closed;
        };
        if q.len() >= self.cap {
            return Pushed::Full;
        }
        q.push_back(msg);
        drop(q);
        self.ready.notify_one();
        Pushed::Queued
    }

    fn pop(&self) -> Option<Outbound> {
        let mut q = self.queue.lock().ok()?;
        let msg = q.pop_front();
        if q.is_empty() && q.capacity() > KEEP_SLOTS {
            q.shrink_to(KEEP_SLOTS);
        }
        msg
    }

    /// The next frame, in the order they were queued.
    pub async fn recv(&self) -> Outbound {
        loop {
            if let Some(msg) = self.pop() {
                return msg;
            }
            // A push meanwhile left a permit: this returns at once and the loop pops it.
            self.ready.notified().await;
        }
    }

    /// The connection is gone: refuse new frames and free the waiting ones.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Ok(mut q) = self.queue.lock() {
            *q = VecDeque::new();
        }
    }
}

/// The hub's handle on one connection.
#[derive(Clone)]
pub struct ConnHandle {
    pub mailbox: Arc<Mailbox>,
    /// Fired when the connection must close; the code says why.
    pub kill: Arc<Killer>,
}

/// What became of a frame offered to a connection's queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// The queue was full: the connection is being closed as a slow consumer (4008).
    Killed,
    /// The connection is already gone.
    Gone,
}

impl ConnHandle {
    /// Queues `msg` without waiting; a full queue closes the connection (4008) — one client
    /// that stops reading can never make the gateway buffer without bound.
    pub fn offer(&self, msg: Outbound) -> Offer {
        match self.mailbox.push(msg) {
            Pushed::Queued => Offer::Queued,
            Pushed::Full => {
                if !self.kill.token.is_cancelled() {
                    tracing::info!("closing a slow WebSocket consumer (queue full)");
                }
                self.kill.kill(CLOSE_SLOW_CONSUMER);
                Offer::Killed
            }
            Pushed::Closed => Offer::Gone,
        }
    }
}

#[derive(Default)]
pub struct Killer {
    pub token: CancellationToken,
    code: AtomicU64,
}

impl Killer {
    pub fn kill(&self, code: u16) {
        let _ = self
            .code
            .compare_exchange(0, u64::from(code), Ordering::SeqCst, Ordering::SeqCst);
        self.token.cancel();
    }
    pub fn code(&self) -> u16 {
        u16::try_from(self.code.load(Ordering::SeqCst)).unwrap_or(1011)
    }
}

pub const CLOSE_SLOW_CONSUMER: u16 = 4008;

/// Who listens where, both ways, under one lock: a connection leaving touches only its own
/// channels, never the whole map.
#[derive(Default)]
struct Channels {
    listeners: HashMap<String, HashMap<ConnId, ConnHandle>>,
    of: HashMap<ConnId, std::collections::HashSet<String>>,
}

#[derive(Default)]
pub struct Hub {
    channels: Mutex<Channels>,
    conns: Mutex<HashMap<ConnId, ConnHandle>>,
    next_id: AtomicU64,
    delivered: AtomicU64,
    slow_closed: AtomicU64,
}

impl Hub {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&self, handle: ConnHandle) -> ConnId {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut c) = self.conns.lock() {
            c.insert(id, handle);
        }
        id
    }

    /// Forgets a connection; returns the channels that may no longer be needed.
    pub fn unregister(&self, id: ConnId) -> Vec<String> {
        if let Ok(mut c) = self.conns.lock() {
            c.remove(&id);
        }
        let mut emptied = Vec::new();
        if let Ok(mut chans) = self.channels.lock() {
            let mine = chans.of.remove(&id).unwrap_or_default();
            for name in mine {
                if let Some(subs) = chans.listeners.get_mut(&name) {
                    subs.remove(&id);
                    if subs.is_empty() {
                        chans.listeners.remove(&name);
                        emptied.push(name);
                    }
                }
            }
        }
        emptied
    }

    /// Adds `id` to `channel`; true when it is the channel's first local listener.
    pub fn join(&self, channel: &str, id: ConnId, handle: ConnHandle) -> bool {
        let Ok(mut chans) = self.channels.lock() else {
            return false;
        };
        chans.of.entry(id).or_default().insert(channel.to_string());
        let subs = chans.listeners.entry(channel.to_string()).or_default();
        let first = subs.is_empty();
        subs.insert(id, handle);
        first
    }

    /// Removes `id` from `channel`; true when nobody local listens any more.
    pub fn leave(&self, channel: &str, id: ConnId) -> bool {
        let Ok(mut chans) = self.channels.lock() else {
            return false;
        };
        if let Some(mine) = chans.of.get_mut(&id) {
            mine.remove(channel);
        }
        match chans.listeners.get_mut(channel) {
            Some(subs) => {
                subs.remove(&id);
                if subs.is_empty() {
                    chans.listeners.remove(channel);
                    return true;
                }
                false
            }
            None => true,
        }
    }

    /// Every channel some local connection listens on.
    pub fn channels(&self) -> Vec<String> {
        self.channels
            .lock()
            .map(|c| c.listeners.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether any local connection listens on `channel`.
    pub fn wants(&self, channel: &str) -> bool {
        self.channels
            .lock()
            .map(|c| c.listeners.get(channel).is_some_and(|s| !s.is_empty()))
            .unwrap_or(false)
    }

    /// How many local connections listen on `channel`.
    pub fn listeners(&self, channel: &str) -> usize {
        self.channels
            .lock()
            .map(|c| c.listeners.get(channel).map_or(0, |s| s.len()))
            .unwrap_or(0)
    }

    /// Hands a Pub/Sub payload to every local listener of `channel`.
    pub fn deliver(&self, channel: &str, payload: &[u8]) {
        let Ok(published) = std::str::from_utf8(payload) else {
            return;
        };
        let meta = confab_shared::trace::split_published(published);
        if let Some(at) = meta.at_ms {
            let lag_ms = confab_shared::db::now_ms().saturating_sub(at);
            confab_shared::metrics::get()
                .pubsub_lag
                .observe(lag_ms as f64 / 1000.0);
        }
        if let Some(trace_id) = meta.trace_id {
            tracing::debug!(trace_id, %channel, "delivering an event");
        }
        let text = meta.body;
        let Ok(header) = serde_json::from_str::<Header>(text) else {
            tracing::debug!(%channel, "ignoring a payload that is not an event");
            return;
        };
        // The origin tag is for routing only: clients get the event without it.
        let payload = match header.from {
            Some(_) => match serde_json::from_str::<serde_json::Value>(text) {
                Ok(mut v) => {
                    if let Some(o) = v.as_object_mut() {
                        o.remove("from");
                    }
                    v.to_string()
                }
                Err(_) => return,
            },
            None => text.to_string(),
        };
        let shared = Arc::new(Published {
            payload: payload.into(),
            header,
        });
        let targets: Vec<ConnHandle> = match self.channels.lock() {
            Ok(c) => c
                .listeners
                .get(channel)
                .map(|s| s.values().cloned().collect())
                .unwrap_or_default(),
            Err(_) => return,
        };
        for h in targets {
            self.push(&h, Outbound::Channel(shared.clone()));
        }
    }

    pub fn resync_all(&self) {
        for h in self.all() {
            self.push(&h, Outbound::Resync);
        }
    }

    fn all(&self) -> Vec<ConnHandle> {
        self.conns
            .lock()
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default()
    }

    fn push(&self, h: &ConnHandle, msg: Outbound) {
        match h.offer(msg) {
            Offer::Queued => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Offer::Killed => {
                self.slow_closed.fetch_add(1, Ordering::Relaxed);
            }
            Offer::Gone => {}
        }
    }

    pub fn connections(&self) -> usize {
        self.conns.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Closes every connection with `code` (shutdown).
    pub fn close_all(&self, code: u16) {
        for h in self.all() {
            h.kill.kill(code);
        }
    }

    pub fn stats(&self) -> (u64, u64) {
        (
            self.delivered.load(Ordering::Relaxed),
            self.slow_closed.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(cap: usize) -> (ConnHandle, Arc<Mailbox>) {
        let mailbox = Mailbox::new(cap);
        (
            ConnHandle {
                mailbox: mailbox.clone(),
                kill: Arc::new(Killer::default()),
            },
            mailbox,
        )
    }

    #[test]
    fn delivers_to_listeners_and_tracks_first_and_last() {
        let hub = Hub::new();
        let (h1, r1) = handle(4);
        let (h2, r2) = handle(4);
        let a = hub.register(h1.clone());
        let b = hub.register(h2.clone());
        assert!(hub.join("ch", a, h1));
        assert!(!hub.join("ch", b, h2));
        hub.deliver("ch", br#"{"type":"x"}"#);
        assert!(matches!(r1.pop(), Some(Outbound::Channel(_))));
        assert!(matches!(r2.pop(), Some(Outbound::Channel(_))));
        assert!(!hub.leave("ch", a));
        assert!(hub.wants("ch"));
        assert_eq!(hub.unregister(b), vec!["ch".to_string()]);
        assert!(!hub.wants("ch"));
    }

    #[test]
    fn a_full_queue_kills_the_connection_with_4008() {
        let hub = Hub::new();
        let (h, _rx) = handle(1);
        let id = hub.register(h.clone());
        hub.join("ch", id, h.clone());
        hub.deliver("ch", br#"{"type":"a"}"#);
        assert!(!h.kill.token.is_cancelled());
        hub.deliver("ch", br#"{"type":"b"}"#);
        assert!(h.kill.token.is_cancelled());
        assert_eq!(h.kill.code(), CLOSE_SLOW_CONSUMER);
        assert_eq!(hub.stats().1, 1);
    }

    #[tokio::test]
    #[allow(clippy::unwrap_used)]
    async fn a_mailbox_keeps_order_wakes_its_reader_and_refuses_once_closed() {
        let (h, mailbox) = handle(8);
        let reader = tokio::spawn({
            let m = mailbox.clone();
            async move {
                let mut got = Vec::new();
                for _ in 0..3 {
                    if let Outbound::Frame(f) = m.recv().await {
                        got.push(f);
                    }
                }
                got
            }
        });
        tokio::task::yield_now().await;
        for f in ["a", "b", "c"] {
            assert_eq!(h.offer(Outbound::Frame(f.into())), Offer::Queued);
        }
        assert_eq!(reader.await.unwrap(), ["a", "b", "c"]);
        mailbox.close();
        assert_eq!(h.offer(Outbound::Resync), Offer::Gone);
        assert!(
            !h.kill.token.is_cancelled(),
            "a closed mailbox is not a slow consumer"
        );
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn an_emptied_mailbox_gives_its_burst_memory_back() {
        let (h, mailbox) = handle(1024);
        for _ in 0..1000 {
            assert_eq!(h.offer(Outbound::Resync), Offer::Queued);
        }
        while mailbox.pop().is_some() {}
        let cap = mailbox.queue.lock().unwrap().capacity();
        assert!(cap <= KEEP_SLOTS, "capacity {cap} kept after the burst");
    }
}
