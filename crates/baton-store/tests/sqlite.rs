//! The conformance suite on the SQLite store, on a real file.

use baton_store::SqliteStore;
use baton_store::sqlite::Options;

fn make() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("baton.db"), Options::default()).unwrap();
    (store, dir)
}

baton_store::store_test_suite!(make());

#[tokio::test]
async fn a_reopened_store_keeps_what_was_committed() {
    use baton_store::Store;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/baton.db");
    {
        let store = SqliteStore::open(&path, Options::default()).unwrap();
        store
            .create_run(
                baton_store::NewRun {
                    id: "r1".into(),
                    name: "plan".into(),
                    n_phases: 1,
                    owner: "n".into(),
                    owner_pid: 1,
                    owner_until: baton_core::Timestamp(1),
                },
                baton_core::Timestamp(1),
            )
            .await
            .unwrap();
        store.create_tasks("r1", vec![baton_store::suite::new_task("a", &[])], baton_core::Timestamp(1)).await.unwrap();
        let entry = baton_store::NewAuditEntry {
            at: baton_core::Timestamp(2),
            actor: "admin".into(),
            role: "admin".into(),
            action: "POST /tasks".into(),
            target: None,
            outcome: "ok".into(),
            status: 201,
            detail: Some(serde_json::json!({"n": 1})),
        };
        store.record_audit(entry).await.unwrap();
    }
    let store = SqliteStore::open(&path, Options::default()).unwrap();
    assert_eq!(store.tasks("r1", &Default::default()).await.unwrap().len(), 1);
    let audit = store.audit(&Default::default()).await.unwrap();
    assert_eq!((audit.len(), audit[0].status, audit[0].detail.clone()), (1, 201, Some(serde_json::json!({"n": 1}))));
}

#[test]
fn urls_parse_with_options() {
    let base = std::path::Path::new("/project");
    let (path, options) = Options::from_url("sqlite://.baton/baton.db?synchronous=normal", base).unwrap();
    assert_eq!(path, base.join(".baton/baton.db"));
    assert_eq!(options.synchronous, baton_store::sqlite::Synchronous::Normal);
    let (path, _) = Options::from_url("sqlite:///var/lib/baton.db", base).unwrap();
    assert_eq!(path, std::path::Path::new("/var/lib/baton.db"));
    let error = Options::from_url("sqlite://x.db?fast=yes", base).unwrap_err();
    assert_eq!(
        error.to_string(),
        "unknown store option `fast=yes` in `sqlite://x.db?fast=yes`; known: synchronous=full|normal"
    );
    assert!(Options::from_url("postgres://x", base).is_err());
}

/// The inbox room the writer keeps in memory is rebuilt from the table: after a reopen, and
/// when another connection (another `baton` process) has sent or acknowledged messages.
#[tokio::test]
async fn inbox_room_survives_a_reopen_and_other_writers() {
    use baton_core::Timestamp;
    use baton_core::messages::{INBOX_LIMIT, NewMessage, Recipient};
    use baton_store::{DeliveryOutcome, Store};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baton.db");
    let message = NewMessage {
        from: "operator".into(),
        to: Recipient::Agent("x".into()),
        body: "hello".into(),
        data: serde_json::Value::Null,
        task: None,
        correlation_id: None,
    };
    let run = baton_store::NewRun {
        id: "r1".into(),
        name: "plan".into(),
        n_phases: 1,
        owner: "n".into(),
        owner_pid: 1,
        owner_until: Timestamp(1),
    };
    {
        let store = SqliteStore::open(&path, Options::default()).unwrap();
        store.create_run(run, Timestamp(1)).await.unwrap();
        let mut senders = tokio::task::JoinSet::new();
        for n in 0..INBOX_LIMIT - 1 {
            let (store, message) = (store.clone(), message.clone());
            senders.spawn(async move {
                store.send_message("r1", format!("m{n}"), message, vec!["x".into()], Timestamp(1)).await
            });
        }
        while let Some(sent) = senders.join_next().await {
            sent.unwrap().unwrap();
        }
    }
    let store = SqliteStore::open(&path, Options::default()).unwrap();
    store.send_message("r1", "last".into(), message.clone(), vec!["x".into()], Timestamp(2)).await.unwrap();
    assert!(store.send_message("r1", "over".into(), message.clone(), vec!["x".into()], Timestamp(2)).await.is_err());

    // Another process acknowledges one: this one sees the room.
    let other = SqliteStore::open(&path, Options::default()).unwrap();
    let due = other.due_deliveries("r1", &["x".to_string()], Timestamp(2), 1).await.unwrap();
    other.settle_deliveries("r1", vec![(due[0].clone(), DeliveryOutcome::Acked)], Timestamp(3)).await.unwrap();
    store.send_message("r1", "room".into(), message.clone(), vec!["x".into()], Timestamp(3)).await.unwrap();
    // And another process filling it again: this one refuses.
    let due = other.due_deliveries("r1", &["x".to_string()], Timestamp(3), 1).await.unwrap();
    store.settle_deliveries("r1", vec![(due[0].clone(), DeliveryOutcome::Acked)], Timestamp(4)).await.unwrap();
    other.send_message("r1", "theirs".into(), message.clone(), vec!["x".into()], Timestamp(4)).await.unwrap();
    assert!(store.send_message("r1", "mine".into(), message, vec!["x".into()], Timestamp(4)).await.is_err());
}

/// Two `baton` processes that create a new store at the same instant: each must find it
/// migrated, whichever created the tables (the loser used to fail with `table runs already
/// exists`). Threads with their own connections stand in for the processes; the barrier makes
/// them open together, and the repetitions catch the interleavings.
#[test]
fn stores_opened_at_once_on_a_new_file_are_all_migrated() {
    const OPENERS: usize = 4;
    for round in 0..25 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("baton.db");
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(OPENERS));
        let openers: Vec<_> = (0..OPENERS)
            .map(|_| {
                let (path, barrier) = (path.clone(), std::sync::Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    SqliteStore::open(&path, Options::default()).map(|_| ()).map_err(|error| error.to_string())
                })
            })
            .collect();
        for opener in openers {
            assert_eq!(opener.join().unwrap(), Ok(()), "round {round}");
        }
    }
}

/// Two processes' stores on one file (two connections, two writer threads) create a run of the
/// same plan at once: one is created, the other refused with the holder, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_file_never_both_create_a_run_of_the_plan() {
    use baton_store::{NewRun, Store};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baton.db");
    let first = SqliteStore::open(&path, Options::default()).unwrap();
    let second = SqliteStore::open(&path, Options::default()).unwrap();
    let now = baton_core::Timestamp(1_700_000_000_000);
    for round in 0..20 {
        let new_run = |owner: &str| NewRun {
            id: format!("{owner}-{round}"),
            name: format!("plan-{round}"),
            n_phases: 1,
            owner: owner.into(),
            owner_pid: 1,
            owner_until: baton_core::Timestamp(now.0 + 30_000),
        };
        let (a, b) = tokio::join!(first.create_run(new_run("a"), now), second.create_run(new_run("b"), now));
        match (a, b) {
            (Ok(_), Err(baton_store::Error::RunHeld { owner, .. })) => assert_eq!(owner, "a"),
            (Err(baton_store::Error::RunHeld { owner, .. }), Ok(_)) => assert_eq!(owner, "b"),
            other => panic!("round {round}: {other:?}"),
        }
    }
}

/// A file that is not a database is `Corrupt`; a schema newer than this baton knows is
/// `Unavailable` (this baton cannot use it; a newer one can). Both say which store.
#[test]
fn a_damaged_or_newer_store_fails_to_open_with_its_kind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baton.db");
    std::fs::write(&path, vec![b'x'; 8192]).unwrap();
    let error = SqliteStore::open(&path, Options::default()).err().unwrap();
    assert_eq!(error.kind(), baton_store::ErrorKind::Corrupt, "{error}");
    assert!(error.to_string().starts_with(&format!("cannot open the store at `{}`", path.display())), "{error}");

    let path = dir.path().join("newer.db");
    drop(SqliteStore::open(&path, Options::default()).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 1000).unwrap();
    drop(conn);
    let error = SqliteStore::open(&path, Options::default()).err().unwrap();
    assert_eq!(error.kind(), baton_store::ErrorKind::Unavailable, "{error}");
    let message = error.to_string();
    assert!(message.contains("has schema version 1000, newer than this baton knows"), "{message}");
    assert!(message.ends_with("; upgrade baton"), "{message}");
}
