//! A private `redis-server` per test (or per test file), on a free port, nothing persisted.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::streams::StreamRangeReply;
use redis::FromRedisValue;
use serde_json::Value;

use crate::process::{free_port, log_dir, next_seq, redis_server_binary, ChildProc};

pub struct Redis {
    port: u16,
    url: String,
    client: redis::Client,
    conn: MultiplexedConnection,
    proc: ChildProc,
}

impl Redis {
    /// Starts `redis-server --port P --bind 127.0.0.1 --save "" --appendonly no` and waits
    /// until it answers PING (a port lost to a race is retried with another one).
    pub async fn start() -> Self {
        let bin = redis_server_binary();
        let mut last_err = String::new();
        for _attempt in 0..3 {
            let port = free_port();
            let args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &log_dir().to_string_lossy(),
                "--loglevel",
                "warning",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let mut proc = ChildProc::spawn(&format!("redis-{}", next_seq()), &bin, &args, &[]);
            let url = format!("redis://127.0.0.1:{port}");
            let client = redis::Client::open(url.as_str())
                .unwrap_or_else(|e| panic!("bad Redis URL {url}: {e}"));
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Some(status) = proc.exited() {
                    last_err = format!("redis-server exited with {status}\n{}", proc.log_tail(20));
                    break;
                }
                let attempt = tokio::time::timeout(Duration::from_secs(2), async {
                    let mut conn = client.get_multiplexed_async_connection().await?;
                    redis::cmd("PING")
                        .query_async::<String>(&mut conn)
                        .await
                        .map(|_| conn)
                })
                .await;
                match attempt {
                    Ok(Ok(conn)) => {
                        return Self {
                            port,
                            url,
                            client,
                            conn,
                            proc,
                        }
                    }
                    Ok(Err(e)) => last_err = e.to_string(),
                    Err(_) => last_err = "PING timed out".into(),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("redis-server did not start: {last_err}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// A shared multiplexed connection (cheap to clone).
    pub fn conn(&self) -> MultiplexedConnection {
        self.conn.clone()
    }

    /// Runs one command given as words, panicking with the command on error:
    /// `redis.q::<u64>(&["XLEN", "confab:commands"]).await`.
    pub async fn q<T: FromRedisValue>(&self, args: &[&str]) -> T {
        let mut cmd = redis::cmd(args.first().copied().unwrap_or("PING"));
        for a in args.iter().skip(1) {
            cmd.arg(*a);
        }
        self.run(&cmd).await
    }

    /// Runs a prepared command, panicking with it on error.
    pub async fn run<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        let mut conn = self.conn.clone();
        cmd.query_async(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("Redis command {:?} failed: {e}", cmd_words(cmd)))
    }

    /// Like [`Redis::q`] but returns the error instead of panicking.
    pub async fn try_q<T: FromRedisValue>(&self, args: &[&str]) -> redis::RedisResult<T> {
        let mut cmd = redis::cmd(args.first().copied().unwrap_or("PING"));
        for a in args.iter().skip(1) {
            cmd.arg(*a);
        }
        let mut conn = self.conn.clone();
        cmd.query_async(&mut conn).await
    }

    /// Keys matching `pattern` (SCAN, so large databases are fine).
    pub async fn keys(&self, pattern: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut cursor = "0".to_string();
        loop {
            let (next, batch): (String, Vec<String>) = self
                .q(&["SCAN", &cursor, "MATCH", pattern, "COUNT", "1000"])
                .await;
            out.extend(batch);
            if next == "0" {
                break;
            }
            cursor = next;
        }
        out.sort();
        out.dedup();
        out
    }

    /// Every entry of a stream: `(entry id, fields)`.
    pub async fn stream(&self, key: &str) -> Vec<(String, HashMap<String, String>)> {
        let reply: StreamRangeReply = self.q(&["XRANGE", key, "-", "+"]).await;
        reply
            .ids
            .into_iter()
            .map(|e| {
                let fields = e
                    .map
                    .iter()
                    .map(|(k, v)| {
                        let text = redis::from_redis_value_ref::<String>(v).unwrap_or_default();
                        (k.clone(), text)
                    })
                    .collect();
                (e.id, fields)
            })
            .collect()
    }

    /// A conversation's stored events (`confab:conv:{<id>}:events`), parsed, oldest first.
    pub async fn history(&self, conversation: &str) -> Vec<Value> {
        self.stream(&crate::events_key(conversation))
            .await
            .into_iter()
            .map(|(id, f)| {
                let raw = f.get("e").cloned().unwrap_or_default();
                serde_json::from_str(&raw)
                    .unwrap_or_else(|e| panic!("history entry {id} is not JSON ({e}): {raw}"))
            })
            .collect()
    }

    /// How many `confab:commands` entries the `persistence` consumer `name` holds unacknowledged.
    pub async fn pending_of(&self, name: &str) -> usize {
        let v: redis::Value = self
            .q(&[
                "XPENDING",
                "confab:commands",
                "persistence",
                "-",
                "+",
                "100000",
                name,
            ])
            .await;
        match v {
            redis::Value::Array(items) => items.len(),
            _ => 0,
        }
    }

    /// A fresh Pub/Sub connection (subscribe / psubscribe on it).
    pub async fn pubsub(&self) -> redis::aio::PubSub {
        self.client
            .get_async_pubsub()
            .await
            .unwrap_or_else(|e| panic!("cannot open a Pub/Sub connection: {e}"))
    }

    /// SIGKILLs the server.
    pub fn kill(&mut self) {
        self.proc.kill9();
    }

    pub fn process(&mut self) -> &mut ChildProc {
        &mut self.proc
    }
}

fn cmd_words(cmd: &redis::Cmd) -> Vec<String> {
    cmd.args_iter()
        .map(|a| match a {
            redis::Arg::Simple(b) => {
                let s = String::from_utf8_lossy(b);
                if s.chars().count() > 80 {
                    format!("{}…", s.chars().take(80).collect::<String>())
                } else {
                    s.into_owned()
                }
            }
            _ => "<cursor>".into(),
        })
        .collect()
}
