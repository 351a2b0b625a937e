//! Everything a request handler needs, cloned cheaply into each filter.

use std::sync::Arc;

use confab_shared::Config;

use crate::auth::Auth;
use crate::bus::Bus;
use crate::pipeline::Pipeline;
use crate::store::Store;
use crate::ws::hub::Hub;

#[derive(Clone)]
pub struct AppState {
    pub cfg: Arc<Config>,
    pub gateway_id: Arc<str>,
    pub pipeline: Pipeline,
    pub store: Store,
    pub auth: Auth,
    pub hub: Arc<Hub>,
    pub bus: Bus,
    pub shutdown: tokio_util::sync::CancellationToken,
    /// WebSocket sessions, awaited on shutdown.
    pub tasks: tokio_util::task::TaskTracker,
}
