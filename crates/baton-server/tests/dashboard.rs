//! The dashboard's files: served at `/` and `/dashboard/NAME` with and without `[auth]` (they
//! hold no data; the API behind them still wants its token), with a content security policy,
//! and every file the page refers to exists. The page itself is driven in a real browser by
//! `baton-cli`'s `tests/dashboard.rs`.

mod common;

use common::{Options, Server};

async fn fetch(server: &Server, path: &str) -> (u16, String, reqwest::header::HeaderMap) {
    let response = server.get(path).send().await.expect("a response");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, response.text().await.expect("a body"), headers)
}

#[tokio::test]
async fn the_page_and_its_files_are_served() {
    let server = Server::start().await;
    let (status, page, headers) = fetch(&server, "/").await;
    assert_eq!(status, 200);
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(headers["content-security-policy"].to_str().unwrap().contains("default-src 'self'"));
    assert!(page.contains(r#"<script type="module" src="dashboard/app.js">"#), "{page}");
    for (path, content_type) in [
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/api.js", "text/javascript"),
        ("/dashboard/pages.js", "text/javascript"),
        ("/dashboard/style.css", "text/css"),
        ("/dashboard/terminal.js", "text/javascript"),
        ("/dashboard/vendor/xterm.js", "text/javascript"),
        ("/dashboard/vendor/xterm.css", "text/css"),
    ] {
        let (status, body, headers) = fetch(&server, path).await;
        assert_eq!(status, 200, "{path}");
        assert!(headers["content-type"].to_str().unwrap().starts_with(content_type), "{path}");
        assert!(!body.is_empty(), "{path}");
    }
    // Every module the scripts import is served.
    for script in ["app.js", "pages.js"] {
        let (_, body, _) = fetch(&server, &format!("/dashboard/{script}")).await;
        for line in body.lines().filter(|line| line.starts_with("import ")) {
            let file = line.rsplit("\"./").next().unwrap().trim_end_matches("\";");
            let (status, _, _) = fetch(&server, &format!("/dashboard/{file}")).await;
            assert_eq!(status, 200, "{script} imports {file}");
        }
    }
    let (status, body, _) = fetch(&server, "/dashboard/nothing.js").await;
    assert_eq!(status, 404);
    assert!(body.contains("not_found"), "{body}");
    server.stop().await;
}

#[tokio::test]
async fn with_auth_the_page_loads_and_the_api_still_wants_a_token() {
    let server = Server::start_with(Options { auth: true, ..Options::default() }).await;
    let (status, _, _) = fetch(&server, "/").await;
    assert_eq!(status, 200);
    let (status, _, _) = fetch(&server, "/dashboard/app.js").await;
    assert_eq!(status, 200);
    let (status, _, _) = fetch(&server, "/status").await;
    assert_eq!(status, 401);
    let (status, _, _) = fetch(&server, "/no/such/endpoint").await;
    assert_eq!(status, 401, "the API's fallback stays behind the gate");
    server.stop().await;
}

/// The page follows `/events` from the status's `last_event_seq`: the newest event when the
/// status was read, so that nothing after the page's first reads is missed.
#[tokio::test]
async fn the_status_says_where_the_event_stream_stands() {
    let server = Server::start().await;
    let status = server.get_json("/status").await;
    let seq = status["last_event_seq"].as_i64().unwrap_or_else(|| panic!("a number: {status}"));
    assert!(seq > 0, "the run has started, with events: {status}");
    let history = server.get_json(&format!("/events/history?since={}&limit=1", seq - 1)).await;
    assert_eq!(history[0]["seq"], seq, "{history}");
    server.stop().await;
}

/// xterm.js makes `<style>` elements: the page's policy allows those with the nonce the page
/// was served with (a fresh one each time, said in the page for its scripts), and no other.
#[tokio::test]
async fn the_page_allows_style_elements_with_its_own_fresh_nonce() {
    let server = Server::start().await;
    let mut nonces = Vec::new();
    for _ in 0..2 {
        let (_, page, headers) = fetch(&server, "/").await;
        let policy = headers["content-security-policy"].to_str().unwrap().to_string();
        let nonce = page
            .split(r#"<meta name="baton-style-nonce" content=""#)
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .to_string();
        assert_eq!(nonce.len(), 32, "{page}");
        assert!(policy.contains(&format!("style-src 'self' 'nonce-{nonce}';")), "{policy}");
        assert!(policy.contains("script-src 'self';"), "{policy}");
        nonces.push(nonce);
    }
    assert_ne!(nonces[0], nonces[1]);
    let (_, _, headers) = fetch(&server, "/dashboard/vendor/xterm.js").await;
    assert!(!headers["content-security-policy"].to_str().unwrap().contains("nonce"));
    server.stop().await;
}

/// A plan with a terminal agent beside the usual ones: it says it is ready, then answers each
/// line it reads.
fn plan_with_a_terminal() -> String {
    format!(
        "{}{}",
        common::PLAN,
        r#"
[[agents]]
name = "console"
mode = "pty"
command = ["sh", "-c", "echo console ready; while read -r line; do echo \"got: $line\"; done"]
capabilities = ["console"]
"#
    )
}

/// Waits, on the event stream, until agent `name` has started (its terminal is served then).
async fn started(server: &Server, name: &str, token: &str) {
    use futures::StreamExt;
    let url = format!("{}/ws?since=0", server.url.replace("http://", "ws://"));
    let mut request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    while let Some(Ok(message)) = socket.next().await {
        let tokio_tungstenite::tungstenite::Message::Text(text) = message else { continue };
        let event: serde_json::Value = serde_json::from_str(&text).unwrap();
        if event["type"] == "AgentStateChanged" && event["agent"] == name && event["to"] == "idle" {
            return;
        }
    }
    panic!("the event stream ended before {name} started");
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `/agents/{name}/terminal` the way a browser does: the token as a subprotocol.
async fn terminal(server: &Server, name: &str, token: &str) -> Socket {
    let url = format!("{}/agents/{name}/terminal", server.url.replace("http://", "ws://"));
    let mut request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
    request.headers_mut().insert("sec-websocket-protocol", format!("baton.terminal, bearer.{token}").parse().unwrap());
    let (socket, response) = tokio_tungstenite::connect_async(request).await.expect("the terminal opens");
    assert_eq!(response.headers()["sec-websocket-protocol"], "baton.terminal");
    socket
}

/// Reads the terminal's bytes until they hold `expected`; a text message (a refusal) on the
/// way is returned too.
async fn read_until(socket: &mut Socket, expected: &str) -> (String, Vec<String>) {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut screen = String::new();
    let mut texts = Vec::new();
    while !screen.contains(expected) {
        match socket.next().await {
            Some(Ok(Message::Binary(bytes))) => screen.push_str(&String::from_utf8_lossy(&bytes)),
            Some(Ok(Message::Text(text))) => texts.push(text.to_string()),
            Some(Ok(_)) => {}
            other => panic!("the terminal ended before `{expected}` ({other:?}): {screen}"),
        }
    }
    (screen, texts)
}

/// `GET /agents/{name}/terminal`: the screen, then the output; an operator's keys are typed,
/// a viewer's are refused (and never reach the program); not a WebSocket or not a terminal
/// agent is a `400`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_agent_is_watched_and_typed_into_over_a_websocket() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let server = Server::start_with(Options { plan: plan_with_a_terminal(), auth: true, ..Options::default() }).await;
    let operator = server.token(baton_server::Role::Operator, None);
    let viewer = server.token(baton_server::Role::Viewer, None);
    started(&server, "console", &operator).await;

    let mut watching = terminal(&server, "console", &viewer).await;
    read_until(&mut watching, "console ready").await;
    watching.send(Message::text("typed by a viewer\r")).await.unwrap();
    let refusal = loop {
        match futures::StreamExt::next(&mut watching).await {
            Some(Ok(Message::Text(text))) => break text.to_string(),
            Some(Ok(_)) => {}
            other => panic!("no refusal: {other:?}"),
        }
    };
    assert!(refusal.contains("forbidden"), "{refusal}");
    let mut typing = terminal(&server, "console", &operator).await;
    read_until(&mut typing, "console ready").await;
    typing.send(Message::binary(b"typed by an operator\r".to_vec())).await.unwrap();
    let (screen, _) = read_until(&mut typing, "got: typed by an operator").await;
    // The viewer sees it too; its own keys never reached the program.
    let (seen, _) = read_until(&mut watching, "got: typed by an operator").await;
    assert!(!screen.contains("viewer") && !seen.contains("viewer"), "{screen}\n{seen}");

    let plain = server.get("/agents/console/terminal").bearer_auth(&viewer).send().await.unwrap();
    assert_eq!(plain.status(), 400);
    let not_a_terminal = server.get("/agents/echo/terminal").bearer_auth(&viewer).send().await.unwrap();
    assert_eq!(not_a_terminal.status(), 400);
    assert!(not_a_terminal.text().await.unwrap().contains("not a terminal agent"));
    let none = server.get("/agents/nobody/terminal").bearer_auth(&viewer).send().await.unwrap();
    assert_eq!(none.status(), 404);
    server.stop().await;
}

/// The Events page's type filter offers every event type there is (its list is written out in
/// `pages.js`): a new event kind must be added there too.
#[test]
fn the_events_page_knows_every_event_type() {
    let pages = include_str!("../dashboard/pages.js");
    let missing: Vec<&str> =
        baton_core::EventKind::NAMES.iter().copied().filter(|name| !pages.contains(&format!("\"{name}\""))).collect();
    assert!(missing.is_empty(), "event types missing from EVENT_TYPES in pages.js: {missing:?}");
}

/// Behind a proxy that serves the dashboard under a path prefix (`https://host/baton/`), the
/// page finds its files and the API beside it: no address in it starts at the server's root.
#[test]
fn the_page_uses_addresses_relative_to_itself() {
    let page = include_str!("../dashboard/index.html");
    assert!(!page.contains("=\"/"), "an address from the root in index.html");
    for (name, script) in [
        ("api.js", include_str!("../dashboard/api.js")),
        ("app.js", include_str!("../dashboard/app.js")),
        ("pages.js", include_str!("../dashboard/pages.js")),
        ("terminal.js", include_str!("../dashboard/terminal.js")),
    ] {
        for (number, line) in script.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") || code.starts_with('*') {
                continue;
            }
            // `fetch(` itself, not `refetch(`.
            let fetches = line.match_indices("fetch(").filter(|(at, _)| {
                !line[..*at].ends_with(|c: char| c.is_alphanumeric()) && !line[*at..].starts_with("fetch(at(")
            });
            assert_eq!(fetches.count(), 0, "{name}:{}: fetch without at(): {line}", number + 1);
            assert!(!line.contains("location.host"), "{name}:{}: an address from the host: {line}", number + 1);
        }
    }
}
