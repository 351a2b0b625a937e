//! The one error shape, `{"error":{"code","message"}}`, and the single `recover` that turns
//! every rejection — ours and warp's — into it. 4xx go to the client as they are; 5xx are
//! logged and the client gets a generic message (internals never leak).

use std::convert::Infallible;

use confab_shared::domain::ValidationError;
use warp::http::StatusCode;
use warp::reject::Reject;
use warp::reply::Response;
use warp::{Rejection, Reply};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra fields merged into the `error` object (e.g. `commandId` on 504).
    pub extra: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Reject for ApiError {}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            extra: None,
        }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn conversation_not_found() -> Self {
        Self::not_found("Conversation not found")
    }
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Sign in first: send Authorization: Bearer <token>",
        )
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "{context}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Something went wrong on our side",
        )
    }
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.extra
            .get_or_insert_with(serde_json::Map::new)
            .insert(key.into(), value.into());
        self
    }

    pub fn body(&self) -> serde_json::Value {
        let mut err = serde_json::Map::new();
        err.insert("code".into(), self.code.into());
        err.insert("message".into(), self.message.clone().into());
        if let Some(extra) = &self.extra {
            err.extend(extra.clone());
        }
        serde_json::json!({ "error": err })
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        let status = match e {
            ValidationError::ContentTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        Self::new(status, e.code(), e.to_string())
    }
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        let mut res = json_response(self.status, &self.body().to_string());
        if self.status == StatusCode::REQUEST_TIMEOUT {
            // The rest of a body that did not arrive in time is not worth waiting for.
            res.headers_mut().insert(
                warp::http::header::CONNECTION,
                warp::http::HeaderValue::from_static("close"),
            );
        }
        res
    }
}

/// A JSON response from an already serialized body.
pub fn json_response(status: StatusCode, body: &str) -> Response {
    let mut res = Response::new(body.to_owned().into());
    *res.status_mut() = status;
    res.headers_mut().insert(
        warp::http::header::CONTENT_TYPE,
        warp::http::HeaderValue::from_static("application/json"),
    );
    res
}

pub fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    json_response(status, &serde_json::to_string(value).unwrap_or_default())
}

/// Result of every handler: a response either way.
pub type ApiResult = Result<Response, ApiError>;

pub fn respond(result: ApiResult) -> Response {
    result.unwrap_or_else(Reply::into_response)
}

/// Maps every rejection to the JSON error shape with the right status.
pub async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    let err = if let Some(e) = rejection.find::<ApiError>() {
        e.clone()
    } else if rejection.is_not_found() {
        ApiError::not_found("No such route")
    } else if let Some(e) = rejection.find::<warp::reject::InvalidQuery>() {
        // Before 405: another route's method mismatch must not hide what is wrong with this
        // one's query or headers (a repeated `?prefix=` is a 400, not a 405).
        ApiError::bad_request("invalid_query", e.to_string())
    } else if let Some(e) = rejection.find::<warp::reject::InvalidHeader>() {
        ApiError::bad_request("invalid_header", e.to_string())
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "This route does not accept that method",
        )
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "The request body is too large",
        )
    } else if rejection
        .find::<warp::reject::UnsupportedMediaType>()
        .is_some()
    {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Send JSON with Content-Type: application/json",
        )
    } else if let Some(e) = rejection.find::<warp::reject::MissingHeader>() {
        ApiError::bad_request("missing_header", e.to_string())
    } else {
        // A client can cause this at will: not worth more than a debug line.
        tracing::debug!(?rejection, "unhandled rejection");
        ApiError::bad_request("bad_request", "The request could not be understood")
    };
    Ok(err.into_response())
}
