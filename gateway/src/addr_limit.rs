//! Limits per client address: bounded Redis keys for them, a fixed-window counter in Redis
//! (shared by every gateway), and a per-address gate for work done in this process.
//!
//! - An address is counted by its *network*: an IPv4 address as itself, an IPv6 address by its
//!   /64 (one host usually holds a whole /64), an IPv4-mapped IPv6 address as the IPv4 one.
//! - Keys never hold client data verbatim: the subject (address, or address and username) is
//!   hashed (SHA-256, first 128 bits in hex), so a key is at most ~60 bytes whatever the client
//!   sends, and a Redis dump does not list who signed in from where.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use confab_shared::db::Conn;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The part of `ip` that identifies a client: IPv4 as is, IPv6 by its /64.
pub fn network(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

/// 32 hex digits (128 bits of SHA-256) of `parts`, each length-prefixed so that no two
/// different part lists hash the same input.
pub fn digest(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The hashed subject of a client address (`None`: the address is unknown, counted as one).
pub fn addr_subject(ip: Option<IpAddr>) -> String {
    let net = ip.map(network).map(|n| n.to_string()).unwrap_or_default();
    digest(&[b"addr", net.as_bytes()])
}

/// The hashed subject of a (client address, username) pair.
pub fn pair_subject(ip: Option<IpAddr>, username: &str) -> String {
    let net = ip.map(network).map(|n| n.to_string()).unwrap_or_default();
    digest(&[b"pair", net.as_bytes(), username.as_bytes()])
}

/// Counts one event in the fixed window `key` (created with a TTL of `window_secs`) and says
/// whether it is within `limit`. `limit == 0` means no limit: nothing is counted.
pub async fn hit(
    conn: &Conn,
    key: &str,
    window_secs: u64,
    limit: u64,
) -> Result<bool, redis::RedisError> {
    if limit == 0 {
        return Ok(true);
    }
    let mut c = conn.clone();
    let (n,): (u64,) = redis::pipe()
        .cmd("INCR")
        .arg(key)
        .cmd("EXPIRE")
        .arg(key)
        .arg(window_secs)
        .arg("NX")
        .ignore()
        .query_async(&mut c)
        .await?;
    Ok(n <= limit)
}

/// At most `permits` holders per address at once, in this process. Waiters queue (they are
/// not refused), and an address's entry is dropped with its last holder, so the map holds only
/// addresses with work in flight.
#[derive(Clone)]
pub struct Gate {
    permits: usize,
    slots: Arc<Mutex<HashMap<IpAddr, Arc<Semaphore>>>>,
}

/// A held slot of a [`Gate`].
pub struct Pass {
    permit: Option<OwnedSemaphorePermit>,
    sem: Arc<Semaphore>,
    key: IpAddr,
    slots: Arc<Mutex<HashMap<IpAddr, Arc<Semaphore>>>>,
}

impl Gate {
    pub fn new(permits: usize) -> Self {
        Self {
            permits: permits.max(1),
            slots: Arc::default(),
        }
    }

    /// Waits for a slot of `ip`'s network.
    pub async fn enter(&self, ip: Option<IpAddr>) -> Pass {
        let key = ip.map(network).unwrap_or(IpAddr::V4([0, 0, 0, 0].into()));
        let sem = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots
                .entry(key)
                .or_insert_with(|| Arc::new(Semaphore::new(self.permits)))
                .clone()
        };
        // The semaphore is never closed, so acquiring cannot fail; treat it as a free pass.
        let permit = sem.clone().acquire_owned().await.ok();
        Pass {
            permit,
            sem,
            key,
            slots: self.slots.clone(),
        }
    }

    /// Addresses with a slot held or awaited (tests).
    pub fn tracked(&self) -> usize {
        self.slots.lock().map(|s| s.len()).unwrap_or_default()
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        self.permit.take();
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        // Clones are made only under this lock: the map's and ours are the last two.
        if Arc::strong_count(&self.sem) == 2 {
            slots.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::V4([0, 0, 0, 0].into()))
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(network(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            network(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")),
            ip("2001:db8:1:2::")
        );
        assert_ne!(network(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
        assert_eq!(network(ip("::ffff:10.0.0.7")), ip("10.0.0.7"));
        assert_eq!(network(ip("10.0.0.7")), ip("10.0.0.7"));
    }

    #[test]
    fn subjects_are_bounded_and_never_hold_the_input() {
        let huge = "a".repeat(95 * 1024);
        let s = pair_subject(Some(ip("10.0.0.7")), &huge);
        assert_eq!(s.len(), 32);
        assert!(s.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(addr_subject(Some(ip("10.0.0.7"))).len(), 32);
        // Stable, and distinct per address and per pair.
        assert_eq!(s, pair_subject(Some(ip("10.0.0.7")), &huge));
        assert_ne!(
            pair_subject(Some(ip("10.0.0.7")), "alice"),
            pair_subject(Some(ip("10.0.0.8")), "alice")
        );
        assert_ne!(
            pair_subject(Some(ip("10.0.0.7")), "alice"),
            pair_subject(Some(ip("10.0.0.7")), "alicf")
        );
        assert_ne!(
            addr_subject(Some(ip("10.0.0.7"))),
            pair_subject(Some(ip("10.0.0.7")), "")
        );
        // Length prefixes: no ambiguity between part boundaries.
        assert_ne!(digest(&[b"ab", b"c"]), digest(&[b"a", b"bc"]));
    }

    #[tokio::test]
    async fn a_gate_queues_beyond_its_permits_and_forgets_idle_addresses() {
        let gate = Gate::new(2);
        let a = Some(ip("10.0.0.1"));
        let p1 = gate.enter(a).await;
        let p2 = gate.enter(a).await;
        // A third holder for the same address waits…
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.enter(a).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        // …while another address is not held up.
        let other = gate.enter(Some(ip("10.0.0.2"))).await;
        assert_eq!(gate.tracked(), 2);
        drop(other);
        assert_eq!(gate.tracked(), 1);
        drop(p1);
        let p3 = waiting.await.unwrap_or_else(|e| panic!("{e}"));
        drop(p2);
        drop(p3);
        assert_eq!(gate.tracked(), 0);
    }
}
