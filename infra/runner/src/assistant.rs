//! Which model the assistant uses: a real OpenAI-compatible API when `OPENAI_API_KEY` is set,
//! otherwise Confab's local demo model (`mock-openai`), started by the runner.
//!
//! The key is never printed; only whether one is set.

use std::net::SocketAddr;

use anyhow::bail;

use crate::net::connectable;

/// `MOCK_OPENAI_ADDR` default.
pub const DEFAULT_MOCK_ADDR: &str = "127.0.0.1:8089";
/// `OPENAI_API_KEY` the workers get in demo mode (unless `MOCK_API_KEY` sets one).
pub const DEMO_API_KEY: &str = "local-demo";
/// `OPENAI_MODEL` the workers get in demo mode when none is set.
pub const DEMO_MODEL: &str = "confab-demo";

/// The assistant's model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Assistant {
    /// Run `mock-openai` and point the workers at it.
    Demo(DemoModel),
    /// `OPENAI_API_KEY` is set: the children use the environment as it is.
    Real {
        base_url: Option<String>,
        model: Option<String>,
    },
}

/// Settings of the local demo model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DemoModel {
    /// Where `mock-openai` listens (`MOCK_OPENAI_ADDR`).
    pub addr: SocketAddr,
    /// `OPENAI_BASE_URL` for the workers, e.g. `http://127.0.0.1:8089/v1`.
    pub base_url: String,
    /// `OPENAI_API_KEY` for the workers: `MOCK_API_KEY` when set (the mock then checks it).
    api_key: String,
    /// `OPENAI_MODEL` for the workers, unless the user chose one.
    pub model: Option<String>,
    /// The user set `OPENAI_BASE_URL` without a key; it is overridden.
    pub base_url_ignored: bool,
}

impl Assistant {
    /// Decides from environment lookups (empty values count as unset).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let get = |k: &str| {
            get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        if get("OPENAI_API_KEY").is_some() {
            return Ok(Assistant::Real {
                base_url: get("OPENAI_BASE_URL"),
                model: get("OPENAI_MODEL"),
            });
        }
        let raw = get("MOCK_OPENAI_ADDR").unwrap_or_else(|| DEFAULT_MOCK_ADDR.to_string());
        let Ok(addr) = raw.parse::<SocketAddr>() else {
            bail!("MOCK_OPENAI_ADDR must be an address such as {DEFAULT_MOCK_ADDR} (got {raw:?})");
        };
        Ok(Assistant::Demo(DemoModel {
            addr,
            base_url: format!("http://{}/v1", connectable(addr)),
            api_key: get("MOCK_API_KEY").unwrap_or_else(|| DEMO_API_KEY.to_string()),
            model: get("OPENAI_MODEL")
                .is_none()
                .then(|| DEMO_MODEL.to_string()),
            base_url_ignored: get("OPENAI_BASE_URL").is_some(),
        }))
    }

    /// Reads the process environment.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Variables added to every gateway's and worker's environment.
    pub fn child_env(&self) -> Vec<(String, String)> {
        match self {
            Assistant::Real { .. } => Vec::new(),
            Assistant::Demo(demo) => {
                let mut env = vec![
                    ("OPENAI_BASE_URL".to_string(), demo.base_url.clone()),
                    ("OPENAI_API_KEY".to_string(), demo.api_key.clone()),
                ];
                if let Some(model) = &demo.model {
                    env.push(("OPENAI_MODEL".to_string(), model.clone()));
                }
                env
            }
        }
    }

    /// The lines telling the user which model answers.
    pub fn banner(&self) -> Vec<String> {
        match self {
            Assistant::Real { base_url, model } => vec![format!(
                "assistant: OpenAI-compatible API at {}, model {} (OPENAI_API_KEY is set)",
                base_url
                    .as_deref()
                    .unwrap_or("https://api.openai.com/v1 (default)"),
                model.as_deref().unwrap_or("gpt-4o-mini (default)"),
            )],
            Assistant::Demo(demo) => {
                let rule = "*".repeat(78);
                let mut lines = vec![
                    rule.clone(),
                    "* The assistant is Confab's LOCAL DEMO MODEL (mock-openai), NOT OpenAI."
                        .to_string(),
                    format!(
                        "* It runs on {} and streams canned demo answers.",
                        demo.base_url
                    ),
                    "* To use a real model, set OPENAI_API_KEY (and optionally OPENAI_BASE_URL,"
                        .to_string(),
                    "* OPENAI_MODEL) and start again.".to_string(),
                ];
                if demo.base_url_ignored {
                    lines.push(
                        "* (OPENAI_BASE_URL is set but ignored: OPENAI_API_KEY is not set.)"
                            .to_string(),
                    );
                }
                lines.push(rule);
                lines
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn decide(pairs: &[(&str, &str)]) -> anyhow::Result<Assistant> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Assistant::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn no_key_means_demo_model() -> anyhow::Result<()> {
        let a = decide(&[])?;
        let env = a.child_env();
        assert!(env.contains(&("OPENAI_BASE_URL".into(), "http://127.0.0.1:8089/v1".into())));
        assert!(env.contains(&("OPENAI_API_KEY".into(), "local-demo".into())));
        assert!(env.contains(&("OPENAI_MODEL".into(), "confab-demo".into())));
        let banner = a.banner().join("\n");
        assert!(banner.contains("LOCAL DEMO MODEL"), "{banner}");
        assert!(banner.contains("NOT OpenAI"), "{banner}");
        assert!(banner.contains("OPENAI_API_KEY"), "{banner}");
        // An empty key is no key.
        assert!(matches!(
            decide(&[("OPENAI_API_KEY", " ")])?,
            Assistant::Demo(_)
        ));
        Ok(())
    }

    #[test]
    fn demo_respects_mock_settings() -> anyhow::Result<()> {
        let a = decide(&[
            ("MOCK_OPENAI_ADDR", "0.0.0.0:9999"),
            ("MOCK_API_KEY", "mock-secret"),
            ("OPENAI_MODEL", "gpt-4o"),
            ("OPENAI_BASE_URL", "https://example.com/v1"),
        ])?;
        let env = a.child_env();
        assert!(env.contains(&("OPENAI_BASE_URL".into(), "http://127.0.0.1:9999/v1".into())));
        assert!(env.contains(&("OPENAI_API_KEY".into(), "mock-secret".into())));
        assert!(!env.iter().any(|(k, _)| k == "OPENAI_MODEL"));
        assert!(a
            .banner()
            .join("\n")
            .contains("OPENAI_BASE_URL is set but ignored"));
        assert!(!a.banner().join("\n").contains("mock-secret"));
        let err = decide(&[("MOCK_OPENAI_ADDR", "localhost")]).err();
        assert!(err.is_some_and(|e| e.to_string().contains("MOCK_OPENAI_ADDR")));
        Ok(())
    }

    #[test]
    fn key_means_real_model_and_is_never_printed() -> anyhow::Result<()> {
        let a = decide(&[
            ("OPENAI_API_KEY", "sk-very-secret"),
            ("OPENAI_MODEL", "gpt-4.1"),
        ])?;
        assert!(a.child_env().is_empty());
        let banner = a.banner().join("\n");
        assert!(!banner.contains("sk-very-secret"), "{banner}");
        assert!(banner.contains("gpt-4.1"), "{banner}");
        Ok(())
    }
}
