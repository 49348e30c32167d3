//! Interop with a third-party client: Node's `ws` package drives `syncmux-server`
//! through push, pull, subscribe, presence and a malformed frame (`tests/node/interop.mjs`),
//! and the same against the sync endpoint mounted in axum (`examples/axum.rs`).
//!
//! Needs `node` and `npm install --prefix tests/node --no-audit --no-fund` (`.ci/run` does
//! it). Without them the test fails under CI (`CI` set) and is skipped loudly otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use crate::example_util;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use example_util::{example_binary, node_ready, root, Killed};

/// Starts the example `name` on port 0 and runs `tests/node/interop.mjs` against it.
fn drive(name: &str) {
    if !node_ready("interop_node", "ws") {
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
