//! A stand-in LLM provider, for tests and `baton bench --llm`: an HTTP server on 127.0.0.1
//! (port 0, on a thread of its own) that answers each request with the next scripted reply, or
//! with what a function of the request says, at once, in the providers' real wire formats
//! (Anthropic's Messages SSE, OpenAI's chunks), and records what it was asked.
//!
//! The one stand-in: the runtime's LLM tests compile this file into their binary (the runtime
//! cannot depend on the server), the CLI's dashboard test and the benchmark use this module.
//! It panics on what cannot happen in a test (a poisoned lock, no port to bind).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use serde_json::{Value, json};

/// What the stand-in answers to one request.
pub enum Reply {
    /// A whole event stream.
    Stream(String),
    /// The start of a stream, then the connection breaks.
    Cut(String),
    /// The start of a stream, then nothing, until the client goes away (`gone` is then set).
    Hang(String, Arc<AtomicBool>),
    /// A status with headers and a body.
    Status(u16, Vec<(&'static str, String)>, String),
}

/// A request the stand-in received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
}

/// Answers a request (its JSON body) when no scripted reply is left.
pub type Responder = Box<dyn Fn(&Value) -> Reply + Send + Sync>;

struct Shared {
    replies: Mutex<VecDeque<Reply>>,
    received: Mutex<Vec<Received>>,
    responder: Option<Responder>,
    /// Whether requests are kept for [`Standin::received`] (a benchmark does not keep them).
    record: bool,
}

pub struct Standin {
    pub url: String,
    shared: Arc<Shared>,
}

impl Standin {
    /// Starts a stand-in that answers with `replies`, in order.
    pub fn start(replies: Vec<Reply>) -> Standin {
        Standin::serve(Shared {
            replies: Mutex::new(replies.into()),
            received: Mutex::default(),
            responder: None,
            record: true,
        })
    }

    /// Starts a stand-in that answers every request with `responder`'s reply to it, keeping
    /// nothing of what it was asked.
    pub fn answering(responder: Responder) -> Standin {
        Standin::serve(Shared {
            replies: Mutex::default(),
            received: Mutex::default(),
            responder: Some(responder),
            record: false,
        })
    }

    fn serve(shared: Shared) -> Standin {
        let shared = Arc::new(shared);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        listener.set_nonblocking(true).expect("non-blocking");
        let url = format!("http://{}", listener.local_addr().expect("an address"));
        let app = Router::new()
            .route("/v1/messages", post(answer))
            .route("/chat/completions", post(answer))
            .route("/v1/chat/completions", post(answer))
            .with_state(Arc::clone(&shared));
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("a listener");
                axum::serve(listener, app).await.expect("the stand-in serves");
            });
        });
        Standin { url, shared }
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }
}

struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

async fn answer(State(shared): State<Arc<Shared>>, uri: axum::http::Uri, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let scripted = shared.replies.lock().unwrap().pop_front();
    let reply = scripted.or_else(|| shared.responder.as_ref().map(|responder| responder(&body)));
    if shared.record {
        shared.received.lock().unwrap().push(Received { path: uri.path().to_string(), headers, body });
    }
    let sse =
        |body: Body| Response::builder().status(200).header("content-type", "text/event-stream").body(body).unwrap();
    match reply {
        None => {
            Response::builder().status(500).body(Body::from("{\"error\":{\"message\":\"no scripted reply\"}}")).unwrap()
        }
        Some(Reply::Stream(text)) => sse(Body::from(text)),
        Some(Reply::Cut(text)) => {
            let chunks: Vec<Result<Bytes, std::io::Error>> =
                vec![Ok(Bytes::from(text)), Err(std::io::Error::other("cut"))];
            let mut response = sse(Body::from_stream(futures::stream::iter(chunks)));
            response.headers_mut().insert("connection", axum::http::HeaderValue::from_static("close"));
            response
        }
        Some(Reply::Hang(text, gone)) => {
            let guard = SetOnDrop(gone);
            let start = futures::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from(text))]);
            let never = futures::stream::unfold(guard, |guard| async move {
                std::future::pending::<()>().await;
                Some((Ok(Bytes::new()), guard))
            });
            sse(Body::from_stream(futures::StreamExt::chain(start, never)))
        }
        Some(Reply::Status(status, headers, body)) => {
            let mut response = Response::builder().status(StatusCode::from_u16(status).unwrap());
            for (name, value) in headers {
                response = response.header(name, value);
            }
            response.header("content-type", "application/json").body(Body::from(body)).unwrap()
        }
    }
}

fn event(name: &str, data: Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

/// The usage Anthropic reports at `message_start`.
fn message_start(input: u64, cache_read: u64, cache_write: u64) -> String {
    event(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [],
            "model": "claude-sonnet-4-5", "stop_reason": null,
            "usage": {"input_tokens": input, "cache_creation_input_tokens": cache_write, "cache_read_input_tokens": cache_read, "output_tokens": 1}}}),
    )
}

fn message_end(stop_reason: &str, output: u64) -> String {
    event(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": {"output_tokens": output}}),
    ) + &event("message_stop", json!({"type": "message_stop"}))
}

/// An Anthropic answer of text only.
pub fn anthropic_text(text: &str, input: u64, output: u64, cache_read: u64, cache_write: u64) -> String {
    let (head, tail) = text.split_at(text.len() / 2);
    message_start(input, cache_read, cache_write)
        + &event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        )
        + &event("ping", json!({"type": "ping"}))
        + &event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": head}}),
        )
        + &event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": tail}}),
        )
        + &event("content_block_stop", json!({"type": "content_block_stop", "index": 0}))
        + &message_end("end_turn", output)
}

/// An Anthropic answer calling tools (`(id, name, input)`), their input streamed in pieces.
pub fn anthropic_tools(calls: &[(&str, &str, Value)], input: u64, output: u64) -> String {
    let mut text = message_start(input, 0, 0)
        + &event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        )
        + &event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me do that."}}),
        )
        + &event("content_block_stop", json!({"type": "content_block_stop", "index": 0}));
    for (idx, (id, name, arguments)) in calls.iter().enumerate() {
        let index = idx + 1;
        let json = arguments.to_string();
        let (head, tail) = json.split_at(json.len() / 2);
        text += &event(
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
        );
        for part in ["", head, tail] {
            text += &event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": part}}),
            );
        }
        text += &event("content_block_stop", json!({"type": "content_block_stop", "index": index}));
    }
    text + &message_end("tool_use", output)
}

fn chunk(delta: Value, finish_reason: Option<&str>) -> String {
    format!(
        "data: {}\n\n",
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4o",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], "usage": null})
    )
}

fn usage_chunk(prompt: u64, completion: u64, cached: u64) -> String {
    format!(
        "data: {}\n\ndata: [DONE]\n\n",
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}})
    )
}

/// An OpenAI answer of text only, with the usage chunk `include_usage` asks for.
pub fn openai_text(text: &str, prompt: u64, completion: u64, cached: u64) -> String {
    chunk(json!({"role": "assistant", "content": ""}), None)
        + &chunk(json!({"content": text}), None)
        + &chunk(json!({}), Some("stop"))
        + &usage_chunk(prompt, completion, cached)
}

/// An OpenAI answer calling tools, their arguments streamed by index.
pub fn openai_tools(calls: &[(&str, &str, Value)], prompt: u64, completion: u64) -> String {
    let mut text = chunk(json!({"role": "assistant", "content": null}), None);
    for (index, (id, name, _)) in calls.iter().enumerate() {
        text += &chunk(
            json!({"tool_calls": [{"index": index, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
            None,
        );
    }
    for (index, (_, _, arguments)) in calls.iter().enumerate() {
        let json = arguments.to_string();
        let (head, tail) = json.split_at(json.len() / 2);
        for part in [head, tail] {
            text += &chunk(json!({"tool_calls": [{"index": index, "function": {"arguments": part}}]}), None);
        }
    }
    text + &chunk(json!({}), Some("tool_calls")) + &usage_chunk(prompt, completion, 0)
}
