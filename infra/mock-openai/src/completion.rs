//! `POST /v1/chat/completions`: auth, parsing, directives, then a JSON or
//! streamed answer.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use warp::http::HeaderValue;
use warp::reply::Response;
use warp::Reply;

use crate::directives::{self, Directives};
use crate::errors::ApiError;
use crate::request::ChatRequest;
use crate::server::AppState;
use crate::stats::{Outcome, RequestGuard};
use crate::stream::{self, StreamPlan};
use crate::text;
use crate::wire::{Envelope, Usage};

/// Checks `Authorization: Bearer <key>` when the server has a key.
pub fn check_auth(expected: Option<&str>, header: Option<&str>) -> Result<(), ApiError> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let provided = header.and_then(|h| {
        let (scheme, token) = h.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    match provided {
        Some(token) if token == expected => Ok(()),
        other => Err(ApiError::invalid_api_key(other)),
    }
}

fn error_response(guard: &mut RequestGuard, err: ApiError) -> Response {
    guard.error(err.status);
    err.into_response()
}

/// Handles one chat completion request.
pub async fn handle(state: Arc<AppState>, auth: Option<String>, body: Bytes) -> Response {
    let mut guard = RequestGuard::start(state.stats.clone());
    if let Err(err) = check_auth(state.config.api_key.as_deref(), auth.as_deref()) {
        return error_response(&mut guard, err);
    }
    let req = match ChatRequest::parse(&body, state.config.default_model()) {
        Ok(req) => req,
        Err(e) => return error_response(&mut guard, ApiError::bad_request(e.message, e.param)),
    };
    state.stats.record_messages(
        req.messages
            .iter()
            .map(|m| format!("{}: {}", m.role, m.text)),
    );
    let (directives, user_text) = directives::parse(req.last_user_text());
    guard.log.model = req.model.clone();
    guard.log.stream = req.stream;
    guard.log.prompt = text::preview(&user_text, text::ECHO_CHARS);
    guard.log.directives = directives.summary();
    if !directives.unknown.is_empty() {
        let shown: Vec<_> = directives.unknown.iter().take(3).collect();
        let count = directives.unknown.len();
        tracing::warn!(count, first = ?shown, "ignoring unknown mock directives");
    }
    if let Some(ms) = directives.delay_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let failing = directives.has_failure()
        && directives
            .fail
            .is_none_or(|n| state.stats.should_fail(req.conversation_key(), n));
    if failing {
        if let Some(status) = directives.status {
            let err = ApiError::for_status(status, &req.model, directives.retry_after);
            return error_response(&mut guard, err);
        }
    }
    answer(&state, &req, &directives, &user_text, failing, guard)
}

fn answer(
    state: &AppState,
    req: &ChatRequest,
    directives: &Directives,
    user_text: &str,
    failing: bool,
    mut guard: RequestGuard,
) -> Response {
    let content = match directives.tokens {
        Some(n) => text::numbered_reply(n),
        None => text::demo_reply(user_text),
    };
    let mut tokens = text::tokenize(&content);
    let finish_reason = match req.max_tokens {
        Some(max) if max < tokens.len() => {
            tokens.truncate(max);
            "length"
        }
        _ => "stop",
    };
    let envelope = Envelope::new(&req.model, directives.lenient, req.include_usage);
    guard.log.id = envelope.id.clone();
    let prompt_tokens = text::prompt_tokens(req.messages.iter().map(|m| m.text.as_str()));
    if req.stream {
        let plan = StreamPlan {
            tokens: tokens.iter().map(|t| t.to_string()).collect(),
            envelope,
            finish_reason,
            tps: directives.tps.unwrap_or(state.config.tokens_per_sec),
            prompt_tokens,
            cut_after: directives.cut.filter(|_| failing),
            error_after: directives.stream_error.filter(|_| failing),
            stamp: directives.stamp,
        };
        return stream::respond(plan, guard);
    }
    if failing && directives.cut.is_some() {
        return stream::cut_json_response(guard, &envelope.id);
    }
    if failing && directives.stream_error.is_some() {
        return error_response(&mut guard, ApiError::server_error(500));
    }
    guard.log.tokens = tokens.len();
    let usage = Usage::new(prompt_tokens, tokens.len());
    let content = if directives.stamp {
        // One send time for the whole (non-streamed) answer.
        let stamp = text::stamp_token(text::now_micros());
        stamp.repeat(tokens.len())
    } else {
        tokens.concat()
    };
    guard.respond(200);
    guard.finish(Outcome::Completed);
    let body = envelope.completion(&content, finish_reason, usage);
    let mut resp = warp::reply::json(&body).into_response();
    if let Ok(v) = HeaderValue::from_str(&envelope.id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn auth_rules() {
        assert!(check_auth(None, None).is_ok());
        assert!(check_auth(Some("k"), Some("Bearer k")).is_ok());
        assert!(check_auth(Some("k"), Some("bearer  k ")).is_ok());
        assert_eq!(
            check_auth(Some("k"), Some("Bearer nope")).map_err(|e| e.status),
            Err(401)
        );
        assert!(check_auth(Some("k"), None).is_err());
        assert!(check_auth(Some("k"), Some("k")).is_err());
    }

    // Pacing and delays on tokio's paused clock: the handler and its producer task run in
    // this runtime without sockets, time only moves when every task waits on a timer, so
    // the instants below are exact whatever the machine's load.

    use std::time::Duration;

    use http_body_util::BodyExt;
    use serde_json::{json, Value};
    use tokio::time::Instant;

    use crate::config::MockConfig;
    use crate::stats::Stats;

    /// One SSE payload and the (virtual) time since the request was handed to the handler.
    type Timed = (Duration, String);

    fn state(config: MockConfig) -> Arc<AppState> {
        Arc::new(AppState {
            config,
            stats: Arc::new(Stats::default()),
        })
    }

    /// Calls the handler with a streaming request; returns the time the handler took to
    /// return the response and every `data:` payload with its arrival time.
    async fn stream(state: &Arc<AppState>, user: &str) -> (Duration, Vec<Timed>) {
        let body = json!({
            "model": "gpt-4o-mini",
            "stream": true,
            "messages": [{"role": "user", "content": user}],
        });
        let started = Instant::now();
        let resp = handle(state.clone(), None, Bytes::from(body.to_string())).await;
        let responded = started.elapsed();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut buf = String::new();
        let mut events = Vec::new();
        while let Some(frame) = body.frame().await {
            let at = started.elapsed();
            let frame = frame.expect("body frame");
            if let Some(data) = frame.data_ref() {
                buf.push_str(std::str::from_utf8(data).expect("utf-8"));
            }
            while let Some(end) = buf.find("\n\n") {
                let event: String = buf.drain(..end + 2).collect();
                let payload = event.trim_end().strip_prefix("data: ").expect("data event");
                events.push((at, payload.to_string()));
            }
        }
        assert!(buf.is_empty(), "unterminated event {buf:?}");
        (responded, events)
    }

    /// Arrival times of the chunks carrying content.
    fn content_times(events: &[Timed]) -> Vec<Duration> {
        events
            .iter()
            .filter(|(_, p)| {
                serde_json::from_str::<Value>(p).is_ok_and(|v| {
                    v["choices"][0]["delta"]["content"]
                        .as_str()
                        .is_some_and(|c| !c.is_empty())
                })
            })
            .map(|(at, _)| *at)
            .collect()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn tps_directive_paces_every_chunk() {
        // The server is unpaced; the directive asks for 20 tokens/s: one chunk every 50 ms.
        let (responded, events) =
            stream(&state(MockConfig::fast()), "[[mock tps=20 tokens=10]]").await;
        assert_eq!(responded, Duration::ZERO);
        let times = content_times(&events);
        let want: Vec<Duration> = (1..=10).map(|k| ms(50 * k)).collect();
        assert_eq!(times, want);
        // The role chunk goes out at once; finish and [DONE] right after the last token.
        assert_eq!(events[0].0, Duration::ZERO);
        assert_eq!(
            events.last().map(|e| (e.0, e.1.as_str())),
            Some((ms(500), "[DONE]"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn tps_zero_on_a_paced_server_is_unpaced() {
        let config = MockConfig {
            tokens_per_sec: 5,
            ..MockConfig::default()
        };
        let (_, events) = stream(&state(config), "[[mock tps=0 tokens=300]]").await;
        let times = content_times(&events);
        assert_eq!(times.len(), 300);
        assert!(times.iter().all(|t| t.is_zero()), "{times:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn config_tokens_per_sec_is_the_default_pace() {
        let config = MockConfig {
            tokens_per_sec: 25,
            ..MockConfig::default()
        };
        let (_, events) = stream(&state(config), "[[mock tokens=10]]").await;
        let want: Vec<Duration> = (1..=10).map(|k| ms(40 * k)).collect();
        assert_eq!(content_times(&events), want);
    }

    #[tokio::test(start_paused = true)]
    async fn delay_ms_postpones_the_response() {
        let (responded, events) =
            stream(&state(MockConfig::fast()), "[[mock delay_ms=300 tokens=2]]").await;
        assert_eq!(responded, ms(300));
        assert!(events.iter().all(|(at, _)| *at == ms(300)), "{events:?}");
        assert_eq!(content_times(&events).len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn paced_streams_run_side_by_side() {
        // 200 streams of 50 tokens at 50/s: each takes 1 s, and together they take 1 s too.
        let state = state(MockConfig::default());
        let started = Instant::now();
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let state = state.clone();
                tokio::spawn(async move {
                    stream(&state, &format!("stream {i} [[mock tps=50 tokens=50]]")).await
                })
            })
            .collect();
        for t in tasks {
            let (_, events) = t.await.expect("task");
            let times = content_times(&events);
            assert_eq!(times.len(), 50);
            assert_eq!(times.last(), Some(&ms(1000)));
        }
        assert_eq!(started.elapsed(), ms(1000));
        let stats = state.stats.snapshot();
        assert_eq!(
            (stats.completed, stats.aborted, stats.in_flight),
            (200, 0, 0)
        );
    }
}
