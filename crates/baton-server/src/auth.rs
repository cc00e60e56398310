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

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reading: every role.
    Read,
    /// Creating tasks: operators and admins, and agents (their sub-tasks).
    CreateTasks,
    /// Running things: tasks, agents, schedules.
    Operate,
    /// Tokens and the audit log.
    Admin,
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
}

impl Caller {
    pub fn anonymous() -> Caller {
        Caller { subject: "anonymous".into(), role: Role::Admin, agent: None, token_id: "anonymous".into() }
    }

    /// A caller without a token on a server with `[auth]`: it may read what is open to all.
    pub fn anonymous_viewer() -> Caller {
        Caller { subject: "anonymous".into(), role: Role::Viewer, agent: None, token_id: "anonymous".into() }
    }

    /// Allowed, or `403` saying what the role lacks.
    pub fn require(&self, access: Access) -> Result<(), ApiError> {
        let allowed = match access {
            Access::Read => true,
            Access::CreateTasks => matches!(self.role, Role::Admin | Role::Operator | Role::Agent),
            Access::Operate => matches!(self.role, Role::Admin | Role::Operator),
            Access::Admin => self.role == Role::Admin,
        };
        if allowed {
            return Ok(());
        }
        let needs = match access {
            Access::Read => "any role",
            Access::CreateTasks => "the operator or admin role (or an agent token)",
            Access::Operate => "the operator or admin role",
            Access::Admin => "the admin role",
        };
        Err(ApiError::forbidden(format!("`{}` has the {} role; this needs {needs}", self.subject, self.role.as_str())))
    }

    /// The agent this caller acts as on the agent-side endpoints: an agent token's own agent
    /// (naming another is refused), or the agent an operator or admin names.
    pub fn acting_as(&self, named: Option<&str>) -> Result<String, ApiError> {
        match (self.role, &self.agent, named) {
            (Role::Agent, Some(own), Some(named)) if named != own => {
                Err(ApiError::forbidden(format!("this token acts as agent `{own}` only, not as `{named}`")))
            }
            (Role::Agent, Some(own), _) => Ok(own.clone()),
            (Role::Admin | Role::Operator, _, Some(named)) => Ok(named.to_string()),
            (Role::Admin | Role::Operator, _, None) => {
                Err(ApiError::bad_request("name the agent to act as: `agent` in the request"))
            }
            _ => Err(ApiError::forbidden(format!(
                "`{}` has the {} role; the agent-side endpoints need an agent token (or operator or admin)",
                self.subject,
                self.role.as_str()
            ))),
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
    #[error("the token secret is empty; set it to a long random string")]
    EmptySecret,
    #[error("an agent token needs the agent it acts as (--agent NAME)")]
    AgentWithoutName,
    #[error("only agent tokens act as an agent; use --role agent with --agent")]
    NameWithoutAgent,
    #[error("cannot sign the token: {0}")]
    Sign(String),
}

impl Auth {
    pub fn new(secret: &[u8], default_ttl: Duration) -> Result<Auth, Error> {
        if secret.is_empty() {
            return Err(Error::EmptySecret);
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
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
        let claims = Claims {
            sub: subject.to_string(),
            role,
            agent: agent.map(str::to_string),
            iat: now_secs,
            exp: now_secs.saturating_add(ttl.as_secs().max(1)),
            jti: uuid::Uuid::now_v7().simple().to_string(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|error| Error::Sign(error.to_string()))?;
        Ok((token, claims))
    }

    /// The caller a bearer token names, or `401` saying what is wrong with it.
    pub fn verify(&self, token: &str) -> Result<Caller, ApiError> {
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
        if claims.role == Role::Agent && claims.agent.is_none() {
            return Err(ApiError::unauthorized("an agent token must name its agent"));
        }
        Ok(Caller { subject: claims.sub, role: claims.role, agent: claims.agent, token_id: claims.jti })
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
        Auth::new(b"a test secret of some length", Duration::from_secs(3600)).unwrap()
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
        let other = Auth::new(b"another secret", Duration::from_secs(60)).unwrap();
        let (token, _) = other.issue("x", Role::Admin, None, Duration::from_secs(60), unix_now()).unwrap();
        assert_eq!(
            auth.verify(&token).unwrap_err().message,
            "the token's signature does not match this server's secret"
        );
        assert_eq!(auth.verify("garbage").unwrap_err().message, "the bearer token is not a Baton token");
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
        let agent =
            Caller { subject: "s".into(), role: Role::Agent, agent: Some("builder".into()), token_id: "t".into() };
        assert_eq!(agent.acting_as(None).unwrap(), "builder");
        assert_eq!(agent.acting_as(Some("builder")).unwrap(), "builder");
        assert_eq!(agent.acting_as(Some("other")).unwrap_err().status, 403);
        let viewer = Caller { role: Role::Viewer, agent: None, ..agent.clone() };
        assert_eq!(viewer.acting_as(Some("builder")).unwrap_err().status, 403);
        let operator = Caller { role: Role::Operator, agent: None, ..agent };
        assert_eq!(operator.acting_as(Some("builder")).unwrap(), "builder");
    }
}
