//! The `rust-version` twinpool declares is true for its lockfile: no
//! package that a build of twinpool compiles (any feature, any target; its
//! normal and build dependencies, not the dev-dependencies of its tests)
//! declares that it needs a newer Rust.
//!
//! It asks `cargo metadata`, which lists each locked package with the
//! `rust-version` its manifest declares.

use std::collections::{HashMap, HashSet};
use std::process::Command;

use serde_json::Value;

/// "1.88" or "1.88.0" as (1, 88, 0).
fn version(v: &str) -> (u64, u64, u64) {
    let mut parts = v.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

#[test]
fn no_dependency_needs_a_newer_rust_than_twinpool_declares() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--all-features",
            "--locked",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata's JSON");

    let packages: HashMap<&str, &Value> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| (p["id"].as_str().expect("an id"), p))
        .collect();
    let root = packages
        .values()
        .find(|p| p["name"] == "twinpool")
        .expect("twinpool in the metadata");
    let declared = root["rust_version"]
        .as_str()
        .expect("twinpool declares a rust-version");

    // Walk twinpool's normal and build dependencies in the resolved graph.
    let nodes: HashMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .expect("the resolved graph")
        .iter()
        .map(|n| (n["id"].as_str().expect("an id"), n))
        .collect();
    let mut seen = HashSet::new();
    let mut todo = vec![root["id"].as_str().expect("an id")];
    while let Some(id) = todo.pop() {
        if !seen.insert(id) {
            continue;
        }
        for dep in nodes[id]["deps"].as_array().expect("deps") {
            let built = dep["dep_kinds"]
                .as_array()
                .expect("dep_kinds")
                .iter()
                .any(|k| k["kind"].is_null() || k["kind"] == "build");
            if built {
                todo.push(dep["pkg"].as_str().expect("a package id"));
            }
        }
    }

    let mut newer: Vec<String> = seen
        .iter()
        .filter_map(|id| {
            let p = packages[id];
            let needs = p["rust_version"].as_str()?;
            (version(needs) > version(declared)).then(|| {
                let name = p["name"].as_str().unwrap_or("?");
                let v = p["version"].as_str().unwrap_or("?");
                format!("{name} {v} needs Rust {needs}")
            })
        })
        .collect();
    newer.sort();
    assert!(
        newer.is_empty(),
        "twinpool declares rust-version {declared}, but its locked dependencies need more: {newer:?}. \
         Raise rust-version in Cargo.toml, or pick older versions (`cargo update -p <name> --precise <version>`)."
    );
    assert!(seen.len() > 5, "the walk found only {seen:?}");
}
