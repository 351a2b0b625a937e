//! Reading request bodies: bounded, with precise errors.
//!
//! A body over the limit is still drained (up to [`DRAIN_CAP`]) so the client reads its 413
//! answer instead of a reset connection. Content type and JSON are checked by the handler
//! that knows whether a body is required.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use warp::http::StatusCode;
use warp::{Filter, Rejection};

use super::errors::ApiError;

/// How much of an oversized body is read and thrown away before answering 413.
pub const DRAIN_CAP: usize = 8 * 1024 * 1024;

#[derive(Debug, Default)]
pub struct Body {
    pub content_type: Option<String>,
    pub bytes: Bytes,
}

/// Extracts the body, refusing more than `limit` bytes with a 413, and a body that is not
/// complete within `timeout` (`BODY_READ_TIMEOUT_MS`: promised but never finished, trickled,
/// chunked without an end) with a 408 that closes the connection.
pub fn body(
    limit: usize,
    timeout: Duration,
) -> impl Filter<Extract = (Body,), Error = Rejection> + Clone {
    warp::header::optional::<String>("content-type")
        .and(warp::body::stream())
        .and_then(move |ct: Option<String>, stream| async move {
            let bytes = match tokio::time::timeout(timeout, read(stream, limit)).await {
                Ok(read) => read.map_err(warp::reject::custom)?,
                Err(_) => return Err(warp::reject::custom(body_timeout(timeout))),
            };
            Ok(Body {
                content_type: ct,
                bytes,
            })
        })
}

/// 408 for a body that did not arrive in time.
pub fn body_timeout(timeout: Duration) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "body_timeout",
        format!(
            "The request body did not arrive within {} ms",
            timeout.as_millis()
        ),
    )
}

async fn read<S, B>(stream: S, limit: usize) -> Result<Bytes, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let mut stream = std::pin::pin!(stream);
    let mut buf = BytesMut::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let mut chunk = chunk.map_err(|_| {
            ApiError::bad_request("invalid_body", "The request body could not be read")
        })?;
        seen += chunk.remaining();
        if seen > limit {
            if seen > DRAIN_CAP {
                break;
            }
            chunk.advance(chunk.remaining());
            continue;
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            buf.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    if seen > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("The request body is larger than {limit} bytes"),
        ));
    }
    Ok(buf.freeze())
}

impl Body {
    /// The body as a JSON object; `None` when empty and `required` is false.
    pub fn json_object(
        &self,
        required: bool,
    ) -> Result<Option<serde_json::Map<String, serde_json::Value>>, ApiError> {
        if self.bytes.iter().all(u8::is_ascii_whitespace) {
            return if required {
                Err(ApiError::bad_request(
                    "invalid_json",
                    "A JSON body is required",
                ))
            } else {
                Ok(None)
            };
        }
        let is_json = self.content_type.as_deref().is_some_and(|ct| {
            let mime = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        });
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Send JSON with Content-Type: application/json",
            ));
        }
        match serde_json::from_slice::<serde_json::Value>(&self.bytes) {
            Ok(serde_json::Value::Object(map)) => Ok(Some(map)),
            Ok(_) => Err(ApiError::bad_request(
                "invalid_json",
                "The body must be a JSON object",
            )),
            Err(e) => Err(ApiError::bad_request(
                "invalid_json",
                format!("Malformed JSON: {e}"),
            )),
        }
    }
}

/// An optional string field: missing or null → `None`, a non-string → error.
pub fn opt_str<'a>(
    obj: &'a serde_json::Map<String, serde_json::Value>,
    field: &str,
) -> Result<Option<&'a str>, ApiError> {
    match obj.get(field) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::bad_request(
            "invalid_field",
            format!("{field} must be a string"),
        )),
    }
}
