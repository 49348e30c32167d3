//! Interop of the OT profile with the real npm client: `syncmux-server`'s
//! `/ot` endpoint driven by `@open-ot/transport-websocket` 0.3.0 (`tests/node/ot_interop.mjs`):
//! ack, broadcast, a stale op transformed, error frames, `?token=` auth (401), the rate
//! limit, and five concurrent clients converging on the server's text.
//!
//! Needs `node` and `npm install --prefix tests/node --no-audit --no-fund` (`.ci/run` does
//! it). Without them the test fails under CI (`CI` set) and is skipped loudly otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use crate::example_util;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use example_util::{example_binary, node_ready, root, Killed};

/// Messages per connection per window the server is started with (the script checks the
/// next one is refused).
const RATE_LIMIT: &str = "50";

#[test]
fn open_ot_transport_drives_the_example_servers_ot_endpoint() {
    if !node_ready("ot_interop_node", "@open-ot/transport-websocket") {
        return;
    }
    let mut server = Killed(
        Command::new(example_binary("server"))
            .args(["--listen", "127.0.0.1:0", "--token", "s3cret"])
            .args(["--rate-limit", &format!("{RATE_LIMIT}/60")])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the example"),
    );
    let mut stdout = BufReader::new(server.0.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(
        line.starts_with("listening on ws://"),
        "first line {line:?}"
    );
    line.clear();
    stdout.read_line(&mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("ot on ")
        .unwrap_or_else(|| panic!("unexpected second line {line:?}"))
        .to_owned();
    assert!(
        url.starts_with("ws://127.0.0.1:") && url.ends_with("/ot"),
        "{url}"
    );

    let status = Command::new("node")
        .arg(root().join("tests/node/ot_interop.mjs"))
        .args([&url, "s3cret", RATE_LIMIT])
        .status()
        .expect("run node");
    assert!(
        status.success(),
        "tests/node/ot_interop.mjs failed: {status}"
    );
}
