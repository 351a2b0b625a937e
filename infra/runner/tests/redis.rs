//! A real `redis-server` started through the redis module on a free port: PING readiness,
//! busy-port detection, clean stop with the AOF flushed, and death reported as fatal.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{alive, TempDir};
use confab_runner::net::{self, free_port};
use confab_runner::output::Output;
use confab_runner::redis::{self, LocalRedis, Reply};
use confab_runner::supervisor::{Supervisor, SupervisorOptions};

fn local_redis(run_dir: &std::path::Path) -> anyhow::Result<LocalRedis> {
    let mut redis = LocalRedis::locate(std::env::var_os("PATH").as_deref(), run_dir)?;
    redis.port = free_port()?;
    redis.ready_timeout = Duration::from_secs(20);
    Ok(redis)
}

#[tokio::test]
async fn redis_starts_ready_and_stops_cleanly_with_its_aof() -> anyhow::Result<()> {
    let run_dir = TempDir::new("redis")?;
    let redis = local_redis(&run_dir.0)?;
    assert_eq!(redis.dir, run_dir.0.join("redis"));
    let addr = redis.addr();

    let (output, captured) = Output::capture(["redis"]);
    let sup = Supervisor::new(output, SupervisorOptions::default());
    let handle = redis.start(&sup).await?.remove(0);
    let pid = handle.pid().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    assert!(alive(pid));

    // start() returned: Redis answers PING now, and takes writes.
    assert_eq!(
        redis::command(addr, &["PING"]).await?,
        Reply::Simple("PONG".into())
    );
    assert_eq!(
        redis::command(addr, &["SET", "confab:runner-test", "kept"]).await?,
        Reply::Simple("OK".into())
    );
    // Its output is prefixed.
    let text = captured.text();
    assert!(text.contains("redis      | "), "{text}");
    assert!(text.contains("Ready to accept connections"), "{text}");

    // A second Redis on the same port is refused with advice.
    let err = redis::ensure_port_free(redis.port)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("a Redis server is already running"), "{err}");
    assert!(err.contains("REDIS_URL"), "{err}");

    sup.shutdown().await;
    assert!(!alive(pid), "redis-server still running");
    assert!(!net::accepts(addr, Duration::from_millis(500)).await);
    let text = captured.text();
    assert!(text.contains("redis stopped (exit code 0)"), "{text}");
    // SIGTERM let Redis flush its append-only file into the run dir.
    let aof = redis::aof_files(&redis.dir);
    assert!(!aof.is_empty(), "no AOF in {}", redis.dir.display());
    let mut contents = Vec::new();
    for file in &aof {
        contents.extend(std::fs::read(file)?);
    }
    assert!(
        String::from_utf8_lossy(&contents).contains("confab:runner-test"),
        "the write is not in {aof:?}"
    );
    drop(sup);

    // And the data is back after a restart from the same directory.
    let (output, _captured) = Output::capture(["redis"]);
    let sup = Supervisor::new(output, SupervisorOptions::default());
    let mut again = redis.clone();
    again.port = free_port()?;
    again.start(&sup).await?;
    assert_eq!(
        redis::command(again.addr(), &["GET", "confab:runner-test"]).await?,
        Reply::Bulk(Some(b"kept".to_vec()))
    );
    sup.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn redis_dying_is_fatal() -> anyhow::Result<()> {
    let run_dir = TempDir::new("redis-dies")?;
    let redis = local_redis(&run_dir.0)?;
    let (output, _captured) = Output::capture(["redis"]);
    let sup = Supervisor::new(output, SupervisorOptions::default());
    let handle = redis.start(&sup).await?.remove(0);
    let pid = handle.pid().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()?;
    assert!(status.success());
    let reason = tokio::time::timeout(Duration::from_secs(10), sup.fatal()).await?;
    assert_eq!(
        reason,
        "redis exited unexpectedly (killed by signal 9 (SIGKILL))"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(handle.state().starts, 1, "redis must not be restarted");
    sup.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_port_held_by_another_program_is_refused() -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr: SocketAddr = listener.local_addr()?;
    // Accept and hang up without answering, like a non-Redis server.
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            drop(stream);
        }
    });
    let run_dir = TempDir::new("redis-busy")?;
    let mut redis = local_redis(&run_dir.0)?;
    redis.port = addr.port();
    let (output, _captured) = Output::capture(["redis"]);
    let sup = Supervisor::new(output, SupervisorOptions::default());
    let err = redis
        .start(&sup)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains(&format!(
            "port {} on 127.0.0.1 is already in use",
            addr.port()
        )),
        "{err}"
    );
    assert!(sup.process_groups().is_empty(), "nothing was started");
    Ok(())
}

#[tokio::test]
async fn wait_ready_gives_up_when_nothing_answers() -> anyhow::Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let err = redis::wait_ready(addr, Duration::from_millis(300))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("did not answer PING"), "{err}");
    Ok(())
}

/// `--redis-nodes 3`: six nodes under the supervisor, formed into a cluster on the first
/// start, found formed on the next, all stopped by the shutdown.
#[tokio::test]
async fn a_local_cluster_forms_serves_and_stops() -> anyhow::Result<()> {
    let run_dir = TempDir::new("redis-cluster")?;
    let mut redis = local_redis(&run_dir.0)?.as_cluster(3, &run_dir.0);
    redis.port = cluster_base_port()?;
    assert_eq!(redis.ports().len(), 6);
    assert!(redis.url().split(',').count() == 6);
    assert!(redis
        .child_env()
        .contains(&("REDIS_CLUSTER".to_string(), "true".to_string())));
    for round in 0..2 {
        let names: Vec<String> = redis.ports().iter().map(|p| format!("redis-{p}")).collect();
        let (output, _captured) = Output::capture(names.iter().map(String::as_str));
        let sup = Supervisor::new(output, SupervisorOptions::default());
        let handles = redis.start(&sup).await?;
        assert_eq!(handles.len(), 6, "round {round}");
        for port in redis.ports() {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let Reply::Bulk(Some(info)) = redis::command(addr, &["CLUSTER", "INFO"]).await? else {
                anyhow::bail!("no CLUSTER INFO from {port}");
            };
            let info = String::from_utf8_lossy(&info).into_owned();
            assert!(
                info.contains("cluster_state:ok"),
                "round {round}, {port}: {info}"
            );
            assert!(info.contains("cluster_known_nodes:6"), "{info}");
        }
        let pids: Vec<u32> = handles.iter().filter_map(|h| h.pid()).collect();
        sup.shutdown().await;
        assert!(pids.iter().all(|p| !alive(*p)), "a node is still running");
    }
    Ok(())
}

/// Six consecutive free ports whose bus ports (+10000) are free too.
fn cluster_base_port() -> anyhow::Result<u16> {
    for _ in 0..200 {
        let base = free_port()?;
        if !(1024..=55000).contains(&base) {
            continue;
        }
        let all_free = (0..6).all(|i| {
            std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", base + i + 10000)).is_ok()
        });
        if all_free {
            return Ok(base);
        }
    }
    anyhow::bail!("no free range of ports for a cluster")
}
