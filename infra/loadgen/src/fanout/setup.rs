//! Fan-out setup: users (created once, reused by name), sessions, member chats.

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use futures::{stream, StreamExt, TryStreamExt};

use crate::api;
use crate::args::Args;
use crate::http::{HttpConn, Target};

/// Argon2 hashing is slow and runs on the gateway's blocking pool: a few at a time per gateway.
const HASHES_PER_GATEWAY: usize = 4;
const CHATS_IN_FLIGHT: usize = 16;
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub fn username(prefix: &str, i: usize) -> String {
    format!("{prefix}u{i:05}")
}

/// Chat `r` of a run with `connections` connections, `members` per chat and `users` users:
/// the user index of each member (distinct while `members <= users`).
pub fn chat_members(r: usize, connections: usize, members: usize, users: usize) -> Vec<usize> {
    let first = r * members;
    let n = members.min(connections.saturating_sub(first));
    (0..n).map(|i| (first + i) % users).collect()
}

/// The number of chats: every connection belongs to one chat of up to `members`.
pub fn chat_count(connections: usize, members: usize) -> usize {
    connections.div_ceil(members.max(1))
}

pub struct Users {
    pub names: Vec<String>,
    pub tokens: Vec<String>,
    pub created: usize,
}

/// Creates (or reuses) the load users and signs each in once.
pub async fn users(args: &Args, targets: &[Target]) -> Result<Users> {
    let names: Vec<String> = (0..args.users)
        .map(|i| username(&args.user_prefix, i))
        .collect();
    let in_flight = HASHES_PER_GATEWAY * targets.len();
    let created: Vec<bool> = stream::iter(names.iter().enumerate())
        .map(|(i, name)| async move {
            let mut conn = HttpConn::new(targets[i % targets.len()].clone(), CALL_TIMEOUT)?;
            api::create_user(&mut conn, name, &args.password).await
        })
        .buffer_unordered(in_flight)
        .try_collect()
        .await?;
    let mut tokens: Vec<(usize, String)> = stream::iter(names.iter().enumerate())
        .map(|(i, name)| async move {
            let mut conn = HttpConn::new(targets[i % targets.len()].clone(), CALL_TIMEOUT)?;
            let token = api::sign_in(&mut conn, name, &args.password)
                .await
                .context(
                    "(a user from an earlier run with another --password? try --user-prefix)",
                )?;
            Ok::<_, anyhow::Error>((i, token))
        })
        .buffer_unordered(in_flight)
        .try_collect()
        .await?;
    tokens.sort_by_key(|(i, _)| *i);
    Ok(Users {
        created: created.iter().filter(|c| **c).count(),
        tokens: tokens.into_iter().map(|(_, t)| t).collect(),
        names,
    })
}

/// Creates the member chats; returns their conversation ids, in chat order.
pub async fn chats(args: &Args, targets: &[Target], users: &Users) -> Result<Vec<String>> {
    let count = chat_count(args.connections, args.members);
    let mut ids: Vec<(usize, String)> = stream::iter(0..count)
        .map(|r| async move {
            let members = chat_members(r, args.connections, args.members, args.users);
            let creator = *members
                .first()
                .ok_or_else(|| anyhow!("chat {r} has no members"))?;
            let others: Vec<String> = members[1..]
                .iter()
                .map(|&u| users.names[u].clone())
                .collect();
            let mut conn = HttpConn::new(targets[r % targets.len()].clone(), CALL_TIMEOUT)?;
            let id = api::create_chat(
                &mut conn,
                &users.tokens[creator],
                &format!("loadgen chat {r}"),
                &others,
            )
            .await?;
            Ok::<_, anyhow::Error>((r, id))
        })
        .buffer_unordered(CHATS_IN_FLIGHT)
        .try_collect()
        .await?;
    ids.sort_by_key(|(r, _)| *r);
    Ok(ids.into_iter().map(|(_, id)| id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chats_cover_every_connection_with_distinct_members() {
        let (c, m, u) = (2005, 10, 200);
        assert_eq!(chat_count(c, m), 201);
        let mut total = 0;
        for r in 0..chat_count(c, m) {
            let mut mem = chat_members(r, c, m, u);
            total += mem.len();
            mem.sort_unstable();
            mem.dedup();
            assert_eq!(
                mem.len(),
                chat_members(r, c, m, u).len(),
                "chat {r} repeats a user"
            );
            assert!(mem.iter().all(|&x| x < u));
        }
        assert_eq!(total, c);
        assert_eq!(chat_members(200, c, m, u).len(), 5);
        assert_eq!(username("lg", 7), "lgu00007");
    }
}
