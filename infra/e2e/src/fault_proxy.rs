//! A fault-injecting TCP proxy (issue 10, item 16): `127.0.0.1:<free port>` → a target
//! (a `redis-server`), with a control handle the test drives while traffic flows.
//!
//! - **Latency** per direction ([`FaultControl::set_latency`]): every chunk read is written on
//!   after the added delay, without serialising the chunks (pipelined traffic keeps its
//!   throughput, each byte just arrives later).
//! - **Drop connections** ([`FaultControl::drop_connections`]): every connection open now is
//!   closed on both sides, with a RST (`reset = true`, zero linger) or an orderly close. New
//!   connections are accepted as usual.
//! - **Black hole** ([`FaultControl::black_hole`]): connections are accepted and kept, but
//!   nothing is forwarded either way and no new upstream connection is opened; what was sent
//!   waits in the socket buffers, as in a network partition that TCP rides out. Combine with
//!   `drop_connections` to model a partition long enough for TCP to give up.
//! - [`FaultControl::heal`]: no latency, no black hole.
//!
//! Bounded: at most [`MAX_CONNECTIONS`] connections at once (more are closed at accept), and
//! at most [`QUEUE_CHUNKS`] chunks of [`CHUNK`] bytes in flight per direction. The proxy runs
//! on the test's runtime and stops when the [`FaultProxy`] drops.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Connections the proxy carries at once.
pub const MAX_CONNECTIONS: u64 = 1024;
/// The largest chunk read at once.
pub const CHUNK: usize = 16 * 1024;
/// Chunks in flight per direction (read, waiting out their latency).
pub const QUEUE_CHUNKS: usize = 256;

/// The faults in force. Every connection watches them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Faults {
    /// Added to the client → target direction.
    up: Duration,
    /// Added to the target → client direction.
    down: Duration,
    black_hole: bool,
    /// Bumped by `drop_connections`: a connection opened under an older epoch ends.
    epoch: u64,
    /// Whether the last drop was a reset.
    reset: bool,
}

/// Drives the faults of one proxy; cheap to clone, usable from any task.
#[derive(Clone)]
pub struct FaultControl {
    faults: Arc<watch::Sender<Faults>>,
    stats: Arc<Stats>,
}

#[derive(Default)]
struct Stats {
    accepted: AtomicU64,
    open: AtomicU64,
    dropped: AtomicU64,
}

impl FaultControl {
    /// Adds `up` to every chunk from the processes to the target and `down` to every chunk
    /// back (applies to chunks read from now on).
    pub fn set_latency(&self, up: Duration, down: Duration) {
        self.faults.send_modify(|f| {
            f.up = up;
            f.down = down;
        });
    }

    /// Closes every connection open now (a RST when `reset`, else FIN) on both sides.
    pub fn drop_connections(&self, reset: bool) {
        self.faults.send_modify(|f| {
            f.epoch += 1;
            f.reset = reset;
        });
    }

    /// Stops (`true`) or resumes (`false`) forwarding, keeping the connections.
    pub fn black_hole(&self, on: bool) {
        self.faults.send_modify(|f| f.black_hole = on);
    }

    /// No added latency and no black hole (dropped connections stay dropped).
    pub fn heal(&self) {
        self.faults.send_modify(|f| {
            f.up = Duration::ZERO;
            f.down = Duration::ZERO;
            f.black_hole = false;
        });
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.stats.accepted.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.stats.open.load(Ordering::Relaxed)
    }

    /// Connections closed by `drop_connections` so far.
    pub fn dropped(&self) -> u64 {
        self.stats.dropped.load(Ordering::Relaxed)
    }
}

/// The proxy: listening on 127.0.0.1 until dropped.
pub struct FaultProxy {
    port: u16,
    control: FaultControl,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Ends the accept loop; the connection tasks end with the epoch bump.
        self.control.drop_connections(true);
        self.task.abort();
    }
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `127.0.0.1:<target_port>`.
    pub async fn start(target_port: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("fault proxy: cannot listen: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("fault proxy: no local address: {e}"))
            .port();
        let (tx, _) = watch::channel(Faults::default());
        let control = FaultControl {
            faults: Arc::new(tx),
            stats: Arc::default(),
        };
        let task = tokio::spawn(accept_loop(listener, target_port, control.clone()));
        FaultProxy {
            port,
            control,
            task,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`: what the processes are given as `REDIS_URL`.
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A handle on the faults (clone it into tasks).
    pub fn control(&self) -> FaultControl {
        self.control.clone()
    }
}

async fn accept_loop(listener: TcpListener, target_port: u16, control: FaultControl) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of descriptors or similar: try again shortly rather than spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        control.stats.accepted.fetch_add(1, Ordering::Relaxed);
        if control.stats.open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            drop(client);
            continue;
        }
        control.stats.open.fetch_add(1, Ordering::Relaxed);
        let control = control.clone();
        tokio::spawn(async move {
            connection(client, target_port, &control).await;
            control.stats.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// One proxied connection, until either side closes or the connection is dropped.
async fn connection(client: TcpStream, target_port: u16, control: &FaultControl) {
    let mut faults = control.faults.subscribe();
    let epoch = faults.borrow().epoch;
    let _ = client.set_nodelay(true);
    // A black hole answers no SYN: the upstream connection waits for the heal.
    let alive = async {
        loop {
            let f = faults.borrow_and_update().clone();
            if f.epoch != epoch {
                return None;
            }
            if !f.black_hole {
                return Some(());
            }
            if faults.changed().await.is_err() {
                return None;
            }
        }
    };
    if alive.await.is_none() {
        let _ = client.set_zero_linger();
        return;
    }
    let Ok(upstream) = TcpStream::connect(("127.0.0.1", target_port)).await else {
        // Target down: the client sees the connection close, as with a refused connect.
        let _ = client.set_zero_linger();
        return;
    };
    let _ = upstream.set_nodelay(true);
    let (mut client, mut upstream) = (client, upstream);
    let reset = {
        let (mut cr, mut cw) = client.split();
        let (mut ur, mut uw) = upstream.split();
        let up = pump(&mut cr, &mut uw, control, true);
        let down = pump(&mut ur, &mut cw, control, false);
        let dropped = wait_dropped(control.faults.subscribe(), epoch);
        tokio::pin!(up, down, dropped);
        let (mut up_done, mut down_done) = (false, false);
        // A clean EOF is passed on as a half-close and the other direction goes on; an error on
        // either side, or a drop, ends the whole connection.
        loop {
            tokio::select! {
                clean = &mut up, if !up_done => {
                    if !clean { break false }
                    up_done = true;
                }
                clean = &mut down, if !down_done => {
                    if !clean { break false }
                    down_done = true;
                }
                reset = &mut dropped => {
                    control.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    break reset;
                }
            }
            if up_done && down_done {
                break false;
            }
        }
    };
    if reset {
        let _ = client.set_zero_linger();
        let _ = upstream.set_zero_linger();
    }
}

/// Resolves once `drop_connections` has been called after `epoch`: whether with a reset.
async fn wait_dropped(mut faults: watch::Receiver<Faults>, epoch: u64) -> bool {
    loop {
        {
            let f = faults.borrow_and_update();
            if f.epoch != epoch {
                return f.reset;
            }
        }
        if faults.changed().await.is_err() {
            // The proxy is gone.
            return true;
        }
    }
}

/// Copies `from` → `to` with the added latency of its direction, pausing in a black hole.
/// `true` when `from` ended cleanly (EOF, passed on as a half-close), `false` on an error.
async fn pump(
    from: &mut ReadHalf<'_>,
    to: &mut WriteHalf<'_>,
    control: &FaultControl,
    upward: bool,
) -> bool {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE_CHUNKS);
    let delay_of = |f: &Faults| if upward { f.up } else { f.down };
    let reader = async move {
        let mut faults = control.faults.subscribe();
        let mut buf = vec![0u8; CHUNK];
        loop {
            // Nothing is read while black-holed: the bytes wait in the kernel buffers.
            while faults.borrow_and_update().black_hole {
                if faults.changed().await.is_err() {
                    return false;
                }
            }
            let n = tokio::select! {
                r = from.read(&mut buf) => match r {
                    Ok(0) => return true,
                    Ok(n) => n,
                    Err(_) => return false,
                },
                // Cancel-safe: a read that had not completed lost nothing.
                _ = faults.changed() => continue,
            };
            let due = Instant::now() + delay_of(&faults.borrow());
            if tx.send((due, buf[..n].to_vec())).await.is_err() {
                return false;
            }
        }
    };
    let writer = async {
        let mut faults = control.faults.subscribe();
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            while faults.borrow_and_update().black_hole {
                if faults.changed().await.is_err() {
                    return false;
                }
            }
            if to.write_all(&chunk).await.is_err() {
                return false;
            }
        }
        // The reader is done (the channel closed): pass the half-close on.
        to.shutdown().await.is_ok()
    };
    tokio::pin!(writer);
    // The writer ends first only on an error (it drains until the reader is done).
    let read_clean = tokio::select! {
        clean = reader => clean,
        _ = &mut writer => return false,
    };
    let write_clean = writer.await;
    read_clean && write_clean
}
