//! JSON objects of the Chat Completions wire format: `chat.completion`,
//! `chat.completion.chunk`, `usage` and the in-stream error event.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

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

#[derive(Serialize)]
struct Completion<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    object: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    choices: [CompletionChoice<'a>; 1],
    usage: Usage,
    service_tier: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_fingerprint: Option<&'static str>,
}

#[derive(Serialize)]
struct CompletionChoice<'a> {
    index: u32,
    message: Message<'a>,
    logprobs: Option<()>,
    finish_reason: &'a str,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: &'a str,
    refusal: Option<()>,
    annotations: [(); 0],
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
    pub fn completion<'a>(
        &'a self,
        content: &'a str,
        finish_reason: &'a str,
        usage: Usage,
    ) -> impl Serialize + 'a {
        let full = !self.lenient;
        Completion {
            id: full.then_some(self.id.as_str()),
            object: full.then_some("chat.completion"),
            created: full.then_some(self.created),
            model: full.then_some(self.model.as_str()),
            choices: [CompletionChoice {
                index: 0,
                message: Message {
                    role: "assistant",
                    content,
                    refusal: None,
                    annotations: [],
                },
                logprobs: None,
                finish_reason,
            }],
            usage,
            service_tier: "default",
            system_fingerprint: full.then_some(SYSTEM_FINGERPRINT),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

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
        assert_eq!(
            role["choices"][0]["delta"],
            json!({"role":"assistant","content":""})
        );
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

    #[test]
    fn completion_object_in_openai_field_order() {
        let env = Envelope::new("m", false, false);
        let text = serde_json::to_string(&env.completion("hi", "stop", Usage::new(3, 1))).unwrap();
        let keys = [
            "\"id\"",
            "\"object\"",
            "\"created\"",
            "\"model\"",
            "\"choices\"",
            "\"usage\"",
        ];
        let positions: Vec<usize> = keys.iter().map(|k| text.find(k).unwrap()).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(
            v["choices"][0]["message"],
            json!({
                "role": "assistant", "content": "hi", "refusal": null, "annotations": []
            })
        );
        assert_eq!(v["usage"]["total_tokens"], 4);
        let lenient = Envelope::new("m", true, false);
        let v = serde_json::to_value(lenient.completion("hi", "stop", Usage::new(3, 1))).unwrap();
        assert!(v.get("id").is_none() && v.get("model").is_none());
    }
}
