//! Users and sessions.
//!
//! - Passwords are stored only as argon2id PHC strings (hashed on the blocking pool).
//! - A session token is 32 random bytes, base64url; Redis keeps only its SHA-256
//!   (`confab:session:<hash>` → username, with `SESSION_TTL_SECS` expiry), so any gateway
//!   replica validates it and a leaked Redis dump reveals no usable token.
//! - Sign-out deletes the session and publishes `session_revoked` on the user's channel:
//!   every gateway closes that token's WebSockets at once.
//! - Failed sign-ins are counted per username and per client address; past
//!   `LOGIN_MAX_FAILURES` within `LOGIN_WINDOW_SECS` sign-in answers 429.

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

/// A fixed set of threads for password hashing. glibc keeps an arena per thread that ever
/// allocated: hashing on tokio's growing blocking pool left ~20 MiB behind in each of dozens of
/// threads (gateways at 500–900 MB after a sign-in burst); a few long-lived threads reuse theirs.
#[derive(Clone)]
struct Hasher {
    jobs: std::sync::mpsc::SyncSender<Job>,
}

impl Hasher {
    fn start(threads: usize) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(1024);
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{i}"))
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

    /// Runs `f` on a hashing thread and awaits its result.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, &'static str> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        let jobs = self.jobs.clone();
        // `send` blocks only when 1024 hashes are queued: do that wait off the async threads.
        tokio::task::spawn_blocking(move || jobs.send(job))
            .await
            .map_err(|_| "hashing queue failed")?
            .map_err(|_| "hashing threads stopped")?;
        rx.await.map_err(|_| "hashing thread dropped the job")
    }
}

fn new_salt() -> Result<SaltString, argon2::password_hash::Error> {
    SaltString::encode_b64(&rand::random::<[u8; 16]>())
}

fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[derive(Clone)]
pub struct Auth {
    conn: Conn,
    /// argon2id needs ~19 MiB per hash: hashes run on a few dedicated threads, so a burst of
    /// sign-ins neither balloons the gateway's memory nor starves its async workers.
    hashing: Hasher,
    session_ttl_secs: u64,
    max_failures: u64,
    window_secs: u64,
}

impl Auth {
    pub fn new(conn: Conn, cfg: &confab_shared::Config) -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        Self {
            conn,
            hashing: Hasher::start(cores),
            session_ttl_secs: cfg.session_ttl_secs,
            max_failures: cfg.login_max_failures,
            window_secs: cfg.login_window_secs,
        }
    }

    /// Registers a user. 409 when the name is taken or reserved.
    pub async fn register(&self, username: &str, password: &str) -> Result<String, ApiError> {
        let name = domain::normalize_username(username)?;
        domain::validate_password(password)?;
        if domain::is_reserved_username(&name) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "username_taken",
                format!("The username {name:?} is reserved"),
            ));
        }
        let pw = password.to_owned();
        let hash = self
            .hashing
            .run(move || {
                let salt = new_salt()?;
                Argon2::default()
                    .hash_password(pw.as_bytes(), &salt)
                    .map(|h| h.to_string())
            })
            .await
            .map_err(|e| ApiError::internal("hashing task failed", e))?
            .map_err(|e| ApiError::internal("hashing a password", e))?;
        let mut conn = self.conn.clone();
        let created: bool = redis::cmd("HSETNX")
            .arg(keys::user(&name))
            .arg("password")
            .arg(&hash)
            .query_async(&mut conn)
            .await
            .map_err(|e| ApiError::internal("storing a user", e))?;
        if !created {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "username_taken",
                format!("The username {name:?} is taken"),
            ));
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
        let name = domain::normalize_username(username)
            .unwrap_or_else(|_| username.trim().to_ascii_lowercase());
        let subjects = [
            format!("user:{name}"),
            format!("ip:{}", client.map(|c| c.to_string()).unwrap_or_default()),
        ];
        let mut conn = self.conn.clone();
        // Count the attempt before checking the password: parallel guesses cannot all slip
        // past the limit before any failure is recorded. A success takes it back. One
        // pipeline per counter (each its own slot on a cluster).
        let counting = subjects.iter().map(|subject| {
            let mut c = conn.clone();
            let key = keys::login_failures(subject);
            async move {
                let (n,): (u64,) = redis::pipe()
                    .cmd("INCR")
                    .arg(&key)
                    .cmd("EXPIRE")
                    .arg(&key)
                    .arg(self.window_secs)
                    .arg("NX")
                    .ignore()
                    .query_async(&mut c)
                    .await?;
                Ok::<u64, redis::RedisError>(n)
            }
        });
        let counts: Vec<u64> = futures::future::try_join_all(counting)
            .await
            .map_err(|e| ApiError::internal("counting sign-in attempts", e))?;
        if counts.iter().any(|&n| n > self.max_failures) {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many failed sign-ins; try again later",
            ));
        }
        let stored: Option<String> = redis::cmd("HGET")
            .arg(keys::user(&name))
            .arg("password")
            .query_async(&mut conn)
            .await
            .map_err(|e| ApiError::internal("reading a user", e))?;
        let pw = password.to_owned();
        let ok = self
            .hashing
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
            .unwrap_or(false);
        if !ok {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_credentials",
                "Wrong username or password",
            ));
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
        let mut forgive_user = redis::cmd("DEL");
        forgive_user.arg(keys::login_failures(&subjects[0]));
        let mut forgive_addr = redis::cmd("DECR");
        forgive_addr.arg(keys::login_failures(&subjects[1]));
        let results = conn
            .query_many(vec![store, forgive_user, forgive_addr])
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
