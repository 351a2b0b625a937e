//! Talking to an OpenAI-compatible Chat Completions API through async-openai.
//!
//! - Requests and chunks are our own serde types (async-openai's bring-your-own-types calls),
//!   so a server that omits fields OpenAI always sends (`created`, `model`, `id`, …) still streams.
//! - Retries are ours, not the library's: the HTTP layer ([`Transport`]) turns a 429 into an
//!   error that carries `Retry-After`, and [`classify`] decides what is worth retrying
//!   (429, 5xx, timeouts, cut streams, an error object inside a 200 stream) and what is not
//!   (401/403, unknown model, bad request).
//! - The API key is never logged: error texts pass through [`Model::redact`].

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use async_openai::Client;
use confab_shared::Config;
use futures::Stream;
use serde::Deserialize;
use serde_json::{json, Value};

/// One streamed chunk, leniently: everything optional.
#[derive(Debug, Default, Deserialize)]
pub struct Chunk {
    #[serde(default)]
    pub choices: Vec<Choice>,
    #[serde(default)]
    pub usage: Option<Value>,
    /// Some servers report failures inside a 200 stream as `data: {"error": …}`.
    #[serde(default)]
    pub error: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Choice {
    #[serde(default)]
    pub delta: Option<Delta>,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Delta {
    #[serde(default)]
    pub content: Option<String>,
}

pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Chunk, OpenAIError>> + Send>>;

/// Why an attempt failed, and whether another attempt may help.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    Fatal {
        code: &'static str,
        message: String,
    },
}

/// A 429 seen by the transport, with the server's `Retry-After`.
#[derive(Debug, thiserror::Error)]
#[error("rate limited by the model API: {message}")]
pub struct RateLimited {
    pub retry_after: Option<Duration>,
    pub message: String,
}

/// The HTTP layer under async-openai: plain reqwest, no hidden retries, 429 → [`RateLimited`].
#[derive(Clone)]
pub struct Transport {
    client: reqwest::Client,
}

impl tower::Service<HttpRequestFactory> for Transport {
    type Response = reqwest::Response;
    type Error = OpenAIError;
    type Future = Pin<Box<dyn Future<Output = Result<reqwest::Response, OpenAIError>> + Send>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, factory: HttpRequestFactory) -> Self::Future {
        let client = self.client.clone();
        Box::pin(async move {
            let request = factory.build().await?;
            let response = client
                .execute(request)
                .await
                .map_err(OpenAIError::Reqwest)?;
            if response.status() != reqwest::StatusCode::TOO_MANY_REQUESTS {
                return Ok(response);
            }
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let body = response.text().await.unwrap_or_default();
            let message = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| "too many requests".into());
            Err(OpenAIError::Boxed(Box::new(RateLimited {
                retry_after,
                message,
            })))
        })
    }
}

/// `Retry-After: 3` or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    if let Ok(secs) = v.trim().parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(3600.0)));
    }
    let when = httpdate::parse_http_date(v.trim()).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

pub struct Model {
    client: Client<OpenAIConfig>,
    model: String,
    max_tokens: u32,
    key: String,
    /// `Err(explanation)` when no request can succeed (no key for api.openai.com).
    configured: Result<(), String>,
}

impl Model {
    pub fn new(cfg: &Config) -> anyhow::Result<Self> {
        let key = cfg.openai_api_key.expose().trim().to_string();
        let base = cfg.openai_base_url.trim_end_matches('/').to_string();
        let configured = if key.is_empty() && base.contains("api.openai.com") {
            Err("The assistant is not configured: set OPENAI_API_KEY (or OPENAI_BASE_URL for a local OpenAI-compatible server)".to_string())
        } else {
            Ok(())
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // Belt and braces under the worker's own stall detection.
            .read_timeout(Duration::from_secs(30))
            .build()?;
        let client = Client::with_config(
            OpenAIConfig::new()
                .with_api_base(base)
                .with_api_key(key.clone()),
        )
        .with_http_service(Transport { client: http });
        Ok(Self {
            client,
            model: cfg.openai_model.clone(),
            max_tokens: cfg.assistant_max_tokens,
            key,
            configured,
        })
    }

    pub fn configured(&self) -> Result<(), String> {
        self.configured.clone()
    }

    /// Hides the API key in any text that might reach a log, an event or a client.
    pub fn redact(&self, text: &str) -> String {
        if self.key.len() >= 4 {
            text.replace(&self.key, "[redacted]")
        } else {
            text.to_string()
        }
    }

    pub fn request(&self, messages: &[Value]) -> Value {
        json!({
            "model": self.model,
            "messages": messages,
            "stream": true,
            "stream_options": { "include_usage": true },
            "max_tokens": self.max_tokens,
        })
    }

    /// Opens a streaming completion.
    pub async fn stream(&self, messages: &[Value]) -> Result<ChunkStream, Failure> {
        let request = self.request(messages);
        match self
            .client
            .chat()
            .create_stream_byot::<Value, Chunk>(request)
            .await
        {
            Ok(s) => Ok(Box::pin(s)),
            Err(e) => Err(self.classify(&e)),
        }
    }

    pub fn classify(&self, e: &OpenAIError) -> Failure {
        tracing::warn!(error = %self.redact(&e.to_string()), "model API call failed");
        let f = classify(e);
        match f {
            Failure::Retry { after, reason } => Failure::Retry {
                after,
                reason: self.redact(&reason),
            },
            Failure::Fatal { code, message } => Failure::Fatal {
                code,
                message: self.redact(&message),
            },
        }
    }
}

pub fn classify(e: &OpenAIError) -> Failure {
    match e {
        OpenAIError::Boxed(inner) => match inner.downcast_ref::<RateLimited>() {
            Some(r) => Failure::Retry {
                after: r.retry_after,
                reason: format!("rate limited: {}", r.message),
            },
            None => Failure::Retry {
                after: None,
                reason: inner.to_string(),
            },
        },
        OpenAIError::ApiError(api) => {
            let status = api.status_code.as_u16();
            let text = api.api_error.message.chars().take(300).collect::<String>();
            let code = api.api_error.code.as_deref().unwrap_or("");
            match status {
                401 | 403 => Failure::Fatal {
                    code: "auth_failed",
                    message: format!("The model API rejected the credentials ({status}): check OPENAI_API_KEY"),
                },
                404 => Failure::Fatal {
                    code: "model_not_found",
                    message: format!("The model API does not know this model (404 {code}): check OPENAI_MODEL and OPENAI_BASE_URL"),
                },
                408 | 409 | 425 | 429 => Failure::Retry { after: None, reason: format!("{status}: {text}") },
                s if s >= 500 => Failure::Retry { after: None, reason: format!("server error {status}: {text}") },
                _ if code == "model_not_found" => Failure::Fatal { code: "model_not_found", message: "Unknown model: check OPENAI_MODEL".to_string() },
                _ => Failure::Fatal { code: "bad_request", message: format!("The model API refused the request ({status}); see the completion worker's log") },
            }
        }
        OpenAIError::Reqwest(r) => Failure::Retry {
            after: None,
            reason: format!("network error: {r}"),
        },
        OpenAIError::StreamError(s) => Failure::Retry {
            after: None,
            reason: format!("the stream broke: {s}"),
        },
        OpenAIError::JSONDeserialize(err, _) => Failure::Retry {
            after: None,
            reason: format!("unreadable chunk: {err}"),
        },
        other => Failure::Fatal {
            code: "client_error",
            message: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn lenient_chunks_parse() {
        let c: Chunk =
            serde_json::from_str(r#"{"choices":[{"delta":{"content":"hi"}}]}"#).unwrap_or_default();
        assert_eq!(
            c.choices[0]
                .delta
                .as_ref()
                .and_then(|d| d.content.as_deref()),
            Some("hi")
        );
        let e: Chunk = serde_json::from_str(r#"{"error":{"message":"boom"}}"#).unwrap_or_default();
        assert!(e.error.is_some());
        let u: Chunk = serde_json::from_str(r#"{"id":"x","object":"chat.completion.chunk","choices":[],"usage":{"total_tokens":3}}"#).unwrap_or_default();
        assert!(u.usage.is_some());
    }

    #[test]
    fn key_is_redacted() {
        let cfg = Config::from_vars(vec![(
            "OPENAI_API_KEY".to_string(),
            "sk-secret-123".to_string(),
        )])
        .unwrap_or_else(|e| panic!("{e}"));
        let m = Model::new(&cfg).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.redact("bad key sk-secret-123!"), "bad key [redacted]!");
        assert!(m.configured().is_ok());
        let none =
            Config::from_vars(Vec::<(String, String)>::new()).unwrap_or_else(|e| panic!("{e}"));
        let m = Model::new(&none).unwrap_or_else(|e| panic!("{e}"));
        assert!(m
            .configured()
            .err()
            .unwrap_or_default()
            .contains("OPENAI_API_KEY"));
    }
}
