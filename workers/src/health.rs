//! `METRICS_ADDR`: a worker's `/metrics` (Prometheus), `/healthz` (the process answers) and
//! `/readyz` (Redis answers and the role is serving).

use std::net::SocketAddr;

use anyhow::Context;
use confab_shared::metrics;
use tokio_util::sync::CancellationToken;
use warp::http::StatusCode;
use warp::Filter;

/// The routes served on `METRICS_ADDR`: the labels of the worker's HTTP metrics.
pub const ROUTES: &[(&str, &str)] = &[("GET", "/metrics"), ("GET", "/healthz"), ("GET", "/readyz")];

fn catalog_unmatched() -> &'static str {
    "unmatched"
}

/// Binds `addr` (failing at start-up, naming `METRICS_ADDR`) and serves until `cancel`.
pub async fn serve(addr: SocketAddr, cancel: CancellationToken) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("METRICS_ADDR: cannot listen on {addr}"))?;
    let metrics_route = warp::path!("metrics").and(warp::get()).map(|| {
        warp::reply::with_header(
            metrics::get().encode(),
            "content-type",
            "text/plain; version=0.0.4; charset=utf-8",
        )
    });
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::json(&serde_json::json!({"status": "ok"})));
    let readyz = warp::path!("readyz").and(warp::get()).map(|| {
        let (status, body) = if metrics::ready() {
            (StatusCode::OK, serde_json::json!({"status": "ready"}))
        } else {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"status": "not_ready"}),
            )
        };
        warp::reply::with_status(warp::reply::json(&body), status)
    });
    let routes = metrics_route
        .or(healthz)
        .or(readyz)
        .with(warp::log::custom(|info| {
            let path = info.path();
            let route = ROUTES
                .iter()
                .find(|(_, t)| *t == path)
                .map_or(catalog_unmatched(), |(_, t)| t);
            metrics::get().http(
                info.method().as_str(),
                route,
                info.status().as_u16(),
                info.elapsed().as_secs_f64(),
            );
        }));
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    tokio::spawn(async move {
        warp::serve(routes)
            .incoming(listener)
            .graceful(async move { cancel.cancelled().await })
            .run()
            .await;
    });
    Ok(())
}
