//! The supervisor with real child processes (`sh -c …`): output prefixing, graceful and
//! forced stops, restarts with back-off, fatal exits, and the drop guard.

mod common;

use std::time::Duration;

use common::{alive, group_members, numbers_after, wait_until_async};
use confab_runner::output::Output;
use confab_runner::supervisor::{ChildSpec, OnExit, Supervisor, SupervisorOptions};

fn sh(name: &str, script: &str) -> ChildSpec {
    ChildSpec::new(name, "/bin/sh").arg("-c").arg(script)
}

fn fast() -> SupervisorOptions {
    SupervisorOptions {
        grace: Duration::from_secs(5),
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_millis(400),
        stable_after: Duration::from_secs(10),
    }
}

#[tokio::test]
async fn output_is_prefixed_and_shutdown_leaves_no_process() -> anyhow::Result<()> {
    let (output, captured) = Output::capture(["fake-1", "persistence-1"]);
    let sup = Supervisor::new(output, fast());
    let handle = sup.spawn(sh(
        "fake-1",
        "echo hello; echo oops >&2; sleep 30 & echo \"sleeper=$!\"; wait",
    ))?;
    let pgid = handle.pid().ok_or_else(|| anyhow::anyhow!("no pid"))?;

    let seen = wait_until_async(Duration::from_secs(10), || {
        captured.text().contains("sleeper=")
    })
    .await;
    assert!(seen, "no output: {}", captured.text());
    let text = captured.text();
    // Padded to the longest name given to the output ("persistence-1", 13 chars).
    assert!(text.contains("fake-1        | hello\n"), "{text}");
    assert!(
        text.contains("fake-1        | oops\n"),
        "stderr is piped too: {text}"
    );
    let sleeper = numbers_after(&text, "sleeper=")[0];
    assert!(alive(pgid) && alive(sleeper));
    assert_eq!(sup.process_groups(), vec![pgid]);
    let mut members = group_members(pgid);
    members.sort();
    assert_eq!(members, {
        let mut m = vec![pgid, sleeper];
        m.sort();
        m
    });

    sup.shutdown().await;
    // A killed grandchild may take a moment to leave the process table.
    let gone = wait_until_async(Duration::from_secs(2), || group_members(pgid).is_empty()).await;
    assert!(gone, "left: {:?}", group_members(pgid));
    assert!(!alive(pgid) && !alive(sleeper));
    assert!(sup.process_groups().is_empty());
    let text = captured.text();
    assert!(text.contains("confab-run    | stopping fake-1\n"), "{text}");
    assert!(
        text.contains("fake-1 stopped (killed by signal 15 (SIGTERM))"),
        "{text}"
    );
    assert_eq!(handle.state().starts, 1);
    Ok(())
}

#[tokio::test]
async fn a_child_ignoring_sigterm_is_killed_after_the_grace_period() -> anyhow::Result<()> {
    let (output, captured) = Output::capture(["stubborn"]);
    let sup = Supervisor::new(
        output,
        SupervisorOptions {
            grace: Duration::from_millis(500),
            ..fast()
        },
    );
    let handle = sup.spawn(sh(
        "stubborn",
        "trap '' TERM; echo ready; sleep 30; echo late",
    ))?;
    let pgid = handle.pid().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    assert!(
        wait_until_async(Duration::from_secs(10), || captured
            .text()
            .contains("ready"))
        .await
    );
    let started = std::time::Instant::now();
    sup.shutdown().await;
    // The grace period is waited for (a lower bound: a busy machine only makes it longer);
    // that the child was then killed, not waited for, shows in the output below.
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(wait_until_async(Duration::from_secs(2), || group_members(pgid).is_empty()).await);
    let text = captured.text();
    assert!(
        text.contains("stubborn did not stop within 0.5s; killing it"),
        "{text}"
    );
    assert!(
        text.contains("stubborn stopped (killed by signal 9 (SIGKILL))"),
        "{text}"
    );
    assert!(!text.contains("late"));
    Ok(())
}

#[tokio::test]
async fn exited_children_are_restarted_with_backoff() -> anyhow::Result<()> {
    let (output, captured) = Output::capture(["flaky"]);
    let sup = Supervisor::new(output, fast());
    let handle = sup.spawn(sh("flaky", "echo run; exit 3"))?;
    // Wait for the fourth run's output too, not only its start: it is read by another task.
    let restarted = wait_until_async(Duration::from_secs(30), || {
        handle.state().starts >= 4 && captured.text().matches("flaky      | run\n").count() >= 4
    })
    .await;
    assert!(restarted, "{:?}\n{}", handle.state(), captured.text());
    sup.shutdown().await;
    let text = captured.text();
    assert!(text.matches("flaky      | run\n").count() >= 4, "{text}");
    // 100 ms doubling, capped at 400 ms.
    for delay in ["0.1s", "0.2s", "0.4s"] {
        assert!(
            text.contains(&format!(
                "flaky exited (exit code 3); restarting in {delay}"
            )),
            "{text}"
        );
    }
    assert!(!text.contains("restarting in 0.8s"), "{text}");
    assert!(!sup.process_groups().iter().any(|g| alive(*g)));
    Ok(())
}

#[tokio::test]
async fn a_fatal_child_is_reported_and_not_restarted() -> anyhow::Result<()> {
    let (output, captured) = Output::capture(["store"]);
    let sup = Supervisor::new(output, fast());
    let handle = sup.spawn(sh("store", "sleep 0.2; exit 7").on_exit(OnExit::Fatal))?;
    let reason = tokio::time::timeout(Duration::from_secs(10), sup.fatal()).await?;
    assert_eq!(reason, "store exited unexpectedly (exit code 7)");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let state = handle.state();
    assert_eq!((state.starts, state.exits, state.finished), (1, 1, true));
    assert!(captured
        .text()
        .contains("store exited unexpectedly (exit code 7)"));
    sup.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_missing_program_is_an_error_at_spawn() {
    let (output, _captured) = Output::capture(["ghost"]);
    let sup = Supervisor::new(output, fast());
    let err = sup
        .spawn(ChildSpec::new("ghost", "/nonexistent/ghost"))
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(
        err.contains("cannot start ghost (/nonexistent/ghost)"),
        "{err}"
    );
}

#[tokio::test]
async fn dropping_the_supervisor_kills_every_group() -> anyhow::Result<()> {
    let (output, captured) = Output::capture(["orphan"]);
    let sup = Supervisor::new(output, fast());
    let handle = sup.spawn(sh("orphan", "sleep 30 & echo \"sleeper=$!\"; wait"))?;
    let pgid = handle.pid().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    assert!(
        wait_until_async(Duration::from_secs(10), || captured
            .text()
            .contains("sleeper="))
        .await
    );
    let sleeper = numbers_after(&captured.text(), "sleeper=")[0];
    assert!(alive(sleeper));
    // An error return or a panic drops the supervisor without a graceful shutdown.
    drop(sup);
    let gone = wait_until_async(Duration::from_secs(5), || group_members(pgid).is_empty()).await;
    assert!(gone, "left behind: {:?}", group_members(pgid));
    assert!(!alive(sleeper));
    Ok(())
}

#[tokio::test]
async fn kill_now_stops_everything_at_once() -> anyhow::Result<()> {
    let (output, captured) = Output::capture(["a", "b"]);
    // A grace period of an hour: only kill_now can end this shutdown within the test.
    let sup = Supervisor::new(
        output,
        SupervisorOptions {
            grace: Duration::from_secs(3600),
            ..fast()
        },
    );
    let a = sup.spawn(sh("a", "trap '' TERM; echo up; sleep 3600"))?;
    let b = sup.spawn(sh("b", "trap '' TERM; echo up; sleep 3600"))?;
    assert!(
        wait_until_async(Duration::from_secs(10), || captured
            .text()
            .matches("up")
            .count()
            == 2)
        .await
    );
    let groups = [a.pid(), b.pid()];
    let shutdown = sup.shutdown();
    tokio::pin!(shutdown);
    // A second Ctrl-C must not wait for the grace period.
    tokio::select! {
        () = &mut shutdown => anyhow::bail!("children ignoring SIGTERM stopped by themselves"),
        () = tokio::time::sleep(Duration::from_millis(300)) => sup.kill_now(),
    }
    // The timeout only guards a hang: without kill_now this would take the hour.
    tokio::time::timeout(Duration::from_secs(60), shutdown)
        .await
        .map_err(|_| anyhow::anyhow!("kill_now did not end the shutdown"))?;
    let text = captured.text();
    assert!(!text.contains("did not stop within"), "{text}");
    for g in groups.into_iter().flatten() {
        assert!(wait_until_async(Duration::from_secs(10), || group_members(g).is_empty()).await);
    }
    Ok(())
}
