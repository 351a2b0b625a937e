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
}
