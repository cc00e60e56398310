//! Helpers for tests that need a PostgreSQL server (this crate's and the CLI's), compiled only
//! with the `test-suite` feature: the server named by `BATON_TEST_POSTGRES_URL`, and a schema of
//! a test's own on it, dropped with it.

use std::sync::atomic::{AtomicU64, Ordering};

/// The variable naming the server the PostgreSQL tests use.
pub const POSTGRES_URL_VAR: &str = "BATON_TEST_POSTGRES_URL";

/// The server's URL, or `None` when the tests are to be skipped: then said once per test
/// binary, on stderr itself (`eprintln!` is captured by the test harness and not seen).
pub fn postgres_server() -> Option<String> {
    static NOTICE: std::sync::Once = std::sync::Once::new();
    match std::env::var(POSTGRES_URL_VAR) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            NOTICE.call_once(|| {
                use std::io::Write as _;
                let _ = writeln!(std::io::stderr(), "{POSTGRES_URL_VAR} is not set: skipping the PostgreSQL tests");
            });
            None
        }
    }
}

/// A schema of one test's own (a random name), dropped with it: tests and parallel runs on
/// one server do not meet.
pub struct PostgresSchema {
    server: String,
    name: String,
}

impl PostgresSchema {
    pub async fn new(server: &str) -> PostgresSchema {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.subsec_nanos());
        let name = format!("baton_test_{}_{}_{nanos}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let (client, connection) =
            tokio_postgres::connect(server, tokio_postgres::NoTls).await.expect("the test server answers");
        tokio::spawn(connection);
        client.batch_execute(&format!("CREATE SCHEMA {name}")).await.expect("a test schema");
        PostgresSchema { server: server.to_string(), name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server's URL with this schema as the search path of every connection, and its name
    /// as their application name (so that they can be found and ended when the test is over).
    pub fn url(&self) -> String {
        let separator = if self.server.contains('?') { '&' } else { '?' };
        format!("{}{separator}options=-c%20search_path%3D{name}&application_name={name}", self.server, name = self.name)
    }

    /// Runs SQL in the schema (a test's setup of a state no baton would write).
    pub async fn execute(&self, sql: &str) {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls).await.expect("connect");
        tokio::spawn(connection);
        client.batch_execute(sql).await.expect("the test's SQL");
    }
}

impl Drop for PostgresSchema {
    fn drop(&mut self) {
        // On a thread of its own: a test's runtime may be the one dropping this, and cannot be
        // blocked on from inside.
        let (server, name) = (self.server.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let (client, connection) = tokio_postgres::connect(&server, tokio_postgres::NoTls).await?;
                tokio::spawn(connection);
                // Connections the test left behind (a store's, idle, or one whose transaction a
                // stopped runtime never ended) would hold the drop up.
                client
                    .execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                        &[&name],
                    )
                    .await?;
                client.batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE")).await?;
                Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "could not drop the test schema {}: {dropped:?}", self.name);
        }
    }
}
