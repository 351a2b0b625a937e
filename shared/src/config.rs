//! Process configuration, read from the environment with `envy`.
//!
//! Every binary reads the same [`Config`]; each field is an upper-case environment variable
//! with a documented default (see the README's configuration table). [`Config::from_env`]
//! fails with a message that names the offending variable, and [`Secret`] keeps the OpenAI
//! key out of `Debug` output and logs.

use std::fmt;
use std::net::SocketAddr;

use serde::Deserialize;

/// A value that must never be printed (the OpenAI key).
#[derive(Clone, Deserialize, Default, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself: only for the one place that needs it (the HTTP client).
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "\"[redacted]\""
        })
    }
}

/// All of Confab's settings. Field `foo_bar` is read from `FOO_BAR`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct Config {
    // --- shared ---
    pub redis_url: String,
    pub redis_cluster: bool,
    pub redis_wait_replicas: u32,
    pub redis_wait_timeout_ms: u64,
    pub stream_partitions: u32,
    pub conversation_ttl_secs: u64,
    pub member_chat_ttl_secs: u64,
    pub max_message_bytes: usize,
    pub max_messages_per_conversation: u64,
    /// The most bytes of stored messages (their JSON) one conversation holds (0 = off).
    pub max_conversation_bytes: u64,
    pub event_history_len: u64,
    pub max_chat_members: usize,
    // --- HTTP connections ---
    /// How long a client may take to send a request's headers, from the connection's start or
    /// the end of the previous request (covers the WebSocket handshake request too).
    pub header_read_timeout_ms: u64,
    /// How long a client may take to send a whole request body once its headers are in.
    pub body_read_timeout_ms: u64,
    /// Open TCP connections per client address (0 = off).
    pub max_connections_per_addr: usize,
    // --- pipeline ---
    pub request_timeout_ms: u64,
    pub claim_idle_ms: u64,
    pub max_deliveries: u64,
    pub worker_batch_size: usize,
    pub command_stream_max_len: u64,
    pub dead_letter_max_len: u64,
    pub worker_name: Option<String>,
    /// Workers: where to serve `/metrics`, `/healthz`, `/readyz` (off when unset).
    pub metrics_addr: Option<String>,
    /// `text` or `json` (one JSON object per log line).
    pub log_format: String,
    /// OTLP/HTTP collector (e.g. `http://otel-collector:4318`): spans are exported there.
    pub otel_exporter_otlp_endpoint: Option<String>,
    // --- gateway ---
    pub gateway_addr: String,
    pub gateway_id: Option<String>,
    pub web_dir: String,
    /// Extra origins allowed to open `/ws` (comma-separated `scheme://host[:port]`, or `*`);
    /// the page's own origin and clients without an `Origin` are always allowed.
    pub allowed_origins: String,
    pub session_ttl_secs: u64,
    /// Failed sign-ins per (client address, username) within `login_window_secs` (0 = off).
    pub login_max_failures: u64,
    /// Failed sign-ins per client address, whatever the usernames (0 = off).
    pub login_max_failures_per_addr: u64,
    pub login_window_secs: u64,
    /// Sign-ups per client address per minute (0 = off).
    pub signups_per_min_per_addr: u64,
    pub ws_max_frame_bytes: usize,
    /// How much of a streamed response (`GET /api/conversations/:id`) the gateway builds at
    /// once: messages are read from Redis and sent in pieces of about this size.
    pub response_chunk_bytes: usize,
    pub ws_send_queue: usize,
    pub ws_max_subscriptions: usize,
    pub ws_idle_timeout_secs: u64,
    pub ws_rate_per_sec: u32,
    pub ws_rate_burst: u32,
    pub ws_max_connections: usize,
    pub ws_max_connections_per_user: usize,
    // --- assistant ---
    pub openai_api_key: Secret,
    pub openai_base_url: String,
    pub openai_model: String,
    pub assistant_system_prompt: String,
    pub assistant_max_tokens: u32,
    pub assistant_context_messages: usize,
    pub assistant_context_chars: usize,
    pub completion_concurrency: usize,
    pub assistant_give_up_secs: u64,
    /// Whether open (anonymous) conversations may enable the assistant.
    pub assistant_in_open_conversations: bool,
    /// Messages per client address per minute into open conversations with the assistant
    /// (each may wake the model; 0 = off).
    pub assistant_open_messages_per_min_per_addr: u64,
    /// Writes without a session (creating open conversations, sending into them) per client
    /// address per second (0 = off).
    pub anon_writes_per_sec_per_addr: u64,
    // --- idempotency ---
    /// How long a message's idempotency key (WebSocket `clientId`, REST `Idempotency-Key`)
    /// is remembered, in seconds (0 = off: keys are not idempotency keys).
    pub idempotency_window_secs: u64,
    /// Keys remembered per conversation at most; the oldest go first (0 = off).
    pub idempotency_max_keys: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_cluster: false,
            redis_wait_replicas: 0,
            redis_wait_timeout_ms: 1000,
            stream_partitions: 16,
            conversation_ttl_secs: 1800,
            member_chat_ttl_secs: 7 * 24 * 3600,
            max_message_bytes: 16 * 1024,
            max_messages_per_conversation: 10_000,
            max_conversation_bytes: 64 << 20,
            event_history_len: 2000,
            max_chat_members: 256,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 10_000,
            max_connections_per_addr: 256,
            request_timeout_ms: 5000,
            claim_idle_ms: 10_000,
            max_deliveries: 5,
            worker_batch_size: 256,
            command_stream_max_len: 200_000,
            dead_letter_max_len: 10_000,
            worker_name: None,
            metrics_addr: None,
            log_format: "text".into(),
            otel_exporter_otlp_endpoint: None,
            gateway_addr: "127.0.0.1:3000".into(),
            gateway_id: None,
            web_dir: "gateway/web/dist".into(),
            allowed_origins: String::new(),
            session_ttl_secs: 7 * 24 * 3600,
            login_max_failures: 10,
            login_max_failures_per_addr: 100,
            login_window_secs: 300,
            signups_per_min_per_addr: 10,
            ws_max_frame_bytes: 64 * 1024,
            response_chunk_bytes: 256 * 1024,
            ws_send_queue: 1024,
            ws_max_subscriptions: 256,
            ws_idle_timeout_secs: 60,
            ws_rate_per_sec: 100,
            ws_rate_burst: 400,
            ws_max_connections: 50_000,
            ws_max_connections_per_user: 5_000,
            openai_api_key: Secret::default(),
            openai_base_url: "https://api.openai.com/v1".into(),
            openai_model: "gpt-4o-mini".into(),
            assistant_system_prompt: "You are Confab's assistant, taking part in a group chat. \
                Messages from people are prefixed with their username. Answer helpfully and \
                concisely in Markdown."
                .into(),
            assistant_max_tokens: 1024,
            assistant_context_messages: 20,
            assistant_context_chars: 12_000,
            completion_concurrency: 256,
            assistant_give_up_secs: 30,
            assistant_in_open_conversations: false,
            assistant_open_messages_per_min_per_addr: 10,
            anon_writes_per_sec_per_addr: 50,
            idempotency_window_secs: 86_400,
            idempotency_max_keys: 1000,
        }
    }
}

/// A configuration problem, always naming the variable.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Reads the process environment. Unknown variables are ignored.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    /// Reads from explicit pairs (tests).
    pub fn from_vars<I: IntoIterator<Item = (String, String)>>(
        vars: I,
    ) -> Result<Self, ConfigError> {
        // Empty values mean "unset" so `FOO= gateway` falls back to the default.
        let vars = vars.into_iter().filter(|(_, v)| !v.is_empty());
        let config: Config = envy::from_iter(vars).map_err(|e| ConfigError(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive: [(&str, u64); 19] = [
            ("CONVERSATION_TTL_SECS", self.conversation_ttl_secs),
            ("MEMBER_CHAT_TTL_SECS", self.member_chat_ttl_secs),
            ("MAX_MESSAGE_BYTES", self.max_message_bytes as u64),
            (
                "MAX_MESSAGES_PER_CONVERSATION",
                self.max_messages_per_conversation,
            ),
            ("EVENT_HISTORY_LEN", self.event_history_len),
            ("MAX_CHAT_MEMBERS", self.max_chat_members as u64),
            ("REQUEST_TIMEOUT_MS", self.request_timeout_ms),
            ("HEADER_READ_TIMEOUT_MS", self.header_read_timeout_ms),
            ("BODY_READ_TIMEOUT_MS", self.body_read_timeout_ms),
            ("CLAIM_IDLE_MS", self.claim_idle_ms),
            ("MAX_DELIVERIES", self.max_deliveries),
            ("WORKER_BATCH_SIZE", self.worker_batch_size as u64),
            ("COMMAND_STREAM_MAX_LEN", self.command_stream_max_len),
            ("SESSION_TTL_SECS", self.session_ttl_secs),
            ("LOGIN_WINDOW_SECS", self.login_window_secs),
            ("WS_SEND_QUEUE", self.ws_send_queue as u64),
            ("WS_MAX_FRAME_BYTES", self.ws_max_frame_bytes as u64),
            ("RESPONSE_CHUNK_BYTES", self.response_chunk_bytes as u64),
            ("COMPLETION_CONCURRENCY", self.completion_concurrency as u64),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ConfigError(format!("{name} must be greater than 0")));
            }
        }
        // Upper bounds keep time arithmetic (deadlines, Instant + Duration) from overflowing.
        const YEAR_SECS: u64 = 365 * 24 * 3600;
        let bounded: [(&str, u64, u64); 12] = [
            (
                "CONVERSATION_TTL_SECS",
                self.conversation_ttl_secs,
                10 * YEAR_SECS,
            ),
            (
                "MEMBER_CHAT_TTL_SECS",
                self.member_chat_ttl_secs,
                10 * YEAR_SECS,
            ),
            ("SESSION_TTL_SECS", self.session_ttl_secs, 10 * YEAR_SECS),
            ("LOGIN_WINDOW_SECS", self.login_window_secs, 7 * 24 * 3600),
            ("REQUEST_TIMEOUT_MS", self.request_timeout_ms, 3600 * 1000),
            (
                "HEADER_READ_TIMEOUT_MS",
                self.header_read_timeout_ms,
                3600 * 1000,
            ),
            (
                "BODY_READ_TIMEOUT_MS",
                self.body_read_timeout_ms,
                3600 * 1000,
            ),
            ("CLAIM_IDLE_MS", self.claim_idle_ms, 24 * 3600 * 1000),
            ("WS_IDLE_TIMEOUT_SECS", self.ws_idle_timeout_secs, 24 * 3600),
            ("ASSISTANT_GIVE_UP_SECS", self.assistant_give_up_secs, 3600),
            (
                "IDEMPOTENCY_WINDOW_SECS",
                self.idempotency_window_secs,
                10 * YEAR_SECS,
            ),
            ("IDEMPOTENCY_MAX_KEYS", self.idempotency_max_keys, 1_000_000),
        ];
        for (name, value, max) in bounded {
            if value > max {
                return Err(ConfigError(format!(
                    "{name} must be at most {max} (got {value})"
                )));
            }
        }
        let urls: Vec<&str> = self
            .redis_url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            return Err(ConfigError("REDIS_URL must not be empty".into()));
        }
        for url in &urls {
            if !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("unix://"))
            {
                return Err(ConfigError(format!(
                    "REDIS_URL must start with redis://, rediss:// or unix:// (got {:?})",
                    redact_url(url)
                )));
            }
        }
        if urls.len() > 1 && !self.redis_cluster {
            return Err(ConfigError(
                "REDIS_URL lists several servers: set REDIS_CLUSTER=true for a Redis Cluster"
                    .into(),
            ));
        }
        if !(1..=crate::partition::MAX_PARTITIONS).contains(&self.stream_partitions) {
            return Err(ConfigError(format!(
                "STREAM_PARTITIONS must be between 1 and {} (got {})",
                crate::partition::MAX_PARTITIONS,
                self.stream_partitions
            )));
        }
        if self.redis_wait_replicas > 16 {
            return Err(ConfigError(format!(
                "REDIS_WAIT_REPLICAS must be at most 16 (got {})",
                self.redis_wait_replicas
            )));
        }
        if self.redis_wait_timeout_ms == 0 || self.redis_wait_timeout_ms > 60_000 {
            return Err(ConfigError(format!(
                "REDIS_WAIT_TIMEOUT_MS must be between 1 and 60000 (got {})",
                self.redis_wait_timeout_ms
            )));
        }
        if !(self.openai_base_url.starts_with("http://")
            || self.openai_base_url.starts_with("https://"))
        {
            return Err(ConfigError(
                "OPENAI_BASE_URL must be an http:// or https:// URL".into(),
            ));
        }
        if self.gateway_addr.parse::<SocketAddr>().is_err() {
            return Err(ConfigError(format!(
                "GATEWAY_ADDR must be an address such as 127.0.0.1:3000 (got {:?})",
                self.gateway_addr
            )));
        }
        if let Some(addr) = &self.metrics_addr {
            if addr.parse::<SocketAddr>().is_err() {
                return Err(ConfigError(format!(
                    "METRICS_ADDR must be an address such as 0.0.0.0:9100 (got {addr:?})"
                )));
            }
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(ConfigError(format!(
                "LOG_FORMAT must be text or json (got {:?})",
                self.log_format
            )));
        }
        if let Some(url) = &self.otel_exporter_otlp_endpoint {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError(
                    "OTEL_EXPORTER_OTLP_ENDPOINT must be an http:// or https:// URL".into(),
                ));
            }
        }
        if self.event_history_len < 1000 {
            return Err(ConfigError(
                "EVENT_HISTORY_LEN must be at least 1000".into(),
            ));
        }
        for origin in self.allowed_origin_list() {
            let ok = origin == "*"
                || ((origin.starts_with("http://") || origin.starts_with("https://"))
                    && !origin
                        .trim_start_matches("http://")
                        .trim_start_matches("https://")
                        .contains('/'));
            if !ok {
                return Err(ConfigError(format!(
                    "ALLOWED_ORIGINS entries must be * or scheme://host[:port] (got {origin:?})"
                )));
            }
        }
        if self.ws_rate_burst < self.ws_rate_per_sec {
            return Err(ConfigError(
                "WS_RATE_BURST must be at least WS_RATE_PER_SEC".into(),
            ));
        }
        Ok(())
    }

    /// `ALLOWED_ORIGINS` as a list, lower-cased, without a trailing `/`.
    pub fn allowed_origin_list(&self) -> Vec<String> {
        self.allowed_origins
            .split(',')
            .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
            .filter(|o| !o.is_empty())
            .collect()
    }

    /// `METRICS_ADDR`, checked by [`Config::from_env`].
    pub fn metrics_socket_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr.as_deref().and_then(|a| a.parse().ok())
    }

    /// `GATEWAY_ADDR`, checked by [`Config::from_env`].
    pub fn gateway_socket_addr(&self) -> SocketAddr {
        self.gateway_addr
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 3000)))
    }

    pub fn request_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.request_timeout_ms)
    }
    pub fn header_read_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.header_read_timeout_ms)
    }
    pub fn body_read_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.body_read_timeout_ms)
    }
    pub fn claim_idle(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.claim_idle_ms)
    }
    pub fn redis_wait_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.redis_wait_timeout_ms)
    }
    /// The partition layout (`STREAM_PARTITIONS`).
    pub fn partitions(&self) -> crate::partition::Partitions {
        crate::partition::Partitions::new(self.stream_partitions)
    }
}

/// Hides a password in a Redis URL (`redis://:pw@host` → `redis://:***@host`).
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_apply() {
        let c = Config::from_vars(vars(&[])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.conversation_ttl_secs, 1800);
        assert_eq!(c.gateway_socket_addr().port(), 3000);
        assert_eq!(c.redis_url, "redis://127.0.0.1:6379");
        assert_eq!(c.max_message_bytes, 16384);
        assert_eq!(c.max_conversation_bytes, 64 << 20);
        assert_eq!(c.response_chunk_bytes, 256 << 10);
        let c = Config::from_vars(vars(&[("MAX_CONVERSATION_BYTES", "0")]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.max_conversation_bytes, 0, "0 turns the bound off");
        let err = Config::from_vars(vars(&[("RESPONSE_CHUNK_BYTES", "0")])).err();
        assert!(err
            .map(|e| e.to_string())
            .unwrap_or_default()
            .contains("RESPONSE_CHUNK_BYTES"));
    }

    #[test]
    fn bad_number_names_the_variable() {
        let err = Config::from_vars(vars(&[("CONVERSATION_TTL_SECS", "soon")])).err();
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("CONVERSATION_TTL_SECS"), "{msg}");
    }

    #[test]
    fn zero_is_rejected_with_the_name() {
        let err = Config::from_vars(vars(&[("MAX_DELIVERIES", "0")])).err();
        assert!(err
            .map(|e| e.to_string())
            .unwrap_or_default()
            .contains("MAX_DELIVERIES"));
    }

    #[test]
    fn absurd_durations_are_rejected_with_the_name() {
        let err =
            Config::from_vars(vars(&[("WS_IDLE_TIMEOUT_SECS", "18446744073709551615")])).err();
        assert!(err
            .map(|e| e.to_string())
            .unwrap_or_default()
            .contains("WS_IDLE_TIMEOUT_SECS"));
    }

    #[test]
    fn allowed_origins_are_checked_and_listed() {
        let c = Config::from_vars(vars(&[(
            "ALLOWED_ORIGINS",
            " https://Chat.Example.com/ , http://127.0.0.1:5173",
        )]))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.allowed_origin_list(),
            ["https://chat.example.com", "http://127.0.0.1:5173"]
        );
        for bad in ["chat.example.com", "https://a.example/path", "ftp://x"] {
            let err = Config::from_vars(vars(&[("ALLOWED_ORIGINS", bad)])).err();
            assert!(
                err.map(|e| e.to_string())
                    .unwrap_or_default()
                    .contains("ALLOWED_ORIGINS"),
                "{bad}"
            );
        }
    }

    #[test]
    fn zero_read_timeouts_are_refused_by_name() {
        for name in ["HEADER_READ_TIMEOUT_MS", "BODY_READ_TIMEOUT_MS"] {
            let err = Config::from_vars(vars(&[(name, "0")])).err();
            assert!(err
                .map(|e| e.to_string())
                .unwrap_or_default()
                .contains(name));
        }
    }

    #[test]
    fn bad_addr_names_the_variable() {
        let err = Config::from_vars(vars(&[("GATEWAY_ADDR", "nowhere")])).err();
        assert!(err
            .map(|e| e.to_string())
            .unwrap_or_default()
            .contains("GATEWAY_ADDR"));
    }

    #[test]
    fn abuse_limits_have_defaults_and_zero_turns_them_off() {
        let c = Config::from_vars(vars(&[])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.login_max_failures, 10);
        assert_eq!(c.login_max_failures_per_addr, 100);
        assert_eq!(c.signups_per_min_per_addr, 10);
        assert_eq!(c.max_connections_per_addr, 256);
        assert_eq!(c.header_read_timeout_ms, 10_000);
        assert_eq!(c.body_read_timeout_ms, 10_000);
        assert!(!c.assistant_in_open_conversations);
        assert_eq!(c.assistant_open_messages_per_min_per_addr, 10);
        assert_eq!(c.anon_writes_per_sec_per_addr, 50);
        let c = Config::from_vars(vars(&[
            ("SIGNUPS_PER_MIN_PER_ADDR", "0"),
            ("LOGIN_MAX_FAILURES_PER_ADDR", "0"),
            ("ASSISTANT_IN_OPEN_CONVERSATIONS", "true"),
            ("ASSISTANT_OPEN_MESSAGES_PER_MIN_PER_ADDR", "0"),
        ]))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.signups_per_min_per_addr, 0);
        assert!(c.assistant_in_open_conversations);
        for (name, value) in [
            ("SIGNUPS_PER_MIN_PER_ADDR", "-1"),
            ("LOGIN_MAX_FAILURES_PER_ADDR", "lots"),
            ("ASSISTANT_IN_OPEN_CONVERSATIONS", "sometimes"),
            ("ASSISTANT_OPEN_MESSAGES_PER_MIN_PER_ADDR", "1.5"),
            ("LOGIN_WINDOW_SECS", "0"),
        ] {
            let err = Config::from_vars(vars(&[(name, value)])).err();
            let msg = err.map(|e| e.to_string()).unwrap_or_default();
            assert!(msg.contains(name), "{name}={value}: {msg:?}");
        }
    }

    #[test]
    fn idempotency_settings_have_defaults_bounds_and_zero_off() {
        let c = Config::from_vars(vars(&[])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.idempotency_window_secs, 86_400);
        assert_eq!(c.idempotency_max_keys, 1000);
        let c = Config::from_vars(vars(&[
            ("IDEMPOTENCY_WINDOW_SECS", "0"),
            ("IDEMPOTENCY_MAX_KEYS", "0"),
        ]))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.idempotency_window_secs, c.idempotency_max_keys), (0, 0));
        for (name, value) in [
            ("IDEMPOTENCY_WINDOW_SECS", "400000000"),
            ("IDEMPOTENCY_WINDOW_SECS", "-1"),
            ("IDEMPOTENCY_MAX_KEYS", "1000001"),
            ("IDEMPOTENCY_MAX_KEYS", "many"),
        ] {
            let err = Config::from_vars(vars(&[(name, value)])).err();
            let msg = err.map(|e| e.to_string()).unwrap_or_default();
            assert!(msg.contains(name), "{name}={value}: {msg:?}");
        }
    }

    #[test]
    fn secret_is_not_printed() {
        let c = Config::from_vars(vars(&[("OPENAI_API_KEY", "sk-verysecret")]))
            .unwrap_or_else(|e| panic!("{e}"));
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("sk-verysecret"));
        assert_eq!(c.openai_api_key.expose(), "sk-verysecret");
    }

    #[test]
    fn cluster_settings_are_checked() {
        let err = Config::from_vars(vars(&[("REDIS_URL", "redis://a:1,redis://b:2")])).err();
        assert!(err
            .map(|e| e.to_string())
            .unwrap_or_default()
            .contains("REDIS_CLUSTER"));
        let c = Config::from_vars(vars(&[
            ("REDIS_URL", "redis://a:1, redis://b:2"),
            ("REDIS_CLUSTER", "true"),
        ]))
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(c.redis_cluster);
        let err = Config::from_vars(vars(&[("STREAM_PARTITIONS", "0")])).err();
        assert!(err
            .map(|e| e.to_string())
            .unwrap_or_default()
            .contains("STREAM_PARTITIONS"));
        let err = Config::from_vars(vars(&[("REDIS_CLUSTER", "maybe")])).err();
        assert!(err
            .map(|e| e.to_string())
            .unwrap_or_default()
            .contains("REDIS_CLUSTER"));
    }

    #[test]
    fn redis_password_is_redacted() {
        assert_eq!(redact_url("redis://:pw@host:6379"), "redis://***@host:6379");
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
    }
}
