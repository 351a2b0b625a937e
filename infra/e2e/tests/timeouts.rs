//! Slow and greedy clients against the gateway's connection handling (issue 10, item 1):
//! a socket that sends nothing, headers trickled a byte at a time, a body promised but never
//! finished, a chunked body with no end — each is closed once its read timeout passes — and
//! the per-address connection cap, under which `/healthz` keeps answering other clients.
//! Raw TCP, since an HTTP client library would not misbehave on purpose.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use confab_e2e::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// How long a test waits for the gateway to act before calling it a hang: far above the
/// timeouts configured below, so a busy machine does not fail the test.
const HANG: Duration = Duration::from_secs(30);

const SHORT: &[(&str, &str)] = &[
    ("HEADER_READ_TIMEOUT_MS", "500"),
    ("BODY_READ_TIMEOUT_MS", "500"),
];

async fn connect_from(gw: &Gateway, ip: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", gw.port()).parse().unwrap();
    socket.connect(addr).await.unwrap()
}

/// Everything the server sends until it closes the connection; panics on a hang.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    match tokio::time::timeout(HANG, stream.read_to_end(&mut out)).await {
        Ok(_) => String::from_utf8_lossy(&out).into_owned(),
        Err(_) => panic!("the gateway kept the connection open; it had sent {out:?}"),
    }
}

#[tokio::test]
async fn a_silent_connection_is_closed() {
    let stack = Stack::start(SHORT).await;
    let mut s = connect_from(stack.gw(), "127.0.0.1").await;
    let answer = read_to_close(&mut s).await;
    assert!(!answer.contains("200 OK"), "{answer}");
}

#[tokio::test]
async fn trickled_headers_are_cut_off() {
    let stack = Stack::start(SHORT).await;
    let mut s = connect_from(stack.gw(), "127.0.0.1").await;
    let request = b"GET /healthz HTTP/1.1\r\nHost: confab\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let deadline = tokio::time::Instant::now() + HANG;
    let mut closed = false;
    for byte in request {
        if s.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => {
                let got = String::from_utf8_lossy(&buf[..n]).into_owned();
                assert!(
                    !got.contains("200 OK"),
                    "answered a trickled request: {got}"
                );
            }
            Err(_) => {}
        }
        assert!(tokio::time::Instant::now() < deadline, "never cut off");
    }
    assert!(
        closed,
        "the whole request was trickled in without the connection being cut"
    );
}

#[tokio::test]
async fn an_unfinished_body_gets_408_and_the_connection_closes() {
    let stack = Stack::start(SHORT).await;
    for (what, head, start) in [
        (
            "content-length",
            "Content-Length: 100\r\n",
            "{\"assistant\":",
        ),
        (
            "chunked",
            "Transfer-Encoding: chunked\r\n",
            "d\r\n{\"assistant\":\r\n",
        ),
    ] {
        let mut s = connect_from(stack.gw(), "127.0.0.1").await;
        let request = format!(
            "POST /api/conversations HTTP/1.1\r\nHost: confab\r\n\
             Content-Type: application/json\r\n{head}\r\n{start}"
        );
        s.write_all(request.as_bytes()).await.unwrap();
        let answer = read_to_close(&mut s).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{what}: {answer}");
        assert!(
            answer.contains("\"code\":\"body_timeout\""),
            "{what}: {answer}"
        );
    }
    // The gateway is fine afterwards.
    let (status, _) = stack.http().get("/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn connections_per_address_are_capped_and_healthz_keeps_answering() {
    let stack = Stack::start(&[
        ("MAX_CONNECTIONS_PER_ADDR", "20"),
        ("HEADER_READ_TIMEOUT_MS", "60000"),
    ])
    .await;
    let gw = stack.gw();
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(connect_from(gw, "127.0.0.5").await);
    }
    // Ask something on each, so we know the gateway has accepted and counted all of them.
    for s in &mut held {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: confab\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(HANG, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    }
    // The 21st from that address is refused with 429 and closed…
    let mut extra = connect_from(gw, "127.0.0.5").await;
    let answer = read_to_close(&mut extra).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("too_many_connections"), "{answer}");
    // …while other addresses are served.
    let (status, _) = stack.http().from_addr("127.0.0.6").get("/healthz").await;
    assert_eq!(status, 200);
    let (status, _) = stack.http().get("/healthz").await;
    assert_eq!(status, 200);
    // Closing connections gives their slots back.
    held.truncate(15);
    eventually_true("a freed slot is reusable", HANG, async || {
        let mut s = connect_from(gw, "127.0.0.5").await;
        if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: confab\r\nConnection: close\r\n\r\n")
            .await
            .is_err()
        {
            return false;
        }
        read_to_close(&mut s).await.starts_with("HTTP/1.1 200")
    })
    .await;
}
