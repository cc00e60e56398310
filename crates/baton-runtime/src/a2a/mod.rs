//! `runtime = "a2a"`: an agent elsewhere that speaks A2A 1.0 over JSON-RPC, driven like any
//! other agent (concurrency, restarts, circuit breaker are the engine's).
//!
//! At start the agent's card is read ([`card`]): it must offer a JSON-RPC interface of A2A 1.0,
//! whose URL every call then goes to. Each attempt is one message (the task's title and
//! description as text, its input as data) and one remote task, followed by
//! `SendStreamingMessage` when the card says the agent streams, else by `SendMessage` and
//! `GetTask` polled until the task ends. The remote task's end is the attempt's outcome
//! ([`outcome`]); a cancelled attempt is cancelled remotely (`CancelTask`). Progress messages
//! and usage the remote reports in its task's `metadata.usage` reach the engine as any
//! agent's do.

pub mod card;
pub mod outcome;
pub mod push;

use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use baton_core::Outcome;
use baton_core::config::{A2aSpec, AgentSpec};

use crate::agent::{AgentContext, AgentError, AgentEvent, AgentRuntime, Attempt};
pub use card::Remote;
use outcome::{Followed, RemoteState};

/// The protocol version Baton speaks, sent with every request.
pub const PROTOCOL_VERSION: &str = "1.0";

/// How long one request (a card, a call; not a stream) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a remote task is polled when its agent does not stream.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// The largest answer read (a card, a JSON-RPC answer), and the largest event of a stream.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// An A2A agent's runtime.
pub struct A2aAgent {
    name: String,
    spec: A2aSpec,
    http: reqwest::Client,
    /// What start learned: the card's endpoint and whether it streams; and where to report.
    /// A lock held only to copy these out, never across a request.
    state: parking_lot::Mutex<Option<(Arc<Remote>, AgentContext)>>,
    /// JSON-RPC request ids.
    n_requests: std::sync::atomic::AtomicU64,
    /// The config sets no capabilities: the card's skills are the agent's.
    learns_capabilities: bool,
}

impl A2aAgent {
    pub fn new(agent: &AgentSpec, spec: A2aSpec) -> A2aAgent {
        A2aAgent {
            name: agent.name.clone(),
            spec,
            // A remote that cannot be reached fails at once; one reached may take as long as
            // its task takes (the attempt's timeout and cancellation bound it).
            http: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(15))
                .build()
                .unwrap_or_default(),
            state: parking_lot::Mutex::new(None),
            n_requests: 0.into(),
            learns_capabilities: agent.capabilities.is_empty(),
        }
    }

    fn next_id(&self) -> u64 {
        self.n_requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
    }

    /// A request to `url`, with the configured credentials only when `url` has the origin of
    /// the configured url (where the card is): a card may name an interface anywhere, and the
    /// credentials are for the agent the config names, not for any host its card points to.
    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let mut request = self.http.request(method, url).header("A2A-Version", PROTOCOL_VERSION);
        if let Some(header) = &self.spec.auth_header
            && same_origin(url, &self.spec.url)
        {
            request = request.header(reqwest::header::AUTHORIZATION, header);
        }
        request
    }

    /// One JSON-RPC call; its `result`, or why not.
    async fn call(&self, remote: &Remote, method: &str, params: Value) -> Result<Value, String> {
        let body = json!({ "jsonrpc": "2.0", "id": self.next_id(), "method": method, "params": params });
        let response = self
            .request(reqwest::Method::POST, &remote.url)
            .timeout(REQUEST_TIMEOUT)
            .json(&body)
            .send()
            .await
            .map_err(|error| format!("{method} to {}: {error}", remote.url))?;
        let status = response.status();
        let text = read_body(response).await.map_err(|error| format!("{method} to {}: {error}", remote.url))?;
        if !status.is_success() {
            return Err(format!("{method} to {}: HTTP {status}: {}", remote.url, cut(&text)));
        }
        let answer: Value =
            serde_json::from_str(&text).map_err(|error| format!("{method}: the answer is not JSON ({error})"))?;
        rpc_result(method, answer)
    }

    /// Follows the remote task of a message by streaming: the task's last state.
    async fn stream(&self, remote: &Remote, params: Value, followed: &Mutex<Followed>) -> Result<(), String> {
        let body =
            json!({ "jsonrpc": "2.0", "id": self.next_id(), "method": "SendStreamingMessage", "params": params });
        let response = self
            .request(reqwest::Method::POST, &remote.url)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .json(&body)
            .send()
            .await
            .map_err(|error| format!("SendStreamingMessage to {}: {error}", remote.url))?;
        let status = response.status();
        let is_stream = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("text/event-stream"));
        if !status.is_success() || !is_stream {
            // An error comes as one JSON-RPC answer, not a stream.
            let text = read_body(response).await.unwrap_or_else(|error| error);
            let answer: Value = serde_json::from_str(&text)
                .ok()
                .filter(|answer: &Value| answer.get("jsonrpc").is_some())
                .ok_or_else(|| format!("SendStreamingMessage to {}: HTTP {status}: {}", remote.url, cut(&text)))?;
            return rpc_result("SendStreamingMessage", answer)
                .map(|result| followed.lock().take(&result, self.reporter()));
        }
        let mut events = bounded_events(response.bytes_stream());
        while let Some(event) = events.next().await {
            let event = event.map_err(|error| format!("the stream from {} broke: {error}", remote.url))?;
            if event.data.is_empty() {
                continue;
            }
            let answer: Value = serde_json::from_str(&event.data)
                .map_err(|error| format!("SendStreamingMessage: an event is not JSON ({error})"))?;
            let result = rpc_result("SendStreamingMessage", answer)?;
            let mut followed = followed.lock();
            followed.take(&result, self.reporter());
            if followed.state.is_some_and(RemoteState::is_final) {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Polls the remote task until it ends.
    async fn poll(&self, remote: &Remote, followed: &Mutex<Followed>) -> Result<(), String> {
        let Some(task_id) = followed.lock().task_id.clone() else { return Ok(()) };
        let mut ticks = tokio::time::interval(POLL_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !followed.lock().state.is_some_and(RemoteState::is_final) {
            ticks.tick().await;
            let task = self.call(remote, "GetTask", json!({ "id": task_id })).await?;
            followed.lock().take(&json!({ "task": task }), self.reporter());
        }
        Ok(())
    }

    /// Where progress and usage go: the engine, as the context given at start says.
    fn reporter(&self) -> Option<(String, AgentContext)> {
        self.state.lock().as_ref().map(|(_, context)| (self.name.clone(), context.clone()))
    }

    async fn follow(&self, remote: &Remote, attempt: &Attempt, followed: &Mutex<Followed>) -> Result<(), String> {
        let params = outcome::message_params(attempt);
        if remote.streaming {
            self.stream(remote, params, followed).await?;
        } else {
            // Answered at once with the task, which is then polled: a blocking call would hold
            // a request open for as long as the task takes.
            let mut params = params;
            params["configuration"] = json!({ "returnImmediately": true });
            let result = self.call(remote, "SendMessage", params).await?;
            followed.lock().take(&result, self.reporter());
        }
        // A stream that closed early, or a blocking answer that came before the end.
        self.poll(remote, followed).await
    }
}

#[async_trait]
impl AgentRuntime for A2aAgent {
    async fn start(&self, context: AgentContext) -> Result<(), AgentError> {
        let url = self.spec.card_url();
        let response = self
            .request(reqwest::Method::GET, &url)
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|error| AgentError::transient(format!("cannot read the agent card at {url}: {error}")))?;
        let status = response.status();
        if !status.is_success() {
            let message = format!("the agent card at {url} answers HTTP {status}");
            // A server error may pass; a missing or forbidden card will not.
            return Err(if status.is_server_error() {
                AgentError::transient(message)
            } else {
                AgentError::permanent(message)
            });
        }
        let text = read_body(response)
            .await
            .map_err(|error| AgentError::transient(format!("cannot read the agent card at {url}: {error}")))?;
        let remote = card::parse(&url, &text).map_err(AgentError::permanent)?;
        tracing::info!(agent = %self.name, card = %url, endpoint = %remote.url, streaming = remote.streaming, "A2A agent ready");
        *self.state.lock() = Some((Arc::new(remote), context));
        Ok(())
    }

    async fn run(&self, attempt: Attempt, cancel: CancellationToken) -> Outcome {
        let Some(remote) = self.state.lock().as_ref().map(|(remote, _)| Arc::clone(remote)) else {
            return Outcome::Failed { reason: format!("A2A agent `{}` has not started", self.name) };
        };
        // Shared by the call that follows the task and the cancellation, which must reach the
        // remote while the stream is still open (an agent may take a dropped stream for the
        // end of its client, not of its task). Locked only between awaits.
        let followed = Mutex::new(Followed::new(attempt.task.id));
        let follow = self.follow(&remote, &attempt, &followed);
        tokio::pin!(follow);
        let ended = tokio::select! {
            ended = &mut follow => Some(ended),
            () = cancel.cancelled() => None,
        };
        let Some(ended) = ended else {
            // Cancelled before the remote said its task's id: the message may still make a
            // task there, so its answer is waited for (a while) to cancel that task too.
            let known = followed.lock().task_id.clone();
            let task_id = match known {
                Some(task_id) => Some(task_id),
                None => wait_for_task_id(follow, &followed).await,
            };
            if let Some(task_id) = task_id
                && let Err(error) = self.call(&remote, "CancelTask", json!({ "id": task_id })).await
            {
                tracing::warn!(agent = %self.name, %error, "the remote task was not cancelled");
            }
            return Outcome::Failed { reason: "cancelled".into() };
        };
        let outcome = followed.lock().outcome();
        match ended {
            Ok(()) => outcome,
            Err(error) => Outcome::Failed { reason: format!("A2A agent `{}`: {error}", self.name) },
        }
    }

    fn learned_capabilities(&self) -> Option<Vec<String>> {
        if !self.learns_capabilities {
            return None;
        }
        self.state.lock().as_ref().map(|(remote, _)| remote.skills.clone())
    }

    async fn stop(&self) {
        *self.state.lock() = None;
    }
}

/// The `result` of a JSON-RPC answer, or its error as text.
fn rpc_result(method: &str, answer: Value) -> Result<Value, String> {
    if let Some(error) = answer.get("error") {
        let code = error.get("code").and_then(Value::as_i64).unwrap_or(0);
        let message = error.get("message").and_then(Value::as_str).unwrap_or("no message");
        return Err(format!("{method} refused ({code}): {message}"));
    }
    answer.get("result").cloned().ok_or_else(|| format!("{method}: the answer has neither `result` nor `error`"))
}

/// How long a cancelled attempt waits for the remote to name its task, to cancel it.
const CANCEL_WAIT: Duration = Duration::from_secs(10);
/// How often it looks.
const CANCEL_LOOK_EVERY: Duration = Duration::from_millis(20);

/// Drives `follow` until the remote task's id is known (or the follow ends, or
/// [`CANCEL_WAIT`] passes); the id, if known by then.
async fn wait_for_task_id(
    mut follow: std::pin::Pin<&mut impl std::future::Future<Output = Result<(), String>>>,
    followed: &Mutex<Followed>,
) -> Option<String> {
    let deadline = tokio::time::sleep(CANCEL_WAIT);
    tokio::pin!(deadline);
    let mut looks = tokio::time::interval(CANCEL_LOOK_EVERY);
    loop {
        tokio::select! {
            _ = follow.as_mut() => return followed.lock().task_id.clone(),
            () = &mut deadline => return None,
            _ = looks.tick() => {
                if let Some(task_id) = followed.lock().task_id.clone() {
                    return Some(task_id);
                }
            }
        }
    }
}

/// Whether two URLs have the same origin (scheme, host and port).
fn same_origin(a: &str, b: &str) -> bool {
    match (reqwest::Url::parse(a), reqwest::Url::parse(b)) {
        (Ok(a), Ok(b)) => a.origin() == b.origin(),
        _ => false,
    }
}

/// A whole answer as text, at most [`MAX_BODY_BYTES`]; UTF-8 decoded once it is all here.
async fn read_body(response: reqwest::Response) -> Result<String, String> {
    let mut bytes = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|error| error.to_string())?;
        if bytes.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(format!("the answer is larger than {} MiB, the most Baton reads", MAX_BODY_BYTES >> 20));
        }
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes).map_err(|error| format!("the answer is not UTF-8: {error}"))
}

/// The Server-Sent Events of a byte stream (split and UTF-8 decoded by `eventsource-stream`,
/// so a character cut between two chunks arrives whole), failing when the bytes since the
/// last event pass [`MAX_BODY_BYTES`]: what the parser may hold unparsed is bounded.
fn bounded_events<S, E>(bytes: S) -> impl futures::Stream<Item = Result<eventsource_stream::Event, String>> + Unpin
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    use eventsource_stream::Eventsource;
    let pending = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&pending);
    let bytes = bytes.map(move |chunk| {
        let chunk = chunk.map_err(|error| error.to_string())?;
        let held = counted.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed) + chunk.len();
        if held > MAX_BODY_BYTES {
            return Err(format!("an event is larger than {} MiB, the most Baton reads", MAX_BODY_BYTES >> 20));
        }
        Ok(chunk)
    });
    bytes.eventsource().map(move |event| {
        pending.store(0, std::sync::atomic::Ordering::Relaxed);
        event.map_err(|error| error.to_string())
    })
}

/// A remote's text, cut for an error message.
fn cut(text: &str) -> String {
    text.chars().take(300).collect()
}

/// Sends what the remote reported to the engine.
pub(crate) fn report(reporter: Option<&(String, AgentContext)>, event: impl FnOnce(String) -> AgentEvent) {
    if let Some((agent, context)) = reporter {
        let _ = context.events.send(event(agent.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_go_to_the_configured_origin_only() {
        assert!(same_origin("http://far:8000/rpc", "http://far:8000/"));
        assert!(!same_origin("http://elsewhere:8000/rpc", "http://far:8000/"));
        assert!(!same_origin("http://far:9000/rpc", "http://far:8000/"));
        assert!(!same_origin("https://far:8000/rpc", "http://far:8000/"));
        assert!(!same_origin("not a url", "not a url"));
    }

    #[tokio::test]
    async fn a_character_split_between_chunks_arrives_whole() {
        let text = "data: {\"text\": \"caf\u{e9} \u{2713}\"}\n\n".as_bytes().to_vec();
        // Cut inside `é` (2 bytes) and inside `✓` (3 bytes).
        let e_at = text.iter().position(|&b| b == 0xc3).unwrap() + 1;
        let check_at = text.iter().position(|&b| b == 0xe2).unwrap() + 2;
        let chunks = vec![
            Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(&text[..e_at])),
            Ok(bytes::Bytes::copy_from_slice(&text[e_at..check_at])),
            Ok(bytes::Bytes::copy_from_slice(&text[check_at..])),
        ];
        let mut events = bounded_events(futures::stream::iter(chunks));
        let event = events.next().await.unwrap().unwrap();
        assert_eq!(event.data, "{\"text\": \"caf\u{e9} \u{2713}\"}");
    }

    #[tokio::test]
    async fn an_event_too_large_is_refused() {
        let chunk = bytes::Bytes::from(vec![b'x'; 1024 * 1024]);
        let mut chunks = vec![Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"data: "))];
        chunks.extend((0..=MAX_BODY_BYTES / chunk.len()).map(|_| Ok(chunk.clone())));
        let mut events = bounded_events(futures::stream::iter(chunks));
        let error = events.next().await.unwrap().unwrap_err();
        assert!(error.contains("larger than 8 MiB"), "{error}");
    }
}
