//! The HTTP server: hyper's HTTP/1.1 connection handling around the warp routes.
//!
//! Per connection it enforces `MAX_CONNECTIONS_PER_ADDR` ([`ConnLimit`]: an address over it
//! gets a short 429 and is closed) and `HEADER_READ_TIMEOUT_MS` (hyper closes a connection
//! whose request headers — the first request's, the WebSocket handshake's, or the next
//! keep-alive request's — do not arrive in time; body reads have their own timeout in
//! `rest::body`). It records the client's address ([`ClientAddr`], a request extension the
//! routes read with `warp::ext`). Per request it sets the trace context — the request's
//! `traceparent`, or a new trace — as a task-local ([`current_trace`]) for the handlers,
//! runs the request in a span carrying its trace id, answers with the `traceparent` it ran
//! under, and counts the request in `confab_http_requests_total`. On shutdown it stops
//! accepting and lets the requests in flight finish (upgraded WebSockets are the sessions'
//! to close).
//!
//! HTTP/1.1 only: the automatic HTTP/2 detection reads the first bytes without a timeout,
//! which is exactly what an idle attacker exploits; browsers speak HTTP/2 to the TLS proxy in
//! front, which speaks HTTP/1.1 here.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use confab_shared::metrics;
use confab_shared::trace::TraceContext;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;
use tracing::Instrument;
use warp::http::{HeaderValue, Request};
use warp::reply::Response;

use crate::conn_limit::ConnLimit;
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

/// Per-connection limits of [`serve`].
#[derive(Clone, Debug)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub per_addr: ConnLimit,
    /// How long shutdown waits for requests in flight before dropping their connections.
    pub drain: Duration,
}

/// Serves `routes` on `listener` until `shutdown`, then drains the requests in flight.
pub async fn serve(
    listener: TcpListener,
    routes: warp::filters::BoxedFilter<(Response,)>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
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
        let Some(permit) = limits.per_addr.acquire(addr.ip()) else {
            tracing::debug!(client = %addr.ip(), "too many connections from one address");
            connections.spawn(refuse(stream));
            continue;
        };
        let service = warp::service(routes.clone());
        let handler = hyper::service::service_fn(move |req| handle(service.clone(), addr, req));
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(TokioIo::new(stream), handler)
            .with_upgrades();
        let stop = shutdown.clone();
        connections.spawn(async move {
            let _permit = permit;
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                // Timeouts, resets, malformed requests: the client's doing, not ours.
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(limits.drain, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("some HTTP connections did not finish within the drain time");
    }
}

/// Answers an address over its connection limit with 429 and closes, without waiting long.
async fn refuse(mut stream: TcpStream) {
    let body = r#"{"error":{"code":"too_many_connections","message":"Too many connections from this address"}}"#;
    let answer = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

/// One request: its client address, trace context, span and metrics; a streamed body
/// ([`crate::streamed`]) takes the place of warp's.
async fn handle<S>(
    mut service: S,
    addr: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<warp::http::Response<crate::streamed::HttpBody>, Infallible>
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
    if route.starts_with("/api/") || route == catalog::UNMATCHED {
        // API answers are one user's data, and a sign-in's carries a token: never cached.
        response
            .headers_mut()
            .entry(warp::http::header::CACHE_CONTROL)
            .or_insert(HeaderValue::from_static("no-store"));
    }
    if response.status() == warp::http::StatusCode::METHOD_NOT_ALLOWED {
        if let Ok(allow) = HeaderValue::from_str(&catalog::allowed(route)) {
            response
                .headers_mut()
                .insert(warp::http::header::ALLOW, allow);
        }
    }
    metrics::get().http(
        method.as_str(),
        route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    Ok(crate::streamed::into_http(response))
}
