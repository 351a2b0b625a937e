//! `rest`: C keep-alive clients, each sending messages to its own open conversation as fast as
//! the answers come, with a GET of the conversation every Nth request.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;
use http::{Method, Uri};

use crate::args::Args;
use crate::http::{targets, HttpConn};
use crate::report::{bump, merge_counts, per_sec, Counts, Hist, Report, Section};
use crate::{api, sys};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Results for one endpoint.
#[derive(Default, Clone)]
pub struct Endpoint {
    pub ok: u64,
    pub latency: Hist,
    pub errors: Counts,
}

impl Endpoint {
    fn merge(&mut self, o: &Endpoint) {
        self.ok += o.ok;
        self.latency.merge(&o.latency);
        merge_counts(&mut self.errors, &o.errors);
    }

    fn total(&self) -> u64 {
        self.ok + self.errors.values().sum::<u64>()
    }

    fn section(&self, name: &str, elapsed: Duration) -> Section {
        Section::new(name)
            .int("count", self.total())
            .int("ok", self.ok)
            .num("requests/s", per_sec(self.total(), elapsed), "/s")
            .latency("latency", self.latency.summary())
            .counts("errors", self.errors.clone())
    }
}

#[derive(Default)]
struct Client {
    create: Endpoint,
    send: Endpoint,
    get: Endpoint,
}

/// The ISO timestamp of now, in UTC with milliseconds.
fn now_iso(buf: &mut String) {
    buf.clear();
    let _ = write!(
        buf,
        "{}",
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ")
    );
}

/// A message body: `{"sender","timestamp","content"}` with content of `len` bytes.
pub fn message_body(buf: &mut Vec<u8>, sender: &str, ts: &str, label: &str, len: usize) -> Bytes {
    buf.clear();
    buf.extend_from_slice(br#"{"sender":""#);
    buf.extend_from_slice(sender.as_bytes());
    buf.extend_from_slice(br#"","timestamp":""#);
    buf.extend_from_slice(ts.as_bytes());
    buf.extend_from_slice(br#"","content":""#);
    let start = buf.len();
    buf.extend_from_slice(label.as_bytes());
    while buf.len() - start < len {
        buf.push(b'x');
    }
    buf.extend_from_slice(br#""}"#);
    Bytes::copy_from_slice(buf)
}

/// Records one answer: 2xx counts as ok with its latency, anything else by status/failure.
fn record(ep: &mut Endpoint, res: &Result<(u16, Bytes), crate::http::Failure>, took: Duration) {
    match res {
        Ok((status, _)) if (200..300).contains(status) => {
            ep.ok += 1;
            ep.latency.record(took);
        }
        Ok((status, _)) => bump(&mut ep.errors, &status.to_string()),
        Err(f) => bump(&mut ep.errors, f.label()),
    }
}

fn conversation_id(body: &Bytes) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v["conversationId"].as_str().map(str::to_string)
}

struct Paths {
    send: Uri,
    get: Uri,
}

fn paths(id: &str) -> Result<Paths> {
    Ok(Paths {
        send: format!("/api/conversations/{id}/messages").parse()?,
        get: format!("/api/conversations/{id}").parse()?,
    })
}

async fn client(idx: usize, mut conn: HttpConn, args: &Args, deadline: Instant) -> Result<Client> {
    let mut c = Client::default();
    let create_uri: Uri = "/api/conversations".parse()?;
    let empty = Bytes::from_static(b"{}");
    let mut ts = String::with_capacity(32);
    let mut buf = Vec::with_capacity(args.content_bytes + 128);
    let mut label = String::with_capacity(48);
    let mut current: Option<(Paths, u64)> = None;
    // Requests left before the next GET (0 = never).
    let mut until_get = args.get_every;
    while Instant::now() < deadline {
        let Some((p, in_conv)) = current.as_mut() else {
            let t0 = Instant::now();
            let res = conn
                .send(Method::POST, create_uri.clone(), None, Some(empty.clone()))
                .await;
            record(&mut c.create, &res, t0.elapsed());
            match res {
                Ok((201, body)) => match conversation_id(&body) {
                    Some(id) => current = Some((paths(&id)?, 0)),
                    None => bail!("POST /api/conversations answered without a conversationId"),
                },
                // Back off a little so a failing gateway is not spun on.
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
            continue;
        };
        let t0 = Instant::now();
        if until_get == 1 {
            until_get = args.get_every;
            let res = conn.send(Method::GET, p.get.clone(), None, None).await;
            record(&mut c.get, &res, t0.elapsed());
            continue;
        }
        until_get = until_get.saturating_sub(1);
        now_iso(&mut ts);
        label.clear();
        let _ = write!(label, "loadgen c{idx} m{in_conv} ");
        let sender = if *in_conv % 2 == 0 {
            "customer"
        } else {
            "agent"
        };
        let body = message_body(&mut buf, sender, &ts, &label, args.content_bytes);
        let res = conn
            .send(Method::POST, p.send.clone(), None, Some(body))
            .await;
        record(&mut c.send, &res, t0.elapsed());
        if matches!(res, Err(crate::http::Failure::Connect)) {
            // The gateway is gone: do not spin on refused connections.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        *in_conv += 1;
        if *in_conv >= args.max_messages {
            current = None;
        }
    }
    Ok(c)
}

pub async fn run(args: &Args) -> Result<Report> {
    let targets = targets(&args.urls)?;
    let redis_before = sys::redis_before(args).await;
    // Fail fast when no gateway answers.
    for t in &targets {
        let mut probe = HttpConn::new(t.clone(), Duration::from_secs(5))?;
        api::create_open(&mut probe, false).await?;
    }
    let watch = sys::Watch::start(args);
    let start = Instant::now();
    let deadline = start + args.duration;
    let mut handles = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let conn = HttpConn::new(targets[i % targets.len()].clone(), REQUEST_TIMEOUT)?;
        let a = args.clone();
        handles.push(tokio::spawn(
            async move { client(i, conn, &a, deadline).await },
        ));
    }
    let mut total = Client::default();
    let mut failures = Vec::new();
    for h in handles {
        match h.await {
            Ok(Ok(c)) => {
                total.create.merge(&c.create);
                total.send.merge(&c.send);
                total.get.merge(&c.get);
            }
            Ok(Err(e)) => failures.push(format!("{e:#}")),
            Err(e) => failures.push(e.to_string()),
        }
    }
    let elapsed = start.elapsed();
    let mut r = Report::new("rest");
    let mut run = Section::new("run")
        .text("targets", args.urls.join(" "))
        .int("clients", args.clients as u64)
        .int("threads", args.threads as u64)
        .num("elapsed", elapsed.as_secs_f64(), "s")
        .num("sends/s", per_sec(total.send.ok, elapsed), "/s")
        .int("sends ok", total.send.ok);
    if !failures.is_empty() {
        run = run
            .int("clients failed", failures.len() as u64)
            .text("first failure", failures[0].clone());
    }
    r.push(run);
    r.push(
        total
            .send
            .section("POST /api/conversations/:id/messages", elapsed),
    );
    r.push(total.get.section("GET /api/conversations/:id", elapsed));
    r.push(total.create.section("POST /api/conversations", elapsed));
    r.push(watch.section("processes"));
    if let Some(s) = sys::redis_section(args, redis_before, Some(total.send.ok)).await {
        r.push(s);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_bodies_are_valid_json_of_the_asked_size() {
        let mut buf = Vec::new();
        let mut ts = String::new();
        now_iso(&mut ts);
        assert!(chrono::DateTime::parse_from_rfc3339(&ts).is_ok(), "{ts}");
        let b = message_body(&mut buf, "agent", &ts, "loadgen c1 m2 ", 100);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
        assert_eq!(v["sender"], "agent");
        assert_eq!(v["timestamp"], ts.as_str());
        let content = v["content"].as_str().unwrap_or_default();
        assert_eq!(content.len(), 100);
        assert!(content.starts_with("loadgen c1 m2 x"));
    }

    #[test]
    fn records_split_ok_and_errors() {
        let mut ep = Endpoint::default();
        record(
            &mut ep,
            &Ok((201, Bytes::new())),
            Duration::from_micros(300),
        );
        record(
            &mut ep,
            &Ok((503, Bytes::new())),
            Duration::from_micros(300),
        );
        record(
            &mut ep,
            &Err(crate::http::Failure::Timeout),
            Duration::from_secs(10),
        );
        assert_eq!(ep.ok, 1);
        assert_eq!(ep.total(), 3);
        assert_eq!(ep.latency.len(), 1);
        assert_eq!(ep.errors.get("503"), Some(&1));
        assert_eq!(ep.errors.get("timeout"), Some(&1));
    }
}
