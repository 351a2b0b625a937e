//! `[[mock ...]]` directives embedded in the last user message.
//!
//! Syntax: `[[mock key=value flag ...]]`; items are separated by whitespace
//! or commas, the word `mock` is case-insensitive, several blocks may appear
//! and later values win. Blocks are removed from the text the demo model
//! echoes. Unknown or malformed items are collected in
//! [`Directives::unknown`] (and logged) instead of failing the request.

/// Chunks streamed before `stream_error` fires when no count is given.
pub const DEFAULT_STREAM_ERROR_AFTER: usize = 2;
/// Upper bound for `tokens=N` so a typo cannot allocate gigabytes.
pub const MAX_TOKENS_DIRECTIVE: usize = 100_000;
/// Upper bound for `delay_ms=N` (10 minutes).
pub const MAX_DELAY_MS: u64 = 600_000;

const OPEN: &str = "[[mock";
const CLOSE: &str = "]]";

/// Per-request behaviour requested through `[[mock ...]]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    /// `tps=N`: pacing override in tokens per second (0 = unpaced).
    pub tps: Option<u32>,
    /// `tokens=N`: reply with exactly N tokens `w1 w2 … wN`.
    pub tokens: Option<usize>,
    /// `status=N` (400..=599): answer with this HTTP error.
    pub status: Option<u16>,
    /// `retry_after=S`: `Retry-After` seconds for `status=429` (default 1).
    pub retry_after: Option<u64>,
    /// `fail=N`: the failure applies to the first N identical requests only.
    pub fail: Option<u32>,
    /// `cut=K`: stream K content chunks, then drop the connection.
    pub cut: Option<usize>,
    /// `stream_error[=K]`: after K content chunks send an error event, then close.
    pub stream_error: Option<usize>,
    /// `lenient`: omit `id`, `object`, `created`, `model`, `system_fingerprint`.
    pub lenient: bool,
    /// `delay_ms=N`: wait before the first byte of the response.
    pub delay_ms: Option<u64>,
    /// `stamp`: every content token is the server's send time, `⟨t=<unix micros>⟩ `.
    pub stamp: bool,
    /// Items that were not understood, kept for logging.
    pub unknown: Vec<String>,
}

impl Directives {
    /// True when no directive (known or unknown) was given.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// True when a failure mode (status, cut or stream_error) is requested.
    pub fn has_failure(&self) -> bool {
        self.status.is_some() || self.cut.is_some() || self.stream_error.is_some()
    }

    /// Compact `key=value` list of what is set, for logs.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        let mut num = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                parts.push(format!("{k}={v}"));
            }
        };
        num("tps", self.tps.map(|v| v.to_string()));
        num("tokens", self.tokens.map(|v| v.to_string()));
        num("status", self.status.map(|v| v.to_string()));
        num("retry_after", self.retry_after.map(|v| v.to_string()));
        num("fail", self.fail.map(|v| v.to_string()));
        num("cut", self.cut.map(|v| v.to_string()));
        num("stream_error", self.stream_error.map(|v| v.to_string()));
        num("delay_ms", self.delay_ms.map(|v| v.to_string()));
        if self.lenient {
            parts.push("lenient".to_string());
        }
        if self.stamp {
            parts.push("stamp".to_string());
        }
        if !self.unknown.is_empty() {
            // Only a count: the items are user text.
            parts.push(format!("unknown={}", self.unknown.len()));
        }
        parts.join(" ")
    }

    fn apply(&mut self, item: &str) {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim())),
            None => (item.trim().to_ascii_lowercase(), None),
        };
        let ok = match (key.as_str(), value) {
            ("tps", Some(v)) => set(&mut self.tps, v.parse().ok()),
            ("tokens", Some(v)) => set(
                &mut self.tokens,
                v.parse::<usize>().ok().map(|n| n.min(MAX_TOKENS_DIRECTIVE)),
            ),
            ("status", Some(v)) => set(
                &mut self.status,
                v.parse::<u16>().ok().filter(|s| (400..=599).contains(s)),
            ),
            ("retry_after" | "retry-after", Some(v)) => set(&mut self.retry_after, v.parse().ok()),
            ("fail", Some(v)) => set(&mut self.fail, v.parse().ok()),
            ("cut", Some(v)) => set(&mut self.cut, v.parse().ok()),
            ("stream_error", None) => set(&mut self.stream_error, Some(DEFAULT_STREAM_ERROR_AFTER)),
            ("stream_error", Some(v)) => set(&mut self.stream_error, v.parse().ok()),
            ("lenient", None) => {
                self.lenient = true;
                true
            }
            ("stamp", None) => {
                self.stamp = true;
                true
            }
            ("delay_ms" | "delay", Some(v)) => set(
                &mut self.delay_ms,
                v.parse::<u64>().ok().map(|ms| ms.min(MAX_DELAY_MS)),
            ),
            _ => false,
        };
        if !ok {
            self.unknown.push(item.chars().take(40).collect());
        }
    }
}

fn set<T>(slot: &mut Option<T>, value: Option<T>) -> bool {
    match value {
        Some(v) => {
            *slot = Some(v);
            true
        }
        None => false,
    }
}

/// Parses every `[[mock ...]]` block in `text`.
///
/// Returns the merged directives and the text with the blocks removed
/// (trimmed). Text without blocks is returned unchanged apart from trimming.
pub fn parse(text: &str) -> (Directives, String) {
    let mut directives = Directives::default();
    let mut stripped = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = find_open(rest) {
        let after_open = &rest[start + OPEN.len()..];
        let Some(end) = after_open.find(CLOSE) else {
            break;
        };
        for item in after_open[..end].split(|c: char| c.is_whitespace() || c == ',') {
            if !item.is_empty() {
                directives.apply(item);
            }
        }
        stripped.push_str(&rest[..start]);
        rest = &after_open[end + CLOSE.len()..];
    }
    stripped.push_str(rest);
    (directives, stripped.trim().to_string())
}

/// Finds the next `[[mock` that is followed by whitespace or `]]`.
fn find_open(text: &str) -> Option<usize> {
    // ASCII lowercasing keeps byte offsets identical to `text`.
    let lower = text.to_ascii_lowercase();
    let mut from = 0;
    while let Some(pos) = lower[from..].find(OPEN) {
        let at = from + pos;
        let next = &lower[at + OPEN.len()..];
        if next.starts_with(CLOSE) || next.starts_with(|c: char| c.is_whitespace()) {
            return Some(at);
        }
        from = at + OPEN.len();
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_keys_and_strips_block() {
        let (d, text) = parse(
            "Hello [[mock tps=50 tokens=200 status=429 retry_after=3 fail=2 cut=4 \
             stream_error=5 lenient delay_ms=10 stamp]] world",
        );
        assert_eq!(d.tps, Some(50));
        assert_eq!(d.tokens, Some(200));
        assert_eq!(d.status, Some(429));
        assert_eq!(d.retry_after, Some(3));
        assert_eq!(d.fail, Some(2));
        assert_eq!(d.cut, Some(4));
        assert_eq!(d.stream_error, Some(5));
        assert!(d.lenient);
        assert_eq!(d.delay_ms, Some(10));
        assert!(d.stamp);
        assert!(d.unknown.is_empty());
        assert_eq!(text, "Hello  world");
        assert!(d.has_failure());
        assert_eq!(
            d.summary(),
            "tps=50 tokens=200 status=429 retry_after=3 fail=2 cut=4 stream_error=5 \
             delay_ms=10 lenient stamp"
        );
    }

    #[test]
    fn bare_stream_error_defaults_and_commas_work() {
        let (d, text) = parse("[[MOCK stream_error,tps=0]]");
        assert_eq!(d.stream_error, Some(DEFAULT_STREAM_ERROR_AFTER));
        assert_eq!(d.tps, Some(0));
        assert_eq!(text, "");
    }

    #[test]
    fn multiple_blocks_merge_and_later_wins() {
        let (d, text) = parse("a [[mock tps=1]] b [[mock tps=2 lenient]] c");
        assert_eq!(d.tps, Some(2));
        assert!(d.lenient);
        assert_eq!(text, "a  b  c");
    }

    #[test]
    fn malformed_items_are_collected_not_fatal() {
        let (d, _) = parse("[[mock tps=fast status=200 bogus tokens=5]]");
        assert_eq!(d.tps, None);
        assert_eq!(d.status, None);
        assert_eq!(d.tokens, Some(5));
        assert_eq!(d.unknown, vec!["tps=fast", "status=200", "bogus"]);
        assert_eq!(d.summary(), "tokens=5 unknown=3");
    }

    #[test]
    fn text_without_blocks_is_untouched() {
        let (d, text) = parse("  plain [[mockery]] and [[mock unterminated ");
        assert!(d.is_empty());
        assert_eq!(text, "plain [[mockery]] and [[mock unterminated");
    }

    #[test]
    fn stamp_is_a_flag() {
        let (d, _) = parse("[[mock tps=50 tokens=100 stamp]]");
        assert!(d.stamp && !d.has_failure());
        assert_eq!(d.summary(), "tps=50 tokens=100 stamp");
        // `stamp=…` is not a flag: reported as unknown, not applied.
        let (d, _) = parse("[[mock stamp=1]]");
        assert!(!d.stamp);
        assert_eq!(d.unknown, vec!["stamp=1"]);
    }

    #[test]
    fn limits_are_clamped() {
        let (d, _) = parse("[[mock tokens=999999999 delay_ms=999999999]]");
        assert_eq!(d.tokens, Some(MAX_TOKENS_DIRECTIVE));
        assert_eq!(d.delay_ms, Some(MAX_DELAY_MS));
    }

    #[test]
    fn non_ascii_text_around_blocks() {
        let (d, text) = parse("héllo [[mock cut=1]] wörld 🎉");
        assert_eq!(d.cut, Some(1));
        assert_eq!(text, "héllo  wörld 🎉");
    }
}
