//! Lua scripts called by SHA (`EVALSHA`), loaded once and reloaded if Redis forgot them
//! (a restart, a failover to a node that never saw `SCRIPT LOAD`, `SCRIPT FLUSH`).
//!
//! Every script takes one typed request: a MessagePack map encoded from a Rust struct
//! (`ARGV[1]`, decoded by `cmsgpack.unpack`), and answers with one MessagePack map decoded
//! into a Rust struct ([`decode_reply`]). A reader sees on one screen what goes in and what
//! comes out: the struct definitions beside the call, the field names in the script.

use redis::aio::ConnectionLike;
use redis::{Cmd, FromRedisValue, RedisError, RedisResult, Value};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::db::Conn;

/// A Lua script and its SHA1, computed locally.
pub struct Lua {
    script: redis::Script,
}

impl Lua {
    pub fn new(code: &str) -> Self {
        Self {
            script: redis::Script::new(code),
        }
    }

    pub fn sha(&self) -> &str {
        self.script.get_hash()
    }

    /// `SCRIPT LOAD` (on every primary of a cluster): at start-up and after `NOSCRIPT`.
    pub async fn load<C: ConnectionLike>(&self, conn: &mut C) -> RedisResult<()> {
        self.script
            .prepare_invoke()
            .load_async(conn)
            .await
            .map(|_| ())
    }

    /// An `EVALSHA` with one typed request, to run alone or add to a pipeline.
    pub fn call<K: redis::ToRedisArgs, R: Serialize>(&self, keys: &[K], request: &R) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.sha())
            .arg(keys.len())
            .arg(keys)
            .arg(encode_request(request));
        cmd
    }

    /// An `EVALSHA` whose arguments are plain ARGV in a fixed, documented order — for the
    /// one script on every send's path (send.lua), where decoding a request map costs more
    /// than the commands it runs.
    pub fn call_argv<K: redis::ToRedisArgs, A: redis::ToRedisArgs>(
        &self,
        keys: &[K],
        argv: &[A],
    ) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.sha()).arg(keys.len()).arg(keys).arg(argv);
        cmd
    }

    /// An `EVALSHA` with a request already encoded (`encode_request`).
    pub fn call_raw<K: redis::ToRedisArgs>(&self, keys: &[K], request: Vec<u8>) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.sha()).arg(keys.len()).arg(keys).arg(request);
        cmd
    }

    /// Runs the script with `request` and decodes its MessagePack reply, loading the script
    /// first if Redis does not know it.
    pub async fn run<T: DeserializeOwned, K: redis::ToRedisArgs, R: Serialize>(
        &self,
        conn: &mut Conn,
        keys: &[K],
        request: &R,
    ) -> RedisResult<T> {
        decode_reply(&self.run_raw::<Value, _, _>(conn, keys, request).await?)
    }

    /// Like [`Lua::run`] for scripts that return bulk data as a plain RESP reply (pages of
    /// stored messages pass through without re-encoding).
    pub async fn run_raw<T: FromRedisValue, K: redis::ToRedisArgs, R: Serialize>(
        &self,
        conn: &mut Conn,
        keys: &[K],
        request: &R,
    ) -> RedisResult<T> {
        match self.call(keys, request).query_async(conn).await {
            Err(e) if is_noscript(&e) => {
                self.load(conn).await?;
                self.call(keys, request).query_async(conn).await
            }
            other => other,
        }
    }

    /// Runs calls that may touch different slots ([`Conn::query_many`]); when Redis lost the
    /// script, loads it and runs them once more (none of them ran).
    pub async fn run_many(
        &self,
        conn: &mut Conn,
        calls: impl Fn() -> Vec<Cmd>,
    ) -> RedisResult<Vec<RedisResult<Value>>> {
        let results = conn.query_many(calls()).await?;
        if !results
            .iter()
            .any(|r| r.as_ref().err().is_some_and(is_noscript))
        {
            return Ok(results);
        }
        self.load(conn).await?;
        conn.query_many(calls()).await
    }
}

pub fn is_noscript(err: &RedisError) -> bool {
    err.code() == Some("NOSCRIPT")
}

/// A request as the one MessagePack argument a script decodes (`cmsgpack.unpack(ARGV[1])`).
pub fn encode_request<R: Serialize>(request: &R) -> Vec<u8> {
    // Maps with field names; plain structs of strings and numbers cannot fail to encode.
    rmp_serde::to_vec_named(request).unwrap_or_default()
}

/// A script's MessagePack reply (`return cmsgpack.pack({...})`) as a typed struct.
pub fn decode_reply<T: DeserializeOwned>(value: &Value) -> RedisResult<T> {
    let bytes: Vec<u8> = redis::from_redis_value_ref(value)?;
    rmp_serde::from_slice(&bytes).map_err(|e| {
        RedisError::from((
            redis::ErrorKind::Parse,
            "unexpected script reply",
            e.to_string(),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Req {
        op: String,
        n: u64,
        blob: String,
    }

    #[test]
    fn requests_round_trip_as_named_maps() {
        let r = Req {
            op: "send".into(),
            n: 7,
            blob: "{\"a\":1}".into(),
        };
        let bytes = encode_request(&r);
        let back: Req = decode_reply(&Value::BulkString(bytes)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, r);
    }
}
