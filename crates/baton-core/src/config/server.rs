//! `[server]` and `[auth]`: where `baton serve` listens, how it is reached, and who may call it.
//!
//! The secret that signs tokens is never in the file: `auth.secret_env` names the environment
//! variable that holds it. A server listening beyond loopback without `[auth]` is refused, so
//! that the API is never open to the network by accident.

use std::collections::BTreeMap;
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
/// Connections the API holds open at once when `server.max_connections` is not set; more wait
/// to be accepted.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 4096;
/// How long a client may take to send a request's headers, or between two parts of its body,
/// when `server.header_timeout` is not set.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may pass no bytes either way before it is closed, when
/// `server.idle_timeout` is not set. Longer than the longest claim long-poll (60 s); event
/// streams send a keep-alive every 15 s.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
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
    max_connections: Option<Spanned<i64>>,
    header_timeout: Option<Spanned<DurationStr>>,
    idle_timeout: Option<Spanned<DurationStr>>,
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
    /// Connections held open at once; more wait to be accepted.
    pub max_connections: u32,
    /// The longest a client may take to send a request's headers, or between two parts of its
    /// body.
    #[serde(with = "crate::time::humane")]
    pub header_timeout: Duration,
    /// A connection that passes no bytes either way for this long is closed.
    #[serde(with = "crate::time::humane")]
    pub idle_timeout: Duration,
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
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
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
    /// Where `secret_env` is written, for errors about the secret found later (unset, short).
    #[serde(skip)]
    #[serde(skip_serializing_if = "super::Location::has_no_line")]
    pub secret_env_location: super::Location,
    /// Requests per token.
    pub rate_limit: RateLimit,
    /// How long an issued token lasts.
    #[serde(with = "crate::time::humane")]
    pub token_ttl: Duration,
}

/// The longest a token may last: a longer time would overflow an expiry in seconds, and no
/// credential should outlive a decade.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(3650 * 24 * 3600);

/// The shortest token secret Baton accepts: HS256 is as strong as its key, and a short one
/// can be guessed offline from any token.
pub const MIN_SECRET_BYTES: usize = 32;

impl AuthSpec {
    /// The token secret from `env`, or why it is not usable: unset, empty, or shorter than
    /// [`MIN_SECRET_BYTES`]. `baton check` reports this; `baton serve` and `baton token create`
    /// refuse to start without a usable secret.
    pub fn secret<'env>(&self, env: &'env BTreeMap<String, String>) -> Result<&'env str, super::Diagnostic> {
        let name = &self.secret_env;
        let problem = match env.get(name) {
            None => format!(
                "auth.secret_env names `{name}`, which is not set: export it with the token secret, a random string of at least {MIN_SECRET_BYTES} bytes (e.g. `openssl rand -hex 32`)"
            ),
            Some(secret) if secret.is_empty() => format!(
                "auth.secret_env names `{name}`, which is empty: set it to a random string of at least {MIN_SECRET_BYTES} bytes (e.g. `openssl rand -hex 32`)"
            ),
            Some(secret) if secret.len() < MIN_SECRET_BYTES => format!(
                "the token secret in `{name}` is {} byte(s) long; it must be at least {MIN_SECRET_BYTES} (e.g. `openssl rand -hex 32`)",
                secret.len()
            ),
            Some(secret) => return Ok(secret),
        };
        Err(super::Diagnostic { location: self.secret_env_location.clone(), message: problem })
    }
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
        let max_connections = match &raw.max_connections {
            Some(n) if !(1..=1_000_000).contains(n.get_ref()) => {
                self.error(n.span(), "`server.max_connections` must be between 1 and 1000000");
                defaults.max_connections
            }
            Some(n) => u32::try_from(*n.get_ref()).unwrap_or(defaults.max_connections),
            None => defaults.max_connections,
        };
        let header_timeout = self.bounded_duration(
            "server.header_timeout",
            raw.header_timeout.as_ref(),
            Duration::from_millis(100)..=Duration::from_secs(600),
            defaults.header_timeout,
        );
        let idle_timeout = self.bounded_duration(
            "server.idle_timeout",
            raw.idle_timeout.as_ref(),
            Duration::from_secs(1)..=Duration::from_secs(24 * 3600),
            defaults.idle_timeout,
        );
        ServerSpec {
            listen,
            url,
            max_request_size,
            tls,
            reload: raw.reload.unwrap_or(defaults.reload),
            rate_limit,
            max_connections,
            header_timeout,
            idle_timeout,
        }
    }

    /// A duration within `range`, or an error naming the key and the range.
    fn bounded_duration(
        &mut self,
        key: &str,
        value: Option<&Spanned<DurationStr>>,
        range: std::ops::RangeInclusive<Duration>,
        default: Duration,
    ) -> Duration {
        let Some(value) = value else { return default };
        let duration = value.get_ref().0;
        if range.contains(&duration) {
            return duration;
        }
        self.error(
            value.span(),
            format!(
                "`{key}` must be between {} and {}",
                crate::time::format_duration(*range.start()),
                crate::time::format_duration(*range.end())
            ),
        );
        default
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
        let secret_env_location =
            self.locator.locate(auth.secret_env.as_ref().map_or_else(|| raw.span(), |name| name.span()));
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
                // Whether the variable holds a usable secret is checked by `baton check` and where
                // the secret is needed (`baton serve`, `baton token create`), not on every load:
                // reading the store needs no secret (`AuthSpec::secret`).
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
            Some(ttl) if ttl.get_ref().0 > MAX_TOKEN_TTL => {
                self.error(ttl.span(), "`auth.token_ttl` must be at most 3650d (ten years)");
                DEFAULT_TOKEN_TTL
            }
            Some(ttl) => ttl.get_ref().0,
            None => DEFAULT_TOKEN_TTL,
        };
        AuthSpec { secret_env, secret_env_location, rate_limit, token_ttl }
    }
}
