//! Reading the configuration files: `baton.toml` and, with a profile, `baton.PROFILE.toml`
//! beside it. Everything after reading is `baton_core::config::load_sources`, which does no IO.

use std::collections::BTreeMap;
use std::path::Path;

use baton_core::config::{Diagnostic, Error, Location, Plan, Source, is_profile_name, load_sources, profile_path};

/// Reads `path`, and with `profile` the file beside it (see `profile_path`), and loads them
/// layered with the `BATON_*` overrides of `env` (see `load_sources`). A file that cannot be
/// read is an error naming it.
pub fn load_layered(path: &Path, profile: Option<&str>, env: &BTreeMap<String, String>) -> Result<Plan, Error> {
    let read = |path: &Path, what: &str| {
        std::fs::read_to_string(path).map_err(|error| {
            let message = if error.kind() == std::io::ErrorKind::NotFound {
                format!("{what} not found")
            } else {
                format!("cannot read {what}: {error}")
            };
            let location = Location { file: path.display().to_string(), line: 0, column: 0 };
            Error { diagnostics: vec![Diagnostic { location, message }] }
        })
    };
    let base_file = path.display().to_string();
    let base_text = read(path, "the configuration file")?;
    let profile_file = profile.map(|profile| {
        if !is_profile_name(profile) {
            let location = Location { file: base_file.clone(), line: 0, column: 0 };
            let message =
                format!("invalid profile name `{profile}`: use letters, digits, `-` and `_`, e.g. --profile prod");
            return Err(Error { diagnostics: vec![Diagnostic { location, message }] });
        }
        let file = profile_path(path, profile);
        let text = read(&file, &format!("the file of profile `{profile}`"))?;
        Ok((file.display().to_string(), text))
    });
    let profile_file = profile_file.transpose()?;
    let base = Source { file: &base_file, text: &base_text };
    let profile = profile_file.as_ref().map(|(file, text)| Source { file, text });
    load_sources(base, profile, env)
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
        assert_eq!(missing, format!("{}: the file of profile `prod` not found", dir.join("baton.prod.toml").display()));
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
