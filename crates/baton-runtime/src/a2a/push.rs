//! Push notifications of Baton's A2A server, delivered: a `StreamResponse` POSTed as JSON to a
//! client's webhook, with the config's token in `X-A2A-Notification-Token` and its
//! authentication as `Authorization: SCHEME CREDENTIALS` (as A2A 1.0 and its SDKs do). Here
//! because the runtime is the crate that makes HTTP requests; the server decides what to send
//! and when.
//!
//! A delivery is bounded: each try has a timeout, a failed one is tried again a few times with
//! a growing pause, and a cancellation (the server's shutdown) ends it at once. The answer's
//! body is not read.

use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// How long one try may take, connecting included.
const TRY_TIMEOUT: Duration = Duration::from_secs(10);
/// Tries per notification.
const TRIES: u32 = 3;
/// The pause after the first failed try; doubled after each.
const FIRST_PAUSE: Duration = Duration::from_millis(500);

/// Where a notification goes, and what proves it is the server's.
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    pub url: reqwest::Url,
    /// Sent as `X-A2A-Notification-Token`.
    pub token: Option<String>,
    /// Sent as `Authorization`: the authentication's scheme and credentials.
    pub authorization: Option<String>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook").field("url", &self.url.as_str()).finish_non_exhaustive()
    }
}

/// Why a webhook's URL is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("`{0}` is not an http(s) URL with a host and without credentials")]
    NotHttp(String),
    #[error(
        "push notifications may not go to host `{host}`: [a2a] push_hosts allows {allowed}; add the host there or use an allowed one"
    )]
    HostNotAllowed { host: String, allowed: String },
}

/// A webhook's URL, as [`check_url`] gives it.
pub type Url = reqwest::Url;

/// The webhook URL `url`, if it is http(s) and on a host `allowed` accepts.
/// `allowed` is asked with the URL's host and port (the scheme's default when not written).
/// A URL with credentials in it (`user:pass@`) is refused: they would be shown back.
pub fn check_url(
    url: &str,
    allowed: impl Fn(&str, u16) -> bool,
    allowed_list: &[String],
) -> Result<reqwest::Url, Error> {
    let parsed = reqwest::Url::parse(url).map_err(|_| Error::NotHttp(url.to_string()))?;
    let host = match (parsed.host_str(), parsed.port_or_known_default()) {
        (Some(host), Some(_)) if matches!(parsed.scheme(), "http" | "https") => host.to_string(),
        _ => return Err(Error::NotHttp(url.to_string())),
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Error::NotHttp(url.to_string()));
    }
    let port = parsed.port_or_known_default().unwrap_or(80);
    if !allowed(&host, port) {
        let allowed = if allowed_list.is_empty() { "none".to_string() } else { allowed_list.join(", ") };
        return Err(Error::HostNotAllowed { host, allowed });
    }
    Ok(parsed)
}

/// The HTTP client that delivers notifications; cheap to clone.
#[derive(Clone)]
pub struct Sender {
    http: reqwest::Client,
}

impl Default for Sender {
    fn default() -> Sender {
        Sender::new()
    }
}

impl Sender {
    pub fn new() -> Sender {
        let http = reqwest::Client::builder()
            .connect_timeout(TRY_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Sender { http }
    }

    /// Posts `body` to `webhook`, trying again after a failure; `Err` says why the last try
    /// failed, or that `cancel` ended it.
    pub async fn deliver(&self, webhook: &Webhook, body: &Value, cancel: &CancellationToken) -> Result<(), String> {
        let mut pause = FIRST_PAUSE;
        let mut n_tries = 0;
        loop {
            n_tries += 1;
            let error = tokio::select! {
                () = cancel.cancelled() => return Err("the server is shutting down".into()),
                result = self.try_once(webhook, body) => match result {
                    Ok(()) => return Ok(()),
                    Err(error) => error,
                },
            };
            if n_tries >= TRIES {
                return Err(format!("{error} (tried {n_tries} times)"));
            }
            tokio::select! {
                () = cancel.cancelled() => return Err("the server is shutting down".into()),
                () = tokio::time::sleep(pause) => {}
            }
            pause *= 2;
        }
    }

    async fn try_once(&self, webhook: &Webhook, body: &Value) -> Result<(), String> {
        let mut request = self.http.post(webhook.url.clone()).timeout(TRY_TIMEOUT).json(body);
        if let Some(token) = &webhook.token {
            request = request.header("X-A2A-Notification-Token", token);
        }
        if let Some(authorization) = &webhook.authorization {
            request = request.header(reqwest::header::AUTHORIZATION, authorization);
        }
        let response = request.send().await.map_err(|error| format!("POST {}: {error}", webhook.url))?;
        let status = response.status();
        if status.is_success() { Ok(()) } else { Err(format!("POST {}: HTTP {status}", webhook.url)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_on_allowed_hosts() {
        let list = vec!["127.0.0.1".to_string()];
        let allowed = |host: &str, port: u16| host == "127.0.0.1" && port == 9;
        assert!(check_url("http://127.0.0.1:9/hook", allowed, &list).is_ok());
        assert!(matches!(check_url("http://127.0.0.1:10/hook", allowed, &list), Err(Error::HostNotAllowed { .. })));
        assert!(matches!(check_url("http://me:secret@127.0.0.1:9/hook", allowed, &list), Err(Error::NotHttp(_))));
        assert!(matches!(
            check_url("http://evil.example/hook", allowed, &list),
            Err(Error::HostNotAllowed { host, .. }) if host == "evil.example"
        ));
        assert!(matches!(check_url("file:///etc/passwd", allowed, &list), Err(Error::NotHttp(_))));
        assert!(matches!(check_url("not a url", allowed, &list), Err(Error::NotHttp(_))));
    }
}
