//! A partition's commit (`lua/commit.lua`, fenced by the lease epoch): the committed offset
//! (and the trim behind it) plus the side effects that live in the partition's slot —
//! completion jobs, cleanup-index entries, dead letters.
//!
//! Offsets are committed lazily: at most every [`COMMIT_EVERY`], or when the window fills,
//! or at once when side effects wait (a job must not wait for the next batch). An offset
//! that lags only means a new owner re-reads a few entries, which apply.lua answers as
//! duplicates.

use std::time::{Duration, Instant};

use confab_shared::keys::PartitionKeys;
use confab_shared::scripting::Lua;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The longest a done entry waits for its offset to be committed (and trimmed).
pub const COMMIT_EVERY: Duration = Duration::from_millis(100);

/// Side effects waiting for the next commit.
#[derive(Default, Debug)]
pub struct Outbox {
    pub jobs: Vec<String>,
    pub index: Vec<(Uuid, u64)>,
    /// `(entry, reason, payload)`.
    pub dead: Vec<(String, String, String)>,
}

impl Outbox {
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty() && self.index.is_empty() && self.dead.is_empty()
    }

    /// Puts back what a failed commit took, ahead of what came since.
    pub fn restore(&mut self, mut earlier: Outbox) {
        earlier.jobs.append(&mut self.jobs);
        earlier.index.append(&mut self.index);
        earlier.dead.append(&mut self.dead);
        *self = earlier;
    }
}

/// `ARGV[1]` of commit.lua.
#[derive(Serialize)]
struct CommitRequest<'a> {
    owner: &'a str,
    epoch: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<&'a str>,
    jobs: &'a [String],
    jobs_max: u64,
    /// Flat: conversation id, deadline, …
    index: Vec<String>,
    /// Flat: entry, reason, payload, …
    dead: Vec<String>,
    dead_max: u64,
}

/// The reply of commit.lua.
#[derive(Deserialize, Debug)]
pub struct CommitReply {
    /// False: the lease is not ours any more.
    pub ok: bool,
}

/// A commit on its way: what it covers, to settle once Redis answered.
pub struct Pending {
    /// Entries at the window's front it commits.
    pub prefix: usize,
    pub offset: Option<String>,
    pub outbox: Outbox,
}

/// The limits a commit applies.
pub struct Limits {
    pub jobs_max: u64,
    pub dead_max: u64,
}

/// The EVALSHA of commit.lua for `pending`.
pub fn command(
    script: &Lua,
    keys: &PartitionKeys,
    owner: &str,
    epoch: u64,
    pending: &Pending,
    limits: &Limits,
) -> redis::Cmd {
    let req = CommitRequest {
        owner,
        epoch,
        offset: pending.offset.as_deref(),
        jobs: &pending.outbox.jobs,
        jobs_max: limits.jobs_max,
        index: pending
            .outbox
            .index
            .iter()
            .flat_map(|(id, d)| [id.to_string(), d.to_string()])
            .collect(),
        dead: pending
            .outbox
            .dead
            .iter()
            .flat_map(|(e, r, p)| [e.clone(), r.clone(), p.clone()])
            .collect(),
        dead_max: limits.dead_max,
    };
    let k = keys;
    script.call(
        &[&k.lease, &k.commands, &k.jobs, &k.activity, &k.dead_letters],
        &req,
    )
}

/// When the next commit is due.
pub struct Schedule {
    last: Instant,
}

impl Schedule {
    pub fn new() -> Self {
        Self {
            last: Instant::now(),
        }
    }

    /// Due when side effects wait, when the done prefix fills half the window, or when
    /// done entries have waited [`COMMIT_EVERY`].
    pub fn due(&self, done: usize, outbox: &Outbox, window_max: usize) -> bool {
        !outbox.is_empty()
            || done >= window_max / 2
            || (done > 0 && self.last.elapsed() >= COMMIT_EVERY)
    }

    pub fn committed(&mut self) {
        self.last = Instant::now();
    }

    /// How long an idle partition may block before a done entry must be committed.
    pub fn wait_at_most(&self, done: usize) -> Option<Duration> {
        (done > 0).then(|| COMMIT_EVERY.saturating_sub(self.last.elapsed()))
    }
}

impl Default for Schedule {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_wait_for_work_and_never_hold_side_effects() {
        let s = Schedule::new();
        let empty = Outbox::default();
        assert!(!s.due(0, &empty, 1024));
        assert!(!s.due(3, &empty, 1024), "a fresh schedule waits a moment");
        assert!(s.due(512, &empty, 1024), "half a window commits at once");
        let jobs = Outbox {
            jobs: vec!["j".into()],
            ..Outbox::default()
        };
        assert!(s.due(0, &jobs, 1024), "side effects go out at once");
        let old = Schedule {
            last: Instant::now() - COMMIT_EVERY,
        };
        assert!(old.due(1, &empty, 1024));
        assert_eq!(old.wait_at_most(1), Some(Duration::ZERO));
        assert_eq!(old.wait_at_most(0), None);
    }

    #[test]
    fn a_failed_commit_puts_its_side_effects_back_first() {
        let mut now = Outbox {
            jobs: vec!["later".into()],
            ..Outbox::default()
        };
        now.restore(Outbox {
            jobs: vec!["earlier".into()],
            ..Outbox::default()
        });
        assert_eq!(now.jobs, ["earlier", "later"]);
    }
}
