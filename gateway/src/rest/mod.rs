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

/// The caller's session from `Authorization: Bearer <token>`; `None` without a valid one.
pub fn session(
    state: AppState,
) -> impl Filter<Extract = (Option<Session>,), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and(with_state(state))
        .and_then(|header: Option<String>, state: AppState| async move {
            let Some(token) = header.as_deref().and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            }) else {
                return Ok::<_, Rejection>(None);
            };
            state
                .auth
                .session(token.trim())
                .await
                .map_err(warp::reject::custom)
        })
}

fn json_body(state: &AppState) -> impl Filter<Extract = (body::Body,), Error = Rejection> + Clone {
    // Room for a maximal message escaped as JSON (up to 6 bytes per byte) plus the other fields.
    body::body(state.cfg.max_message_bytes * 6 + 4096)
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
            .and(body())
            .then(|st, se, b| async move { respond(c::create(st, se, b).await) })
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
        .and(body())
        .then(|id, st, se, b| async move { respond(c::send(st, id, se, b).await) });
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
            .and(body())
            .then(|st, b| async move { respond(users::register(st, b).await) })
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
            .and(
                warp::ext::optional::<crate::server::ClientAddr>()
                    .map(|a: Option<crate::server::ClientAddr>| a.map(|c| c.0)),
            )
            .and(body())
            .then(|st, addr, b| async move { respond(users::sign_in(st, addr, b).await) })
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
