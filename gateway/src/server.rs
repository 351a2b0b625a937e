//! The HTTP server: hyper's connection handling around the warp routes.
//!
//! Per connection it records the client's address ([`ClientAddr`], a request extension the
//! routes read with `warp::ext`). Per request it sets the trace context — the request's
//! `traceparent`, or a new trace — as a task-local ([`current_trace`]) for the handlers,
//! runs the request in a span carrying its trace id, answers with the `traceparent` it ran
//! under, and counts the request in `confab_http_requests_total`. On shutdown it stops
//! accepting and waits for the requests in flight (upgraded WebSockets are the sessions'
//! to close).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use confab_shared::metrics;
use confab_shared::trace::TraceContext;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::Service;
use tracing::Instrument;
use warp::http::{HeaderValue, Request};
use warp::reply::Response;

use crate::rest::catalog;

/// The address of the client a request came from.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

tokio::task_local! {
    static TRACE: TraceContext;
}

/// The trace context of the request being handled (`None` outside a request).
pub fn current_trace() -> Option<TraceContext> {
    TRACE.try_with(Clone::clone).ok()
}

/// Serves `routes` on `listener` until `shutdown`, then drains the requests in flight.
pub async fn serve(
    listener: TcpListener,
    routes: warp::filters::BoxedFilter<(Response,)>,
    shutdown: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, addr) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors (EMFILE) and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let service = warp::service(routes.clone());
        let handler = hyper::service::service_fn(move |req| handle(service.clone(), addr, req));
        let builder = Builder::new(TokioExecutor::new());
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), handler)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// One request: its client address, trace context, span and metrics.
async fn handle<S>(
    mut service: S,
    addr: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<Response, Infallible>
where
    S: Service<Request<Incoming>, Response = Response, Error = Infallible>,
{
    let started = Instant::now();
    req.extensions_mut().insert(ClientAddr(addr));
    let incoming = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(TraceContext::parse);
    let method = req.method().clone();
    let route = catalog::template(req.uri().path());
    let span = tracing::info_span!(
        "request",
        trace_id = tracing::field::Empty,
        %method,
        route
    );
    let trace = confab_shared::telemetry::hop(&span, incoming.as_ref());
    span.record("trace_id", trace.trace_id.as_str());
    let header = HeaderValue::from_str(&trace.header()).ok();
    let mut response = TRACE
        .scope(trace, service.call(req).instrument(span))
        .await?;
    if let Some(h) = header {
        response.headers_mut().insert("traceparent", h);
    }
    metrics::get().http(
        method.as_str(),
        route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    Ok(response)
}
