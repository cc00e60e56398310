//! An A2A Agent Card, as much of it as Baton needs: the JSON-RPC endpoint of A2A 1.0, whether
//! the agent streams, and its skills (the capabilities of an agent whose config sets none).

use serde_json::Value;

/// What Baton calls: where, and how it follows a task there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// The JSON-RPC endpoint.
    pub url: String,
    /// The card says `capabilities.streaming`.
    pub streaming: bool,
    /// The agent's name, for logs.
    pub name: String,
    /// Its skills' ids and tags, sorted, once each: what it can do, as capabilities.
    pub skills: Vec<String>,
}

/// The card at `url` read from `text`, or why it cannot be used (permanent: the same card
/// will not do better).
pub fn parse(url: &str, text: &str) -> Result<Remote, String> {
    let card: Value =
        serde_json::from_str(text).map_err(|error| format!("the agent card at {url} is not JSON: {error}"))?;
    let Some(interfaces) = card.get("supportedInterfaces").and_then(Value::as_array) else {
        return Err(format!(
            "the agent card at {url} has no `supportedInterfaces`: it is not an A2A 1.0 card (Baton speaks A2A 1.0)"
        ));
    };
    let offered: Vec<String> = interfaces
        .iter()
        .map(|interface| {
            format!(
                "{} {}",
                interface.get("protocolBinding").and_then(Value::as_str).unwrap_or("?"),
                interface.get("protocolVersion").and_then(Value::as_str).unwrap_or("?")
            )
        })
        .collect();
    let jsonrpc = interfaces.iter().find(|interface| {
        interface.get("protocolBinding").and_then(Value::as_str) == Some("JSONRPC")
            && interface
                .get("protocolVersion")
                .and_then(Value::as_str)
                .is_some_and(|version| version == "1" || version.starts_with("1."))
    });
    let Some(jsonrpc) = jsonrpc else {
        return Err(format!(
            "the agent card at {url} offers no JSON-RPC interface of A2A 1.0 (it offers: {}); Baton calls A2A agents over JSON-RPC",
            if offered.is_empty() { "nothing".to_string() } else { offered.join(", ") }
        ));
    };
    let Some(endpoint) = jsonrpc.get("url").and_then(Value::as_str).filter(|endpoint| !endpoint.is_empty()) else {
        return Err(format!("the agent card at {url}: its JSON-RPC interface has no `url`"));
    };
    let streaming =
        card.get("capabilities").and_then(|capabilities| capabilities.get("streaming")).and_then(Value::as_bool);
    Ok(Remote {
        url: endpoint.to_string(),
        streaming: streaming == Some(true),
        name: card.get("name").and_then(Value::as_str).unwrap_or("").to_string(),
        skills: skills(&card),
    })
}

/// The most capabilities taken from one card, and the longest name kept.
const MAX_SKILL_NAMES: usize = 256;
const MAX_SKILL_NAME_LEN: usize = 100;

/// A card's skills as capabilities: each skill's `id` and its `tags`, trimmed, without blanks
/// or control characters, sorted and once each.
fn skills(card: &Value) -> Vec<String> {
    let Some(skills) = card.get("skills").and_then(Value::as_array) else { return Vec::new() };
    let mut names = std::collections::BTreeSet::new();
    for skill in skills {
        let id = skill.get("id").and_then(Value::as_str);
        let tags = skill.get("tags").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str);
        for name in id.into_iter().chain(tags) {
            let name = name.trim();
            if !name.is_empty() && name.chars().count() <= MAX_SKILL_NAME_LEN && !name.chars().any(char::is_control) {
                names.insert(name.to_string());
            }
        }
    }
    names.into_iter().take(MAX_SKILL_NAMES).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_card_gives_its_json_rpc_endpoint() {
        let card = r#"{"name": "far", "supportedInterfaces": [
            {"url": "http://far/grpc", "protocolBinding": "GRPC", "protocolVersion": "1.0"},
            {"url": "http://far/rpc", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}],
            "capabilities": {"streaming": true}}"#;
        let remote = parse("http://far/card", card).unwrap();
        assert_eq!((remote.url.as_str(), remote.streaming), ("http://far/rpc", true));
        assert!(remote.skills.is_empty());
    }

    #[test]
    fn skills_give_ids_and_tags() {
        let card = r#"{"supportedInterfaces": [{"url": "u", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}],
            "skills": [{"id": "echo", "tags": ["text", " echo ", ""]}, {"id": "sum", "tags": ["math"]}, {"tags": [7]}]}"#;
        let remote = parse("http://far/card", card).unwrap();
        assert_eq!(remote.skills, ["echo", "math", "sum", "text"]);
    }

    #[test]
    fn cards_baton_cannot_use_say_why() {
        let cases = [
            ("not json", "is not JSON"),
            (r#"{"url": "http://far", "protocolVersion": "0.3.0"}"#, "not an A2A 1.0 card"),
            (
                r#"{"supportedInterfaces": [{"url": "u", "protocolBinding": "GRPC", "protocolVersion": "1.0"}]}"#,
                "offers no JSON-RPC interface of A2A 1.0 (it offers: GRPC 1.0)",
            ),
            (r#"{"supportedInterfaces": [{"protocolBinding": "JSONRPC", "protocolVersion": "1.0"}]}"#, "has no `url`"),
        ];
        for (card, expected) in cases {
            let error = parse("http://far/card", card).unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
    }
}
