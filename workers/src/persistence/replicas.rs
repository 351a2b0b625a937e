//! Which shards can confirm a write to `REDIS_WAIT_REPLICAS` replicas right now.
//!
//! With `REDIS_WAIT_REPLICAS` above 0, a command is acknowledged only after `WAIT` confirms
//! its write on that many replicas. A shard that has fewer online replicas (its replica died,
//! or a failover promoted it and the old primary has not rejoined) would make every `WAIT`
//! time out; its commands are answered 503 `replicas_unavailable` at once instead, without
//! being applied, while other shards keep working. This module keeps that picture fresh:
//! `CLUSTER SHARDS` on a cluster, `INFO replication` on a standalone primary, every 500 ms.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use confab_shared::db::Conn;
use redis::{RedisResult, Value};
use tokio_util::sync::CancellationToken;

pub const REFRESH: Duration = Duration::from_millis(500);

/// Online replicas per slot range.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    /// `(first slot, last slot, online replicas)`; standalone: one range over every slot.
    pub ranges: Vec<(u16, u16, u32)>,
}

impl Topology {
    /// Online replicas behind `slot` (0 when unknown).
    pub fn replicas(&self, slot: u16) -> u32 {
        self.ranges
            .iter()
            .find(|(a, b, _)| (*a..=*b).contains(&slot))
            .map_or(0, |r| r.2)
    }
}

/// A shared, periodically refreshed [`Topology`].
#[derive(Clone, Default)]
pub struct ReplicaHealth {
    current: Arc<RwLock<Option<Topology>>>,
}

impl ReplicaHealth {
    /// Whether the shard serving `slot` has at least `needed` online replicas. Before the
    /// first refresh nothing is known and every write is tried (WAIT still decides).
    pub fn enough(&self, slot: u16, needed: u32) -> bool {
        match self.current.read().ok().and_then(|t| t.clone()) {
            Some(t) => t.replicas(slot) >= needed,
            None => true,
        }
    }

    /// Refreshes until `stop` fires.
    pub async fn watch(self, mut conn: Conn, stop: CancellationToken) {
        loop {
            match read(&mut conn).await {
                Ok(t) => {
                    if let Ok(mut cur) = self.current.write() {
                        *cur = Some(t);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "reading the replication topology failed"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(REFRESH) => {}
            }
        }
    }
}

async fn read(conn: &mut Conn) -> RedisResult<Topology> {
    if conn.is_cluster() {
        let v: Value = redis::cmd("CLUSTER")
            .arg("SHARDS")
            .query_async(conn)
            .await?;
        Ok(parse_shards(&v))
    } else {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(conn)
            .await?;
        Ok(Topology {
            ranges: vec![(
                0,
                confab_shared::partition::SLOTS - 1,
                online_replicas(&info),
            )],
        })
    }
}

/// `slaveN:ip=…,port=…,state=online,…` lines of `INFO replication`.
pub fn online_replicas(info: &str) -> u32 {
    info.lines()
        .filter(|l| l.starts_with("slave") && l.contains("state=online"))
        .count() as u32
}

/// Pairs of a RESP2 flat list or a RESP3 map, as (name, value).
fn fields(v: &Value) -> Vec<(String, &Value)> {
    match v {
        Value::Map(pairs) => pairs
            .iter()
            .filter_map(|(k, v)| {
                redis::from_redis_value_ref::<String>(k)
                    .ok()
                    .map(|k| (k, v))
            })
            .collect(),
        Value::Array(items) => items
            .chunks(2)
            .filter_map(|kv| match kv {
                [k, v] => redis::from_redis_value_ref::<String>(k)
                    .ok()
                    .map(|k| (k, v)),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    fields(v)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// `CLUSTER SHARDS`: each shard's slot ranges and how many of its replicas are online.
pub fn parse_shards(v: &Value) -> Topology {
    let Value::Array(shards) = v else {
        return Topology::default();
    };
    let mut ranges = Vec::new();
    for shard in shards {
        let slots: Vec<u16> = field(shard, "slots")
            .and_then(|s| redis::from_redis_value_ref::<Vec<u16>>(s).ok())
            .unwrap_or_default();
        let online = match field(shard, "nodes") {
            Some(Value::Array(nodes)) => nodes
                .iter()
                .filter(|n| {
                    let text = |k: &str| {
                        field(n, k).and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
                    };
                    text("role").as_deref() == Some("replica")
                        && text("health").as_deref() == Some("online")
                })
                .count() as u32,
            _ => 0,
        };
        for pair in slots.chunks(2) {
            if let [a, b] = pair {
                ranges.push((*a, *b, online));
            }
        }
    }
    Topology { ranges }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Value {
        Value::BulkString(x.as_bytes().to_vec())
    }

    fn node(role: &str, health: &str) -> Value {
        Value::Array(vec![s("role"), s(role), s("health"), s(health)])
    }

    #[test]
    fn shards_count_online_replicas_per_range() {
        let shard = |a: i64, b: i64, nodes: Vec<Value>| {
            Value::Array(vec![
                s("slots"),
                Value::Array(vec![Value::Int(a), Value::Int(b)]),
                s("nodes"),
                Value::Array(nodes),
            ])
        };
        let v = Value::Array(vec![
            shard(
                0,
                5460,
                vec![node("master", "online"), node("replica", "online")],
            ),
            shard(
                5461,
                10922,
                vec![node("master", "online"), node("replica", "failed")],
            ),
        ]);
        let t = parse_shards(&v);
        assert_eq!(t.replicas(100), 1);
        assert_eq!(t.replicas(6000), 0);
        assert_eq!(t.replicas(16000), 0);
    }

    #[test]
    fn info_replication_counts_online_replicas() {
        let info = "role:master\r\nconnected_slaves:2\r\nslave0:ip=127.0.0.1,port=7001,state=online,offset=1,lag=0\r\nslave1:ip=127.0.0.1,port=7002,state=wait_bgsave,offset=0,lag=0\r\n";
        assert_eq!(online_replicas(info), 1);
    }
}
