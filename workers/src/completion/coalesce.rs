//! Coalescing tiny model chunks into fewer `assistant_delta` events.
//!
//! The first delta goes out at once (time to first token matters most); after that, text is
//! held until [`FLUSH_AFTER`] has passed since the last flush or [`FLUSH_BYTES`] are waiting,
//! so a fast model does not become an event storm while a slow one still streams smoothly.

use std::time::{Duration, Instant};

pub const FLUSH_AFTER: Duration = Duration::from_millis(40);
pub const FLUSH_BYTES: usize = 96;

#[derive(Debug)]
pub struct Coalescer {
    pending: String,
    last_flush: Option<Instant>,
    next_seq: u64,
}

impl Default for Coalescer {
    fn default() -> Self {
        Self::new()
    }
}

impl Coalescer {
    pub fn new() -> Self {
        Self {
            pending: String::new(),
            last_flush: None,
            next_seq: 0,
        }
    }

    /// Adds text; returns `(seq, delta)` when it should be sent now.
    pub fn push(&mut self, text: &str, now: Instant) -> Option<(u64, String)> {
        self.pending.push_str(text);
        if self.pending.is_empty() {
            return None;
        }
        let due = match self.last_flush {
            None => true,
            Some(t) => now.duration_since(t) >= FLUSH_AFTER || self.pending.len() >= FLUSH_BYTES,
        };
        if due {
            self.take(now)
        } else {
            None
        }
    }

    /// When held text should be flushed even if no more arrives.
    pub fn deadline(&self) -> Option<Instant> {
        match (self.pending.is_empty(), self.last_flush) {
            (false, Some(t)) => Some(t + FLUSH_AFTER),
            _ => None,
        }
    }

    /// Flushes whatever is held.
    pub fn take(&mut self, now: Instant) -> Option<(u64, String)> {
        if self.pending.is_empty() {
            return None;
        }
        self.last_flush = Some(now);
        let seq = self.next_seq;
        self.next_seq += 1;
        Some((seq, std::mem::take(&mut self.pending)))
    }

    /// The seq of the last flushed delta (`None` before the first).
    pub fn last_seq(&self) -> Option<u64> {
        self.next_seq.checked_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_delta_is_never_held() {
        let mut c = Coalescer::new();
        let t0 = Instant::now();
        assert_eq!(c.push("Hel", t0), Some((0, "Hel".into())));
    }

    #[test]
    fn tiny_chunks_are_merged_until_the_timer() {
        let mut c = Coalescer::new();
        let t0 = Instant::now();
        c.push("a", t0);
        assert_eq!(c.push("b", t0 + Duration::from_millis(5)), None);
        assert_eq!(c.push("c", t0 + Duration::from_millis(10)), None);
        assert_eq!(c.deadline(), Some(t0 + FLUSH_AFTER));
        assert_eq!(c.push("d", t0 + FLUSH_AFTER), Some((1, "bcd".into())));
        assert_eq!(c.last_seq(), Some(1));
    }

    #[test]
    fn a_large_backlog_flushes_early() {
        let mut c = Coalescer::new();
        let t0 = Instant::now();
        c.push("x", t0);
        let big = "y".repeat(FLUSH_BYTES);
        assert_eq!(c.push(&big, t0 + Duration::from_millis(1)), Some((1, big)));
    }

    #[test]
    fn concatenation_is_lossless_and_seq_is_dense() {
        let mut c = Coalescer::new();
        let t0 = Instant::now();
        let mut out = Vec::new();
        for i in 0..200u64 {
            if let Some(d) = c.push(&format!("t{i} "), t0 + Duration::from_millis(i * 3)) {
                out.push(d);
            }
        }
        out.extend(c.take(t0 + Duration::from_secs(1)));
        let text: String = out.iter().map(|(_, d)| d.as_str()).collect();
        let expected: String = (0..200).map(|i| format!("t{i} ")).collect();
        assert_eq!(text, expected);
        assert!(out.iter().enumerate().all(|(i, (s, _))| *s == i as u64));
        assert!(
            out.len() < 200 / 3,
            "coalescing should merge chunks: {} deltas",
            out.len()
        );
    }
}
