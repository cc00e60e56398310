//! `baton.<profile>.toml` over `baton.toml`, and `BATON_*` overrides over both.

use super::*;

fn layered(profile: &str, env: &BTreeMap<String, String>) -> Result<Plan, Error> {
    load_sources(
        Source { file: "baton.toml", text: MINIMAL },
        Some(Source { file: "baton.prod.toml", text: profile }),
        env,
    )
}

fn layered_errors(profile: &str, env: &BTreeMap<String, String>) -> String {
    layered(profile, env).unwrap_err().to_string()
}

#[test]
fn a_profile_merges_tables_and_entries_by_name() {
    let profile = r#"
[orchestration]
max_concurrent_agents = 2

[server]
listen = "127.0.0.1:9999"

[[agents]]
name = "builder"
capabilities = ["rust", "gpu"]

[[agents]]
name = "deployer"
capabilities = ["deploy"]
command = ["deploy.sh"]

[[tasks]]
key = "compile"
title = "Compile for production"
"#;
    let plan = layered(profile, &env()).unwrap();
    assert_eq!(plan.name, "demo", "keys the profile does not set stay");
    assert_eq!(plan.settings.max_concurrent_agents, 2);
    assert_eq!(plan.listen, "127.0.0.1:9999");
    let names: Vec<&str> = plan.agents.iter().map(|agent| agent.name.as_str()).collect();
    assert_eq!(names, ["builder", "tester", "deployer"], "a new name is appended");
    let builder = &plan.agents[0];
    assert_eq!(builder.capabilities, ["rust", "gpu"], "arrays are replaced");
    assert_eq!(builder.workstream.as_deref(), Some("build"), "the base entry's other keys stay");
    assert_eq!(builder.process().unwrap().command_location.file, "baton.toml");
    assert_eq!(plan.agents[2].process().unwrap().command_location.file, "baton.prod.toml");
    assert_eq!(plan.tasks.len(), 2);
    assert_eq!(plan.tasks[0].title, "Compile for production", "tasks merge by key");
    assert_eq!(plan.tasks[0].requires, ["rust"]);
}

#[test]
fn errors_name_the_file_they_are_written_in() {
    assert_eq!(
        layered_errors("[orchestration]\nmax_concurent_agents = 2\n", &env()),
        "baton.prod.toml:2:1: unknown field `max_concurent_agents`, expected one of `name`, `max_concurrent_agents`, `agent_spawn_timeout`, `workstream_timeout`, `coordinator`, `retry_backoff`, `retry_backoff_max`, `lease_ttl`, `offline_after`"
    );
    assert_eq!(
        layered_errors("[orchestration]\nmax_concurrent_agents = \"two\"\n", &env()),
        "baton.prod.toml:2:25: invalid type: string \"two\", expected u32"
    );
    assert_eq!(
        layered_errors("[[agents]]\nname = \"builder\"\nworkstream = \"biuld\"\n", &env()),
        "baton.toml:29:13: task `compile` cannot be assigned: no agent of workstream `build` or shared has [rust]; add the capabilities to an agent or change `requires`\n\
         baton.prod.toml:3:14: unknown workstream `biuld` (did you mean `build`?)"
    );
    assert_eq!(
        layered_errors("[[agents]]\nname = \"extra\"\n", &env()),
        "baton.prod.toml:1:1: missing field `command`"
    );
    let message = layered_errors("[orchestration\n", &env());
    assert!(message.starts_with("baton.prod.toml:1:"), "{message}");
    let broken_base = MINIMAL.replace("[[tasks]]\nkey", "[[tasks]\nkey");
    let message = load_sources(
        Source { file: "baton.toml", text: &broken_base },
        Some(Source { file: "baton.prod.toml", text: "[orchestration\n" }),
        &env(),
    )
    .unwrap_err()
    .to_string();
    assert!(message.starts_with("baton.toml:25:") && message.contains("\nbaton.prod.toml:1:"), "{message}");
}

#[test]
fn environment_variables_override_both_files() {
    let mut env = env();
    env.insert("BATON_ORCHESTRATION_MAX_CONCURRENT_AGENTS".into(), "3".into());
    env.insert("BATON_ORCHESTRATION_NAME".into(), "from-env".into());
    env.insert("BATON_SERVER_LISTEN".into(), "0.0.0.0:7000".into());
    env.insert("BATON_SERVER_RELOAD".into(), "false".into());
    env.insert("BATON_STORE_URL".into(), "sqlite://elsewhere.db".into());
    env.insert("BATON_AUTH_SECRET_ENV".into(), "HOME".into());
    env.insert("BATON_RUN_ID".into(), "not configuration".into());
    env.insert("BATON_SERVER_NONSENSE".into(), "ignored".into());
    let plan = layered("[orchestration]\nmax_concurrent_agents = 2\n", &env).unwrap();
    assert_eq!(plan.settings.max_concurrent_agents, 3);
    assert_eq!(plan.name, "from-env");
    assert_eq!(plan.listen, "0.0.0.0:7000");
    assert_eq!(plan.server.url, "http://0.0.0.0:7000");
    assert!(!plan.server.reload);
    assert_eq!(plan.store_url, "sqlite://elsewhere.db");
    assert_eq!(plan.auth.map(|auth| auth.secret_env), Some("HOME".to_string()));
    let plan = load_sources(Source { file: "baton.toml", text: MINIMAL }, None, &env).unwrap();
    assert_eq!(plan.settings.max_concurrent_agents, 3, "without a profile too");
}

#[test]
fn bad_environment_values_name_the_variable() {
    let mut env = env();
    env.insert("BATON_ORCHESTRATION_MAX_CONCURRENT_AGENTS".into(), "many".into());
    env.insert("BATON_SERVER_RELOAD".into(), "yes".into());
    assert_eq!(
        layered_errors("", &env),
        "environment: BATON_ORCHESTRATION_MAX_CONCURRENT_AGENTS=`many`: expected an integer\n\
         environment: BATON_SERVER_RELOAD=`yes`: expected true or false"
    );
    let mut env = self::env();
    env.insert("BATON_ORCHESTRATION_MAX_CONCURRENT_AGENTS".into(), "0".into());
    assert_eq!(
        layered_errors("", &env),
        "environment: BATON_ORCHESTRATION_MAX_CONCURRENT_AGENTS: `max_concurrent_agents` must be at least 1"
    );
    let mut env = self::env();
    env.insert("BATON_ORCHESTRATION_LEASE_TTL".into(), "soon".into());
    let message = layered_errors("", &env);
    assert!(message.starts_with("environment: BATON_ORCHESTRATION_LEASE_TTL: invalid duration `soon`"), "{message}");
    let mut env = self::env();
    env.insert("BATON_SERVER_LISTEN".into(), "0.0.0.0:7000".into());
    assert_eq!(
        layered_errors("", &env),
        "environment: BATON_SERVER_LISTEN: server.listen `0.0.0.0:7000` is not a loopback address: add an [auth] section so that the API is not open to the network"
    );
}

#[test]
fn every_override_names_a_key_of_the_file() {
    let variables: Vec<String> = ENV_OVERRIDES.iter().map(EnvOverride::variable).collect();
    assert!(variables.contains(&"BATON_ORCHESTRATION_MAX_CONCURRENT_AGENTS".to_string()));
    assert!(variables.contains(&"BATON_AUTH_SECRET_ENV".to_string()));
    for spec in ENV_OVERRIDES {
        let value = match spec.kind {
            OverrideKind::Integer => "1",
            OverrideKind::Boolean => "true",
            OverrideKind::String => "x",
        };
        let env = BTreeMap::from([(spec.variable(), value.to_string())]);
        if let Err(error) = load_sources(Source { file: "baton.toml", text: MINIMAL }, None, &env) {
            let message = error.to_string();
            assert!(!message.contains("unknown field"), "{}: {message}", spec.variable());
        }
    }
}
