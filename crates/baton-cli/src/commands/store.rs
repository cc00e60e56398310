//! `baton store migrate|check|copy`: the store itself, whatever its backend (the work is
//! `baton_store::admin`'s).

use std::path::Path;

use baton_store::StoreUrl;
use baton_store::admin::{self, StoreCheck};

use super::{load, store_failure, store_url};
use crate::{Cli, Failure, StoreAction};

pub(super) async fn store(cli: &Cli, action: &StoreAction) -> Result<u8, Failure> {
    match action {
        StoreAction::Migrate => {
            let url = target(cli)?;
            let schema = admin::migrate(&url).await.map_err(store_failure)?;
            outln!("{}: schema version {} (current)", url.shown(), schema.version);
            Ok(0)
        }
        StoreAction::Check { json } => {
            let url = target(cli)?;
            let check = admin::check(&url).await.map_err(store_failure)?;
            report(&url, &check, *json);
            Ok(if check.schema.version == check.schema.known { 0 } else { 1 })
        }
        StoreAction::Copy { from, to } => {
            let here = Path::new(".");
            let from = StoreUrl::parse(from, here).map_err(store_failure)?;
            let to = StoreUrl::parse(to, here).map_err(store_failure)?;
            let copied = admin::copy(&from, &to).await.map_err(|error| match error.kind() {
                baton_store::ErrorKind::Unavailable | baton_store::ErrorKind::Corrupt => {
                    Failure::run(error.to_string())
                }
                _ => Failure::usage(error.to_string()),
            })?;
            let total: u64 = copied.iter().map(|(_, n)| n).sum();
            outln!("copied {total} rows from {} to {}", from.shown(), to.shown());
            for (table, n) in copied {
                outln!("  {table:<16} {n}");
            }
            Ok(0)
        }
    }
}

/// The store `--store` names, else the configuration's.
fn target(cli: &Cli) -> Result<StoreUrl, Failure> {
    match &cli.store {
        // No configuration needed: a relative SQLite path is taken from here.
        Some(url) => StoreUrl::parse(url, Path::new(".")).map_err(store_failure),
        None => store_url(cli, &load(cli)?),
    }
}

fn report(url: &StoreUrl, check: &StoreCheck, json: bool) {
    let StoreCheck { schema, rows } = check;
    if json {
        let rows: serde_json::Map<String, serde_json::Value> =
            rows.iter().map(|(table, n)| (table.clone(), serde_json::json!(n))).collect();
        let value = serde_json::json!({
            "store": url.shown(),
            "schema_version": schema.version,
            "known_version": schema.known,
            "current": schema.version == schema.known,
            "rows": rows,
        });
        outln!("{value:#}");
        return;
    }
    let state = if schema.version == schema.known {
        "current".to_string()
    } else if schema.version < schema.known {
        format!("older than this baton's {}; run `baton store migrate`", schema.known)
    } else {
        format!("newer than this baton's {}; upgrade baton", schema.known)
    };
    outln!("{}: schema version {} ({state})", url.shown(), schema.version);
    for (table, n) in rows {
        outln!("  {table:<16} {n}");
    }
}
