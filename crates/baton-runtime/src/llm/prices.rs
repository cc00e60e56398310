//! What a turn costs: the provider's `prices` for the model when the configuration gives them,
//! else these defaults for well-known models (US dollars per million tokens, the vendors'
//! list prices of late 2025). The defaults are a convenience, not a promise: set
//! `[llm.providers.NAME.prices]` to override them. A model found in neither costs 0.

use baton_core::config::{Price, ProviderSpec};

use super::wire::TokenUsage;

const fn price(input: f64, output: f64, cache_read: f64, cache_write: f64) -> Price {
    Price { input, output, cache_read: Some(cache_read), cache_write: Some(cache_write) }
}

/// Defaults by model-name prefix; the longest prefix that matches wins (`claude-opus-4-5`
/// before `claude-opus-4`), so that dated names (`claude-sonnet-4-5-20250929`) are found.
pub const DEFAULT_PRICES: &[(&str, Price)] = &[
    ("claude-opus-4-5", price(5.0, 25.0, 0.5, 6.25)),
    ("claude-opus-4", price(15.0, 75.0, 1.5, 18.75)),
    ("claude-sonnet-4", price(3.0, 15.0, 0.3, 3.75)),
    ("claude-3-7-sonnet", price(3.0, 15.0, 0.3, 3.75)),
    ("claude-haiku-4-5", price(1.0, 5.0, 0.1, 1.25)),
    ("claude-3-5-haiku", price(0.8, 4.0, 0.08, 1.0)),
    ("gpt-4o-mini", price(0.15, 0.6, 0.075, 0.15)),
    ("gpt-4o", price(2.5, 10.0, 1.25, 2.5)),
    ("gpt-4.1-nano", price(0.1, 0.4, 0.025, 0.1)),
    ("gpt-4.1-mini", price(0.4, 1.6, 0.1, 0.4)),
    ("gpt-4.1", price(2.0, 8.0, 0.5, 2.0)),
    ("gpt-5-nano", price(0.05, 0.4, 0.005, 0.05)),
    ("gpt-5-mini", price(0.25, 2.0, 0.025, 0.25)),
    ("gpt-5", price(1.25, 10.0, 0.125, 1.25)),
];

/// The price of `model` at `provider`, if one is known.
pub fn price_of(provider: &ProviderSpec, model: &str) -> Option<Price> {
    if let Some(price) = provider.prices.get(model) {
        return Some(*price);
    }
    DEFAULT_PRICES
        .iter()
        .filter(|(prefix, _)| model.starts_with(prefix))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(_, price)| *price)
}

/// The cost of a turn's tokens, in US dollars.
pub(crate) fn cost(price: Option<Price>, usage: &TokenUsage) -> f64 {
    let Some(price) = price else { return 0.0 };
    let per_token = |per_million: f64| per_million / 1_000_000.0;
    usage.input as f64 * per_token(price.input)
        + usage.output as f64 * per_token(price.output)
        + usage.cache_read as f64 * per_token(price.cache_read.unwrap_or(price.input))
        + usage.cache_write as f64 * per_token(price.cache_write.unwrap_or(price.input))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn the_longest_prefix_wins_and_the_configuration_overrides() {
        let mut provider = ProviderSpec {
            name: "claude".into(),
            kind: baton_core::config::ProviderKind::Anthropic,
            base_url: String::new(),
            api_key_env: None,
            prices: BTreeMap::new(),
        };
        assert_eq!(price_of(&provider, "claude-opus-4-5-20251101").unwrap().input, 5.0);
        assert_eq!(price_of(&provider, "claude-opus-4-1").unwrap().input, 15.0);
        assert_eq!(price_of(&provider, "gpt-4o-mini-2024").unwrap().input, 0.15);
        assert_eq!(price_of(&provider, "llama3"), None);
        let usage = TokenUsage { input: 1_000_000, output: 1_000_000, cache_read: 1_000_000, cache_write: 0 };
        assert!((cost(price_of(&provider, "claude-sonnet-4-5"), &usage) - 18.3).abs() < 1e-9);
        provider.prices.insert("llama3".into(), Price { input: 1.0, output: 2.0, cache_read: None, cache_write: None });
        assert!((cost(price_of(&provider, "llama3"), &usage) - 4.0).abs() < 1e-9);
    }
}
