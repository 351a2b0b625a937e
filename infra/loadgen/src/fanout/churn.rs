//! `--churn R`: during the send phase, R extra WebSockets per second connect, subscribe to a
//! chat, stay `--churn-hold` receiving, and go: half with a close frame, half by dropping the
//! TCP connection, the way browsers and phones leave. They are not part of the delivery
//! checks; what they test is that connecting and leaving costs the gateway nothing that lasts.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use crate::http::Target;
use crate::report::{bump, Counts, Hist};
use crate::ws;

/// Bound on one churn connection's connect + subscribe.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Spec {
    pub targets: Vec<Target>,
    /// (session token, conversation) pairs whose user is a member of the chat: churn
    /// connection `i` takes pair `i % len`.
    pub members: Vec<(Arc<str>, Arc<str>)>,
    /// Connections per second.
    pub rate: f64,
    pub hold: Duration,
}

#[derive(Default)]
pub struct Stats {
    /// Subscribed churn connections, and how many of them have gone again.
    pub opened: AtomicU64,
    pub closed: AtomicU64,
    /// Ticks skipped because too many churn connections were still in flight.
    pub skipped: AtomicU64,
    pub failed: Mutex<Counts>,
    /// Connect + subscribe time.
    pub connect: Mutex<Hist>,
}

impl Stats {
    pub fn failures(&self) -> Counts {
        self.failed.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

/// Opens churn connections at `spec.rate` until `until`, then waits (at most `CONNECT_TIMEOUT`
/// + hold + a little) for the last ones to go.
pub async fn run(spec: Arc<Spec>, stats: Arc<Stats>, until: Instant) {
    if spec.rate <= 0.0 || spec.targets.is_empty() || spec.members.is_empty() {
        return;
    }
    let period = Duration::from_secs_f64(1.0 / spec.rate);
    // Enough for every connection of one connect timeout plus one hold, no more.
    let max_in_flight =
        ((spec.rate * (CONNECT_TIMEOUT + spec.hold).as_secs_f64()).ceil() as usize).max(1);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut tasks = JoinSet::new();
    let mut i = 0usize;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        }
        if Instant::now() >= until {
            break;
        }
        if tasks.len() >= max_in_flight {
            stats.skipped.fetch_add(1, Relaxed);
            continue;
        }
        tasks.spawn(one(i, spec.clone(), stats.clone()));
        i = i.wrapping_add(1);
    }
    let _ = tokio::time::timeout(
        CONNECT_TIMEOUT + spec.hold + Duration::from_secs(2),
        async { while tasks.join_next().await.is_some() {} },
    )
    .await;
    tasks.abort_all();
}

async fn one(i: usize, spec: Arc<Spec>, stats: Arc<Stats>) {
    let target = &spec.targets[i % spec.targets.len()];
    let (token, conversation) = &spec.members[i % spec.members.len()];
    let started = Instant::now();
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, async {
        let mut ws = ws::connect(target, Some(token)).await?;
        ws::subscribe(&mut ws, conversation, CONNECT_TIMEOUT).await?;
        Ok::<_, anyhow::Error>(ws)
    })
    .await;
    let mut ws = match connected {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            if let Ok(mut f) = stats.failed.lock() {
                bump(&mut f, &e.to_string().chars().take(60).collect::<String>());
            }
            return;
        }
        Err(_) => {
            if let Ok(mut f) = stats.failed.lock() {
                bump(&mut f, "timeout");
            }
            return;
        }
    };
    if let Ok(mut h) = stats.connect.lock() {
        h.record(started.elapsed());
    }
    stats.opened.fetch_add(1, Relaxed);
    // Receive (and drop) the chat's traffic while staying.
    let _ = tokio::time::timeout(spec.hold, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    if i.is_multiple_of(2) {
        // A clean close: our close frame, then the server's, then EOF.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = ws.close(None).await;
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    }
    // Otherwise (and after the close) dropping the stream drops the TCP connection.
    drop(ws);
    stats.closed.fetch_add(1, Relaxed);
}
