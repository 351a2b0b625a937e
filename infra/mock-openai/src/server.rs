//! Routes, the server loop and an in-process handle for tests.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::completion::{self, check_auth};
use crate::config::MockConfig;
use crate::errors::ApiError;
use crate::stats::{Stats, StatsSnapshot};

/// Shared by all handlers.
#[derive(Debug)]
pub(crate) struct AppState {
    pub config: MockConfig,
    pub stats: Arc<Stats>,
}

fn model_object(id: &str) -> serde_json::Value {
    json!({"id": id, "object": "model", "created": 1_700_000_000, "owned_by": "confab-mock"})
}

fn models(state: &AppState, auth: Option<&str>, id: Option<&str>) -> Response {
    if let Err(e) = check_auth(state.config.api_key.as_deref(), auth) {
        return e.into_response();
    }
    match id {
        None => {
            let data: Vec<_> = state
                .config
                .models
                .iter()
                .map(|m| model_object(m))
                .collect();
            warp::reply::json(&json!({"object": "list", "data": data})).into_response()
        }
        Some(id) if state.config.models.iter().any(|m| m == id) => {
            warp::reply::json(&model_object(id)).into_response()
        }
        Some(id) => ApiError::model_not_found(id).into_response(),
    }
}

async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    let status = if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        StatusCode::METHOD_NOT_ALLOWED
    } else if rejection.is_not_found() {
        StatusCode::NOT_FOUND
    } else {
        // Body read failures and the like.
        let msg = format!("Could not read the request: {rejection:?}");
        return Ok(ApiError::bad_request(msg, None).into_response());
    };
    Ok(ApiError::unknown_route(status.as_u16()).into_response())
}

/// All routes of the mock, as one warp filter.
pub(crate) fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    let with_state = warp::any().map(move || state.clone());
    let auth = warp::header::optional::<String>("authorization");

    let chat_path = warp::path!("v1" / "chat" / "completions")
        .or(warp::path!("chat" / "completions"))
        .unify();
    // Path before method, so unknown paths are 404 and wrong methods 405.
    let chat = chat_path
        .and(warp::post())
        .and(with_state.clone())
        .and(auth)
        .and(warp::body::bytes())
        .then(completion::handle);

    let list_path = warp::path!("v1" / "models")
        .or(warp::path!("models"))
        .unify();
    let list = list_path
        .and(warp::get())
        .and(with_state.clone())
        .and(auth)
        .map(|s: Arc<AppState>, a: Option<String>| models(&s, a.as_deref(), None));
    let one_path = warp::path!("v1" / "models" / String)
        .or(warp::path!("models" / String))
        .unify();
    let one = one_path
        .and(warp::get())
        .and(with_state.clone())
        .and(auth)
        .map(|id: String, s: Arc<AppState>, a: Option<String>| models(&s, a.as_deref(), Some(&id)));

    let stats = warp::path!("_mock" / "stats")
        .and(warp::get())
        .and(with_state.clone())
        .map(|s: Arc<AppState>| warp::reply::json(&s.stats.snapshot()).into_response());
    let reset = warp::path!("_mock" / "reset")
        .and(warp::post())
        .and(with_state)
        .map(|s: Arc<AppState>| {
            s.stats.reset();
            warp::reply::json(&s.stats.snapshot()).into_response()
        });
    let health = warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::json(&json!({"status": "ok"})).into_response());

    chat.or(list)
        .unify()
        .or(one)
        .unify()
        .or(stats)
        .unify()
        .or(reset)
        .unify()
        .or(health)
        .unify()
        .recover(recover)
        .unify()
}

async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    warp::serve(routes(state))
        .incoming(listener)
        .graceful(shutdown)
        .run()
        .await;
    Ok(())
}

/// Serves the mock on `listener` until `shutdown` resolves, then lets
/// in-flight responses finish.
pub async fn run(
    listener: TcpListener,
    config: MockConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = Arc::new(AppState {
        config,
        stats: Arc::new(Stats::default()),
    });
    serve(listener, state, shutdown).await
}

/// A mock running in the current tokio runtime, for tests in any crate.
///
/// Dropping it (or calling [`MockServer::shutdown`]) stops accepting
/// connections; in-flight streams are allowed to finish.
#[derive(Debug)]
pub struct MockServer {
    addr: SocketAddr,
    stats: Arc<Stats>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl MockServer {
    /// Binds `127.0.0.1:0` and starts serving.
    pub async fn start(config: MockConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        Self::start_on(listener, config)
    }

    /// Starts serving on an already bound listener.
    pub fn start_on(listener: TcpListener, config: MockConfig) -> anyhow::Result<Self> {
        let addr = listener.local_addr()?;
        let stats = Arc::new(Stats::default());
        let state = Arc::new(AppState {
            config,
            stats: stats.clone(),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, state, async move {
            // A dropped sender also means "stop".
            let _ = stopped.await;
        }));
        Ok(Self {
            addr,
            stats,
            stop: Some(stop),
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/v1`, the value for `OPENAI_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Same numbers as `GET /_mock/stats`.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Same as `POST /_mock/reset`.
    pub fn reset(&self) {
        self.stats.reset();
    }

    /// Stops accepting, waits up to `grace` for in-flight responses.
    pub async fn shutdown(mut self, grace: Duration) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(grace, &mut self.task).await {
            Ok(joined) => joined?,
            Err(_) => {
                self.task.abort();
                Ok(())
            }
        }
    }
}
