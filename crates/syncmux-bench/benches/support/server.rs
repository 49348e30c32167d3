//! `syncmux-server` for the benches: built with the bench profile, started as a user starts
//! it, killed when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The server (`syncmux-server`, default features: Redis included, so that the in-memory and
/// the Redis servers are one binary), built with this bench's profile.
pub(crate) fn example_server() -> PathBuf {
    let mut cargo = Command::new(env!("CARGO"));
    // As tests/example_util: the package's variables would make build scripts rerun.
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
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "--profile",
            "bench",
            "-p",
            "syncmux-server",
            "--bin",
            "syncmux-server",
        ])
        .status()
        .expect("run cargo");
    assert!(status.success(), "building syncmux-server failed");
    // target/release/deps/ot_e2e-HASH -> target/release/syncmux-server
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("profile dir");
    dir.join("syncmux-server")
}

/// A server process, killed when dropped.
pub(crate) struct Server {
    pub(crate) child: Option<Child>,
    pub(crate) pid: u32,
    pub(crate) url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `command` and reads its stdout up to the line starting with `prefix` (the rest
/// of that line is the URL); its stdout is drained from then on.
pub(crate) fn start(mut command: Command, prefix: &str) -> Server {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the server");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let url = loop {
        let mut line = String::new();
        if stdout.read_line(&mut line).expect("read stdout") == 0 {
            panic!("the server exited before printing {prefix:?}");
        }
        if let Some(url) = line.trim().strip_prefix(prefix) {
            break url.to_owned();
        }
    };
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    Server {
        pid: child.id(),
        child: Some(child),
        url,
    }
}
