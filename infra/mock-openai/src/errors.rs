//! OpenAI-shaped error responses:
//! `{"error":{"message":…,"type":…,"param":…,"code":…}}`.

use serde::Serialize;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::Reply;

/// `{"error": {...}}`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ErrorBody<'a> {
    error: ErrorFields<'a>,
}

#[derive(Debug, Clone, Copy, Serialize)]
struct ErrorFields<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

/// The error event a `stream_error` directive sends inside a 200 stream.
pub fn stream_error_event() -> String {
    let body = ErrorBody {
        error: ErrorFields {
            message: "The server had an error while processing your request. Sorry about that! \
                      (mock stream_error)",
            kind: "server_error",
            param: None,
            code: None,
        },
    };
    serde_json::to_string(&body).unwrap_or_default()
}

/// An error answered in OpenAI's wire format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub code: Option<&'static str>,
    pub param: Option<String>,
    /// Seconds for the `Retry-After` header (429 only).
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: u16, kind: &'static str, code: Option<&'static str>, message: String) -> Self {
        Self {
            status,
            message,
            kind,
            code,
            param: None,
            retry_after: None,
        }
    }

    /// 401 for a missing or wrong bearer token.
    pub fn invalid_api_key(provided: Option<&str>) -> Self {
        let message = match provided {
            Some(key) => format!(
                "Incorrect API key provided: {}. You can find your API key at \
                 https://platform.openai.com/account/api-keys.",
                redact(key)
            ),
            None => "You didn't provide an API key. You need to provide your API key in an \
                     Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
                .to_string(),
        };
        Self::new(
            401,
            "invalid_request_error",
            Some("invalid_api_key"),
            message,
        )
    }

    /// 400 for a body the mock cannot use.
    pub fn bad_request(message: String, param: Option<&str>) -> Self {
        let mut e = Self::new(400, "invalid_request_error", None, message);
        e.param = param.map(str::to_string);
        e
    }

    /// 404 for an unknown model.
    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            404,
            "invalid_request_error",
            Some("model_not_found"),
            format!("The model `{model}` does not exist or you do not have access to it."),
        )
    }

    /// 404/405 for routes the mock does not serve.
    pub fn unknown_route(status: u16) -> Self {
        Self::new(
            status,
            "invalid_request_error",
            None,
            "Unknown request URL. Please check the URL for typos, or see the docs at \
             https://platform.openai.com/docs/api-reference/."
                .to_string(),
        )
    }

    /// The error a `status=N` directive asks for.
    pub fn for_status(status: u16, model: &str, retry_after: Option<u64>) -> Self {
        match status {
            401 => Self::invalid_api_key(Some("sk-mock")),
            404 => Self::model_not_found(model),
            429 => {
                let mut e = Self::new(
                    429,
                    "requests",
                    Some("rate_limit_exceeded"),
                    format!(
                        "Rate limit reached for {model} (mock) on requests per min (RPM): \
                         Limit 3, Used 3, Requested 1. Please try again in {}s.",
                        retry_after.unwrap_or(1)
                    ),
                );
                e.retry_after = Some(retry_after.unwrap_or(1));
                e
            }
            500 => Self::server_error(500),
            503 => Self::new(
                503,
                "server_error",
                None,
                "The engine is currently overloaded, please try again later. (mock)".to_string(),
            ),
            s if s >= 500 => Self::server_error(s),
            s => Self::new(
                s,
                "invalid_request_error",
                None,
                format!("Mock error with status {s}."),
            ),
        }
    }

    /// 5xx `server_error`.
    pub fn server_error(status: u16) -> Self {
        Self::new(
            status,
            "server_error",
            None,
            "The server had an error while processing your request. Sorry about that! (mock)"
                .to_string(),
        )
    }

    /// The JSON body, fields in OpenAI's order.
    pub fn body(&self) -> ErrorBody<'_> {
        ErrorBody {
            error: ErrorFields {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        }
    }

    /// The full HTTP response.
    pub fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp =
            warp::reply::with_status(warp::reply::json(&self.body()), status).into_response();
        if let Some(secs) = self.retry_after {
            let headers = resp.headers_mut();
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            headers.insert(
                "retry-after-ms",
                HeaderValue::from(secs.saturating_mul(1000)),
            );
        }
        resp
    }
}

/// `sk-abc…wxyz`-style redaction so keys never reach logs or bodies in full.
fn redact(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 8 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}***{tail}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_shape_and_headers() {
        let e = ApiError::for_status(429, "m", Some(7));
        let body = serde_json::to_value(e.body()).unwrap();
        let text = serde_json::to_string(&e.body()).unwrap();
        assert!(
            text.starts_with(r#"{"error":{"message":"Rate limit reached"#),
            "{text}"
        );
        assert!(
            text.ends_with(
                r#"try again in 7s.","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#
            ),
            "{text}"
        );
        assert_eq!(body["error"]["type"], "requests");
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
        assert!(body["error"]["param"].is_null());
        let resp = e.into_response();
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "7");
        assert_eq!(resp.headers()["retry-after-ms"], "7000");
    }

    #[test]
    fn codes_for_common_statuses() {
        assert_eq!(
            ApiError::for_status(401, "m", None).code,
            Some("invalid_api_key")
        );
        assert_eq!(
            ApiError::for_status(404, "m", None).code,
            Some("model_not_found")
        );
        assert_eq!(ApiError::for_status(500, "m", None).kind, "server_error");
        assert_eq!(ApiError::for_status(503, "m", None).kind, "server_error");
        assert_eq!(
            ApiError::for_status(418, "m", None).kind,
            "invalid_request_error"
        );
    }

    #[test]
    fn keys_are_redacted() {
        assert_eq!(redact("sk-1234567890abcd"), "sk-***abcd");
        assert_eq!(redact("short"), "*****");
    }
}
