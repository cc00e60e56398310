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

use crate::error::ApiError;

pub use baton_ops::auth::{Action, Caller, Grant, Role, TABLE};

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
}
