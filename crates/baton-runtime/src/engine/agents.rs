//! Which runtime each agent of the run has. Runtimes are built with the engine's
//! [`RuntimeFactory`] when the run opens and when agents are added; an agent whose runtime must
//! be rebuilt (its command or environment changed) gets a new one, and the old one is stopped in
//! the background; a removed agent's runtime is stopped and dropped.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_util::task::TaskTracker;

use baton_core::config::{AgentKind, AgentSpec, ProcessMode};

use crate::agent::{AgentRuntime, Unavailable};
use crate::llm::{LlmAgent, LlmOptions};
use crate::process::pty::PtyAgent;
use crate::process::worker::WorkerAgent;
use crate::process::{ProcessAgent, ProcessEnv};
use crate::tools::ToolProvider;

/// Builds the runtime for an agent.
pub type RuntimeFactory = Arc<dyn Fn(&AgentSpec) -> Arc<dyn AgentRuntime> + Send + Sync>;

/// The runtime factory for agents declared in `baton.toml`, without tools beyond Baton's own
/// for LLM agents: [`agent_runtimes`] with `None`.
pub fn process_runtimes(env: ProcessEnv) -> RuntimeFactory {
    agent_runtimes(env, None, LlmOptions::default())
}

/// The runtime factory for agents declared in `baton.toml`: one runtime per kind of agent (and
/// per mode of a process agent). Remote agents need a server's [`crate::RemoteHub`], which
/// wraps this factory (`RemoteHub::runtimes`); without one they cannot start.
///
/// `tools` are the tools LLM agents may call besides Baton's own (`baton/*`): the run's MCP
/// servers, as one [`ToolProvider`]. Each LLM agent is offered those its `tools` globs pick.
pub fn agent_runtimes(env: ProcessEnv, tools: Option<Arc<dyn ToolProvider>>, llm: LlmOptions) -> RuntimeFactory {
    Arc::new(move |spec: &AgentSpec| match &spec.kind {
        AgentKind::Process(process) => {
            let process = process.clone();
            match process.mode {
                ProcessMode::PerTask => {
                    Arc::new(ProcessAgent::new(spec.clone(), process, &env)) as Arc<dyn AgentRuntime>
                }
                ProcessMode::Worker => Arc::new(WorkerAgent::new(spec.clone(), process, &env)) as Arc<dyn AgentRuntime>,
                ProcessMode::Pty => Arc::new(PtyAgent::new(spec.clone(), process, &env)) as Arc<dyn AgentRuntime>,
            }
        }
        AgentKind::A2a(a2a) => Arc::new(crate::a2a::A2aAgent::new(spec, a2a.clone())) as Arc<dyn AgentRuntime>,
        AgentKind::Llm(llm_spec) => {
            Arc::new(LlmAgent::new(spec, llm_spec.clone(), &env, tools.clone(), llm)) as Arc<dyn AgentRuntime>
        }
        AgentKind::Remote(_) => Arc::new(Unavailable {
            reason: "remote agents take their tasks from `baton serve`; run the plan with it".into(),
        }) as Arc<dyn AgentRuntime>,
    })
}

/// The runtimes of the run's agents, by name, and the factory that builds them.
pub(super) struct Agents {
    factory: RuntimeFactory,
    runtimes: HashMap<String, Arc<dyn AgentRuntime>>,
}

/// The runtime of an agent the scheduler knows: the scheduler assigns attempts to its agents
/// only, and every agent it has has a runtime.
impl std::ops::Index<&str> for Agents {
    type Output = Arc<dyn AgentRuntime>;

    fn index(&self, name: &str) -> &Self::Output {
        &self.runtimes[name]
    }
}

impl Agents {
    /// A runtime for each of `specs` (the plan's agents when the run opens).
    pub(super) fn new(factory: RuntimeFactory, specs: &[AgentSpec]) -> Agents {
        let runtimes = specs.iter().map(|spec| (spec.name.clone(), factory(spec))).collect();
        Agents { factory, runtimes }
    }

    pub(super) fn get(&self, name: &str) -> Option<&Arc<dyn AgentRuntime>> {
        self.runtimes.get(name)
    }

    /// Every agent's runtime, for the post office, which delivers messages to them.
    pub(super) fn snapshot(&self) -> Arc<HashMap<String, Arc<dyn AgentRuntime>>> {
        Arc::new(self.runtimes.clone())
    }

    pub(super) fn runtimes(&self) -> impl Iterator<Item = &Arc<dyn AgentRuntime>> {
        self.runtimes.values()
    }

    /// A runtime for `spec`, not yet the agent's ([`Agents::added`], [`Agents::updated`]).
    pub(super) fn build(&self, spec: &AgentSpec) -> Arc<dyn AgentRuntime> {
        (self.factory)(spec)
    }

    /// The scheduler took the agent `name` in: `runtime` is its.
    pub(super) fn added(&mut self, name: String, runtime: Arc<dyn AgentRuntime>) {
        self.runtimes.insert(name, runtime);
    }

    /// The scheduler took the agent's new configuration: when how the agent runs changed
    /// (`rebuild`), `runtime` replaces its old one, which is stopped (the scheduler restarts the
    /// agent if it ran).
    pub(super) fn updated(&mut self, name: String, runtime: Arc<dyn AgentRuntime>, rebuild: bool, tasks: &TaskTracker) {
        if rebuild && let Some(old) = self.runtimes.insert(name, runtime) {
            tasks.spawn(async move { old.stop().await });
        }
    }

    /// The scheduler removed the agent `name` (and gave its attempts up): its runtime is
    /// stopped and dropped.
    pub(super) fn removed(&mut self, name: &str, tasks: &TaskTracker) {
        if let Some(runtime) = self.runtimes.remove(name) {
            tasks.spawn(async move { runtime.stop().await });
        }
    }

    /// After a reconfiguration: agents that are new get a runtime, agents whose runtime changed
    /// get a new one (the old one is stopped first, in the background; the scheduler restarts
    /// the agent when it ran), removed ones are stopped and dropped.
    pub(super) fn replace(&mut self, before: &[AgentSpec], after: &[AgentSpec], tasks: &TaskTracker) {
        for spec in after {
            let previous = before.iter().find(|old| old.name == spec.name);
            if previous.is_some_and(|old| !baton_core::sched::runtime_changed(old, spec)) {
                continue;
            }
            if let Some(old) = self.runtimes.insert(spec.name.clone(), (self.factory)(spec)) {
                tasks.spawn(async move { old.stop().await });
            }
        }
        for old in before {
            if after.iter().all(|spec| spec.name != old.name) {
                self.removed(&old.name, tasks);
            }
        }
    }
}
