//! `GET /ws`: the WebSocket handshake, done here rather than with `warp::ws()` so the
//! connection's buffers can be sized (tungstenite's defaults reserve 128 KiB per socket;
//! ours start at a few KiB and grow only for large frames).

use std::collections::HashMap;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::rest::errors::ApiError;
use crate::rest::with_state;
use crate::state::AppState;

/// Frames larger than this are refused by the protocol layer and close the socket (1009);
/// up to it, frames over `WS_MAX_FRAME_BYTES` get an `error` frame and the socket stays open.
pub fn hard_frame_limit(cfg: &confab_shared::Config) -> usize {
    (cfg.ws_max_frame_bytes * 4).max(1 << 20)
}

/// The read buffer an idle socket keeps: 1 KiB instead of tungstenite's 4 KiB saves 3 KiB per
/// connection. Bigger frames grow it while they are read. With a small buffer more of a
/// flood stays unread in the kernel, which would reset the socket at close before the client
/// reads the close code; `session::close` therefore reads the client's frames away first.
const READ_BUFFER: usize = 1024;

pub fn ws_config(cfg: &confab_shared::Config) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(4 << 20)
        .max_message_size(Some(hard_frame_limit(cfg)))
        .max_frame_size(Some(hard_frame_limit(cfg)))
}

pub fn route(state: AppState) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("ws")
        .and(warp::get())
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<OnUpgrade>())
        .and(warp::ext::optional::<crate::server::ClientAddr>())
        .and(
            warp::query::<HashMap<String, String>>()
                .or(warp::any().map(HashMap::new))
                .unify(),
        )
        .and(with_state(state))
        .then(handshake)
}

/// The credentials an upgrade request carries: `?token=` and/or `Authorization: Bearer`.
/// `Ok(None)`: none at all (anonymous). `Err`: present but not usable as a token — an empty
/// `?token=`, an `Authorization` that is not a bearer token, or two different tokens.
fn upgrade_token<'a>(
    headers: &'a warp::http::HeaderMap,
    query: &'a HashMap<String, String>,
) -> Result<Option<&'a str>, ()> {
    let from_query = query.get("token").map(|t| t.trim());
    let from_header = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(v) => {
            let v = v.to_str().map_err(|_| ())?.trim();
            let (scheme, token) = v.split_once(' ').ok_or(())?;
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(());
            }
            Some(token.trim())
        }
    };
    match (from_query, from_header) {
        (None, None) => Ok(None),
        (Some(t), None) | (None, Some(t)) if !t.is_empty() => Ok(Some(t)),
        (Some(q), Some(h)) if q == h && !q.is_empty() => Ok(Some(q)),
        _ => Err(()),
    }
}

/// Whether a browser page at `Origin` may open this WebSocket: no `Origin` (curl, native
/// clients), the page's own origin (the `Origin`'s host equals the request's `Host`), or one
/// of `ALLOWED_ORIGINS` (`*` for any). Cross-site pages are refused, so a future cookie-based
/// sign-in cannot be ridden by another site (cross-site WebSocket hijacking).
pub fn origin_allowed(headers: &warp::http::HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    if allowed.iter().any(|a| a == "*" || *a == origin) {
        return true;
    }
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.trim().to_ascii_lowercase());
    matches!((authority, host), (Some(a), Some(h)) if a == h)
}

async fn handshake(
    headers: warp::http::HeaderMap,
    on_upgrade: Option<OnUpgrade>,
    client: Option<crate::server::ClientAddr>,
    query: HashMap<String, String>,
    state: AppState,
) -> Response {
    let is_ws = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()));
    let version_ok = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    let (true, Some(accept), true, Some(on_upgrade)) = (is_ws, key, version_ok, on_upgrade) else {
        return ApiError::bad_request(
            "websocket_required",
            "This endpoint needs a WebSocket (version 13) upgrade",
        )
        .into_response();
    };
    if state.shutdown.is_cancelled() {
        return ApiError::unavailable("The gateway is shutting down").into_response();
    }
    if !origin_allowed(&headers, &state.cfg.allowed_origin_list()) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "WebSockets from this page's origin are not allowed (ALLOWED_ORIGINS)",
        )
        .into_response();
    }
    // Credentials that do not verify are refused, never taken for anonymous.
    let session = match upgrade_token(&headers, &query) {
        Err(()) => return crate::auth::invalid_token().into_response(),
        Ok(None) => None,
        Ok(Some(token)) => match state.auth.session(token).await {
            Ok(Some(s)) => Some(s),
            Ok(None) => return crate::auth::invalid_token().into_response(),
            Err(e) => return e.into_response(),
        },
    };
    if state.hub.connections() >= state.cfg.ws_max_connections {
        return ApiError::unavailable(
            "This gateway holds its maximum of WebSocket connections (WS_MAX_CONNECTIONS)",
        )
        .into_response();
    }
    if let Some(s) = &session {
        if state
            .hub
            .listeners(&confab_shared::keys::user_channel(&s.username))
            >= state.cfg.ws_max_connections_per_user
        {
            return ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_connections",
                "Too many connections for this user (WS_MAX_CONNECTIONS_PER_USER)",
            )
            .into_response();
        }
    }
    let config = ws_config(&state.cfg);
    let tasks = state.tasks.clone();
    let inner = tasks.clone();
    // The upgrade's trace: sends without a traceparent of their own continue it.
    let trace =
        crate::server::current_trace().unwrap_or_else(confab_shared::trace::TraceContext::new_root);
    tasks.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                // A task of its own: this one's captures (the state, the handshake) go now.
                let client = client.map(|c| c.0.ip());
                inner.spawn(super::session::serve(ws, state, session, trace, client));
            }
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
        }
    });
    let mut res = Response::new(Default::default());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn oh(origin: Option<&str>, host: &str) -> warp::http::HeaderMap {
        let mut m = warp::http::HeaderMap::new();
        if let Some(o) = origin.and_then(|o| HeaderValue::from_str(o).ok()) {
            m.insert(header::ORIGIN, o);
        }
        if let Ok(h) = HeaderValue::from_str(host) {
            m.insert(header::HOST, h);
        }
        m
    }

    #[test]
    fn only_the_pages_own_origin_and_listed_ones_may_open_a_socket() {
        let none: Vec<String> = Vec::new();
        assert!(origin_allowed(&oh(None, "chat.example.com"), &none));
        assert!(origin_allowed(
            &oh(Some("https://chat.example.com"), "chat.example.com"),
            &none
        ));
        assert!(origin_allowed(
            &oh(Some("http://127.0.0.1:3000"), "127.0.0.1:3000"),
            &none
        ));
        assert!(!origin_allowed(
            &oh(Some("https://evil.example"), "chat.example.com"),
            &none
        ));
        assert!(!origin_allowed(
            &oh(Some("http://127.0.0.1:5173"), "127.0.0.1:3000"),
            &none
        ));
        assert!(!origin_allowed(
            &oh(Some("null"), "chat.example.com"),
            &none
        ));
        let listed = vec!["https://app.example".to_string()];
        assert!(origin_allowed(
            &oh(Some("https://APP.example/"), "chat.example.com"),
            &listed
        ));
        assert!(origin_allowed(
            &oh(Some("https://evil.example"), "chat.example.com"),
            &["*".to_string()]
        ));
    }

    fn h(auth: Option<&str>) -> warp::http::HeaderMap {
        let mut m = warp::http::HeaderMap::new();
        if let Some(a) = auth.and_then(|a| HeaderValue::from_str(a).ok()) {
            m.insert(header::AUTHORIZATION, a);
        }
        m
    }

    #[test]
    fn only_an_upgrade_without_any_credentials_is_anonymous() {
        assert_eq!(upgrade_token(&h(None), &q(&[])), Ok(None));
        assert_eq!(
            upgrade_token(&h(None), &q(&[("token", "t1")])),
            Ok(Some("t1"))
        );
        assert_eq!(
            upgrade_token(&h(Some("Bearer t1")), &q(&[])),
            Ok(Some("t1"))
        );
        assert_eq!(
            upgrade_token(&h(Some("bearer t1")), &q(&[])),
            Ok(Some("t1"))
        );
        let (headers, query) = (h(Some("Bearer t1")), q(&[("token", "t1")]));
        assert_eq!(upgrade_token(&headers, &query), Ok(Some("t1")));
        // Present but unusable: refused (401), not anonymous.
        for (auth, query) in [
            (None, q(&[("token", "")])),
            (Some("Bearer "), q(&[])),
            (Some("Basic dXNlcjpwdw=="), q(&[])),
            (Some("t1"), q(&[])),
            (Some("Bearer t2"), q(&[("token", "t1")])),
        ] {
            assert_eq!(
                upgrade_token(&h(auth), &query),
                Err(()),
                "{auth:?} {query:?}"
            );
        }
        let mut bad = warp::http::HeaderMap::new();
        if let Ok(v) = HeaderValue::from_bytes(b"Bearer \xff") {
            bad.insert(header::AUTHORIZATION, v);
        }
        assert_eq!(upgrade_token(&bad, &q(&[])), Err(()));
    }
}
