//! `apply.lua` on a real Redis, one call at a time: exactly once (the cursor), order (the
//! `after` chain), fencing (the epoch), message ids, refusals, key expiry — and the same
//! script on a Redis Cluster, where it publishes with `SPUBLISH` in its own slot.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use confab_e2e::{Mode, Redis};
use confab_shared::commands::{Command, CommandEnvelope};
use confab_shared::db::Conn;
use confab_shared::domain::Message;
use confab_shared::keys;
use confab_shared::scripting::{decode_reply, Lua};
use confab_workers::persistence::apply::{self, ApplyReply, Context, Outcome};
use uuid::Uuid;

struct Fixture {
    redis: Redis,
    conn: Conn,
    script: Lua,
    /// Entry ids are `base + a` ms: real times, so deadlines and TTLs are in the future.
    base: u64,
}

async fn fixture(mode: Mode) -> Fixture {
    let redis = Redis::start_in(mode).await;
    let mut conn = redis.conn();
    let script = Lua::new(include_str!("../src/lua/apply.lua"));
    script.load(&mut conn).await.unwrap();
    Fixture {
        redis,
        conn,
        script,
        base: confab_shared::db::now_ms(),
    }
}

fn ctx(part: &'static str, epoch: u64, max_messages: u64, cluster: bool) -> Context<'static> {
    Context {
        part,
        epoch,
        publish: if cluster { "SPUBLISH" } else { "PUBLISH" },
        history: 2000,
        max_messages,
        max_bytes: 0,
        open_ttl_ms: 60_000,
        member_ttl_ms: 60_000,
        idem_window_ms: 60_000,
        idem_max: 1000,
    }
}

fn create(cid: Uuid) -> CommandEnvelope {
    CommandEnvelope {
        id: Uuid::new_v4(),
        trace: None,
        reply_to: None,
        command: Command::CreateConversation {
            conversation_id: cid,
            owner: None,
            members: vec![],
            title: None,
            assistant: false,
            fingerprint: None,
        },
    }
}

fn send_with(cid: Uuid, message_id: Uuid, text: &str) -> CommandEnvelope {
    CommandEnvelope {
        id: Uuid::new_v4(),
        trace: None,
        reply_to: None,
        command: Command::SendMessage {
            conversation_id: cid,
            message: Message {
                message_id,
                sender: "agent".into(),
                content: text.into(),
                timestamp: "2025-04-05T14:00:00Z".into(),
                stopped: false,
            },
            actor: None,
            assistant_reply: None,
            fingerprint: None,
        },
    }
}

fn send(cid: Uuid, text: &str) -> CommandEnvelope {
    send_with(cid, Uuid::new_v4(), text)
}

impl Fixture {
    /// The stream entry id `(base + a)-b`.
    fn e(&self, a: u64, b: u64) -> String {
        format!("{}-{b}", self.base + a)
    }

    async fn apply(
        &self,
        ctx: &Context<'_>,
        entry: &str,
        after: Option<&str>,
        env: &CommandEnvelope,
    ) -> ApplyReply {
        let req = apply::request(ctx, entry, after, env);
        let cid = env.command.conversation_id();
        let v: redis::Value = self
            .script
            .call_raw(&keys::conv_keys(&cid), req.encode())
            .query_async(&mut self.conn.clone())
            .await
            .unwrap();
        decode_reply(&v).unwrap()
    }

    async fn messages(&self, cid: Uuid) -> u64 {
        self.redis.q(&["ZCARD", &keys::conv_order(&cid)]).await
    }

    async fn meta(&self, cid: Uuid, field: &str) -> Option<String> {
        self.redis.q(&["HGET", &keys::conv_meta(&cid), field]).await
    }
}

#[tokio::test]
async fn a_redelivered_entry_is_a_duplicate_and_writes_nothing() {
    let f = fixture(Mode::Standalone).await;
    let c = ctx("p0-1", 1, 100, false);
    let cid = Uuid::new_v4();
    assert_eq!(
        f.apply(&c, &f.e(1, 0), None, &create(cid)).await.outcome,
        Outcome::Applied
    );
    let hello = send(cid, "hello");
    let first = f.apply(&c, &f.e(2, 0), None, &hello).await;
    assert_eq!(first.outcome, Outcome::Applied);
    assert_eq!(first.event_id, 1);
    // The same entry again (a new owner re-reading after the last commit): nothing new.
    let again = f.apply(&c, &f.e(2, 0), None, &hello).await;
    assert_eq!(again.outcome, Outcome::Duplicate);
    // So is anything older than the cursor.
    let older = f.apply(&c, &f.e(1, 5), None, &send(cid, "late")).await;
    assert_eq!(older.outcome, Outcome::Duplicate);
    assert_eq!(f.messages(cid).await, 1);
    assert_eq!(f.meta(cid, "eseq").await.as_deref(), Some("1"));
    assert_eq!(f.meta(cid, "cm").await, Some((f.base + 2).to_string()));
    assert_eq!(f.meta(cid, "cs").await.as_deref(), Some("0"));
    let created_again = f.apply(&c, &f.e(1, 0), None, &create(cid)).await;
    assert_eq!(created_again.outcome, Outcome::Duplicate);
}

#[tokio::test]
async fn a_resubmitted_message_id_is_a_duplicate() {
    let f = fixture(Mode::Standalone).await;
    let c = ctx("p0-1", 1, 100, false);
    let cid = Uuid::new_v4();
    f.apply(&c, &f.e(1, 0), None, &create(cid)).await;
    let mid = Uuid::new_v4();
    assert_eq!(
        f.apply(&c, &f.e(2, 0), None, &send_with(cid, mid, "once"))
            .await
            .outcome,
        Outcome::Applied
    );
    // The same message in a later entry (a command appended twice).
    let twice = f
        .apply(&c, &f.e(3, 0), None, &send_with(cid, mid, "once"))
        .await;
    assert_eq!(twice.outcome, Outcome::Duplicate);
    assert_eq!(f.messages(cid).await, 1);
    // The cursor moved, so a command chained after it still applies.
    let next = f
        .apply(&c, &f.e(4, 0), Some(&*f.e(3, 0)), &send(cid, "next"))
        .await;
    assert_eq!(next.outcome, Outcome::Applied);
    assert_eq!(next.event_id, 2);
}

#[tokio::test]
async fn a_command_after_one_that_did_not_apply_refuses_to_apply() {
    let f = fixture(Mode::Standalone).await;
    let c = ctx("p0-1", 1, 100, false);
    let cid = Uuid::new_v4();
    f.apply(&c, &f.e(1, 0), None, &create(cid)).await;
    f.apply(&c, &f.e(2, 0), None, &send(cid, "a")).await;
    // 3-0 failed (say, out of memory) and never ran; 4-0 names it as its predecessor.
    let b = f
        .apply(&c, &f.e(4, 0), Some(&*f.e(3, 0)), &send(cid, "c"))
        .await;
    assert_eq!(b.outcome, Outcome::OutOfOrder);
    assert_eq!(f.messages(cid).await, 1, "nothing written out of order");
    // Retried in order, both apply.
    assert_eq!(
        f.apply(&c, &f.e(3, 0), None, &send(cid, "b")).await.outcome,
        Outcome::Applied
    );
    assert_eq!(
        f.apply(&c, &f.e(4, 0), Some(&*f.e(3, 0)), &send(cid, "c"))
            .await
            .outcome,
        Outcome::Applied
    );
    assert_eq!(f.messages(cid).await, 3);
}

#[tokio::test]
async fn an_older_epoch_of_the_same_partition_is_fenced_where_a_newer_one_wrote() {
    let f = fixture(Mode::Standalone).await;
    let cid = Uuid::new_v4();
    let old = ctx("p3-7", 4, 100, false);
    let new = ctx("p3-7", 5, 100, false);
    f.apply(&old, &f.e(1, 0), None, &create(cid)).await;
    assert_eq!(
        f.apply(&new, &f.e(2, 0), None, &send(cid, "new owner"))
            .await
            .outcome,
        Outcome::Applied
    );
    // The previous owner wakes up and tries a later entry it had read: refused.
    let stale = f.apply(&old, &f.e(3, 0), None, &send(cid, "stale")).await;
    assert_eq!(stale.outcome, Outcome::Fenced);
    assert_eq!(f.messages(cid).await, 1);
    // After STREAM_PARTITIONS changed, another partition's owner may write here.
    let moved = ctx("p9-2", 1, 100, false);
    assert_eq!(
        f.apply(&moved, &f.e(4, 0), None, &send(cid, "repartitioned"))
            .await
            .outcome,
        Outcome::Applied
    );
}

#[tokio::test]
async fn refusals_move_the_cursor_and_are_answered_the_same_again() {
    let f = fixture(Mode::Standalone).await;
    let c = ctx("p0-1", 1, 1, false);
    let cid = Uuid::new_v4();
    f.apply(&c, &f.e(1, 0), None, &create(cid)).await;
    f.apply(&c, &f.e(2, 0), None, &send(cid, "fills it")).await;
    let full = f
        .apply(&c, &f.e(3, 0), None, &send(cid, "one too many"))
        .await;
    assert_eq!(full.outcome, Outcome::Full);
    // Chained after the refusal, the next command is not out of order.
    let next = f
        .apply(&c, &f.e(4, 0), Some(&*f.e(3, 0)), &send(cid, "still full"))
        .await;
    assert_eq!(next.outcome, Outcome::Full);
    // A redelivery of the refused command answers the same refusal.
    let again = f
        .apply(&c, &f.e(3, 0), None, &send(cid, "one too many"))
        .await;
    assert_eq!(again.outcome, Outcome::Duplicate);
    assert_eq!(again.failed, Some(Outcome::Full));
    // Unknown conversations are refused without writing anything.
    let ghost = Uuid::new_v4();
    let r = f.apply(&c, &f.e(5, 0), None, &send(ghost, "nobody")).await;
    assert_eq!(r.outcome, Outcome::NotFound);
    assert!(f
        .redis
        .keys(&format!("confab:conv:{{{ghost}}}*"))
        .await
        .is_empty());
}

/// `MAX_CONVERSATION_BYTES`: the stored JSON of a conversation's messages is counted (`bytes`
/// in meta) on both paths, a message that would pass the bound is refused as `full_bytes`
/// (409 conversation_full), and a delete gives its bytes back.
#[tokio::test]
async fn the_stored_bytes_of_a_conversation_are_bounded_and_deletes_free_them() {
    let f = fixture(Mode::Standalone).await;
    let mut c = ctx("p0-1", 1, 100, false);
    c.max_bytes = 3000;
    let cid = Uuid::new_v4();
    f.apply(&c, &f.e(1, 0), None, &create(cid)).await;
    let stored = |env: &CommandEnvelope| match &env.command {
        Command::SendMessage { message, .. } => serde_json::to_string(message).unwrap().len(),
        _ => 0,
    };
    let first = send(cid, &"a".repeat(1000));
    let one = stored(&first);
    let r = f.apply(&c, &f.e(2, 0), None, &first).await;
    assert_eq!(r.outcome, Outcome::Applied);
    assert_eq!(f.meta(cid, "bytes").await, Some(one.to_string()));
    // send.lua counts the same way.
    let second = send(cid, &"b".repeat(1000));
    let two = stored(&second);
    let fast = f
        .fast(&c, &f.e(3, 0), None, &second)
        .await
        .expect("applied");
    assert_eq!(fast.outcome, Outcome::Applied);
    assert_eq!(f.meta(cid, "bytes").await, Some((one + two).to_string()));
    // A third of that size passes 3000: send.lua declines, apply.lua refuses, nothing stored.
    let third = send(cid, &"c".repeat(1000));
    assert!(f.fast(&c, &f.e(4, 0), None, &third).await.is_none());
    let full = f.apply(&c, &f.e(4, 0), None, &third).await;
    assert_eq!(full.outcome, Outcome::FullBytes);
    assert_eq!(f.messages(cid).await, 2);
    let answer = apply::Applied {
        env: &third,
        reply: &full,
    }
    .reply(100, 3000);
    assert_eq!(answer.status, 409);
    assert_eq!(answer.body["error"]["code"], "conversation_full");
    assert!(
        answer.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("3000 bytes"),
        "{}",
        answer.body
    );
    // A small one still fits.
    let small = f.apply(&c, &f.e(5, 0), None, &send(cid, "ok")).await;
    assert_eq!(small.outcome, Outcome::Applied);
    // Deleting the first message frees its bytes: the big one fits now.
    let Command::SendMessage { message, .. } = &first.command else {
        unreachable!()
    };
    let del = CommandEnvelope {
        id: Uuid::new_v4(),
        trace: None,
        reply_to: None,
        command: Command::DeleteMessage {
            conversation_id: cid,
            message_id: message.message_id,
            actor: None,
        },
    };
    assert_eq!(
        f.apply(&c, &f.e(6, 0), None, &del).await.outcome,
        Outcome::Applied
    );
    let again = f.apply(&c, &f.e(7, 0), None, &third).await;
    assert_eq!(again.outcome, Outcome::Applied);
    // 0 turns the bound off.
    c.max_bytes = 0;
    let big = f
        .apply(&c, &f.e(8, 0), None, &send(cid, &"d".repeat(5000)))
        .await;
    assert_eq!(big.outcome, Outcome::Applied);
}

#[tokio::test]
async fn every_key_of_a_conversation_expires_and_messages_are_stored_once() {
    let f = fixture(Mode::Standalone).await;
    let c = ctx("p0-1", 1, 100, false);
    let cid = Uuid::new_v4();
    f.apply(&c, &f.e(1, 0), None, &create(cid)).await;
    f.apply(&c, &f.e(2, 0), None, &send(cid, "x".repeat(1000).as_str()))
        .await;
    let keys = f.redis.keys(&format!("confab:conv:{{{cid}}}*")).await;
    // meta, order, msgs: a message is kept once (msgs), ordered by its eventId (order); the
    // history stream holds only other events.
    assert_eq!(keys.len(), 3, "{keys:?}");
    for k in &keys {
        let ttl: i64 = f.redis.q(&["PTTL", k]).await;
        assert!(ttl > 60_000, "{k}: {ttl}");
    }
    let score: u64 = f
        .redis
        .q(&["ZSCORE", &keys::conv_order(&cid), &{
            let ids: Vec<String> = f
                .redis
                .q(&["ZRANGE", &keys::conv_order(&cid), "0", "0"])
                .await;
            ids[0].clone()
        }])
        .await;
    assert_eq!(score, 1, "ordered by eventId");
}

#[tokio::test]
async fn on_a_cluster_the_script_publishes_in_its_own_slot() {
    let f = fixture(Mode::Cluster).await;
    let c = ctx("p0-1", 1, 100, true);
    let cid = Uuid::new_v4();
    let mut events = f.redis.subscribe(&[keys::conv_channel(&cid)]).await;
    f.apply(&c, &f.e(1, 0), None, &create(cid)).await;
    let r = f.apply(&c, &f.e(2, 0), None, &send(cid, "sharded")).await;
    assert_eq!(r.outcome, Outcome::Applied);
    let (channel, payload) =
        tokio::time::timeout(std::time::Duration::from_secs(10), events.recv())
            .await
            .unwrap()
            .unwrap();
    assert_eq!(channel, keys::conv_channel(&cid));
    let v: serde_json::Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["eventId"], 1);
    assert_eq!(v["message"]["content"], "sharded");
}

/// send.lua, the hot path: it applies a plain new message, and declines — writing nothing —
/// everything apply.lua has to decide.
mod send_fast_path {
    use super::*;
    use confab_workers::persistence::apply::SendRequest;

    impl Fixture {
        pub(super) async fn fast(
            &self,
            ctx: &Context<'_>,
            entry: &str,
            after: Option<&str>,
            env: &CommandEnvelope,
        ) -> Option<ApplyReply> {
            let send = Lua::new(include_str!("../src/lua/send.lua"));
            send.load(&mut self.conn.clone()).await.unwrap();
            let req = apply::request(ctx, entry, after, env);
            let fast = SendRequest::for_command(&req).expect("a plain send");
            let cid = env.command.conversation_id();
            let v: redis::Value = send
                .call_argv(&SendRequest::keys(&cid), fast.argv())
                .query_async(&mut self.conn.clone())
                .await
                .unwrap();
            SendRequest::reply(&v).unwrap()
        }
    }

    #[tokio::test]
    async fn applies_in_order_and_declines_what_apply_lua_decides() {
        let f = fixture(Mode::Standalone).await;
        let c = ctx("p0-1", 2, 2, false);
        let cid = Uuid::new_v4();
        assert!(f
            .fast(&c, &f.e(1, 0), None, &send(cid, "no chat yet"))
            .await
            .is_none());
        f.apply(&c, &f.e(1, 0), None, &create(cid)).await;
        let first = f
            .fast(&c, &f.e(2, 0), None, &send(cid, "one"))
            .await
            .expect("applied");
        assert_eq!(first.outcome, Outcome::Applied);
        assert_eq!(first.event_id, 1);
        // A redelivery, a command out of order, an older epoch: declined, nothing written.
        assert!(f
            .fast(&c, &f.e(2, 0), None, &send(cid, "again"))
            .await
            .is_none());
        assert!(f
            .fast(&c, &f.e(4, 0), Some(&*f.e(3, 0)), &send(cid, "gap"))
            .await
            .is_none());
        let stale = ctx("p0-1", 1, 2, false);
        assert!(f
            .fast(&stale, &f.e(5, 0), None, &send(cid, "stale"))
            .await
            .is_none());
        assert_eq!(f.messages(cid).await, 1);
        // A message id seen before: declined (apply.lua calls it a duplicate).
        let mid = Uuid::new_v4();
        assert!(f
            .fast(&c, &f.e(6, 0), None, &send_with(cid, mid, "two"))
            .await
            .is_some());
        assert!(f
            .fast(&c, &f.e(7, 0), None, &send_with(cid, mid, "two"))
            .await
            .is_none());
        // Full (max 2): declined; apply.lua refuses it.
        assert!(f
            .fast(&c, &f.e(8, 0), None, &send(cid, "three"))
            .await
            .is_none());
        let full = f.apply(&c, &f.e(8, 0), None, &send(cid, "three")).await;
        assert_eq!(full.outcome, Outcome::Full);
        assert_eq!(f.messages(cid).await, 2);
        let keys = f.redis.keys(&format!("confab:conv:{{{cid}}}*")).await;
        for k in &keys {
            let ttl: i64 = f.redis.q(&["PTTL", k]).await;
            assert!(ttl > 60_000, "{k}: {ttl}");
        }
    }
}

/// Idempotency records: a message whose id derives from the client's key (a fingerprint comes
/// along) is remembered per conversation, so a retry — a new command with the same id — gets
/// the first result even after a delete, and the key reused for other content is refused.
mod idempotency_records {
    use super::*;
    use confab_workers::persistence::apply::SendRequest;

    fn keyed(cid: Uuid, mid: Uuid, text: &str, fp: &str) -> CommandEnvelope {
        let mut env = send_with(cid, mid, text);
        if let Command::SendMessage { fingerprint, .. } = &mut env.command {
            *fingerprint = Some(fp.into());
        }
        env
    }

    fn delete(cid: Uuid, mid: Uuid) -> CommandEnvelope {
        CommandEnvelope {
            id: Uuid::new_v4(),
            trace: None,
            reply_to: None,
            command: Command::DeleteMessage {
                conversation_id: cid,
                message_id: mid,
                actor: None,
            },
        }
    }

    impl Fixture {
        async fn fast_keyed(
            &self,
            ctx: &Context<'_>,
            entry: &str,
            env: &CommandEnvelope,
        ) -> Option<ApplyReply> {
            let send = Lua::new(include_str!("../src/lua/send.lua"));
            send.load(&mut self.conn.clone()).await.unwrap();
            let req = apply::request(ctx, entry, None, env);
            let fast = SendRequest::for_command(&req).expect("a plain send");
            let cid = env.command.conversation_id();
            let v: redis::Value = send
                .call_argv(&SendRequest::keys(&cid), fast.argv())
                .query_async(&mut self.conn.clone())
                .await
                .unwrap();
            SendRequest::reply(&v).unwrap()
        }

        async fn records(&self, cid: Uuid) -> (u64, u64) {
            (
                self.redis.q(&["HLEN", &keys::conv_idem(&cid)]).await,
                self.redis.q(&["ZCARD", &keys::conv_idem_at(&cid)]).await,
            )
        }
    }

    #[tokio::test]
    async fn a_retry_gets_the_first_result_and_a_reused_key_is_refused() {
        let f = fixture(Mode::Standalone).await;
        let c = ctx("p0-1", 1, 100, false);
        let cid = Uuid::new_v4();
        f.apply(&c, &f.e(1, 0), None, &create(cid)).await;
        let mid = Uuid::new_v4();
        // The first command takes the hot path and leaves a record, with the keys' expiry.
        let first = f
            .fast_keyed(&c, &f.e(2, 0), &keyed(cid, mid, "hi", "fp1"))
            .await
            .expect("applied by send.lua");
        assert_eq!(first.outcome, Outcome::Applied);
        assert_eq!(f.records(cid).await, (1, 1));
        for k in [keys::conv_idem(&cid), keys::conv_idem_at(&cid)] {
            let ttl: i64 = f.redis.q(&["PTTL", &k]).await;
            assert!(ttl > 60_000, "{k}: {ttl}");
        }
        // The client's retry (a new command): send.lua declines, apply.lua answers the first
        // result and writes nothing.
        let retry = keyed(cid, mid, "hi", "fp1");
        assert!(f.fast_keyed(&c, &f.e(3, 0), &retry).await.is_none());
        let again = f.apply(&c, &f.e(3, 0), None, &retry).await;
        assert_eq!(again.outcome, Outcome::Duplicate);
        assert_eq!(again.failed, None);
        assert_eq!(f.messages(cid).await, 1);
        // Even once the message is deleted, a retry does not bring it back.
        assert_eq!(
            f.apply(&c, &f.e(4, 0), None, &delete(cid, mid))
                .await
                .outcome,
            Outcome::Applied
        );
        let late = f
            .apply(&c, &f.e(5, 0), None, &keyed(cid, mid, "hi", "fp1"))
            .await;
        assert_eq!(late.outcome, Outcome::Duplicate);
        assert_eq!(f.messages(cid).await, 0);
        // The same key for another message: refused, and a redelivery answers the same.
        let other = keyed(cid, mid, "something else", "fp2");
        let reused = f.apply(&c, &f.e(6, 0), None, &other).await;
        assert_eq!(reused.outcome, Outcome::KeyReused);
        let redelivered = f.apply(&c, &f.e(6, 0), None, &other).await;
        assert_eq!(redelivered.outcome, Outcome::Duplicate);
        assert_eq!(redelivered.failed, Some(Outcome::KeyReused));
        assert_eq!(f.messages(cid).await, 0);
        assert_eq!(f.meta(cid, "cm").await, Some((f.base + 6).to_string()));
    }

    #[tokio::test]
    async fn records_are_trimmed_by_count_and_by_age() {
        let f = fixture(Mode::Standalone).await;
        let mut c = ctx("p0-1", 1, 100, false);
        c.idem_max = 3;
        c.idem_window_ms = 10_000;
        let cid = Uuid::new_v4();
        f.apply(&c, &f.e(1, 0), None, &create(cid)).await;
        let ids: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
        for (i, mid) in ids.iter().enumerate() {
            let env = keyed(cid, *mid, "m", "fp");
            let entry = f.e(2 + i as u64, 0);
            // Both scripts keep the cap: the hot path for even ones, apply.lua for odd ones.
            if i % 2 == 0 {
                assert!(f.fast_keyed(&c, &entry, &env).await.is_some());
            } else {
                let r = f.apply(&c, &entry, None, &env).await;
                assert_eq!(r.outcome, Outcome::Applied);
            }
        }
        assert_eq!(f.records(cid).await, (3, 3));
        let kept: Vec<String> = f
            .redis
            .q(&["ZRANGE", &keys::conv_idem_at(&cid), "0", "-1"])
            .await;
        let newest: Vec<String> = ids[2..].iter().map(Uuid::to_string).collect();
        assert_eq!(kept, newest, "the oldest go first");
        // Past the window, the next keyed write drops the records older than it.
        let env = keyed(cid, Uuid::new_v4(), "later", "fp");
        assert_eq!(
            f.apply(&c, &f.e(20_000, 0), None, &env).await.outcome,
            Outcome::Applied
        );
        assert_eq!(f.records(cid).await, (1, 1));
        // A record past the window no longer answers (its message still exists, so the id
        // check still calls a resubmission a duplicate).
        let mut short = ctx("p0-1", 1, 100, false);
        short.idem_window_ms = 1;
        let stale = f
            .apply(
                &short,
                &f.e(20_010, 0),
                None,
                &keyed(cid, ids[4], "other", "fp9"),
            )
            .await;
        assert_eq!(stale.outcome, Outcome::Duplicate);
        assert_eq!(stale.failed, None);
    }

    #[tokio::test]
    async fn a_keyed_creation_retried_is_the_first_result_and_reused_is_refused() {
        let f = fixture(Mode::Standalone).await;
        let c = ctx("p0-1", 1, 100, false);
        let cid = Uuid::new_v4();
        let with_fp = |fp: &str| {
            let mut env = create(cid);
            if let Command::CreateConversation { fingerprint, .. } = &mut env.command {
                *fingerprint = Some(fp.into());
            }
            env
        };
        assert_eq!(
            f.apply(&c, &f.e(1, 0), None, &with_fp("c1")).await.outcome,
            Outcome::Applied
        );
        assert_eq!(
            f.apply(&c, &f.e(2, 0), None, &with_fp("c1")).await.outcome,
            Outcome::Duplicate
        );
        assert_eq!(
            f.apply(&c, &f.e(3, 0), None, &with_fp("c2")).await.outcome,
            Outcome::KeyReused
        );
        // Without a key, an existing id is still a conflict.
        assert_eq!(
            f.apply(&c, &f.e(4, 0), None, &create(cid)).await.outcome,
            Outcome::Exists
        );
        assert_eq!(f.meta(cid, "ik").await.as_deref(), Some("c1"));
    }
}
