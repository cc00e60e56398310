//! Agents: read them, add, update and remove them in the running plan, start, stop and
//! restart them, and find their logs and terminals.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;
use utoipa::ToSchema;

use baton_core::config::{AgentSpec, ProcessMode};
use baton_core::model::{AgentRecord, AgentState, RunRecord, TaskId, TaskRecord, TaskState};

use crate::{Action, Caller, Error, Grant, Ops, Result, own_only};

/// How long typing an answer into a terminal waits for the attach socket to take it.
const TYPE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Where a terminal agent's screen is served, and whether the caller may type into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TerminalAccess {
    /// The socket `baton attach` connects to: the screen so far, then the output as it comes;
    /// what is written to it is typed into the terminal.
    pub socket: PathBuf,
    /// Whether the caller may type: reading a terminal is reading the agent's log
    /// (`ReadAgentLogs`), typing into it is controlling the agent (`ManageAgents`).
    pub may_type: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AgentInfo {
    pub name: String,
    /// As last recorded; absent until the engine has written the agent.
    pub status: Option<AgentRecord>,
    /// The agent's configuration, as in baton.toml.
    #[schema(value_type = Object)]
    pub spec: AgentSpec,
}

/// What an operator asks of an agent that runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentCommand {
    Start,
    Stop,
    Restart,
}

fn config_error(error: baton_core::config::Error) -> Error {
    Error::invalid(error.to_string().trim().to_string())
}

impl Ops {
    /// Whether a process executes the run: this one's engine, or another's live claim.
    pub(crate) fn executed(&self, run: &RunRecord) -> bool {
        self.is_running() || (run.owner.is_some() && run.owner_until.is_some_and(|until| until > self.clock().now()))
    }

    /// The run's agents as recorded, with the state a reader should see: `offline` for a
    /// started agent when nothing executes the run (whatever its record says, no agent of it
    /// is alive), or when it has been idle and silent for `offline_after`.
    pub(crate) async fn agent_records(&self, run: &RunRecord) -> Result<Vec<AgentRecord>> {
        let mut agents = self.store().agents(self.run_id()).await?;
        let executed = self.executed(run);
        let offline_after = self.plan().settings.offline_after;
        let now = self.clock().now();
        for agent in &mut agents {
            let live = !matches!(agent.state, AgentState::Stopped | AgentState::Failed | AgentState::Waiting);
            let silent =
                agent.state == AgentState::Idle && agent.last_activity.is_some_and(|at| at.plus(offline_after) <= now);
            if live && (!executed || silent) {
                agent.state = AgentState::Offline;
                agent.running = 0;
            }
        }
        Ok(agents)
    }

    async fn agent_infos(&self) -> Result<Vec<AgentInfo>> {
        let plan = self.plan();
        let run = self.run().await?;
        let mut records: BTreeMap<String, AgentRecord> =
            self.agent_records(&run).await?.into_iter().map(|record| (record.name.clone(), record)).collect();
        Ok(plan
            .agents
            .iter()
            .map(|spec| AgentInfo { name: spec.name.clone(), status: records.remove(&spec.name), spec: spec.clone() })
            .collect())
    }

    async fn find_agent(&self, name: &str) -> Result<AgentInfo> {
        let mut infos = self.agent_infos().await?;
        match infos.iter().position(|info| info.name == name) {
            Some(idx) => Ok(infos.swap_remove(idx)),
            None => {
                let known: Vec<&str> = infos.iter().map(|info| info.name.as_str()).collect();
                Err(Error::not_found(format!("no agent `{name}` in this run (known: {})", known.join(", "))))
            }
        }
    }

    /// The plan's agents, with their state.
    pub async fn agents(&self, caller: &Caller) -> Result<Vec<AgentInfo>> {
        caller.require(Action::ReadAgents)?;
        self.agent_infos().await
    }

    /// One agent.
    pub async fn agent(&self, caller: &Caller, name: &str) -> Result<AgentInfo> {
        caller.require(Action::ReadAgents)?;
        self.find_agent(name).await
    }

    /// Adds an agent to the running plan; `body` is an `[[agents]]` entry of baton.toml, as
    /// JSON.
    pub async fn create_agent(&self, caller: &Caller, body: &serde_json::Value) -> Result<AgentInfo> {
        caller.require(Action::ManageAgents)?;
        let plan = self.plan();
        if let Some(name) = body.get("name").and_then(|name| name.as_str())
            && plan.agent(name).is_some()
        {
            return Err(Error::conflict(format!("agent `{name}` exists already; PUT /agents/{name} updates it")));
        }
        let spec = baton_core::config::agent_from_json(&plan, body).map_err(config_error)?;
        let name = spec.name.clone();
        self.engine()?.add_agent(spec).await?;
        self.find_agent(&name).await
    }

    /// Replaces an agent's configuration; it restarts when how it runs changed. `body` may
    /// leave out `name`, or give the same one.
    pub async fn update_agent(&self, caller: &Caller, name: &str, mut body: serde_json::Value) -> Result<AgentInfo> {
        caller.require(Action::ManageAgents)?;
        let plan = self.plan();
        if plan.agent(name).is_none() {
            return Err(Error::not_found(format!("no agent `{name}` in this run")));
        }
        let Some(fields) = body.as_object_mut() else {
            return Err(Error::invalid("the request body must be a JSON object"));
        };
        match fields.get("name") {
            None => {
                fields.insert("name".into(), serde_json::Value::String(name.to_string()));
            }
            Some(serde_json::Value::String(given)) if given == name => {}
            Some(_) => return Err(Error::invalid(format!("`name` must be `{name}`, as in the path, or absent"))),
        }
        let spec = baton_core::config::agent_update_from_json(&plan, &body).map_err(config_error)?;
        self.engine()?.update_agent(spec).await?;
        self.find_agent(name).await
    }

    /// Removes an agent from the running plan; its running tasks go back to the queue.
    pub async fn delete_agent(&self, caller: &Caller, name: &str) -> Result<()> {
        caller.require(Action::ManageAgents)?;
        self.find_agent(name).await?;
        Ok(self.engine()?.remove_agent(name.to_string()).await?)
    }

    /// Starts, stops or restarts an agent; the agent as it is now.
    pub async fn agent_command(&self, caller: &Caller, name: &str, command: AgentCommand) -> Result<AgentInfo> {
        caller.require(Action::ManageAgents)?;
        self.find_agent(name).await?;
        let engine = self.engine()?;
        let name_owned = name.to_string();
        match command {
            AgentCommand::Start => engine.start_agent(name_owned).await?,
            AgentCommand::Stop => engine.stop_agent(name_owned).await?,
            AgentCommand::Restart => engine.restart_agent(name_owned).await?,
        }
        self.find_agent(name).await
    }

    /// Where an agent's log is, for a caller that may read it.
    pub async fn agent_log(&self, caller: &Caller, name: &str) -> Result<PathBuf> {
        if caller.require(Action::ReadAgentLogs)? == Grant::Own {
            own_only(caller, Some(name), "log")?;
        }
        self.find_agent(name).await?;
        Ok(self.log_dir().join(format!("{name}.log")))
    }

    /// Whether `task` waits for input: it runs on a terminal agent whose screen ends in a
    /// question (the agent is `waiting-input`). A2A shows such a task as `input-required`.
    pub async fn task_waits_for_input(&self, task: &TaskRecord) -> Result<bool> {
        if task.state != TaskState::Running {
            return Ok(false);
        }
        let Some(agent) = task.assigned_agent.as_deref() else { return Ok(false) };
        let info = self.find_agent(agent).await?;
        Ok(info.status.is_some_and(|status| status.state == AgentState::WaitingInput))
    }

    /// The agents that wait for input now: a running task assigned to one of them waits for
    /// input (see [`Ops::task_waits_for_input`]). For many tasks at once, with one read.
    pub async fn agents_waiting_for_input(&self) -> Result<std::collections::HashSet<String>> {
        let infos = self.agent_infos().await?;
        Ok(infos
            .into_iter()
            .filter(|info| info.status.as_ref().is_some_and(|status| status.state == AgentState::WaitingInput))
            .map(|info| info.name)
            .collect())
    }

    /// Answers the question a task waits on (see [`Ops::task_waits_for_input`]): `text` and
    /// Enter typed into the terminal of the agent that runs it, as `baton attach` would. The
    /// caller must be able to read the task (else it is not found) and to type into the
    /// terminal (`ManageAgents`, as for `baton attach`); a task that has ended, or that does
    /// not wait for input, is a conflict. The task as it is then.
    pub async fn answer_task_input(&self, caller: &Caller, id: TaskId, text: &str) -> Result<TaskRecord> {
        let task = self.task_record(caller, id).await.map_err(|error| match error.kind() {
            crate::ErrorKind::Forbidden => Error::not_found(format!("no task {id} in this run")),
            _ => error,
        })?;
        if caller.require(Action::ManageAgents)? != Grant::All {
            return Err(Error::forbidden("answering a task's question types into its agent's terminal: ManageAgents"));
        }
        if task.state.is_terminal() {
            return Err(Error::conflict(format!("task {id} has ended ({}): it takes no more input", task.state)));
        }
        if !self.task_waits_for_input(&task).await? {
            return Err(Error::conflict(format!("task {id} is {}, not waiting for input", task.state)));
        }
        let agent = task.assigned_agent.clone().unwrap_or_default();
        let access = self.agent_terminal(caller, &agent).await?;
        let typed = async {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let mut stream = tokio::net::UnixStream::connect(&access.socket).await?;
            // Enter as a terminal sends it; then the end of what is typed.
            stream.write_all(format!("{text}\r").as_bytes()).await?;
            stream.shutdown().await?;
            // The socket answers with the screen, then reads what was typed and closes at its
            // end: read until then, so that the connection stays open while it is typed.
            let mut screen = Vec::new();
            let _ = tokio::time::timeout(TYPE_WAIT, stream.read_to_end(&mut screen)).await;
            Ok::<(), std::io::Error>(())
        };
        typed.await.map_err(|error| {
            Error::unavailable(format!(
                "agent `{agent}`'s terminal is not served ({error}): its program has ended, or the run is not executing in this process"
            ))
        })?;
        self.task_record(caller, id).await
    }

    /// A terminal agent's screen, for a caller that may read its log; typing into it is for a
    /// caller that may control agents.
    pub async fn agent_terminal(&self, caller: &Caller, name: &str) -> Result<TerminalAccess> {
        if caller.require(Action::ReadAgentLogs)? == Grant::Own {
            own_only(caller, Some(name), "terminal")?;
        }
        let info = self.find_agent(name).await?;
        if info.spec.process_mode() != Some(ProcessMode::Pty) {
            return Err(Error::invalid(format!(
                "agent `{name}` is not a terminal agent; only an agent with mode = \"pty\" has a screen (its log is at /agents/{name}/logs)"
            )));
        }
        let may_type = caller.require(Action::ManageAgents).is_ok_and(|grant| grant == Grant::All);
        // The sockets are beside the logs, in the directory that holds the store.
        let state_dir = self.log_dir().parent().unwrap_or(self.log_dir());
        Ok(TerminalAccess { socket: baton_runtime::process::pty::attach_socket(state_dir, name), may_type })
    }
}
