//! `syncmux-server` at its edges, as a newcomer meets them: values it cannot use are refused
//! at start-up with a message naming the flag and exit code 2, plain HTTP on the WebSocket
//! path is told what to do, and a log or output reader that goes away never takes the server
//! down.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use crate::example_util;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{ChildStdout, Command, Output, Stdio};
use std::sync::mpsc;

use example_util::{example_binary, exchange, open, sigterm, start_server, terminate, text};
use example_util::{Killed, PATIENCE};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// The server with `args` and nothing from the test's `SYNCMUX_*` variables.
fn server(args: &[&str]) -> Command {
    let mut command = Command::new(example_binary("server"));
    command.args(args).stdin(Stdio::null());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SYNCMUX_") {
            command.env_remove(key);
        }
    }
    command
}

/// Runs a server that must refuse to start.
fn refused(args: &[&str]) -> Output {
    let mut command = server(args);
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = command.spawn().unwrap();
    let pid = child.id();
    let (done, waited) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    let Ok(out) = waited.recv_timeout(PATIENCE) else {
        let _ = Command::new("kill").arg(pid.to_string()).status();
        panic!("{args:?}: still running, it started instead of refusing");
    };
    out.unwrap()
}

/// Spawns `command` with its output piped and `RUST_LOG=log`: the process, its stdout and the
/// first line it printed (`listening on URL`).
fn spawn(mut command: Command, log: &str) -> (Killed, BufReader<ChildStdout>, String) {
    command
        .env("RUST_LOG", log)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut process = Killed(command.spawn().unwrap());
    let mut stdout = BufReader::new(process.0.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    (process, stdout, line)
}

/// A self-signed certificate for `localhost` and its key, written to `dir`: their paths.
fn self_signed(dir: &Path) -> (String, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    (
        cert_path.display().to_string(),
        key_path.display().to_string(),
    )
}

/// Bad values exit 2 with a message that names the flag and the value (or file), in the
/// words of the flags, never of internal fields, and nothing is served.
#[test]
fn values_the_server_cannot_use_exit_2_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_arg, key_arg) = self_signed(dir.path());
    let file_arg = cert_arg.clone();
    let missing = dir.path().join("missing").display().to_string();
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["--listen", "nonsense"], vec!["--listen", "nonsense"]),
        (vec!["--listen", "127.0.0.1:99999"], vec!["--listen"]),
        (vec!["--rate-limit", "10/0"], vec!["--rate-limit", "10/0"]),
        (
            vec!["--ping-interval", "5000", "--idle-timeout", "1000"],
            vec!["--ping-interval", "--idle-timeout"],
        ),
        // Certificate and key swapped: each file named with what is wrong with it.
        (
            vec!["--tls-cert", &key_arg, "--tls-key", &cert_arg],
            vec!["--tls-cert", key_arg.as_str()],
        ),
        (
            vec!["--tls-cert", &cert_arg, "--tls-key", &missing],
            vec!["--tls-key", missing.as_str()],
        ),
        // A static directory that is not there, or not a directory.
        (
            vec!["--static", &missing],
            vec!["--static", missing.as_str()],
        ),
        (
            vec!["--static", &file_arg],
            vec!["--static", file_arg.as_str()],
        ),
    ];
    for (args, words) in cases {
        let mut all = args.clone();
        if !all.contains(&"--listen") {
            all.extend(["--listen", "127.0.0.1:0"]);
        }
        let out = refused(&all);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        for word in words {
            assert!(stderr.contains(word), "{args:?}: {word:?} not in {stderr}");
        }
        for internal in [
            "rate_limit_window",
            "ping_interval",
            "idle_timeout",
            "unexpected error",
        ] {
            assert!(!stderr.contains(internal), "{args:?}: {stderr}");
        }
        // The in-memory warning is for a server that starts, not one that refuses to.
        assert!(!stderr.contains("no --data"), "{args:?}: {stderr}");
        assert!(!text(&out.stdout).contains("listening on"), "{args:?}");
    }
}

/// `--token`'s help names every place a client may put the token.
#[test]
fn the_token_help_names_every_place_it_is_read_from() {
    let out = refused(&["--help"]);
    let help = text(&out.stdout);
    for place in ["Authorization: Bearer", "?access_token=", "?token="] {
        assert!(help.contains(place), "{place} missing from --help:\n{help}");
    }
}

/// A plain `GET /sync/ws` (a browser tab, `curl`) is told that this is a WebSocket endpoint
/// (`426 Upgrade Required` and a line of text), with and without `--static`; it used to get
/// an empty reply. And an empty `?node_id=` is a bad node id (400), not an anonymous one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_on_the_websocket_path_gets_426_and_an_empty_node_id_400() {
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().display().to_string();
    for args in [&[][..], &["--static", &dir_arg]] {
        let (_server, url) = start_server(args).unwrap();
        let addr = url
            .strip_prefix("ws://")
            .and_then(|rest| rest.strip_suffix("/sync/ws"))
            .unwrap();
        let request = format!("GET /sync/ws HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        let (status, head, body) = exchange(addr, &request).await;
        assert_eq!(status, 426, "{args:?}: {head}\n{body}");
        assert!(head.to_lowercase().contains("upgrade: websocket"), "{head}");
        assert!(body.contains("WebSocket"), "{body:?}");

        for query in ["node_id=", "node_id"] {
            match open(&url, query).await {
                Err(status) => assert_eq!(status, 400, "{args:?} {query}"),
                Ok(_) => panic!("{args:?}: ?{query} was accepted"),
            }
        }
    }
}

/// A server whose stdout and stderr readers have gone (`syncmux-server 2>&1 | head -2`, a
/// supervisor whose log pipe broke) goes on serving, logs nowhere, and still shuts down
/// cleanly with exit 0. A failed write to either used to panic (exit 101) at the next line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_output_readers_are_gone_keeps_serving_and_exits_0() {
    let (mut process, stdout, line) = spawn(server(&["--listen", "127.0.0.1:0"]), "debug");
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    // Both readers go away.
    drop(stdout);
    drop(process.0.stderr.take());

    // Every session logs at debug level; each one is a write to the broken stderr.
    for i in 0..3 {
        // A server whose accept loop died on a log write leaves the handshake unanswered.
        let mut ws = tokio::time::timeout(PATIENCE, open(&url, &format!("node_id=n{i}")))
            .await
            .expect("the handshake is answered in time")
            .unwrap();
        ws.send(Message::text(r#"{"type":"ping","id":"1"}"#))
            .await
            .unwrap();
        let pong = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("an answer in time");
        assert!(
            matches!(&pong, Some(Ok(Message::Text(t))) if t.contains("pong")),
            "{pong:?}"
        );
    }
    let status = terminate(process);
    assert_eq!(status.code(), Some(0), "{status}");
}

/// Human logs written to a pipe or a file carry no colour codes, the in-memory warning comes
/// once the server runs, and a failed TLS handshake is logged under `tls` (it was logged
/// under the static-files module, and coloured).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_off_a_terminal_are_plain_and_tls_failures_are_logged_under_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_arg, key_arg) = self_signed(dir.path());
    let command = server(&[
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        &cert_arg,
        "--tls-key",
        &key_arg,
    ]);
    let (mut process, _stdout, line) = spawn(command, "info");
    let addr = line
        .trim()
        .strip_prefix("listening on wss://")
        .and_then(|rest| rest.strip_suffix("/sync/ws"))
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_owned();
    // Plain HTTP to the TLS port: the handshake fails, and the server drops the connection
    // once it has logged why.
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut answer))
        .await
        .expect("the server dropped the connection");
    sigterm(&process);
    let mut stderr = process.0.stderr.take().unwrap();
    let (done, waited) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        let _ = done.send(text);
    });
    let logs = waited.recv_timeout(PATIENCE).expect("the server exited");
    assert!(!logs.contains('\u{1b}'), "colour codes in {logs:?}");
    assert!(logs.contains("no --data"), "{logs}");
    let failed = logs
        .lines()
        .find(|l| l.contains("TLS handshake failed"))
        .unwrap_or_else(|| panic!("no TLS failure logged: {logs}"));
    assert!(failed.contains("syncmux_server::tls"), "{failed}");
    assert!(!failed.contains("static_files"), "{failed}");
}
