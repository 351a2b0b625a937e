//! Child processes: finding the binaries, free ports, log files, and a guard that kills.
//!
//! Every child's stdout and stderr go to a log file under
//! `$TMPDIR/confab-e2e/<runner pid>/<test name>/`. When a test fails, dropping the guards
//! prints the tail of each log (captured by the test harness, shown with the failure) and
//! keeps the files; when it passes they are removed.

use std::collections::HashSet;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use crate::sys;

static SEQ: AtomicU64 = AtomicU64::new(0);
static PORTS: LazyLock<Mutex<HashSet<u16>>> = LazyLock::new(Mutex::default);

/// A number unique within this test binary (names, ids).
pub fn next_seq() -> u64 {
    SEQ.fetch_add(1, Ordering::Relaxed) + 1
}

/// A free TCP port on 127.0.0.1, never handed out twice by this process (the gateway binds
/// with SO_REUSEPORT, so two tests must never share one).
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("cannot find a free port: {e}"));
        let mut used = PORTS.lock().unwrap_or_else(|e| e.into_inner());
        if used.insert(port) {
            return port;
        }
    }
}

/// Where the gateway and workers binaries are: `$CONFAB_BIN_DIR`, else the directory of the
/// test executable's parent (`target/debug/deps/..` = `target/debug`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CONFAB_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe()
        .unwrap_or_else(|e| panic!("cannot locate the test executable: {e}"));
    let deps = exe.parent().unwrap_or_else(|| Path::new("."));
    deps.parent().unwrap_or(deps).to_path_buf()
}

/// The path of a Confab binary (`gateway`, `workers`), or a panic saying how to build it.
pub fn confab_binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    if !path.is_file() {
        panic!(
            "the `{name}` binary is missing at {}: build it first with \
             `cargo build -p confab-gateway -p confab-workers` (or set CONFAB_BIN_DIR)",
            path.display()
        );
    }
    path
}

/// The `redis-server` executable: `$CONFAB_REDIS_SERVER`, else the first one on `PATH`,
/// else `/usr/bin/redis-server`; a clear panic when there is none.
pub fn redis_server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("CONFAB_REDIS_SERVER") {
        return PathBuf::from(p);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "redis-server is not installed (looked on PATH, /usr/bin, /usr/local/bin): \
                 install it (`apt-get install redis-server`) or set CONFAB_REDIS_SERVER"
            )
        })
}

/// The directory holding this test's logs.
pub fn log_dir() -> PathBuf {
    let test = std::thread::current().name().unwrap_or("unnamed").replace(
        |c: char| !c.is_ascii_alphanumeric() && c != '_' && c != '-',
        "_",
    );
    let dir = std::env::temp_dir()
        .join("confab-e2e")
        .join(std::process::id().to_string())
        .join(test);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create the log directory {}: {e}", dir.display()));
    dir
}

/// A running child process, SIGKILLed when dropped (and by the kernel if the test's thread
/// dies without dropping it).
pub struct ChildProc {
    name: String,
    child: Child,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl ChildProc {
    /// Starts `program` with exactly `env` (the test runner's environment is not inherited,
    /// so a developer's `REQUEST_TIMEOUT_MS=…` cannot change a test).
    pub fn spawn(name: &str, program: &Path, args: &[String], env: &[(String, String)]) -> Self {
        let log = log_dir().join(format!("{name}.log"));
        let out = File::create(&log)
            .unwrap_or_else(|e| panic!("cannot create the log file {}: {e}", log.display()));
        let err = out
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot duplicate the log file handle: {e}"));
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for inherited in ["PATH", "RUST_BACKTRACE", "TMPDIR"] {
            if let Some(v) = std::env::var_os(inherited) {
                if !env.iter().any(|(k, _)| k == inherited) {
                    cmd.env(inherited, v);
                }
            }
        }
        sys::die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({}): {e}", program.display()));
        Self {
            name: name.to_string(),
            child,
            log,
            status: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited (reaping it), else `None`.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.exited().is_none()
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) -> ExitStatus {
        if let Some(s) = self.exited() {
            return s;
        }
        let _ = self.child.kill();
        let status = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("cannot reap {}: {e}", self.name));
        self.status = Some(status);
        status
    }

    /// SIGTERM, then waits up to `timeout` for the exit (SIGKILL and a panic after that).
    pub async fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(s) = self.exited() {
            return s;
        }
        sys::signal(self.pid(), sys::SIGTERM)
            .unwrap_or_else(|e| panic!("cannot send SIGTERM to {}: {e}", self.name));
        let start = Instant::now();
        loop {
            if let Some(s) = self.exited() {
                return s;
            }
            if start.elapsed() > timeout {
                self.kill9();
                panic!(
                    "{} did not exit within {timeout:?} of SIGTERM\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends a signal (e.g. `libc::SIGSTOP`) to the running process.
    pub fn signal(&self, sig: i32) {
        sys::signal(self.pid(), sig).unwrap_or_else(|e| panic!("cannot signal {}: {e}", self.name));
    }

    /// Everything the process has written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of the log, with a header naming the process and the file.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(n);
        format!(
            "----- {} ({}), last {} lines -----\n{}",
            self.name,
            self.log.display(),
            lines.len() - from,
            lines[from..].join("\n")
        )
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail(30));
        } else {
            let _ = std::fs::remove_file(&self.log);
            // Empty directories go too (fails harmlessly while other logs remain).
            if let Some(dir) = self.log.parent() {
                let _ = std::fs::remove_dir(dir);
                if let Some(parent) = dir.parent() {
                    let _ = std::fs::remove_dir(parent);
                }
            }
        }
    }
}
