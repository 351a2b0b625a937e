//! The completion role: the `completion` consumer group on every partition's job stream
//! (`confab:jobs:{p}`).
//!
//! Jobs are long (an answer streams for seconds), so each entry runs in its own task, up to
//! `COMPLETION_CONCURRENCY` at once per replica, and is acknowledged when its answer is
//! stored. Jobs are partitioned only so the work spreads over a cluster: any replica takes
//! any job, and one answer per conversation at a time is kept by the answer lease
//! ([`lease`]). Each partition has a reader with its own blocking connection; a keep-alive
//! re-claims its in-flight entries every `CLAIM_IDLE_MS / 3` (`XCLAIM … JUSTID`), so a live
//! job is never taken over, while a dead worker's entries are reclaimed by a live replica,
//! which announces `assistant_restarted` and answers afresh. Cancels arrive per conversation
//! ([`cancel`]). On SIGTERM reading stops and running answers get [`SHUTDOWN_GRACE`] to finish
//! and be acknowledged; the rest are left for another replica.

pub mod cancel;
pub mod coalesce;
pub mod job;
pub mod lease;
pub mod openai;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use confab_shared::commands::CompletionJob;
use confab_shared::db::{Conn, Redis};
use confab_shared::keys::{self, PartitionKeys};
use confab_shared::streams::{self, Acker, Delivery, Disposition, GroupConsumer};
use confab_shared::Config;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);
/// Jobs read at once per partition.
const READ_BATCH: usize = 16;

type InFlight = Arc<Mutex<HashSet<String>>>;

pub async fn run(
    cfg: Arc<Config>,
    redis: Redis,
    conn: Conn,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let name = crate::consumer_name(&cfg, crate::Role::Completion);
    let background = CancellationToken::new();
    let abort = CancellationToken::new();
    let active = cancel::Active::default();
    let cancels = cancel::CancelListener::start(&redis, active.clone(), background.clone()).await?;
    let answerer = Arc::new(
        job::Answerer::new(
            conn.clone(),
            cfg.clone(),
            name.clone(),
            active,
            cancels,
            abort.clone(),
        )
        .await?,
    );
    let slots = Arc::new(Semaphore::new(cfg.completion_concurrency));
    let tasks = TaskTracker::new();
    let readers = TaskTracker::new();
    for pk in PartitionKeys::all(&cfg.partitions()) {
        let gc = crate::group_config(
            &cfg,
            &pk.jobs,
            keys::COMPLETION_GROUP,
            &pk.dead_letters,
            name.clone(),
            READ_BATCH,
        );
        let consumer = GroupConsumer::new(&redis, conn.clone(), gc).await?;
        let in_flight = InFlight::default();
        tokio::spawn(keep_alive(
            consumer.acker(),
            in_flight.clone(),
            cfg.claim_idle(),
            background.clone(),
        ));
        tokio::spawn(trim(conn.clone(), pk.jobs.clone(), background.clone()));
        readers.spawn(read(
            consumer,
            Reader {
                answerer: answerer.clone(),
                slots: slots.clone(),
                tasks: tasks.clone(),
                in_flight,
            },
            cancel.clone(),
        ));
    }
    readers.close();
    tracing::info!(model = %cfg.openai_model, base_url = %cfg.openai_base_url, "completion worker started");
    confab_shared::metrics::set_serving(true);
    readers.wait().await;
    confab_shared::metrics::set_serving(false);
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

/// What a partition's reader hands its jobs to.
struct Reader {
    answerer: Arc<job::Answerer>,
    slots: Arc<Semaphore>,
    tasks: TaskTracker,
    in_flight: InFlight,
}

/// Reads one partition's jobs while a slot is free, and runs each in its own task.
async fn read(mut consumer: GroupConsumer, r: Reader, cancel: CancellationToken) {
    while !cancel.is_cancelled() {
        // Read only when a slot is free, so entries never wait unattended.
        let permit = tokio::select! {
            p = r.slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = cancel.cancelled() => return,
        };
        drop(permit);
        // Not abandoned on shutdown: entries it returns are ours (at most `block` later).
        let batch = match consumer.next_batch().await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "reading completion jobs failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        for d in batch {
            if let Ok(mut f) = r.in_flight.lock() {
                f.insert(d.id.clone());
            }
            let (answerer, acker, in_flight, slots) = (
                r.answerer.clone(),
                consumer.acker(),
                r.in_flight.clone(),
                r.slots.clone(),
            );
            r.tasks.spawn(async move {
                let Ok(_permit) = slots.acquire_owned().await else {
                    return;
                };
                let disposition = run_job(&answerer, &d).await;
                if let Ok(mut f) = in_flight.lock() {
                    f.remove(&d.id);
                }
                if let Err(e) = acker.settle(&[(d, disposition)]).await {
                    tracing::warn!(error = %e, "acknowledging a completion job failed");
                }
            });
        }
    }
}

async fn run_job(answerer: &job::Answerer, d: &Delivery) -> Disposition {
    match d
        .field("j")
        .map(|j| serde_json::from_str::<CompletionJob>(&j))
    {
        Some(Ok(job)) => answerer.handle(job).await,
        Some(Err(e)) => Disposition::Poison(format!("malformed completion job: {e}")),
        None => Disposition::Poison("entry has no 'j' field".into()),
    }
}

async fn keep_alive(
    acker: Acker,
    in_flight: InFlight,
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

async fn trim(mut conn: Conn, stream: String, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let _ = streams::trim_consumed(&mut conn, &stream).await;
    }
}
