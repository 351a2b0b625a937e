//! Latency histograms (microseconds) and the report, printed for people and written as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

/// Highest latency tracked: 10 minutes, in microseconds (larger values are clamped).
const MAX_US: u64 = 600_000_000;

/// A latency histogram in microseconds, 3 significant digits.
#[derive(Clone)]
pub struct Hist(Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Self::new()
    }
}

impl Hist {
    pub fn new() -> Self {
        // Bounds are constants that hdrhistogram accepts (low >= 1, high >= 2 * low, sigfig <= 5).
        #[allow(clippy::expect_used)]
        let h = Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds");
        Hist(h)
    }

    pub fn record_us(&mut self, us: u64) {
        self.0.saturating_record(us.clamp(1, MAX_US));
    }

    pub fn record(&mut self, d: Duration) {
        self.record_us(u64::try_from(d.as_micros()).unwrap_or(MAX_US));
    }

    pub fn merge(&mut self, other: &Hist) {
        // Same bounds on both sides, so adding cannot fail; a failure would only drop samples.
        let _ = self.0.add(&other.0);
    }

    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn summary(&self) -> Latency {
        let h = &self.0;
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
            mean_us: h.mean(),
        }
    }
}

/// Percentiles of a [`Hist`], in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

pub fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

impl Latency {
    pub fn text(&self) -> String {
        if self.count == 0 {
            return "no samples".into();
        }
        format!(
            "p50 {}  p90 {}  p99 {}  max {}  (n={})",
            ms(self.p50_us),
            ms(self.p90_us),
            ms(self.p99_us),
            ms(self.max_us),
            self.count
        )
    }

    pub fn json(&self) -> Value {
        json!({
            "count": self.count,
            "p50_us": self.p50_us,
            "p90_us": self.p90_us,
            "p99_us": self.p99_us,
            "max_us": self.max_us,
            "mean_us": (self.mean_us * 10.0).round() / 10.0,
        })
    }
}

/// Counts by label (HTTP status, error code, close code…), sorted by label.
pub type Counts = BTreeMap<String, u64>;

pub fn bump(counts: &mut Counts, label: &str) {
    match counts.get_mut(label) {
        Some(n) => *n += 1,
        None => {
            counts.insert(label.to_string(), 1);
        }
    }
}

pub fn merge_counts(into: &mut Counts, from: &Counts) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Int(u64),
    /// A number with a unit for people (`/s`, `%`, `MiB`); JSON gets the number.
    Num(f64, &'static str),
    Text(String),
    Latency(Latency),
    Counts(Counts),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    pub name: String,
    pub items: Vec<(String, Item)>,
}

impl Section {
    pub fn new(name: impl Into<String>) -> Self {
        Section {
            name: name.into(),
            items: Vec::new(),
        }
    }
    pub fn int(mut self, k: &str, v: u64) -> Self {
        self.items.push((k.into(), Item::Int(v)));
        self
    }
    pub fn num(mut self, k: &str, v: f64, unit: &'static str) -> Self {
        self.items.push((k.into(), Item::Num(v, unit)));
        self
    }
    pub fn text(mut self, k: &str, v: impl Into<String>) -> Self {
        self.items.push((k.into(), Item::Text(v.into())));
        self
    }
    pub fn latency(mut self, k: &str, v: Latency) -> Self {
        self.items.push((k.into(), Item::Latency(v)));
        self
    }
    pub fn counts(mut self, k: &str, v: Counts) -> Self {
        self.items.push((k.into(), Item::Counts(v)));
        self
    }
}

/// Rounds to 2 decimals for display and JSON.
fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub scenario: String,
    pub sections: Vec<Section>,
}

impl Report {
    pub fn new(scenario: &str) -> Self {
        Report {
            scenario: scenario.into(),
            sections: Vec::new(),
        }
    }

    pub fn push(&mut self, s: Section) {
        self.sections.push(s);
    }

    pub fn text(&self) -> String {
        let mut out = format!("== loadgen {} ==\n", self.scenario);
        for s in &self.sections {
            let _ = writeln!(out, "{}:", s.name);
            let width = s.items.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
            for (k, v) in &s.items {
                let shown = match v {
                    Item::Int(n) => n.to_string(),
                    Item::Num(n, unit) => format!("{:.2}{}{unit}", round2(*n), sep(unit)),
                    Item::Text(t) => t.clone(),
                    Item::Latency(l) => l.text(),
                    Item::Counts(c) if c.is_empty() => "none".into(),
                    Item::Counts(c) => c
                        .iter()
                        .map(|(k, v)| format!("{k}: {v}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                };
                let _ = writeln!(out, "  {k:<width$}  {shown}");
            }
        }
        out
    }

    pub fn json(&self) -> Value {
        let mut sections = Map::new();
        for s in &self.sections {
            let mut m = Map::new();
            for (k, v) in &s.items {
                let j = match v {
                    Item::Int(n) => json!(n),
                    Item::Num(n, _) => json!(round2(*n)),
                    Item::Text(t) => json!(t),
                    Item::Latency(l) => l.json(),
                    Item::Counts(c) => json!(c),
                };
                m.insert(k.clone(), j);
            }
            sections.insert(s.name.clone(), Value::Object(m));
        }
        json!({ "scenario": self.scenario, "sections": sections })
    }
}

fn sep(unit: &str) -> &'static str {
    if unit.is_empty() || unit.starts_with('/') || unit.starts_with('%') {
        ""
    } else {
        " "
    }
}

/// Events per second over `elapsed` (0 when nothing elapsed).
pub fn per_sec(n: u64, elapsed: Duration) -> f64 {
    let s = elapsed.as_secs_f64();
    if s > 0.0 {
        n as f64 / s
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = Hist::new();
        for us in 1..=1000u64 {
            h.record_us(us * 10); // 10 µs .. 10 ms, uniform
        }
        let l = h.summary();
        assert_eq!(l.count, 1000);
        // 3 significant digits: within 0.1% of the exact order statistic.
        let near = |got: u64, want: u64| got.abs_diff(want) * 1000 <= want;
        assert!(near(l.p50_us, 5000), "p50 {}", l.p50_us);
        assert!(near(l.p90_us, 9000), "p90 {}", l.p90_us);
        assert!(near(l.p99_us, 9900), "p99 {}", l.p99_us);
        assert!(near(l.max_us, 10_000), "max {}", l.max_us);
        assert!((l.mean_us - 5005.0).abs() < 10.0, "mean {}", l.mean_us);
    }

    #[test]
    fn tail_is_visible_and_merge_adds() {
        let mut a = Hist::new();
        for _ in 0..990 {
            a.record(Duration::from_micros(200));
        }
        let mut b = Hist::new();
        for _ in 0..10 {
            b.record(Duration::from_millis(50));
        }
        a.merge(&b);
        let l = a.summary();
        assert_eq!(l.count, 1000);
        assert!(l.p50_us.abs_diff(200) <= 1);
        assert!(l.p90_us.abs_diff(200) <= 1);
        // The 99th percentile is the 990th sample (still 200 µs); the max is the 50 ms tail.
        assert!(l.p99_us.abs_diff(200) <= 1, "p99 {}", l.p99_us);
        assert!(l.max_us.abs_diff(50_000) <= 50, "max {}", l.max_us);
    }

    #[test]
    fn empty_and_clamped() {
        assert_eq!(Hist::new().summary(), Latency::default());
        assert_eq!(Hist::new().summary().text(), "no samples");
        let mut h = Hist::new();
        h.record_us(0);
        h.record(Duration::from_secs(100_000));
        let l = h.summary();
        assert_eq!(l.count, 2);
        assert!(l.max_us >= MAX_US && l.max_us <= MAX_US + MAX_US / 1000);
    }

    #[test]
    fn text_and_json_agree() {
        let mut h = Hist::new();
        h.record_us(1500);
        let mut errors = Counts::new();
        bump(&mut errors, "503");
        bump(&mut errors, "503");
        bump(&mut errors, "timeout");
        let mut r = Report::new("rest");
        r.push(
            Section::new("POST messages")
                .int("count", 42)
                .num("rate", 1234.567, "/s")
                .latency("latency", h.summary())
                .counts("errors", errors),
        );
        let text = r.text();
        assert!(text.contains("== loadgen rest =="));
        assert!(text.contains("rate     1234.57/s"), "{text}");
        assert!(text.contains("p50 1.50 ms"), "{text}");
        assert!(text.contains("503: 2, timeout: 1"), "{text}");
        let j = r.json();
        let s = &j["sections"]["POST messages"];
        assert_eq!(s["count"], 42);
        assert_eq!(s["rate"], 1234.57);
        assert_eq!(s["latency"]["p50_us"], 1500);
        assert_eq!(s["errors"]["503"], 2);
    }

    #[test]
    fn rates() {
        assert_eq!(per_sec(500, Duration::from_millis(250)), 2000.0);
        assert_eq!(per_sec(5, Duration::ZERO), 0.0);
    }
}
