//! A lean HTTP/1.1 keep-alive client: one hyper connection per load client, no pool.
//!
//! Each [`HttpConn`] owns one TCP connection (reconnected after an error), so a load client
//! never waits on a shared pool lock and the request path allocates little more than the body.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Where a gateway listens: `http://host:port` (no TLS, no path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host:port`, used both to connect and as the `Host` header.
    pub authority: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Self> {
        let rest = url
            .trim()
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("only http:// URLs are supported"))?;
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            bail!("expected http://host:port");
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.contains(']'))
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let (_, port) = authority
            .rsplit_once(':')
            .ok_or_else(|| anyhow!("expected http://host:port"))?;
        port.parse::<u16>()
            .map_err(|_| anyhow!("invalid port {port:?}"))?;
        Ok(Target { authority })
    }

    /// The WebSocket URL of `/ws`, with the session token when given.
    pub fn ws_url(&self, token: Option<&str>) -> String {
        match token {
            Some(t) => format!("ws://{}/ws?token={t}", self.authority),
            None => format!("ws://{}/ws", self.authority),
        }
    }
}

/// Parses every `--url` into a [`Target`].
pub fn targets(urls: &[String]) -> Result<Vec<Target>> {
    urls.iter()
        .map(|u| Target::parse(u).with_context(|| format!("--url {u:?}")))
        .collect()
}

/// One keep-alive HTTP/1.1 connection to a gateway.
pub struct HttpConn {
    target: Target,
    host: HeaderValue,
    sender: Option<SendRequest<Full<Bytes>>>,
    timeout: Duration,
}

/// A request failure that never reached a status line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Connect,
    Io,
    Timeout,
}

impl Failure {
    pub fn label(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Io => "io",
            Failure::Timeout => "timeout",
        }
    }
}

impl HttpConn {
    pub fn new(target: Target, timeout: Duration) -> Result<Self> {
        let host = HeaderValue::from_str(&target.authority)?;
        Ok(HttpConn {
            target,
            host,
            sender: None,
            timeout,
        })
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, Failure> {
        let tcp = TcpStream::connect(&self.target.authority)
            .await
            .map_err(|_| Failure::Connect)?;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|_| Failure::Connect)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// Sends one request and reads the whole answer: `(status, body)`.
    pub async fn send(
        &mut self,
        method: Method,
        uri: Uri,
        token: Option<&HeaderValue>,
        body: Option<Bytes>,
    ) -> Result<(u16, Bytes), Failure> {
        match tokio::time::timeout(self.timeout, self.send_inner(method, uri, token, body)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.sender = None;
                Err(e)
            }
            Err(_) => {
                self.sender = None;
                Err(Failure::Timeout)
            }
        }
    }

    async fn send_inner(
        &mut self,
        method: Method,
        uri: Uri,
        token: Option<&HeaderValue>,
        body: Option<Bytes>,
    ) -> Result<(u16, Bytes), Failure> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            self.sender = Some(self.connect().await?);
        }
        let Some(sender) = self.sender.as_mut() else {
            return Err(Failure::Connect);
        };
        sender.ready().await.map_err(|_| Failure::Io)?;
        let has_body = body.is_some();
        let mut req = Request::new(Full::new(body.unwrap_or_default()));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        let h = req.headers_mut();
        h.insert(HOST, self.host.clone());
        if has_body {
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if let Some(t) = token {
            h.insert(AUTHORIZATION, t.clone());
        }
        let res = sender.send_request(req).await.map_err(|_| Failure::Io)?;
        let status = res.status().as_u16();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|_| Failure::Io)?
            .to_bytes();
        Ok((status, body))
    }

    /// A setup call: JSON in, JSON out, one retry on a transport failure.
    pub async fn json(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, serde_json::Value)> {
        let uri: Uri = path.parse()?;
        let token = token
            .map(|t| HeaderValue::from_str(&format!("Bearer {t}")))
            .transpose()?;
        let body = body.map(|b| Bytes::from(b.to_string()));
        let mut last = Failure::Io;
        for _ in 0..2 {
            match self
                .send(method.clone(), uri.clone(), token.as_ref(), body.clone())
                .await
            {
                Ok((status, bytes)) => {
                    let v = if bytes.is_empty() {
                        serde_json::Value::Null
                    } else {
                        serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                            serde_json::Value::String(String::from_utf8_lossy(&bytes).into())
                        })
                    };
                    return Ok((status, v));
                }
                Err(e) => last = e,
            }
        }
        bail!(
            "{method} {path} on {}: {} failure",
            self.target.authority,
            last.label()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let t = Target::parse("http://127.0.0.1:3991/").ok();
        assert_eq!(t.map(|t| t.authority), Some("127.0.0.1:3991".into()));
        let t = Target::parse("http://localhost").ok();
        assert_eq!(t.map(|t| t.authority), Some("localhost:80".into()));
        assert!(Target::parse("https://127.0.0.1:1").is_err());
        assert!(Target::parse("http://127.0.0.1:1/api").is_err());
        assert!(Target::parse("http://127.0.0.1:99999").is_err());
        let t = Target::parse("http://127.0.0.1:3000").ok();
        assert_eq!(
            t.map(|t| t.ws_url(Some("abc"))),
            Some("ws://127.0.0.1:3000/ws?token=abc".into())
        );
    }
}
