//! Starts, watches, restarts and stops child processes.
//!
//! Each child ([`ChildSpec`]) runs in its own process group with stdin closed and its stdout and
//! stderr piped line by line into the shared [`Output`]. A monitor task per child waits for it:
//!
//! * exit while running normally: [`OnExit::Restart`] restarts it after a back-off (1 s doubling
//!   to 10 s, reset once a run lasted 10 s); [`OnExit::Fatal`] records the failure, which
//!   [`Supervisor::fatal`] reports (the runner then stops everything).
//! * [`Supervisor::shutdown`]: stage by stage ([`Stage::Apps`], then [`Stage::Assistant`], then
//!   [`Stage::Store`]), SIGTERM to each child's group, SIGKILL after the grace period.
//!
//! No process may outlive the runner: every group still alive is SIGKILLed when the
//! [`Supervisor`] is dropped (error returns, panics), by [`Supervisor::kill_now`] (second
//! Ctrl-C), and — when the runner is SIGKILLed itself — by the kernel (`PR_SET_PDEATHSIG`, see
//! [`crate::sys`]).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Child;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

use crate::output::{Output, Prefix};
use crate::sys::{self, Signal};

/// Timings; [`Default`] is what `confab-run` uses, tests shorten them.
#[derive(Clone, Debug)]
pub struct SupervisorOptions {
    /// How long a child may take to exit after SIGTERM before it is SIGKILLed.
    pub grace: Duration,
    /// First restart delay.
    pub backoff_initial: Duration,
    /// Restart delays double up to this.
    pub backoff_max: Duration,
    /// A run at least this long resets the delay to `backoff_initial`.
    pub stable_after: Duration,
}

impl Default for SupervisorOptions {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(10),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(10),
            stable_after: Duration::from_secs(10),
        }
    }
}

/// Shutdown stage: children stop in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Gateways and workers: they need the others to finish their work.
    Apps,
    /// The demo model.
    Assistant,
    /// Redis, last, so everything else could still write to it.
    Store,
}

impl Stage {
    pub const STOP_ORDER: [Stage; 3] = [Stage::Apps, Stage::Assistant, Stage::Store];
}

/// What to do when a child exits on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnExit {
    Restart,
    /// The whole system depends on it: report through [`Supervisor::fatal`].
    Fatal,
}

/// How to run one child.
#[derive(Clone, Debug)]
pub struct ChildSpec {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Added to (or overriding) the runner's own environment.
    pub env: Vec<(OsString, OsString)>,
    pub stage: Stage,
    pub on_exit: OnExit,
}

impl ChildSpec {
    /// An [`Stage::Apps`] child restarted on exit, with no arguments.
    pub fn new(name: impl Into<String>, program: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            stage: Stage::Apps,
            on_exit: OnExit::Restart,
        }
    }
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
    pub fn stage(mut self, stage: Stage) -> Self {
        self.stage = stage;
        self
    }
    pub fn on_exit(mut self, on_exit: OnExit) -> Self {
        self.on_exit = on_exit;
        self
    }
}

/// What a child is doing, as seen by its monitor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChildState {
    /// Pid (and process-group id) of the running process, if one runs.
    pub pid: Option<u32>,
    /// Processes started so far.
    pub starts: u32,
    /// Processes that have exited so far.
    pub exits: u32,
    /// How the last process ended, e.g. `exit code 3`.
    pub last_exit: Option<String>,
    /// The monitor is done: no further restarts.
    pub finished: bool,
}

/// A view on one supervised child.
#[derive(Clone, Debug)]
pub struct ChildHandle {
    name: String,
    state: watch::Receiver<ChildState>,
}

impl ChildHandle {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn state(&self) -> ChildState {
        self.state.borrow().clone()
    }
    pub fn pid(&self) -> Option<u32> {
        self.state.borrow().pid
    }
    /// Waits until the process running now (if any) has exited; returns how it ended.
    pub async fn wait_exit(&mut self) -> Option<String> {
        let seen = {
            let s = self.state.borrow_and_update();
            if s.pid.is_none() {
                return s.last_exit.clone();
            }
            s.exits
        };
        match self.state.wait_for(|s| s.exits > seen).await {
            Ok(s) => s.last_exit.clone(),
            Err(_) => None,
        }
    }
}

/// Owns all children; killing every remaining process group when dropped.
pub struct Supervisor {
    shared: Arc<Shared>,
    children: Mutex<Vec<Entry>>,
}

struct Entry {
    stage: Stage,
    name: String,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

struct Shared {
    output: Output,
    opts: SupervisorOptions,
    /// Live process groups (pgid = pid of the child we spawned) → child name.
    groups: Mutex<BTreeMap<u32, String>>,
    stopping: AtomicBool,
    fatal: watch::Sender<Option<String>>,
}

/// One running process.
struct Running {
    child: Child,
    pid: u32,
    started: Instant,
    readers: Vec<JoinHandle<()>>,
}

impl Supervisor {
    pub fn new(output: Output, opts: SupervisorOptions) -> Self {
        Self {
            shared: Arc::new(Shared {
                output,
                opts,
                groups: Mutex::new(BTreeMap::new()),
                stopping: AtomicBool::new(false),
                fatal: watch::channel(None).0,
            }),
            children: Mutex::new(Vec::new()),
        }
    }

    pub fn output(&self) -> &Output {
        &self.shared.output
    }

    /// Starts `spec` now (so a missing program is an error here) and supervises it.
    pub fn spawn(&self, spec: ChildSpec) -> anyhow::Result<ChildHandle> {
        if self.shared.stopping() {
            anyhow::bail!("not starting {}: shutting down", spec.name);
        }
        let prefix = self.shared.output.prefix(&spec.name);
        let running = self.shared.start(&spec, &prefix)?;
        let (state_tx, state_rx) = watch::channel(ChildState {
            pid: Some(running.pid),
            starts: 1,
            ..ChildState::default()
        });
        let stop = CancellationToken::new();
        let entry = Entry {
            stage: spec.stage,
            name: spec.name.clone(),
            stop: stop.clone(),
            task: None,
        };
        let handle = ChildHandle {
            name: spec.name.clone(),
            state: state_rx,
        };
        let task = tokio::spawn(monitor(
            self.shared.clone(),
            spec,
            prefix,
            running,
            stop,
            state_tx,
        ));
        lock(&self.children).push(Entry {
            task: Some(task),
            ..entry
        });
        Ok(handle)
    }

    /// Resolves when an [`OnExit::Fatal`] child has exited on its own, with a description.
    pub async fn fatal(&self) -> String {
        let mut rx = self.shared.fatal.subscribe();
        let reason = match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            Err(_) => None,
        };
        match reason {
            Some(reason) => reason,
            None => std::future::pending().await,
        }
    }

    /// Process groups currently alive (or not yet reaped).
    pub fn process_groups(&self) -> Vec<u32> {
        lock(&self.shared.groups).keys().copied().collect()
    }

    /// Graceful stop, stage by stage: SIGTERM, then SIGKILL after the grace period. Returns
    /// when every child has exited. No restart happens once this was called.
    pub async fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        for stage in Stage::STOP_ORDER {
            let tasks: Vec<(String, JoinHandle<()>)> = lock(&self.children)
                .iter_mut()
                .filter(|e| e.stage == stage)
                .filter_map(|e| {
                    e.stop.cancel();
                    e.task.take().map(|t| (e.name.clone(), t))
                })
                .collect();
            if tasks.is_empty() {
                continue;
            }
            let names: Vec<&str> = tasks.iter().map(|(n, _)| n.as_str()).collect();
            self.shared
                .output
                .runner(&format!("stopping {}", names.join(", ")));
            for (name, task) in tasks {
                if let Err(e) = task.await {
                    self.shared
                        .output
                        .runner(&format!("supervision of {name} failed: {e}"));
                }
            }
        }
        // Groups whose monitor died (it cannot, but a panic must not leave processes behind).
        self.shared.kill_all();
    }

    /// SIGKILLs every child group now (second Ctrl-C). Monitors still reap them and no
    /// child is restarted afterwards.
    pub fn kill_now(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.kill_all();
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.kill_all();
    }
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn start(&self, spec: &ChildSpec, prefix: &Prefix) -> anyhow::Result<Running> {
        let mut cmd = tokio::process::Command::new(&spec.program);
        cmd.args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Own group: the terminal's Ctrl-C reaches only the runner, which then stops the
            // children in order; and the whole group (grandchildren too) can be signalled.
            .process_group(0)
            .kill_on_drop(true);
        sys::die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {} ({})", spec.name, spec.program.display()))?;
        let pid = child
            .id()
            .with_context(|| format!("{} exited before it could be watched", spec.name))?;
        lock(&self.groups).insert(pid, spec.name.clone());
        let mut readers = Vec::with_capacity(2);
        if let Some(out) = child.stdout.take() {
            readers.push(tokio::spawn(pump(out, self.output.clone(), prefix.clone())));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(tokio::spawn(pump(err, self.output.clone(), prefix.clone())));
        }
        Ok(Running {
            child,
            pid,
            started: Instant::now(),
            readers,
        })
    }

    /// SIGTERM to the group; SIGKILL if it is still there after the grace period.
    async fn terminate(&self, run: &mut Running, name: &str) -> io::Result<ExitStatus> {
        let _ = sys::signal_group(run.pid, Signal::Term);
        match timeout(self.opts.grace, run.child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                self.output.runner(&format!(
                    "{name} did not stop within {}; killing it",
                    secs(self.opts.grace)
                ));
                let _ = sys::signal_group(run.pid, Signal::Kill);
                run.child.wait().await
            }
        }
    }

    /// After the group leader exited: kill what is left of its group, forget the group and
    /// let its last output lines through.
    async fn cleanup(&self, run: &mut Running) {
        let _ = sys::signal_group(run.pid, Signal::Kill);
        lock(&self.groups).remove(&run.pid);
        for reader in run.readers.drain(..) {
            let _ = timeout(Duration::from_secs(2), reader).await;
        }
    }

    fn kill_all(&self) {
        for pgid in lock(&self.groups).keys() {
            let _ = sys::signal_group(*pgid, Signal::Kill);
        }
    }

    fn report_fatal(&self, reason: String) {
        self.fatal.send_if_modified(|slot| {
            if slot.is_none() {
                *slot = Some(reason);
                true
            } else {
                false
            }
        });
    }
}

async fn monitor(
    shared: Arc<Shared>,
    spec: ChildSpec,
    prefix: Prefix,
    first: Running,
    stop: CancellationToken,
    state: watch::Sender<ChildState>,
) {
    let opts = shared.opts.clone();
    let name = spec.name.as_str();
    let mut backoff = opts.backoff_initial;
    let mut current = Some(first);
    loop {
        if let Some(mut run) = current.take() {
            let (status, stopped) = tokio::select! {
                status = run.child.wait() => (status, false),
                () = stop.cancelled() => (shared.terminate(&mut run, name).await, true),
            };
            shared.cleanup(&mut run).await;
            let how = describe(&status);
            state.send_modify(|s| {
                s.pid = None;
                s.exits += 1;
                s.last_exit = Some(how.clone());
            });
            if stopped || shared.stopping() {
                shared.output.runner(&format!("{name} stopped ({how})"));
                break;
            }
            if spec.on_exit == OnExit::Fatal {
                shared
                    .output
                    .runner(&format!("{name} exited unexpectedly ({how})"));
                shared.report_fatal(format!("{name} exited unexpectedly ({how})"));
                break;
            }
            if run.started.elapsed() >= opts.stable_after {
                backoff = opts.backoff_initial;
            }
            shared.output.runner(&format!(
                "{name} exited ({how}); restarting in {}",
                secs(backoff)
            ));
        }
        tokio::select! {
            () = sleep(backoff) => {}
            () = stop.cancelled() => break,
        }
        if shared.stopping() {
            break;
        }
        backoff = (backoff * 2).min(opts.backoff_max);
        match shared.start(&spec, &prefix) {
            Ok(run) => {
                state.send_modify(|s| {
                    s.pid = Some(run.pid);
                    s.starts += 1;
                });
                current = Some(run);
            }
            Err(e) => shared
                .output
                .runner(&format!("{e:#}; retrying in {}", secs(backoff))),
        }
    }
    state.send_modify(|s| s.finished = true);
}

/// Copies `reader` to the output line by line (invalid UTF-8 is replaced, not fatal).
async fn pump<R: AsyncRead + Unpin>(reader: R, output: Output, prefix: Prefix) {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::with_capacity(256);
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                while matches!(buf.last(), Some(b'\n' | b'\r')) {
                    buf.pop();
                }
                output.line(&prefix, &String::from_utf8_lossy(&buf));
            }
        }
    }
}

/// `exit code 3`, `killed by signal 9 (SIGKILL)`.
pub fn describe(status: &io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}{}", signal_name(sig)),
            (None, None) => status.to_string(),
        },
        Err(e) => format!("exit status unknown: {e}"),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => " (SIGHUP)",
        libc::SIGINT => " (SIGINT)",
        libc::SIGABRT => " (SIGABRT)",
        libc::SIGKILL => " (SIGKILL)",
        libc::SIGSEGV => " (SIGSEGV)",
        libc::SIGPIPE => " (SIGPIPE)",
        libc::SIGTERM => " (SIGTERM)",
        _ => "",
    }
}

fn secs(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_described() {
        assert_eq!(describe(&Ok(ExitStatus::from_raw(3 << 8))), "exit code 3");
        assert_eq!(
            describe(&Ok(ExitStatus::from_raw(libc::SIGKILL))),
            "killed by signal 9 (SIGKILL)"
        );
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(secs(Duration::from_secs(10)), "10s");
        assert_eq!(secs(Duration::from_millis(200)), "0.2s");
    }
}
