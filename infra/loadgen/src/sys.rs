//! The machine around the run: fd limit, /proc CPU and memory of watched processes, Redis INFO.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::args::Args;
use crate::report::Section;

/// Kernel clock ticks per second for /proc/PID/stat times (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok((_, hard)) => rlimit::increase_nofile_limit(hard).unwrap_or(0),
        Err(_) => 0,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcSample {
    pub rss_kib: u64,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
}

/// `VmRSS` from a /proc/PID/status text, in KiB.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// utime + stime from a /proc/PID/stat line (fields 14 and 15; the name may hold spaces).
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, after) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state), so field N is at index N - 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

pub fn sample(pid: &str) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(ProcSample {
        rss_kib: parse_vm_rss(&status)?,
        cpu_ticks: parse_cpu_ticks(&stat)?,
    })
}

/// Machine-wide CPU from the first line of /proc/stat: `(busy, total)` in ticks, all cores.
pub fn parse_proc_stat(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    // idle + iowait are not busy.
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

fn machine() -> Option<(u64, u64)> {
    parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// CPU use and resident memory of the generator and the processes named on the command line,
/// plus the whole machine's CPU, between [`Watch::start`] (or [`Watch::restart`]) and
/// [`Watch::section`].
pub struct Watch {
    procs: Vec<(String, String, Option<ProcSample>)>,
    machine: Option<(u64, u64)>,
    at: Instant,
}

impl Watch {
    pub fn start(args: &Args) -> Self {
        let mut procs = vec![("loadgen".to_string(), "self".to_string())];
        let groups = [
            ("gateway", &args.gateway_pids),
            ("worker", &args.worker_pids),
            ("redis", &args.redis_pids),
        ];
        for (label, pids) in groups {
            for pid in pids {
                procs.push((format!("{label} {pid}"), pid.to_string()));
            }
        }
        let mut w = Watch {
            procs: procs.into_iter().map(|(l, p)| (l, p, None)).collect(),
            machine: None,
            at: Instant::now(),
        };
        w.restart();
        w
    }

    /// Restarts the CPU window (e.g. after setup) keeping the processes.
    pub fn restart(&mut self) {
        for (_, pid, s) in &mut self.procs {
            *s = sample(pid);
        }
        self.machine = machine();
        self.at = Instant::now();
    }

    pub fn section(&self, name: &str) -> Section {
        self.measure(name).0
    }

    /// The section of [`Watch::section`] plus each readable process's figures.
    pub fn measure(&self, name: &str) -> (Section, Vec<ProcUsage>) {
        let secs = self.at.elapsed().as_secs_f64().max(1e-9);
        let mut sec = Section::new(name);
        let mut usages = Vec::new();
        let mut watched_ticks = 0u64;
        for (label, pid, before) in &self.procs {
            match (before, sample(pid)) {
                (Some(b), Some(a)) => {
                    let ticks = a.cpu_ticks.saturating_sub(b.cpu_ticks);
                    watched_ticks += ticks;
                    let u = ProcUsage {
                        label: label.clone(),
                        cpu_pct: ticks as f64 / TICKS_PER_SEC / secs * 100.0,
                        rss_before_kib: b.rss_kib,
                        rss_after_kib: a.rss_kib,
                    };
                    sec = sec.text(
                        label,
                        format!(
                            "cpu {:.0}% of a core, VmRSS {:.1} -> {:.1} MiB",
                            u.cpu_pct,
                            b.rss_kib as f64 / 1024.0,
                            a.rss_kib as f64 / 1024.0
                        ),
                    );
                    usages.push(u);
                }
                _ => sec = sec.text(label, "not readable"),
            }
        }
        if let (Some((b_busy, b_total)), Some((a_busy, a_total))) = (self.machine, machine()) {
            let busy = a_busy.saturating_sub(b_busy);
            let total = a_total.saturating_sub(b_total).max(1);
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            sec = sec
                .num("machine busy", busy as f64 / total as f64 * 100.0, "%")
                .num(
                    "other processes",
                    busy.saturating_sub(watched_ticks) as f64 / total as f64 * cores * 100.0,
                    "% of a core",
                );
        }
        (sec, usages)
    }
}

/// One watched process over the measured window.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcUsage {
    /// `loadgen`, `gateway <pid>`, `worker <pid>`, `redis <pid>`.
    pub label: String,
    /// CPU time over wall time, in % of one core.
    pub cpu_pct: f64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
}

impl ProcUsage {
    /// VmRSS growth over the window in KiB (negative when it shrank).
    pub fn rss_delta_kib(&self) -> f64 {
        self.rss_after_kib as f64 - self.rss_before_kib as f64
    }
}

/// `field:value` lines of a Redis INFO answer.
pub fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines().find_map(|l| {
        l.strip_prefix(field)
            .and_then(|r| r.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    })
}

#[derive(Debug, Clone, PartialEq)]
pub struct RedisSample {
    pub used_memory: u64,
    /// used_cpu_user + used_cpu_sys, seconds.
    pub cpu_secs: f64,
    /// `INFO commandstats`: command → (calls, usec).
    pub commands: BTreeMap<String, (u64, u64)>,
    /// A replica (`role:slave`): its work is the replication of the primaries' writes.
    pub replica: bool,
    pub at: Instant,
}

/// `cmdstat_<name>:calls=N,usec=N,...` lines of `INFO commandstats`.
pub fn parse_commandstats(info: &str) -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    for line in info.lines() {
        let Some((name, rest)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let mut calls = None;
        let mut usec = None;
        for kv in rest.trim().split(',') {
            match kv.split_once('=') {
                Some(("calls", v)) => calls = v.parse().ok(),
                Some(("usec", v)) => usec = v.parse().ok(),
                _ => {}
            }
        }
        if let (Some(c), Some(u)) = (calls, usec) {
            out.insert(name.to_string(), (c, u));
        }
    }
    out
}

/// The commands that took most of Redis's time between two samples, busiest first:
/// `(name, calls, usec)`.
pub fn top_commands(
    before: &BTreeMap<String, (u64, u64)>,
    after: &BTreeMap<String, (u64, u64)>,
    n: usize,
) -> Vec<(String, u64, u64)> {
    let mut v: Vec<(String, u64, u64)> = after
        .iter()
        .map(|(k, &(c, u))| {
            let (bc, bu) = before.get(k).copied().unwrap_or((0, 0));
            (k.clone(), c.saturating_sub(bc), u.saturating_sub(bu))
        })
        .filter(|(_, c, _)| *c > 0)
        .collect();
    v.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

pub async fn redis_sample(url: &str) -> anyhow::Result<RedisSample> {
    let client = redis::Client::open(url)?;
    let mut conn = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await??;
    let mem: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await?;
    let cpu: String = redis::cmd("INFO").arg("cpu").query_async(&mut conn).await?;
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await?;
    let repl: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut conn)
        .await?;
    let num = |s: &str, f: &str| info_field(s, f).and_then(|v| v.parse::<f64>().ok());
    Ok(RedisSample {
        used_memory: num(&mem, "used_memory").unwrap_or(0.0) as u64,
        cpu_secs: num(&cpu, "used_cpu_user").unwrap_or(0.0)
            + num(&cpu, "used_cpu_sys").unwrap_or(0.0),
        commands: parse_commandstats(&stats),
        replica: repl.contains("role:slave"),
        at: Instant::now(),
    })
}

/// Every node of `--redis-url` (a comma-separated list for a cluster), sampled one by one.
pub struct RedisSamples(Vec<(String, RedisSample)>);

async fn sample_all(urls: &str) -> anyhow::Result<RedisSamples> {
    let mut out = Vec::new();
    for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        out.push((url.to_string(), redis_sample(url).await?));
    }
    Ok(RedisSamples(out))
}

/// Reads Redis before the run (when `--redis-url` is given).
pub async fn redis_before(args: &Args) -> Option<RedisSamples> {
    let url = args.redis_url.as_deref()?;
    match sample_all(url).await {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("loadgen: cannot read Redis INFO from {url}: {e:#}");
            None
        }
    }
}

/// Commands counted per send: everything but the load generator's own INFO reads.
fn counted_calls(before: &RedisSample, after: &RedisSample) -> u64 {
    top_commands(&before.commands, &after.commands, usize::MAX)
        .iter()
        .filter(|(name, _, _)| name != "info")
        .map(|c| c.1)
        .sum()
}

/// The Redis section: memory, CPU, the busiest commands, and — when `sends` is given — the
/// cost of one send: Redis CPU µs and commands (those inside scripts included). For a
/// cluster, every node's CPU and its share of the scripts it ran (the stream work).
pub async fn redis_section(
    args: &Args,
    before: Option<RedisSamples>,
    sends: Option<u64>,
) -> Option<Section> {
    let before = before?;
    let after = sample_all(args.redis_url.as_deref()?).await.ok()?;
    let pairs: Vec<(&String, &RedisSample, &RedisSample)> = before
        .0
        .iter()
        .zip(&after.0)
        .map(|((url, b), (_, a))| (url, b, a))
        .collect();
    let first = pairs.first()?;
    let secs = first
        .2
        .at
        .duration_since(first.1.at)
        .as_secs_f64()
        .max(1e-9);
    let mib = |n: u64| n as f64 / (1024.0 * 1024.0);
    let sum = |f: &dyn Fn(&RedisSample, &RedisSample) -> f64| -> f64 {
        pairs.iter().map(|(_, b, a)| f(b, a)).sum()
    };
    let mem_before: u64 = pairs.iter().map(|(_, b, _)| b.used_memory).sum();
    let mem_after: u64 = pairs.iter().map(|(_, _, a)| a.used_memory).sum();
    let cpu_secs = sum(&|b, a| a.cpu_secs - b.cpu_secs);
    let calls = sum(&|b, a| counted_calls(b, a) as f64);
    // Commands of all nodes together, busiest first.
    let mut merged_before: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut merged_after: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (_, b, a) in &pairs {
        for (m, s) in [(&mut merged_before, b), (&mut merged_after, a)] {
            for (k, (c, u)) in &s.commands {
                let e = m.entry(k.clone()).or_insert((0, 0));
                e.0 += c;
                e.1 += u;
            }
        }
    }
    let top = top_commands(&merged_before, &merged_after, 6);
    let all_usec: u64 = top_commands(&merged_before, &merged_after, usize::MAX)
        .iter()
        .map(|c| c.2)
        .sum();
    let mut s = Section::new("redis")
        .int("nodes", pairs.len() as u64)
        .num("used_memory before", mib(mem_before), "MiB")
        .num("used_memory after", mib(mem_after), "MiB")
        .num("used_memory delta", mib(mem_after) - mib(mem_before), "MiB")
        .num("cpu", cpu_secs / secs * 100.0, "% of a core")
        .num(
            "command time",
            all_usec as f64 / 1e6 / secs * 100.0,
            "% of a core",
        );
    if let Some(sends) = sends.filter(|&n| n > 0) {
        s = s
            .num("cpu per send", cpu_secs * 1e6 / sends as f64, "us")
            .num("commands per send", calls / sends as f64, "");
        let replicas: Vec<&(&String, &RedisSample, &RedisSample)> =
            pairs.iter().filter(|(_, _, a)| a.replica).collect();
        if !replicas.is_empty() {
            let cpu_of = |want_replica: bool| -> f64 {
                pairs
                    .iter()
                    .filter(|(_, _, a)| a.replica == want_replica)
                    .map(|(_, b, a)| a.cpu_secs - b.cpu_secs)
                    .sum()
            };
            let calls_of = |want_replica: bool| -> f64 {
                pairs
                    .iter()
                    .filter(|(_, _, a)| a.replica == want_replica)
                    .map(|(_, b, a)| counted_calls(b, a) as f64)
                    .sum()
            };
            s = s
                .num(
                    "primaries: cpu per send",
                    cpu_of(false) * 1e6 / sends as f64,
                    "us",
                )
                .num(
                    "primaries: commands per send",
                    calls_of(false) / sends as f64,
                    "",
                )
                .num(
                    "replicas: cpu per send",
                    cpu_of(true) * 1e6 / sends as f64,
                    "us",
                );
        }
    }
    if pairs.len() > 1 {
        // A primary's share of the stream work (commands appended to its partitions) and
        // of the conversation work (scripts), against an even split over the primaries.
        let delta = |b: &RedisSample, a: &RedisSample, cmd: &str| {
            let c = |x: &RedisSample| x.commands.get(cmd).map_or(0, |v| v.0);
            c(a).saturating_sub(c(b))
        };
        let primaries: Vec<&(&String, &RedisSample, &RedisSample)> =
            pairs.iter().filter(|(_, _, a)| !a.replica).collect();
        let n = primaries.len().max(1) as f64;
        let total = |cmd: &str| -> f64 {
            primaries
                .iter()
                .map(|(_, b, a)| delta(b, a, cmd) as f64)
                .sum()
        };
        let (xadds, scripts) = (total("xadd"), total("evalsha"));
        for (url, b, a) in &pairs {
            let cpu = (a.cpu_secs - b.cpu_secs) / secs * 100.0;
            let line = if a.replica {
                format!("replica, cpu {cpu:.1}% of a core")
            } else {
                let share = |mine: u64, all: f64| {
                    if all > 0.0 {
                        mine as f64 / (all / n) * 100.0
                    } else {
                        0.0
                    }
                };
                format!(
                    "primary, cpu {cpu:.1}% of a core, stream appends {:.0}% and scripts {:.0}% of an even share",
                    share(delta(b, a, "xadd"), xadds),
                    share(delta(b, a, "evalsha"), scripts)
                )
            };
            s = s.text(&format!("node {url}"), line);
        }
    }
    for (name, calls, usec) in top {
        s = s.text(
            &format!("cmd {name}"),
            format!(
                "{calls} calls, {:.1} us/call, {:.0}% of command time",
                usec as f64 / calls.max(1) as f64,
                usec as f64 * 100.0 / all_usec.max(1) as f64
            ),
        );
    }
    if merged_after.contains_key("evalsha") || merged_after.contains_key("fcall") {
        s = s.text(
            "note",
            "commands run inside scripts count on their own line and again in evalsha/fcall",
        );
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_parsing() {
        let status = "Name:\tgateway\nVmPeak:\t  9000 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(12345));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        // A process name with spaces and parentheses must not shift the fields.
        let stat = "42 (my (odd) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let s = sample("self");
        assert!(s.is_some_and(|s| s.rss_kib > 0));
    }

    #[test]
    fn measure_reports_each_process() {
        let mut args = Args::defaults(crate::args::Scenario::Assistant);
        args.worker_pids = vec![std::process::id()];
        let w = Watch::start(&args);
        let (sec, usages) = w.measure("p");
        let labels: Vec<&str> = usages.iter().map(|u| u.label.as_str()).collect();
        assert_eq!(
            labels,
            vec![
                "loadgen".to_string(),
                format!("worker {}", std::process::id())
            ]
        );
        assert!(usages
            .iter()
            .all(|u| u.rss_after_kib > 0 && u.cpu_pct >= 0.0));
        let u = ProcUsage {
            label: "worker 1".into(),
            cpu_pct: 10.0,
            rss_before_kib: 1000,
            rss_after_kib: 900,
        };
        assert_eq!(u.rss_delta_kib(), -100.0);
        assert_eq!(sec.name, "p");
        assert!(sec.items.iter().any(|(k, _)| k == "loadgen"));
    }

    #[test]
    fn machine_cpu() {
        let stat = "cpu  100 5 20 800 10 0 15 0 0 0\ncpu0 50 2 10 400 5 0 7 0 0 0\n";
        // busy = user + nice + system + irq + softirq + steal; idle and iowait are not.
        assert_eq!(parse_proc_stat(stat), Some((140, 950)));
        assert_eq!(parse_proc_stat("intr 1 2"), None);
        assert!(machine().is_some_and(|(busy, total)| busy <= total));
    }

    #[test]
    fn redis_info_fields() {
        let info = "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\n";
        assert_eq!(info_field(info, "used_memory").as_deref(), Some("1048576"));
        assert_eq!(
            info_field(info, "used_memory_human").as_deref(),
            Some("1.00M")
        );
        assert_eq!(info_field(info, "used_cpu_sys"), None);
        let before = parse_commandstats(
            "# Commandstats\r\ncmdstat_evalsha:calls=10,usec=300,usec_per_call=30.00\r\n",
        );
        let after = parse_commandstats(
            "# Commandstats\r\ncmdstat_evalsha:calls=110,usec=3300,usec_per_call=30.00,rejected_calls=0\r\n\
             cmdstat_xadd:calls=100,usec=150,usec_per_call=1.50\r\ncmdstat_info:calls=0,usec=0\r\n",
        );
        assert_eq!(after.get("evalsha"), Some(&(110, 3300)));
        let top = top_commands(&before, &after, 5);
        assert_eq!(
            top,
            vec![
                ("evalsha".to_string(), 100, 3000),
                ("xadd".to_string(), 100, 150)
            ]
        );
    }
}
