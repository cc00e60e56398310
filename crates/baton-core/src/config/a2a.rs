//! `[a2a]`: the A2A server's settings. `push_hosts` names the hosts a client may ask push
//! notifications to be sent to (a webhook's URL must be on one of them); none by default, so
//! that a client cannot make the server post to any address it can reach.

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::Validator;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawA2a {
    #[serde(default)]
    push_hosts: Vec<Spanned<String>>,
}

/// `[a2a]`, validated.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct A2aSettings {
    /// The hosts (names or addresses, lowercase, no port) push notifications may go to.
    pub push_hosts: Vec<String>,
}

impl A2aSettings {
    /// Whether a webhook on `host` may be sent push notifications.
    pub fn allows_push_host(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        self.push_hosts.contains(&host)
    }
}

impl Validator<'_> {
    pub(super) fn a2a_settings(&mut self, raw: &RawA2a) -> A2aSettings {
        let mut push_hosts = Vec::new();
        for host in &raw.push_hosts {
            let name = host.get_ref().trim().trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
            let plain = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '_'))
                && (name.contains("::") || !name.contains(':'));
            if plain {
                push_hosts.push(name);
            } else {
                self.error(
                    host.span(),
                    format!(
                        "invalid push host `{}`: write a host name or address alone, without scheme, port or path (e.g. \"hooks.example.com\")",
                        host.get_ref()
                    ),
                );
            }
        }
        A2aSettings { push_hosts }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_match_without_case_or_brackets() {
        let settings = A2aSettings { push_hosts: vec!["127.0.0.1".into(), "hooks.example.com".into(), "::1".into()] };
        assert!(settings.allows_push_host("HOOKS.example.com"));
        assert!(settings.allows_push_host("[::1]"));
        assert!(!settings.allows_push_host("evil.example.com"));
        assert!(!A2aSettings::default().allows_push_host("127.0.0.1"));
    }
}
