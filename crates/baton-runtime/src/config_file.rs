//! Reading the configuration files: `baton.toml` and, with a profile, `baton.PROFILE.toml`
//! beside it. Everything after reading is `baton_core::config::check_sources`, which does no IO;
//! when the configuration is not valid, the checks that need the machine
//! ([`crate::check::check_environment`]) still run on what could be built of its plan, so that
//! every problem is reported at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use baton_core::config::{self, Diagnostic, Location, Plan, Source, check_sources, is_profile_name, profile_path};

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file cannot be read, or a profile name is not one.
    #[error("{0}")]
    Unreadable(Diagnostic),
    /// The profile asked for has no file.
    #[error("{}", no_profile_message(.profile, .file, .profiles))]
    NoProfile {
        profile: String,
        /// Where it was looked for.
        file: PathBuf,
        /// The profiles there are: files `STEM.PROFILE.toml` beside the configuration.
        profiles: Vec<String>,
    },
    /// The configuration is not valid: every problem, those the machine shows included.
    #[error("{0}")]
    Invalid(config::Error),
}

fn no_profile_message(profile: &str, file: &Path, profiles: &[String]) -> String {
    let there = match profiles {
        [] => "there is no profile beside it".to_string(),
        [only] => format!("the only profile there is `{only}`"),
        profiles => format!(
            "the profiles there are {}",
            profiles.iter().map(|p| format!("`{p}`")).collect::<Vec<_>>().join(", ")
        ),
    };
    format!("profile `{profile}` not found: there is no {}; {there}", file.display())
}

/// The profiles beside the configuration file `path`: each `STEM.PROFILE.toml` in its directory.
fn profiles_beside(path: &Path) -> Vec<String> {
    let stem = path.file_stem().map_or_else(|| "baton".into(), |stem| stem.to_string_lossy().into_owned());
    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut profiles: Vec<String> = entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter_map(|name| {
            let profile = name.strip_prefix(&stem)?.strip_prefix('.')?.strip_suffix(".toml")?;
            is_profile_name(profile).then(|| profile.to_string())
        })
        .collect();
    profiles.sort();
    profiles
}

/// Reads `path`, and with `profile` the file beside it (see `profile_path`), and loads them
/// layered with the `BATON_*` overrides of `env` (see `load_sources`). A file that cannot be
/// read is an error naming it; a configuration that is not valid is checked against the
/// machine all the same (commands that do not exist, working directories), and those problems
/// are reported with the others.
pub fn load_layered(path: &Path, profile: Option<&str>, env: &BTreeMap<String, String>) -> Result<Plan, Error> {
    let read = |path: &Path, what: &str| {
        std::fs::read_to_string(path).map_err(|error| {
            let message = if error.kind() == std::io::ErrorKind::NotFound {
                format!("{what} not found")
            } else {
                format!("cannot read {what}: {error}")
            };
            let location = Location { file: path.display().to_string(), line: 0, column: 0 };
            Error::Unreadable(Diagnostic { location, message })
        })
    };
    let base_file = path.display().to_string();
    let base_text = read(path, "the configuration file")?;
    let profile_file = profile.map(|profile| {
        if !is_profile_name(profile) {
            let location = Location { file: base_file.clone(), line: 0, column: 0 };
            let message =
                format!("invalid profile name `{profile}`: use letters, digits, `-` and `_`, e.g. --profile prod");
            return Err(Error::Unreadable(Diagnostic { location, message }));
        }
        let file = profile_path(path, profile);
        if !file.exists() {
            return Err(Error::NoProfile { profile: profile.to_string(), file, profiles: profiles_beside(path) });
        }
        let text = read(&file, &format!("the file of profile `{profile}`"))?;
        Ok((file.display().to_string(), text))
    });
    let profile_file = profile_file.transpose()?;
    let base = Source { file: &base_file, text: &base_text };
    let profile = profile_file.as_ref().map(|(file, text)| Source { file, text });
    check_sources(base, profile, env).map_err(|invalid| {
        let mut diagnostics = invalid.error.diagnostics;
        if let Some(partial) = invalid.partial {
            let base_dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
            let base_dir = std::fs::canonicalize(base_dir).unwrap_or_else(|_| base_dir.to_path_buf());
            for problem in crate::check::check_environment(&partial, &base_dir, env) {
                insert_in_order(&mut diagnostics, problem);
            }
        }
        Error::Invalid(config::Error { diagnostics })
    })
}

/// Inserts `diagnostic` among `diagnostics` (in file order) after those of its file that come
/// before it, or at the end when its file has none.
fn insert_in_order(diagnostics: &mut Vec<Diagnostic>, diagnostic: Diagnostic) {
    let place = |d: &Diagnostic| (d.location.line, d.location.column);
    let same_file: Vec<usize> =
        (0..diagnostics.len()).filter(|&idx| diagnostics[idx].location.file == diagnostic.location.file).collect();
    let at = match same_file.iter().find(|&&idx| place(&diagnostics[idx]) > place(&diagnostic)) {
        Some(&idx) => idx,
        None => same_file.last().map_or(diagnostics.len(), |&idx| idx + 1),
    };
    diagnostics.insert(at, diagnostic);
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[orchestration]\nname = \"demo\"\n";

    fn env() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    #[test]
    fn load_layered_reads_the_profile_beside_the_file() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().to_path_buf();
        let base = dir.join("baton.toml");
        std::fs::write(&base, MINIMAL).unwrap();
        assert_eq!(profile_path(&base, "prod"), dir.join("baton.prod.toml"));
        let plan = load_layered(&base, None, &env()).unwrap();
        assert_eq!(plan.name, "demo");
        let missing = load_layered(&base, Some("prod"), &env()).unwrap_err().to_string();
        assert_eq!(
            missing,
            format!(
                "profile `prod` not found: there is no {}; there is no profile beside it",
                dir.join("baton.prod.toml").display()
            )
        );
        std::fs::write(dir.join("baton.staging.toml"), "").unwrap();
        std::fs::write(dir.join("baton.dev.toml"), "").unwrap();
        let missing = load_layered(&base, Some("prod"), &env()).unwrap_err().to_string();
        assert!(missing.ends_with("; the profiles there are `dev`, `staging`"), "{missing}");
        std::fs::write(dir.join("baton.prod.toml"), "[orchestration]\nname = \"prod\"\n").unwrap();
        assert_eq!(load_layered(&base, Some("prod"), &env()).unwrap().name, "prod");
        let invalid = load_layered(&base, Some("../x"), &env()).unwrap_err().to_string();
        assert_eq!(
            invalid,
            format!(
                "{}: invalid profile name `../x`: use letters, digits, `-` and `_`, e.g. --profile prod",
                base.display()
            )
        );
    }
}
