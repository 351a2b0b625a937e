//! # confab-shared
//!
//! The vocabulary the gateway and the workers share — they never import each other and meet
//! only through Redis and the types here. Knows no transport (HTTP, WebSocket) and no role.
//!
//! ## Layout
//! - [`config`]: every environment variable, its default and its validation.
//! - [`domain`]: ids, senders, messages, ISO 8601 timestamps, usernames — and their rules.
//! - [`commands`]: gateway → persistence commands (`confab:commands`), replies, completion jobs.
//! - [`events`]: what happened, as WebSocket clients receive it.
//! - [`keys`]: every Redis key, stream and channel name (conversation keys share a hash tag).
//! - [`streams`]: the consumer-group runner (read, reclaim, dead-letter, ack, trim).
//! - [`redis_util`], [`telemetry`], [`shutdown`]: connections, tracing, signals.
//!
//! ## Data flow
//! ```text
//! client ─REST/WS─▶ gateway ─XADD─▶ confab:commands ─XREADGROUP─▶ persistence worker
//!                     ▲                                              │ Lua: write + XADD history
//!                     │◀──── PUBLISH confab:reply:<gateway> ─────────┤      + PUBLISH confab:ev:<conv>
//!                     │◀──── PUBLISH confab:ev:<conv> ───────────────┘
//!                     │                                              └─XADD─▶ confab:completions ─▶ completion worker
//! ```

pub mod commands;
pub mod config;
pub mod domain;
pub mod events;
pub mod keys;
pub mod redis_util;
pub mod scripting;
pub mod shutdown;
pub mod streams;
pub mod telemetry;

pub use config::Config;
