//! Calling a provider: one turn is one streamed HTTP request, tried again with exponential
//! backoff when the provider is overloaded, rate-limits, fails on its side (429, 529, 5xx) or
//! cannot be reached, honouring its `retry-after` (seconds or an HTTP date; `retry-after-ms`
//! too). After [`RetryPolicy::give_up_after`] the turn fails with what kept failing
//! ("provider claude: 529 overloaded for 2m, gave up"), and the task's own retry rules apply.
//!
//! The waits are tokio sleeps, so that tests run them on a paused clock in no time. The API
//! key goes into a header only: it is never logged, and no error message holds it.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use baton_core::config::{ProviderKind, ProviderSpec};
use baton_core::time::format_duration;

use super::wire::{self, Reply, StreamError};
use crate::clock::Clock;

/// How a turn is tried again. The bound is on the time spent waiting between tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first wait; doubled after each failure.
    pub first_delay: Duration,
    /// The longest wait between two tries (a `retry-after` may ask for more, up to the end).
    pub max_delay: Duration,
    /// How long a turn keeps trying before it gives up.
    pub give_up_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            give_up_after: Duration::from_secs(120),
        }
    }
}

/// A provider, ready to be called.
pub(crate) struct Client {
    pub http: reqwest::Client,
    pub provider: ProviderSpec,
    /// Never shown.
    pub api_key: Option<String>,
    pub retry: RetryPolicy,
    pub clock: Clock,
}

/// How one try ended, when it did not give an answer.
enum Failure {
    /// Trying again may work: `what` failed, and the provider may say when to try again.
    Retry { what: String, retry_after: Option<Duration> },
    /// It will not.
    Fatal(String),
}

impl Client {
    /// A client of `provider`; `api_key` is never shown. `who` names the caller in errors
    /// ("agent `writer`", "the coordinator").
    pub(crate) fn build(
        provider: ProviderSpec,
        env: &std::collections::BTreeMap<String, String>,
        options: &super::LlmOptions,
        who: &str,
    ) -> Result<Client, String> {
        let api_key = match &provider.api_key_env {
            None => None,
            Some(var) => match env.get(var).filter(|key| !key.is_empty()) {
                Some(key) => Some(key.clone()),
                None => {
                    return Err(format!(
                        "provider {}: the API key variable {var} is not set; export it, or point {who} at another provider",
                        provider.name
                    ));
                }
            },
        };
        // A provider that does not answer, or stops sending mid-stream, fails the try (and
        // is retried) instead of holding the caller forever.
        let mut http = reqwest::Client::builder()
            .user_agent(concat!("baton/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(15));
        if let Some(timeout) = options.read_timeout {
            http = http.read_timeout(timeout);
        }
        let http =
            http.build().map_err(|error| format!("provider {}: cannot make an HTTP client: {error}", provider.name))?;
        Ok(Client { http, provider, api_key, retry: options.retry, clock: options.clock })
    }

    /// One turn: the request `body`, tried until it gives an answer, fails for good, or has
    /// failed for [`RetryPolicy::give_up_after`]. The error says why, naming the provider.
    pub(crate) async fn turn(&self, body: &Value) -> Result<Reply, String> {
        let name = &self.provider.name;
        // The time spent waiting between tries: what the bound is on (a try's own time is
        // bounded by the stream it reads), and what tests can count on a paused clock.
        let mut waited = Duration::ZERO;
        let mut delay = self.retry.first_delay;
        loop {
            let (what, retry_after) = match self.try_once(body).await {
                Ok(reply) => return Ok(reply),
                Err(Failure::Fatal(message)) => return Err(format!("provider {name}: {message}")),
                Err(Failure::Retry { what, retry_after }) => (what, retry_after),
            };
            let left = self.retry.give_up_after.saturating_sub(waited);
            if left.is_zero() {
                return Err(format!("provider {name}: {what} for {}, gave up", format_duration(waited)));
            }
            let wait = match retry_after {
                Some(asked) if asked > left => {
                    return Err(format!(
                        "provider {name}: {what}, asked to retry after {} (more than the {} left to try), gave up",
                        format_duration(asked),
                        format_duration(left)
                    ));
                }
                Some(asked) => asked,
                None => delay.min(left),
            };
            tracing::info!(provider = %name, %what, wait = %format_duration(wait), "model call failed; trying again");
            tokio::time::sleep(wait).await;
            waited += wait;
            delay = (delay * 2).min(self.retry.max_delay);
        }
    }

    async fn try_once(&self, body: &Value) -> Result<Reply, Failure> {
        let kind = self.provider.kind;
        let url = format!("{}{}", self.provider.base_url, wire::endpoint(kind));
        let mut request = self.http.post(&url).json(body);
        request = match kind {
            ProviderKind::Anthropic => {
                let request = request.header("anthropic-version", "2023-06-01");
                match &self.api_key {
                    Some(key) => request.header("x-api-key", key),
                    None => request,
                }
            }
            ProviderKind::Openai => match &self.api_key {
                Some(key) => request.bearer_auth(key),
                None => request,
            },
        };
        let response = request.send().await.map_err(|error| Failure::Retry {
            what: format!("cannot connect ({})", without_url(&error)),
            retry_after: None,
        })?;
        let status = response.status();
        if !status.is_success() {
            let retry_after = retry_after(response.headers(), &self.clock);
            let text = response.text().await.unwrap_or_default();
            let (error_type, message) = error_of(&text);
            let what = format!("{} {}", status.as_u16(), describe(status, error_type.as_deref()));
            return Err(if is_retryable(status) {
                Failure::Retry { what, retry_after }
            } else {
                Failure::Fatal(match message {
                    Some(message) => format!("{what}: {message}"),
                    None => what,
                })
            });
        }
        match wire::read_stream(kind, response.bytes_stream()).await {
            Ok(reply) => Ok(reply),
            Err(StreamError::Cut(detail)) => {
                let what = if detail.is_empty() { "stream cut".to_string() } else { format!("stream cut ({detail})") };
                Err(Failure::Retry { what, retry_after: None })
            }
            Err(StreamError::Provider { message, retryable: true }) => {
                Err(Failure::Retry { what: message, retry_after: None })
            }
            Err(error) => Err(Failure::Fatal(error.to_string())),
        }
    }
}

/// A connection error without the URL (which is in the logs' context anyway).
fn without_url(error: &reqwest::Error) -> String {
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(error);
    let mut deepest = None;
    while let Some(inner) = source {
        deepest = Some(inner.to_string());
        source = inner.source();
    }
    deepest.unwrap_or_else(|| if error.is_timeout() { "timed out".into() } else { "connection failed".into() })
}

fn is_retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 409 | 429) || status.is_server_error()
}

/// A few words for a status: `overloaded`, `rate limited`…
fn describe(status: StatusCode, error_type: Option<&str>) -> String {
    match (status.as_u16(), error_type) {
        (529, _) | (_, Some("overloaded_error")) => "overloaded".into(),
        (429, _) => "rate limited".into(),
        _ => status.canonical_reason().map_or_else(|| "error".to_string(), str::to_lowercase),
    }
}

/// The error's type and message in a provider's error body (`{"error": {"type", "message"}}`
/// in both formats).
fn error_of(text: &str) -> (Option<String>, Option<String>) {
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        let text = text.trim();
        return (None, (!text.is_empty()).then(|| wire::truncate(text, 300)));
    };
    let error = &value["error"];
    let kind = error["type"].as_str().map(str::to_string);
    let message = error["message"].as_str().or(value["message"].as_str()).map(|message| wire::truncate(message, 300));
    (kind, message)
}

/// How long the provider asks to wait: `retry-after-ms`, or `retry-after` in seconds or as
/// an HTTP date (read against `clock`).
fn retry_after(headers: &reqwest::header::HeaderMap, clock: &Clock) -> Option<Duration> {
    if let Some(ms) = headers.get("retry-after-ms").and_then(|value| value.to_str().ok()?.trim().parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let text = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    let at_ms = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64;
    Some(Duration::from_millis(u64::try_from(at_ms - clock.now().0).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    // tokio's clock paused: the test's clock stands still however busy the machine is.
    #[tokio::test(start_paused = true)]
    async fn retry_after_in_seconds_milliseconds_or_a_date() {
        let clock = Clock::starting_at(baton_core::Timestamp(1_700_000_000_000));
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers, &clock), Some(Duration::from_secs(7)));
        // 2023-11-14T22:13:40Z is 1_700_000_020 s: 20 s after the clock.
        headers.insert("retry-after", HeaderValue::from_static("Tue, 14 Nov 2023 22:13:40 GMT"));
        assert_eq!(retry_after(&headers, &clock), Some(Duration::from_secs(20)));
        headers.insert("retry-after", HeaderValue::from_static("Tue, 14 Nov 2000 22:13:40 GMT"));
        assert_eq!(retry_after(&headers, &clock), Some(Duration::ZERO));
        headers.insert("retry-after-ms", HeaderValue::from_static("1500"));
        assert_eq!(retry_after(&headers, &clock), Some(Duration::from_millis(1500)));
        assert_eq!(retry_after(&HeaderMap::new(), &clock), None);
    }

    #[test]
    fn errors_are_described_by_status_and_body() {
        let body = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let (kind, message) = error_of(body);
        assert_eq!(describe(StatusCode::from_u16(529).unwrap(), kind.as_deref()), "overloaded");
        assert_eq!(message.as_deref(), Some("Overloaded"));
        assert_eq!(describe(StatusCode::TOO_MANY_REQUESTS, None), "rate limited");
        assert_eq!(describe(StatusCode::UNAUTHORIZED, None), "unauthorized");
        assert!(is_retryable(StatusCode::from_u16(529).unwrap()) && !is_retryable(StatusCode::BAD_REQUEST));
    }
}
