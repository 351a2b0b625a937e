//! # confab-e2e — the end-to-end test kit
//!
//! Runs Confab from the outside: a real `redis-server` on a free port, the real `gateway`
//! and `workers` binaries as child processes, and clients speaking HTTP and WebSocket to
//! them. Nothing is mocked and nothing is linked in: the tests see exactly what a deployment
//! sees. The integration tests live in `tests/` (`rest`, `pipeline`, `cleanup`, `live`).
//!
//! ## Before running
//! `cargo build -p confab-gateway -p confab-workers` (the Makefile builds the workspace).
//! The binaries are found next to the test executable (`target/debug/deps/..`) or in
//! `$CONFAB_BIN_DIR`; `redis-server` on `PATH` or in `$CONFAB_REDIS_SERVER`. A missing one
//! is a panic that says what to do.
//!
//! ## Layout
//! - [`Redis`]: `Redis::start()`, `port()`, `url()`, `conn()` (a multiplexed connection),
//!   `q(&[..])` for one-line commands, `keys(pattern)`, `stream(key)`, `history(conv)` (a
//!   conversation's stored events), `pending_of(consumer)`, `pubsub()`, `kill()`.
//! - [`Gateway`]: `Gateway::start(&redis, &[("ENV", "value")])` on a free port, ready when
//!   `GET /readyz` is 200; `http()`, `url()`, `ws_url()`, `kill9()`, `terminate()` (SIGTERM,
//!   returns the exit status), `restart()` (same port, same environment).
//! - [`Worker`]: `Worker::start(&redis, "persistence" | "cleanup", env)`; `kill9()`,
//!   `terminate()`, `name()` (its consumer name).
//! - [`Stack`]: `Stack::start(env)` = Redis + 1 gateway + 1 persistence worker;
//!   `Stack::with(gateways, persistence, cleanup, env)` for more.
//! - [`Http`]: `get/post/post_empty/post_raw/delete` → `(status, json)`, plus the seed's
//!   calls (`create_conversation`, `send_message`, `messages`, …) and users (`user(name)`
//!   signs up and in, returning a client carrying the token). [`assert_error`] checks the
//!   `{"error":{"code","message"}}` shape.
//! - [`Ws`]: `Ws::connect(url, token)`, `send_json`, `next_json(timeout)`,
//!   `expect_type("subscribed")`, `wait_type`, `subscribe(id, since)`, `collect(kind, n, t)`,
//!   `expect_silence(d)`, `wait_close(t)` → the close code.
//! - [`FaultProxy`]: a TCP proxy to Redis adding latency, dropping connections and
//!   black-holing traffic under a [`FaultControl`]; `Stack::through_proxy(..)` starts every
//!   process behind one (`stack.faults()`). `Worker::restart(&redis)` and
//!   `Redis::start_aof()` (AOF `always`, survives `nodes[0].restart()`) serve the chaos run.
//! - [`eventually`] / [`eventually_true`]: poll an async closure until a generous deadline —
//!   the kit never sleeps a fixed time where a condition can be polled, and asserts nothing
//!   about speed. [`send_command`] builds a raw `send_message` command (replays, outages).
//!
//! ## Isolation and clean-up
//! Every test starts its own Redis, so tests run in parallel. Each child process is killed
//! when its guard drops — also when the test panics — and carries `PR_SET_PDEATHSIG`, so
//! even a SIGKILLed test runner leaves none behind. Child output goes to log files under
//! `$TMPDIR/confab-e2e/`; a failing test prints the tail of each.

mod fault_proxy;
mod http;
mod process;
mod redis_server;
mod services;
mod sys;
mod ws;

use std::time::{Duration, Instant};

pub use fault_proxy::{FaultControl, FaultProxy};
pub use http::{assert_error, conversation_id, keys_of, str_field, Answer, Http};
pub use process::{bin_dir, free_port, log_dir, ChildProc};
pub use redis_server::{partition_count, Mode, Node, Redis};
pub use services::{Gateway, Stack, Worker, START_TIMEOUT, STOP_TIMEOUT};
pub use ws::{send_frame, Ws, WsEvent, WsOptions, WS_WAIT};

pub use serde_json::{json, Value};

/// The default deadline for [`eventually`]: generous, since a slow machine is not a failure.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Polls `check` every 50 ms until it yields `Some`, and returns that; panics naming `what`
/// once `timeout` has passed. `check` is an async closure, so it may borrow freely:
/// `eventually("applied", DEADLINE, async || (http.messages(&c).await.len() == 2).then_some(())).await`.
pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [`eventually`] for a boolean condition.
pub async fn eventually_true(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    eventually(what, timeout, async || check().await.then_some(())).await
}

/// The JSON of a `send_message` command as a gateway would append it to its partition stream
/// (without `replyTo`: nobody waits for the answer). Returns `(command, messageId)`.
pub fn send_command(conversation: &str, sender: &str, content: &str) -> (String, String) {
    let message_id = random_id();
    let command = json!({
        "id": random_id(),
        "kind": "send_message",
        "conversationId": conversation,
        "message": {
            "messageId": message_id,
            "sender": sender,
            "content": content,
            "timestamp": "2025-04-05T14:00:00Z",
        },
    });
    (command.to_string(), message_id)
}

/// A fresh UUID string (for ids that must not exist).
pub fn random_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Whether `s` is a UUID.
pub fn is_uuid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok()
}

/// The id half of a conversation's Redis keys: `confab:conv:{<id>}*`.
pub fn conv_key_pattern(conversation: &str) -> String {
    format!("confab:conv:{{{conversation}}}*")
}

/// A conversation's event history stream, `confab:conv:{<id>}:events`.
pub fn events_key(conversation: &str) -> String {
    format!("confab:conv:{{{conversation}}}:events")
}

/// Runs each named scenario `async fn name(mode: Mode)` twice: as `name::standalone` against
/// one `redis-server` and as `name::cluster` against a 3-primary Redis Cluster.
#[macro_export]
macro_rules! in_both_modes {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn standalone() {
                super::$scenario($crate::Mode::Standalone).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster() {
                super::$scenario($crate::Mode::Cluster).await
            }
        }
    )*};
}
