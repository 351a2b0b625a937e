//! The real `confab-run` binary with fake children (shell scripts in a temporary bin dir):
//! start order, prefixed output, environment given to children, SIGTERM → clean stop with
//! nothing left behind, SIGKILL of the runner, a second signal, and start-up errors.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{alive, numbers_after, wait_until, TempDir};
use confab_runner::net::free_port;

const RUNNER: &str = env!("CARGO_BIN_EXE_confab-run");

const LISTEN_PY: &str = "\
import socket, sys
host, port = sys.argv[1].rsplit(':', 1)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
s.bind((host, int(port)))
s.listen(16)
while True:
    c, _ = s.accept()
    c.close()
";

/// How the fake children behave.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fake {
    /// Print pid and environment, keep a background grandchild, listen if python is there.
    Normal,
    /// `exec sleep`: the runner's direct children are the long-lived processes.
    Direct,
    /// Like `Normal` but the workers ignore SIGTERM.
    Stubborn,
}

fn python() -> Option<PathBuf> {
    let p = PathBuf::from("/usr/bin/python3");
    p.is_file().then_some(p)
}

fn write_script(dir: &Path, name: &str, body: &str) -> std::io::Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}"))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
}

fn fake_bin(dir: &Path, fake: Fake) -> std::io::Result<()> {
    std::fs::write(dir.join("listen.py"), LISTEN_PY)?;
    let listen = |var: &str| match python() {
        Some(py) => format!(
            "exec {} \"$(dirname \"$0\")/listen.py\" \"${var}\"\n",
            py.display()
        ),
        None => "exec sleep 300\n".to_string(),
    };
    let trap = if fake == Fake::Stubborn {
        "trap '' TERM\n"
    } else {
        ""
    };
    match fake {
        Fake::Direct => {
            write_script(
                dir,
                "workers",
                "echo \"worker role=$1 pid=$$\"\nexec sleep 300\n",
            )?;
            write_script(dir, "gateway", "echo \"gateway pid=$$\"\nexec sleep 300\n")?;
            write_script(dir, "mock-openai", "echo \"mock pid=$$\"\nexec sleep 300\n")?;
        }
        Fake::Normal | Fake::Stubborn => {
            write_script(
                dir,
                "workers",
                &format!(
                    "{trap}echo \"worker role=$1 pid=$$ redis=$REDIS_URL base=$OPENAI_BASE_URL \
                     key=$OPENAI_API_KEY model=$OPENAI_MODEL nocolor=$NO_COLOR\"\n\
                     sleep 300 &\necho \"grandchild=$!\"\nwait\n"
                ),
            )?;
            write_script(
                dir,
                "gateway",
                &format!(
                    "echo \"gateway pid=$$ addr=$GATEWAY_ADDR redis=$REDIS_URL\"\n{}",
                    listen("GATEWAY_ADDR")
                ),
            )?;
            write_script(
                dir,
                "mock-openai",
                &format!(
                    "echo \"mock pid=$$ addr=$MOCK_OPENAI_ADDR\"\n{}",
                    listen("MOCK_OPENAI_ADDR")
                ),
            )?;
        }
    }
    Ok(())
}

/// A running `confab-run`; SIGKILLed on drop so a failing test leaves nothing behind.
struct Runner {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Runner {
    fn start(args: &[&str], env: &[(&str, &str)]) -> std::io::Result<Self> {
        let mut cmd = Command::new(RUNNER);
        cmd.args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn()?;
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(out) = child.stdout.take() {
            collect(out, stdout.clone());
        }
        if let Some(err) = child.stderr.take() {
            collect(err, stderr.clone());
        }
        Ok(Self {
            child,
            stdout,
            stderr,
        })
    }

    fn stdout(&self) -> String {
        self.stdout.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn signal(&self, sig: &str) -> std::io::Result<()> {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!("kill {sig} failed")))
        }
    }

    fn wait(&mut self, limit: Duration) -> std::io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                // Let the reader threads catch up with the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Runner {
    /// A failed assertion must not leave processes behind: stop the runner gracefully (it
    /// stops its children's whole process groups), and SIGKILL it if that does not work.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.signal("-TERM");
            if !matches!(self.wait(Duration::from_secs(15)), Ok(Some(_))) {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
    }
}

fn collect(stream: impl std::io::Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut text) = into.lock() {
                text.push_str(&line);
                text.push('\n');
            }
        }
    });
}

fn position(text: &str, needle: &str) -> usize {
    text.find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not found in:\n{text}"))
}

#[test]
fn sigterm_stops_everything_in_order_and_leaves_no_process() -> anyhow::Result<()> {
    let tmp = TempDir::new("run-sigterm")?;
    fake_bin(&tmp.0, Fake::Normal)?;
    let gw = format!("127.0.0.1:{}", free_port()?);
    let mock = format!("127.0.0.1:{}", free_port()?);
    let bin_dir = tmp.0.to_string_lossy().into_owned();
    let run_dir = tmp.0.join("run").to_string_lossy().into_owned();
    let mut runner = Runner::start(
        &[
            "--gateways",
            "2",
            "--persistence",
            "2",
            "--cleanup",
            "1",
            "--completion",
            "1",
            "--bin-dir",
            &bin_dir,
            "--run-dir",
            &run_dir,
        ],
        &[
            ("REDIS_URL", "redis://127.0.0.1:1"),
            ("GATEWAY_ADDR", &gw),
            ("MOCK_OPENAI_ADDR", &mock),
        ],
    )?;

    let up_line = format!("Confab is up: http://{gw}/  (Ctrl-C stops everything)\n");
    let started = wait_until(Duration::from_secs(60), || {
        let out = runner.stdout();
        if python().is_some() {
            out.contains(&up_line)
        } else {
            out.matches("grandchild=").count() == 4 && out.matches("gateway pid=").count() == 2
        }
    });
    assert!(
        started,
        "not started:\n{}\n{}",
        runner.stdout(),
        runner.stderr()
    );
    let out = runner.stdout();

    // Prefixes are padded to the longest name, "persistence-1".
    assert!(out.contains("gateway-2     | gateway pid="), "{out}");
    assert!(
        out.contains("persistence-2 | worker role=persistence pid="),
        "{out}"
    );
    assert!(
        out.contains("completion-1  | worker role=completion pid="),
        "{out}"
    );
    assert!(out.contains("mock-openai   | mock pid="), "{out}");
    // The runner waits for the mock to listen before it starts the workers.
    assert!(position(&out, "mock-openai   | mock pid=") < position(&out, "persistence-1 | worker"));
    // The demo model is announced and wired into the children's environment.
    assert!(out.contains("LOCAL DEMO MODEL"), "{out}");
    let worker_env =
        format!("redis=redis://127.0.0.1:1 base=http://{mock}/v1 key=local-demo model=confab-demo nocolor=1");
    assert_eq!(out.matches(&worker_env).count(), 4, "{out}");
    assert_eq!(
        out.matches(&format!("addr={gw} redis=redis://127.0.0.1:1"))
            .count(),
        2,
        "{out}"
    );
    assert!(
        out.contains("using the Redis at REDIS_URL=redis://127.0.0.1:1"),
        "{out}"
    );
    assert!(
        !out.contains("\x1b["),
        "no colours when stdout is not a terminal"
    );

    let mut pids = numbers_after(&out, "pid=");
    pids.extend(numbers_after(&out, "grandchild="));
    assert_eq!(pids.len(), 1 + 4 + 2 + 4, "{out}");
    assert!(pids.iter().all(|p| alive(*p)), "{pids:?}");

    runner.signal("-TERM")?;
    let status = runner.wait(Duration::from_secs(40))?;
    let out = runner.stdout();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{out}\n{}",
        runner.stderr()
    );
    let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "left behind: {left:?}");

    assert!(
        out.contains("SIGTERM received: stopping everything"),
        "{out}"
    );
    let apps = position(
        &out,
        "stopping persistence-1, persistence-2, cleanup-1, completion-1, gateway-1, gateway-2\n",
    );
    let mock_stop = position(&out, "stopping mock-openai\n");
    assert!(apps < mock_stop);
    assert!(position(&out, "gateway-2 stopped") < mock_stop);
    assert!(out.ends_with("everything stopped\n"), "{out}");
    Ok(())
}

#[test]
fn sigkill_of_the_runner_still_kills_its_children() -> anyhow::Result<()> {
    let tmp = TempDir::new("run-sigkill")?;
    fake_bin(&tmp.0, Fake::Direct)?;
    let gw = format!("127.0.0.1:{}", free_port()?);
    let bin_dir = tmp.0.to_string_lossy().into_owned();
    let mut runner = Runner::start(
        &[
            "--persistence",
            "1",
            "--cleanup",
            "0",
            "--completion",
            "0",
            "--bin-dir",
            &bin_dir,
        ],
        &[
            ("REDIS_URL", "redis://127.0.0.1:1"),
            ("GATEWAY_ADDR", &gw),
            ("OPENAI_API_KEY", "sk-test-must-not-be-printed"),
        ],
    )?;
    let started = wait_until(Duration::from_secs(30), || {
        let out = runner.stdout();
        out.contains("gateway pid=") && out.contains("worker role=persistence pid=")
    });
    assert!(started, "{}\n{}", runner.stdout(), runner.stderr());
    let out = runner.stdout();
    assert!(!out.contains("mock pid="), "no mock with a real key: {out}");
    assert!(out.contains("assistant: OpenAI-compatible API"), "{out}");
    assert!(out.contains("note: no cleanup workers"), "{out}");
    let pids = numbers_after(&out, "pid=");
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|p| alive(*p)));

    // No Rust code runs on SIGKILL: PR_SET_PDEATHSIG has to do it.
    runner.signal("-KILL")?;
    assert!(runner.wait(Duration::from_secs(10))?.is_some());
    let gone = wait_until(Duration::from_secs(5), || pids.iter().all(|p| !alive(*p)));
    assert!(gone, "left behind: {pids:?}");
    assert!(!runner.stdout().contains("sk-test-must-not-be-printed"));
    assert!(!runner.stderr().contains("sk-test-must-not-be-printed"));
    Ok(())
}

#[test]
fn a_second_signal_kills_everything_at_once() -> anyhow::Result<()> {
    let tmp = TempDir::new("run-twice")?;
    fake_bin(&tmp.0, Fake::Stubborn)?;
    let gw = format!("127.0.0.1:{}", free_port()?);
    let bin_dir = tmp.0.to_string_lossy().into_owned();
    let mut runner = Runner::start(
        &["--cleanup", "0", "--completion", "0", "--bin-dir", &bin_dir],
        &[
            ("REDIS_URL", "redis://127.0.0.1:1"),
            ("GATEWAY_ADDR", &gw),
            ("OPENAI_API_KEY", "sk-x"),
        ],
    )?;
    let started = wait_until(Duration::from_secs(30), || {
        let out = runner.stdout();
        out.contains("gateway pid=") && out.contains("grandchild=")
    });
    assert!(started, "{}\n{}", runner.stdout(), runner.stderr());
    let out = runner.stdout();
    let mut pids = numbers_after(&out, "pid=");
    pids.extend(numbers_after(&out, "grandchild="));
    assert_eq!(pids.len(), 3);

    runner.signal("-INT")?;
    assert!(wait_until(Duration::from_secs(5), || runner
        .stdout()
        .contains("stopping persistence-1")));
    // The worker ignores SIGTERM: without a second signal the runner would wait out the
    // 10 s grace and say so ("did not stop within"); the wait's limit only guards a hang.
    runner.signal("-INT")?;
    let status = runner.wait(Duration::from_secs(60))?;
    assert!(
        !runner.stdout().contains("did not stop within"),
        "{}",
        runner.stdout()
    );
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "{}",
        runner.stdout()
    );
    assert!(runner
        .stdout()
        .contains("SIGINT received again: killing everything now"));
    let gone = wait_until(Duration::from_secs(3), || pids.iter().all(|p| !alive(*p)));
    assert!(gone, "left behind: {pids:?}");
    Ok(())
}

#[test]
fn bad_arguments_are_explained_with_exit_code_2() -> anyhow::Result<()> {
    let mut runner = Runner::start(&["--gateways", "lots"], &[])?;
    let status = runner.wait(Duration::from_secs(10))?;
    assert_eq!(status.and_then(|s| s.code()), Some(2));
    let err = runner.stderr();
    assert!(
        err.starts_with("confab-run: --gateways expects a whole number from 1 to 64, got \"lots\""),
        "{err}"
    );
    assert!(err.contains("usage: confab-run"), "{err}");
    Ok(())
}

#[test]
fn help_is_printed() -> anyhow::Result<()> {
    let mut runner = Runner::start(&["--help"], &[])?;
    let status = runner.wait(Duration::from_secs(10))?;
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    assert!(runner
        .stdout()
        .starts_with("usage: confab-run [--gateways N]"));
    Ok(())
}

#[test]
fn missing_redis_server_prints_the_install_hint() -> anyhow::Result<()> {
    let tmp = TempDir::new("run-noredis")?;
    fake_bin(&tmp.0, Fake::Direct)?;
    let bin_dir = tmp.0.to_string_lossy().into_owned();
    let mut runner = Runner::start(&["--bin-dir", &bin_dir], &[("PATH", "/nonexistent")])?;
    let status = runner.wait(Duration::from_secs(10))?;
    assert_eq!(status.and_then(|s| s.code()), Some(1));
    assert_eq!(
        runner.stderr(),
        "redis-server is not installed: run `sudo apt-get install redis-server` (Debian/Ubuntu) \
         or set REDIS_URL\n"
    );
    Ok(())
}

#[test]
fn missing_binaries_are_explained() -> anyhow::Result<()> {
    let tmp = TempDir::new("run-nobin")?;
    let bin_dir = tmp.0.to_string_lossy().into_owned();
    let mut runner = Runner::start(
        &["--bin-dir", &bin_dir],
        &[
            ("REDIS_URL", "redis://127.0.0.1:1"),
            ("OPENAI_API_KEY", "sk-x"),
        ],
    )?;
    let status = runner.wait(Duration::from_secs(10))?;
    assert_eq!(status.and_then(|s| s.code()), Some(1));
    let err = runner.stderr();
    assert!(
        err.contains(&format!("cannot find `workers` in {bin_dir}")),
        "{err}"
    );
    assert!(err.contains("cargo build --release"), "{err}");
    Ok(())
}

#[test]
fn a_busy_gateway_port_is_refused_before_anything_starts() -> anyhow::Result<()> {
    let tmp = TempDir::new("run-busy")?;
    fake_bin(&tmp.0, Fake::Direct)?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let gw = listener.local_addr()?.to_string();
    let bin_dir = tmp.0.to_string_lossy().into_owned();
    let mut runner = Runner::start(
        &["--bin-dir", &bin_dir],
        &[
            ("REDIS_URL", "redis://127.0.0.1:1"),
            ("OPENAI_API_KEY", "sk-x"),
            ("GATEWAY_ADDR", &gw),
        ],
    )?;
    let status = runner.wait(Duration::from_secs(10))?;
    assert_eq!(status.and_then(|s| s.code()), Some(1));
    let err = runner.stderr();
    assert!(
        err.contains(&format!(
            "something is already listening on {gw} (GATEWAY_ADDR)"
        )),
        "{err}"
    );
    assert!(!runner.stdout().contains("pid="), "nothing may start");
    Ok(())
}
