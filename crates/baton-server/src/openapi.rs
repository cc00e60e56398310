//! `GET /openapi.json`: the API's description, generated from the handlers' annotations and
//! the request and response types, so it cannot drift from the code.

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::get;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::AppState;
use crate::{api, live, metrics, worker};

#[derive(OpenApi)]
#[openapi(
    info(title = "Baton", description = "Baton's control plane: run a team of agents against a plan."),
    paths(
        api::health, api::status, api::plan,
        api::list_tasks, api::create_task, api::create_tasks, api::get_task, api::cancel_task, api::retry_task,
        api::list_agents, api::create_agent, api::get_agent, api::update_agent, api::delete_agent,
        api::start_agent, api::stop_agent, api::restart_agent, api::agent_logs,
        api::audit, api::create_token,
        worker::claim, worker::heartbeat, worker::progress, worker::complete, worker::fail, worker::results, worker::usage,
        live::events, live::history, live::ws,
        metrics::scrape,
        spec,
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "operations", description = "health, status, the plan, metrics"),
        (name = "tasks"), (name = "agents"), (name = "events"),
        (name = "agent-side", description = "what worker agents use: claim, heartbeat, progress, results, usage"),
        (name = "admin", description = "tokens and the audit log"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    }
}

pub fn routes() -> Router<AppState> {
    Router::new().route("/openapi.json", get(spec))
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "the OpenAPI document", body = Object)))]
pub async fn spec() -> impl IntoResponse {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    axum::Json(doc)
}
