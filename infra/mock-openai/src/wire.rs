//! JSON objects of the Chat Completions wire format: `chat.completion`,
//! `chat.completion.chunk`, `usage` and the in-stream error event.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{json, Value};

/// `system_fingerprint` of every response.
pub const SYSTEM_FINGERPRINT: &str = "fp_confab_mock";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
struct PromptTokensDetails {
    cached_tokens: u32,
    audio_tokens: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
struct CompletionTokensDetails {
    reasoning_tokens: u32,
    audio_tokens: u32,
    accepted_prediction_tokens: u32,
    rejected_prediction_tokens: u32,
}

/// Token accounting of one completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    prompt_tokens_details: PromptTokensDetails,
    completion_tokens_details: CompletionTokensDetails,
}

impl Usage {
    pub fn new(prompt_tokens: u32, completion_tokens: usize) -> Self {
        let completion_tokens = u32::try_from(completion_tokens).unwrap_or(u32::MAX);
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
            prompt_tokens_details: PromptTokensDetails::default(),
            completion_tokens_details: CompletionTokensDetails::default(),
        }
    }
}

#[derive(Serialize)]
struct Chunk<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    object: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_fingerprint: Option<&'static str>,
    choices: &'a [Choice<'a>],
    /// Absent without `include_usage`; `null` on ordinary chunks with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<Usage>>,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'a str>,
}

#[derive(Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

/// The fields shared by every object of one response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub id: String,
    pub created: u64,
    pub model: String,
    /// Omit `id`, `object`, `created`, `model` and `system_fingerprint`.
    pub lenient: bool,
    pub include_usage: bool,
}

impl Envelope {
    pub fn new(model: &str, lenient: bool, include_usage: bool) -> Self {
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        Self {
            id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
            created,
            model: model.to_string(),
            lenient,
            include_usage,
        }
    }

    fn chunk(&self, choice: Option<Choice<'_>>, usage: Option<Usage>) -> String {
        let full = !self.lenient;
        let choices: &[Choice<'_>] = match &choice {
            Some(c) => std::slice::from_ref(c),
            None => &[],
        };
        let chunk = Chunk {
            id: full.then_some(self.id.as_str()),
            object: full.then_some("chat.completion.chunk"),
            created: full.then_some(self.created),
            model: full.then_some(self.model.as_str()),
            system_fingerprint: full.then_some(SYSTEM_FINGERPRINT),
            choices,
            usage: self.include_usage.then_some(usage),
        };
        serde_json::to_string(&chunk).unwrap_or_default()
    }

    fn delta_chunk(&self, delta: Delta<'_>, finish_reason: Option<&str>) -> String {
        let choice = Choice {
            index: 0,
            delta,
            logprobs: None,
            finish_reason,
        };
        self.chunk(Some(choice), None)
    }

    /// First chunk: `delta: {"role":"assistant","content":""}`.
    pub fn role_chunk(&self) -> String {
        let delta = Delta {
            role: Some("assistant"),
            content: Some(""),
        };
        self.delta_chunk(delta, None)
    }

    /// One content token.
    pub fn content_chunk(&self, content: &str) -> String {
        let delta = Delta {
            role: None,
            content: Some(content),
        };
        self.delta_chunk(delta, None)
    }

    /// Empty delta carrying `finish_reason`.
    pub fn finish_chunk(&self, finish_reason: &str) -> String {
        let delta = Delta {
            role: None,
            content: None,
        };
        self.delta_chunk(delta, Some(finish_reason))
    }

    /// `choices: []` with the usage totals (only with `include_usage`).
    pub fn usage_chunk(&self, usage: Usage) -> String {
        self.chunk(None, Some(usage))
    }

    /// A non-streaming `chat.completion` object.
    pub fn completion(&self, content: &str, finish_reason: &str, usage: Usage) -> Value {
        let mut obj = json!({
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": content,
                    "refusal": null,
                    "annotations": [],
                },
                "logprobs": null,
                "finish_reason": finish_reason,
            }],
            "usage": usage,
            "service_tier": "default",
        });
        if !self.lenient {
            if let Some(map) = obj.as_object_mut() {
                map.insert("id".into(), json!(self.id));
                map.insert("object".into(), json!("chat.completion"));
                map.insert("created".into(), json!(self.created));
                map.insert("model".into(), json!(self.model));
                map.insert("system_fingerprint".into(), json!(SYSTEM_FINGERPRINT));
            }
        }
        obj
    }
}

/// The error event a `stream_error` directive sends inside a 200 stream.
pub fn stream_error_event() -> String {
    json!({
        "error": {
            "message": "The server had an error while processing your request. Sorry about that! \
                        (mock stream_error)",
            "type": "server_error",
            "param": null,
            "code": null,
        }
    })
    .to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn chunks_have_openai_shape() {
        let env = Envelope::new("gpt-x", false, false);
        let role = parse(&env.role_chunk());
        assert_eq!(role["object"], "chat.completion.chunk");
        assert_eq!(role["id"], env.id.as_str());
        assert_eq!(role["system_fingerprint"], SYSTEM_FINGERPRINT);
        assert_eq!(role["choices"][0]["delta"], json!({"role":"assistant","content":""}));
        assert!(role["choices"][0]["finish_reason"].is_null());
        assert!(role.get("usage").is_none());
        let fin = parse(&env.finish_chunk("length"));
        assert_eq!(fin["choices"][0]["delta"], json!({}));
        assert_eq!(fin["choices"][0]["finish_reason"], "length");
    }

    #[test]
    fn usage_and_lenient() {
        let env = Envelope::new("m", true, true);
        let c = parse(&env.content_chunk("hi "));
        assert_eq!(c["choices"][0]["delta"]["content"], "hi ");
        assert!(c["usage"].is_null() && c.get("usage").is_some());
        for k in ["id", "object", "created", "model", "system_fingerprint"] {
            assert!(c.get(k).is_none(), "{k} present");
        }
        let u = parse(&env.usage_chunk(Usage::new(10, 5)));
        assert_eq!(u["choices"], json!([]));
        assert_eq!(u["usage"]["total_tokens"], 15);
    }
}
