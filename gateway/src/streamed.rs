//! Response bodies sent while they are produced. warp builds every body in memory; a handler
//! that streams instead answers with [`response`]: headers as usual, an empty warp body, and
//! the stream in a response extension, which [`crate::server`] puts in the body's place
//! ([`into_http`]). hyper polls the stream only as the socket takes what came before, so a
//! slow reader holds one chunk, not the whole answer.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type the server answers with: warp's, or a stream.
pub type HttpBody = UnsyncBoxBody<Bytes, BoxError>;

/// The stream a handler left for the server (taken once).
#[derive(Clone)]
struct Streamed(Arc<Mutex<Option<HttpBody>>>);

/// A response whose body is `chunks`, sent as they come (chunked transfer encoding). An
/// error item ends the body there: the client sees a cut response, never a wrong one.
pub fn response<S, E>(status: StatusCode, content_type: &'static str, chunks: S) -> Response
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let frames = chunks.map(|item| {
        item.map(Frame::data).map_err(|e| {
            tracing::warn!(error = %e, "a streamed response ended early");
            BoxError::from(e.to_string())
        })
    });
    let body = StreamBody::new(frames).boxed_unsync();
    let mut res = Response::new(Bytes::new().into());
    *res.status_mut() = status;
    res.headers_mut().insert(
        warp::http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    res.extensions_mut()
        .insert(Streamed(Arc::new(Mutex::new(Some(body)))));
    res
}

/// warp's response as the server's: the stream a handler left, or warp's body.
pub fn into_http(mut res: Response) -> warp::http::Response<HttpBody> {
    let streamed = res
        .extensions_mut()
        .remove::<Streamed>()
        .and_then(|s| s.0.lock().ok().and_then(|mut b| b.take()));
    res.map(|body| match streamed {
        Some(stream) => stream,
        None => body.map_err(BoxError::from).boxed_unsync(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_stream_replaces_the_empty_body_and_keeps_the_headers() {
        let chunks = futures::stream::iter([
            Ok::<_, std::io::Error>(Bytes::from_static(b"{\"a\":")),
            Ok(Bytes::from_static(b"1}")),
        ]);
        let res = into_http(response(StatusCode::OK, "application/json", chunks));
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["content-type"], "application/json");
        let body = res.into_body().collect().await.map(|b| b.to_bytes());
        assert_eq!(body.ok().as_deref(), Some(&b"{\"a\":1}"[..]));
        // A plain warp response keeps its body.
        let plain = into_http(crate::rest::errors::json_response(StatusCode::OK, "[]"));
        let body = plain.into_body().collect().await.map(|b| b.to_bytes());
        assert_eq!(body.ok().as_deref(), Some(&b"[]"[..]));
    }
}
