//! The two wire formats an LLM agent speaks: Anthropic's Messages API and OpenAI's Chat
//! Completions (and the many servers that copy it), both streamed. A conversation is kept in
//! one neutral form ([`Msg`]); each format turns it into a request body and reads a streamed
//! answer back into a [`Reply`].
//!
//! Server-sent events are split by `eventsource-stream`; what is ours is the meaning of each
//! event: text deltas, tool calls assembled from their deltas (Anthropic's `input_json_delta`
//! by content block, OpenAI's `tool_calls` by index), and the usage the provider reports.

use std::collections::BTreeMap;

use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};
use serde_json::{Value, json};

use baton_core::config::ProviderKind;

/// A message of the conversation, in neither provider's format.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Msg {
    User(String),
    Assistant { text: String, calls: Vec<Call> },
    ToolResults(Vec<ToolOutput>),
}

/// A tool call the model made, with the tool's name as the API knows it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Call {
    pub id: String,
    pub api_name: String,
    pub arguments: Value,
}

/// What a tool gave back, as text for the model.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ToolOutput {
    pub call_id: String,
    pub content: String,
    pub is_error: bool,
}

/// A tool as offered to the model.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiTool {
    pub api_name: String,
    pub description: String,
    pub input_schema: Value,
}

/// Tokens of one turn, as the provider counted them. `input` excludes cached tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct TokenUsage {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
}

/// The model's answer in one turn.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Reply {
    pub text: String,
    pub calls: Vec<Call>,
    pub usage: TokenUsage,
    pub stop_reason: Option<String>,
}

/// Why a stream did not give a whole answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum StreamError {
    /// The connection broke, or the stream ended before its last event: trying again may work.
    #[error("the stream was cut before the answer ended{}", detail(.0))]
    Cut(String),
    /// The provider sent an error event; `retryable` when it says it is overloaded.
    #[error("{message}")]
    Provider { message: String, retryable: bool },
    /// An event that cannot be read.
    #[error("unreadable event from the provider: {0}")]
    Protocol(String),
}

fn detail(text: &str) -> String {
    if text.is_empty() { String::new() } else { format!(" ({text})") }
}

/// Everything a request body needs.
pub(crate) struct Request<'a> {
    pub model: &'a str,
    pub max_tokens: u32,
    pub system: &'a str,
    pub messages: &'a [Msg],
    pub tools: &'a [ApiTool],
}

/// The path of the endpoint, after the provider's `base_url`.
pub(crate) fn endpoint(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Anthropic => "/v1/messages",
        ProviderKind::Openai => "/chat/completions",
    }
}

/// The request body, streaming.
pub(crate) fn body(kind: ProviderKind, request: &Request<'_>) -> Value {
    match kind {
        ProviderKind::Anthropic => anthropic_body(request),
        ProviderKind::Openai => openai_body(request),
    }
}

fn anthropic_body(request: &Request<'_>) -> Value {
    let messages: Vec<Value> = request
        .messages
        .iter()
        .map(|msg| match msg {
            Msg::User(text) => json!({"role": "user", "content": text}),
            Msg::Assistant { text, calls } => {
                let mut content = Vec::new();
                if !text.is_empty() {
                    content.push(json!({"type": "text", "text": text}));
                }
                for call in calls {
                    content.push(json!({"type": "tool_use", "id": call.id, "name": call.api_name, "input": call.arguments}));
                }
                json!({"role": "assistant", "content": content})
            }
            Msg::ToolResults(outputs) => {
                let content: Vec<Value> = outputs
                    .iter()
                    .map(|output| {
                        json!({"type": "tool_result", "tool_use_id": output.call_id, "content": output.content, "is_error": output.is_error})
                    })
                    .collect();
                json!({"role": "user", "content": content})
            }
        })
        .collect();
    let mut body = json!({
        "model": request.model,
        "max_tokens": request.max_tokens,
        "system": request.system,
        "messages": messages,
        "stream": true,
    });
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|tool| json!({"name": tool.api_name, "description": tool.description, "input_schema": tool.input_schema}))
            .collect();
    }
    body
}

fn openai_body(request: &Request<'_>) -> Value {
    let mut messages = vec![json!({"role": "system", "content": request.system})];
    for msg in request.messages {
        match msg {
            Msg::User(text) => messages.push(json!({"role": "user", "content": text})),
            Msg::Assistant { text, calls } => {
                let mut message = json!({"role": "assistant", "content": text});
                if !calls.is_empty() {
                    message["tool_calls"] = calls
                        .iter()
                        .map(|call| {
                            json!({"id": call.id, "type": "function", "function": {"name": call.api_name, "arguments": call.arguments.to_string()}})
                        })
                        .collect();
                }
                messages.push(message);
            }
            Msg::ToolResults(outputs) => {
                for output in outputs {
                    messages.push(json!({"role": "tool", "tool_call_id": output.call_id, "content": output.content}));
                }
            }
        }
    }
    let mut body = json!({
        "model": request.model,
        "max_completion_tokens": request.max_tokens,
        "messages": messages,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|tool| {
                json!({"type": "function", "function": {"name": tool.api_name, "description": tool.description, "parameters": tool.input_schema}})
            })
            .collect();
    }
    body
}

/// Reads a streamed answer to its end.
pub(crate) async fn read_stream<S, B, E>(kind: ProviderKind, bytes: S) -> Result<Reply, StreamError>
where
    S: Stream<Item = Result<B, E>> + Unpin,
    B: AsRef<[u8]>,
    E: std::fmt::Display,
{
    let mut events = bytes.eventsource();
    let mut state = match kind {
        ProviderKind::Anthropic => Decoder::Anthropic(AnthropicState::default()),
        ProviderKind::Openai => Decoder::Openai(OpenaiState::default()),
    };
    while let Some(event) = events.next().await {
        let event = event.map_err(|error| StreamError::Cut(error.to_string()))?;
        let done = match &mut state {
            Decoder::Anthropic(state) => state.event(&event.event, &event.data)?,
            Decoder::Openai(state) => state.event(&event.data)?,
        };
        if done {
            return match state {
                Decoder::Anthropic(state) => state.finish(),
                Decoder::Openai(state) => state.finish(),
            };
        }
    }
    // OpenAI-compatible servers that end the stream without `[DONE]` but with a finish reason
    // have answered; Anthropic's stream always ends with `message_stop`.
    match state {
        Decoder::Openai(state) if state.finish_reason.is_some() => state.finish(),
        _ => Err(StreamError::Cut(String::new())),
    }
}

enum Decoder {
    Anthropic(AnthropicState),
    Openai(OpenaiState),
}

fn parse(data: &str) -> Result<Value, StreamError> {
    serde_json::from_str(data).map_err(|error| StreamError::Protocol(format!("{error}: {}", truncate(data, 200))))
}

pub(crate) fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((idx, _)) => format!("{}…", &text[..idx]),
        None => text.to_string(),
    }
}

fn count(value: &Value) -> u64 {
    value.as_u64().unwrap_or(0)
}

#[derive(Default)]
struct AnthropicState {
    reply: Reply,
    /// Content blocks by index: text, or a tool call and its JSON so far.
    blocks: BTreeMap<u64, Block>,
}

enum Block {
    Text(String),
    Tool { id: String, name: String, json: String },
}

impl AnthropicState {
    /// Takes one event; `true` at `message_stop`.
    fn event(&mut self, name: &str, data: &str) -> Result<bool, StreamError> {
        match name {
            "ping" => {}
            "message_start" => {
                let value = parse(data)?;
                let usage = &value["message"]["usage"];
                self.reply.usage.input = count(&usage["input_tokens"]);
                self.reply.usage.cache_read = count(&usage["cache_read_input_tokens"]);
                self.reply.usage.cache_write = count(&usage["cache_creation_input_tokens"]);
                self.reply.usage.output = count(&usage["output_tokens"]);
            }
            "content_block_start" => {
                let value = parse(data)?;
                let index = count(&value["index"]);
                let block = &value["content_block"];
                let block = match block["type"].as_str() {
                    Some("tool_use") => Block::Tool {
                        id: block["id"].as_str().unwrap_or_default().to_string(),
                        name: block["name"].as_str().unwrap_or_default().to_string(),
                        json: String::new(),
                    },
                    _ => Block::Text(block["text"].as_str().unwrap_or_default().to_string()),
                };
                self.blocks.insert(index, block);
            }
            "content_block_delta" => {
                let value = parse(data)?;
                let index = count(&value["index"]);
                let delta = &value["delta"];
                match (self.blocks.get_mut(&index), delta["type"].as_str()) {
                    (Some(Block::Text(text)), Some("text_delta")) => {
                        text.push_str(delta["text"].as_str().unwrap_or_default());
                    }
                    (Some(Block::Tool { json, .. }), Some("input_json_delta")) => {
                        json.push_str(delta["partial_json"].as_str().unwrap_or_default());
                    }
                    // Thinking and signature deltas, and deltas of blocks we do not keep.
                    _ => {}
                }
            }
            "content_block_stop" => {}
            "message_delta" => {
                let value = parse(data)?;
                if let Some(reason) = value["delta"]["stop_reason"].as_str() {
                    self.reply.stop_reason = Some(reason.to_string());
                }
                // The counts in `message_delta` are cumulative.
                let usage = &value["usage"];
                if let Some(output) = usage["output_tokens"].as_u64() {
                    self.reply.usage.output = output;
                }
                if let Some(input) = usage["input_tokens"].as_u64() {
                    self.reply.usage.input = input;
                }
                if let Some(read) = usage["cache_read_input_tokens"].as_u64() {
                    self.reply.usage.cache_read = read;
                }
                if let Some(write) = usage["cache_creation_input_tokens"].as_u64() {
                    self.reply.usage.cache_write = write;
                }
            }
            "message_stop" => return Ok(true),
            "error" => {
                let value = parse(data)?;
                let kind = value["error"]["type"].as_str().unwrap_or("error");
                let message = value["error"]["message"].as_str().unwrap_or_default();
                return Err(StreamError::Provider {
                    message: format!("{kind}: {message}"),
                    retryable: matches!(kind, "overloaded_error" | "api_error" | "rate_limit_error"),
                });
            }
            _ => {}
        }
        Ok(false)
    }

    fn finish(mut self) -> Result<Reply, StreamError> {
        for block in std::mem::take(&mut self.blocks).into_values() {
            match block {
                Block::Text(text) => self.reply.text.push_str(&text),
                Block::Tool { id, name, json } => {
                    let arguments = if json.trim().is_empty() { json!({}) } else { parse(&json)? };
                    self.reply.calls.push(Call { id, api_name: name, arguments });
                }
            }
        }
        Ok(self.reply)
    }
}

#[derive(Default)]
struct OpenaiState {
    text: String,
    /// Tool calls by index: id, name, arguments so far.
    calls: BTreeMap<u64, (String, String, String)>,
    usage: TokenUsage,
    finish_reason: Option<String>,
}

impl OpenaiState {
    /// Takes one chunk; `true` at `[DONE]`.
    fn event(&mut self, data: &str) -> Result<bool, StreamError> {
        if data.trim() == "[DONE]" {
            return Ok(true);
        }
        let value = parse(data)?;
        if let Some(error) = value.get("error").filter(|error| !error.is_null()) {
            let message = error["message"].as_str().map_or_else(|| error.to_string(), str::to_string);
            return Err(StreamError::Provider { message, retryable: false });
        }
        for choice in value["choices"].as_array().into_iter().flatten() {
            let delta = &choice["delta"];
            if let Some(text) = delta["content"].as_str() {
                self.text.push_str(text);
            }
            for call in delta["tool_calls"].as_array().into_iter().flatten() {
                let entry = self.calls.entry(count(&call["index"])).or_default();
                if let Some(id) = call["id"].as_str() {
                    entry.0.push_str(id);
                }
                if let Some(name) = call["function"]["name"].as_str() {
                    entry.1.push_str(name);
                }
                if let Some(arguments) = call["function"]["arguments"].as_str() {
                    entry.2.push_str(arguments);
                }
            }
            if let Some(reason) = choice["finish_reason"].as_str() {
                self.finish_reason = Some(reason.to_string());
            }
        }
        let usage = &value["usage"];
        if usage.is_object() {
            let cached = count(&usage["prompt_tokens_details"]["cached_tokens"]);
            self.usage = TokenUsage {
                input: count(&usage["prompt_tokens"]).saturating_sub(cached),
                output: count(&usage["completion_tokens"]),
                cache_read: cached,
                cache_write: 0,
            };
        }
        Ok(false)
    }

    fn finish(self) -> Result<Reply, StreamError> {
        let mut calls = Vec::with_capacity(self.calls.len());
        for (id, name, arguments) in self.calls.into_values() {
            let arguments = if arguments.trim().is_empty() { json!({}) } else { parse(&arguments)? };
            calls.push(Call { id, api_name: name, arguments });
        }
        Ok(Reply { text: self.text, calls, usage: self.usage, stop_reason: self.finish_reason })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(kind: ProviderKind, text: &str) -> Result<Reply, StreamError> {
        // Split at awkward places, as a network would.
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            text.as_bytes().chunks(7).map(|chunk| Ok(chunk.to_vec())).collect();
        read_stream(kind, futures::stream::iter(chunks)).await
    }

    /// The event sequence of Anthropic's streaming documentation, with a tool call.
    const ANTHROPIC: &str = "event: message_start
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"usage\":{\"input_tokens\":472,\"cache_creation_input_tokens\":10,\"cache_read_input_tokens\":20,\"output_tokens\":2}}}

event: content_block_start
data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}

event: ping
data: {\"type\": \"ping\"}

event: content_block_delta
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Okay, let me check\"}}

event: content_block_stop
data: {\"type\":\"content_block_stop\",\"index\":0}

event: content_block_start
data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01\",\"name\":\"get_weather\",\"input\":{}}}

event: content_block_delta
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}

event: content_block_delta
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"location\\\": \\\"San Fra\"}}

event: content_block_delta
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"ncisco, CA\\\"}\"}}

event: content_block_stop
data: {\"type\":\"content_block_stop\",\"index\":1}

event: message_delta
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":89}}

event: message_stop
data: {\"type\":\"message_stop\"}

";

    #[tokio::test]
    async fn anthropic_text_tool_use_and_usage() {
        let reply = read(ProviderKind::Anthropic, ANTHROPIC).await.unwrap();
        assert_eq!(reply.text, "Okay, let me check");
        assert_eq!(
            reply.calls,
            [Call {
                id: "toolu_01".into(),
                api_name: "get_weather".into(),
                arguments: json!({"location": "San Francisco, CA"})
            }]
        );
        assert_eq!(reply.usage, TokenUsage { input: 472, output: 89, cache_read: 20, cache_write: 10 });
        assert_eq!(reply.stop_reason.as_deref(), Some("tool_use"));
    }

    #[tokio::test]
    async fn anthropic_errors_and_cuts() {
        let overloaded = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":1}}}\n\nevent: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n";
        assert_eq!(
            read(ProviderKind::Anthropic, overloaded).await,
            Err(StreamError::Provider { message: "overloaded_error: Overloaded".into(), retryable: true })
        );
        let cut = &ANTHROPIC[..ANTHROPIC.find("event: message_delta").unwrap()];
        assert_eq!(read(ProviderKind::Anthropic, cut).await, Err(StreamError::Cut(String::new())));
        let garbage = "event: message_start\ndata: {not json\n\n";
        assert!(matches!(read(ProviderKind::Anthropic, garbage).await, Err(StreamError::Protocol(_))));
    }

    /// Chunks as OpenAI streams them: tool calls by index over several chunks, the usage in a
    /// last chunk without choices (`stream_options.include_usage`).
    const OPENAI: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"index\":0,\"id\":\"call_a\",\"type\":\"function\",\"function\":{\"name\":\"baton__get_task\",\"arguments\":\"\"}}]},\"finish_reason\":null}],\"usage\":null}

data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"id\\\":\"}}]},\"finish_reason\":null}],\"usage\":null}

data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_b\",\"type\":\"function\",\"function\":{\"name\":\"fs__read\",\"arguments\":\"{}\"}}]},\"finish_reason\":null}],\"usage\":null}

data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\" 7}\"}}]},\"finish_reason\":null}],\"usage\":null}

data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}],\"usage\":null}

data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":100,\"completion_tokens\":17,\"total_tokens\":117,\"prompt_tokens_details\":{\"cached_tokens\":40}}}

data: [DONE]

";

    #[tokio::test]
    async fn openai_tool_call_deltas_and_the_usage_chunk() {
        let reply = read(ProviderKind::Openai, OPENAI).await.unwrap();
        assert_eq!(reply.calls.len(), 2);
        assert_eq!(
            reply.calls[0],
            Call { id: "call_a".into(), api_name: "baton__get_task".into(), arguments: json!({"id": 7}) }
        );
        assert_eq!(reply.calls[1].api_name, "fs__read");
        assert_eq!(reply.usage, TokenUsage { input: 60, output: 17, cache_read: 40, cache_write: 0 });
        assert_eq!(reply.stop_reason.as_deref(), Some("tool_calls"));
        let cut = &OPENAI[..OPENAI.find("data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},").unwrap()];
        assert_eq!(read(ProviderKind::Openai, cut).await, Err(StreamError::Cut(String::new())));
        let error = "data: {\"error\": {\"message\": \"model not found\", \"type\": \"invalid_request_error\"}}\n\n";
        assert_eq!(
            read(ProviderKind::Openai, error).await,
            Err(StreamError::Provider { message: "model not found".into(), retryable: false })
        );
    }

    #[test]
    fn bodies_in_each_format() {
        let messages = vec![
            Msg::User("review".into()),
            Msg::Assistant {
                text: String::new(),
                calls: vec![Call { id: "c1".into(), api_name: "baton__get_task".into(), arguments: json!({"id": 1}) }],
            },
            Msg::ToolResults(vec![ToolOutput { call_id: "c1".into(), content: "{}".into(), is_error: false }]),
        ];
        let tools = vec![ApiTool {
            api_name: "baton__get_task".into(),
            description: "d".into(),
            input_schema: json!({"type": "object"}),
        }];
        let request = Request { model: "m", max_tokens: 10, system: "sys", messages: &messages, tools: &tools };
        let anthropic = body(ProviderKind::Anthropic, &request);
        assert_eq!(anthropic["system"], "sys");
        assert_eq!(
            anthropic["messages"][1]["content"],
            json!([{"type": "tool_use", "id": "c1", "name": "baton__get_task", "input": {"id": 1}}])
        );
        assert_eq!(anthropic["messages"][2]["content"][0]["type"], "tool_result");
        assert_eq!(anthropic["tools"][0]["input_schema"], json!({"type": "object"}));
        let openai = body(ProviderKind::Openai, &request);
        assert_eq!(openai["messages"][0], json!({"role": "system", "content": "sys"}));
        assert_eq!(openai["messages"][2]["tool_calls"][0]["function"]["arguments"], "{\"id\":1}");
        assert_eq!(openai["messages"][3], json!({"role": "tool", "tool_call_id": "c1", "content": "{}"}));
        assert_eq!(openai["stream_options"], json!({"include_usage": true}));
        assert_eq!(openai["tools"][0]["function"]["parameters"], json!({"type": "object"}));
    }
}
