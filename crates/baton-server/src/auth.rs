//! Who is calling, and what they may do.
//!
//! Bearer tokens are JWTs signed with HS256; the secret comes from the environment variable
//! that `[auth] secret_env` names. A token carries a role: `admin` (everything), `operator`
//! (runs things: tasks, agents; not tokens nor the audit log), `viewer` (reads), or `agent`
//! (a token scoped to one agent, given to each agent process Baton starts: it reads, creates
//! sub-tasks, and uses the agent-side endpoints as that agent only).
//!
//! Without `[auth]` the API is open, and Baton only allows that on a loopback address: every
//! caller is then `anonymous` with the `admin` role.
//!
//! A request through the Unix socket beside the store (see [`crate::local`]) without a token
//! comes from the machine's user who owns the socket, the only one its mode lets in: it is
//! `local`, with the `admin` role, whether or not there is `[auth]`. One with a token is the
//! token's caller, as anywhere.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ApiError;

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
        (ReadAgents, [All, All, All, All]),
        (ManageAgents, [All, All, No, No]),
        (ReadAgentLogs, [All, All, All, Own]),
        (ReadMessages, [All, All, All, Own]),
        (SendMessages, [All, All, No, Own]),
        (ReadEvents, [All, All, All, Own]),
        (ReadMetrics, [All, All, All, No]),
        (ReadBudgets, [All, All, All, No]),
        (SetBudgets, [All, All, No, No]),
        (ReadSchedules, [All, All, All, No]),
        (ControlSchedules, [All, All, No, No]),
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

/// The claims of a Baton token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// Who the token was issued to.
    pub sub: String,
    pub role: Role,
    /// For `agent` tokens: the one agent it acts as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    pub iat: u64,
    pub exp: u64,
    /// The token's id: rate limits are kept per token.
    pub jti: String,
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
    pub fn require(&self, action: Action) -> Result<Grant, ApiError> {
        match action.grant(self.role) {
            Grant::None => {
                let roles: Vec<&str> = [Role::Admin, Role::Operator, Role::Viewer, Role::Agent]
                    .into_iter()
                    .filter(|role| action.grant(*role) != Grant::None)
                    .map(Role::as_str)
                    .collect();
                Err(ApiError::forbidden(format!(
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
    pub fn own_agent(&self) -> Result<&str, ApiError> {
        self.agent.as_deref().ok_or_else(|| ApiError::forbidden("only an agent token has an agent of its own"))
    }

    /// The agent this caller acts as on the agent-side endpoints: an agent token's own agent
    /// (naming another is refused), or the agent an operator or admin names.
    pub fn acting_as(&self, named: Option<&str>) -> Result<String, ApiError> {
        match self.require(Action::ActAsAgent)? {
            Grant::Own => {
                let own = self.own_agent()?;
                match named {
                    Some(named) if named != own => {
                        Err(ApiError::forbidden(format!("this token acts as agent `{own}` only, not as `{named}`")))
                    }
                    _ => Ok(own.to_string()),
                }
            }
            _ => named
                .map(str::to_string)
                .ok_or_else(|| ApiError::bad_request("name the agent to act as: `agent` in the request")),
        }
    }
}

/// Issues and checks tokens.
#[derive(Clone)]
pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    pub default_ttl: Duration,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("default_ttl", &self.default_ttl).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the token secret is {0} byte(s) long; it must be at least {min} (e.g. `openssl rand -hex 32`)", min = baton_core::config::MIN_SECRET_BYTES)]
    ShortSecret(usize),
    #[error("a token may last at most 3650d (ten years)")]
    TtlTooLong,
    #[error("an agent token needs the agent it acts as (--agent NAME)")]
    AgentWithoutName,
    #[error("only agent tokens act as an agent; use --role agent with --agent")]
    NameWithoutAgent,
    #[error("cannot sign the token: {0}")]
    Sign(String),
}

impl Auth {
    pub fn new(secret: &[u8], default_ttl: Duration) -> Result<Auth, Error> {
        if secret.len() < baton_core::config::MIN_SECRET_BYTES {
            return Err(Error::ShortSecret(secret.len()));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        // No leeway: a token is refused from the second its `exp` names (see `verify`). The
        // clocks that matter are this server's own: it issues and checks its tokens.
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(Auth {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            default_ttl,
        })
    }

    /// Signs a token for `subject` with `role`, valid for `ttl` from `now_secs`.
    pub fn issue(
        &self,
        subject: &str,
        role: Role,
        agent: Option<&str>,
        ttl: Duration,
        now_secs: u64,
    ) -> Result<(String, Claims), Error> {
        match (role, agent) {
            (Role::Agent, None) => return Err(Error::AgentWithoutName),
            (Role::Admin | Role::Operator | Role::Viewer, Some(_)) => return Err(Error::NameWithoutAgent),
            _ => {}
        }
        if ttl > baton_core::config::MAX_TOKEN_TTL {
            return Err(Error::TtlTooLong);
        }
        let exp = now_secs.checked_add(ttl.as_secs().max(1)).ok_or(Error::TtlTooLong)?;
        let claims = Claims {
            sub: subject.to_string(),
            role,
            agent: agent.map(str::to_string),
            iat: now_secs,
            exp,
            jti: uuid::Uuid::now_v7().simple().to_string(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|error| Error::Sign(error.to_string()))?;
        Ok((token, claims))
    }

    /// The caller a bearer token names, or `401` saying what is wrong with it.
    pub fn verify(&self, token: &str) -> Result<Caller, ApiError> {
        self.verify_at(token, unix_now())
    }

    /// [`Auth::verify`] at `now_secs`: a token is valid while `now_secs < exp`.
    pub fn verify_at(&self, token: &str, now_secs: u64) -> Result<Caller, ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map_err(|error| {
            use jsonwebtoken::errors::ErrorKind;
            let why = match error.kind() {
                ErrorKind::ExpiredSignature => "the token has expired".to_string(),
                ErrorKind::InvalidSignature => "the token's signature does not match this server's secret".into(),
                ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
                    "the bearer token is not a Baton token".into()
                }
                other => format!("the token was refused: {other:?}"),
            };
            ApiError::unauthorized(why)
        })?;
        let claims = data.claims;
        if now_secs >= claims.exp {
            return Err(ApiError::unauthorized("the token has expired"));
        }
        if claims.role == Role::Agent && claims.agent.is_none() {
            return Err(ApiError::unauthorized("an agent token must name its agent"));
        }
        Ok(Caller {
            subject: claims.sub,
            role: claims.role,
            agent: claims.agent,
            token_id: claims.jti,
            expires_at: Some(claims.exp),
        })
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::new(b"a test secret of some length, 32 bytes or more", Duration::from_secs(3600)).unwrap()
    }

    #[test]
    fn issued_tokens_verify_with_their_claims() {
        let auth = auth();
        let (token, _) = auth.issue("ci", Role::Operator, None, Duration::from_secs(60), unix_now()).unwrap();
        let caller = auth.verify(&token).unwrap();
        assert_eq!((caller.subject.as_str(), caller.role, caller.agent), ("ci", Role::Operator, None));
        let (token, _) =
            auth.issue("agent:builder", Role::Agent, Some("builder"), Duration::from_secs(60), unix_now()).unwrap();
        assert_eq!(auth.verify(&token).unwrap().agent.as_deref(), Some("builder"));
    }

    #[test]
    fn expired_and_foreign_tokens_are_refused_with_the_reason() {
        let auth = auth();
        let (token, _) = auth.issue("old", Role::Viewer, None, Duration::from_secs(1), unix_now() - 3600).unwrap();
        assert_eq!(auth.verify(&token).unwrap_err().message, "the token has expired");
        let other = Auth::new(b"another secret, long enough to be accepted", Duration::from_secs(60)).unwrap();
        let (token, _) = other.issue("x", Role::Admin, None, Duration::from_secs(60), unix_now()).unwrap();
        assert_eq!(
            auth.verify(&token).unwrap_err().message,
            "the token's signature does not match this server's secret"
        );
        assert_eq!(auth.verify("garbage").unwrap_err().message, "the bearer token is not a Baton token");
    }

    #[test]
    fn a_token_is_refused_from_the_second_it_expires_without_leeway() {
        let auth = auth();
        let now = 1_800_000_000;
        let (token, claims) = auth.issue("ci", Role::Viewer, None, Duration::from_secs(1), now).unwrap();
        assert_eq!(claims.exp, now + 1);
        assert!(auth.verify_at(&token, now).is_ok());
        assert_eq!(auth.verify_at(&token, now + 1).unwrap_err().message, "the token has expired");
        assert_eq!(auth.verify_at(&token, now + 3).unwrap_err().message, "the token has expired");
    }

    #[test]
    fn a_ttl_too_long_to_represent_is_refused_not_wrapped_into_the_past() {
        let auth = auth();
        assert!(matches!(auth.issue("x", Role::Admin, None, Duration::MAX, unix_now()), Err(Error::TtlTooLong)));
        let eleven_years = Duration::from_secs(11 * 365 * 24 * 3600);
        assert!(matches!(auth.issue("x", Role::Admin, None, eleven_years, unix_now()), Err(Error::TtlTooLong)));
        assert!(matches!(
            auth.issue("x", Role::Admin, None, Duration::from_secs(60), u64::MAX - 10),
            Err(Error::TtlTooLong)
        ));
    }

    #[test]
    fn a_secret_shorter_than_32_bytes_is_refused() {
        assert!(matches!(Auth::new(b"", Duration::from_secs(60)), Err(Error::ShortSecret(0))));
        assert!(matches!(Auth::new(b"x", Duration::from_secs(60)), Err(Error::ShortSecret(1))));
        assert!(Auth::new(&[b'k'; 32], Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn agent_tokens_need_an_agent_and_only_they_have_one() {
        let auth = auth();
        let ttl = Duration::from_secs(60);
        assert!(matches!(auth.issue("a", Role::Agent, None, ttl, 0), Err(Error::AgentWithoutName)));
        assert!(matches!(auth.issue("a", Role::Viewer, Some("x"), ttl, 0), Err(Error::NameWithoutAgent)));
    }

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
        assert_eq!(agent.acting_as(Some("other")).unwrap_err().status, 403);
        let viewer = Caller { role: Role::Viewer, agent: None, ..agent.clone() };
        assert_eq!(viewer.acting_as(Some("builder")).unwrap_err().status, 403);
        let operator = Caller { role: Role::Operator, agent: None, ..agent };
        assert_eq!(operator.acting_as(Some("builder")).unwrap(), "builder");
    }
}
