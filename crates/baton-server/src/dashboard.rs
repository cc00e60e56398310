//! The dashboard at `/`: a page of plain HTML, CSS and JavaScript modules, embedded in the
//! binary at build time (no Node build step), that reads and acts through the HTTP API like
//! any other client — `/status`, `/plan`, `/tasks`, `/agents`, `/messages`, `/budgets`,
//! `/schedules`, and `/events` followed live.
//!
//! The assets hold no data and need no token, so they are served outside the API's gate:
//! without `[auth]` and with it alike, `/` loads, and the page asks for a token when the API
//! answers `401`. The token is sent only as `Authorization: Bearer`, never in a URL.

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The page's files: `(name, content type, contents)`, served under `/dashboard/NAME`.
const ASSETS: &[(&str, &str, &str)] = &[
    ("app.js", "text/javascript; charset=utf-8", include_str!("../dashboard/app.js")),
    ("api.js", "text/javascript; charset=utf-8", include_str!("../dashboard/api.js")),
    ("pages.js", "text/javascript; charset=utf-8", include_str!("../dashboard/pages.js")),
    ("style.css", "text/css; charset=utf-8", include_str!("../dashboard/style.css")),
];

const INDEX: &str = include_str!("../dashboard/index.html");

/// What the page may load and talk to: only this server. No inline script, no other origin.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The dashboard's routes. Stateless: it is merged beside the API, not behind its gate.
pub fn routes() -> Router {
    Router::new().route("/", get(index)).route("/dashboard/{file}", get(asset))
}

async fn index() -> Response {
    respond("text/html; charset=utf-8", INDEX)
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, contents)) => respond(content_type, contents),
        None => crate::ApiError::not_found(format!("the dashboard has no file `{file}`")).into_response(),
    }
}

fn respond(content_type: &'static str, contents: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            // The assets change with the binary: revalidate rather than keep a stale page.
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        contents,
    )
        .into_response()
}
