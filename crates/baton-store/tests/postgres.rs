//! The conformance suite on the PostgreSQL store, against the server named by
//! `BATON_TEST_POSTGRES_URL` (skipped, saying so once, when it is unset). Each test works in a
//! fresh schema of its own (a random name, set as the search path of every connection through
//! the URL), dropped when the test ends, so tests and parallel runs do not meet.

use baton_store::testing::{PostgresSchema as Schema, postgres_server as server_url};
use baton_store::{ErrorKind, PostgresStore, Store};

async fn make() -> Option<(PostgresStore, Schema)> {
    let server = server_url()?;
    let schema = Schema::new(&server).await;
    let store = PostgresStore::open(&schema.url()).await.unwrap();
    Some((store, schema))
}

baton_store::store_test_suite!(match make().await {
    Some(made) => made,
    None => return,
});

fn new_run(id: &str, owner: &str, plan: &str) -> baton_store::NewRun {
    baton_store::NewRun {
        id: id.into(),
        name: plan.into(),
        n_phases: 1,
        owner: owner.into(),
        owner_pid: 1,
        owner_until: baton_core::Timestamp(1_700_000_030_000),
    }
}

/// Nodes that start at once on a new database each find it migrated, once; opening again
/// changes nothing; a schema newer than this baton knows is refused as `Unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_safe_when_nodes_start_at_once() {
    let Some(server) = server_url() else { return };
    for _round in 0..5 {
        let schema = Schema::new(&server).await;
        let url = schema.url();
        let mut opens = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let url = url.clone();
            opens.spawn(async move { PostgresStore::open(&url).await.map_err(|error| error.to_string()) });
        }
        let mut stores = Vec::new();
        while let Some(opened) = opens.join_next().await {
            stores.push(opened.unwrap().unwrap());
        }
        let version = PostgresStore::migrate(&url).await.unwrap();
        assert_eq!(version.version, version.known);
        assert_eq!(PostgresStore::schema_version(&url).await.unwrap(), version);
        // Every store works on the one schema.
        stores[0].create_run(new_run("r1", "a", "plan"), baton_core::Timestamp(1_700_000_000_000)).await.unwrap();
        assert!(stores[3].run("r1").await.unwrap().is_some());
    }

    let schema = Schema::new(&server).await;
    drop(PostgresStore::open(&schema.url()).await.unwrap());
    schema.execute("UPDATE schema_version SET version = 1000").await;
    let error = PostgresStore::open(&schema.url()).await.err().unwrap();
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    assert!(error.to_string().contains("has schema version 1000, newer than this baton knows"), "{error}");
}

/// Two processes' stores on one database create a run of the same plan at once: one is
/// created, the other refused with the holder, every time (the write lock serializes them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_database_never_both_create_a_run_of_the_plan() {
    let Some((first, schema)) = make().await else { return };
    let second = PostgresStore::open(&schema.url()).await.unwrap();
    let now = baton_core::Timestamp(1_700_000_000_000);
    for round in 0..20 {
        let plan = format!("plan-{round}");
        let (a, b) = tokio::join!(
            first.create_run(new_run(&format!("a-{round}"), "a", &plan), now),
            second.create_run(new_run(&format!("b-{round}"), "b", &plan), now)
        );
        match (a, b) {
            (Ok(_), Err(baton_store::Error::RunHeld { owner, .. })) => assert_eq!(owner, "a"),
            (Err(baton_store::Error::RunHeld { owner, .. }), Ok(_)) => assert_eq!(owner, "b"),
            other => panic!("round {round}: {other:?}"),
        }
    }
    // Events written through both are numbered in one sequence without gaps.
    let events = first.events(&Default::default()).await.unwrap();
    let seqs: Vec<i64> = events.iter().map(|event| event.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
}

/// A server that does not answer, or a URL that does not parse, fails to open with a message
/// naming the store without its password.
#[tokio::test]
async fn an_unreachable_server_or_a_bad_url_is_a_clear_error() {
    // A port nothing listens on: bound, then closed, by this test.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("postgres://baton:s3cret@127.0.0.1:{port}/baton");
    let error = PostgresStore::open(&url).await.err().unwrap();
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    let message = error.to_string();
    assert!(
        message.starts_with(&format!("cannot open the store at `postgres://baton@127.0.0.1:{port}/baton`: ")),
        "{message}"
    );
    assert!(!message.contains("s3cret"), "{message}");

    let error = PostgresStore::open("postgres://baton:s3cret@127.0.0.1:notaport/baton").await.err().unwrap();
    assert_eq!(error.kind(), ErrorKind::Refused, "{error}");
    assert!(!error.to_string().contains("s3cret"), "{error}");
}

/// A database that is not there is `Unavailable` (the URL is to be fixed), not a damaged
/// store; a value the database refuses (a NUL character in a title) is `Refused`, fails alone,
/// and the store goes on.
#[tokio::test]
async fn a_missing_database_and_a_refused_value_are_said_so() {
    use baton_store::suite::new_task;
    let Some(server) = server_url() else { return };
    let (base, _) = server.split_once('?').unwrap_or((&server, ""));
    let (host, _) = base.rsplit_once('/').unwrap();
    let error = PostgresStore::open(&format!("{host}/baton_no_such_database")).await.err().unwrap();
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    assert!(error.to_string().contains("baton_no_such_database"), "{error}");

    let schema = Schema::new(&server).await;
    let store = PostgresStore::open(&schema.url()).await.unwrap();
    let now = baton_core::Timestamp(1_700_000_000_000);
    store.create_run(new_run("r1", "a", "plan"), now).await.unwrap();
    let mut bad = new_task("a", &[]);
    bad.title = "nul \0 inside".into();
    let error = store.create_tasks("r1", vec![bad], now).await.err().unwrap();
    assert_eq!(error.kind(), ErrorKind::Refused, "{error}");
    let made = store.create_tasks("r1", vec![new_task("b", &[])], now).await.unwrap();
    assert_eq!(made.len(), 1);
}

/// A SQLite store copied into PostgreSQL reads back the same: runs, tasks (and their counts),
/// events with their numbers, deliveries, audit, transcripts, agents, budgets; new writes then
/// continue the ids and the event numbers. A second copy into the same store is refused.
#[tokio::test]
async fn a_sqlite_store_copied_into_postgres_reads_back_the_same() {
    use baton_core::Timestamp;
    use baton_core::messages::{NewMessage, Recipient};
    use baton_store::{StoreUrl, admin, suite::new_task};
    let Some(server) = server_url() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baton.db");
    let now = Timestamp(1_700_000_000_000);
    let sqlite = baton_store::SqliteStore::open(&path, Default::default()).unwrap();
    sqlite.create_run(new_run("r1", "a", "plan"), now).await.unwrap();
    let tasks = sqlite.create_tasks("r1", vec![new_task("a", &[]), new_task("b", &["a"])], now).await.unwrap();
    let mut change = tasks[0].change();
    change.state = baton_core::model::TaskState::Succeeded;
    let write = baton_core::sched::Write::Task {
        id: tasks[0].id,
        expect_state: baton_core::model::TaskState::Pending,
        expect_attempt: 0,
        change,
        events: vec![baton_core::EventKind::TaskCompleted { task: tasks[0].id, agent: "w".into(), attempt: 1 }],
    };
    sqlite.apply("r1", now, vec![write]).await.unwrap();
    let message = NewMessage {
        from: "operator".into(),
        to: Recipient::Agent("w".into()),
        body: "hello".into(),
        data: serde_json::json!({"n": 1}),
        task: Some(tasks[1].id),
        correlation_id: None,
    };
    sqlite.send_message("r1", "m1".into(), message, vec!["w".into()], now).await.unwrap();
    let entry = baton_store::NewAuditEntry {
        at: now,
        actor: "admin".into(),
        role: "admin".into(),
        action: "POST /tasks".into(),
        target: None,
        outcome: "ok".into(),
        status: 201,
        detail: Some(serde_json::json!({"n": 1})),
    };
    sqlite.record_audit(entry.clone()).await.unwrap();
    let transcript = vec![baton_core::transcript::Entry::new(baton_core::transcript::Role::User, "hi", now)];
    sqlite.append_transcript("r1", tasks[1].id, 1, transcript).await.unwrap();
    drop(sqlite);

    let schema = Schema::new(&server).await;
    let from = StoreUrl::parse(&format!("sqlite://{}", path.display()), dir.path()).unwrap();
    let to = StoreUrl::parse(&schema.url(), dir.path()).unwrap();
    let copied = admin::copy(&from, &to).await.unwrap();
    let n = |table: &str| copied.iter().find(|(name, _)| name == table).unwrap().1;
    assert_eq!((n("runs"), n("tasks"), n("deliveries"), n("audit"), n("transcripts")), (1, 2, 1, 1, 1));
    let check = admin::check(&to).await.unwrap();
    assert_eq!(check.schema.version, check.schema.known);
    assert_eq!(check.rows, admin::check(&from).await.unwrap().rows, "the same rows on both sides");

    let sqlite = baton_store::SqliteStore::open(&path, Default::default()).unwrap();
    let postgres = PostgresStore::open(&schema.url()).await.unwrap();
    let all = baton_store::EventQuery::default();
    assert_eq!(postgres.events(&all).await.unwrap(), sqlite.events(&all).await.unwrap());
    assert_eq!(
        postgres.tasks("r1", &Default::default()).await.unwrap(),
        sqlite.tasks("r1", &Default::default()).await.unwrap()
    );
    assert_eq!(postgres.task_counts("r1").await.unwrap(), sqlite.task_counts("r1").await.unwrap());
    assert_eq!(postgres.run("r1").await.unwrap(), sqlite.run("r1").await.unwrap());
    assert_eq!(postgres.deliveries("r1", None, 10).await.unwrap(), sqlite.deliveries("r1", None, 10).await.unwrap());
    assert_eq!(postgres.audit(&Default::default()).await.unwrap(), sqlite.audit(&Default::default()).await.unwrap());
    assert_eq!(postgres.transcript(tasks[1].id).await.unwrap(), sqlite.transcript(tasks[1].id).await.unwrap());
    assert_eq!(postgres.last_event_seq().await.unwrap(), sqlite.last_event_seq().await.unwrap());

    // New writes continue where the copy ended.
    let more = postgres.create_tasks("r1", vec![new_task("c", &["b"])], now).await.unwrap();
    assert!(more[0].id.0 > tasks[1].id.0);
    assert_eq!(more[0].depends_on, vec![tasks[1].id]);
    let events = postgres.events(&all).await.unwrap();
    let seqs: Vec<i64> = events.iter().map(|event| event.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    assert!(postgres.record_audit(entry).await.unwrap() > 1);

    let again = admin::copy(&from, &to).await.unwrap_err();
    assert_eq!(again.kind(), ErrorKind::Conflict, "{again}");
}
