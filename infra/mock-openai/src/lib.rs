//! # mock-openai — Confab's local demo model
//!
//! An OpenAI-compatible Chat Completions server that stands in for the paid
//! API in tests, in `make up` without a key, and in benchmarks.
//!
//! ## Endpoints
//! | Route | What |
//! | --- | --- |
//! | `POST /v1/chat/completions` (also `/chat/completions`) | JSON or SSE answer |
//! | `GET /v1/models`, `GET /v1/models/{id}` | configured model names |
//! | `GET /_mock/stats` | `{"requests","completed","aborted","in_flight","cut","stream_errors","by_status"}` |
//! | `POST /_mock/reset` | zero the counters and `fail=N` history |
//! | `GET /healthz` | liveness |
//!
//! Without a directive the answer is the demo reply ([`demo_reply`]): a
//! deterministic Markdown text (about 100 tokens) saying this is Confab's local
//! demo model and how to configure a real one, quoting the user's message,
//! with a table and a fenced `rust` block. Streams are paced at
//! [`MockConfig::tokens_per_sec`] (a token is a word plus its trailing
//! whitespace; long words are split into pieces of up to 8 characters) and
//! honour `max_tokens` / `max_completion_tokens` (`finish_reason: "length"`).
//!
//! ## Directives
//! Put `[[mock key=value flag …]]` anywhere in the **last user message**
//! (items separated by spaces or commas; several blocks merge, later wins;
//! blocks are removed from the echoed text):
//!
//! | Directive | Effect |
//! | --- | --- |
//! | `tps=N` | pacing override, tokens per second; `0` = as fast as possible |
//! | `tokens=N` | reply is exactly N tokens `w1 w2 … wN` instead of the demo text |
//! | `status=N` | answer HTTP N (400–599) with an OpenAI error body: 401 `invalid_api_key`, 404 `model_not_found`, 429 type `requests` code `rate_limit_exceeded`, 5xx `server_error` |
//! | `retry_after=S` | `Retry-After: S` (and `retry-after-ms`) on 429; default 1 |
//! | `cut=K` | stream K content chunks, then drop the connection (no `finish_reason`, no `[DONE]`); non-streaming: drop right after the headers |
//! | `stream_error` / `stream_error=K` | after K (default 2) content chunks send `data: {"error":{…,"type":"server_error"}}` in the 200 stream and close; non-streaming: HTTP 500 |
//! | `fail=N` | the failure above (`status`/`cut`/`stream_error`) hits only the first N requests with the same conversation (hash of all messages, directive included); later ones succeed. Without `fail` the failure is permanent |
//! | `lenient` | omit `id`, `object`, `created`, `model`, `system_fingerprint` from chunks |
//! | `delay_ms=N` | wait N ms before the first byte |
//! | `stamp` | every content token's text is the server's wall-clock send time, `⟨t=<unix µs>⟩ ` (e.g. `⟨t=1732245600123456⟩ `, always one trailing space), taken when the chunk is handed to hyper to be written, instead of `wN ` / the demo words; the token count is unchanged (`tokens=N` → N stamps, `max_tokens` still applies). Non-streaming: every token carries the response time. [`parse_stamps`] reads them back; a client on the same machine gets model→client latency as receipt − stamp |
//!
//! Example: `Hello [[mock tps=50 tokens=200]]`,
//! `[[mock status=429 retry_after=2 fail=1]]`, `[[mock cut=3]]`,
//! `[[mock tps=50 tokens=100 stamp]]`.
//!
//! ## Streaming format
//! `Content-Type: text/event-stream`; each event is `data: {json}\n\n`:
//! a role chunk (`delta: {"role":"assistant","content":""}`), one chunk per
//! token, a chunk with an empty delta and `finish_reason`, then (with
//! `stream_options.include_usage`) a chunk with `choices: []` and `usage`,
//! then `data: [DONE]`. With `include_usage` the other chunks carry
//! `"usage": null`, as OpenAI's do.
//!
//! ## Modules
//! [`directives`] parsing · [`request`] lenient request parsing · `text`
//! tokens and the demo reply · `wire` JSON objects · `stream` paced SSE
//! producer · `completion` the handler · `stats` counters · `server` routes,
//! [`run`] and [`MockServer`].

mod completion;
mod config;
pub mod directives;
mod errors;
pub mod request;
mod server;
mod stats;
mod stream;
mod text;
mod wire;

pub use config::{MockConfig, DEFAULT_TOKENS_PER_SEC, DEMO_MODEL};
pub use directives::Directives;
pub use server::{run, MockServer};
pub use stats::StatsSnapshot;
pub use text::{
    demo_reply, now_micros, numbered_reply, parse_stamps, stamp_token, tokenize, STAMP_CLOSE,
    STAMP_OPEN,
};
pub use wire::SYSTEM_FINGERPRINT;

/// Builds a directive block, e.g. `directive("cut=3 fail=1")` →
/// `"[[mock cut=3 fail=1]]"`.
pub fn directive(items: &str) -> String {
    format!("[[mock {items}]]")
}
