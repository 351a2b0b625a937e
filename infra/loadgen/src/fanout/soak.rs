//! `--sample D`: every D of the send phase, the gateways' RSS and open file descriptors, the
//! send and delivery rates and the window's delivery p99; then whether they stayed flat.
//!
//! The judgement is a pure function of the samples ([`judge`]), so its thresholds are tested:
//! after `--warmup`, RSS may spread by at most [`RSS_SPREAD_MAX_PCT`] and no window's p99 may
//! exceed [`P99_RATIO_MAX`] × the median window's; open fds, counted once the churn has
//! stopped, must come back to what they were before the send phase.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::churn;
use super::conn::Shared;
use crate::report::{ms, Section};
use crate::sys;

/// Allowed RSS spread after warm-up: (max − min) / min.
pub const RSS_SPREAD_MAX_PCT: f64 = 10.0;
/// Allowed ratio of the worst window's p99 to the median window's.
pub const P99_RATIO_MAX: f64 = 2.0;
/// Open fds a gateway may hold above its count before the send phase, once churn has gone
/// (a Redis connection re-made, a listener): anything like the churn rate is a leak.
pub const FD_SLACK: u64 = 8;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// Since the start of the send phase.
    pub at: Duration,
    /// Summed over the watched gateways (KiB, count).
    pub rss_kib: u64,
    pub fds: u64,
    pub sent_per_sec: f64,
    pub delivered_per_sec: f64,
    pub churn_per_sec: f64,
    pub p99_us: u64,
}

/// Open file descriptors of `pid`, from /proc/PID/fd.
pub fn fd_count(pid: u32) -> Option<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count() as u64)
}

/// RSS (KiB) and open fds summed over `pids`; `None` when one cannot be read.
pub fn gateways(pids: &[u32]) -> Option<(u64, u64)> {
    let mut rss = 0;
    let mut fds = 0;
    for p in pids {
        rss += sys::sample(&p.to_string())?.rss_kib;
        fds += fd_count(*p)?;
    }
    Some((rss, fds))
}

/// Samples every `every` until `until`.
pub async fn sample(
    pids: Vec<u32>,
    shared: Arc<Shared>,
    churn: Arc<churn::Stats>,
    start: Instant,
    until: Instant,
    every: Duration,
) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut last = (
        Instant::now(),
        shared.sent.load(Relaxed),
        shared.received.load(Relaxed),
        churn.opened.load(Relaxed),
    );
    let mut tick = tokio::time::interval_at(start + every, every);
    loop {
        let now = tick.tick().await;
        if now > until + every / 2 {
            break;
        }
        let (sent, received, opened) = (
            shared.sent.load(Relaxed),
            shared.received.load(Relaxed),
            churn.opened.load(Relaxed),
        );
        let secs = now.duration_since(last.0).as_secs_f64().max(1e-3);
        let window = shared
            .window
            .lock()
            .map(|mut h| std::mem::take(&mut *h).summary())
            .unwrap_or_default();
        let (rss_kib, fds) = gateways(&pids).unwrap_or_default();
        out.push(Sample {
            at: now.duration_since(start),
            rss_kib,
            fds,
            sent_per_sec: (sent - last.1) as f64 / secs,
            delivered_per_sec: (received - last.2) as f64 / secs,
            churn_per_sec: (opened - last.3) as f64 / secs,
            p99_us: window.p99_us,
        });
        last = (now, sent, received, opened);
        if now >= until {
            break;
        }
    }
    out
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verdict {
    pub judged: usize,
    pub rss_min_kib: u64,
    pub rss_max_kib: u64,
    pub rss_spread_pct: f64,
    pub p99_median_us: u64,
    pub p99_max_us: u64,
    pub rss_flat: bool,
    pub p99_stable: bool,
}

/// Judges the samples taken after `warmup`.
pub fn judge(samples: &[Sample], warmup: Duration) -> Verdict {
    let judged: Vec<&Sample> = samples.iter().filter(|s| s.at > warmup).collect();
    if judged.is_empty() {
        return Verdict::default();
    }
    let rss_min_kib = judged.iter().map(|s| s.rss_kib).min().unwrap_or(0);
    let rss_max_kib = judged.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let rss_spread_pct = if rss_min_kib > 0 {
        (rss_max_kib - rss_min_kib) as f64 / rss_min_kib as f64 * 100.0
    } else {
        0.0
    };
    let mut p99: Vec<u64> = judged.iter().map(|s| s.p99_us).collect();
    p99.sort_unstable();
    let p99_median_us = p99[p99.len() / 2];
    let p99_max_us = p99[p99.len() - 1];
    Verdict {
        judged: judged.len(),
        rss_min_kib,
        rss_max_kib,
        rss_spread_pct,
        p99_median_us,
        p99_max_us,
        rss_flat: rss_min_kib > 0 && rss_spread_pct <= RSS_SPREAD_MAX_PCT,
        p99_stable: p99_median_us > 0 && p99_max_us as f64 <= P99_RATIO_MAX * p99_median_us as f64,
    }
}

/// The report: one line per window, then the verdict and the fd check.
pub fn section(
    samples: &[Sample],
    warmup: Duration,
    fds_before: Option<u64>,
    fds_after: Option<u64>,
) -> Section {
    let mut s = Section::new("soak");
    for (i, w) in samples.iter().enumerate() {
        s = s.text(
            &format!("window {:>3}", i + 1),
            format!(
                "t={:>5.0}s rss {:>7.1} MiB fds {:>6} sent {:>6.0}/s delivered {:>7.0}/s churn {:>4.0}/s p99 {}",
                w.at.as_secs_f64(),
                w.rss_kib as f64 / 1024.0,
                w.fds,
                w.sent_per_sec,
                w.delivered_per_sec,
                w.churn_per_sec,
                ms(w.p99_us)
            ),
        );
    }
    let v = judge(samples, warmup);
    let yes_no = |b: bool| if b { "yes" } else { "NO" };
    s = s
        .int("windows judged (after warm-up)", v.judged as u64)
        .num("rss min", v.rss_min_kib as f64 / 1024.0, "MiB")
        .num("rss max", v.rss_max_kib as f64 / 1024.0, "MiB")
        .num("rss spread", v.rss_spread_pct, "%")
        .text(
            &format!("rss flat (spread <= {RSS_SPREAD_MAX_PCT}%)"),
            yes_no(v.rss_flat),
        )
        .text("p99 median window", ms(v.p99_median_us))
        .text("p99 worst window", ms(v.p99_max_us))
        .text(
            &format!("p99 stable (worst <= {P99_RATIO_MAX}x median)"),
            yes_no(v.p99_stable),
        );
    match (fds_before, fds_after) {
        (Some(b), Some(a)) => s
            .int("fds before the send phase", b)
            .int("fds after it and the churn", a)
            .text(
                &format!("no fd leak (after <= before + {FD_SLACK})"),
                yes_no(a <= b + FD_SLACK),
            ),
        _ => s.text("fds", "not readable (pass --gateway-pid)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, rss_kib: u64, p99_us: u64) -> Sample {
        Sample {
            at: Duration::from_secs(secs),
            rss_kib,
            p99_us,
            ..Default::default()
        }
    }

    #[test]
    fn flat_memory_and_steady_latency_pass() {
        let s: Vec<Sample> = (1..=10)
            .map(|i| at(i * 10, 100_000 + i * 500, 10_000 + i * 100))
            .collect();
        let v = judge(&s, Duration::from_secs(20));
        assert_eq!(v.judged, 8);
        assert_eq!((v.rss_min_kib, v.rss_max_kib), (101_500, 105_000));
        assert!(v.rss_flat && v.p99_stable, "{v:?}");
    }

    #[test]
    fn warm_up_growth_is_not_judged_but_later_growth_is() {
        let mut s = vec![at(10, 10_000, 5_000), at(20, 50_000, 5_000)];
        s.extend((3..=9).map(|i| at(i * 10, 100_000, 5_000)));
        assert!(judge(&s, Duration::from_secs(20)).rss_flat);
        assert!(!judge(&s, Duration::from_secs(0)).rss_flat);
        s.push(at(100, 111_000, 5_000));
        let v = judge(&s, Duration::from_secs(20));
        assert!(!v.rss_flat, "11% is not flat: {v:?}");
    }

    #[test]
    fn one_slow_window_breaks_stability() {
        let mut s: Vec<Sample> = (1..=9).map(|i| at(i * 10, 100_000, 10_000)).collect();
        s.push(at(100, 100_000, 20_000));
        assert!(judge(&s, Duration::ZERO).p99_stable, "2x is allowed");
        s.push(at(110, 100_000, 20_001));
        s.push(at(120, 100_000, 50_000));
        assert!(!judge(&s, Duration::ZERO).p99_stable);
    }

    #[test]
    fn nothing_to_judge_is_not_a_pass() {
        let v = judge(&[at(10, 1, 1)], Duration::from_secs(60));
        assert_eq!(v.judged, 0);
        assert!(!v.rss_flat && !v.p99_stable);
        let no_latency: Vec<Sample> = (1..=3).map(|i| at(i, 100, 0)).collect();
        assert!(!judge(&no_latency, Duration::ZERO).p99_stable);
    }

    #[test]
    fn the_section_says_whether_fds_leaked() {
        let s: Vec<Sample> = (1..=3).map(|i| at(i, 100, 10)).collect();
        let json = |after| {
            let mut r = crate::report::Report::new("t");
            r.push(section(&s, Duration::ZERO, Some(2040), Some(after)));
            r.json()
        };
        let (ok, leak) = (json(2045), json(2540));
        let text = |v: &serde_json::Value| v.to_string();
        assert!(
            text(&ok).contains(r#""no fd leak (after <= before + 8)":"yes""#),
            "{ok}"
        );
        assert!(
            text(&leak).contains(r#""no fd leak (after <= before + 8)":"NO""#),
            "{leak}"
        );
    }
}
