//! `baton init`: writes the bundled example, so that a new user has something real to run.

use std::path::Path;

use crate::Failure;

/// The example roadmap, as it lives in `examples/roadmap/`.
const FILES: &[(&str, &str, bool)] = &[
    ("baton.toml", include_str!("../../../examples/roadmap/baton.toml"), false),
    ("agents/common.sh", include_str!("../../../examples/roadmap/agents/common.sh"), false),
    ("agents/build.sh", include_str!("../../../examples/roadmap/agents/build.sh"), true),
    ("agents/test.sh", include_str!("../../../examples/roadmap/agents/test.sh"), true),
    ("agents/develop.sh", include_str!("../../../examples/roadmap/agents/develop.sh"), true),
];

pub fn init(dir: &Path, force: bool) -> Result<u8, Failure> {
    use std::os::unix::fs::PermissionsExt;
    if !force && let Some((name, _, _)) = FILES.iter().find(|(name, _, _)| dir.join(name).exists()) {
        return Err(Failure::usage(format!(
            "{} already exists; pass --force to overwrite it, or choose another directory",
            dir.join(name).display()
        )));
    }
    for (name, contents, executable) in FILES {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|error| Failure::usage(format!("cannot create {}: {error}", parent.display())))?;
        }
        std::fs::write(&path, contents)
            .map_err(|error| Failure::usage(format!("cannot write {}: {error}", path.display())))?;
        if *executable {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .map_err(|error| Failure::usage(format!("cannot make {} executable: {error}", path.display())))?;
        }
    }
    let shown = if dir == Path::new(".") { String::new() } else { format!("cd {} && ", dir.display()) };
    outln!("wrote the example roadmap to {}:", dir.display());
    for (name, _, _) in FILES {
        outln!("  {name}");
    }
    outln!("next: {shown}baton check && baton run");
    Ok(0)
}
