//! W3C trace context (`traceparent`) and how it travels through the pipeline.
//!
//! ```text
//! client ─traceparent?─▶ gateway (request span) ─command envelope "trace"─▶ stream entry
//!        ◀─traceparent──  │                                                  │
//!                         │ ◀── published event, first line "#<ms> <trace-id>" ── worker (apply span)
//!                         └─ delivery logged under the same trace id
//! ```
//!
//! A request without a valid `traceparent` starts a new trace. Every published event
//! starts with a metadata line — `#<publish ms> <trace id or ->` and a newline — that
//! gateways strip before clients see the event: it measures `confab_pubsub_lag_seconds` and
//! brings the trace id back to the delivery.

use std::fmt::Write;

/// A `traceparent`: version 00, trace id, parent span id, flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: String,
    pub span_id: String,
    pub sampled: bool,
}

impl TraceContext {
    /// Parses a `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`); `None` if invalid
    /// (an all-zero id is invalid too, as the spec says).
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let valid = hex(version, 2)
            && version != "ff"
            && hex(trace, 32)
            && hex(span, 16)
            && hex(flags, 2)
            && trace.bytes().any(|b| b != b'0')
            && span.bytes().any(|b| b != b'0')
            && (version != "00" || parts.next().is_none());
        if !valid {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(Self {
            trace_id: trace.to_string(),
            span_id: span.to_string(),
            sampled: flags & 1 == 1,
        })
    }

    /// A new trace (random ids).
    pub fn new_root() -> Self {
        Self {
            trace_id: random_hex(16),
            span_id: random_hex(8),
            sampled: true,
        }
    }

    /// The context of `header`, or a new trace when it is missing or invalid.
    pub fn from_header(header: Option<&str>) -> Self {
        header.and_then(Self::parse).unwrap_or_else(Self::new_root)
    }

    /// The same trace with a new span id (what this hop passes on).
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id.clone(),
            span_id: random_hex(8),
            sampled: self.sampled,
        }
    }

    /// As a `traceparent` header value.
    pub fn header(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }
}

fn random_hex(bytes: usize) -> String {
    let raw = uuid::Uuid::new_v4();
    let mut s = String::with_capacity(bytes * 2);
    for b in raw.as_bytes().iter().take(bytes) {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// What a published event's metadata line says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published<'a> {
    /// When the worker published it (ms since the epoch), if said.
    pub at_ms: Option<u64>,
    /// The trace of the command that produced it, if any.
    pub trace_id: Option<&'a str>,
    /// The event itself (JSON), as clients receive it.
    pub body: &'a str,
}

/// The metadata line to put before an event published at `at_ms` for `trace`.
pub fn publish_prefix(at_ms: u64, trace: Option<&str>) -> String {
    let id = trace
        .and_then(TraceContext::parse)
        .map(|t| t.trace_id)
        .unwrap_or_else(|| "-".into());
    format!("#{at_ms} {id}\n")
}

/// Splits a published payload into its metadata and the event (a payload without the
/// line is all event).
pub fn split_published(payload: &str) -> Published<'_> {
    let Some(rest) = payload.strip_prefix('#') else {
        return Published {
            at_ms: None,
            trace_id: None,
            body: payload,
        };
    };
    let (line, body) = rest.split_once('\n').unwrap_or((rest, ""));
    let (at, trace) = line.split_once(' ').unwrap_or((line, "-"));
    Published {
        at_ms: at.parse().ok(),
        trace_id: (trace != "-" && !trace.is_empty()).then_some(trace),
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_parse_and_round_trip() {
        let h = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceContext::parse(h).unwrap_or_else(TraceContext::new_root);
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.header(), h);
        let c = t.child();
        assert_eq!(c.trace_id, t.trace_id);
        assert_ne!(c.span_id, t.span_id);
    }

    #[test]
    fn invalid_traceparents_start_a_new_trace() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
        let fresh = TraceContext::from_header(Some("garbage"));
        assert_eq!(fresh.trace_id.len(), 32);
        assert!(TraceContext::parse(&fresh.header()).is_some());
    }

    #[test]
    fn published_payloads_carry_time_and_trace_before_the_event() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let payload = format!(
            "{}{}",
            publish_prefix(1700, Some(tp)),
            r#"{"type":"message"}"#
        );
        let p = split_published(&payload);
        assert_eq!(p.at_ms, Some(1700));
        assert_eq!(p.trace_id, Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(p.body, r#"{"type":"message"}"#);
        let untraced = format!("{}{{}}", publish_prefix(5, None));
        assert_eq!(split_published(&untraced).trace_id, None);
        assert_eq!(split_published("{}").body, "{}");
    }
}
