//! Users and sessions: sign-up, sign-in, sign-out, username search.

use std::net::SocketAddr;

use warp::http::StatusCode;

use super::body::{opt_str, Body};
use super::errors::{json, ApiError, ApiResult};
use crate::auth::Session;
use crate::state::AppState;

fn credentials(body: &Body) -> Result<(String, String), ApiError> {
    let obj = body.json_object(true)?.unwrap_or_default();
    let username = opt_str(&obj, "username")?
        .ok_or_else(|| ApiError::bad_request("invalid_username", "username is required"))?;
    let password = opt_str(&obj, "password")?
        .ok_or_else(|| ApiError::bad_request("invalid_password", "password is required"))?;
    Ok((username.to_string(), password.to_string()))
}

/// `POST /api/users` → 201 `{"username"}`.
pub async fn register(state: AppState, addr: Option<SocketAddr>, body: Body) -> ApiResult {
    let (username, password) = credentials(&body)?;
    let name = state
        .auth
        .register(&username, &password, addr.map(|a| a.ip()))
        .await?;
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({ "username": name }),
    ))
}

/// `POST /api/sessions` → 200 `{"token","username","expiresAt"}`.
pub async fn sign_in(state: AppState, addr: Option<SocketAddr>, body: Body) -> ApiResult {
    let (username, password) = credentials(&body)?;
    let (token, username, expires_at) = state
        .auth
        .sign_in(&username, &password, addr.map(|a| a.ip()))
        .await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "token": token, "username": username, "expiresAt": expires_at }),
    ))
}

/// `DELETE /api/sessions`.
pub async fn sign_out(state: AppState, session: Option<Session>) -> ApiResult {
    let s = session.ok_or_else(ApiError::unauthorized)?;
    state.auth.sign_out(&s).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "message": "Signed out" }),
    ))
}

#[derive(serde::Deserialize)]
pub struct SearchQuery {
    #[serde(default)]
    pub prefix: String,
}

/// `GET /api/users?prefix=al` → up to 10 usernames.
pub async fn search(state: AppState, session: Option<Session>, q: SearchQuery) -> ApiResult {
    session.ok_or_else(ApiError::unauthorized)?;
    let users = state.auth.search(&q.prefix).await?;
    Ok(json(StatusCode::OK, &serde_json::json!({ "users": users })))
}
