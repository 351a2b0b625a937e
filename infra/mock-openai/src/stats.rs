//! Request counters (`GET /_mock/stats`), `fail=N` bookkeeping and the
//! per-request guard that counts aborts and writes the request log line.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Live counters shared by all requests.
#[derive(Debug, Default)]
pub struct Stats {
    requests: AtomicU64,
    completed: AtomicU64,
    aborted: AtomicU64,
    in_flight: AtomicU64,
    cut: AtomicU64,
    stream_errors: AtomicU64,
    by_status: Mutex<BTreeMap<u16, u64>>,
    failures: Mutex<HashMap<u64, u32>>,
    last_messages: Mutex<Vec<String>>,
}

/// JSON shape of `GET /_mock/stats`.
///
/// `requests` counts chat completion requests; `completed` the ones answered
/// in full; `aborted` the ones whose client went away before the end;
/// `in_flight` the ones still running; `by_status` the HTTP status sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    pub requests: u64,
    pub completed: u64,
    pub aborted: u64,
    pub in_flight: u64,
    /// Streams ended on purpose by `cut=K`.
    #[serde(default)]
    pub cut: u64,
    /// Streams ended on purpose by `stream_error`.
    #[serde(default)]
    pub stream_errors: u64,
    pub by_status: BTreeMap<String, u64>,
    /// The messages of the most recent chat request, as `role: text` (context checks).
    #[serde(default)]
    pub last_messages: Vec<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            completed: self.completed.load(Ordering::Relaxed),
            aborted: self.aborted.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            cut: self.cut.load(Ordering::Relaxed),
            stream_errors: self.stream_errors.load(Ordering::Relaxed),
            by_status: lock(&self.by_status)
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            last_messages: lock(&self.last_messages).clone(),
        }
    }

    /// Remembers the messages of the latest request.
    pub fn record_messages(&self, messages: impl Iterator<Item = String>) {
        *lock(&self.last_messages) = messages.collect();
    }

    /// Zeroes the counters and forgets `fail=N` history. `in_flight` is a
    /// gauge of running requests and is left as is.
    pub fn reset(&self) {
        for c in [
            &self.requests,
            &self.completed,
            &self.aborted,
            &self.cut,
            &self.stream_errors,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        lock(&self.by_status).clear();
        lock(&self.failures).clear();
        lock(&self.last_messages).clear();
    }

    /// `fail=N`: true for the first `times` calls with the same `key`.
    pub fn should_fail(&self, key: u64, times: u32) -> bool {
        let mut failures = lock(&self.failures);
        let seen = failures.entry(key).or_insert(0);
        if *seen < times {
            *seen += 1;
            true
        } else {
            false
        }
    }
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not finished: if dropped like this the client went away.
    Pending,
    Completed,
    /// An HTTP error status was answered.
    Error,
    Cut,
    StreamError,
}

/// Fields of the request log line. `prompt` is a preview of at most 80
/// characters; auth headers are never recorded.
#[derive(Debug, Clone, Default)]
pub struct LogFields {
    pub id: String,
    pub model: String,
    pub stream: bool,
    pub tokens: usize,
    pub prompt: String,
    pub directives: String,
}

/// Counts one request from start to end; logs it when dropped.
#[derive(Debug)]
pub struct RequestGuard {
    stats: Arc<Stats>,
    outcome: Outcome,
    status: Option<u16>,
    started: Instant,
    pub log: LogFields,
}

impl RequestGuard {
    pub fn start(stats: Arc<Stats>) -> Self {
        stats.requests.fetch_add(1, Ordering::Relaxed);
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        Self {
            stats,
            outcome: Outcome::Pending,
            status: None,
            started: Instant::now(),
            log: LogFields::default(),
        }
    }

    /// Records the HTTP status sent to the client (once).
    pub fn respond(&mut self, status: u16) {
        if self.status.is_none() {
            self.status = Some(status);
            *lock(&self.stats.by_status).entry(status).or_insert(0) += 1;
        }
    }

    /// Records an error response.
    pub fn error(&mut self, status: u16) {
        self.respond(status);
        self.outcome = Outcome::Error;
    }

    pub fn finish(&mut self, outcome: Outcome) {
        self.outcome = outcome;
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let s = &self.stats;
        s.in_flight.fetch_sub(1, Ordering::Relaxed);
        let (counter, label) = match self.outcome {
            Outcome::Pending => (Some(&s.aborted), "aborted"),
            Outcome::Completed => (Some(&s.completed), "completed"),
            Outcome::Cut => (Some(&s.cut), "cut"),
            Outcome::StreamError => (Some(&s.stream_errors), "stream_error"),
            Outcome::Error => (None, "error"),
        };
        if let Some(c) = counter {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let l = &self.log;
        tracing::info!(
            target: "mock_openai::request",
            id = %l.id,
            status = self.status.unwrap_or(0),
            outcome = label,
            model = %l.model,
            stream = l.stream,
            tokens = l.tokens,
            elapsed_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            directives = %l.directives,
            prompt = %l.prompt,
            "chat completion"
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn guard_counts_outcomes() {
        let stats = Arc::new(Stats::default());
        {
            let mut g = RequestGuard::start(stats.clone());
            g.respond(200);
            assert_eq!(stats.snapshot().in_flight, 1);
            g.finish(Outcome::Completed);
        }
        {
            let mut g = RequestGuard::start(stats.clone());
            g.respond(200);
        }
        {
            let mut g = RequestGuard::start(stats.clone());
            g.error(429);
        }
        let s = stats.snapshot();
        assert_eq!(
            (s.requests, s.completed, s.aborted, s.in_flight),
            (3, 1, 1, 0)
        );
        assert_eq!(s.by_status.get("200"), Some(&2));
        assert_eq!(s.by_status.get("429"), Some(&1));
        stats.reset();
        assert_eq!(stats.snapshot(), StatsSnapshot::default());
    }

    #[test]
    fn should_fail_counts_per_key() {
        let stats = Stats::default();
        assert!(stats.should_fail(1, 2));
        assert!(stats.should_fail(1, 2));
        assert!(!stats.should_fail(1, 2));
        assert!(stats.should_fail(2, 1));
        stats.reset();
        assert!(stats.should_fail(1, 2));
    }
}
