//! Interop with a third-party client (issue 6): Node's `ws` package drives the example server
//! through push, pull, subscribe, presence and a malformed frame (`tests/node/interop.mjs`),
//! and the same against the sync endpoint mounted in axum (`examples/axum.rs`).
//!
//! Needs `node` and `npm install --prefix tests/node --no-audit --no-fund` (`.ci/run` does
//! it). Without them the test fails under CI (`CI` set) and is skipped loudly otherwise.
#![cfg(feature = "tokio")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Why the test cannot run here, if it cannot.
fn missing_tools() -> Option<String> {
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status();
    if !node.is_ok_and(|s| s.success()) {
        return Some("`node` is not on the PATH".to_owned());
    }
    if !root()
        .join("tests/node/node_modules/ws/package.json")
        .exists()
    {
        return Some(
            "tests/node/node_modules/ws is missing: run `npm install --prefix tests/node \
             --no-audit --no-fund`"
                .to_owned(),
        );
    }
    None
}

/// The binary of the example `name` next to this test's (`target/debug/examples/NAME`),
/// built with this test's features. `cargo test` builds the examples already, so this is
/// usually a no-op that only proves the binary is fresh.
fn example_binary(name: &str) -> PathBuf {
    let mut features = vec!["tokio"];
    if cfg!(feature = "smol") {
        features.push("smol");
    }
    if cfg!(feature = "wasm") {
        features.push("wasm");
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
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the example `name` on port 0 and runs `tests/node/interop.mjs` against it.
fn drive(name: &str) {
    if let Some(why) = missing_tools() {
        if std::env::var_os("CI").is_some() {
            panic!("interop test cannot run under CI: {why}");
        }
        // Straight to stderr: the harness captures `eprintln!` of a passing test.
        let _ = writeln!(
            std::io::stderr(),
            "\n!!!!! SKIPPED interop_node: {why} !!!!!\n"
        );
        return;
    }
    let mut server = Killed(
        Command::new(example_binary(name))
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the example"),
    );
    let mut line = String::new();
    BufReader::new(server.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    assert!(url.starts_with("ws://127.0.0.1:"), "{url}");

    let status = Command::new("node")
        .arg(root().join("tests/node/interop.mjs"))
        .arg(&url)
        .status()
        .expect("run node");
    assert!(
        status.success(),
        "tests/node/interop.mjs against {name} failed: {status}"
    );
}

#[test]
fn node_ws_client_drives_the_example_server() {
    drive("server");
}

#[test]
fn node_ws_client_drives_the_axum_example() {
    drive("axum");
}
