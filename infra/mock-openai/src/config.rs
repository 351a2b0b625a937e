//! Server configuration, from code or from `MOCK_*` environment variables.

use anyhow::Context;

/// The demo model's name; first entry of [`MockConfig::models`] by default.
pub const DEMO_MODEL: &str = "confab-demo";

/// Default pacing in tokens per second.
pub const DEFAULT_TOKENS_PER_SEC: u32 = 40;

/// How the mock behaves when no directive says otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockConfig {
    /// Pacing of streamed tokens; 0 = as fast as possible.
    pub tokens_per_sec: u32,
    /// When set, `/v1/*` requests must carry `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Names listed by `GET /v1/models`. Any model name is accepted by
    /// `/v1/chat/completions`; the first one is used when a request has none.
    pub models: Vec<String>,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            tokens_per_sec: DEFAULT_TOKENS_PER_SEC,
            api_key: None,
            models: [
                DEMO_MODEL,
                "gpt-4o-mini",
                "gpt-4o",
                "gpt-4.1-mini",
                "gpt-4.1",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

impl MockConfig {
    /// Unpaced, no auth: handy for tests.
    pub fn fast() -> Self {
        Self {
            tokens_per_sec: 0,
            ..Self::default()
        }
    }

    /// Reads `MOCK_TOKENS_PER_SEC`, `MOCK_API_KEY` and `MOCK_MODELS`
    /// (comma-separated) through `lookup`; missing or empty values keep the
    /// defaults.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let get = |k: &str| {
            lookup(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let mut config = Self::default();
        if let Some(tps) = get("MOCK_TOKENS_PER_SEC") {
            config.tokens_per_sec = tps
                .parse()
                .with_context(|| format!("MOCK_TOKENS_PER_SEC must be an integer, got {tps:?}"))?;
        }
        config.api_key = get("MOCK_API_KEY");
        if let Some(models) = get("MOCK_MODELS") {
            let models: Vec<String> = models
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(String::from)
                .collect();
            if !models.is_empty() {
                config.models = models;
            }
        }
        Ok(config)
    }

    /// Reads the process environment (see [`MockConfig::from_lookup`]).
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Model used when a request names none.
    pub fn default_model(&self) -> &str {
        self.models
            .first()
            .map(String::as_str)
            .unwrap_or(DEMO_MODEL)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn env_lookup() {
        let vars = |k: &str| match k {
            "MOCK_TOKENS_PER_SEC" => Some(" 0 ".to_string()),
            "MOCK_API_KEY" => Some("secret".to_string()),
            "MOCK_MODELS" => Some("a, b,,".to_string()),
            _ => None,
        };
        let c = MockConfig::from_lookup(vars).map_err(|e| e.to_string());
        assert_eq!(
            c,
            Ok(MockConfig {
                tokens_per_sec: 0,
                api_key: Some("secret".into()),
                models: vec!["a".into(), "b".into()],
            })
        );
        let d = MockConfig::from_lookup(|_| Some(String::new())).map_err(|e| e.to_string());
        assert_eq!(d, Ok(MockConfig::default()));
        assert!(MockConfig::from_lookup(|_| Some("x".into())).is_err());
        assert_eq!(MockConfig::default().default_model(), DEMO_MODEL);
    }
}
