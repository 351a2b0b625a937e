//! Small TCP helpers: "is something listening here?" and "wait until it is".

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::{sleep, timeout, Instant};

/// How often [`wait_accepting`] retries.
const POLL: Duration = Duration::from_millis(100);

/// The address to connect to for a listen address: `0.0.0.0`/`::` become loopback.
pub fn connectable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

/// Whether a TCP connection to `addr` succeeds within `limit`.
pub async fn accepts(addr: SocketAddr, limit: Duration) -> bool {
    matches!(
        timeout(limit, TcpStream::connect(connectable(addr))).await,
        Ok(Ok(_))
    )
}

/// Polls until `addr` accepts connections; `false` after `limit`.
pub async fn wait_accepting(addr: SocketAddr, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if accepts(addr, Duration::from_millis(500)).await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(POLL).await;
    }
}

/// A loopback port that was free a moment ago (tests and tools).
pub fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_becomes_loopback() {
        let any: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 3000));
        assert_eq!(connectable(any), SocketAddr::from(([127, 0, 0, 1], 3000)));
        let v6: SocketAddr = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 80);
        assert_eq!(connectable(v6).ip(), IpAddr::V6(Ipv6Addr::LOCALHOST));
        let other = SocketAddr::from(([10, 1, 2, 3], 9));
        assert_eq!(connectable(other), other);
    }

    #[tokio::test]
    async fn accepts_sees_a_listener() -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        assert!(accepts(addr, Duration::from_secs(1)).await);
        drop(listener);
        assert!(!accepts(addr, Duration::from_secs(1)).await);
        Ok(())
    }
}
