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
