//! Who is calling, and what they may do: the caller's identity ([`Caller`]) and the one table
//! ([`TABLE`]) that decides, for every action of every interface, what each role may do.
//!
//! A role is `admin` (everything), `operator` (runs things: tasks, agents; not tokens nor the
//! audit log), `viewer` (reads), or `agent` (scoped to one agent: it reads its own things,
//! creates sub-tasks and acts as that agent only). How a caller proves who it is belongs to
//! the interface (a bearer token over HTTP, the file mode of `baton run`'s local socket); what
//! it may do is decided here only.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Operator,
    Viewer,
    Agent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
            Role::Agent => "agent",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Role, String> {
        match text {
            "admin" => Ok(Role::Admin),
            "operator" => Ok(Role::Operator),
            "viewer" => Ok(Role::Viewer),
            "agent" => Ok(Role::Agent),
            other => Err(format!("unknown role `{other}`: expected admin, operator, viewer or agent")),
        }
    }
}

/// What a request does, as the authorization table knows it. Every endpoint names one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::EnumIter, strum::IntoStaticStr)]
pub enum Action {
    /// `/status`, `/plan`: the run's phase and progress.
    ReadStatus,
    /// `GET /tasks`, `GET /tasks/{id}`: tasks with their inputs, results and events.
    ReadTasks,
    /// `POST /tasks`, `POST /tasks/batch`.
    CreateTasks,
    /// Cancel or retry a task.
    ControlTasks,
    /// `POST /objectives`: an objective turned into tasks by the coordinator (a model's
    /// tokens are spent on it).
    PlanObjectives,
    /// `GET /agents`, `GET /agents/{name}`: configuration (never a secret's value) and state.
    ReadAgents,
    /// Add, update, remove, start, stop or restart an agent.
    ManageAgents,
    /// `GET /agents/{name}/logs`.
    ReadAgentLogs,
    /// `GET /messages`: messages and their delivery state.
    ReadMessages,
    /// `POST /messages` and chat on `/ws`: a message to the agents it @mentions.
    SendMessages,
    /// `POST /messages/redeliver`: dead letters delivered again.
    ControlMessages,
    /// `/events`, `/events/history`, `/ws`.
    ReadEvents,
    /// `/metrics`.
    ReadMetrics,
    /// `GET /budgets`.
    ReadBudgets,
    /// `POST /budgets/{scope}`.
    SetBudgets,
    /// `GET /schedules`.
    ReadSchedules,
    /// Pause or resume a schedule.
    ControlSchedules,
    /// `GET /tools`: the MCP servers' tools, searched.
    ReadTools,
    /// `POST /tools/{server}/{tool}`: a call of an MCP server's tool.
    CallTools,
    /// The agent-side endpoints (`/agent/...`): claim, heartbeat, results, usage, resources.
    ActAsAgent,
    /// `POST /tokens`, `GET /audit`.
    Administer,
}

/// What the table grants a role for an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Everything the action reaches.
    All,
    /// Only what is the caller's own agent's: an agent token's tasks (assigned or pinned to
    /// it, and the tasks those depend on), its log, the messages to or from it, the events
    /// about it; acting as itself.
    Own,
    /// Refused: `403`.
    None,
}

/// Who may do what: one row per action, one column per role (admin, operator, viewer, agent).
/// The README's authorization table is this one; a test checks every cell against a live
/// server.
pub const TABLE: &[(Action, [Grant; 4])] = {
    use Action::*;
    use Grant::{All, None as No, Own};
    &[
        //                 admin operator viewer agent
        (ReadStatus, [All, All, All, All]),
        (ReadTasks, [All, All, All, Own]),
        (CreateTasks, [All, All, No, All]),
        (ControlTasks, [All, All, No, No]),
        (PlanObjectives, [All, All, No, No]),
        (ReadAgents, [All, All, All, All]),
        (ManageAgents, [All, All, No, No]),
        (ReadAgentLogs, [All, All, All, Own]),
        (ReadMessages, [All, All, All, Own]),
        (SendMessages, [All, All, No, Own]),
        (ControlMessages, [All, All, No, No]),
        (ReadEvents, [All, All, All, Own]),
        (ReadMetrics, [All, All, All, No]),
        (ReadBudgets, [All, All, All, No]),
        (SetBudgets, [All, All, No, No]),
        (ReadSchedules, [All, All, All, No]),
        (ControlSchedules, [All, All, No, No]),
        (ReadTools, [All, All, All, No]),
        (CallTools, [All, All, No, No]),
        (ActAsAgent, [All, All, No, Own]),
        (Administer, [All, No, No, No]),
    ]
};

impl Action {
    pub fn name(self) -> &'static str {
        self.into()
    }

    /// What `role` may do of this action, from [`TABLE`].
    pub fn grant(self, role: Role) -> Grant {
        let column = match role {
            Role::Admin => 0,
            Role::Operator => 1,
            Role::Viewer => 2,
            Role::Agent => 3,
        };
        TABLE.iter().find(|(action, _)| *action == self).map_or(Grant::None, |(_, grants)| grants[column])
    }
}

/// The caller of a request, as its token (or the absence of `[auth]`) says.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    pub subject: String,
    pub role: Role,
    pub agent: Option<String>,
    /// Rate limits are kept per this key.
    pub token_id: String,
    /// When the token expires, in seconds since the epoch; `None` without `[auth]`. A
    /// WebSocket is closed then.
    pub expires_at: Option<u64>,
}

impl Caller {
    pub fn anonymous() -> Caller {
        Caller {
            subject: "anonymous".into(),
            role: Role::Admin,
            agent: None,
            token_id: "anonymous".into(),
            expires_at: None,
        }
    }

    /// A caller without a token through the local socket: the user who owns it.
    pub fn local() -> Caller {
        Caller { subject: "local".into(), role: Role::Admin, agent: None, token_id: "local".into(), expires_at: None }
    }

    /// A caller without a token on a server with `[auth]`: it may read what is open to all.
    pub fn anonymous_viewer() -> Caller {
        Caller {
            subject: "anonymous".into(),
            role: Role::Viewer,
            agent: None,
            token_id: "anonymous".into(),
            expires_at: None,
        }
    }

    /// What the table grants this caller for `action`, or `403` saying what it lacks.
    pub fn require(&self, action: Action) -> Result<Grant, Error> {
        match action.grant(self.role) {
            Grant::None => {
                let roles: Vec<&str> = [Role::Admin, Role::Operator, Role::Viewer, Role::Agent]
                    .into_iter()
                    .filter(|role| action.grant(*role) != Grant::None)
                    .map(Role::as_str)
                    .collect();
                Err(Error::forbidden(format!(
                    "`{}` has the {} role; {} needs the {} role",
                    self.subject,
                    self.role.as_str(),
                    action.name(),
                    roles.join(" or ")
                )))
            }
            grant => Ok(grant),
        }
    }

    /// The agent whose own things this caller may reach, under [`Grant::Own`].
    pub fn own_agent(&self) -> Result<&str, Error> {
        self.agent.as_deref().ok_or_else(|| Error::forbidden("only an agent token has an agent of its own"))
    }

    /// The agent this caller acts as on the agent-side endpoints: an agent token's own agent
    /// (naming another is refused), or the agent an operator or admin names.
    pub fn acting_as(&self, named: Option<&str>) -> Result<String, Error> {
        match self.require(Action::ActAsAgent)? {
            Grant::Own => {
                let own = self.own_agent()?;
                match named {
                    Some(named) if named != own => {
                        Err(Error::forbidden(format!("this token acts as agent `{own}` only, not as `{named}`")))
                    }
                    _ => Ok(own.to_string()),
                }
            }
            _ => named
                .map(str::to_string)
                .ok_or_else(|| Error::invalid("name the agent to act as: `agent` in the request")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_act_only_as_themselves() {
        let agent = Caller {
            subject: "s".into(),
            role: Role::Agent,
            agent: Some("builder".into()),
            token_id: "t".into(),
            expires_at: None,
        };
        assert_eq!(agent.acting_as(None).unwrap(), "builder");
        assert_eq!(agent.acting_as(Some("builder")).unwrap(), "builder");
        assert_eq!(agent.acting_as(Some("other")).unwrap_err().kind(), crate::ErrorKind::Forbidden);
        let viewer = Caller { role: Role::Viewer, agent: None, ..agent.clone() };
        assert_eq!(viewer.acting_as(Some("builder")).unwrap_err().kind(), crate::ErrorKind::Forbidden);
        let operator = Caller { role: Role::Operator, agent: None, ..agent };
        assert_eq!(operator.acting_as(Some("builder")).unwrap(), "builder");
    }

    #[test]
    fn every_action_has_one_row() {
        use strum::IntoEnumIterator;
        for action in Action::iter() {
            assert_eq!(TABLE.iter().filter(|(row, _)| *row == action).count(), 1, "{action:?}");
        }
    }
}
