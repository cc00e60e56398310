//! The real binary on a PostgreSQL store (the server `BATON_TEST_POSTGRES_URL` names; skipped,
//! saying so, when it is unset): the bundled example run to the end with `--store
//! postgres://...`, and a SQLite store's history moved there with `baton store copy`, then
//! checked with `baton store check`.

#![allow(clippy::disallowed_methods, reason = "the tests start the real `baton` binary")]

mod common;

use baton_core::model::RunState;
use baton_store::testing::{PostgresSchema, postgres_server};
use baton_store::{EventQuery, PostgresStore, Store, TaskFilter};
use common::{Project, stderr, stdout};

#[tokio::test]
async fn the_example_runs_on_postgres() {
    let Some(server) = postgres_server() else { return };
    let schema = PostgresSchema::new(&server).await;
    let project = Project::example();
    let run = project.baton(&["--store", &schema.url(), "run", "--plain"]);
    assert_eq!(run.status.code(), Some(0), "stdout:\n{}\nstderr:\n{}", stdout(&run), stderr(&run));
    assert!(stdout(&run).contains("succeeded: 15/15 tasks"), "{}", stdout(&run));

    let store = PostgresStore::open(&schema.url()).await.unwrap();
    let record = store.latest_run(Some("roadmap-v0.3.0")).await.unwrap().unwrap();
    assert_eq!((record.state, record.n_tasks, record.n_finished), (RunState::Succeeded, 15, 15));
    // The read commands read it from there too.
    let status = project.baton(&["--store", &schema.url(), "status"]);
    assert_eq!(status.status.code(), Some(0), "{}", stderr(&status));
    assert!(stdout(&status).contains("succeeded"), "{}", stdout(&status));
    assert!(!project.path().join(".baton/baton.db").exists(), "no SQLite store was made");
}

#[tokio::test]
async fn a_sqlite_history_is_copied_to_postgres_and_checked() {
    let Some(server) = postgres_server() else { return };
    let schema = PostgresSchema::new(&server).await;
    let project = Project::example();
    let run = project.baton(&["run", "--plain"]);
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    let from = format!("sqlite://{}", project.path().join(".baton/baton.db").display());

    // Before the copy, the target has no schema: check says so (exit 1) and migrate makes it.
    let check = project.baton(&["--store", &schema.url(), "store", "check"]);
    assert_eq!(check.status.code(), Some(1), "{}", stderr(&check));
    assert!(stdout(&check).contains("schema version 0 (older than this baton's"), "{}", stdout(&check));
    let migrate = project.baton(&["--store", &schema.url(), "store", "migrate"]);
    assert_eq!(migrate.status.code(), Some(0), "{}", stderr(&migrate));

    let copy = project.baton(&["store", "copy", "--from", &from, "--to", &schema.url()]);
    assert_eq!(copy.status.code(), Some(0), "{}", stderr(&copy));
    assert!(stdout(&copy).starts_with("copied "), "{}", stdout(&copy));
    let again = project.baton(&["store", "copy", "--from", &from, "--to", &schema.url()]);
    assert_eq!(again.status.code(), Some(2), "a second copy into a full store is refused");
    assert!(stderr(&again).contains("is not empty"), "{}", stderr(&again));

    let check = project.baton(&["--store", &schema.url(), "store", "check", "--json"]);
    assert_eq!(check.status.code(), Some(0), "{}", stderr(&check));
    let checked: serde_json::Value = serde_json::from_str(&stdout(&check)).unwrap();
    let sqlite_check = project.baton(&["store", "check", "--json"]);
    let sqlite_checked: serde_json::Value = serde_json::from_str(&stdout(&sqlite_check)).unwrap();
    assert_eq!(checked["current"], true);
    assert_eq!(checked["rows"], sqlite_checked["rows"], "the same rows in every table");
    assert!(!checked["store"].as_str().unwrap().contains(":@"), "{checked}");

    let sqlite = project.store();
    let postgres = PostgresStore::open(&schema.url()).await.unwrap();
    let run = sqlite.latest_run(None).await.unwrap().unwrap();
    assert_eq!(postgres.latest_run(None).await.unwrap(), Some(run.clone()));
    let all = EventQuery::default();
    assert_eq!(postgres.events(&all).await.unwrap(), sqlite.events(&all).await.unwrap());
    let tasks = TaskFilter::default();
    assert_eq!(postgres.tasks(&run.id, &tasks).await.unwrap(), sqlite.tasks(&run.id, &tasks).await.unwrap());
    assert_eq!(postgres.agents(&run.id).await.unwrap(), sqlite.agents(&run.id).await.unwrap());
}
