//! Open TCP connections per client address (`MAX_CONNECTIONS_PER_ADDR`, 0 = off).
//!
//! A [`ConnLimit`] hands out one [`ConnPermit`] per accepted connection; the permit gives its
//! slot back when the connection ends, however it ends. Addresses are counted by network
//! ([`crate::addr_limit::network`]: IPv6 by its /64), and an address's entry is removed when
//! its last connection closes, so the map never holds more entries than open connections.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

#[derive(Clone, Debug, Default)]
pub struct ConnLimit {
    max: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One counted connection; dropping it frees the slot.
#[derive(Debug)]
pub struct ConnPermit {
    net: IpAddr,
    open: Option<Arc<Mutex<HashMap<IpAddr, usize>>>>,
}

impl ConnLimit {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            open: Arc::default(),
        }
    }

    /// A permit for one more connection from `ip`, or `None` when it already has `max` open.
    pub fn acquire(&self, ip: IpAddr) -> Option<ConnPermit> {
        let net = crate::addr_limit::network(ip);
        if self.max == 0 {
            return Some(ConnPermit { net, open: None });
        }
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(net).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ConnPermit {
            net,
            open: Some(self.open.clone()),
        })
    }

    /// Connections open from `ip`'s network (for tests and diagnostics).
    pub fn open_from(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&crate::addr_limit::network(ip))
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let Some(open) = self.open.take() else { return };
        let mut open = open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.net) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.net);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn caps_each_address_and_frees_slots_on_drop() {
        let limit = ConnLimit::new(2);
        let a = limit.acquire(ip("127.0.0.1"));
        let b = limit.acquire(ip("127.0.0.1"));
        assert!(a.is_some() && b.is_some());
        assert!(limit.acquire(ip("127.0.0.1")).is_none());
        // Another address is not affected.
        assert!(limit.acquire(ip("127.0.0.2")).is_some());
        drop(a);
        assert_eq!(limit.open_from(ip("127.0.0.1")), 1);
        assert!(limit.acquire(ip("127.0.0.1")).is_some());
    }

    #[test]
    fn entries_go_away_with_their_last_connection() {
        let limit = ConnLimit::new(1);
        let p = limit.acquire(ip("::1"));
        drop(p);
        assert!(limit.open.lock().map(|m| m.is_empty()).unwrap_or(false));
    }

    #[test]
    fn ipv6_counts_by_its_64() {
        let limit = ConnLimit::new(1);
        let _p = limit.acquire(ip("2001:db8::1"));
        assert!(limit.acquire(ip("2001:db8::2")).is_none());
        assert!(limit.acquire(ip("2001:db8:0:1::1")).is_some());
    }

    #[test]
    fn zero_is_off() {
        let limit = ConnLimit::new(0);
        let permits: Vec<_> = (0..1000).map(|_| limit.acquire(ip("10.0.0.1"))).collect();
        assert!(permits.iter().all(Option::is_some));
    }
}
