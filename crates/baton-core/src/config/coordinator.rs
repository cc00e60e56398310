//! `[coordinator]`: who turns objectives into tasks and triages failed ones — the rules
//! (default) or a model (`mode = "llm"`), which falls back to the rules on any failure.
//!
//! `[orchestration] coordinator = "rules" | "llm"` is the short form and sets the mode; the
//! table's `mode`, when written, wins. A model needs a provider of `[llm.providers]` and a
//! model; without a provider (or without its key, which only the runtime can see) the
//! coordinator is the rules, and the run says so once with a `CoordinatorFallback` event.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::diagnostics::unknown;
use super::{Coordinator, Location, ProviderSpec, Validator};
use crate::time::DurationStr;

/// How long the coordinator waits for a model when `timeout` is not set.
pub const DEFAULT_COORDINATOR_TIMEOUT: Duration = Duration::from_secs(60);
/// Output tokens asked of the coordinator's model when `max_tokens` is not set.
pub const DEFAULT_COORDINATOR_MAX_TOKENS: u32 = 4096;

/// The coordinator, validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CoordinatorSpec {
    pub mode: Coordinator,
    /// A copy of the provider's spec; `None` when none is named (the rules decide).
    #[serde(serialize_with = "provider_name")]
    pub provider: Option<ProviderSpec>,
    pub model: String,
    #[serde(with = "crate::time::humane")]
    pub timeout: Duration,
    pub max_tokens: u32,
    /// Whether the model chooses among several agents that can take a task (llm mode;
    /// `assign = false` leaves every choice to the rules).
    pub assign: bool,
    /// Where `[coordinator]` (or `provider`) is written, for what the shell finds missing.
    #[serde(skip)]
    pub location: Location,
}

fn provider_name<S: serde::Serializer>(provider: &Option<ProviderSpec>, serializer: S) -> Result<S::Ok, S::Error> {
    match provider {
        Some(provider) => serializer.serialize_some(&provider.name),
        None => serializer.serialize_none(),
    }
}

impl Default for CoordinatorSpec {
    fn default() -> Self {
        CoordinatorSpec {
            mode: Coordinator::Rules,
            provider: None,
            model: String::new(),
            timeout: DEFAULT_COORDINATOR_TIMEOUT,
            max_tokens: DEFAULT_COORDINATOR_MAX_TOKENS,
            assign: true,
            location: Location::default(),
        }
    }
}

impl CoordinatorSpec {
    /// Whether a model is asked (the mode is `llm`); it may still fall back.
    pub fn is_llm(&self) -> bool {
        self.mode == Coordinator::Llm
    }

    /// Whether the model is asked to choose among agents (llm mode with `assign` on).
    pub fn assigns(&self) -> bool {
        self.is_llm() && self.assign
    }
}

/// `[coordinator]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCoordinator {
    mode: Option<Coordinator>,
    provider: Option<Spanned<String>>,
    model: Option<Spanned<String>>,
    timeout: Option<Spanned<DurationStr>>,
    max_tokens: Option<Spanned<u32>>,
    assign: Option<bool>,
}

impl Validator<'_> {
    /// `[coordinator]`, with the mode `[orchestration] coordinator` set (the table's wins).
    pub(super) fn coordinator(
        &mut self,
        raw: Option<&Spanned<RawCoordinator>>,
        orchestration_mode: Option<Coordinator>,
    ) -> CoordinatorSpec {
        let defaults = CoordinatorSpec::default();
        let Some(table) = raw else {
            return CoordinatorSpec { mode: orchestration_mode.unwrap_or_default(), ..defaults };
        };
        let span = table.span();
        let table = table.get_ref();
        let mode = table.mode.or(orchestration_mode).unwrap_or_default();
        let provider = table.provider.as_ref().and_then(|name| self.coordinator_provider(name));
        let model = match &table.model {
            Some(model) => {
                let expanded = self.expand(model);
                if expanded.trim().is_empty() {
                    self.error(model.span(), "`model` must not be empty, e.g. \"claude-sonnet-4-5\"");
                }
                expanded
            }
            None => {
                if table.provider.is_some() {
                    self.error(
                        span.clone(),
                        "missing field `model` in [coordinator], e.g. model = \"claude-sonnet-4-5\"",
                    );
                }
                String::new()
            }
        };
        let timeout = match &table.timeout {
            Some(timeout) if timeout.get_ref().0.is_zero() => {
                self.error(timeout.span(), "`timeout` must be more than 0, e.g. \"60s\"");
                defaults.timeout
            }
            Some(timeout) => timeout.get_ref().0,
            None => defaults.timeout,
        };
        let max_tokens = match &table.max_tokens {
            Some(tokens) if *tokens.get_ref() == 0 => {
                self.error(tokens.span(), "`max_tokens` must be at least 1");
                defaults.max_tokens
            }
            Some(tokens) => *tokens.get_ref(),
            None => defaults.max_tokens,
        };
        let location = self.locator.locate(table.provider.as_ref().map_or(span, Spanned::span));
        let assign = table.assign.unwrap_or(defaults.assign);
        CoordinatorSpec { mode, provider, model, timeout, max_tokens, assign, location }
    }

    /// The provider `[coordinator]` names: one of `[llm.providers]`, else an error that says
    /// which exist.
    fn coordinator_provider(&mut self, name: &Spanned<String>) -> Option<ProviderSpec> {
        let expanded = self.expand(name);
        if let Some(provider) = self.llm_providers.get(&expanded) {
            return Some(provider.clone());
        }
        let known: Vec<String> = self.llm_providers.keys().cloned().collect();
        let message = if known.is_empty() {
            format!(
                "unknown provider `{expanded}`: declare it in [llm.providers.{expanded}] with kind = \"anthropic\" or \"openai\""
            )
        } else {
            let known: Vec<&str> = known.iter().map(String::as_str).collect();
            unknown("provider", &expanded, &known)
        };
        self.error(name.span(), message);
        None
    }
}
