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
    /// The hosts push notifications may go to, as written but normalised: a name (lowercase)
    /// or an address, alone (any port) or with a port (`hooks.example.com:443`,
    /// `[::1]:8080`).
    pub push_hosts: Vec<String>,
}

impl A2aSettings {
    /// Whether a webhook on `host` and `port` may be sent push notifications: an entry names
    /// the host (addresses compared as addresses, `::1` = `0:0::1`) and, if it has a port,
    /// that port.
    pub fn allows_push(&self, host: &str, port: u16) -> bool {
        let host = normal_host(host);
        self.push_hosts.iter().filter_map(|entry| parse_entry(entry)).any(|(allowed, allowed_port)| {
            allowed == host && allowed_port.is_none_or(|allowed_port| allowed_port == port)
        })
    }
}

/// A host as compared: an IP address in its canonical form, a name in lowercase.
fn normal_host(host: &str) -> String {
    let bare = host.trim().trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => bare.to_ascii_lowercase(),
    }
}

/// An entry of `push_hosts`: (host, port if written); `None` if it is not a plain host with
/// an optional port.
fn parse_entry(entry: &str) -> Option<(String, Option<u16>)> {
    let entry = entry.trim();
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        // `[v6]` or `[v6]:port`
        let (host, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            after => Some(after.strip_prefix(':')?.parse::<u16>().ok()?),
        };
        (host, port)
    } else if entry.parse::<std::net::Ipv6Addr>().is_ok() {
        (entry, None)
    } else {
        match entry.split_once(':') {
            Some((host, port)) => (host, Some(port.parse::<u16>().ok()?)),
            None => (entry, None),
        }
    };
    let plain = !host.is_empty()
        && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '_'))
        && (!host.contains(':') || host.parse::<std::net::Ipv6Addr>().is_ok());
    plain.then(|| (normal_host(host), port))
}

impl Validator<'_> {
    pub(super) fn a2a_settings(&mut self, raw: &RawA2a) -> A2aSettings {
        let mut push_hosts = Vec::new();
        for host in &raw.push_hosts {
            match parse_entry(host.get_ref()) {
                Some((name, Some(port))) if name.contains(':') => push_hosts.push(format!("[{name}]:{port}")),
                Some((name, Some(port))) => push_hosts.push(format!("{name}:{port}")),
                Some((name, None)) => push_hosts.push(name),
                None => self.error(
                    host.span(),
                    format!(
                        "invalid push host `{}`: write a host name or address, with a port or without (any port), and no scheme or path (e.g. \"hooks.example.com:443\")",
                        host.get_ref()
                    ),
                ),
            }
        }
        A2aSettings { push_hosts }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_match_without_case_or_brackets_and_ports_when_written() {
        let push_hosts = vec!["127.0.0.1:8080".into(), "hooks.example.com".into(), "0:0::1".into(), "[::2]:443".into()];
        let settings = A2aSettings { push_hosts };
        assert!(settings.allows_push("HOOKS.example.com", 443));
        assert!(settings.allows_push("hooks.example.com", 8443), "no port written: any port");
        assert!(settings.allows_push("[::1]", 80), "addresses compared as addresses");
        assert!(settings.allows_push("127.0.0.1", 8080));
        assert!(!settings.allows_push("127.0.0.1", 6379), "only the port written");
        assert!(settings.allows_push("[::2]", 443) && !settings.allows_push("[::2]", 80));
        assert!(!settings.allows_push("evil.example.com", 443));
        assert!(!A2aSettings::default().allows_push("127.0.0.1", 80));
        assert_eq!(parse_entry("http://x/y"), None);
        assert_eq!(parse_entry("x:notaport"), None);
        assert_eq!(parse_entry("[::1]:99"), Some(("::1".into(), Some(99))));
    }
}
