//! Users and sessions.
//!
//! - Passwords are stored only as argon2id PHC strings, hashed on dedicated threads: one pool
//!   for sign-ins and a smaller one for sign-ups, each with a bounded queue (503 `overloaded`
//!   when full), so a flood of sign-ups never delays a sign-in's hash.
//! - A session token is 32 random bytes, base64url; Redis keeps only its SHA-256
//!   (`confab:session:<hash>` → username, with `SESSION_TTL_SECS` expiry), so any gateway
//!   replica validates it and a leaked Redis dump reveals no usable token.
//! - Sign-out deletes the session and publishes `session_revoked` on the user's channel:
//!   every gateway closes that token's WebSockets at once.
//! - Sign-in throttling follows OWASP's guidance: failures are counted per (client address,
//!   username) — `LOGIN_MAX_FAILURES` — and per client address — `LOGIN_MAX_FAILURES_PER_ADDR`
//!   — within `LOGIN_WINDOW_SECS`; never per username alone, so nobody can lock an account
//!   for everyone else. Successful sign-ins are not counted (and clear their pair's count).
//!   A username that cannot exist is refused before Redis is touched, keys hold only hashes
//!   ([`crate::addr_limit`]), and an attempt that is already limited is answered 429 without
//!   being counted. Each address has at most a few sign-ins in flight per gateway, which
//!   bounds how far parallel guesses can overshoot the limit.
//! - Sign-up is limited per client address (`SIGNUPS_PER_MIN_PER_ADDR`).

use std::net::IpAddr;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine;
use confab_shared::db::Conn;
use confab_shared::domain;
use confab_shared::events::Event;
use confab_shared::keys;
use sha2::{Digest, Sha256};
use warp::http::StatusCode;

use crate::addr_limit::{self, Gate};
use crate::rest::errors::ApiError;

/// A signed-in caller.
#[derive(Clone, Debug)]
pub struct Session {
    pub username: String,
    pub token_hash: String,
}

pub fn hash_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

type Job = Box<dyn FnOnce() + Send>;

/// Why a hash did not run.
#[derive(Debug, PartialEq, Eq)]
enum HashError {
    /// The pool's queue is full: answer 503 rather than pile up.
    Busy,
    /// The threads are gone or the job panicked.
    Failed(&'static str),
}

impl HashError {
    fn into_api(self, what: &str) -> ApiError {
        match self {
            HashError::Busy => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                format!("Too many {what} at once; try again shortly"),
            ),
            HashError::Failed(e) => ApiError::internal("hashing task failed", e),
        }
    }
}

/// A fixed set of threads for password hashing. glibc keeps an arena per thread that ever
/// allocated: hashing on tokio's growing blocking pool left ~20 MiB behind in each of dozens of
/// threads (gateways at 500–900 MB after a sign-in burst); a few long-lived threads reuse theirs.
#[derive(Clone)]
struct Hasher {
    jobs: std::sync::mpsc::SyncSender<Job>,
}

impl Hasher {
    fn start(name: &str, threads: usize, queue: usize) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(queue);
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(guard) => guard.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a hashing thread");
            }
        }
        Self { jobs: tx }
    }

    /// Runs `f` on a hashing thread and awaits its result; `Busy` when the queue is full.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs.try_send(job).map_err(|e| match e {
            std::sync::mpsc::TrySendError::Full(_) => HashError::Busy,
            std::sync::mpsc::TrySendError::Disconnected(_) => {
                HashError::Failed("hashing threads stopped")
            }
        })?;
        rx.await
            .map_err(|_| HashError::Failed("hashing thread dropped the job"))
    }
}

fn new_salt() -> Result<SaltString, argon2::password_hash::Error> {
    SaltString::encode_b64(&rand::random::<[u8; 16]>())
}

fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn invalid_credentials() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
        "Wrong username or password",
    )
}

/// The answer to a request whose credentials do not verify.
pub fn invalid_token() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_token",
        "The session token is invalid or expired",
    )
}

/// Whether a counter read from Redis has reached `limit` (0: no limit).
fn reached(count: Option<u64>, limit: u64) -> bool {
    limit > 0 && count.unwrap_or(0) >= limit
}

/// Queued sign-in hashes per gateway before 503 (each waits for a thread).
const SIGN_IN_QUEUE: usize = 1024;
/// Queued sign-up hashes per gateway before 503.
const SIGN_UP_QUEUE: usize = 64;

#[derive(Clone)]
pub struct Auth {
    conn: Conn,
    /// argon2id needs ~19 MiB per hash: hashes run on a few dedicated threads, so a burst of
    /// sign-ins neither balloons the gateway's memory nor starves its async workers. Sign-ups
    /// have their own, smaller pool: they never delay a sign-in.
    sign_in_hashing: Hasher,
    sign_up_hashing: Hasher,
    /// Sign-ins (sign-ups) in flight per client address in this gateway.
    sign_in_gate: Gate,
    sign_up_gate: Gate,
    session_ttl_secs: u64,
    max_failures: u64,
    max_failures_per_addr: u64,
    window_secs: u64,
    signups_per_min: u64,
}

impl Auth {
    pub fn new(conn: Conn, cfg: &confab_shared::Config) -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let sign_up_threads = (cores / 2).max(1);
        Self {
            conn,
            sign_in_hashing: Hasher::start("argon2-in", cores, SIGN_IN_QUEUE),
            sign_up_hashing: Hasher::start("argon2-up", sign_up_threads, SIGN_UP_QUEUE),
            sign_in_gate: Gate::new(cores),
            sign_up_gate: Gate::new(sign_up_threads),
            session_ttl_secs: cfg.session_ttl_secs,
            max_failures: cfg.login_max_failures,
            max_failures_per_addr: cfg.login_max_failures_per_addr,
            window_secs: cfg.login_window_secs,
            signups_per_min: cfg.signups_per_min_per_addr,
        }
    }

    /// Registers a user. 409 when the name is taken or reserved; 429 past
    /// `SIGNUPS_PER_MIN_PER_ADDR` from the client's address.
    pub async fn register(
        &self,
        username: &str,
        password: &str,
        client: Option<IpAddr>,
    ) -> Result<String, ApiError> {
        let name = domain::normalize_username(username)?;
        domain::validate_password(password)?;
        let taken = || {
            ApiError::new(
                StatusCode::CONFLICT,
                "username_taken",
                format!("The username {name:?} is taken"),
            )
        };
        if domain::is_reserved_username(&name) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "username_taken",
                format!("The username {name:?} is reserved"),
            ));
        }
        let _pass = self.sign_up_gate.enter(client).await;
        let rate_key = keys::signup_rate(&addr_limit::addr_subject(client));
        if !addr_limit::hit(&self.conn, &rate_key, 60, self.signups_per_min)
            .await
            .map_err(|e| ApiError::internal("counting sign-ups", e))?
        {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many sign-ups from this address; try again in a minute",
            ));
        }
        let mut conn = self.conn.clone();
        // A taken name is answered without spending a hash on it (HSETNX below settles races).
        let exists: bool = redis::cmd("EXISTS")
            .arg(keys::user(&name))
            .query_async(&mut conn)
            .await
            .map_err(|e| ApiError::internal("reading a user", e))?;
        if exists {
            return Err(taken());
        }
        let pw = password.to_owned();
        let hash = self
            .sign_up_hashing
            .run(move || {
                let salt = new_salt()?;
                Argon2::default()
                    .hash_password(pw.as_bytes(), &salt)
                    .map(|h| h.to_string())
            })
            .await
            .map_err(|e| e.into_api("sign-ups"))?
            .map_err(|e| ApiError::internal("hashing a password", e))?;
        let created: bool = redis::cmd("HSETNX")
            .arg(keys::user(&name))
            .arg("password")
            .arg(&hash)
            .query_async(&mut conn)
            .await
            .map_err(|e| ApiError::internal("storing a user", e))?;
        if !created {
            return Err(taken());
        }
        let mut created = redis::cmd("HSET");
        created
            .arg(keys::user(&name))
            .arg("created")
            .arg(domain::now_rfc3339());
        let mut listed = redis::cmd("ZADD");
        listed.arg(keys::USERNAMES).arg(0).arg(&name);
        if let Err(e) = conn.query_many(vec![created, listed]).await {
            tracing::warn!(error = %e, "recording a new user failed");
        }
        Ok(name)
    }

    /// Checks credentials and opens a session: `(token, username, expiresAt)`.
    pub async fn sign_in(
        &self,
        username: &str,
        password: &str,
        client: Option<IpAddr>,
    ) -> Result<(String, String, String), ApiError> {
        // No account can have such a name or password: refuse before touching Redis.
        let Ok(name) = domain::normalize_username(username) else {
            return Err(invalid_credentials());
        };
        if password.len() > domain::MAX_PASSWORD_BYTES {
            return Err(invalid_credentials());
        }
        // A few sign-ins per address at once: parallel guesses overshoot the limit by at most
        // that many, and one address cannot take every hashing thread.
        let _pass = self.sign_in_gate.enter(client).await;
        let pair_key =
            keys::login_failures(&format!("p:{}", addr_limit::pair_subject(client, &name)));
        let addr_key = keys::login_failures(&format!("a:{}", addr_limit::addr_subject(client)));
        let mut conn = self.conn.clone();
        let mut pair_count = redis::cmd("GET");
        pair_count.arg(&pair_key);
        let mut addr_count = redis::cmd("GET");
        addr_count.arg(&addr_key);
        let mut stored = redis::cmd("HGET");
        stored.arg(keys::user(&name)).arg("password");
        let mut results = conn
            .query_many(vec![pair_count, addr_count, stored])
            .await
            .map_err(|e| ApiError::internal("reading sign-in state", e))?
            .into_iter()
            .map(|r| r.map_err(|e| ApiError::internal("reading sign-in state", e)));
        let mut next = || results.next().unwrap_or(Ok(redis::Value::Nil));
        let pair_failures: Option<u64> = redis::from_redis_value(next()?)
            .map_err(|e| ApiError::internal("reading sign-in state", e))?;
        let addr_failures: Option<u64> = redis::from_redis_value(next()?)
            .map_err(|e| ApiError::internal("reading sign-in state", e))?;
        let stored: Option<String> = redis::from_redis_value(next()?)
            .map_err(|e| ApiError::internal("reading a user", e))?;
        if reached(pair_failures, self.max_failures)
            || reached(addr_failures, self.max_failures_per_addr)
        {
            // Already limited: not counted again, and no hash spent.
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many failed sign-ins; try again later",
            ));
        }
        let pw = password.to_owned();
        let ok = self
            .sign_in_hashing
            .run(move || match stored {
                Some(hash) => PasswordHash::new(&hash)
                    .is_ok_and(|h| Argon2::default().verify_password(pw.as_bytes(), &h).is_ok()),
                None => {
                    // Same work for unknown users, so timing does not reveal which names exist.
                    if let Ok(salt) = new_salt() {
                        let _ = Argon2::default().hash_password(pw.as_bytes(), &salt);
                    }
                    false
                }
            })
            .await
            .map_err(|e| e.into_api("sign-ins"))?;
        if !ok {
            self.count_failure(&pair_key, self.max_failures).await;
            self.count_failure(&addr_key, self.max_failures_per_addr)
                .await;
            return Err(invalid_credentials());
        }
        let token = new_token();
        let expires = chrono::Utc::now()
            + chrono::Duration::seconds(
                i64::try_from(self.session_ttl_secs).unwrap_or(i64::MAX / 2),
            );
        let mut store = redis::cmd("SET");
        store
            .arg(keys::session(&hash_token(&token)))
            .arg(&name)
            .arg("EX")
            .arg(self.session_ttl_secs);
        // A success clears its own pair's failures (never the address's).
        let mut forgive = redis::cmd("DEL");
        forgive.arg(&pair_key);
        let results = conn
            .query_many(vec![store, forgive])
            .await
            .map_err(|e| ApiError::internal("storing a session", e))?;
        if let Some(Err(e)) = results.into_iter().next() {
            return Err(ApiError::internal("storing a session", e));
        }
        Ok((
            token,
            name,
            expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ))
    }

    /// Counts a failed sign-in in `key`'s window (a failure to count is logged, not fatal).
    async fn count_failure(&self, key: &str, limit: u64) {
        if let Err(e) = addr_limit::hit(&self.conn, key, self.window_secs, limit).await {
            tracing::warn!(error = %e, "counting a failed sign-in");
        }
    }

    /// The session behind a bearer token, if it is valid.
    pub async fn session(&self, token: &str) -> Result<Option<Session>, ApiError> {
        if token.is_empty() || token.len() > 256 {
            return Ok(None);
        }
        let token_hash = hash_token(token);
        let mut conn = self.conn.clone();
        let user: Option<String> = redis::cmd("GET")
            .arg(keys::session(&token_hash))
            .query_async(&mut conn)
            .await
            .map_err(|e| ApiError::internal("reading a session", e))?;
        Ok(user.map(|username| Session {
            username,
            token_hash,
        }))
    }

    /// Whether a session still exists (long-lived WebSockets re-check).
    pub async fn still_valid(&self, token_hash: &str) -> bool {
        let mut conn = self.conn.clone();
        redis::cmd("EXISTS")
            .arg(keys::session(token_hash))
            .query_async::<bool>(&mut conn)
            .await
            .unwrap_or(true)
    }

    pub async fn sign_out(&self, session: &Session) -> Result<(), ApiError> {
        let mut conn = self.conn.clone();
        let notice = Event::SessionRevoked {
            token_hash: session.token_hash.clone(),
        }
        .to_json();
        let mut delete = redis::cmd("DEL");
        delete.arg(keys::session(&session.token_hash));
        let publish = conn.publish(&keys::user_channel(&session.username), notice);
        let results = conn
            .query_many(vec![delete, publish])
            .await
            .map_err(|e| ApiError::internal("deleting a session", e))?;
        match results.into_iter().find_map(Result::err) {
            Some(e) => Err(ApiError::internal("deleting a session", e)),
            None => Ok(()),
        }
    }

    /// Up to 10 usernames starting with `prefix`.
    pub async fn search(&self, prefix: &str) -> Result<Vec<String>, ApiError> {
        let p = prefix.trim().to_ascii_lowercase();
        if p.is_empty() || p.len() > 32 || p.contains(['[', '(', '\\']) {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        redis::cmd("ZRANGE")
            .arg(keys::USERNAMES)
            .arg(format!("[{p}"))
            .arg(format!("[{p}\u{ff}"))
            .arg("BYLEX")
            .arg("LIMIT")
            .arg(0)
            .arg(10)
            .query_async(&mut conn)
            .await
            .map_err(|e| ApiError::internal("searching users", e))
    }

    /// Which of `names` are not registered.
    pub async fn unknown_users(&self, names: &[String]) -> Result<Vec<String>, ApiError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let checks = names
            .iter()
            .map(|n| {
                let mut c = redis::cmd("EXISTS");
                c.arg(keys::user(n));
                c
            })
            .collect();
        let mut conn = self.conn.clone();
        let exists: Vec<bool> = conn
            .query_many(checks)
            .await
            .and_then(|rs| {
                rs.into_iter()
                    .map(|r| r.and_then(|v| Ok(redis::from_redis_value::<bool>(v)?)))
                    .collect()
            })
            .map_err(|e| ApiError::internal("checking users", e))?;
        Ok(names
            .iter()
            .zip(exists)
            .filter(|(_, e)| !e)
            .map(|(n, _)| n.clone())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sign_in_hashes_do_not_wait_behind_sign_ups() {
        let sign_in = Hasher::start("test-in", 1, 8);
        let sign_up = Hasher::start("test-up", 1, 2);
        // The sign-up thread is busy until released, with its queue full behind it.
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let busy = tokio::spawn({
            let sign_up = sign_up.clone();
            async move { sign_up.run(move || release_rx.recv().is_ok()).await }
        });
        let mut queued = Vec::new();
        // Fill the queue: the first job may or may not have been taken by the thread yet.
        loop {
            let up = sign_up.clone();
            let (tx, rx) = tokio::sync::oneshot::channel();
            let job = tokio::spawn(async move {
                let r = up.run(|| ()).await;
                let _ = tx.send(());
                r
            });
            tokio::task::yield_now().await;
            if job.is_finished() {
                // Refused at once: the queue is full.
                let r = job.await.unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(r, Err(HashError::Busy));
                break;
            }
            queued.push((job, rx));
            assert!(queued.len() <= 3, "the sign-up queue is not bounded");
        }
        // A sign-in still runs at once on its own threads.
        assert_eq!(sign_in.run(|| 42).await, Ok(42));
        assert!(!busy.is_finished());
        let _ = release_tx.send(());
        assert_eq!(busy.await.unwrap_or_else(|e| panic!("{e}")), Ok(true));
        for (job, _) in queued {
            assert_eq!(job.await.unwrap_or_else(|e| panic!("{e}")), Ok(()));
        }
    }

    #[test]
    fn a_limit_of_zero_is_off() {
        assert!(!reached(Some(1000), 0));
        assert!(!reached(None, 3));
        assert!(!reached(Some(2), 3));
        assert!(reached(Some(3), 3));
    }
}
