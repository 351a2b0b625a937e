//! Lua scripts called by SHA (`EVALSHA`), loaded once and reloaded if Redis forgot them.

use redis::aio::ConnectionManager;
use redis::{Cmd, RedisError, RedisResult};

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

    /// `SCRIPT LOAD`: call at start-up and after a `NOSCRIPT` error.
    pub async fn load(&self, conn: &mut ConnectionManager) -> RedisResult<()> {
        self.script
            .prepare_invoke()
            .load_async(conn)
            .await
            .map(|_| ())
    }

    /// An `EVALSHA` command, to run alone or add to a pipeline.
    pub fn call<K: redis::ToRedisArgs, A: redis::ToRedisArgs>(
        &self,
        keys: &[K],
        args: &[A],
    ) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.sha()).arg(keys.len()).arg(keys).arg(args);
        cmd
    }

    /// Runs the script, loading it first if Redis does not know it.
    pub async fn run<T: redis::FromRedisValue, K: redis::ToRedisArgs, A: redis::ToRedisArgs>(
        &self,
        conn: &mut ConnectionManager,
        keys: &[K],
        args: &[A],
    ) -> RedisResult<T> {
        match self.call(keys, args).query_async(conn).await {
            Err(e) if is_noscript(&e) => {
                self.load(conn).await?;
                self.call(keys, args).query_async(conn).await
            }
            other => other,
        }
    }
}

pub fn is_noscript(err: &RedisError) -> bool {
    err.code() == Some("NOSCRIPT")
}
