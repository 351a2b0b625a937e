//! Prometheus metrics: every family Confab exports, in one registry per process.
//!
//! The names are a contract — dashboards (`infra/grafana/confab.json`) and alerts
//! (`infra/prometheus/alerts.yml`) rely on them, and `infra/ops/metrics.txt` lists them; a
//! test keeps the three in step. Every process registers every family, so a scrape of any
//! process shows the whole set from start-up: counters at 0 with their known label values
//! created up front (a role that does not do something leaves its families at 0). Labels
//! are bounded: HTTP routes are templates (`/api/conversations/:id`), never raw paths.
//!
//! Recording is a lock-free atomic add on a handle resolved once ([`Metrics::command`]
//! resolves from a fixed table); label lookups that hash (HTTP, frames) cost ~100 ns against
//! requests that cost tens of µs.
//!
//! The sampled families (stream lag and pending, dead letters, unowned partitions, Redis up)
//! are refreshed every [`SAMPLE_EVERY`] by [`sample_forever`], which every process runs: so
//! the completion backlog is visible even while no completion worker runs (KEDA scales it
//! from zero on that). Aggregate them with `max by (stream)`: every process exports them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use redis::streams::StreamInfoGroupsReply;
use redis::{RedisResult, Value};
use tokio_util::sync::CancellationToken;

use crate::db::Conn;
use crate::keys::{self, PartitionKeys};
use crate::partition::Partitions;

/// How often the sampled families are refreshed.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Command kinds, as `confab_commands_total{kind}` (`unknown`: an entry that does not parse).
pub const COMMAND_KINDS: [&str; 5] = [
    "create_conversation",
    "send_message",
    "delete_message",
    "add_member",
    "unknown",
];

/// What became of a command, as `confab_commands_total{outcome}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied = 0,
    Duplicate = 1,
    Retried = 2,
    DeadLettered = 3,
}

const OUTCOMES: [&str; 4] = ["applied", "duplicate", "retried", "dead_lettered"];

/// Statuses every route's counter starts with (others are created when they happen).
const STATUSES: [&str; 14] = [
    "200", "201", "202", "400", "401", "403", "404", "405", "409", "413", "415", "429", "503",
    "504",
];
/// Client frame types (plus `invalid` for frames that do not parse).
pub const CLIENT_FRAMES: [&str; 7] = [
    "subscribe",
    "unsubscribe",
    "send",
    "typing",
    "cancel",
    "ping",
    "invalid",
];
/// Server frame types.
pub const SERVER_FRAMES: [&str; 15] = [
    "subscribed",
    "unsubscribed",
    "message",
    "message_deleted",
    "member_joined",
    "typing",
    "conversation_expired",
    "conversation_added",
    "assistant_delta",
    "assistant_done",
    "assistant_restarted",
    "assistant_error",
    "ack",
    "pong",
    "error",
];
/// Close codes a gateway uses, and 1000/1006 from clients.
const CLOSE_CODES: [&str; 8] = [
    "1000", "1001", "1006", "1009", "4000", "4001", "4008", "4029",
];
/// `assistant_error` codes.
const ASSISTANT_ERRORS: [&str; 7] = [
    "not_configured",
    "auth_failed",
    "model_not_found",
    "bad_request",
    "client_error",
    "unavailable",
    "quota_exceeded",
];

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub ws_connections: IntGauge,
    pub ws_frames_sent: IntCounterVec,
    pub ws_frames_received: IntCounterVec,
    sent: [IntCounter; SERVER_FRAMES.len()],
    received: [IntCounter; CLIENT_FRAMES.len()],
    pub ws_disconnects: IntCounterVec,
    pub pubsub_lag: Histogram,
    commands: [[IntCounter; 4]; 5],
    commands_vec: IntCounterVec,
    pub command_apply: Histogram,
    pub stream_lag: IntGaugeVec,
    pub stream_pending: IntGaugeVec,
    pub partitions_owned: IntGauge,
    pub partitions_unowned: IntGauge,
    pub dead_letters: IntGauge,
    pub redis_up: IntGauge,
    pub assistant_first_token: Histogram,
    pub assistant_tokens: IntCounterVec,
    pub assistant_errors: IntCounterVec,
    pub assistant_active: IntGauge,
    pub conversations_expired: IntCounter,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();
static SERVING: AtomicBool = AtomicBool::new(false);

/// Marks this process's role as serving (or not): half of `/readyz`.
pub fn set_serving(serving: bool) {
    SERVING.store(serving, Ordering::Relaxed);
}

/// `/readyz` of a worker: its role is serving and its last Redis probe succeeded.
pub fn ready() -> bool {
    SERVING.load(Ordering::Relaxed) && get().redis_up.get() == 1
}

/// The process's metrics (registered on first use; [`init`] does it at start-up).
pub fn get() -> &'static Metrics {
    METRICS.get_or_init(|| Metrics::new(&[], &Partitions::new(1)))
}

/// Registers every family with its known label values: `routes` are the HTTP route
/// templates `(method, route)`, `parts` the partition layout (stream labels).
pub fn init(routes: &[(&str, &str)], parts: &Partitions) -> &'static Metrics {
    METRICS.get_or_init(|| Metrics::new(routes, parts))
}

/// Latency buckets from 0.5 ms to 10 s.
fn latency_buckets() -> Vec<f64> {
    vec![
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]
}

impl Metrics {
    fn new(routes: &[(&str, &str)], parts: &Partitions) -> Self {
        let registry = Registry::new();
        let reg = Registrar(&registry);
        let http_requests = reg.counter_vec(
            "confab_http_requests_total",
            "HTTP requests answered, by route template and status",
            &["method", "route", "status"],
        );
        let http_duration = reg.histogram_vec(
            "confab_http_request_duration_seconds",
            "Time to answer an HTTP request",
            &["method", "route"],
            latency_buckets(),
        );
        for (method, route) in routes {
            http_duration.with_label_values(&[method, route]);
            for status in STATUSES {
                http_requests.with_label_values(&[method, route, status]);
            }
        }
        let ws_frames_sent = reg.counter_vec(
            "confab_ws_frames_sent_total",
            "WebSocket frames sent to clients, by type",
            &["type"],
        );
        for t in SERVER_FRAMES {
            ws_frames_sent.with_label_values(&[t]);
        }
        let ws_frames_received = reg.counter_vec(
            "confab_ws_frames_received_total",
            "WebSocket frames received from clients, by type",
            &["type"],
        );
        for t in CLIENT_FRAMES {
            ws_frames_received.with_label_values(&[t]);
        }
        let ws_disconnects = reg.counter_vec(
            "confab_ws_disconnects_total",
            "WebSocket connections closed, by close code",
            &["code"],
        );
        for c in CLOSE_CODES {
            ws_disconnects.with_label_values(&[c]);
        }
        let commands_vec = reg.counter_vec(
            "confab_commands_total",
            "Commands handled by persistence workers, by kind and outcome",
            &["kind", "outcome"],
        );
        let commands = std::array::from_fn(|k| {
            std::array::from_fn(|o| {
                commands_vec.with_label_values(&[COMMAND_KINDS[k], OUTCOMES[o]])
            })
        });
        let stream_lag = reg.gauge_vec(
            "confab_stream_lag",
            "Entries waiting in a partition's stream: commands not yet committed, jobs not yet delivered",
            &["stream"],
        );
        let stream_pending = reg.gauge_vec(
            "confab_stream_pending",
            "Completion jobs delivered to a worker and not yet acknowledged",
            &["stream"],
        );
        for p in parts.all() {
            stream_lag.with_label_values(&[&format!("commands:{p}")]);
            stream_lag.with_label_values(&[&format!("jobs:{p}")]);
            stream_pending.with_label_values(&[&format!("jobs:{p}")]);
        }
        let assistant_tokens = reg.counter_vec(
            "confab_assistant_tokens_total",
            "Tokens used by assistant answers, from the model's usage report",
            &["kind"],
        );
        for k in ["prompt", "completion"] {
            assistant_tokens.with_label_values(&[k]);
        }
        let assistant_errors = reg.counter_vec(
            "confab_assistant_errors_total",
            "Assistant answers that ended in assistant_error, by code",
            &["code"],
        );
        for c in ASSISTANT_ERRORS {
            assistant_errors.with_label_values(&[c]);
        }
        let sent = std::array::from_fn(|i| ws_frames_sent.with_label_values(&[SERVER_FRAMES[i]]));
        let received =
            std::array::from_fn(|i| ws_frames_received.with_label_values(&[CLIENT_FRAMES[i]]));
        let m = Self {
            sent,
            received,
            http_requests,
            http_duration,
            ws_connections: reg.gauge("confab_ws_connections", "Open WebSocket connections"),
            ws_frames_sent,
            ws_frames_received,
            ws_disconnects,
            pubsub_lag: reg.histogram(
                "confab_pubsub_lag_seconds",
                "From an event's publish by a worker to its receipt by this gateway",
                latency_buckets(),
            ),
            commands,
            commands_vec,
            command_apply: reg.histogram(
                "confab_command_apply_seconds",
                "Time of the Redis round that applied a batch of commands",
                latency_buckets(),
            ),
            stream_lag,
            stream_pending,
            partitions_owned: reg.gauge(
                "confab_partitions_owned",
                "Partitions this persistence replica owns",
            ),
            partitions_unowned: reg.gauge(
                "confab_partitions_unowned",
                "Partitions whose lease no live replica holds (sampled)",
            ),
            dead_letters: reg.gauge(
                "confab_dead_letters",
                "Entries in the dead-letter streams of every partition (sampled)",
            ),
            redis_up: reg.gauge(
                "confab_redis_up",
                "1 when this process's last Redis probe succeeded",
            ),
            assistant_first_token: reg.histogram(
                "confab_assistant_first_token_seconds",
                "From starting an answer's request to its first token",
                latency_buckets(),
            ),
            assistant_tokens,
            assistant_errors,
            assistant_active: reg.gauge(
                "confab_assistant_active",
                "Assistant answers streaming now in this process",
            ),
            conversations_expired: reg.counter(
                "confab_conversations_expired_total",
                "Conversations deleted after their inactivity timeout",
            ),
            registry,
        };
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            if let Err(e) = m.registry.register(Box::new(pc)) {
                tracing::warn!(error = %e, "process metrics unavailable");
            }
        }
        m
    }

    /// The counter of `kind` (one of [`COMMAND_KINDS`], else `unknown`) and `outcome`.
    pub fn command(&self, kind: &str, outcome: Outcome) -> &IntCounter {
        let k = COMMAND_KINDS
            .iter()
            .position(|c| *c == kind)
            .unwrap_or(COMMAND_KINDS.len() - 1);
        &self.commands[k][outcome as usize]
    }

    /// Counts a frame sent to a client, by the `type` in its JSON.
    pub fn frame_sent(&self, frame: &str) {
        if let Some(i) = frame_type(frame).and_then(|t| SERVER_FRAMES.iter().position(|s| *s == t))
        {
            self.sent[i].inc();
        }
    }

    /// Counts a frame received, by its type (one of [`CLIENT_FRAMES`]).
    pub fn frame_received(&self, kind: &str) {
        let i = CLIENT_FRAMES
            .iter()
            .position(|s| *s == kind)
            .unwrap_or(CLIENT_FRAMES.len() - 1);
        self.received[i].inc();
    }

    /// Counts an HTTP answer.
    pub fn http(&self, method: &str, route: &str, status: u16, seconds: f64) {
        // A client picks the method token: anything unusual shares one label.
        let method = match method {
            "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS" => method,
            _ => "other",
        };
        let status = status.to_string();
        self.http_requests
            .with_label_values(&[method, route, &status])
            .inc();
        self.http_duration
            .with_label_values(&[method, route])
            .observe(seconds);
    }

    /// The Prometheus text exposition of every family.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        let families = self.registry.gather();
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// Every family's name (for the contract test).
    pub fn family_names(&self) -> Vec<String> {
        self.registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect()
    }

    /// For tests: the `commands_total` family itself.
    pub fn commands_family(&self) -> &IntCounterVec {
        &self.commands_vec
    }
}

/// The value of the first `"type":"…"` in a JSON frame (a raw `"type":"` cannot occur inside
/// a JSON string: its quotes would be escaped).
fn frame_type(frame: &str) -> Option<&str> {
    const KEY: &str = "\"type\":\"";
    let start = frame.find(KEY)? + KEY.len();
    let rest = frame.get(start..)?;
    rest.find('"').and_then(|end| rest.get(..end))
}

/// Registers families. The names, help texts and labels are constants, so creating them
/// cannot fail at run time; the unit tests below build every family.
struct Registrar<'a>(&'a Registry);

#[allow(clippy::expect_used)]
impl Registrar<'_> {
    fn keep<C: prometheus::core::Collector + Clone + 'static>(&self, c: C) -> C {
        if let Err(e) = self.0.register(Box::new(c.clone())) {
            tracing::warn!(error = %e, "registering a metric failed");
        }
        c
    }
    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.keep(IntCounter::with_opts(Opts::new(name, help)).expect("a constant metric"))
    }
    fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.keep(IntCounterVec::new(Opts::new(name, help), labels).expect("a constant metric"))
    }
    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.keep(IntGauge::with_opts(Opts::new(name, help)).expect("a constant metric"))
    }
    fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.keep(IntGaugeVec::new(Opts::new(name, help), labels).expect("a constant metric"))
    }
    fn histogram(&self, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
        self.keep(
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("a constant metric"),
        )
    }
    fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: Vec<f64>,
    ) -> HistogramVec {
        self.keep(
            HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                .expect("a constant metric"),
        )
    }
}

/// Refreshes the sampled families every [`SAMPLE_EVERY`] until `cancel`.
pub async fn sample_forever(mut conn: Conn, parts: Partitions, cancel: CancellationToken) {
    let pks = PartitionKeys::all(&parts);
    loop {
        let up = sample_once(&mut conn, &pks).await;
        get().redis_up.set(i64::from(up.is_ok()));
        if let Err(e) = up {
            tracing::debug!(error = %e, "sampling stream metrics failed");
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
    }
}

/// One sample of every partition: backlog, jobs waiting and running, dead letters, leases.
pub async fn sample_once(conn: &mut Conn, pks: &[PartitionKeys]) -> RedisResult<()> {
    let m = get();
    let mut cmds = Vec::with_capacity(pks.len() * 4);
    for pk in pks {
        let mut xlen = redis::cmd("XLEN");
        xlen.arg(&pk.commands);
        cmds.push(xlen);
        let mut groups = redis::cmd("XINFO");
        groups.arg("GROUPS").arg(&pk.jobs);
        cmds.push(groups);
        let mut dead = redis::cmd("XLEN");
        dead.arg(&pk.dead_letters);
        cmds.push(dead);
        let mut lease = redis::cmd("HMGET");
        lease.arg(&pk.lease).arg("owner").arg("until");
        cmds.push(lease);
    }
    let replies = conn.query_many(cmds).await?;
    let now = crate::db::now_ms();
    let (mut dead_total, mut unowned) = (0i64, 0i64);
    for (pk, r) in pks.iter().zip(replies.chunks(4)) {
        let [xlen, groups, dead, lease] = r else {
            continue;
        };
        let p = pk.index;
        let backlog: i64 = int(xlen)?;
        m.stream_lag
            .with_label_values(&[&format!("commands:{p}")])
            .set(backlog);
        // A job stream that does not exist yet (no gateway created its group) waits for none.
        let (lag, pending) = match groups {
            Ok(v) => job_backlog(v),
            Err(_) => (0, 0),
        };
        m.stream_lag
            .with_label_values(&[&format!("jobs:{p}")])
            .set(lag);
        m.stream_pending
            .with_label_values(&[&format!("jobs:{p}")])
            .set(pending);
        dead_total += int(dead)?;
        let (owner, until): (Option<String>, Option<u64>) = match lease {
            Ok(v) => redis::from_redis_value_ref(v).unwrap_or((None, None)),
            Err(e) => return Err(e.clone()),
        };
        if owner.unwrap_or_default().is_empty() || until.unwrap_or(0) <= now {
            unowned += 1;
        }
    }
    m.dead_letters.set(dead_total);
    m.partitions_unowned.set(unowned);
    Ok(())
}

fn int(r: &RedisResult<Value>) -> RedisResult<i64> {
    match r {
        Ok(v) => Ok(redis::from_redis_value_ref(v)?),
        Err(e) => Err(e.clone()),
    }
}

/// `(lag, pending)` of the completion group from `XINFO GROUPS`.
fn job_backlog(v: &Value) -> (i64, i64) {
    let Ok(reply) = redis::from_redis_value_ref::<StreamInfoGroupsReply>(v) else {
        return (0, 0);
    };
    reply
        .groups
        .iter()
        .find(|g| g.name == keys::COMPLETION_GROUP)
        .map(|g| (g.lag.unwrap_or(0) as i64, g.pending as i64))
        .unwrap_or((0, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `infra/ops/metrics.txt` (what alerts, the dashboard and KEDA are checked against by
    /// `make ops-test`) as `(name, type)`.
    fn contract() -> Vec<(String, String)> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../infra/ops/metrics.txt");
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        text.lines()
            .map(|l| l.split('#').next().unwrap_or_default().trim())
            .filter(|l| !l.is_empty())
            .map(|l| {
                let mut w = l.split_whitespace();
                let name = w.next().unwrap_or_default().to_string();
                let kind = w.next().unwrap_or_default().to_string();
                (name, kind)
            })
            .collect()
    }

    /// `# TYPE name kind` lines of an exposition.
    fn exported(text: &str) -> Vec<(String, String)> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_once(' '))
            .map(|(n, k)| (n.to_string(), k.to_string()))
            .collect()
    }

    #[test]
    fn exported_families_are_exactly_the_documented_contract() {
        let m = Metrics::new(&[("GET", "/api/conversations/:id")], &Partitions::new(2));
        let text = m.encode();
        let exported = exported(&text);
        let contract = contract();
        assert!(contract.len() >= 20, "metrics.txt lists {}", contract.len());
        for family in &contract {
            assert!(
                exported.contains(family),
                "{family:?} is in infra/ops/metrics.txt but not exported (exported: {exported:?})"
            );
        }
        for family in &exported {
            assert!(
                contract.contains(family),
                "{family:?} is exported but missing from infra/ops/metrics.txt"
            );
        }
        assert!(text.contains(r#"confab_stream_lag{stream="jobs:1"} 0"#));
        assert!(text.contains(
            r#"confab_http_requests_total{method="GET",route="/api/conversations/:id",status="404"} 0"#
        ));
        assert!(text
            .contains(r#"confab_commands_total{kind="send_message",outcome="dead_lettered"} 0"#));
    }

    #[test]
    fn frames_are_counted_by_their_type() {
        assert_eq!(
            frame_type(r#"{"conversationId":"x","type":"subscribed"}"#),
            Some("subscribed")
        );
        assert_eq!(
            frame_type(r#"{"type":"message","message":{"content":"\"type\":\"ack\""}}"#),
            Some("message")
        );
        assert_eq!(frame_type("{}"), None);
        let m = Metrics::new(&[], &Partitions::new(1));
        m.frame_sent(r#"{"type":"pong"}"#);
        m.frame_sent(r#"{"type":"made_up"}"#);
        m.frame_received("ping");
        m.frame_received("nonsense");
        assert_eq!(m.ws_frames_sent.with_label_values(&["pong"]).get(), 1);
        assert_eq!(m.ws_frames_received.with_label_values(&["ping"]).get(), 1);
        assert_eq!(
            m.ws_frames_received.with_label_values(&["invalid"]).get(),
            1
        );
        assert!(!m.encode().contains("made_up"));
    }

    #[test]
    fn http_labels_stay_bounded() {
        let m = Metrics::new(&[], &Partitions::new(1));
        m.http("BREW", "unmatched", 405, 0.001);
        m.http("GET", "unmatched", 404, 0.001);
        let text = m.encode();
        assert!(!text.contains("BREW"), "{text}");
        assert!(text.contains(r#"method="other""#), "{text}");
    }

    #[test]
    fn command_counters_are_the_labelled_ones() {
        let m = Metrics::new(&[], &Partitions::new(1));
        m.command("delete_message", Outcome::Retried).inc_by(3);
        let v = m
            .commands_family()
            .with_label_values(&["delete_message", "retried"])
            .get();
        assert_eq!(v, 3);
    }
}
