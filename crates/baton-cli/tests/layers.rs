//! Configuration layers as users meet them: `--profile` overlays `baton.PROFILE.toml`, and
//! `BATON_*` variables override both; mistakes in either name where they are.

mod common;

use common::{Project, stderr, stdout};

const BASE: &str = r#"
[orchestration]
name = "layered"
max_concurrent_agents = 4

[[agents]]
name = "worker"
command = ["sh", "-c", "cat"]
capabilities = ["work"]
"#;

const PROD: &str = r#"
[orchestration]
max_concurrent_agents = 16

[[agents]]
name = "worker"
capabilities = ["work", "deploy"]
"#;

#[test]
fn a_profile_overlays_the_file_and_variables_override_both() {
    let project = Project::with(BASE, &[("baton.prod.toml", PROD)]);
    let plain = project.baton(&["check", "--json"]);
    let plan: serde_json::Value = serde_json::from_str(&stdout(&plain)).unwrap();
    assert_eq!(plan["settings"]["max_concurrent_agents"], 4);

    let prod = project.baton(&["--profile", "prod", "check", "--json"]);
    assert!(prod.status.success(), "{}", stderr(&prod));
    let plan: serde_json::Value = serde_json::from_str(&stdout(&prod)).unwrap();
    assert_eq!(plan["settings"]["max_concurrent_agents"], 16);
    assert_eq!(plan["agents"][0]["capabilities"], serde_json::json!(["work", "deploy"]));
    assert_eq!(plan["agents"][0]["command"], serde_json::json!(["sh", "-c", "cat"]), "merged by name");

    let overridden = project
        .command(&["--profile", "prod", "check", "--json"])
        .env("BATON_ORCHESTRATION_MAX_CONCURRENT_AGENTS", "32")
        .env("BATON_SERVER_LISTEN", "127.0.0.1:9999")
        .output()
        .unwrap();
    let plan: serde_json::Value = serde_json::from_str(&stdout(&overridden)).unwrap();
    assert_eq!(plan["settings"]["max_concurrent_agents"], 32);
    assert_eq!(plan["listen"], "127.0.0.1:9999");
}

#[test]
fn mistakes_in_a_layer_name_the_layer() {
    let project = Project::with(BASE, &[("baton.prod.toml", "[orchestration]\nmax_concurent_agents = 2\n")]);
    let typo = project.baton(&["--profile", "prod", "check"]);
    assert_eq!(typo.status.code(), Some(2));
    assert!(stderr(&typo).contains("baton.prod.toml:2:1"), "{}", stderr(&typo));
    assert!(stderr(&typo).contains("max_concurent_agents"), "{}", stderr(&typo));

    let missing = project.baton(&["--profile", "staging", "check"]);
    assert_eq!(missing.status.code(), Some(2));
    assert_eq!(
        stderr(&missing),
        "profile `staging` not found: there is no baton.staging.toml; the only profile there is `prod`\n"
    );

    let bad = project.command(&["check"]).env("BATON_ORCHESTRATION_MAX_CONCURRENT_AGENTS", "many").output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("BATON_ORCHESTRATION_MAX_CONCURRENT_AGENTS=`many`: expected an integer"),
        "{}",
        stderr(&bad)
    );
    let open = project.command(&["check"]).env("BATON_SERVER_LISTEN", "0.0.0.0:8080").output().unwrap();
    assert_eq!(open.status.code(), Some(2));
    assert!(stderr(&open).contains("is not a loopback address"), "{}", stderr(&open));
}

#[test]
fn diagnostics_can_be_json_lines() {
    let project = Project::with(BASE, &[]);
    let (child, mut lines) =
        project.spawn(&["--log-format", "json", "--log-level", "debug", "serve", "--listen", "127.0.0.1:0"]);
    lines.wait_for("API on");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let said = lines.rest();
    let logs: Vec<serde_json::Value> =
        said.lines().filter(|line| line.starts_with('{')).map(|line| serde_json::from_str(line).unwrap()).collect();
    assert!(
        logs.iter().any(|log| log["fields"]["message"].as_str().is_some_and(|m| m.starts_with("shutting down"))),
        "{said}"
    );
    assert!(logs.iter().all(|log| log["level"].is_string() && log["timestamp"].is_string()), "{logs:?}");
    let bad = project.baton(&["--log-format", "yaml", "check"]);
    assert_eq!(bad.status.code(), Some(2));
}
