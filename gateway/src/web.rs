//! The browser client: files from `WEB_DIR`, and `index.html` for client-side routes —
//! never for `/api/*`, `/ws`, `/healthz` or `/readyz`, which keep their JSON answers.

use std::path::PathBuf;

use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::rest::errors::ApiError;

fn is_backend_path(path: &str) -> bool {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    matches!(first, "api" | "ws" | "healthz" | "readyz")
}

pub fn routes(dir: PathBuf) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let files = warp::get()
        .and(warp::fs::dir(dir.clone()))
        .map(|f: warp::fs::File| {
            let cache = if f.path().components().any(|c| c.as_os_str() == "assets") {
                "public, max-age=31536000, immutable"
            } else {
                "no-cache"
            };
            warp::reply::with_header(f, "cache-control", cache).into_response()
        });
    let index = dir.join("index.html");
    let fallback =
        warp::get()
            .and(warp::path::full())
            .and_then(move |path: warp::path::FullPath| {
                let index = index.clone();
                async move {
                    if is_backend_path(path.as_str()) {
                        return Err(warp::reject::not_found());
                    }
                    match tokio::fs::read(&index).await {
                        Ok(html) => {
                            let mut res = Response::new(html.into());
                            res.headers_mut().insert(
                                "content-type",
                                warp::http::HeaderValue::from_static("text/html; charset=utf-8"),
                            );
                            res.headers_mut().insert(
                                "cache-control",
                                warp::http::HeaderValue::from_static("no-cache"),
                            );
                            Ok(res)
                        }
                        Err(_) => Ok(ApiError::new(
                            StatusCode::NOT_FOUND,
                            "web_client_missing",
                            "The web client is not built; run `make web` (make up builds it)",
                        )
                        .into_response()),
                    }
                }
            });
    // Backend paths are never the web client's, whatever the method: their 404 must not turn
    // into this route's 405.
    let not_backend = warp::path::full()
        .and_then(|path: warp::path::FullPath| async move {
            if is_backend_path(path.as_str()) {
                Err(warp::reject::not_found())
            } else {
                Ok(())
            }
        })
        .untuple_one();
    not_backend.and(files.or(fallback).unify())
}

#[cfg(test)]
mod tests {
    #[test]
    fn backend_paths_are_never_the_spa() {
        for p in ["/api", "/api/x", "/ws", "/healthz", "/readyz"] {
            assert!(super::is_backend_path(p), "{p}");
        }
        for p in ["/", "/c/123", "/chats", "/apiary"] {
            assert!(!super::is_backend_path(p), "{p}");
        }
    }
}
