//! The API's errors: one table from what went wrong to an HTTP status and a stable code, and
//! one JSON shape, `{"error": {"code", "message"}}`. Handlers return [`ApiError`]; nothing in
//! the API answers with a panic or a bare text body.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `bad_request`, `unauthorized`, `forbidden`, `not_found`,
    /// `conflict`, `lease_expired`, `payload_too_large`, `rate_limited`, `full` (no room in the
    /// store: an inbox at its limit; try again later), `unavailable`, `internal`.
    pub code: String,
    /// What is wrong, for people.
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds to wait, for `429`.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), retry_after: None }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, message = %self.message, "request failed");
        }
        let body = ErrorBody { error: ErrorDetail { code: self.code.to_string(), message: self.message } };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after
            && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::new(status, "payload_too_large", "the request body is larger than the server accepts");
        }
        let message = match &rejection {
            JsonRejection::JsonDataError(error) => format!("invalid request body: {}", source_text(error)),
            JsonRejection::JsonSyntaxError(error) => {
                format!("the request body is not valid JSON: {}", source_text(error))
            }
            JsonRejection::MissingJsonContentType(_) => {
                "the request body must be JSON, with `Content-Type: application/json`".to_string()
            }
            other => other.body_text(),
        };
        if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
            return ApiError::new(status, "unsupported_media_type", message);
        }
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        let text = match &rejection {
            QueryRejection::FailedToDeserializeQueryString(error) => source_text(error),
            other => other.body_text(),
        };
        ApiError::bad_request(format!("invalid query: {text}"))
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> ApiError {
        ApiError::bad_request(format!("invalid path: {}", rejection.body_text()))
    }
}

/// The one table from an operation's error kind to an HTTP status and code; every error of
/// the operations layer, the store or the engine that the API answers goes through it.
///
/// | kind | status | code |
/// |---|---|---|
/// | invalid | 400 | `bad_request` |
/// | forbidden | 403 | `forbidden` |
/// | not found | 404 | `not_found` |
/// | conflict | 409 | `conflict` |
/// | full | 429 | `full` |
/// | unavailable | 503 | `unavailable` |
/// | internal | 500 | `internal` |
///
/// A full store is 429, not 507: what fills up in practice is an agent's inbox, which takes the
/// request again once the agent has acknowledged messages; the client's answer to both is to
/// try again later.
pub fn status_of(kind: baton_ops::ErrorKind) -> (StatusCode, &'static str) {
    use baton_ops::ErrorKind;
    match kind {
        ErrorKind::Invalid => (StatusCode::BAD_REQUEST, "bad_request"),
        ErrorKind::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
        ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        ErrorKind::Conflict => (StatusCode::CONFLICT, "conflict"),
        ErrorKind::Full => (StatusCode::TOO_MANY_REQUESTS, "full"),
        ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

impl From<baton_ops::Error> for ApiError {
    fn from(error: baton_ops::Error) -> ApiError {
        let (status, code) = status_of(error.kind());
        ApiError::new(status, code, error.message())
    }
}

impl From<baton_store::Error> for ApiError {
    fn from(error: baton_store::Error) -> ApiError {
        baton_ops::Error::from(error).into()
    }
}

/// What an agent asked, refused: refused by the run's state is a conflict (409), a wrong
/// request a bad one (400), a full inbox 429, an engine that could not answer unavailable (503).
impl From<baton_runtime::agent::RequestError> for ApiError {
    fn from(error: baton_runtime::agent::RequestError) -> ApiError {
        use baton_runtime::agent::RequestErrorKind;
        match error.kind {
            RequestErrorKind::Refused => ApiError::conflict(error.message),
            RequestErrorKind::Invalid => ApiError::bad_request(error.message),
            RequestErrorKind::Unavailable => ApiError::unavailable(error.message),
            RequestErrorKind::Full => {
                let (status, code) = status_of(baton_ops::ErrorKind::Full);
                ApiError::new(status, code, error.message)
            }
        }
    }
}

impl From<baton_runtime::engine::Error> for ApiError {
    fn from(error: baton_runtime::engine::Error) -> ApiError {
        baton_ops::Error::from(error).into()
    }
}

/// The innermost message of an error chain: serde's, which names the field and the problem.
fn source_text(error: &dyn std::error::Error) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_store::{Error, ErrorKind};

    #[test]
    fn store_errors_answer_by_kind() {
        let cases = [
            (ErrorKind::NotFound, 404, "not_found"),
            (ErrorKind::Conflict, 409, "conflict"),
            (ErrorKind::Refused, 400, "bad_request"),
            (ErrorKind::Full, 429, "full"),
            (ErrorKind::Unavailable, 503, "unavailable"),
            (ErrorKind::Corrupt, 500, "internal"),
        ];
        for (kind, status, code) in cases {
            let error = ApiError::from(Error::new(kind, "what happened"));
            assert_eq!((error.status.as_u16(), error.code, error.message.as_str()), (status, code, "what happened"));
        }
        let held = Error::RunHeld {
            plan: "p".into(),
            run: "r".into(),
            owner: "o".into(),
            pid: 1,
            until: baton_core::Timestamp(0),
        };
        assert_eq!(ApiError::from(held).status, StatusCode::CONFLICT);
    }
}
