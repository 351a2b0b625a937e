//! # confab-shared
//!
//! The vocabulary the gateway and the workers share — they never import each other and meet
//! only through Redis and the types here. Knows no transport (HTTP, WebSocket) and no role.
//!
//! ## Layout
//! - [`config`]: every environment variable, its default and its validation.
//! - [`domain`]: ids, senders, messages, ISO 8601 timestamps, usernames — and their rules.
//! - [`commands`]: gateway → persistence commands, replies, completion jobs.
//! - [`events`]: what happened, as WebSocket clients receive it.
//! - [`partition`]: which partition a conversation's commands go to, and partition hash tags
//!   that spread evenly over a Redis Cluster's primaries.
//! - [`keys`]: every Redis key, stream and channel name.
//! - [`layout`]: the `STREAM_PARTITIONS` a deployment runs, and changing it safely.
//! - [`db`]: connections to standalone Redis or a Redis Cluster, Pub/Sub flavour, multi-slot work.
//! - [`cluster`]: the cluster connection that replaces itself when a failover wedges it.
//! - [`streams`]: the consumer-group runner (read, reclaim, dead-letter, ack, trim).
//! - [`metrics`]: every Prometheus family, and the sampler of stream lag and ownership.
//! - [`trace`]: W3C `traceparent`, and the metadata line before every published event.
//! - [`scripting`], [`telemetry`], [`shutdown`]: Lua scripts by SHA, tracing, signals.
//!
//! ## Data flow
//! ```text
//! client ─REST/WS─▶ gateway ─XADD─▶ confab:cmd:{p} ──XREAD (owner of p)──▶ persistence worker
//!                     ▲                                                   │ Lua per command: write,
//!                     │◀──── (S)PUBLISH confab:reply:{gateway} ───────────┤  history, (S)PUBLISH event
//!                     │◀──── (S)PUBLISH confab:ev:{conv} ─────────────────┘
//!                     │                   commit (fenced): offset, trim, jobs ─▶ confab:jobs:{p} ─▶ completion
//! ```

pub mod cluster;
pub mod commands;
pub mod config;
pub mod db;
pub mod domain;
pub mod events;
pub mod keys;
pub mod layout;
pub mod metrics;
pub mod partition;
pub mod scripting;
pub mod shutdown;
pub mod streams;
pub mod telemetry;
pub mod trace;

pub use config::Config;
