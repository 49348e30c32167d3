//! `syncmux-cli` as a user runs it against `syncmux-server`: what it prints is safe to act on
//! (every cursor it prints is a resume point), the values a user passes on are passed on, and
//! one-shot commands that cannot succeed say why at once, with an exit code per cause.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use crate::example_util;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

use example_util::{example_binary, start_server, terminate, Killed, Lines, PATIENCE};
use serde_json::Value;

fn client_binary() -> PathBuf {
    static CLIENT: OnceLock<PathBuf> = OnceLock::new();
    CLIENT.get_or_init(|| example_binary("client")).clone()
}

/// The client with `args` (and no `SYNCMUX_*` variable from the test's environment).
fn client(url: &str, node: &str, args: &[&str]) -> Command {
    let mut command = Command::new(client_binary());
    command.args(["--url", url, "--node-id", node]).args(args);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SYNCMUX_") {
            command.env_remove(key);
        }
    }
    command
}

/// Runs a one-shot command to its end, `stdin` on its standard input.
fn run(mut command: Command, stdin: &str) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let (done, waited) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    waited
        .recv_timeout(PATIENCE)
        .expect("the command ended")
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The one JSON line a successful one-shot command prints.
fn json_line(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{:?}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    serde_json::from_str(text(&out.stdout).trim()).unwrap()
}

fn record(pk: u32, ts: u64) -> String {
    format!(
        r#"{{"table":"docs","pk":"{pk}","field":"title","crdt_type":"lww","hlc":"{ts}:0:alice","node_id":"alice","value":"v{pk}"}}"#
    )
}

/// Pushes the records `pks` (one push, so one batch for the subscribers) as alice.
fn push(url: &str, pks: &[u32]) -> Value {
    let records: Vec<String> = pks.iter().map(|pk| record(*pk, u64::from(*pk))).collect();
    let batch = format!("[{}]", records.join(","));
    json_line(&run(client(url, "alice", &["push", "-"]), &batch))
}

/// The primary keys a `pull --cursor cursor` brings.
fn pulled_after(url: &str, cursor: &str) -> BTreeSet<String> {
    let pulled = json_line(&run(
        client(url, "carol", &["pull", "--cursor", cursor, "docs"]),
        "",
    ));
    assert_eq!(pulled["recovered"], true, "{pulled}");
    let changes = pulled["changes"].as_array().unwrap();
    changes
        .iter()
        .map(|c| c["pk"].as_str().unwrap().to_owned())
        .collect()
}

/// Every change line of a batch carries a cursor a user can resume from: resuming from the
/// newest cursor printed at or before any line brings every change printed after it (a
/// replayed batch and a live one). The client used to print the batch's last cursor on each
/// of its lines, so a user who resumed from the first line of a batch skipped the rest.
#[test]
fn every_printed_cursor_resumes_without_skipping_a_change() {
    let (_server, url) = start_server(&[]).unwrap();
    let pushed = push(&url, &[1, 2, 3]);
    let head = pushed["cursor"].as_str().unwrap();
    let epoch = head.split_once('.').unwrap().0;
    let first = format!("{epoch}.1");

    let mut follower = Killed(
        client(&url, "bob", &["subscribe", "--cursor", &first, "docs"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = Lines::of(&mut follower);
    // (primary key, cursor printed on its line), and the resume point after each line.
    let mut printed: Vec<(Option<String>, Option<String>)> = Vec::new();
    let mut changes = 0;
    let mut pushed_live = false;
    while changes < 4 {
        let line = lines.next();
        let cursor = line["cursor"].as_str().map(str::to_owned);
        if line.get("change").is_some() {
            let pk = line["change"]["pk"].as_str().unwrap().to_owned();
            printed.push((Some(pk), cursor));
            changes += 1;
        } else if line["subscribed"] == true {
            assert_eq!(line["resume"]["recovered"], true, "{line}");
            let cursor = line["resume"]["cursor"].as_str().map(str::to_owned);
            printed.push((None, cursor));
        }
        if changes == 2 && !pushed_live && printed.iter().any(|(pk, _)| pk.is_none()) {
            // Replay printed and the subscription acknowledged: a live batch of two.
            push(&url, &[4, 5]);
            pushed_live = true;
        }
    }
    let pks: Vec<&str> = printed.iter().filter_map(|(pk, _)| pk.as_deref()).collect();
    assert_eq!(pks, ["2", "3", "4", "5"], "{printed:?}");

    let mut resume = first;
    for (i, (pk, cursor)) in printed.iter().enumerate() {
        if let Some(cursor) = cursor {
            resume = cursor.clone();
        }
        let later: BTreeSet<String> = printed[i + 1..]
            .iter()
            .filter_map(|(pk, _)| pk.clone())
            .collect();
        let got = pulled_after(&url, &resume);
        assert!(
            got.is_superset(&later),
            "resuming from {resume} after line {i} ({pk:?}) brings {got:?}, not all of {later:?}: {printed:?}"
        );
    }
}

/// A cursor is opaque: one the client cannot read is passed on, and the server answers it
/// with a fallback (`recovered: false`), never an error.
#[test]
fn an_unknown_cursor_is_passed_on_and_answered_recovered_false() {
    let (_server, url) = start_server(&[]).unwrap();
    push(&url, &[1]);
    for cursor in ["garbage", "", "7", "another-store:abc"] {
        let out = run(
            client(&url, "carol", &["pull", "--cursor", cursor, "docs"]),
            "",
        );
        let pulled = json_line(&out);
        assert_eq!(pulled["recovered"], false, "{cursor:?}: {pulled}");
        assert_eq!(pulled["changes"].as_array().unwrap().len(), 1, "{pulled}");
    }
    // A subscribe too: the ack says to resynchronise.
    let mut follower = Killed(
        client(&url, "bob", &["subscribe", "--cursor", "garbage", "docs"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = Lines::of(&mut follower);
    loop {
        let line = lines.next();
        if line["subscribed"] == true {
            assert_eq!(line["resume"]["recovered"], false, "{line}");
            break;
        }
    }
}

/// A hang guard for the commands that must fail fast: far above the milliseconds they take,
/// below the client's 30 s request timeout, which they used to wait out.
const FAIL_FAST_GUARD: Duration = Duration::from_secs(20);

/// Runs a one-shot command that must fail at once: its exit code and stderr.
fn fails_fast(mut command: Command) -> (Option<i32>, String, String) {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (done, waited) = mpsc::channel();
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    let Ok(out) = waited.recv_timeout(FAIL_FAST_GUARD) else {
        let _ = Command::new("kill").arg(pid.to_string()).status();
        panic!("still waiting after {FAIL_FAST_GUARD:?}: it did not fail fast");
    };
    let out = out.unwrap();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// A local port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A pull or push that cannot connect fails at once with the reason on stderr and an exit
/// code per cause: 3 nothing listening, 5 refused by auth (401), 6 another refusal (404).
/// They used to wait out the whole request timeout and print `TIMEOUT`, stderr empty.
#[test]
fn a_one_shot_command_that_cannot_connect_fails_fast_with_the_reason() {
    let url = format!("ws://127.0.0.1:{}/sync/ws", closed_port());
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("records.json");
    std::fs::write(&records, format!("[{}]", record(1, 1))).unwrap();
    let records = records.display().to_string();
    for args in [&["pull", "docs"][..], &["push", &records]] {
        let (code, stdout, stderr) = fails_fast(client(&url, "a", args));
        assert_eq!(code, Some(3), "{args:?}: {stdout} {stderr}");
        assert!(stderr.contains(&url), "{args:?}: {stderr}");
        assert!(stderr.to_lowercase().contains("refused"), "{stderr}");
    }

    let (_server, url) = start_server(&["--token", "t0k"]).unwrap();
    let (code, _, stderr) = fails_fast(client(&url, "a", &["pull", "docs"]));
    assert_eq!(code, Some(5), "{stderr}");
    assert!(stderr.contains("401"), "{stderr}");
    let (code, _, stderr) = fails_fast(client(&url, "a", &["--token", "wrong", "pull", "docs"]));
    assert_eq!(code, Some(5), "{stderr}");
    let wrong_path = url.replace("/sync/ws", "/wrong");
    let (code, _, stderr) = fails_fast(client(
        &wrong_path,
        "a",
        &["--token", "t0k", "pull", "docs"],
    ));
    assert_eq!(code, Some(6), "{stderr}");
    assert!(stderr.contains("404"), "{stderr}");
    // And with the right token and path, the same command works.
    let out = run(client(&url, "a", &["--token", "t0k", "pull", "docs"]), "");
    json_line(&out);
}

/// A server whose certificate the client does not trust: exit 4 at once, saying so; with
/// `--ca FILE` (or `SYNCMUX_CA`) naming the certificate that signed it, the command works.
#[test]
fn an_untrusted_certificate_fails_fast_and_ca_trusts_a_private_one() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let (cert_arg, key_arg) = (
        cert_path.display().to_string(),
        key_path.display().to_string(),
    );
    let (_server, url) = start_server(&["--tls-cert", &cert_arg, "--tls-key", &key_arg]).unwrap();
    let url = url.replace("127.0.0.1", "localhost");
    assert!(url.starts_with("wss://localhost:"), "{url}");

    let (code, _, stderr) = fails_fast(client(&url, "a", &["pull", "docs"]));
    assert_eq!(code, Some(4), "{stderr}");
    assert!(stderr.contains("certificate"), "{stderr}");

    json_line(&run(
        client(&url, "a", &["--ca", &cert_arg, "pull", "docs"]),
        "",
    ));
    let mut with_env = client(&url, "a", &["pull", "docs"]);
    with_env.env("SYNCMUX_CA", &cert_arg);
    json_line(&run(with_env, ""));

    // A CA file that is not there, or holds no certificate, is the user's mistake: exit 2.
    for bad in ["/nonexistent/ca.pem", key_arg.as_str()] {
        let (code, _, stderr) = fails_fast(client(&url, "a", &["--ca", bad, "pull", "docs"]));
        assert_eq!(code, Some(2), "{bad}: {stderr}");
        assert!(stderr.contains(bad), "{stderr}");
    }
}

/// What is wrong with the user's own input is said as such, before anything is sent, with
/// exit code 2; it used to look like a server's answer (`INVALID_PAYLOAD "invalid
/// response: ..."`, exit 1).
#[test]
fn bad_local_input_is_named_and_exits_2() {
    // Nothing listens: the input is checked before connecting.
    let url = format!("ws://127.0.0.1:{}/sync/ws", closed_port());
    let mut not_json = client(&url, "a", &["push", "-"]);
    not_json.stdin(Stdio::piped());
    let out = run(not_json, "{not json");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("standard input"), "{stderr}");
    assert!(
        stderr.contains("not a JSON array of change records"),
        "{stderr}"
    );
    assert!(!text(&out.stdout).contains("INVALID_PAYLOAD"));

    let (code, stdout, stderr) = fails_fast(client(&url, "a", &["push", "/nonexistent.json"]));
    assert_eq!(code, Some(2), "{stdout} {stderr}");
    assert!(stderr.contains("/nonexistent.json"), "{stderr}");

    let (code, _, stderr) = fails_fast(client(&url, "a", &["presence", "doc-1", "{bad"]));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("not JSON"), "{stderr}");
}

/// A follower stopped by SIGTERM (a supervisor, `kill`) closes and exits 0, as on Ctrl-C; it
/// used to die by the signal (143 in a shell) with its connection dropped.
#[test]
fn a_follower_stopped_by_sigterm_closes_and_exits_0() {
    let (_server, url) = start_server(&[]).unwrap();
    let mut follower = Killed(
        client(&url, "bob", &["subscribe", "docs"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = Lines::of(&mut follower);
    while lines.next()["subscribed"] != true {}
    let status = terminate(follower);
    assert_eq!(status.code(), Some(0), "{status}");
}
