//! The completion role: the `completion` consumer group on `confab:completions`.
//!
//! Jobs are long (an answer streams for seconds), so unlike persistence each entry runs in
//! its own task, up to `COMPLETION_CONCURRENCY` at once, and is acknowledged when its answer
//! is stored. A keep-alive task re-claims in-flight entries every `CLAIM_IDLE_MS / 3`
//! (`XCLAIM … JUSTID`), so a live job is never taken over; a dead worker's entries are
//! reclaimed by a live replica, which announces `assistant_restarted` and answers afresh.
//! Cancels arrive on the `confab:cancel` channel. On SIGTERM reading stops, running answers
//! get [`SHUTDOWN_GRACE`] to finish and be acknowledged; the rest are left for another replica.

pub mod coalesce;
pub mod job;
pub mod openai;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use confab_shared::commands::CompletionJob;
use confab_shared::keys;
use confab_shared::streams::{self, Disposition, GroupConsumer};
use confab_shared::Config;
use futures::StreamExt;
use redis::aio::ConnectionManager;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

pub async fn run(
    cfg: Arc<Config>,
    conn: ConnectionManager,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let name = crate::consumer_name(&cfg, crate::Role::Completion);
    let gc = crate::group_config(
        &cfg,
        keys::COMPLETIONS_STREAM,
        keys::COMPLETION_GROUP,
        name.clone(),
        16,
    );
    let mut consumer = GroupConsumer::new(&cfg.redis_url, conn.clone(), gc).await?;
    let acker = consumer.acker();
    let abort = CancellationToken::new();
    let answerer =
        Arc::new(job::Answerer::new(conn.clone(), cfg.clone(), name, abort.clone()).await?);
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    let background = CancellationToken::new();
    tokio::spawn(listen_for_cancels(
        cfg.redis_url.clone(),
        answerer.clone(),
        background.clone(),
    ));
    tokio::spawn(keep_alive(
        acker.clone(),
        in_flight.clone(),
        cfg.claim_idle(),
        background.clone(),
    ));
    tokio::spawn(trim(conn, background.clone()));

    let slots = Arc::new(Semaphore::new(cfg.completion_concurrency));
    let tasks = TaskTracker::new();
    tracing::info!(model = %cfg.openai_model, base_url = %cfg.openai_base_url, "completion worker started");
    while !cancel.is_cancelled() {
        // Read only when a slot is free, so entries never wait unattended.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p?,
            _ = cancel.cancelled() => break,
        };
        drop(permit);
        let batch = match consumer.next_batch().await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "reading completion jobs failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        for d in batch {
            if let Ok(mut f) = in_flight.lock() {
                f.insert(d.id.clone());
            }
            let (answerer, acker, in_flight, slots) = (
                answerer.clone(),
                acker.clone(),
                in_flight.clone(),
                slots.clone(),
            );
            tasks.spawn(async move {
                let Ok(_permit) = slots.acquire_owned().await else {
                    return;
                };
                let disposition = match d
                    .field("j")
                    .map(|j| serde_json::from_str::<CompletionJob>(&j))
                {
                    Some(Ok(job)) => answerer.handle(job).await,
                    Some(Err(e)) => Disposition::Poison(format!("malformed completion job: {e}")),
                    None => Disposition::Poison("entry has no 'j' field".into()),
                };
                if let Ok(mut f) = in_flight.lock() {
                    f.remove(&d.id);
                }
                if let Err(e) = acker.settle(&[(d, disposition)]).await {
                    tracing::warn!(error = %e, "acknowledging a completion job failed");
                }
            });
        }
    }
    tasks.close();
    tracing::info!(
        answering = answerer.answering(),
        "stopping: letting running answers finish"
    );
    if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "answers still running after the grace period; leaving them to another replica"
        );
        abort.cancel();
        tasks.wait().await;
    }
    background.cancel();
    tracing::info!("completion worker stopped");
    Ok(())
}

async fn keep_alive(
    acker: streams::Acker,
    in_flight: Arc<Mutex<HashSet<String>>>,
    claim_idle: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval((claim_idle / 3).max(Duration::from_millis(100)));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let ids: Vec<String> = in_flight
            .lock()
            .map(|f| f.iter().cloned().collect())
            .unwrap_or_default();
        if let Err(e) = acker.keep_alive(&ids).await {
            tracing::warn!(error = %e, "keeping completion jobs claimed failed");
        }
    }
}

async fn trim(mut conn: ConnectionManager, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let _ = streams::trim_consumed(&mut conn, keys::COMPLETIONS_STREAM).await;
    }
}

async fn listen_for_cancels(url: String, answerer: Arc<job::Answerer>, stop: CancellationToken) {
    loop {
        let pubsub = match redis::Client::open(url.as_str()) {
            Ok(c) => c.get_async_pubsub().await,
            Err(e) => Err(e),
        };
        match pubsub {
            Ok(mut ps) => {
                if let Err(e) = ps.subscribe(keys::CANCEL_CHANNEL).await {
                    tracing::warn!(error = %e, "subscribing to cancels failed");
                } else {
                    let mut messages = ps.on_message();
                    loop {
                        let msg = tokio::select! {
                            _ = stop.cancelled() => return,
                            m = messages.next() => m,
                        };
                        let Some(msg) = msg else { break };
                        let payload: String = msg.get_payload().unwrap_or_default();
                        if let Ok(id) = uuid::Uuid::parse_str(payload.trim()) {
                            answerer.cancel(id);
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot open the cancel subscription"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
