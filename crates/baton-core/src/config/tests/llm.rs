//! `runtime = "llm"` agents and `[llm.providers]`.

use super::*;

const LLM: &str = r#"
[orchestration]
name = "llm"

[llm.providers.claude]
kind = "anthropic"
api_key_env = "ANTHROPIC_API_KEY"

[llm.providers.local]
kind = "openai"
base_url = "http://127.0.0.1:11434/v1/"
[llm.providers.local.prices]
"qwen3" = { input = 0.1, output = 0.2 }

[[agents]]
name = "reviewer"
runtime = "llm"
provider = "claude"
model = "claude-sonnet-4-5"
capabilities = ["review"]
tools = ["github/*", "baton/*"]
max_turns = 5

[mcp_servers.github]
url = "https://mcp.example.com/mcp"
"#;

#[test]
fn an_llm_agent_carries_its_providers_spec_and_no_key() {
    let plan = load("baton.toml", LLM, &env()).unwrap();
    let agent = &plan.agents[0];
    assert_eq!(agent.runtime(), RuntimeKind::Llm);
    let AgentKind::Llm(llm) = &agent.kind else { panic!("an llm agent: {agent:?}") };
    assert_eq!(llm.provider.name, "claude");
    assert_eq!(llm.provider.base_url, "https://api.anthropic.com");
    assert_eq!(llm.provider.api_key_env.as_deref(), Some("ANTHROPIC_API_KEY"));
    assert_eq!((llm.model.as_str(), llm.max_turns, llm.max_tokens), ("claude-sonnet-4-5", 5, DEFAULT_MAX_TOKENS));
    assert_eq!(agent.tools, ["github/*", "baton/*"]);
    let local = &plan.llm.providers["local"];
    assert_eq!(local.base_url, "http://127.0.0.1:11434/v1");
    assert_eq!(local.prices["qwen3"].output, 0.2);
    assert_eq!(agent.runtime_summary(), "llm claude/claude-sonnet-4-5");
    let shown = serde_json::to_value(agent).unwrap();
    assert_eq!(shown["runtime"], "llm");
    assert_eq!(shown["provider"], "claude", "the provider as baton.toml names it");
    assert_eq!(shown["tools"], serde_json::json!(["github/*", "baton/*"]));
}

#[test]
fn llm_agents_are_checked_with_locations() {
    let text = LLM
        .replace("provider = \"claude\"", "provider = \"claud\"")
        .replace("model = \"claude-sonnet-4-5\"\n", "")
        .replace("\"github/*\"", "\"github\"")
        .replace("max_turns = 5", "max_turns = 0\ncommand = [\"true\"]");
    assert_eq!(
        errors(&text),
        "baton.toml:15:1: missing field `model`, e.g. model = \"claude-sonnet-4-5\"
baton.toml:18:12: unknown provider `claud` (did you mean `claude`?)
baton.toml:20:10: tool glob `github` must be `SERVER/TOOL` (e.g. \"fs/*\", \"search/query\", \"*/*\")
baton.toml:21:13: `max_turns` must be between 1 and 1000
baton.toml:22:11: `command` applies only to process agents: remove it from this LLM agent"
    );
}

#[test]
fn llm_keys_are_refused_on_other_agents_and_providers_are_checked() {
    let text = "[orchestration]\nname = \"x\"\n\n[llm.providers.p]\nkind = \"openai\"\nbase_url = \"ftp://x\"\napi_key_env = \"sk-123\"\n\n[[agents]]\nname = \"a\"\ncommand = [\"true\"]\nmodel = \"m\"\n";
    assert_eq!(
        errors(text),
        "baton.toml:6:12: `base_url` must be an http:// or https:// URL, e.g. \"https://api.openai.com/v1\"
baton.toml:7:15: `api_key_env` names an environment variable (e.g. \"ANTHROPIC_API_KEY\"), not the key itself
baton.toml:12:9: `model` applies only to LLM agents: add runtime = \"llm\" or remove `model`"
    );
    let unknown_kind = errors("[orchestration]\nname = \"x\"\n[llm.providers.p]\nkind = \"gemini\"\n");
    assert!(unknown_kind.starts_with("baton.toml:4:8: unknown variant `gemini`"), "{unknown_kind}");
}

#[test]
fn a_provider_and_model_may_come_from_the_environment() {
    let text = LLM.replace("provider = \"claude\"", "provider = \"${LLM_PROVIDER:-claude}\"");
    let mut env = env();
    env.insert("LLM_PROVIDER".into(), "local".into());
    let plan = load("baton.toml", &text, &env).unwrap();
    let AgentKind::Llm(llm) = &plan.agents[0].kind else { panic!("an llm agent") };
    assert_eq!(llm.provider.name, "local");
}

#[test]
fn the_coordinator_table_names_a_provider_and_its_mode_wins() {
    let text = format!(
        "{LLM}\n[coordinator]\nmode = \"llm\"\nprovider = \"claude\"\nmodel = \"claude-sonnet-4-5\"\ntimeout = \"20s\"\nmax_tokens = 2000\n[[workstreams]]\nname = \"docs\"\nobjective = \"Release notes, reviewed\"\n"
    );
    let plan = load("baton.toml", &text, &env()).unwrap();
    let coordinator = &plan.coordinator;
    assert_eq!((coordinator.mode, plan.settings.coordinator), (Coordinator::Llm, Coordinator::Llm));
    assert_eq!(coordinator.provider.as_ref().map(|provider| provider.name.as_str()), Some("claude"));
    assert_eq!((coordinator.timeout, coordinator.max_tokens), (Duration::from_secs(20), 2000));
    assert_eq!(plan.workstreams[0].objective.as_deref(), Some("Release notes, reviewed"));
    // The string of [orchestration] sets the mode; the table's, when written, wins.
    let short = LLM.replace("name = \"llm\"\n", "name = \"llm\"\ncoordinator = \"llm\"\n");
    assert_eq!(load("baton.toml", &short, &env()).unwrap().coordinator.mode, Coordinator::Llm);
    let both = format!("{short}\n[coordinator]\nmode = \"rules\"\n");
    assert_eq!(load("baton.toml", &both, &env()).unwrap().settings.coordinator, Coordinator::Rules);
    assert_eq!(load("baton.toml", LLM, &env()).unwrap().coordinator.mode, Coordinator::Rules);
}

#[test]
fn coordinator_mistakes_are_reported_at_their_place() {
    let unknown = format!("{LLM}\n[coordinator]\nmode = \"llm\"\nprovider = \"claud\"\nmodel = \"m\"\n");
    assert_eq!(errors(&unknown), "baton.toml:29:12: unknown provider `claud` (did you mean `claude`?)");
    let no_model = format!("{LLM}\n[coordinator]\nprovider = \"claude\"\n");
    assert!(errors(&no_model).contains("missing field `model` in [coordinator]"), "{}", errors(&no_model));
    let zero = format!("{LLM}\n[coordinator]\nprovider = \"claude\"\nmodel = \"m\"\ntimeout = \"0s\"\n");
    assert!(errors(&zero).contains("`timeout` must be more than 0"), "{}", errors(&zero));
    let mode = format!("{LLM}\n[coordinator]\nmode = \"smart\"\n");
    assert!(errors(&mode).contains("unknown variant `smart`, expected `rules` or `llm`"), "{}", errors(&mode));
    let empty = format!("{LLM}\n[[workstreams]]\nname = \"docs\"\nobjective = \" \"\n");
    assert!(errors(&empty).contains("`objective` must not be empty"), "{}", errors(&empty));
}
