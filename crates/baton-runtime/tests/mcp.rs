//! The MCP client against real servers: `@modelcontextprotocol/server-everything` (the
//! 2025-11-25 era: `initialize`, sessions) and a server written with the Python `mcp` SDK
//! (`tests/mcp/server.py`, the 2026-07-28 era: `server/discover`), each over stdio and over
//! Streamable HTTP. `.ci/mcp/setup` installs them (npm and pip, pinned) and CI sets
//! `BATON_TEST_MCP=1`; without it the tests that need them say so and pass.
//!
//! Nothing waits by sleeping: the hub's `changes()` tell when a server is up, its tools have
//! changed or it was started again.

#![allow(clippy::disallowed_methods, reason = "the tests start the HTTP servers they connect to")]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use baton_core::config::{McpServerSpec, McpTransport};
use baton_runtime::mcp::{Backoff, McpHub};
use baton_runtime::process::ProcessEnv;
use baton_runtime::tools::{ToolError, ToolProvider};

/// How long a server gets to do what a test waits for before the test fails (not a wait:
/// tests go on as soon as it is done).
const PATIENCE: Duration = Duration::from_secs(60);

fn test_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp")
}

/// The installed servers, or `None` (with a notice) when `BATON_TEST_MCP` is not set.
fn servers() -> Option<(PathBuf, PathBuf)> {
    if std::env::var_os("BATON_TEST_MCP").is_none() {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            let _ = writeln!(
                std::io::stderr(),
                "skipped: set BATON_TEST_MCP=1 after .ci/mcp/setup to run the MCP client tests against real servers"
            );
        });
        return None;
    }
    let everything = test_dir().join("node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    let python = std::env::var_os("BATON_TEST_MCP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/mcp-venv/bin/python"));
    assert!(everything.exists(), "{} is missing: run .ci/mcp/setup", everything.display());
    assert!(python.exists(), "{} is missing: run .ci/mcp/setup", python.display());
    Some((everything, python))
}

fn stdio(name: &str, command: &[&str]) -> McpServerSpec {
    let transport =
        McpTransport::Stdio { command: command.iter().map(|arg| arg.to_string()).collect(), env: BTreeMap::new() };
    McpServerSpec {
        name: name.into(),
        transport: transport.clone(),
        written: transport,
        location: Default::default(),
        timeout: baton_core::config::DEFAULT_MCP_TIMEOUT,
    }
}

fn http(name: &str, url: &str) -> McpServerSpec {
    let transport = McpTransport::Http { url: url.into(), headers: BTreeMap::new() };
    McpServerSpec {
        name: name.into(),
        transport: transport.clone(),
        written: transport,
        location: Default::default(),
        timeout: baton_core::config::DEFAULT_MCP_TIMEOUT,
    }
}

struct Hub {
    hub: Arc<McpHub>,
    stop: CancellationToken,
    tasks: TaskTracker,
    _dir: tempfile::TempDir,
}

impl Hub {
    async fn start(servers: &[McpServerSpec]) -> Hub {
        let dir = tempfile::tempdir().unwrap();
        let env = BTreeMap::from([
            ("PATH".to_string(), std::env::var("PATH").unwrap_or_default()),
            ("HOME".to_string(), std::env::var("HOME").unwrap_or_default()),
        ]);
        let process_env = ProcessEnv {
            base_dir: test_dir(),
            log_dir: dir.path().join("logs"),
            env,
            registry: None,
            api: None,
            mcp_servers: servers.to_vec(),
        };
        // Restarts come quickly, so that the restart test is quick.
        let backoff = Backoff {
            first: Duration::from_millis(10),
            max: Duration::from_millis(100),
            reset_after: Duration::from_secs(60),
        };
        let hub = McpHub::with_backoff(servers, Some(process_env), backoff);
        let (stop, tasks) = (CancellationToken::new(), TaskTracker::new());
        hub.start(&stop, &tasks);
        tokio::time::timeout(PATIENCE, hub.ready()).await.expect("every server was tried");
        Hub { hub, stop, tasks, _dir: dir }
    }

    /// Waits until `check` holds of the hub.
    async fn until(&self, what: &str, check: impl Fn(&McpHub) -> bool) {
        let mut changes = self.hub.changes();
        let waited = tokio::time::timeout(PATIENCE, changes.wait_for(|_| check(&self.hub))).await;
        assert!(waited.is_ok(), "{what}: {:?}", self.hub.statuses());
    }

    fn up(&self, name: &str) -> baton_runtime::mcp::ServerStatus {
        let status = self.hub.statuses().into_iter().find(|status| status.name == name).expect("the server");
        assert_eq!(status.state, "up", "{status:?}");
        status
    }

    async fn stop(self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

fn text(result: &baton_runtime::tools::ToolResult) -> String {
    result.content.iter().filter_map(|block| block["text"].as_str()).collect::<Vec<_>>().join("\n")
}

/// Starts an HTTP server and returns it with its URL, once it listens.
async fn http_server(program: &Path, args: &[&str], everything: bool) -> (tokio::process::Child, String) {
    let mut command = tokio::process::Command::new(program);
    command.args(args).current_dir(test_dir()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    if everything {
        // It takes its port from PORT only, and says which on stderr: a free one, found by
        // binding port 0.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        command.env("PORT", port.to_string());
        let mut child = command.spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let listening = async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.contains("listening on port") {
                    return;
                }
            }
            panic!("the everything server ended before it listened");
        };
        tokio::time::timeout(PATIENCE, listening).await.expect("it listens");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        return (child, format!("http://127.0.0.1:{port}/mcp"));
    }
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(PATIENCE, lines.next_line()).await.expect("it listens").unwrap().unwrap();
    let port = line.strip_prefix("PORT ").expect("PORT n").trim().to_string();
    (child, format!("http://127.0.0.1:{port}/mcp"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_everything_server_over_stdio_and_http_speaks_the_2025_era() {
    let Some((everything, _)) = servers() else { return };
    let node = ["node", everything.to_str().unwrap()];
    let (_child, url) = http_server(Path::new("node"), &[node[1], "streamableHttp"], true).await;
    let hub = Hub::start(&[stdio("every", &[node[0], node[1], "stdio"]), http("everyhttp", &url)]).await;
    for name in ["every", "everyhttp"] {
        let status = hub.up(name);
        assert_eq!(status.protocol.as_deref(), Some("2025-11-25"), "{status:?}");
        assert_eq!(status.transport, if name == "every" { "stdio" } else { "http" });
    }

    // Discovery: names under the server's, descriptions, schemas.
    let tools = hub.hub.list().await;
    let echo = tools.iter().find(|tool| tool.name == "every/echo").expect("every/echo");
    assert_eq!(echo.server(), "every");
    assert!(!echo.description.is_empty());
    assert_eq!(echo.input_schema["type"], "object");
    assert!(echo.input_schema["properties"]["message"].is_object(), "{}", echo.input_schema);
    assert!(tools.iter().any(|tool| tool.name == "everyhttp/get-sum"));

    // Calls, over both transports.
    for name in ["every/echo", "everyhttp/echo"] {
        let result = hub.hub.call(name, json!({"message": "hello"})).await.unwrap();
        assert!(!result.is_error);
        assert_eq!(text(&result), "Echo: hello");
    }
    let sum = hub.hub.call("everyhttp/get-sum", json!({"a": 2, "b": 3})).await.unwrap();
    assert!(text(&sum).contains('5'), "{sum:?}");

    // What cannot be called at all is an error of the call, not a result.
    assert_eq!(hub.hub.call("every/nope", json!({})).await, Err(ToolError::NotFound("every/nope".into())));
    assert!(matches!(hub.hub.call("nope/echo", json!({})).await, Err(ToolError::NotFound(_))));
    assert!(matches!(hub.hub.call("every/echo", json!([1])).await, Err(ToolError::Invalid(_))));
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_server_over_stdio_and_http_speaks_the_2026_era() {
    let Some((_, python)) = servers() else { return };
    let python = python.to_str().unwrap();
    let (_child, url) = http_server(Path::new(python), &["server.py", "http"], false).await;
    let hub = Hub::start(&[stdio("py", &[python, "server.py", "stdio"]), http("pyhttp", &url)]).await;
    for name in ["py", "pyhttp"] {
        let status = hub.up(name);
        assert_eq!(status.protocol.as_deref(), Some("2026-07-28"), "{status:?}");
        // echo, fail, add_tool, exit and 60 `page_NN`, every page of `tools/list` read.
        assert_eq!(status.n_tools, 64, "{status:?}");
    }
    for name in ["py/echo", "pyhttp/echo"] {
        let result = hub.hub.call(name, json!({"text": "over the wire"})).await.unwrap();
        assert_eq!((text(&result).as_str(), result.is_error), ("over the wire", false));
    }

    // A tool that ran and failed is a result with `is_error`, for the model to read.
    let failed = hub.hub.call("py/fail", json!({"reason": "no such file"})).await.unwrap();
    assert!(failed.is_error, "{failed:?}");
    assert!(text(&failed).contains("no such file"), "{failed:?}");
    // So are arguments the tool's schema refuses, as the server reports them.
    match hub.hub.call("py/echo", json!({"wrong": 1})).await {
        Ok(result) => assert!(result.is_error, "{result:?}"),
        Err(error) => assert!(matches!(error, ToolError::Invalid(_)), "{error:?}"),
    }
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_tool_list_is_discovered_again() {
    let Some((_, python)) = servers() else { return };
    let python = python.to_str().unwrap();
    let hub = Hub::start(&[stdio("py", &[python, "server.py", "stdio"])]).await;
    let added = hub.hub.call("py/add_tool", json!({"name": "fresh"})).await.unwrap();
    assert_eq!(text(&added), "added fresh");
    hub.until("py/fresh appears", |hub| hub.statuses()[0].n_tools == 65).await;
    let tools = hub.hub.list().await;
    assert!(tools.iter().any(|tool| tool.name == "py/fresh" && tool.description.contains("fresh")));
    let called = hub.hub.call("py/fresh", json!({})).await.unwrap();
    assert_eq!(text(&called), "fresh was added");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdio_server_that_exits_is_started_again() {
    let Some((_, python)) = servers() else { return };
    let python = python.to_str().unwrap();
    let hub = Hub::start(&[stdio("py", &[python, "server.py", "stdio"])]).await;
    assert_eq!(hub.up("py").restarts, 0);
    // The call ends with the process: no answer comes.
    let ended = hub.hub.call("py/exit", json!({})).await;
    assert!(matches!(ended, Err(ToolError::Unavailable(_))), "{ended:?}");
    hub.until("py is up again", |hub| hub.statuses()[0].restarts >= 1 && hub.statuses()[0].state == "up").await;
    let result = hub.hub.call("py/echo", json!({"text": "back"})).await.unwrap();
    assert_eq!(text(&result), "back");
    hub.stop().await;
}

#[tokio::test]
async fn a_server_that_cannot_start_is_down_with_the_reason() {
    let hub = Hub::start(&[stdio("ghost", &["no-such-mcp-server-program"])]).await;
    let status = &hub.hub.statuses()[0];
    assert_eq!(status.state, "down");
    assert!(status.error.as_deref().unwrap_or_default().contains("no-such-mcp-server-program"), "{status:?}");
    let call = hub.hub.call("ghost/anything", json!({})).await;
    assert!(matches!(call, Err(ToolError::Unavailable(_))), "{call:?}");
    assert!(hub.hub.list().await.is_empty());
    hub.stop().await;
}

/// A server that cannot be reached is down with a reason that names its URL as written in
/// baton.toml, never as expanded: a `${VAR}` in it may be a secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_servers_reason_never_shows_its_expanded_url() {
    let mut search = http("search", "http://127.0.0.1:1/mcp?key=${SEARCH_KEY}");
    search.transport =
        McpTransport::Http { url: "http://127.0.0.1:1/mcp?key=s3cret-key".into(), headers: BTreeMap::new() };
    let hub = Hub::start(&[search]).await;
    let status = &hub.hub.statuses()[0];
    assert_eq!(status.state, "down");
    let error = status.error.as_deref().unwrap_or_default();
    assert!(error.contains("${SEARCH_KEY}") && !error.contains("s3cret-key"), "{error}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_server_costs_a_tool_error_after_its_timeout_and_never_holds_the_stop() {
    let Some((_, python)) = servers() else { return };
    let python = python.to_str().unwrap();
    // A short timeout for the first (what the test waits for); the second would hold a call
    // for an hour, were it not raced with the hub's stop.
    let mut quick = stdio("quick", &[python, "hang.py"]);
    quick.timeout = Duration::from_millis(300);
    let mut slow = stdio("slow", &[python, "hang.py"]);
    slow.timeout = Duration::from_secs(3600);
    let hub = Hub::start(&[quick, slow]).await;
    hub.up("quick");
    hub.up("slow");

    let result = tokio::time::timeout(PATIENCE, hub.hub.call("quick/hang", json!({}))).await.expect("it ends");
    let result = result.expect("a result for the model, not an error of the call");
    assert!(result.is_error, "{result:?}");
    assert_eq!(
        text(&result),
        "quick/hang: MCP server `quick` did not answer within 300ms (its `timeout`); the call was given up"
    );
    // The server is still up: a slow tool is not a broken connection.
    hub.up("quick");

    let call = tokio::spawn({
        let hub = Arc::clone(&hub.hub);
        async move { hub.call("slow/hang", json!({})).await }
    });
    let stopping = tokio::time::timeout(PATIENCE, hub.stop()).await;
    assert!(stopping.is_ok(), "the stop was not held by the hung call");
    let ended = tokio::time::timeout(PATIENCE, call).await.expect("the call ended with the stop").unwrap();
    assert_eq!(ended, Err(ToolError::Unavailable("MCP server `slow`: the run is stopping".into())));
}

#[test]
fn an_agents_mcp_config_has_the_servers_its_globs_reach_and_only_its_owner_reads_it() {
    use std::os::unix::fs::PermissionsExt;
    let mut fs = stdio("fs", &["npx", "-y", "@modelcontextprotocol/server-filesystem", "."]);
    fs.transport = McpTransport::Stdio {
        command: vec!["npx".into(), "-y".into(), "@modelcontextprotocol/server-filesystem".into(), ".".into()],
        env: BTreeMap::from([("ROOT".to_string(), "/srv".to_string())]),
    };
    let mut search = http("search", "https://mcp.example.com/mcp");
    search.transport = McpTransport::Http {
        url: "https://mcp.example.com/mcp".into(),
        headers: BTreeMap::from([("Authorization".to_string(), "Bearer expanded-token".to_string())]),
    };
    let other = http("other", "https://other.example.com/mcp");
    let servers = [fs, search, other];
    let dir = tempfile::tempdir().unwrap();
    let path = baton_runtime::mcp::config::path(dir.path(), "coder");
    assert_eq!(path, dir.path().join("mcp/coder.json"));
    baton_runtime::mcp::config::write(&path, &servers, &["fs/*".into(), "search/query".into()]).unwrap();
    let written: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(
        written,
        json!({"mcpServers": {
            "fs": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "."], "env": {"ROOT": "/srv"}},
            "search": {"type": "http", "url": "https://mcp.example.com/mcp", "headers": {"Authorization": "Bearer expanded-token"}},
        }})
    );
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    // Written again (the agent restarted, its tools changed): replaced, still 0600.
    baton_runtime::mcp::config::write(&path, &servers, &[]).unwrap();
    let written: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(written, json!({"mcpServers": {}}));
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
}
