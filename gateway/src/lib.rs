//! # confab-gateway
//!
//! The HTTP and WebSocket front door. It validates requests, turns writes into commands on
//! `confab:commands`, waits for the persistence worker's reply, reads directly from Redis,
//! and pushes events to WebSocket clients. It holds no state another replica needs: any
//! number of gateways may share a port (SO_REUSEPORT) or sit behind a load balancer.
//!
//! ## Layout
//! - [`rest`]: routes, body reading, handlers, the one error shape and `recover`.
//! - [`ws`]: handshake, per-connection session, frame protocol, local fan-out hub.
//! - [`pipeline`]: append a command, wait for its reply (504 after `REQUEST_TIMEOUT_MS`).
//! - [`bus`]: the Pub/Sub connection — replies, conversation events, user notices.
//! - [`store`]: reads (conversation, chat list, event history).
//! - [`idempotency`]: `clientId` / `Idempotency-Key` → the ids a retry repeats.
//! - [`auth`]: users (argon2id), sessions (hashed tokens), sign-in rate limiting.
//! - [`web`]: the browser client's files with an `index.html` fallback.

#![recursion_limit = "256"]

pub mod addr_limit;
pub mod auth;
pub mod bus;
pub mod conn_limit;
pub mod idempotency;
pub mod pipeline;
pub mod rest;
pub mod server;
pub mod state;
pub mod store;
pub mod streamed;
pub mod web;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use confab_shared::db::Redis;
use confab_shared::keys::{self, PartitionKeys};
use confab_shared::{streams, Config};
use tokio_util::sync::CancellationToken;
use warp::Filter;

/// Sent with every response (`web` and API alike): no sniffing, no framing, no referrer,
/// and a policy that lets the web client load only its own scripts, styles and images and
/// talk only to its own origin (`connect-src 'self'` covers the WebSocket). The client has
/// no inline script; highlight.js and React set styles through the CSSOM, which
/// `style-src 'self'` allows.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; \
     base-uri 'self'; form-action 'self'; frame-ancestors 'none'";

fn security_headers() -> warp::http::HeaderMap {
    use warp::http::header::{HeaderName, HeaderValue};
    let mut h = warp::http::HeaderMap::new();
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("content-security-policy", CONTENT_SECURITY_POLICY),
    ] {
        h.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    h
}

/// Makes glibc return large freed blocks to the OS. Each argon2id hash allocates ~19 MiB;
/// with glibc's default *dynamic* mmap threshold those blocks end up in arena heaps that are
/// never trimmed, and a gateway grew by ~15 MiB per sign-in (300+ MiB after 20). A fixed 1 MiB
/// threshold keeps big blocks in mmap, freed with munmap: measured 7 MiB after the same 20.
#[allow(unsafe_code)]
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; it is called once at start-up before
    // any thread that allocates concurrently exists, and M_MMAP_THRESHOLD accepts any size.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Binds `addr` with SO_REUSEPORT (and SO_REUSEADDR), so several gateways share the port.
pub fn bind_reuseport(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    tokio::net::TcpListener::from_std(socket.into())
}

/// Serves on `listener` until `cancel` fires, then stops accepting, lets in-flight requests
/// finish, closes WebSockets with 1001 and returns.
pub async fn run(
    listener: tokio::net::TcpListener,
    cfg: Config,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    let gateway_id: Arc<str> = cfg
        .gateway_id
        .clone()
        .unwrap_or_else(|| format!("gw-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]))
        .into();
    let redis = Redis::from_config(&cfg);
    let Some(mut conn) = redis
        .connect_with_retry(cfg.request_timeout(), &cancel)
        .await
    else {
        return Ok(());
    };
    // Whichever process starts first creates the completion groups, from the start of the
    // streams (persistence needs none: partition owners read from their committed offset).
    let parts = cfg.partitions();
    confab_shared::metrics::init(rest::catalog::ROUTES, &parts);
    confab_shared::layout::ensure(&mut conn, &parts)
        .await
        .context("checking STREAM_PARTITIONS against the deployment")?;
    for pk in PartitionKeys::all(&parts) {
        streams::ensure_group(&mut conn, &pk.jobs, keys::COMPLETION_GROUP)
            .await
            .context("creating the completion group")?;
    }

    let pipeline = pipeline::Pipeline::new(
        conn.clone(),
        &gateway_id,
        parts,
        cfg.request_timeout(),
        cfg.command_stream_max_len,
    );
    tokio::spawn(pipeline.clone().watch_backlog(cancel.clone()));
    tokio::spawn(confab_shared::metrics::sample_forever(
        conn.clone(),
        cfg.partitions(),
        cancel.clone(),
    ));
    let hub = Arc::new(ws::hub::Hub::new());
    // The bus outlives the HTTP drain: replies to requests in flight at SIGTERM still arrive.
    let bus_stop = CancellationToken::new();
    let bus = bus::Bus::start(
        &redis,
        keys::reply_channel(&gateway_id),
        pipeline.clone(),
        hub.clone(),
        bus_stop.clone(),
    )
    .await
    .context("subscribing to the reply channel")?;
    let state = state::AppState {
        cfg: cfg.clone(),
        gateway_id: gateway_id.clone(),
        pipeline,
        store: store::Store::new(conn.clone()),
        auth: auth::Auth::new(conn, &cfg),
        hub: hub.clone(),
        bus,
        shutdown: cancel.clone(),
        tasks: tokio_util::task::TaskTracker::new(),
    };
    let routes = rest::routes(state.clone())
        .or(ws::upgrade::route(state.clone()))
        .unify()
        .or(web::routes(cfg.web_dir.clone().into()))
        .unify()
        .recover(rest::errors::recover)
        .unify()
        .with(warp::reply::with::headers(security_headers()))
        .map(warp::Reply::into_response)
        .boxed();

    let addr = listener.local_addr().ok();
    tracing::info!(gateway_id = %gateway_id, addr = ?addr, "gateway listening");
    let shutdown = cancel.clone();
    let limits = server::Limits {
        header_read_timeout: cfg.header_read_timeout(),
        per_addr: conn_limit::ConnLimit::new(cfg.max_connections_per_addr),
        drain: cfg.request_timeout() + cfg.body_read_timeout(),
    };
    server::serve(listener, routes, limits, shutdown).await;
    hub.close_all(ws::session::CLOSE_GOING_AWAY);
    state.tasks.close();
    if tokio::time::timeout(Duration::from_secs(5), state.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("some WebSocket sessions did not close in time");
    }
    bus_stop.cancel();
    tracing::info!("gateway stopped");
    Ok(())
}
