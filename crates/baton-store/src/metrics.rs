//! The store's metrics, recorded through the [`metrics`] facade: without an installed recorder
//! they cost next to nothing; the server installs the Prometheus exporter and then calls
//! [`describe`] so that its output says what each metric means.
//!
//! The SQLite writer thread records them once per group commit (one transaction, one fsync with
//! `synchronous=FULL`), so `baton_store_commit_seconds` is the disk's commit latency and
//! `baton_store_batch_size` shows how many operations shared it.

/// Histogram: seconds one group commit took (the `COMMIT` alone, fsync included).
pub const COMMIT_SECONDS: &str = "baton_store_commit_seconds";
/// Counter: group commits that succeeded.
pub const COMMITS_TOTAL: &str = "baton_store_commits_total";
/// Histogram: operations (store calls) in one group commit.
pub const BATCH_SIZE: &str = "baton_store_batch_size";

/// Describes the store's metrics to the installed recorder. Call after installing it; before,
/// the descriptions are lost.
pub fn describe() {
    ::metrics::describe_histogram!(
        COMMIT_SECONDS,
        ::metrics::Unit::Seconds,
        "time one group commit of the store took, fsync included"
    );
    ::metrics::describe_counter!(COMMITS_TOTAL, "group commits of the store");
    ::metrics::describe_histogram!(BATCH_SIZE, ::metrics::Unit::Count, "store operations per group commit");
}
