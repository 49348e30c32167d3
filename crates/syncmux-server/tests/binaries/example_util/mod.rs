//! Running the binaries from tests: built with the tests' features, killed when the test
//! ends however it ends.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The binary `name`: `server` and `client` are this package's (`syncmux-server`,
/// `syncmux-cli`), which Cargo builds for its tests with the tests' features; `axum` is the
/// runtime crate's example, built here (usually a no-op that proves the binary is fresh).
pub fn example_binary(name: &str) -> PathBuf {
    match name {
        "server" => PathBuf::from(env!("CARGO_BIN_EXE_syncmux-server")),
        "client" => PathBuf::from(env!("CARGO_BIN_EXE_syncmux-cli")),
        example => build_example("syncmux-runtime", example, "tokio"),
    }
}

/// Builds the example `name` of `package` with `features`; its binary
/// (`target/debug/examples/NAME`, beside this test's directory).
fn build_example(package: &str, name: &str, features: &str) -> PathBuf {
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
        .args([
            "build",
            "-p",
            package,
            "--example",
            name,
            "--features",
            features,
        ])
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

/// Starts `syncmux-server` on a free port with `args` (and no `SYNCMUX_*` variable from the
/// test's environment); its URL once it prints `listening on URL`, or its exit status and
/// stderr when it stops instead.
pub fn start_server(args: &[&str]) -> Result<(Killed, String), (Option<i32>, String)> {
    start_server_until(args, "listening on ")
}

/// [`start_server`], waiting for the line that starts with `prefix` (`ot on ` for the OT
/// endpoint's URL) instead.
pub fn start_server_until(
    args: &[&str],
    prefix: &str,
) -> Result<(Killed, String), (Option<i32>, String)> {
    start_server_with(args, prefix, &[])
}

/// [`start_server_until`] with the variables `env` set.
pub fn start_server_with(
    args: &[&str],
    prefix: &str,
    env: &[(&str, &str)],
) -> Result<(Killed, String), (Option<i32>, String)> {
    let mut command = Command::new(example_binary("server"));
    command
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SYNCMUX_") {
            command.env_remove(key);
        }
    }
    let mut process = Killed(command.spawn().unwrap());
    let mut stdout = BufReader::new(process.0.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        if stdout.read_line(&mut line).unwrap() == 0 {
            let status = process.0.wait().unwrap();
            return Err((status.code(), stderr_of(&mut process)));
        }
        if let Some(url) = line.trim().strip_prefix(prefix) {
            return Ok((process, url.to_owned()));
        }
    }
}

/// Everything the process wrote to its (piped) stderr, once it has exited.
pub fn stderr_of(process: &mut Killed) -> String {
    let mut stderr = String::new();
    if let Some(pipe) = process.0.stderr.as_mut() {
        pipe.read_to_string(&mut stderr).unwrap();
    }
    stderr
}

/// Bytes a process wrote, as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Generous: every wait ends as soon as what it waits for happens; only a hang reaches it.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A process's stdout, line by line, read on a thread of its own.
pub struct Lines(mpsc::Receiver<String>);

impl Lines {
    /// Takes `process`'s stdout.
    pub fn of(process: &mut Killed) -> Lines {
        let stdout = process.0.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Lines(rx)
    }

    /// The next line, as JSON.
    pub fn next(&self) -> serde_json::Value {
        let line = self.0.recv_timeout(PATIENCE).expect("a line in time");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }

    /// The first line that `wanted` accepts (`what` names it in the failure).
    pub fn until(
        &self,
        what: &str,
        wanted: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        loop {
            let line = self
                .0
                .recv_timeout(PATIENCE)
                .unwrap_or_else(|_| panic!("no line {what} in time"));
            let value: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
            if wanted(&value) {
                return value;
            }
        }
    }
}

/// Sends SIGTERM to `process`.
pub fn sigterm(process: &Killed) {
    let pid = process.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
}

/// Sends SIGTERM to `process` and gives how it exited.
pub fn terminate(mut process: Killed) -> ExitStatus {
    sigterm(&process);
    let (done, waited) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(process.0.wait());
    });
    waited.recv_timeout(PATIENCE).expect("it exited").unwrap()
}

/// One raw HTTP/1.1 exchange: (status code, head, body).
pub async fn exchange(addr: &str, request: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

/// A session of the sync protocol over a WebSocket.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a session at `url?query`, offering `syncmux.v1`; `Err(status)` when the handshake is
/// refused with an HTTP status.
pub async fn open(url: &str, query: &str) -> Result<Ws, u16> {
    use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};
    let mut request = format!("{url}?{query}").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "syncmux.v1".parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("connect {url}: {e}"),
    }
}

/// Whether `node` and the npm package `package` (`tests/node/node_modules/PACKAGE`) are here
/// for the Node test `test`. Without them it fails under CI (`CI` set), and is skipped loudly
/// otherwise (false).
pub fn node_ready(test: &str, package: &str) -> bool {
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status();
    let dir = format!("tests/node/node_modules/{package}");
    let why = if !node.is_ok_and(|s| s.success()) {
        "`node` is not on the PATH".to_owned()
    } else if !root().join(&dir).join("package.json").exists() {
        format!("{dir} is missing: run `npm install --prefix tests/node --no-audit --no-fund`")
    } else {
        return true;
    };
    if std::env::var_os("CI").is_some() {
        panic!("{test} cannot run under CI: {why}");
    }
    // Straight to stderr: the harness captures `eprintln!` of a passing test.
    let _ = writeln!(std::io::stderr(), "\n!!!!! SKIPPED {test}: {why} !!!!!\n");
    false
}
