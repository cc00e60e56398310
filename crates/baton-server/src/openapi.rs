//! `GET /openapi.json`: the API's description, generated from the handlers' annotations and
//! the request and response types, so it cannot drift from the code.

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::get;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::AppState;
use crate::{a2a, api, chat, coordination, live, metrics, terminal, worker};

#[derive(OpenApi)]
#[openapi(
    info(title = "Baton", description = "Baton's control plane: run a team of agents against a plan."),
    paths(
        api::health, api::status, api::plan,
        api::list_tasks, api::create_task, api::create_tasks, api::plan_objective, api::get_task, api::cancel_task, api::retry_task, api::conflicts,
        api::list_agents, api::create_agent, api::get_agent, api::update_agent, api::delete_agent,
        api::start_agent, api::stop_agent, api::restart_agent, api::agent_logs, terminal::terminal,
        api::list_tools, api::call_tool,
        api::audit, api::create_token,
        worker::claim, worker::heartbeat, worker::progress, worker::complete, worker::fail, worker::results, worker::usage, worker::acquire, worker::release,
        chat::send, chat::list, chat::redeliver,
        coordination::schedules, coordination::pause_schedule, coordination::resume_schedule,
        coordination::budgets, coordination::set_budget,
        live::events, live::history, live::ws,
        metrics::scrape,
        a2a::plan_card, a2a::agent_card, a2a::plan_rpc, a2a::agent_rpc,
        spec,
    ),
    modifiers(&BearerAuth, &CommonErrors),
    security(("bearer" = [])),
    tags(
        (name = "operations", description = "health, status, the plan, metrics"),
        (name = "tasks"), (name = "agents"), (name = "events"),
        (name = "messages", description = "chat with the agents, with @mentions"),
        (name = "schedules"), (name = "budgets"),
        (name = "tools", description = "the tools of the run's MCP servers: list, search, call"),
        (name = "agent-side", description = "what worker agents use: claim, heartbeat, progress, results, usage"),
        (name = "admin", description = "tokens and the audit log"),
        (name = "a2a", description = "A2A 1.0: Agent Cards and the JSON-RPC binding (methods and shapes: the A2A specification)"),
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

/// The errors any operation may answer with, whatever its handler does, documented here once
/// rather than on every handler: the gate's (`401` for a missing or bad token on a server with
/// `[auth]`, `429` over the rate limit) and the extractors' (`400` for a path, query string or
/// body that does not parse, `413` for a body over `server.max_request_size`, `415` for a
/// required JSON body sent without `Content-Type: application/json`).
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::ParameterIn;
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, Required, ResponseBuilder};

        let error = |description: &str| -> RefOr<utoipa::openapi::Response> {
            let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
            ResponseBuilder::new().description(description).content("application/json", content).build().into()
        };
        for item in openapi.paths.paths.values_mut() {
            let operations = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
            for operation in operations.into_iter().flatten() {
                let parsed_parameters = operation.parameters.iter().flatten().any(
                    |parameter| matches!(parameter, RefOr::T(parameter) if parameter.parameter_in != ParameterIn::Header),
                );
                let (has_body, json_body) = match &operation.request_body {
                    Some(RefOr::T(body)) => {
                        (true, body.required == Some(Required::True) && body.content.contains_key("application/json"))
                    }
                    Some(RefOr::Ref(_)) => (true, false),
                    None => (false, false),
                };
                let mut common = vec![
                    ("401", "no valid bearer token (a server with [auth])"),
                    ("429", "over the rate limit; `Retry-After` says when to try again"),
                ];
                if parsed_parameters || has_body {
                    common.push(("400", "the path, the query string or the body is not valid"));
                }
                if has_body {
                    common.push(("413", "the body is larger than `server.max_request_size`"));
                }
                if json_body {
                    common.push(("415", "the body is not sent as `Content-Type: application/json`"));
                }
                for (status, description) in common {
                    operation.responses.responses.entry(status.to_string()).or_insert_with(|| error(description));
                }
            }
        }
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
