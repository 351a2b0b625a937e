//! Connecting to Redis.
//!
//! Short commands of a whole process share one auto-reconnecting [`ConnectionManager`]
//! (redis-rs multiplexes and pipelines concurrent calls on it). A blocking `XREADGROUP`
//! gets a connection of its own ([`blocking_connection`]) so it never stalls the others.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisResult};

/// A shared, auto-reconnecting connection for ordinary commands.
pub async fn connect(url: &str, response_timeout: Duration) -> RedisResult<ConnectionManager> {
    let client = Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(Duration::from_secs(3)))
        .set_number_of_retries(3)
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_with_config(client, config).await
}

/// A connection for blocking reads: its timeout covers `block` plus a margin.
pub async fn blocking_connection(url: &str, block: Duration) -> RedisResult<ConnectionManager> {
    connect(url, block + Duration::from_secs(5)).await
}

/// Retries `connect` until it succeeds or `cancel` fires, logging each failure once a second.
pub async fn connect_with_retry(
    url: &str,
    response_timeout: Duration,
    cancel: &tokio_util::sync::CancellationToken,
) -> Option<ConnectionManager> {
    let mut delay = Duration::from_millis(100);
    loop {
        match connect(url, response_timeout).await {
            Ok(conn) => return Some(conn),
            Err(err) => {
                tracing::warn!(error = %err, redis = %crate::config::redact_url(url), "cannot reach Redis; retrying");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0)
}
