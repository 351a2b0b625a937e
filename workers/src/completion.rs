//! The completion role (see the assistant issue): not built yet.

use std::sync::Arc;

use confab_shared::Config;
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

pub async fn run(
    _cfg: Arc<Config>,
    _conn: ConnectionManager,
    _cancel: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::bail!("the completion role is not available in this build")
}
