//! Running the examples from tests: the binary built with the test's features, killed when
//! the test ends however it ends.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The binary of the example `name` next to this test's (`target/debug/examples/NAME`),
/// built with this test's features. `cargo test` builds the examples already, so this is
/// usually a no-op that only proves the binary is fresh.
pub fn example_binary(name: &str) -> PathBuf {
    let mut features = vec!["tokio"];
    if cfg!(feature = "smol") {
        features.push("smol");
    }
    if cfg!(feature = "wasm") {
        features.push("wasm");
    }
    if cfg!(feature = "redis") {
        features.push("redis");
    }
    if cfg!(feature = "sqlite") {
        features.push("sqlite");
    }
    let mut cargo = Command::new(env!("CARGO"));
    // Cargo gives this test the variables of the package it tests; some build scripts (ring's)
    // rerun when those change, so an inner build that saw them would rebuild half the tree,
    // and the next outer build again.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || key.starts_with("CARGO_BIN_")
            || matches!(
                key.as_ref(),
                "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR" | "OUT_DIR"
            )
        {
            cargo.env_remove(key.as_ref());
        }
    }
    let status = cargo
        .current_dir(root())
        .args(["build", "--example", name, "--features"])
        .arg(features.join(","))
        .status()
        .expect("run cargo");
    assert!(status.success(), "building the example {name} failed");
    // target/debug/deps/interop_node-HASH -> target/debug/examples/NAME
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let binary = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(binary.exists(), "no {}", binary.display());
    binary
}

/// Kills the server when the test ends, however it ends.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
