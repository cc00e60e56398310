//! The dashboard at `/`: a page of plain HTML, CSS and JavaScript modules, embedded in the
//! binary at build time (no Node build step), that reads and acts through the HTTP API like
//! any other client — `/status`, `/plan`, `/tasks`, `/agents`, `/messages`, `/budgets`,
//! `/schedules`, and `/events` followed live.
//!
//! A terminal agent's page shows its screen with xterm.js, vendored in `dashboard/vendor/`
//! (its version and origin in the README there) and served like the other files.
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
    ("terminal.js", "text/javascript; charset=utf-8", include_str!("../dashboard/terminal.js")),
    ("style.css", "text/css; charset=utf-8", include_str!("../dashboard/style.css")),
    ("vendor/xterm.js", "text/javascript; charset=utf-8", include_str!("../dashboard/vendor/xterm.js")),
    ("vendor/xterm.css", "text/css; charset=utf-8", include_str!("../dashboard/vendor/xterm.css")),
];

const INDEX: &str = include_str!("../dashboard/index.html");

/// What the page may load and talk to: only this server. No inline script, no other origin.
/// Style elements only with the page's nonce: xterm.js sizes and colours the terminal with
/// `<style>` elements it makes, which the page gives the nonce (`NONCE` is replaced).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'nonce-NONCE'; img-src 'self' data:; \
     connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// Where the page's HTML says the nonce for its style elements.
const NONCE_PLACEHOLDER: &str = "{{STYLE_NONCE}}";

/// The dashboard's routes. Stateless: it is merged beside the API, not behind its gate.
pub fn routes() -> Router {
    Router::new()
        .route("/", get(index))
        .route("/dashboard/{file}", get(asset))
        .route("/dashboard/vendor/{file}", get(vendor_asset))
}

/// The page, with a fresh nonce for its style elements in its HTML and its policy.
async fn index() -> Response {
    let nonce = format!("{:032x}", rand::random::<u128>());
    let policy = CONTENT_SECURITY_POLICY.replace("NONCE", &nonce);
    respond("text/html; charset=utf-8", INDEX.replace(NONCE_PLACEHOLDER, &nonce), &policy)
}

async fn asset(Path(file): Path<String>) -> Response {
    serve_asset(&file)
}

async fn vendor_asset(Path(file): Path<String>) -> Response {
    serve_asset(&format!("vendor/{file}"))
}

fn serve_asset(file: &str) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        // Not a page: a policy with no nonce (nothing is allowed that a nonce would allow).
        Some((_, content_type, contents)) => {
            respond(content_type, *contents, &CONTENT_SECURITY_POLICY.replace(" 'nonce-NONCE'", ""))
        }
        None => crate::ApiError::not_found(format!("the dashboard has no file `{file}`")).into_response(),
    }
}

fn respond(content_type: &'static str, contents: impl IntoResponse, policy: &str) -> Response {
    let policy =
        header::HeaderValue::from_str(policy).unwrap_or(header::HeaderValue::from_static("default-src 'none'"));
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, header::HeaderValue::from_static(content_type)),
            // The assets change with the binary: revalidate rather than keep a stale page.
            (header::CACHE_CONTROL, header::HeaderValue::from_static("no-cache")),
            (header::CONTENT_SECURITY_POLICY, policy),
            (header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff")),
            (header::REFERRER_POLICY, header::HeaderValue::from_static("no-referrer")),
        ],
        contents,
    )
        .into_response()
}
