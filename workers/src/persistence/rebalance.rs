//! The rebalancer: which partitions this replica owns, tick by tick.
//!
//! Every tick: heartbeat into the membership set, renew the leases held (a renewal that
//! fails means another replica owns the partition now: its task stops), release what is
//! over this replica's quota (the task finishes and commits first), and take free leases up
//! to the quota. Shutdown stops every task, waits for their last commit, releases the leases
//! and leaves the membership set.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use confab_shared::db::Conn;
use confab_shared::keys::PartitionKeys;
use confab_shared::Config;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::lease::{self, LeaseClock, Leases};
use super::partition::{Exit, Ownership, Partition, Shared};

/// A partition this replica holds, and its running task.
struct Held {
    epoch: u64,
    clock: Arc<LeaseClock>,
    stop: CancellationToken,
    task: JoinHandle<Exit>,
}

pub struct Rebalancer {
    shared: Arc<Shared>,
    conn: Conn,
    parts: Vec<PartitionKeys>,
    leases: Arc<Leases>,
    tick: Duration,
    held: HashMap<u32, Held>,
    releasing: Vec<JoinHandle<()>>,
}

impl Rebalancer {
    pub fn new(shared: Arc<Shared>, conn: Conn, cfg: &Config) -> Self {
        let ttl = cfg.claim_idle();
        Self {
            parts: PartitionKeys::all(&cfg.partitions()),
            leases: Arc::new(Leases::new(shared.owner.clone(), ttl)),
            tick: (ttl / 4).clamp(Duration::from_millis(50), Duration::from_millis(500)),
            shared,
            conn,
            held: HashMap::new(),
            releasing: Vec::new(),
        }
    }

    pub async fn run(mut self, cancel: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(
            owner = self.leases.owner(),
            partitions = self.parts.len(),
            "persistence worker started"
        );
        let mut tick = tokio::time::interval(self.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            self.rebalance().await;
        }
        self.shutdown().await;
        Ok(())
    }

    async fn rebalance(&mut self) {
        let members =
            match lease::heartbeat(&mut self.conn, self.leases.owner(), self.leases.ttl()).await {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::warn!(error = %e, "membership heartbeat failed");
                    None
                }
            };
        self.reap();
        self.renew().await;
        self.releasing.retain(|h| !h.is_finished());
        let Some(members) = members else { return };
        let Some(index) = members.iter().position(|m| m == self.leases.owner()) else {
            return;
        };
        confab_shared::metrics::set_serving(true);
        let quota = lease::quota(self.parts.len() as u32, members.len(), index) as usize;
        if self.held.len() > quota {
            self.release_extra(quota);
        } else if self.held.len() < quota {
            self.acquire_up_to(quota).await;
        }
        confab_shared::metrics::get()
            .partitions_owned
            .set(self.held.len() as i64);
    }

    /// Forgets partitions whose task ended by itself (fenced or lost).
    fn reap(&mut self) {
        let ended: Vec<u32> = self
            .held
            .iter()
            .filter(|(_, h)| h.task.is_finished())
            .map(|(p, _)| *p)
            .collect();
        for p in ended {
            if let Some(h) = self.held.remove(&p) {
                tracing::info!(partition = p, epoch = h.epoch, "partition task ended");
            }
        }
    }

    /// Renews every held lease at once: one round trip for all of them, however many there
    /// are (one after the other, P renewals over a slow link could outlast the lease itself).
    async fn renew(&mut self) {
        let sent = Instant::now();
        let renewals = self.held.iter().filter_map(|(p, h)| {
            let pk = self.parts.get(*p as usize)?;
            let (leases, mut conn) = (self.leases.clone(), self.conn.clone());
            Some(async move { (*p, leases.renew(&mut conn, pk, h.epoch).await) })
        });
        let mut lost = Vec::new();
        for (p, result) in futures::future::join_all(renewals).await {
            match result {
                Ok(true) => {
                    if let Some(h) = self.held.get(&p) {
                        h.clock.renewed(sent, self.leases.ttl());
                    }
                }
                Ok(false) => lost.push(p),
                Err(e) => tracing::warn!(partition = p, error = %e, "renewing a lease failed"),
            }
        }
        for p in lost {
            if let Some(h) = self.held.remove(&p) {
                tracing::warn!(partition = p, "lease lost to another replica");
                h.stop.cancel();
            }
        }
    }

    /// Hands over partitions beyond `quota`: each task finishes and commits, then its lease
    /// is released (in the background, so renewals of the others go on).
    fn release_extra(&mut self, quota: usize) {
        let mut mine: Vec<u32> = self.held.keys().copied().collect();
        mine.sort_unstable();
        for p in mine.into_iter().skip(quota) {
            let (Some(h), Some(pk)) = (self.held.remove(&p), self.parts.get(p as usize).cloned())
            else {
                continue;
            };
            tracing::info!(partition = p, "handing a partition over (rebalance)");
            h.stop.cancel();
            let (leases, mut conn) = (self.leases.clone(), self.conn.clone());
            self.releasing.push(tokio::spawn(async move {
                let _ = h.task.await;
                if let Err(e) = leases.release(&mut conn, &pk, h.epoch).await {
                    tracing::warn!(partition = p, error = %e, "releasing a lease failed; it lapses");
                }
            }));
        }
    }

    async fn acquire_up_to(&mut self, quota: usize) {
        let holders = match self.leases.holders(&mut self.conn, &self.parts).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "reading partition leases failed");
                return;
            }
        };
        for (p, holder) in holders.iter().enumerate() {
            if self.held.len() >= quota {
                break;
            }
            let p = p as u32;
            if holder.is_some() || self.held.contains_key(&p) {
                continue;
            }
            let Some(pk) = self.parts.get(p as usize).cloned() else {
                continue;
            };
            let sent = Instant::now();
            let reply = match self.leases.acquire(&mut self.conn, &pk).await {
                Ok(r) if r.ok => r,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "taking a lease failed");
                    continue;
                }
            };
            let clock = Arc::new(LeaseClock::new());
            clock.renewed(sent, self.leases.ttl());
            let own = Ownership {
                keys: pk,
                epoch: reply.epoch,
                offset: reply.offset.unwrap_or_else(|| "0-0".into()),
                clock: clock.clone(),
            };
            let partition = match Partition::new(self.shared.clone(), own).await {
                Ok(part) => part,
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "cannot open a connection for a partition");
                    let _ = self
                        .leases
                        .release(&mut self.conn, &self.parts[p as usize], reply.epoch)
                        .await;
                    continue;
                }
            };
            let stop = CancellationToken::new();
            let task = tokio::spawn(partition.run(stop.clone()));
            self.held.insert(
                p,
                Held {
                    epoch: reply.epoch,
                    clock,
                    stop,
                    task,
                },
            );
        }
    }

    /// Stops every partition (each commits what it finished), releases the leases and leaves.
    async fn shutdown(mut self) {
        tracing::info!(
            partitions = self.held.len(),
            "stopping: committing and handing partitions over"
        );
        confab_shared::metrics::set_serving(false);
        for h in self.held.values() {
            h.stop.cancel();
        }
        let held: Vec<(u32, Held)> = self.held.drain().collect();
        for (p, h) in held {
            let exit = h.task.await;
            if matches!(exit, Ok(Exit::Stopped)) {
                if let Some(pk) = self.parts.get(p as usize) {
                    if let Err(e) = self.leases.release(&mut self.conn, pk, h.epoch).await {
                        tracing::warn!(partition = p, error = %e, "releasing a lease failed; it lapses");
                    }
                }
            }
        }
        for h in self.releasing.drain(..) {
            let _ = h.await;
        }
        if let Err(e) = lease::leave(&mut self.conn, self.leases.owner()).await {
            tracing::warn!(error = %e, "leaving the membership set failed");
        }
        confab_shared::metrics::get().partitions_owned.set(0);
        tracing::info!("persistence worker stopped");
    }
}
