//! Layering: defaults < `baton.toml` < `baton.<profile>.toml` < `BATON_*` variables (command-line
//! flags are the shell's, applied to the [`Plan`] afterwards).
//!
//! The layers are merged as TOML documents before anything is deserialized: tables merge key by
//! key, recursively; the entries of `[[agents]]`, `[[workstreams]]` and `[[schedules]]` merge by
//! `name` and those of `[[tasks]]` by `key` (an entry with a new name is appended, one with a
//! known name has its keys set over the earlier entry's); any other value, arrays included, is
//! replaced. Every source is a segment of one offset space (see `Locator`), so every span of
//! the merged document still says which file, line and column it came from: an unknown key or
//! a bad value is reported where it is written, in whichever file that is.
//!
//! Limitation: a problem that is about an entry as a whole (a missing `command`, a missing
//! required key) is reported where the entry started, i.e. in the earliest layer that has it,
//! even when a later layer is what made it wrong.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{Diagnostic, Error, Invalid, Location, Locator, Plan, load_document, parse_segment};

/// One source of configuration: the name its errors use, and its text.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub file: &'a str,
    pub text: &'a str,
}

/// The type of a `BATON_*` override's value, which decides how the variable is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverrideKind {
    /// Taken as it is (durations and sizes are strings too, checked as the file's are).
    String,
    /// A decimal integer.
    Integer,
    /// `true` or `false`.
    Boolean,
}

/// A `BATON_<SECTION>_<KEY>` variable that overrides `[section] key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvOverride {
    pub section: &'static str,
    pub key: &'static str,
    pub kind: OverrideKind,
}

impl EnvOverride {
    /// `BATON_<SECTION>_<KEY>`, upper case.
    pub fn variable(&self) -> String {
        format!("BATON_{}_{}", self.section, self.key).to_ascii_uppercase()
    }
}

const fn over(section: &'static str, key: &'static str, kind: OverrideKind) -> EnvOverride {
    EnvOverride { section, key, kind }
}

/// Every `BATON_*` variable that overrides the configuration: the scalar keys of
/// `[orchestration]`, `[store]`, `[server]` and `[auth]`. Any other `BATON_*` variable
/// (`BATON_CONFIG`, `BATON_PROFILE`, `BATON_LOG_LEVEL`, those Baton gives agents such as
/// `BATON_RUN_ID`) is not configuration and is ignored here.
pub const ENV_OVERRIDES: &[EnvOverride] = &[
    over("orchestration", "name", OverrideKind::String),
    over("orchestration", "max_concurrent_agents", OverrideKind::Integer),
    over("orchestration", "agent_spawn_timeout", OverrideKind::String),
    over("orchestration", "workstream_timeout", OverrideKind::String),
    over("orchestration", "coordinator", OverrideKind::String),
    over("orchestration", "retry_backoff", OverrideKind::String),
    over("orchestration", "retry_backoff_max", OverrideKind::String),
    over("orchestration", "lease_ttl", OverrideKind::String),
    over("orchestration", "offline_after", OverrideKind::String),
    over("store", "url", OverrideKind::String),
    over("server", "listen", OverrideKind::String),
    over("server", "url", OverrideKind::String),
    over("server", "max_request_size", OverrideKind::String),
    over("server", "reload", OverrideKind::Boolean),
    over("auth", "secret_env", OverrideKind::String),
    over("auth", "token_ttl", OverrideKind::String),
];

/// The file name errors about environment variables use.
const ENVIRONMENT: &str = "environment";

/// `baton.<profile>.toml` beside `path` (`deploy/baton.toml` → `deploy/baton.prod.toml`).
pub fn profile_path(path: &Path, profile: &str) -> PathBuf {
    let stem = path.file_stem().map_or_else(|| "baton".into(), |stem| stem.to_string_lossy().into_owned());
    path.with_file_name(format!("{stem}.{profile}.toml"))
}

/// Whether `profile` may name a profile: letters, digits, `-` and `_` (it becomes part of a
/// file name).
pub fn is_profile_name(profile: &str) -> bool {
    !profile.is_empty() && profile.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

/// Loads `base`, with `profile` merged over it and then the `BATON_*` overrides of `env` (see
/// [`ENV_OVERRIDES`]); `env` is also what `${VAR}` expands from. Errors name the source each
/// value came from: a file and line and column, or `environment` and the variable.
pub fn load_sources(
    base: Source<'_>,
    profile: Option<Source<'_>>,
    env: &BTreeMap<String, String>,
) -> Result<Plan, Error> {
    check_sources(base, profile, env).map_err(|invalid| invalid.error)
}

/// [`load_sources`], with what could be built of the plan when the configuration is not valid
/// (see [`Invalid`]).
pub fn check_sources(
    base: Source<'_>,
    profile: Option<Source<'_>>,
    env: &BTreeMap<String, String>,
) -> Result<Plan, Invalid> {
    let mut locator = Locator::new(base.file, base.text);
    let profile_idx = profile.map(|profile| locator.push(profile.file, profile.text.to_string(), None));
    let mut diagnostics = Vec::new();
    let mut overrides = Vec::new();
    for spec in ENV_OVERRIDES {
        let variable = spec.variable();
        let Some(value) = env.get(&variable) else {
            continue;
        };
        let literal = match spec.kind {
            OverrideKind::String => Some(toml::Value::String(value.clone()).to_string()),
            OverrideKind::Integer => value.trim().parse::<i64>().ok().map(|number| number.to_string()),
            OverrideKind::Boolean => match value.trim() {
                "true" => Some("true".to_string()),
                "false" => Some("false".to_string()),
                _ => None,
            },
        };
        let Some(literal) = literal else {
            let expected = match spec.kind {
                OverrideKind::Integer => "expected an integer",
                _ => "expected true or false",
            };
            let location = Location { file: ENVIRONMENT.to_string(), line: 0, column: 0 };
            diagnostics.push(Diagnostic { location, message: format!("{variable}=`{value}`: {expected}") });
            continue;
        };
        let labels = vec![(0..literal.len(), variable.clone())];
        let idx = locator.push(ENVIRONMENT, literal, Some(labels));
        overrides.push((spec, idx));
    }
    if !diagnostics.is_empty() {
        return Err(Invalid::new(Error { diagnostics }));
    }

    let base_root = parse_segment(&locator, 0);
    let profile_root = profile_idx.map(|idx| parse_segment(&locator, idx)).transpose();
    let (mut root, profile_root) = match (base_root, profile_root) {
        (Ok(root), Ok(profile_root)) => (root, profile_root),
        (base, profile) => {
            let diagnostics = [base.err(), profile.err()].into_iter().flatten().collect();
            return Err(Invalid::new(Error { diagnostics }));
        }
    };
    if let Some(profile_root) = profile_root {
        merge_tables(root.get_mut(), profile_root.into_inner(), true);
    }
    for (spec, idx) in overrides {
        let segment = &locator.segments[idx];
        let value = DeValue::parse(&segment.text).expect("an override is a TOML literal");
        let value = shift_value(value, segment.start);
        let section_key = Spanned::new(value.span(), spec.section.into());
        let section = root
            .get_mut()
            .entry(section_key)
            .or_insert_with(|| Spanned::new(value.span(), DeValue::Table(DeTable::new())));
        let key = Spanned::new(value.span(), spec.key.into());
        // When `section` is not a table in the file, deserializing reports that, where it is.
        if let DeValue::Table(table) = section.get_mut() {
            table.insert(key, value);
        }
    }
    load_document(&locator, root, env)
}

/// The key that identifies an entry of a top-level array of tables, for merging.
fn identity_key(array: &str) -> Option<&'static str> {
    match array {
        "agents" | "workstreams" | "schedules" => Some("name"),
        "tasks" => Some("key"),
        _ => None,
    }
}

/// Sets `overlay`'s keys over `base`'s: tables merge recursively, top-level arrays of entries
/// merge by identity (see [`identity_key`]), everything else is replaced.
fn merge_tables<'i>(base: &mut DeTable<'i>, overlay: DeTable<'i>, top_level: bool) {
    for (key, value) in overlay {
        let identity = if top_level { identity_key(key.get_ref()) } else { None };
        match base.get_mut(key.get_ref().as_ref()) {
            Some(existing) => merge_value(existing, value, identity),
            None => {
                base.insert(key, value);
            }
        }
    }
}

fn merge_value<'i>(base: &mut Spanned<DeValue<'i>>, overlay: Spanned<DeValue<'i>>, identity: Option<&str>) {
    let span = overlay.span();
    match (base.get_mut(), overlay.into_inner()) {
        (DeValue::Table(base_table), DeValue::Table(overlay_table)) => merge_tables(base_table, overlay_table, false),
        (DeValue::Array(base_entries), DeValue::Array(overlay_entries)) if identity.is_some() => {
            let identity = identity.unwrap_or_default();
            for entry in overlay_entries.iter() {
                let id = entry_id(entry, identity).map(str::to_string);
                let found = id.and_then(|id| {
                    base_entries.iter_mut().find(|existing| entry_id(existing, identity) == Some(id.as_str()))
                });
                match (found, entry.get_ref()) {
                    (Some(existing), DeValue::Table(overlay_table)) => {
                        if let DeValue::Table(existing_table) = existing.get_mut() {
                            merge_tables(existing_table, overlay_table.clone(), false);
                        }
                    }
                    _ => base_entries.push(entry.clone()),
                }
            }
        }
        (_, value) => *base = Spanned::new(span, value),
    }
}

/// The `name` (or `key`) of an array entry, when it is a table that has one.
fn entry_id<'a>(entry: &'a Spanned<DeValue<'_>>, identity: &str) -> Option<&'a str> {
    entry.get_ref().as_table()?.get(identity)?.get_ref().as_str()
}

/// `table` with every span moved `by` offsets, into a locator's shared offset space.
pub(super) fn shift_table(table: Spanned<DeTable<'_>>, by: usize) -> Spanned<DeTable<'_>> {
    let span = table.span();
    let shifted = shift_entries(table.into_inner(), by);
    Spanned::new(span.start + by..span.end + by, shifted)
}

fn shift_entries(table: DeTable<'_>, by: usize) -> DeTable<'_> {
    let mut shifted = DeTable::new();
    for (key, value) in table {
        let key_span = key.span();
        shifted.insert(Spanned::new(key_span.start + by..key_span.end + by, key.into_inner()), shift_value(value, by));
    }
    shifted
}

pub(super) fn shift_value(value: Spanned<DeValue<'_>>, by: usize) -> Spanned<DeValue<'_>> {
    let span = value.span();
    let inner = match value.into_inner() {
        DeValue::Table(table) => DeValue::Table(shift_entries(table, by)),
        DeValue::Array(mut array) => {
            for item in array.iter_mut() {
                let placeholder = Spanned::new(0..0, DeValue::Boolean(false));
                let taken = std::mem::replace(item, placeholder);
                *item = shift_value(taken, by);
            }
            DeValue::Array(array)
        }
        other => other,
    };
    Spanned::new(span.start + by..span.end + by, inner)
}
