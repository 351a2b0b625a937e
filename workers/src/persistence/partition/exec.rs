//! Sending one round to Redis in as few round trips as it allows.
//!
//! A round is the apply.lua calls (each in its conversation's slot, in stream order), an
//! optional `WAIT` for replicas, and the partition's own commands (a commit, the read of the
//! next entries) in the partition's slot. Standalone, all of it is one pipeline: one round
//! trip per batch. On a cluster a pipeline must stay in one slot, so each conversation's
//! calls are one pipeline (ending in its own `WAIT` on that node's connection) and the
//! partition's commands another, all sent concurrently.

use std::collections::HashMap;

use confab_shared::db::Conn;
use redis::{Cmd, RedisError, RedisResult, Value};
use uuid::Uuid;

pub struct Round {
    /// apply.lua calls in stream order, with their conversation.
    pub calls: Vec<(Uuid, Cmd)>,
    /// `REDIS_WAIT_REPLICAS` (0: no WAIT) and its timeout.
    pub wait: u32,
    pub wait_ms: u64,
    /// Commands in the partition's slot, after the calls.
    pub partition: Vec<Cmd>,
}

pub struct Answers {
    /// Per call: its result, and whether WAIT confirmed it (always true without WAIT).
    pub calls: Vec<(RedisResult<Value>, bool)>,
    /// Per partition command: its result.
    pub partition: Vec<RedisResult<Value>>,
}

pub async fn execute(conn: &mut Conn, round: Round) -> RedisResult<Answers> {
    let Round {
        calls,
        wait,
        wait_ms,
        partition,
    } = round;
    match conn {
        Conn::Single(_) => {
            let n = calls.len();
            let mut pipe = pipeline(calls.into_iter().map(|(_, c)| c), wait, wait_ms);
            let extra = partition.len();
            for c in partition {
                pipe.add_command(c);
            }
            let mut values: Vec<Value> = pipe.query_async(conn).await?;
            let tail = values.split_off(values.len().saturating_sub(extra));
            Ok(Answers {
                calls: confirmed(values, n, wait),
                partition: tail.into_iter().map(Value::extract_error).collect(),
            })
        }
        Conn::Cluster(cluster) => {
            let groups = by_conversation(calls);
            let total: usize = groups.iter().map(|g| g.0.len()).sum();
            let conversations = groups.into_iter().map(|(positions, cmds)| {
                let mut c = cluster.clone();
                let n = cmds.len();
                let pipe = pipeline(cmds.into_iter(), wait, wait_ms);
                async move {
                    let out = match pipe.query_async::<Vec<Value>>(&mut c).await {
                        Ok(values) => confirmed(values, n, wait),
                        Err(e) => (0..n).map(|_| (Err(clone_error(&e)), false)).collect(),
                    };
                    (positions, out)
                }
            });
            let extra = partition.len();
            let mut own = cluster.clone();
            let own_slot = async move {
                if extra == 0 {
                    return Vec::new();
                }
                let mut pipe = redis::pipe();
                pipe.ignore_errors();
                for c in partition {
                    pipe.add_command(c);
                }
                match pipe.query_async::<Vec<Value>>(&mut own).await {
                    Ok(values) => values.into_iter().map(Value::extract_error).collect(),
                    Err(e) => (0..extra).map(|_| Err(clone_error(&e))).collect(),
                }
            };
            let (groups, partition) =
                futures::future::join(futures::future::join_all(conversations), own_slot).await;
            let mut calls: Vec<Option<(RedisResult<Value>, bool)>> =
                (0..total).map(|_| None).collect();
            for (positions, out) in groups {
                for (pos, r) in positions.into_iter().zip(out) {
                    if let Some(slot) = calls.get_mut(pos) {
                        *slot = Some(r);
                    }
                }
            }
            Ok(Answers {
                calls: calls
                    .into_iter()
                    .map(|r| r.unwrap_or_else(|| (Err(missing()), false)))
                    .collect(),
                partition,
            })
        }
    }
}

fn pipeline(cmds: impl Iterator<Item = Cmd>, wait: u32, wait_ms: u64) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for c in cmds {
        pipe.add_command(c);
    }
    if wait > 0 {
        pipe.cmd("WAIT").arg(wait).arg(wait_ms);
    }
    pipe
}

/// The first `n` values with whether the `WAIT` after them reached `wait` replicas.
fn confirmed(mut values: Vec<Value>, n: usize, wait: u32) -> Vec<(RedisResult<Value>, bool)> {
    let replicated = wait == 0
        || values
            .get(n)
            .and_then(|v| redis::from_redis_value_ref::<u32>(v).ok())
            .is_some_and(|acked| acked >= wait);
    values.truncate(n);
    values
        .into_iter()
        .map(|v| (v.extract_error(), replicated))
        .collect()
}

/// Calls grouped by conversation, each group in stream order, with their positions.
fn by_conversation(calls: Vec<(Uuid, Cmd)>) -> Vec<(Vec<usize>, Vec<Cmd>)> {
    let mut groups: Vec<(Vec<usize>, Vec<Cmd>)> = Vec::new();
    let mut index: HashMap<Uuid, usize> = HashMap::new();
    for (pos, (cid, cmd)) in calls.into_iter().enumerate() {
        let g = *index.entry(cid).or_insert_with(|| {
            groups.push((Vec::new(), Vec::new()));
            groups.len() - 1
        });
        if let Some(group) = groups.get_mut(g) {
            group.0.push(pos);
            group.1.push(cmd);
        }
    }
    groups
}

fn missing() -> RedisError {
    RedisError::from((redis::ErrorKind::Io, "no result for a command"))
}

/// redis-rs errors are not `Clone`; a pipeline's one failure becomes each command's.
fn clone_error(e: &RedisError) -> RedisError {
    let kind = if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
        redis::ErrorKind::Io
    } else {
        e.kind()
    };
    match e.code() {
        Some(code) => RedisError::from((kind, "pipeline failed", format!("{code}: {e}"))),
        None => RedisError::from((kind, "pipeline failed", e.to_string())),
    }
}

/// Redis refused for now (out of memory, a replica, loading, failover, resharding, a
/// connection problem): retry without counting it against the command.
pub fn is_transient(e: &RedisError) -> bool {
    const CODES: [&str; 10] = [
        "OOM",
        "READONLY",
        "BUSY",
        "LOADING",
        "MASTERDOWN",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "NOREPLICAS",
        "MOVED",
        "ASK",
    ];
    e.is_io_error()
        || e.is_cluster_error()
        || e.kind() == redis::ErrorKind::ClusterConnectionNotFound
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.kind() == redis::ErrorKind::Io
        || e.code().is_some_and(|c| CODES.contains(&c))
        || CODES
            .iter()
            .any(|c| e.to_string().contains(&format!("{c}: ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failover_errors_are_transient_and_script_errors_are_not() {
        let server = |code: &str| {
            RedisError::from((redis::ErrorKind::Client, "x", format!("{code}: detail")))
        };
        assert!(is_transient(&server("CLUSTERDOWN")));
        assert!(is_transient(&server("READONLY")));
        assert!(is_transient(&RedisError::from((
            redis::ErrorKind::Io,
            "broken pipe"
        ))));
        assert!(!is_transient(&server("ERR user_script:1")));
    }

    #[test]
    fn wait_confirms_every_call_before_it() {
        let values = vec![Value::Int(1), Value::Int(2), Value::Int(1)];
        let out = confirmed(values.clone(), 2, 1);
        assert!(out.iter().all(|(_, ok)| *ok));
        let out = confirmed(vec![Value::Int(1), Value::Int(0)], 1, 1);
        assert!(!out[0].1, "WAIT answered 0 replicas");
        let out = confirmed(vec![Value::Int(1)], 1, 0);
        assert!(out[0].1);
    }

    #[test]
    fn calls_group_by_conversation_in_order() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let calls = vec![
            (a, redis::cmd("A1")),
            (b, redis::cmd("B1")),
            (a, redis::cmd("A2")),
        ];
        let groups = by_conversation(calls);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].0, [0, 2]);
        assert_eq!(groups[1].0, [1]);
    }
}
