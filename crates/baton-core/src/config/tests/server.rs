//! `runtime = "remote"` agents, `[server]` and `[auth]`.

use super::*;

const REMOTE: &str = r#"
[orchestration]
name = "remote"

[[agents]]
name = "far"
runtime = "remote"
capabilities = ["rust"]

[[tasks]]
title = "Build"
requires = ["rust"]
"#;

#[test]
fn a_remote_agent_has_no_command() {
    let plan = load("baton.toml", REMOTE, &env()).unwrap();
    let agent = &plan.agents[0];
    assert_eq!(agent.runtime(), RuntimeKind::Remote);
    assert_eq!(agent.runtime().as_str(), "remote");
    assert!(agent.process().is_none(), "a remote agent has no command, no environment, no limits");
}

#[test]
fn a_remote_agent_refuses_command_and_mode() {
    let text = REMOTE.replace("runtime = \"remote\"", "runtime = \"remote\"\ncommand = [\"true\"]\nmode = \"worker\"");
    assert_eq!(
        errors(&text),
        "baton.toml:8:11: remote agents are not started by Baton: remove `command` (a worker claims this agent's tasks over HTTP), or use runtime = \"process\"\n\
         baton.toml:9:8: `mode` applies only to process agents: remove it (a remote agent's worker decides how it runs tasks)"
    );
}

#[test]
fn a_process_agent_still_needs_a_command() {
    let text = REMOTE.replace("runtime = \"remote\"", "runtime = \"process\"");
    assert_eq!(errors(&text), "baton.toml:5:1: missing field `command`");
    let text = REMOTE.replace("runtime = \"remote\"\n", "");
    assert_eq!(errors(&text), "baton.toml:5:1: missing field `command`");
}

#[test]
fn server_defaults() {
    let plan = load("baton.toml", MINIMAL, &env()).unwrap();
    assert_eq!(plan.listen, "127.0.0.1:8080");
    assert_eq!(plan.server, ServerSpec::default());
    assert_eq!(plan.server.url, "http://127.0.0.1:8080");
    assert_eq!(plan.server.max_request_size, 1024 * 1024);
    assert!(plan.server.reload);
    assert_eq!(plan.auth, None);
}

#[test]
fn server_keys_are_read() {
    let text = format!(
        "{MINIMAL}\n[server]\nlisten = \"localhost:9000\"\nmax_request_size = \"4MiB\"\nreload = false\ntls = {{ cert = \"tls/cert.pem\", key = \"tls/key.pem\" }}\nrate_limit = {{ per_second = 5, burst = 10 }}\n"
    );
    let plan = load("baton.toml", &text, &env()).unwrap();
    assert_eq!(plan.listen, "localhost:9000");
    let server = &plan.server;
    assert_eq!(server.url, "https://localhost:9000", "with tls the default url is https");
    assert_eq!(server.max_request_size, 4 * 1024 * 1024);
    assert!(!server.reload);
    assert_eq!(server.tls, Some(TlsSpec { cert: "tls/cert.pem".into(), key: "tls/key.pem".into() }));
    assert_eq!(server.rate_limit, Some(RateLimit { per_second: 5, burst: 10 }));
    let text = format!("{MINIMAL}\n[server]\nurl = \"http://baton.internal:8080/\"\n");
    assert_eq!(load("baton.toml", &text, &env()).unwrap().server.url, "http://baton.internal:8080");
}

#[test]
fn server_errors_name_the_place() {
    let server = |body: &str| errors(&format!("{MINIMAL}\n[server]\n{body}\n"));
    assert_eq!(
        server("listen = \"0.0.0.0:8080\""),
        "baton.toml:38:10: server.listen `0.0.0.0:8080` is not a loopback address: add an [auth] section so that the API is not open to the network"
    );
    assert_eq!(
        server("listen = \"8080\""),
        "baton.toml:38:10: server.listen `8080` is not an address: write HOST:PORT, e.g. \"127.0.0.1:8080\""
    );
    assert_eq!(
        server("url = \"baton.internal\""),
        "baton.toml:38:7: server.url `baton.internal` is not an HTTP address: write e.g. \"http://127.0.0.1:8080\" or \"https://baton.example.com\""
    );
    assert_eq!(
        server("tls = { cert = \"c.pem\" }"),
        "baton.toml:38:7: `server.tls` needs both `cert` and `key`, e.g. { cert = \"tls/cert.pem\", key = \"tls/key.pem\" }"
    );
    assert_eq!(
        server("max_request_size = \"0B\""),
        "baton.toml:38:20: `server.max_request_size` must be more than 0, e.g. \"1MiB\""
    );
    assert_eq!(
        server("rate_limit = { per_second = 0, burst = 10 }"),
        "baton.toml:38:29: `server.rate_limit.per_second` must be at least 1, e.g. 50"
    );
    assert_eq!(server("reload = \"yes\""), "baton.toml:38:10: invalid type: string \"yes\", expected a boolean");
}

#[test]
fn auth_is_read_with_its_defaults() {
    let mut env = env();
    env.insert("BATON_JWT_SECRET".into(), "s3cret".into());
    let text = format!("{MINIMAL}\n[server]\nlisten = \"0.0.0.0:8080\"\n\n[auth]\nsecret_env = \"BATON_JWT_SECRET\"\n");
    let plan = load("baton.toml", &text, &env).unwrap();
    let auth = plan.auth.expect("[auth] is read");
    assert_eq!(auth.secret_env, "BATON_JWT_SECRET");
    assert_eq!(auth.rate_limit, RateLimit { per_second: 50, burst: 100 });
    assert_eq!(auth.token_ttl, Duration::from_secs(24 * 3600));
    let text = format!(
        "{MINIMAL}\n[auth]\nsecret_env = \"BATON_JWT_SECRET\"\nrate_limit = {{ per_second = 2, burst = 3 }}\ntoken_ttl = \"1h\"\n"
    );
    let auth = load("baton.toml", &text, &env).unwrap().auth.unwrap();
    assert_eq!((auth.rate_limit, auth.token_ttl), (RateLimit { per_second: 2, burst: 3 }, Duration::from_secs(3600)));
}

#[test]
fn the_token_secret_must_be_set_and_at_least_32_bytes_and_errors_name_the_place() {
    let text = format!("{MINIMAL}\n[auth]\nsecret_env = \"BATON_JWT_SECRET\"\n");
    let auth = load("baton.toml", &text, &BTreeMap::new()).unwrap().auth.unwrap();
    let secret = |value: Option<&str>| {
        let env: BTreeMap<String, String> =
            value.map(|value| ("BATON_JWT_SECRET".to_string(), value.to_string())).into_iter().collect();
        auth.secret(&env).map(str::to_string).map_err(|diagnostic| diagnostic.to_string())
    };
    let unset = secret(None).unwrap_err();
    assert!(
        unset.starts_with("baton.toml:38:14: auth.secret_env names `BATON_JWT_SECRET`, which is not set"),
        "{unset}"
    );
    assert!(secret(Some("")).unwrap_err().contains("which is empty"));
    assert_eq!(
        secret(Some("x")).unwrap_err(),
        "baton.toml:38:14: the token secret in `BATON_JWT_SECRET` is 1 byte(s) long; it must be at least 32 (e.g. `openssl rand -hex 32`)"
    );
    let good = "k".repeat(32);
    assert_eq!(secret(Some(&good)).unwrap(), good);
    // A TTL that would overflow an expiry is refused where it is written.
    let too_long = errors(&format!("{MINIMAL}\n[auth]\nsecret_env = \"X\"\ntoken_ttl = \"3000000000000000h\"\n"));
    assert_eq!(
        too_long,
        "baton.toml:39:13: duration `3000000000000000h` is too long: at most 3650 days (about 10 years)"
    );
}

#[test]
fn connection_limits_are_bounded() {
    let server = |body: &str| errors(&format!("{MINIMAL}\n[server]\n{body}\n"));
    assert_eq!(
        server("max_connections = 0"),
        "baton.toml:38:19: `server.max_connections` must be between 1 and 1000000"
    );
    assert_eq!(
        server("header_timeout = \"0s\""),
        "baton.toml:38:18: `server.header_timeout` must be between 100ms and 10m"
    );
    assert_eq!(
        server("idle_timeout = \"2days\""),
        "baton.toml:38:16: `server.idle_timeout` must be between 1s and 1day"
    );
    let plan =
        load("baton.toml", &format!("{MINIMAL}\n[server]\nmax_connections = 10\nidle_timeout = \"2m\"\n"), &env())
            .unwrap();
    assert_eq!((plan.server.max_connections, plan.server.idle_timeout), (10, Duration::from_secs(120)));
}

#[test]
fn auth_errors_name_the_place() {
    let auth = |body: &str| errors(&format!("{MINIMAL}\n[auth]\n{body}\n"));
    // An unset variable is not an error of the file: `baton status` needs no secret.
    assert!(
        load("baton.toml", &format!("{MINIMAL}\n[auth]\nsecret_env = \"UNSET_SECRET\"\n"), &BTreeMap::new()).is_ok()
    );
    assert_eq!(
        auth("secret_env = \"hunter2 is my secret\""),
        "baton.toml:38:14: auth.secret_env `hunter2 is my secret` is not an environment variable name: write the variable's name, e.g. \"BATON_JWT_SECRET\", not the secret"
    );
    assert_eq!(
        auth("token_ttl = \"1h\""),
        "baton.toml:37:1: [auth] needs `secret_env`, the name of the environment variable holding the token secret, e.g. secret_env = \"BATON_JWT_SECRET\""
    );
    assert_eq!(
        auth("secret_env = \"HOME\"\nrate_limit = { per_second = 1, burst = -1 }\ntoken_ttl = \"0s\""),
        "baton.toml:39:40: `auth.rate_limit.burst` must be at least 1, e.g. 50\n\
         baton.toml:40:13: `auth.token_ttl` must be more than 0s, e.g. \"24h\""
    );
    assert_eq!(
        auth("secret = \"x\""),
        "baton.toml:38:1: unknown field `secret`, expected one of `secret_env`, `rate_limit`, `token_ttl`"
    );
}

#[test]
fn loopback_addresses() {
    for listen in ["127.0.0.1:8080", "127.1.2.3:1", "[::1]:8080", "::1", "localhost:80", "LOCALHOST", "127.0.0.1"] {
        assert!(is_loopback(listen), "{listen}");
    }
    for listen in ["0.0.0.0:8080", "[::]:8080", "10.0.0.1:80", "example.com:80", "localhost.example.com:80"] {
        assert!(!is_loopback(listen), "{listen}");
    }
}
