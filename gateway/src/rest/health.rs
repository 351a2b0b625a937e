//! `GET /healthz` (the process answers) and `GET /readyz` (Redis answers, the completion
//! groups exist, this gateway's reply subscription is live) and `GET /metrics` (Prometheus).

use confab_shared::keys::{self, PartitionKeys};
use confab_shared::streams;
use warp::http::StatusCode;
use warp::reply::Response;

use super::errors::json;
use crate::state::AppState;

pub async fn healthz() -> Response {
    json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

pub async fn readyz(state: AppState) -> Response {
    let mut conn = state.store.conn();
    let ping: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
    // One partition's group stands for all: the gateway creates them together at start-up.
    let first = PartitionKeys::new(&state.cfg.partitions(), 0);
    let groups = streams::group_exists(&mut conn, &first.jobs, keys::COMPLETION_GROUP).await;
    if !state.bus.healthy() {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"status": "not_ready", "reason": "the Pub/Sub connection is down"}),
        );
    }
    match (ping, groups) {
        (Ok(_), Ok(true)) => json(
            StatusCode::OK,
            &serde_json::json!({"status": "ready", "gatewayId": &*state.gateway_id, "connections": state.hub.connections()}),
        ),
        (Ok(_), _) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"status": "not_ready", "reason": "the completion consumer groups do not exist yet"}),
        ),
        (Err(e), _) => {
            tracing::warn!(error = %e, "readiness: Redis unreachable");
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"status": "not_ready", "reason": "Redis is unreachable"}),
            )
        }
    }
}

/// The Prometheus text exposition of this process.
pub async fn metrics() -> Response {
    let mut r = Response::new(confab_shared::metrics::get().encode().into());
    r.headers_mut().insert(
        warp::http::header::CONTENT_TYPE,
        warp::http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}
