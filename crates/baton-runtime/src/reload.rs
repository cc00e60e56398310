//! Hot reload: watches `baton.toml` (and its profile files, `baton.<profile>.toml`) and applies
//! a changed configuration to the running engine ([`crate::EngineHandle::reconfigure`]).
//!
//! The directory is watched, not the file: editors save by writing a new file and renaming it
//! over the old one, which a watch on the file itself would lose. Changes come in bursts (a
//! write, a rename, a metadata change), so a reload waits until the files have been quiet for
//! [`QUIET`]; this is driven by the file system's events, not by polling. A configuration that
//! does not load is rejected: the engine writes `ConfigRejected` with the errors and the running
//! configuration stays. One that loads is applied, and the engine writes `ConfigReloaded`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use baton_core::config::Plan;
use baton_core::sched::Write;
use baton_store::Store;

use crate::engine::EngineHandle;

/// How long the configuration files must be quiet before they are read again.
pub const QUIET: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot watch {path} for changes: {source}")]
    Watch { path: PathBuf, source: notify::Error },
}

/// Whether `name` is the configuration file `config` (`baton.toml`) or one of its profile
/// files (`baton.<profile>.toml`).
fn is_config_file(name: &OsStr, config: &OsStr) -> bool {
    if name == config {
        return true;
    }
    let (Some(name), Some(config)) = (name.to_str(), config.to_str()) else {
        return false;
    };
    let Some(stem) = config.strip_suffix(".toml") else {
        return false;
    };
    name.strip_prefix(stem)
        .and_then(|rest| rest.strip_prefix('.'))
        .and_then(|rest| rest.strip_suffix(".toml"))
        .is_some_and(|profile| !profile.is_empty() && !profile.contains('.'))
}

/// Watches the configuration at `path` until `shutdown` fires. On a change, `load` reads and
/// validates the configuration again (with the profile and environment the engine started
/// with): an error is recorded as `ConfigRejected` and logged, a plan is applied with
/// [`EngineHandle::reconfigure`] and what changed is logged. `store` and `run_id` are used
/// only when the engine has stopped and cannot record a rejection itself.
pub async fn watch_config(
    path: PathBuf,
    load: impl Fn() -> Result<Plan, String> + Send + 'static,
    handle: EngineHandle,
    store: Arc<dyn Store>,
    run_id: String,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let config_name = path.file_name().map(OsStr::to_os_string).unwrap_or_default();
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (changes_tx, mut changes) = mpsc::unbounded_channel::<()>();
    let watch_error = |source| Error::Watch { path: dir.clone(), source };
    // The watcher calls back on its own thread; the channel brings its news to this task.
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
        Ok(event) => {
            let relevant = !matches!(event.kind, EventKind::Access(_) | EventKind::Remove(_))
                && event
                    .paths
                    .iter()
                    .any(|changed| changed.file_name().is_some_and(|name| is_config_file(name, &config_name)));
            if relevant {
                let _ = changes_tx.send(());
            }
        }
        Err(error) => tracing::warn!(%error, "watching the configuration"),
    })
    .map_err(watch_error)?;
    watcher.watch(&dir, RecursiveMode::NonRecursive).map_err(watch_error)?;
    tracing::debug!(path = %path.display(), "watching the configuration for changes");

    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            change = changes.recv() => {
                if change.is_none() {
                    return Ok(());
                }
            }
        }
        // The burst of events one save makes: wait until it is over.
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                more = tokio::time::timeout(QUIET, changes.recv()) => match more {
                    Ok(Some(())) => continue,
                    Ok(None) | Err(_) => break,
                },
            }
        }
        reload(&path, &load, &handle, store.as_ref(), &run_id).await;
    }
}

async fn reload(
    path: &Path,
    load: &impl Fn() -> Result<Plan, String>,
    handle: &EngineHandle,
    store: &dyn Store,
    run_id: &str,
) {
    match load() {
        Err(errors) => {
            tracing::warn!(path = %path.display(), %errors, "configuration change rejected; the running configuration stays");
            if handle.reject_config(errors.clone()).await.is_err() {
                // The engine has stopped: the rejection is recorded all the same.
                let event = baton_core::EventKind::ConfigRejected { errors };
                let now = crate::Clock::system().now();
                if let Err(error) = store.apply(run_id, now, vec![Write::Event(event)]).await {
                    tracing::warn!(%error, "cannot record the rejected configuration");
                }
            }
        }
        Ok(plan) => match handle.reconfigure(plan).await {
            // Saved without a change (or only touched): not news.
            Ok(summary) if summary.is_unchanged() => tracing::debug!(path = %path.display(), "configuration unchanged"),
            Ok(summary) => {
                tracing::info!(
                    path = %path.display(),
                    added = ?summary.added,
                    removed = ?summary.removed,
                    updated = ?summary.updated,
                    not_applied = ?summary.not_applied,
                    not_added = ?summary.not_added,
                    "configuration reloaded"
                );
                for reason in &summary.not_added {
                    tracing::warn!(path = %path.display(), "a task of the configuration was not added: {reason}");
                }
            }
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "configuration change not applied");
                let _ = handle.reject_config(error.to_string()).await;
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_file_and_its_profiles_are_watched() {
        let config = OsStr::new("baton.toml");
        for name in ["baton.toml", "baton.prod.toml", "baton.dev.toml"] {
            assert!(is_config_file(OsStr::new(name), config), "{name}");
        }
        for name in ["baton.toml~", ".baton.toml.swp", "baton.toml.tmp", "other.toml", "baton..toml", "baton.a.b.toml"]
        {
            assert!(!is_config_file(OsStr::new(name), config), "{name}");
        }
    }
}
