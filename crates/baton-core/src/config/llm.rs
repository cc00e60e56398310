//! LLM agents (`runtime = "llm"`) and the providers they call (`[llm.providers.NAME]`):
//! parsed with the rest of the file, validated into [`LlmSpec`] and [`ProviderSpec`].
//!
//! An agent's spec holds a copy of its provider's, so that the runtime built for it needs
//! nothing else from the plan. The API key itself is never in the plan: only the name of the
//! variable that holds it (`api_key_env`), read by the runtime when it calls the provider.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::diagnostics::unknown;
use super::raw::RawAgent;
use super::{Location, Validator};

/// The most turns (model calls) one attempt of an LLM agent may take.
pub const MAX_TURNS_LIMIT: u32 = 1000;
/// Turns an LLM agent takes at most when it sets no `max_turns`.
pub const DEFAULT_MAX_TURNS: u32 = 20;
/// Output tokens asked for per turn when the agent sets no `max_tokens`.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// Which API a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Anthropic's Messages API.
    Anthropic,
    /// OpenAI's Chat Completions API, and every server that speaks it (Ollama, vLLM, LM
    /// Studio, OpenRouter…).
    Openai,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Openai => "openai",
        }
    }

    /// The vendor's own endpoint, when `base_url` is not set.
    pub fn default_base_url(self) -> &'static str {
        match self {
            ProviderKind::Anthropic => "https://api.anthropic.com",
            ProviderKind::Openai => "https://api.openai.com/v1",
        }
    }
}

/// What a model costs, in US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    /// Reading the prompt cache; `input` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read: Option<f64>,
    /// Writing the prompt cache; `input` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<f64>,
}

/// A provider, validated. No secret: the key is read from `api_key_env` when it is called.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProviderSpec {
    pub name: String,
    pub kind: ProviderKind,
    /// Without a trailing `/`.
    pub base_url: String,
    /// The variable of Baton's environment holding the API key; `None` for a local server
    /// that needs none.
    pub api_key_env: Option<String>,
    /// Prices by model, over the defaults for well-known models.
    pub prices: BTreeMap<String, Price>,
}

/// `[llm]` of the plan.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct LlmSettings {
    pub providers: BTreeMap<String, ProviderSpec>,
}

/// An LLM agent: which model of which provider, how many turns. The tools it may call are
/// the agent's `tools` globs, which every kind of agent has (`AgentSpec::tools`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LlmSpec {
    /// The provider's name (shown, as in `baton.toml`), and a copy of its spec.
    #[serde(serialize_with = "provider_name")]
    pub provider: ProviderSpec,
    pub model: String,
    pub max_turns: u32,
    /// Output tokens asked for per turn.
    pub max_tokens: u32,
    /// Where `provider` is written, for errors found later (its key is not set).
    #[serde(skip)]
    pub provider_location: Location,
}

fn provider_name<S: serde::Serializer>(provider: &ProviderSpec, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&provider.name)
}

impl LlmSpec {
    /// Whether a runtime built from `self` is the one `other` needs: everything but where the
    /// provider is written.
    pub fn same_runtime(&self, other: &LlmSpec) -> bool {
        LlmSpec { provider_location: Location::default(), ..self.clone() }
            == LlmSpec { provider_location: Location::default(), ..other.clone() }
    }
}

/// `[llm]` as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLlm {
    #[serde(default)]
    providers: BTreeMap<String, Spanned<RawProvider>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    kind: Spanned<ProviderKind>,
    base_url: Option<Spanned<String>>,
    api_key_env: Option<Spanned<String>>,
    #[serde(default)]
    prices: BTreeMap<String, Price>,
}

impl Validator<'_> {
    /// `[llm.providers.*]`.
    pub(super) fn llm(&mut self, raw: &RawLlm) -> LlmSettings {
        let mut providers = BTreeMap::new();
        for (name, provider) in &raw.providers {
            let span = provider.span();
            let provider = provider.get_ref();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_')) {
                self.error(span.clone(), format!("invalid provider name `{name}`: use letters, digits, `-` and `_`"));
            }
            let kind = *provider.kind.get_ref();
            let base_url = match &provider.base_url {
                Some(url) => {
                    let expanded = self.expand(url);
                    if !(expanded.starts_with("http://") || expanded.starts_with("https://")) {
                        self.error(
                            url.span(),
                            format!(
                                "`base_url` must be an http:// or https:// URL, e.g. \"{}\"",
                                kind.default_base_url()
                            ),
                        );
                    }
                    expanded
                }
                None => kind.default_base_url().to_string(),
            };
            let api_key_env = provider.api_key_env.as_ref().map(|var| {
                let text = var.get_ref();
                if text.is_empty() || !text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    self.error(
                        var.span(),
                        "`api_key_env` names an environment variable (e.g. \"ANTHROPIC_API_KEY\"), not the key itself",
                    );
                }
                text.clone()
            });
            for (model, price) in &provider.prices {
                let prices = [Some(price.input), Some(price.output), price.cache_read, price.cache_write];
                if prices.into_iter().flatten().any(|price| !(price.is_finite() && price >= 0.0)) {
                    self.error(span.clone(), format!("prices of `{model}` must be 0 or more (USD per million tokens)"));
                }
            }
            providers.insert(
                name.clone(),
                ProviderSpec {
                    name: name.clone(),
                    kind,
                    base_url: base_url.trim_end_matches('/').to_string(),
                    api_key_env,
                    prices: provider.prices.clone(),
                },
            );
        }
        LlmSettings { providers }
    }

    /// An LLM agent's spec. Keys of process agents (`command`, `mode`, `env`…) are refused.
    pub(super) fn llm_agent(&mut self, agent: &RawAgent, agent_span: Range<usize>) -> LlmSpec {
        let process_keys = [
            ("command", agent.command.as_ref().map(Spanned::span)),
            ("mode", agent.mode.as_ref().map(Spanned::span)),
            ("workdir", agent.workdir.as_ref().map(Spanned::span)),
        ];
        for (key, span) in process_keys {
            if let Some(span) = span {
                self.error(span, format!("`{key}` applies only to process agents: remove it from this LLM agent"));
            }
        }
        if !agent.env.is_empty() {
            self.error(agent_span.clone(), "`env` applies only to process agents: remove it from this LLM agent");
        }
        let known: Vec<String> = self.llm_providers.keys().cloned().collect();
        let provider = match &agent.provider {
            None => {
                self.error(
                    agent_span.clone(),
                    "missing field `provider`: name one of [llm.providers], e.g. provider = \"claude\"",
                );
                None
            }
            Some(name) => {
                let expanded = self.expand(name);
                match self.llm_providers.get(&expanded) {
                    Some(provider) => Some(provider.clone()),
                    None if known.is_empty() => {
                        self.error(
                            name.span(),
                            format!("unknown provider `{expanded}`: declare it in [llm.providers.{expanded}] with kind = \"anthropic\" or \"openai\""),
                        );
                        None
                    }
                    None => {
                        let known: Vec<&str> = known.iter().map(String::as_str).collect();
                        self.error(name.span(), unknown("provider", &expanded, &known));
                        None
                    }
                }
            }
        };
        let model = match &agent.model {
            None => {
                self.error(agent_span.clone(), "missing field `model`, e.g. model = \"claude-sonnet-4-5\"");
                String::new()
            }
            Some(model) => {
                let expanded = self.expand(model);
                if expanded.trim().is_empty() {
                    self.error(model.span(), "`model` must not be empty, e.g. \"claude-sonnet-4-5\"");
                }
                expanded
            }
        };
        let max_turns = match &agent.max_turns {
            Some(turns) if !(1..=MAX_TURNS_LIMIT).contains(turns.get_ref()) => {
                self.error(turns.span(), format!("`max_turns` must be between 1 and {MAX_TURNS_LIMIT}"));
                DEFAULT_MAX_TURNS
            }
            Some(turns) => *turns.get_ref(),
            None => DEFAULT_MAX_TURNS,
        };
        let max_tokens = match &agent.max_tokens {
            Some(tokens) if *tokens.get_ref() == 0 => {
                self.error(tokens.span(), "`max_tokens` must be at least 1");
                DEFAULT_MAX_TOKENS
            }
            Some(tokens) => *tokens.get_ref(),
            None => DEFAULT_MAX_TOKENS,
        };
        let provider = provider.unwrap_or_else(|| ProviderSpec {
            name: String::new(),
            kind: ProviderKind::Anthropic,
            base_url: String::new(),
            api_key_env: None,
            prices: BTreeMap::new(),
        });
        let provider_location = self.locator.locate(agent.provider.as_ref().map_or(agent_span, Spanned::span));
        LlmSpec { provider, model, max_turns, max_tokens, provider_location }
    }

    /// The keys only LLM agents have, refused on other agents.
    pub(super) fn refuse_llm_keys(&mut self, agent: &RawAgent) {
        let keys = [
            ("provider", agent.provider.as_ref().map(Spanned::span)),
            ("model", agent.model.as_ref().map(Spanned::span)),
            ("max_turns", agent.max_turns.as_ref().map(Spanned::span)),
            ("max_tokens", agent.max_tokens.as_ref().map(Spanned::span)),
        ];
        for (key, span) in keys {
            if let Some(span) = span {
                self.error(
                    span,
                    format!("`{key}` applies only to LLM agents: add runtime = \"llm\" or remove `{key}`"),
                );
            }
        }
    }
}
