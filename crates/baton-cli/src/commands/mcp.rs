//! `baton mcp`: Baton's MCP server over stdio, for a coding agent that starts it as a
//! subprocess (`claude mcp add baton -- baton mcp`).
//!
//! It is a bridge, not a second server: each JSON-RPC message read from stdin (one per line)
//! is sent to the `/mcp` endpoint of the process executing the run — found as every command
//! that changes the run finds it ([`source::front_door`]) — and the answer is written to
//! stdout, one message per line. So there is one MCP implementation (the server's), whose
//! commands reach the engine that executes the run, with the caller's token checked by the
//! same gate as every request. A server in this process could only read the store: the
//! process executing a run is the only writer of its state.
//!
//! Both protocol eras pass through: a stateless (2026-07-28) request's routing headers
//! (`MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name`) are written from the message itself, and
//! a handshake-era session's id is kept from the `initialize` answer and sent with every later
//! message; the session's notifications (`GET /mcp`) are written to stdout as they come. An
//! answer that is a stream of Server-Sent Events (a long call's `notifications/progress`, then
//! its response) is written a line per message as it comes; meanwhile stdin is read on, its
//! lines kept for after, and its end or a `notifications/cancelled` of the call drops the
//! stream, which ends the call on the server.

use std::collections::VecDeque;
use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use baton_server::mcp::{METHOD_HEADER, NAME_HEADER, SESSION_HEADER, VERSION_HEADER};

use super::source;
use crate::client::{Client, McpAnswer};
use crate::{Cli, Failure};

const VERSION_META: &str = "io.modelcontextprotocol/protocolVersion";

pub(super) async fn mcp(cli: &Cli) -> Result<u8, Failure> {
    let client = Arc::new(source::front_door(cli, None).await?);
    tracing::debug!(at = %client.url(), "baton mcp: bridging stdio to /mcp");
    let (out_tx, mut out_rx) = mpsc::channel::<String>(64);
    // One writer, so that answers and a session's notifications never interleave in a line.
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(line) = out_rx.recv().await {
            let written = async {
                stdout.write_all(line.as_bytes()).await?;
                stdout.write_all(b"\n").await?;
                stdout.flush().await
            };
            if written.await.is_err() {
                // The client went away.
                return;
            }
        }
    });

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    // Lines read while a long call's stream was being written, to send after it.
    let mut pending: VecDeque<String> = VecDeque::new();
    let mut stdin_ended = false;
    let mut session: Option<String> = None;
    let mut notifications: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let line = if let Some(line) = pending.pop_front() {
            line
        } else if stdin_ended {
            break;
        } else {
            match lines.next_line().await {
                Ok(Some(line)) => line,
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(%error, "baton mcp: cannot read stdin");
                    break;
                }
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let message: Option<Value> = serde_json::from_str(&line).ok();
        let id = message.as_ref().and_then(|message| message.get("id")).cloned();
        let headers = headers_for(message.as_ref(), session.as_deref());
        match client.mcp_post(line, &headers).await {
            Ok(mut answer) => {
                if let Some(opened) = answer.session.clone().filter(|opened| session.as_ref() != Some(opened)) {
                    if let Some(previous) = notifications.take() {
                        previous.abort();
                    }
                    notifications =
                        Some(tokio::spawn(forward_notifications(Arc::clone(&client), opened.clone(), out_tx.clone())));
                    session = Some(opened);
                }
                if let Some(mut stream) = answer.stream.take() {
                    // A long call: its notifications and then its response, line by line, as
                    // they come. Meanwhile stdin is read on: a line is kept for after, a
                    // `notifications/cancelled` of this call or the end of stdin (the client
                    // went away) drops the stream, which ends the call on the server.
                    loop {
                        tokio::select! {
                            data = stream.next() => {
                                let Some(data) = data else { break };
                                let line = serde_json::from_str::<Value>(&data).map_or(data, |message| message.to_string());
                                let _ = out_tx.send(line).await;
                            }
                            line = lines.next_line(), if !stdin_ended => match line {
                                Ok(Some(line)) => {
                                    let cancels = cancelled_request(&line).is_some_and(|cancelled| Some(&cancelled) == id.as_ref());
                                    pending.push_back(line);
                                    if cancels {
                                        break;
                                    }
                                }
                                Ok(None) | Err(_) => {
                                    stdin_ended = true;
                                    break;
                                }
                            },
                        }
                    }
                } else if let Some(reply) = reply(&answer, id.as_ref()) {
                    let _ = out_tx.send(reply).await;
                }
            }
            Err(error) => {
                if let Some(id) = id {
                    let message = format!("Baton's API at {} does not answer: {error}", client.url());
                    let _ = out_tx.send(error_message(&id, -32603, &message)).await;
                }
            }
        }
    }
    if let Some(notifications) = notifications {
        notifications.abort();
    }
    drop(out_tx);
    let _ = writer.await;
    Ok(0)
}

/// The request a `notifications/cancelled` line cancels.
fn cancelled_request(line: &str) -> Option<Value> {
    let message: Value = serde_json::from_str(line).ok()?;
    if message.get("method").and_then(Value::as_str) != Some("notifications/cancelled") {
        return None;
    }
    message.get("params")?.get("requestId").cloned()
}

/// The headers a message is sent with: a stateless request's routing headers, from the
/// message; else the session's id, once there is one.
fn headers_for(message: Option<&Value>, session: Option<&str>) -> Vec<(&'static str, String)> {
    let mut headers = Vec::new();
    let method = message.and_then(|message| message.get("method")).and_then(Value::as_str);
    let params = message.and_then(|message| message.get("params"));
    let version = params.and_then(|params| params.get("_meta")).and_then(|meta| meta.get(VERSION_META));
    if let (Some(method), Some(version)) = (method, version.and_then(Value::as_str)) {
        headers.push((VERSION_HEADER, header_value(version)));
        headers.push((METHOD_HEADER, header_value(method)));
        let named = match method {
            "tools/call" | "prompts/get" => params.and_then(|params| params.get("name")),
            "resources/read" => params.and_then(|params| params.get("uri")),
            _ => None,
        };
        if let Some(named) = named.and_then(Value::as_str) {
            headers.push((NAME_HEADER, header_value(named)));
        }
        return headers;
    }
    if let Some(session) = session {
        headers.push((SESSION_HEADER, session.to_string()));
    }
    headers
}

/// `text` as a header value: as it is when it is plain visible ASCII, else in MCP's base64
/// form (`=?base64?…?=`).
fn header_value(text: &str) -> String {
    let plain = text.bytes().all(|byte| (0x20..0x7f).contains(&byte)) && text.trim() == text;
    if plain && !text.starts_with("=?base64?") {
        return text.to_string();
    }
    format!("=?base64?{}?=", base64::engine::general_purpose::STANDARD.encode(text))
}

/// The line to write for an answer: the server's JSON-RPC message (on one line); an error of
/// the HTTP API (no token, a rate limit) as a JSON-RPC error of the request; nothing for a
/// notification's `202`.
fn reply(answer: &McpAnswer, id: Option<&Value>) -> Option<String> {
    let body: Option<Value> = serde_json::from_str(&answer.body).ok();
    if let Some(body) = body.as_ref().filter(|body| body.get("jsonrpc").is_some()) {
        return Some(body.to_string());
    }
    let id = id?;
    let message = body
        .as_ref()
        .and_then(|body| body["error"]["message"].as_str())
        .map_or_else(|| format!("the server answered {}: {}", answer.status, answer.body.trim()), str::to_string);
    let message = if answer.status == 401 {
        format!("{message}; `baton mcp` sends the token of --token or BATON_TOKEN")
    } else {
        message
    };
    Some(error_message(id, -32001, &message))
}

fn error_message(id: &Value, code: i64, message: &str) -> String {
    json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } }).to_string()
}

/// Writes the notifications of `session` to stdout until the stream ends.
async fn forward_notifications(client: Arc<Client>, session: String, out: mpsc::Sender<String>) {
    let mut stream = match client.mcp_stream(&session).await {
        Ok(stream) => stream,
        Err(failure) => {
            tracing::debug!(error = %failure.message, "baton mcp: no notification stream");
            return;
        }
    };
    while let Some(data) = stream.next().await {
        let line = serde_json::from_str::<Value>(&data).map_or(data, |message| message.to_string());
        if out.send(line).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stateless_requests_get_their_routing_headers() {
        let message = json!({
            "jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": { "name": "list_agents", "_meta": { VERSION_META: "2026-07-28" } },
        });
        let headers = headers_for(Some(&message), Some("s1"));
        assert_eq!(
            headers,
            vec![
                (VERSION_HEADER, "2026-07-28".to_string()),
                (METHOD_HEADER, "tools/call".to_string()),
                (NAME_HEADER, "list_agents".to_string())
            ]
        );
        let legacy = json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/list" });
        assert_eq!(headers_for(Some(&legacy), Some("s1")), vec![(SESSION_HEADER, "s1".to_string())]);
        assert!(headers_for(None, None).is_empty());
    }

    #[test]
    fn header_values_that_are_not_plain_ascii_are_encoded() {
        assert_eq!(header_value("baton://tasks/1"), "baton://tasks/1");
        assert_eq!(header_value("été"), "=?base64?w6l0w6k=?=");
        assert_eq!(header_value(" x"), "=?base64?IHg=?=");
    }

    #[test]
    fn api_errors_become_json_rpc_errors_of_the_request() {
        let answer = McpAnswer {
            status: 401,
            session: None,
            body: r#"{"error":{"code":"unauthorized","message":"this server needs a bearer token"}}"#.into(),
            stream: None,
        };
        let line = reply(&answer, Some(&json!(7))).unwrap();
        let message: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(message["id"], 7);
        assert!(message["error"]["message"].as_str().unwrap().contains("BATON_TOKEN"));
        assert!(reply(&McpAnswer { status: 202, session: None, body: String::new(), stream: None }, None).is_none());
    }
}
