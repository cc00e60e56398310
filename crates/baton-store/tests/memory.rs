//! The conformance suite on the SQLite store in memory, and opening stores by URL.

use std::path::Path;

use baton_store::{ErrorKind, SqliteStore, Store, StoreUrl};

fn make() -> (SqliteStore, ()) {
    (SqliteStore::open_memory().unwrap(), ())
}

baton_store::store_test_suite!(make());

#[test]
fn urls_choose_the_backend() {
    let base = Path::new("/project");
    let url = StoreUrl::parse("sqlite://.baton/baton.db", base).unwrap();
    assert_eq!(url.path(), Some(base.join(".baton/baton.db").as_path()));
    for memory in ["sqlite::memory:", "memory://"] {
        assert_eq!(StoreUrl::parse(memory, base).unwrap(), StoreUrl::Memory);
    }
    let postgres = StoreUrl::parse("postgres://baton:secret@db.example/baton", base).unwrap();
    assert_eq!(postgres, StoreUrl::Postgres { url: "postgres://baton:secret@db.example/baton".into() });
    assert_eq!((postgres.path(), postgres.shown().as_str()), (None, "postgres://baton@db.example/baton"));
    let bad = StoreUrl::parse("postgres://db.example:port/baton", base).unwrap_err();
    assert_eq!(bad.kind(), ErrorKind::Refused, "{bad}");
    let unknown = StoreUrl::parse("mysql://db/baton", base).unwrap_err();
    assert_eq!(unknown.kind(), ErrorKind::Refused);
    assert_eq!(StoreUrl::parse("sqlite://x.db?fast=yes", base).unwrap_err().kind(), ErrorKind::Refused);
}

/// Two in-memory stores are two stores; a file store opened by URL is the file.
#[tokio::test]
async fn stores_open_by_url() {
    let dir = tempfile::tempdir().unwrap();
    let run = |id: &str| baton_store::NewRun {
        id: id.into(),
        name: "plan".into(),
        n_phases: 1,
        owner: "n".into(),
        owner_pid: 1,
        owner_until: baton_core::Timestamp(1),
    };
    let first = baton_store::open("sqlite::memory:", dir.path()).await.unwrap();
    let second = baton_store::open("sqlite::memory:", dir.path()).await.unwrap();
    first.create_run(run("r1"), baton_core::Timestamp(1)).await.unwrap();
    assert!(first.run("r1").await.unwrap().is_some());
    assert!(second.run("r1").await.unwrap().is_none(), "each in-memory store is its own");
    assert!(!dir.path().read_dir().unwrap().any(|_| true), "an in-memory store writes no file");

    let file = baton_store::open("sqlite://data/baton.db", dir.path()).await.unwrap();
    file.create_run(run("r2"), baton_core::Timestamp(1)).await.unwrap();
    drop(file);
    let reopened = SqliteStore::open(&dir.path().join("data/baton.db"), Default::default()).unwrap();
    assert!(reopened.run("r2").await.unwrap().is_some());
}
