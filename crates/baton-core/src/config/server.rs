//! `[server]` and `[auth]`: where `baton serve` listens, how it is reached, and who may call it.
//!
//! The secret that signs tokens is never in the file: `auth.secret_env` names the environment
//! variable that holds it. A server listening beyond loopback without `[auth]` is refused, so
//! that the API is never open to the network by accident.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::Validator;
use crate::time::{DurationStr, SizeStr};

/// Where the API listens when `server.listen` is not set.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The largest request body the API accepts when `server.max_request_size` is not set.
pub const DEFAULT_MAX_REQUEST_SIZE: u64 = 1024 * 1024;
/// `auth.rate_limit` when it is not set: requests per second per token, and the burst.
pub const DEFAULT_RATE_LIMIT: RateLimit = RateLimit { per_second: 50, burst: 100 };
/// How long an issued token lasts when `auth.token_ttl` is not set.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 60 * 60);

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) url: Option<Spanned<String>>,
    max_request_size: Option<Spanned<SizeStr>>,
    tls: Option<Spanned<RawTls>>,
    reload: Option<bool>,
    rate_limit: Option<Spanned<RawRateLimit>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    per_second: Option<Spanned<i64>>,
    burst: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    pub(super) secret_env: Option<Spanned<String>>,
    rate_limit: Option<Spanned<RawRateLimit>>,
    token_ttl: Option<Spanned<DurationStr>>,
}

/// `[server]`, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerSpec {
    /// `HOST:PORT` the API binds to (`127.0.0.1:8080` by default).
    pub listen: String,
    /// How the CLI and agents reach the server: `http://` + `listen` by default (`https://`
    /// with `tls`).
    pub url: String,
    /// The largest request body accepted, in bytes (`"1MiB"` by default).
    pub max_request_size: u64,
    /// Serve HTTPS with this certificate and key.
    pub tls: Option<TlsSpec>,
    /// Whether `baton serve` reloads `baton.toml` when it changes (true by default).
    pub reload: bool,
    /// Requests per client IP address, when set.
    pub rate_limit: Option<RateLimit>,
}

impl Default for ServerSpec {
    fn default() -> Self {
        ServerSpec {
            listen: DEFAULT_LISTEN.to_string(),
            url: format!("http://{DEFAULT_LISTEN}"),
            max_request_size: DEFAULT_MAX_REQUEST_SIZE,
            tls: None,
            reload: true,
            rate_limit: None,
        }
    }
}

/// `server.tls`: PEM files, relative to the configuration file's directory, kept as written
/// (after `${VAR}` expansion); the shell resolves and reads them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsSpec {
    pub cert: String,
    pub key: String,
}

/// A token bucket: `per_second` refill, up to `burst` requests at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

/// `[auth]`, validated: bearer tokens (JWT, HS256) for the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthSpec {
    /// The name of the environment variable that holds the HS256 secret (not the secret).
    pub secret_env: String,
    /// Requests per token.
    pub rate_limit: RateLimit,
    /// How long an issued token lasts.
    pub token_ttl: Duration,
}

/// Whether `listen` (`HOST:PORT`, or a bare host) is a loopback address: `127.0.0.0/8`, `::1`
/// or `localhost`.
pub fn is_loopback(listen: &str) -> bool {
    if let Ok(addr) = listen.parse::<SocketAddr>() {
        return addr.ip().is_loopback();
    }
    if let Ok(ip) = listen.parse::<IpAddr>() {
        return ip.is_loopback();
    }
    let host = match listen.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => listen,
    };
    let host = host.strip_prefix('[').and_then(|host| host.strip_suffix(']')).unwrap_or(host);
    if let Ok(ip) = host.parse::<IpAddr>() {
        return ip.is_loopback();
    }
    host.eq_ignore_ascii_case("localhost")
}

/// Whether `listen` is written `HOST:PORT` with a port number.
fn has_port(listen: &str) -> bool {
    listen.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

impl Validator<'_> {
    pub(super) fn server(&mut self, raw: &RawServer, has_auth: bool) -> ServerSpec {
        let defaults = ServerSpec::default();
        let listen = match &raw.listen {
            Some(listen) => {
                let expanded = self.expand(listen);
                if !has_port(&expanded) {
                    self.error(
                        listen.span(),
                        format!(
                            "server.listen `{expanded}` is not an address: write HOST:PORT, e.g. \"{DEFAULT_LISTEN}\""
                        ),
                    );
                } else if !has_auth && !is_loopback(&expanded) {
                    self.error(
                        listen.span(),
                        format!(
                            "server.listen `{expanded}` is not a loopback address: add an [auth] section so that the API is not open to the network"
                        ),
                    );
                }
                expanded
            }
            None => defaults.listen,
        };
        let tls = raw.tls.as_ref().and_then(|tls| self.tls(tls));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = match &raw.url {
            Some(url) => {
                let expanded = self.expand(url);
                let rest = expanded.strip_prefix("http://").or_else(|| expanded.strip_prefix("https://"));
                if rest.is_none_or(|rest| rest.is_empty()) {
                    self.error(
                        url.span(),
                        format!(
                            "server.url `{expanded}` is not an HTTP address: write e.g. \"http://{DEFAULT_LISTEN}\" or \"https://baton.example.com\""
                        ),
                    );
                }
                expanded.trim_end_matches('/').to_string()
            }
            None => format!("{scheme}://{listen}"),
        };
        let max_request_size = match &raw.max_request_size {
            Some(size) if size.get_ref().0 == 0 => {
                self.error(size.span(), "`server.max_request_size` must be more than 0, e.g. \"1MiB\"");
                defaults.max_request_size
            }
            Some(size) => size.get_ref().0,
            None => defaults.max_request_size,
        };
        let rate_limit = raw.rate_limit.as_ref().map(|limit| self.rate_limit("server.rate_limit", limit));
        ServerSpec { listen, url, max_request_size, tls, reload: raw.reload.unwrap_or(defaults.reload), rate_limit }
    }

    fn tls(&mut self, raw: &Spanned<RawTls>) -> Option<TlsSpec> {
        let tls = raw.get_ref();
        let (Some(cert), Some(key)) = (&tls.cert, &tls.key) else {
            self.error(
                raw.span(),
                "`server.tls` needs both `cert` and `key`, e.g. { cert = \"tls/cert.pem\", key = \"tls/key.pem\" }",
            );
            return None;
        };
        let cert = self.path("server.tls.cert", cert);
        let key = self.path("server.tls.key", key);
        Some(TlsSpec { cert, key })
    }

    fn path(&mut self, key: &str, raw: &Spanned<String>) -> String {
        let expanded = self.expand(raw);
        if expanded.trim().is_empty() {
            self.error(raw.span(), format!("`{key}` must name a file"));
        }
        expanded
    }

    fn rate_limit(&mut self, key: &str, raw: &Spanned<RawRateLimit>) -> RateLimit {
        let limit = raw.get_ref();
        if limit.per_second.is_none() && limit.burst.is_none() {
            self.error(
                raw.span(),
                format!("`{key}` needs `per_second` and `burst`, e.g. {{ per_second = 50, burst = 100 }}"),
            );
        }
        let per_second = self.positive(&format!("{key}.per_second"), limit.per_second.as_ref());
        let burst = self.positive(&format!("{key}.burst"), limit.burst.as_ref());
        RateLimit {
            per_second: per_second.unwrap_or(DEFAULT_RATE_LIMIT.per_second),
            burst: burst.unwrap_or(DEFAULT_RATE_LIMIT.burst),
        }
    }

    /// A count that must be at least 1 and fit in a `u32`; `None` when absent or wrong.
    fn positive(&mut self, key: &str, value: Option<&Spanned<i64>>) -> Option<u32> {
        let value = value?;
        match u32::try_from(*value.get_ref()) {
            Ok(count) if count > 0 => Some(count),
            _ => {
                self.error(value.span(), format!("`{key}` must be at least 1, e.g. 50"));
                None
            }
        }
    }

    pub(super) fn auth(&mut self, raw: &Spanned<RawAuth>) -> AuthSpec {
        let auth = raw.get_ref();
        let secret_env = match &auth.secret_env {
            Some(name) => {
                let text = name.get_ref();
                let valid = !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    self.error(
                        name.span(),
                        format!(
                            "auth.secret_env `{text}` is not an environment variable name: write the variable's name, e.g. \"BATON_JWT_SECRET\", not the secret"
                        ),
                    );
                }
                // Whether the variable is set is checked where the secret is needed (`baton
                // serve`, `baton token create`), not here: reading the store needs no secret.
                text.clone()
            }
            None => {
                self.error(
                    raw.span(),
                    "[auth] needs `secret_env`, the name of the environment variable holding the token secret, e.g. secret_env = \"BATON_JWT_SECRET\"",
                );
                String::new()
            }
        };
        let rate_limit =
            auth.rate_limit.as_ref().map_or(DEFAULT_RATE_LIMIT, |limit| self.rate_limit("auth.rate_limit", limit));
        let token_ttl = match &auth.token_ttl {
            Some(ttl) if ttl.get_ref().0.is_zero() => {
                self.error(ttl.span(), "`auth.token_ttl` must be more than 0s, e.g. \"24h\"");
                DEFAULT_TOKEN_TTL
            }
            Some(ttl) => ttl.get_ref().0,
            None => DEFAULT_TOKEN_TTL,
        };
        AuthSpec { secret_env, rate_limit, token_ttl }
    }
}
