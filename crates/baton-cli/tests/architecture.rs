//! The layering ARCHITECTURE.md states, checked on the crates' manifests: which crate may
//! depend on which, and which crate alone may use a database, serve HTTP or drive terminals.
//! (That only baton-runtime's process module starts processes is checked by clippy's
//! `disallowed-methods`, in clippy.toml.)

use std::collections::BTreeMap;
use std::path::Path;

/// The crates, lowest layer first: each may depend on those before it only.
const LAYERS: &[&str] =
    &["baton-core", "baton-store", "baton-runtime", "baton-ops", "baton-server", "baton-bench", "baton-cli"];

/// Dependencies (not dev-dependencies) that only the named crates may have.
const ONLY: &[(&str, &[&str], &str)] = &[
    ("rusqlite", &["baton-store"], "only the store has SQL"),
    ("tokio-postgres", &["baton-store"], "only the store has SQL"),
    ("deadpool-postgres", &["baton-store"], "only the store has SQL"),
    ("axum", &["baton-server"], "only the server serves HTTP"),
    ("axum-server", &["baton-server"], "only the server serves HTTP"),
    ("hyper", &["baton-server"], "only the server serves HTTP"),
    ("hyper-util", &["baton-server"], "only the server serves HTTP"),
    ("tower-http", &["baton-server"], "only the server serves HTTP"),
    (
        "reqwest",
        &["baton-bench", "baton-cli", "baton-runtime"],
        "only the CLI and the HTTP benchmarks are HTTP clients (of the server), and the runtime (of LLM providers and A2A agents)",
    ),
    ("portable-pty", &["baton-runtime"], "only the runtime starts processes"),
    // The runtime's MCP hub reaches MCP servers (stdio or Streamable HTTP) through rmcp; the
    // tools it offers reach the rest through the `ToolProvider` seam.
    ("rmcp", &["baton-runtime"], "only the runtime is an MCP client (its `mcp` module)"),
    (
        "tokio",
        &["baton-store", "baton-runtime", "baton-ops", "baton-server", "baton-bench", "baton-cli"],
        "baton-core does no IO",
    ),
];

fn manifests() -> BTreeMap<String, toml::Table> {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("crates/");
    let mut manifests = BTreeMap::new();
    for entry in std::fs::read_dir(crates).unwrap() {
        let path = entry.unwrap().path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        let manifest: toml::Table = text.parse().unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        let name = manifest["package"]["name"].as_str().unwrap().to_string();
        manifests.insert(name, manifest);
    }
    manifests
}

fn dependencies(manifest: &toml::Table) -> Vec<String> {
    manifest
        .get("dependencies")
        .and_then(toml::Value::as_table)
        .map(|deps| deps.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn every_crate_is_a_layer_and_depends_only_on_the_layers_below() {
    let manifests = manifests();
    let names: Vec<&str> = manifests.keys().map(String::as_str).collect();
    let mut layered: Vec<&str> = LAYERS.to_vec();
    layered.sort_unstable();
    assert_eq!(names, layered, "a crate was added or removed: place it in LAYERS and in ARCHITECTURE.md");
    for (index, name) in LAYERS.iter().enumerate() {
        for dependency in dependencies(&manifests[*name]) {
            if let Some(layer) = LAYERS.iter().position(|layer| *layer == dependency) {
                assert!(layer < index, "{name} depends on {dependency}, which is not below it");
            }
        }
    }
}

#[test]
fn databases_http_and_terminals_stay_in_their_crates() {
    let manifests = manifests();
    for (name, manifest) in &manifests {
        for dependency in dependencies(manifest) {
            if let Some((_, allowed, why)) = ONLY.iter().find(|(only, _, _)| *only == dependency) {
                assert!(allowed.contains(&name.as_str()), "{name} depends on {dependency}: {why}");
            }
        }
    }
}
