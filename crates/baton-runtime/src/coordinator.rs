//! The coordinator (`[coordinator]`): asks a model to turn an objective into tasks, and says
//! why the rules must decide instead when it cannot — no provider, its key not set, a
//! timeout, an API error, an answer that is not the JSON asked for, a proposal that fails the
//! checks every task goes through. What is asked and how answers are read is the core's
//! (`baton_core::coordinator`); this module makes the call (one request through the LLM
//! agents' client: the same wire formats, the same retries), bounded by `timeout`.
//!
//! It decides nothing about the run: the engine asks it off its loop and applies the answer
//! in a turn, with the events (`CoordinatorDecision`, `CoordinatorFallback`) and the usage.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use baton_core::config::{CoordinatorSpec, Plan};
use baton_core::coordinator as core;
use baton_core::coordinator::{Assignment, Triage};
use baton_core::model::{NewTask, TaskRecord};

use crate::llm::LlmOptions;
use crate::llm::http::Client;
use crate::llm::prices;
use crate::llm::wire::{self, Msg, Request};

/// The coordinator of a run: its spec and its client, or why it has none.
pub struct Coordinator {
    spec: CoordinatorSpec,
    /// `Err` says why the rules decide: the mode is rules, no provider, the key is not set.
    client: Result<Arc<Client>, String>,
}

/// What the model answered, read and checked; or why the rules decide.
#[derive(Debug)]
pub struct Decomposed {
    /// The proposal's tasks (checked like any task; the engine checks what needs the store),
    /// or the fallback's reason.
    pub tasks: Result<Vec<NewTask>, String>,
    /// Whether a model was asked (usage may then be reported even when it failed).
    pub asked: bool,
    /// The usage of the call (`UsageReported`'s fields), when the provider answered.
    pub usage: Option<Value>,
}

/// What the model decided about a failed task, or why the rules decide (it stays failed).
#[derive(Debug)]
pub struct Triaged {
    pub triage: Result<Triage, String>,
    pub usage: Option<Value>,
}

/// Which agent the model chose for a task that several can take, or why the rules choose.
#[derive(Debug)]
pub struct Assigned {
    pub assignment: Result<Assignment, String>,
    pub usage: Option<Value>,
}

impl Coordinator {
    /// The coordinator of `spec`, reading its provider's key from `env` (Baton's environment).
    pub fn new(spec: &CoordinatorSpec, env: &BTreeMap<String, String>, options: LlmOptions) -> Coordinator {
        let client = match (&spec.provider, spec.is_llm()) {
            (_, false) => Err("the coordinator is the rules ([coordinator] mode = \"rules\")".to_string()),
            (None, true) => {
                Err("no provider configured: set [coordinator] provider to one of [llm.providers]".to_string())
            }
            (Some(provider), true) => Client::build(provider.clone(), env, &options, "[coordinator]").map(Arc::new),
        };
        Coordinator { spec: spec.clone(), client }
    }

    /// Whether a model decides (`mode = "llm"`), even if it must fall back.
    pub fn is_llm(&self) -> bool {
        self.spec.is_llm()
    }

    /// Asks the model for the tasks of `objective` in `workstream`, keyed under `prefix`.
    pub async fn decompose(&self, plan: &Plan, workstream: &str, objective: &str, prefix: &str) -> Decomposed {
        let client = match &self.client {
            Ok(client) => Arc::clone(client),
            Err(reason) => return Decomposed { tasks: Err(reason.clone()), asked: false, usage: None },
        };
        let system = core::decompose_system_prompt(plan, workstream);
        let user = core::decompose_user_prompt(workstream, objective);
        let (text, usage) = match self.complete(&client, &system, &user).await {
            Ok(answer) => answer,
            Err(reason) => return Decomposed { tasks: Err(reason), asked: true, usage: None },
        };
        let tasks = core::parse_proposal(&text)
            .and_then(|proposed| core::proposal_tasks(plan, Some(workstream), prefix, &proposed))
            .map_err(|reason| format!("invalid proposal: {reason}"));
        Decomposed { tasks, asked: true, usage: Some(usage) }
    }

    /// Asks the model what to do with `task`, which failed its last attempt.
    pub async fn triage(&self, plan: &Plan, task: &TaskRecord) -> Triaged {
        let client = match &self.client {
            Ok(client) => Arc::clone(client),
            Err(reason) => return Triaged { triage: Err(reason.clone()), usage: None },
        };
        let system = core::triage_system_prompt(plan, task.workstream.as_deref());
        let user = core::triage_user_prompt(task);
        match self.complete(&client, &system, &user).await {
            Ok((text, usage)) => Triaged { triage: core::parse_triage(&text), usage: Some(usage) },
            Err(reason) => Triaged { triage: Err(reason), usage: None },
        }
    }

    /// Whether the model is asked to choose among agents: llm mode, `assign` on, and a
    /// provider it can call (without one the run said so once, and the rules choose).
    pub fn can_assign(&self) -> bool {
        self.spec.assigns() && self.client.is_ok()
    }

    /// Asks the model which of `candidates` (agents that can all run it) should take `task`.
    pub async fn assign(&self, plan: &Plan, task: &TaskRecord, candidates: &[String]) -> Assigned {
        let client = match &self.client {
            Ok(client) => Arc::clone(client),
            Err(reason) => return Assigned { assignment: Err(reason.clone()), usage: None },
        };
        let system = core::assign_system_prompt(plan, candidates);
        let user = core::assign_user_prompt(task);
        match self.complete(&client, &system, &user).await {
            Ok((text, usage)) => Assigned { assignment: core::parse_assignment(&text, candidates), usage: Some(usage) },
            Err(reason) => Assigned { assignment: Err(reason), usage: None },
        }
    }

    /// One question, one answer, within `timeout`: the text and its usage.
    async fn complete(&self, client: &Client, system: &str, user: &str) -> Result<(String, Value), String> {
        let messages = [Msg::User(user.to_string())];
        let request = Request {
            model: &self.spec.model,
            max_tokens: self.spec.max_tokens,
            system,
            messages: &messages,
            tools: &[],
        };
        let body = wire::body(client.provider.kind, &request);
        let timeout = self.spec.timeout;
        let reply = match tokio::time::timeout(timeout, client.turn(&body)).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(reason)) => return Err(format!("API error: {reason}")),
            Err(_) => {
                return Err(format!(
                    "timeout: provider {} did not answer within {}",
                    client.provider.name,
                    baton_core::time::format_duration(timeout)
                ));
            }
        };
        let cost = prices::cost(prices::price_of(&client.provider, &self.spec.model), &reply.usage);
        let usage = json!({
            "input_tokens": reply.usage.input,
            "output_tokens": reply.usage.output,
            "cache_creation_input_tokens": reply.usage.cache_write,
            "cache_read_input_tokens": reply.usage.cache_read,
            "cost_usd": cost,
            "model": self.spec.model,
            "provider": client.provider.name,
        });
        Ok((reply.text, usage))
    }
}
