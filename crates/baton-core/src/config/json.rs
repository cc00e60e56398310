//! Agents created over the HTTP API: a JSON object with the keys of a `[[agents]]` entry of
//! `baton.toml`, validated exactly as the file's agents are (the same `RawAgent`, the same
//! `Validator`), against the workstreams and agents of the running [`Plan`].
//!
//! The JSON is written out as a small TOML document and parsed back, so that every value has a
//! span; spans are then named by the field path they belong to (`command[0]`, `limits.memory`),
//! and errors read `request body: field `comand`: unknown field `comand`, expected one of …`.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{AgentSpec, Diagnostic, Error, Location, Locator, Plan, RawAgent, Validator};

/// The file name of errors about a request body.
const REQUEST_BODY: &str = "request body";

/// Validates a new agent given as JSON. Its `workstream` must be one of `plan`'s and its name
/// must not be taken. `${VAR}` is not expanded from Baton's environment (a caller of the API
/// must not be able to read the server's variables): an agent that uses one is refused.
pub fn agent_from_json(plan: &Plan, value: &serde_json::Value) -> Result<AgentSpec, Error> {
    agent(plan, value, false)
}

/// Like [`agent_from_json`], for replacing an agent: the name may be one of `plan`'s agents
/// (or a new one).
pub fn agent_update_from_json(plan: &Plan, value: &serde_json::Value) -> Result<AgentSpec, Error> {
    agent(plan, value, true)
}

fn body_error(message: String) -> Error {
    let location = Location { file: REQUEST_BODY.to_string(), line: 0, column: 0 };
    Error { diagnostics: vec![Diagnostic { location, message }] }
}

fn agent(plan: &Plan, value: &serde_json::Value, replace: bool) -> Result<AgentSpec, Error> {
    if !value.is_object() {
        return Err(body_error(
            "expected a JSON object with the keys of an [[agents]] entry, e.g. {\"name\": \"builder\", \"command\": [\"bash\", \"build.sh\"]}".to_string(),
        ));
    }
    // What `GET /agents/{name}` shows and a file does not hold: where the command was
    // written. Its JSON, sent back as it is, is taken.
    let mut value = without_nulls(value);
    if let Some(map) = value.as_object_mut() {
        map.remove("command_location");
    }
    let table =
        toml::Table::try_from(value).map_err(|error| body_error(format!("cannot be read as an agent: {error}")))?;
    let text = toml::to_string(&table).map_err(|error| body_error(format!("cannot be read as an agent: {error}")))?;
    let labels = {
        let root = DeTable::parse(&text).map_err(|error| body_error(error.message().trim().to_string()))?;
        let mut labels = Vec::new();
        label_table(root.get_ref(), "", &mut labels);
        labels
    };
    let mut locator = Locator { segments: Vec::new() };
    locator.push(REQUEST_BODY, text, Some(labels));
    let segment = &locator.segments[0];
    let root = DeTable::parse(&segment.text).map_err(|error| body_error(error.message().trim().to_string()))?;
    let span = root.span();
    let value = Spanned::new(span, DeValue::Table(root.into_inner()));
    let raw = Spanned::<RawAgent>::deserialize(toml::de::ValueDeserializer::from(value)).map_err(|error| {
        let span = error.span().unwrap_or(0..0);
        Error { diagnostics: vec![locator.diagnostic(span, error.message().trim().to_string())] }
    })?;
    let no_env = BTreeMap::new();
    let mut validator = Validator {
        locator: &locator,
        env: &no_env,
        diagnostics: Vec::new(),
        mcp_server_names: plan.mcp_servers.iter().map(|server| server.name.clone()).collect(),
        llm_providers: plan.llm.providers.clone(),
    };
    let name = raw.get_ref().name.clone();
    if !replace && plan.agent(name.get_ref()).is_some() {
        validator.error(
            name.span(),
            format!("agent `{}` already exists; choose another name, or update the agent instead", name.get_ref()),
        );
    }
    // Nor may it inherit the token secret: whoever reads the agent's output could then sign
    // tokens of any role.
    if let Some(auth) = &plan.auth
        && raw.get_ref().env_passthrough.contains(&auth.secret_env)
    {
        validator.error(
            raw.span(),
            format!("`env_passthrough` may not name `{}`: it holds the API's token secret", auth.secret_env),
        );
    }
    let mut specs = validator.agents(std::slice::from_ref(&raw), &plan.workstreams);
    if validator.diagnostics.is_empty()
        && let Some(spec) = specs.pop()
    {
        return Ok(spec);
    }
    Err(Error { diagnostics: validator.diagnostics })
}

/// `value` without its `null`s, which TOML cannot write: a null field counts as absent.
fn without_nulls(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.iter()
                .filter(|(_, value)| !value.is_null())
                .map(|(key, value)| (key.clone(), without_nulls(value)))
                .collect(),
        ),
        serde_json::Value::Array(items) => serde_json::Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// Names every key and value span of `table` by its field path.
fn label_table(table: &DeTable<'_>, prefix: &str, labels: &mut Vec<(Range<usize>, String)>) {
    for (key, value) in table {
        let path = if prefix.is_empty() { key.get_ref().to_string() } else { format!("{prefix}.{}", key.get_ref()) };
        labels.push((key.span(), format!("field `{path}`")));
        label_value(value, &path, labels);
    }
}

fn label_value(value: &Spanned<DeValue<'_>>, path: &str, labels: &mut Vec<(Range<usize>, String)>) {
    labels.push((value.span(), format!("field `{path}`")));
    match value.get_ref() {
        DeValue::Table(table) => label_table(table, path, labels),
        DeValue::Array(items) => {
            for (idx, item) in items.iter().enumerate() {
                label_value(item, &format!("{path}[{idx}]"), labels);
            }
        }
        _ => {}
    }
}
