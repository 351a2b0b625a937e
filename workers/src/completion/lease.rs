//! The answer lease of a conversation (`lua/answer.lua`): one replica answers a conversation
//! at a time, and the text so far is kept for clients that join mid-answer.

use std::time::Duration;

use confab_shared::db::Conn;
use confab_shared::keys;
use confab_shared::scripting::Lua;
use redis::RedisResult;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `ARGV[1]` of answer.lua.
#[derive(Serialize, Default)]
pub struct AnswerRequest<'a> {
    pub op: &'static str,
    pub owner: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub up_to: Option<u64>,
}

/// The reply of answer.lua.
#[derive(Deserialize, Debug, Default)]
pub struct AnswerReply {
    #[serde(default)]
    pub gone: bool,
    #[serde(default)]
    pub ok: bool,
    #[serde(default)]
    pub busy: bool,
    #[serde(default)]
    pub previous: Option<String>,
    #[serde(default)]
    pub hseq: u64,
    #[serde(default)]
    pub aseq: u64,
    #[serde(default)]
    pub assistant: bool,
}

/// What taking the lease found.
pub enum Lease {
    /// The conversation is gone.
    Gone,
    /// Another replica is answering.
    Busy,
    Mine {
        /// A lapsed answer of another replica that this one takes over.
        previous: Option<Uuid>,
        hseq: u64,
        aseq: u64,
        assistant: bool,
    },
}

/// answer.lua for one replica.
pub struct AnswerLease {
    script: Lua,
    owner: String,
    lease: Duration,
}

impl AnswerLease {
    pub fn new(owner: String, lease: Duration) -> Self {
        Self {
            script: Lua::new(include_str!("../lua/answer.lua")),
            owner,
            lease,
        }
    }

    pub async fn load(&self, conn: &mut Conn) -> RedisResult<()> {
        self.script.load(conn).await
    }

    fn request(&self, op: &'static str) -> AnswerRequest<'_> {
        AnswerRequest {
            op,
            owner: &self.owner,
            ..AnswerRequest::default()
        }
    }

    /// The EVALSHA for `request` on conversation `id`, to run alone or in a pipeline.
    pub fn call(&self, id: Uuid, request: &AnswerRequest<'_>) -> redis::Cmd {
        self.script
            .call(&[keys::conv_meta(&id), keys::conv_answer(&id)], request)
    }

    async fn run(
        &self,
        conn: &mut Conn,
        id: Uuid,
        request: &AnswerRequest<'_>,
    ) -> RedisResult<AnswerReply> {
        self.script
            .run(
                conn,
                &[keys::conv_meta(&id), keys::conv_answer(&id)],
                request,
            )
            .await
    }

    pub async fn acquire(&self, conn: &mut Conn, id: Uuid, rid: Uuid) -> RedisResult<Lease> {
        let mut req = self.request("acquire");
        req.lease_ms = Some(self.lease.as_millis() as u64);
        req.rid = Some(rid.to_string());
        let r = self.run(conn, id, &req).await?;
        Ok(if r.gone {
            Lease::Gone
        } else if r.busy || !r.ok {
            Lease::Busy
        } else {
            Lease::Mine {
                previous: r.previous.and_then(|p| Uuid::parse_str(&p).ok()),
                hseq: r.hseq,
                aseq: r.aseq,
                assistant: r.assistant,
            }
        })
    }

    /// Keeps the lease for another `lease`; false when it is not ours (or the chat is gone).
    pub async fn renew(&self, conn: &mut Conn, id: Uuid) -> RedisResult<bool> {
        self.renew_for(conn, id, self.lease).await
    }

    /// Lets the lease lapse now, keeping the text: the next replica announces a restart.
    pub async fn lapse(&self, conn: &mut Conn, id: Uuid) -> RedisResult<bool> {
        self.renew_for(conn, id, Duration::ZERO).await
    }

    async fn renew_for(&self, conn: &mut Conn, id: Uuid, lease: Duration) -> RedisResult<bool> {
        let mut req = self.request("renew");
        req.lease_ms = Some(lease.as_millis() as u64);
        let r = self.run(conn, id, &req).await?;
        Ok(r.ok && !r.gone)
    }

    /// The progress call (text so far) for a delta's pipeline.
    pub fn progress(&self, id: Uuid, rid: Uuid, text: &str, seq: u64) -> redis::Cmd {
        let mut req = self.request("progress");
        req.rid = Some(rid.to_string());
        req.text = Some(text);
        req.seq = Some(seq);
        self.call(id, &req)
    }

    pub async fn release(&self, conn: &mut Conn, id: Uuid) -> RedisResult<()> {
        self.run(conn, id, &self.request("release"))
            .await
            .map(|_| ())
    }

    /// Marks every human message up to eventId `up_to` answered.
    pub async fn mark(&self, conn: &mut Conn, id: Uuid, up_to: u64) -> RedisResult<()> {
        let mut req = self.request("mark");
        req.up_to = Some(up_to);
        self.run(conn, id, &req).await.map(|_| ())
    }

    /// `(exists, answered up to)`.
    pub async fn status(&self, conn: &mut Conn, id: Uuid) -> RedisResult<(bool, u64)> {
        let r = self.run(conn, id, &self.request("status")).await?;
        Ok((!r.gone, r.aseq))
    }

    /// Loads the script again (after a NOSCRIPT in a pipeline).
    pub async fn reload(&self, conn: &mut Conn) {
        let _ = self.script.load(conn).await;
    }
}
