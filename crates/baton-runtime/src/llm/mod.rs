//! LLM agents (`runtime = "llm"`): Baton calls a model's API in a loop, with tools, and the
//! model's final answer is the task's result.
//!
//! An attempt is a conversation. The system prompt is the agent's brief (role, objectives,
//! runbook); the user turn is the task (title, description, input, the results of the tasks it
//! depends on, the messages waiting for the agent). Each turn reserves budget first (`AgentRequest::ReserveBudget`: a budget that
//! runs out stops the conversation between turns, saying which; one that refuses the first
//! turn gives the task back uncounted, to wait for budget, `AgentRequest::WaitForBudget`), streams the model's answer
//! ([`wire`], [`http`]: retries with backoff), reports the provider's exact token counts and
//! their cost ([`prices`]) to the budgets, and runs the tools the model called, all at once
//! ([`tools`]: Baton's own and an external [`ToolProvider`]'s). A turn without tool calls ends
//! the conversation. Everything said is written to the attempt's transcript, durably, through
//! the engine (`AgentRequest::Transcript`).
//!
//! The result is the answer's text, as a JSON string; when the task's input says
//! `"response_format": "json"`, the answer must be one JSON value, which becomes the result
//! (an answer that does not parse fails the attempt). Cancelling an attempt drops its HTTP
//! stream at once.

pub mod http;
pub mod prices;
pub mod tools;
pub(crate) mod wire;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use baton_core::Outcome;
use baton_core::config::{AgentSpec, LlmSpec};
use baton_core::messages::Delivery;
use baton_core::transcript::{Entry, Role, ToolCall};

use self::http::{Client, RetryPolicy};
use self::tools::{BatonTools, ToolSet, result_text};
use self::wire::{Msg, Request, ToolOutput};
use crate::agent::{AgentContext, AgentError, AgentEvent, AgentRequest, AgentRuntime, Attempt, RequestErrorKind};
use crate::brief::Brief;
use crate::clock::Clock;
use crate::process::{ProcessEnv, Registry};
use crate::tools::ToolProvider;

/// The key of a task's input that asks for a JSON answer: `"response_format": "json"`.
pub const RESPONSE_FORMAT: &str = "response_format";

/// How LLM agents call their providers, besides their configuration.
#[derive(Debug, Clone, Copy)]
pub struct LlmOptions {
    pub retry: RetryPolicy,
    /// Stamps transcript entries and reads `retry-after` dates.
    pub clock: Clock,
    /// The longest silence from a provider before the try fails (and is retried): the streams
    /// send a token or a ping every few seconds, so a long silence is a dead connection. `None`
    /// for tests on tokio's paused clock, which would fire it while real I/O is pending.
    pub read_timeout: Option<std::time::Duration>,
}

/// The default of [`LlmOptions::read_timeout`].
pub const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

impl Default for LlmOptions {
    fn default() -> LlmOptions {
        LlmOptions { retry: RetryPolicy::default(), clock: Clock::system(), read_timeout: Some(READ_TIMEOUT) }
    }
}

/// The runtime of an LLM agent.
pub struct LlmAgent {
    name: String,
    llm: LlmSpec,
    brief: Brief,
    /// The provider, or why it cannot be called (its key is not set).
    client: Result<Arc<Client>, String>,
    /// The agent's `tools` globs.
    globs: Vec<String>,
    /// The run's other tools (its MCP servers), when it has some.
    external: Option<Arc<dyn ToolProvider>>,
    /// Where the agent's waiting messages are read.
    registry: Option<Registry>,
    /// Where the agent's log is written (`NAME.log`): its transcripts as text.
    log_dir: std::path::PathBuf,
    clock: Clock,
    /// Set by `start`. A std mutex: held only to clone it, never across an await.
    context: Mutex<Option<AgentContext>>,
}

impl LlmAgent {
    pub fn new(
        spec: &AgentSpec,
        llm: LlmSpec,
        env: &ProcessEnv,
        external: Option<Arc<dyn ToolProvider>>,
        options: LlmOptions,
    ) -> LlmAgent {
        let who = format!("agent `{}`", spec.name);
        let client = Client::build(llm.provider.clone(), &env.env, &options, &who).map(Arc::new);
        LlmAgent {
            name: spec.name.clone(),
            globs: spec.tools.clone(),
            llm,
            brief: Brief::of(spec, &env.base_dir),
            client,
            external,
            registry: env.registry.clone(),
            log_dir: env.log_dir.clone(),
            clock: options.clock,
            context: Mutex::new(None),
        }
    }

    fn context(&self) -> Option<AgentContext> {
        self.context.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// The system prompt: role, objectives, runbook, and how to answer.
    async fn system_prompt(&self, wants_json: bool) -> Result<String, String> {
        let mut prompt = format!(
            "You are {}, an agent of a team that Baton orchestrates.\n\nRole: {}\n",
            self.name, self.brief.role
        );
        if !self.brief.objectives.is_empty() {
            prompt.push_str("\nObjectives:\n");
            for objective in &self.brief.objectives {
                prompt.push_str(&format!("- {}", objective.description));
                if !objective.deliverable.is_empty() {
                    prompt.push_str(&format!(" (deliverable: {})", objective.deliverable));
                }
                if !objective.validation.is_empty() {
                    prompt.push_str(&format!(" (validated by: {})", objective.validation));
                }
                prompt.push('\n');
            }
        }
        if let Some(path) = &self.brief.runbook {
            let runbook = tokio::fs::read_to_string(path)
                .await
                .map_err(|error| format!("cannot read the runbook {}: {error}", path.display()))?;
            prompt.push_str("\nRunbook:\n");
            prompt.push_str(&runbook);
            prompt.push('\n');
        }
        prompt.push_str(
            "\nWork on the task you are given, using the tools offered when they help. Your last message, without tool calls, is the task's result.",
        );
        if wants_json {
            prompt.push_str(" The task asks for JSON: answer with one JSON value only, without any other text.");
        }
        Ok(prompt)
    }

    /// Writes transcript entries through the engine; a failure is logged, not the attempt's.
    async fn record(&self, context: &AgentContext, attempt: &Attempt, entries: Vec<Entry>) {
        let (agent, task, number) = (self.name.clone(), attempt.task.id, attempt.number());
        let shown: Vec<Entry> = entries.iter().map(|entry| Entry { attempt: number, ..entry.clone() }).collect();
        let written =
            context.ask(|reply| AgentRequest::Transcript { agent, task, attempt: number, entries, reply }).await;
        if let Err(error) = written {
            tracing::warn!(%error, agent = %self.name, %task, "cannot write a transcript");
        }
        // The agent's log (`baton logs`) is the transcript as text.
        // As a process agent's log: a header line per attempt, then what was said.
        let rendered = baton_core::transcript::render(&shown);
        let body = rendered.split_once('\n').map_or("", |(_, body)| body);
        let text = if shown.first().is_some_and(|entry| entry.role == Role::System) {
            format!("--- task {task} `{}` attempt {number}\n{body}", attempt.task.title)
        } else {
            body.to_string()
        };
        let appended = async {
            tokio::fs::create_dir_all(&self.log_dir).await?;
            let mut file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.log_dir.join(format!("{}.log", self.name)))
                .await?;
            tokio::io::AsyncWriteExt::write_all(&mut file, text.as_bytes()).await
        };
        if let Err(error) = appended.await {
            tracing::warn!(%error, agent = %self.name, "cannot write the agent's log");
        }
    }

    async fn converse(&self, attempt: &Attempt, context: &AgentContext) -> Outcome {
        let client = match &self.client {
            Ok(client) => client.clone(),
            Err(reason) => return Outcome::Failed { reason: reason.clone() },
        };
        let task = &attempt.task;
        let wants_json = task.input.get(RESPONSE_FORMAT).and_then(Value::as_str) == Some("json");
        let system = match self.system_prompt(wants_json).await {
            Ok(system) => system,
            Err(reason) => return Outcome::Failed { reason },
        };
        let inbox = match &self.registry {
            Some(registry) => registry.inbox(&attempt.run_id, &attempt.agent).await,
            None => Vec::new(),
        };
        let mut dependencies = Vec::with_capacity(task.depends_on.len());
        for &id in &task.depends_on {
            let agent = self.name.clone();
            if let Ok(record) = context.ask(|reply| AgentRequest::GetTask { agent, task: id, reply }).await {
                dependencies.push(record);
            }
        }
        let user = user_turn(attempt, &dependencies, &inbox);
        let now = self.clock.now();
        // Written once the first turn has its budget: an attempt that waits for budget leaves
        // no trace, its task being given back uncounted.
        let opening = vec![Entry::new(Role::System, system.clone(), now), Entry::new(Role::User, user.clone(), now)];
        let mut providers: Vec<Arc<dyn ToolProvider>> =
            vec![Arc::new(BatonTools { context: context.clone(), agent: self.name.clone(), task: task.id })];
        providers.extend(self.external.clone());
        let toolset = ToolSet::new(providers, &self.globs).await;
        let mut messages = vec![Msg::User(user)];
        let ended = self.turns(attempt, context, &client, &system, &toolset, &mut messages, wants_json, opening).await;
        match ended {
            Ended::Outcome(outcome) => {
                self.acknowledge(context, inbox).await;
                outcome
            }
            // The messages wait for the next attempt, which is handed them again.
            Ended::WaitsForBudget(reason) => Outcome::Failed { reason },
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn turns(
        &self,
        attempt: &Attempt,
        context: &AgentContext,
        client: &Client,
        system: &str,
        toolset: &ToolSet,
        messages: &mut Vec<Msg>,
        wants_json: bool,
        opening: Vec<Entry>,
    ) -> Ended {
        let task = attempt.task.id;
        let mut opening = Some(opening);
        let price = prices::price_of(&self.llm.provider, &self.llm.model);
        for turn in 1..=self.llm.max_turns {
            let request = Request {
                model: &self.llm.model,
                max_tokens: self.llm.max_tokens,
                system,
                messages,
                tools: &toolset.offered,
            };
            let body = wire::body(self.llm.provider.kind, &request);
            // What this turn may cost at most: the prompt (about 4 bytes a token) and the
            // longest answer asked for.
            let tokens = u64::from(self.llm.max_tokens) + (body.to_string().len() as u64).div_ceil(4);
            let agent = self.name.clone();
            let reserved =
                context.ask(|reply| AgentRequest::ReserveBudget { agent, task: Some(task), tokens, reply }).await;
            if let Err(error) = reserved {
                let reason = match error.kind {
                    RequestErrorKind::Refused => format!("stopped before turn {turn}: {}", error.message),
                    _ => format!("stopped before turn {turn}: cannot reserve budget: {}", error.message),
                };
                // Refused before anything was done: the task waits for budget, as one whose
                // `estimated_tokens` do not fit, without losing an attempt.
                if turn == 1 && error.kind == RequestErrorKind::Refused {
                    let agent = self.name.clone();
                    let waits = context.ask(|reply| AgentRequest::WaitForBudget { agent, task, tokens, reply }).await;
                    return match waits {
                        Ok(()) => Ended::WaitsForBudget(reason),
                        Err(refusal) => Ended::Outcome(Outcome::Failed { reason: format!("{reason}; {refusal}") }),
                    };
                }
                return Ended::Outcome(Outcome::Failed { reason });
            }
            if let Some(opening) = opening.take() {
                self.record(context, attempt, opening).await;
            }
            let reply = match client.turn(&body).await {
                Ok(reply) => reply,
                Err(reason) => return Ended::Outcome(Outcome::Failed { reason }),
            };
            let cost = prices::cost(price, &reply.usage);
            let usage = json!({
                "input_tokens": reply.usage.input,
                "output_tokens": reply.usage.output,
                "cache_creation_input_tokens": reply.usage.cache_write,
                "cache_read_input_tokens": reply.usage.cache_read,
                "cost_usd": cost,
                "model": self.llm.model,
                "provider": self.llm.provider.name,
            });
            let _ = context.events.send(AgentEvent::Usage {
                agent: self.name.clone(),
                task: Some(task),
                usage: usage.clone(),
            });
            let mut entry = Entry::new(Role::Assistant, reply.text.clone(), self.clock.now());
            entry.usage = Some(usage);
            entry.tool_calls = reply
                .calls
                .iter()
                .map(|call| ToolCall {
                    id: call.id.clone(),
                    name: toolset.name_of(&call.api_name).unwrap_or(&call.api_name).to_string(),
                    arguments: call.arguments.clone(),
                })
                .collect();
            self.record(context, attempt, vec![entry]).await;
            messages.push(Msg::Assistant { text: reply.text.clone(), calls: reply.calls.clone() });
            if reply.calls.is_empty() {
                if reply.stop_reason.as_deref().is_some_and(|reason| matches!(reason, "max_tokens" | "length")) {
                    return Ended::Outcome(Outcome::Failed {
                        reason: format!(
                            "the answer was cut at max_tokens ({}); raise the agent's max_tokens",
                            self.llm.max_tokens
                        ),
                    });
                }
                return Ended::Outcome(answer(&reply.text, wants_json));
            }
            let results = futures::future::join_all(
                reply.calls.iter().map(|call| toolset.call(&call.api_name, call.arguments.clone())),
            )
            .await;
            let now = self.clock.now();
            let mut outputs = Vec::with_capacity(results.len());
            let mut entries = Vec::with_capacity(results.len());
            for (call, result) in reply.calls.iter().zip(results) {
                let content = result_text(&result);
                let mut entry = Entry::new(Role::Tool, Value::Array(result.content.clone()), now);
                entry.tool_call_id = Some(call.id.clone());
                entries.push(entry);
                outputs.push(ToolOutput { call_id: call.id.clone(), content, is_error: result.is_error });
            }
            self.record(context, attempt, entries).await;
            messages.push(Msg::ToolResults(outputs));
        }
        Ended::Outcome(Outcome::Failed {
            reason: format!(
                "no final answer after max_turns = {} turns (the model kept calling tools)",
                self.llm.max_turns
            ),
        })
    }

    /// Has the engine acknowledge the messages handed over with the task.
    async fn acknowledge(&self, context: &AgentContext, inbox: Vec<Delivery>) {
        if inbox.is_empty() {
            return;
        }
        let (reply, acknowledged) = tokio::sync::oneshot::channel();
        let taken = AgentEvent::MessagesTaken { agent: self.name.clone(), deliveries: inbox, reply };
        if context.events.send(taken).is_ok() {
            let _ = acknowledged.await;
        }
    }
}

/// How a conversation ended.
enum Ended {
    Outcome(Outcome),
    /// The budget refused the first turn and the engine takes the task back, uncounted, to
    /// wait for budget: the outcome is not the task's.
    WaitsForBudget(String),
}

/// The task as the model is handed it, with the results of the tasks it depends on.
fn user_turn(attempt: &Attempt, dependencies: &[baton_core::model::TaskRecord], inbox: &[Delivery]) -> String {
    let task = &attempt.task;
    let mut text = format!("Task {} (attempt {}): {}\n", task.id, task.attempt, task.title);
    if !task.description.is_empty() {
        text.push('\n');
        text.push_str(&task.description);
        text.push('\n');
    }
    let has_input = task.input.as_object().is_none_or(|object| !object.is_empty()) && !task.input.is_null();
    if has_input {
        text.push_str("\nInput:\n");
        text.push_str(&serde_json::to_string_pretty(&task.input).unwrap_or_default());
        text.push('\n');
    }
    for dependency in dependencies {
        text.push_str(&format!(
            "\nResult of task {} ({}), which this task depends on:\n",
            dependency.id, dependency.title
        ));
        match &dependency.result {
            Some(Value::String(result)) => text.push_str(result),
            Some(result) => text.push_str(&serde_json::to_string_pretty(result).unwrap_or_default()),
            None => text.push_str("(none)"),
        }
        text.push('\n');
    }
    if !inbox.is_empty() {
        text.push_str("\nMessages for you:\n");
        for delivery in inbox {
            text.push_str(&format!("- from {}: {}", delivery.from, delivery.body));
            if !delivery.data.is_null() {
                text.push_str(&format!(" {}", delivery.data));
            }
            text.push('\n');
        }
    }
    text
}

/// The task's result from the final answer.
fn answer(text: &str, wants_json: bool) -> Outcome {
    if !wants_json {
        return Outcome::Succeeded { result: Value::String(text.to_string()) };
    }
    let trimmed = text.trim();
    // Models often fence JSON even when told not to.
    let unfenced = trimmed
        .strip_prefix("```json")
        .or_else(|| trimmed.strip_prefix("```"))
        .and_then(|rest| rest.trim_end().strip_suffix("```"))
        .unwrap_or(trimmed);
    match serde_json::from_str::<Value>(unfenced.trim()) {
        Ok(result) => Outcome::Succeeded { result },
        Err(error) => Outcome::Failed {
            reason: format!(
                "the task asks for JSON (response_format = \"json\") and the answer is not: {error}: {}",
                wire::truncate(trimmed, 200)
            ),
        },
    }
}

#[async_trait]
impl AgentRuntime for LlmAgent {
    async fn start(&self, context: AgentContext) -> Result<(), AgentError> {
        if let Err(reason) = &self.client {
            return Err(AgentError::permanent(reason.clone()));
        }
        *self.context.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(context);
        Ok(())
    }

    async fn run(&self, attempt: Attempt, cancel: CancellationToken) -> Outcome {
        let Some(context) = self.context() else {
            return Outcome::Failed { reason: "the agent was not started".into() };
        };
        // Dropping the conversation drops its HTTP stream: cancelling aborts it at once.
        tokio::select! {
            outcome = self.converse(&attempt, &context) => outcome,
            () = cancel.cancelled() => Outcome::Failed { reason: "cancelled".into() },
        }
    }

    async fn stop(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_answers_parse_fenced_or_not() {
        assert_eq!(answer("plain", false), Outcome::Succeeded { result: json!("plain") });
        assert_eq!(answer("```json\n{\"ok\": true}\n```", true), Outcome::Succeeded { result: json!({"ok": true}) });
        assert_eq!(answer(" [1, 2] ", true), Outcome::Succeeded { result: json!([1, 2]) });
        let Outcome::Failed { reason } = answer("sure! {", true) else { panic!("not JSON") };
        assert!(
            reason.starts_with("the task asks for JSON (response_format = \"json\") and the answer is not"),
            "{reason}"
        );
    }
}
