//! The SQLite store's commit metrics, seen through a recorder installed for this test binary
//! alone: it has to be the global recorder, since the writer thread records them.

use baton_store::sqlite::Options;
use baton_store::{NewAuditEntry, SqliteStore, Store};
use metrics::Unit;
use metrics_util::MetricKind;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

fn entry(n: i64) -> NewAuditEntry {
    NewAuditEntry {
        at: baton_core::Timestamp(n),
        actor: "admin".into(),
        role: "admin".into(),
        action: "task.cancel".into(),
        target: None,
        outcome: "ok".into(),
        status: 200,
        detail: None,
    }
}

#[tokio::test]
async fn each_group_commit_is_measured() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();
    baton_store::metrics::describe();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("baton.db"), Options::default()).unwrap();
    store.record_audit(entry(1)).await.unwrap();
    store.record_audit(entry(2)).await.unwrap();
    let n_concurrent = 40;
    let handles: Vec<_> = (0..n_concurrent)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move { store.record_audit(entry(n)).await.unwrap() })
        })
        .collect();
    for handle in handles {
        handle.await.unwrap();
    }

    let snapshot = snapshotter.snapshot().into_vec();
    let find = |kind: MetricKind, name: &str| {
        snapshot
            .iter()
            .find(|(key, ..)| key.kind() == kind && key.key().name() == name)
            .unwrap_or_else(|| panic!("no {name} in {snapshot:?}"))
    };
    let (_, _, _, DebugValue::Counter(n_commits)) = find(MetricKind::Counter, "baton_store_commits_total") else {
        panic!("a counter")
    };
    let (_, _, _, DebugValue::Histogram(batch_sizes)) = find(MetricKind::Histogram, "baton_store_batch_size") else {
        panic!("a histogram")
    };
    let (_, unit, _, DebugValue::Histogram(commit_seconds)) = find(MetricKind::Histogram, "baton_store_commit_seconds")
    else {
        panic!("a histogram")
    };
    assert_eq!(batch_sizes.len() as u64, *n_commits, "one batch size per commit");
    assert_eq!(commit_seconds.len() as u64, *n_commits, "one latency per commit");
    let n_operations: f64 = batch_sizes.iter().map(|size| size.into_inner()).sum();
    assert_eq!(n_operations, f64::from(2 + n_concurrent as i32), "every operation is in a batch");
    assert!((2..=42).contains(n_commits), "{n_commits} commits");
    assert!(commit_seconds.iter().all(|seconds| seconds.into_inner() >= 0.0));
    assert_eq!(*unit, Some(Unit::Seconds), "described");
}
