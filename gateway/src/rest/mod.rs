//! REST routes: small filters, plain async handlers, one `recover` (warp's todos example).
//!
//! Each route matches its path before its method, so a known path with the wrong method is a
//! 405 and an unknown path a 404 — both in the JSON error shape.

pub mod body;
pub mod catalog;
pub mod conversations;
pub mod errors;
pub mod health;
pub mod openapi;
pub mod users;

use std::convert::Infallible;

use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::auth::Session;
use crate::state::AppState;
use errors::respond;

pub fn with_state(
    state: AppState,
) -> impl Filter<Extract = (AppState,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// `Bearer <token>` (scheme case-insensitive); `None` for any other shape.
fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The caller's session from `Authorization: Bearer <token>`: `None` when the request carries
/// no `Authorization` at all (anonymous), else the session — and a request whose credentials
/// do not verify (unknown, expired or revoked token, or not a bearer token) is refused with
/// 401 `invalid_token`, never served as anonymous.
pub fn session(
    state: AppState,
) -> impl Filter<Extract = (Option<Session>,), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and(with_state(state))
        .and_then(|header: Option<String>, state: AppState| async move {
            let Some(header) = header else {
                return Ok::<_, Rejection>(None);
            };
            let token = bearer(&header)
                .ok_or_else(|| warp::reject::custom(crate::auth::invalid_token()))?;
            match state
                .auth
                .session(token)
                .await
                .map_err(warp::reject::custom)?
            {
                Some(s) => Ok(Some(s)),
                None => Err(warp::reject::custom(crate::auth::invalid_token())),
            }
        })
}

/// The client's address (from the connection).
fn client_addr(
) -> impl Filter<Extract = (Option<std::net::SocketAddr>,), Error = Infallible> + Clone {
    warp::ext::optional::<crate::server::ClientAddr>()
        .map(|a: Option<crate::server::ClientAddr>| a.map(|c| c.0))
}

/// The request's `Idempotency-Key`, checked ([`crate::idempotency::from_headers`]); the
/// handler answers a bad one with its 400.
fn idempotency_key(
) -> impl Filter<Extract = (Result<Option<String>, errors::ApiError>,), Error = Infallible> + Clone
{
    warp::header::headers_cloned().map(|h: warp::http::HeaderMap| {
        crate::idempotency::from_headers(h.get_all(crate::idempotency::HEADER))
    })
}

fn json_body(state: &AppState) -> impl Filter<Extract = (body::Body,), Error = Rejection> + Clone {
    // Room for a maximal message escaped as JSON (up to 6 bytes per byte) plus the other fields.
    body::body(
        state.cfg.max_message_bytes * 6 + 4096,
        state.cfg.body_read_timeout(),
    )
}

/// All `/api/*`, `/healthz`, `/readyz`, `/metrics` and `/openapi.json` routes.
pub fn routes(state: AppState) -> warp::filters::BoxedFilter<(Response,)> {
    use conversations as c;
    let s = || with_state(state.clone());
    let auth = || session(state.clone());
    let body = || json_body(&state);

    let conversations = warp::path!("api" / "conversations").and(
        warp::post()
            .and(s())
            .and(auth())
            .and(client_addr())
            .and(idempotency_key())
            .and(body())
            .then(|st, se, addr, k, b| async move { respond(c::create(st, se, addr, k, b).await) })
            .or(warp::get()
                .and(s())
                .and(auth())
                .then(|st, se| async move { respond(c::list(st, se).await) }))
            .unify(),
    );
    let conversation = warp::path!("api" / "conversations" / String)
        .and(warp::get())
        .and(s())
        .and(auth())
        .then(|id, st, se| async move { respond(c::get(st, id, se).await) });
    let messages = warp::path!("api" / "conversations" / String / "messages")
        .and(warp::post())
        .and(s())
        .and(auth())
        .and(client_addr())
        .and(idempotency_key())
        .and(body())
        .then(
            |id, st, se, addr, k, b| async move { respond(c::send(st, id, se, addr, k, b).await) },
        );
    let message = warp::path!("api" / "conversations" / String / "messages" / String)
        .and(warp::delete())
        .and(s())
        .and(auth())
        .then(|id, mid, st, se| async move { respond(c::delete(st, id, mid, se).await) });
    let members = warp::path!("api" / "conversations" / String / "members")
        .and(warp::post())
        .and(s())
        .and(auth())
        .and(body())
        .then(|id, st, se, b| async move { respond(c::add_member(st, id, se, b).await) });
    let cancel = warp::path!("api" / "conversations" / String / "assistant" / "cancel")
        .and(warp::post())
        .and(s())
        .and(auth())
        .then(|id, st, se| async move { respond(c::cancel_assistant(st, id, se).await) });
    let users_route = warp::path!("api" / "users").and(
        warp::post()
            .and(s())
            .and(auth())
            .and(client_addr())
            .and(body())
            .then(|st, _: Option<Session>, addr, b| async move {
                respond(users::register(st, addr, b).await)
            })
            .or(warp::get()
                .and(s())
                .and(auth())
                .and(warp::query::<users::SearchQuery>())
                .then(|st, se, q| async move { respond(users::search(st, se, q).await) }))
            .unify(),
    );
    let sessions = warp::path!("api" / "sessions").and(
        warp::post()
            .and(s())
            .and(auth())
            .and(client_addr())
            .and(body())
            .then(|st, _: Option<Session>, addr, b| async move {
                respond(users::sign_in(st, addr, b).await)
            })
            .or(warp::delete()
                .and(s())
                .and(auth())
                .then(|st, se| async move { respond(users::sign_out(st, se).await) }))
            .unify(),
    );
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .then(health::healthz);
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(s())
        .then(health::readyz);
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .then(health::metrics);
    let openapi = warp::path!("openapi.json")
        .and(warp::get())
        .then(openapi::document);

    conversations
        .or(conversation)
        .unify()
        .or(messages)
        .unify()
        .or(message)
        .unify()
        .or(members)
        .unify()
        .or(cancel)
        .unify()
        .or(users_route)
        .unify()
        .or(sessions)
        .unify()
        .or(healthz)
        .unify()
        .or(readyz)
        .unify()
        .or(metrics)
        .unify()
        .or(openapi)
        .unify()
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn only_well_formed_bearer_tokens_are_read() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("BEARER  abc "), Some("abc"));
        for bad in [
            "",
            "Bearer",
            "Bearer ",
            "abc",
            "Basic dXNlcjpwdw==",
            "Token abc",
        ] {
            assert_eq!(bearer(bad), None, "{bad:?}");
        }
    }
}
