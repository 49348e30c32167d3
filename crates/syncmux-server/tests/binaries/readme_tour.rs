//! The README's quick tour, run as written: every command of its `sh` block goes through
//! `sh`, with `$C` pointing at this build's `syncmux-cli` and a server on a free port instead
//! of `cargo run` and port 8787, and `CURSOR` replaced by the cursor the tour's first pull
//! printed. Each must succeed and print what the README's comment says it prints, so the
//! README cannot drift from the binaries.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use crate::example_util;

use std::process::{Command, Stdio};

use example_util::{example_binary, start_server, terminate, Killed, Lines};
use serde_json::Value;

const README: &str = include_str!("../../../../README.md");

/// The commands of the quick tour's `sh` block, continuation lines joined, comments dropped.
fn tour() -> Vec<String> {
    let start = README
        .find("## A quick tour with the command-line client")
        .expect("the README has its quick tour");
    let block = &README[start..];
    let block = &block[block.find("```sh\n").expect("an sh block") + 6..];
    let block = &block[..block.find("```").unwrap()];
    let mut commands = Vec::new();
    let mut pending = String::new();
    for line in block.lines() {
        let line = line.trim_end();
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            continue;
        }
        pending.push_str(line);
        // A trailing comment (two spaces and `#`) is not part of the command.
        let command = match pending.find("  #") {
            Some(at) => pending[..at].trim().to_owned(),
            None => pending.trim().to_owned(),
        };
        commands.push(command);
        pending.clear();
    }
    commands
}

#[test]
fn the_readme_quick_tour_runs_as_written() {
    let commands = tour();
    let (_server, url) = start_server(&[]).unwrap();
    let client = example_binary("client");
    // `C=...` is the README's; ours is the same client on this test's server.
    let (define, commands) = commands.split_first().unwrap();
    assert!(
        define.starts_with("C=")
            && define.contains("--bin syncmux-cli")
            && define.contains("--url ws://127.0.0.1:8787/sync/ws"),
        "the tour's first line defines $C: {define}"
    );
    let c = format!("{} --url {url}", client.display());
    let sh = |command: &str| {
        let mut sh = Command::new("sh");
        sh.args(["-c", &format!("exec {command}")])
            .env("C", &c)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SYNCMUX_") {
                sh.env_remove(key);
            }
        }
        sh
    };

    let mut cursor: Option<String> = None;
    let mut followers = Vec::new();
    let mut checked = Vec::new();
    for command in commands {
        let command = match &cursor {
            Some(cursor) => command.replace("CURSOR", cursor),
            None => command.clone(),
        };
        assert!(
            !command.contains("CURSOR"),
            "no cursor printed yet: {command}"
        );
        let (command, background) = match command.strip_suffix('&') {
            Some(head) => (head.trim().to_owned(), true),
            None => (command, false),
        };
        let words: Vec<&str> = command.split_whitespace().collect();
        let sub = words
            .iter()
            .position(|w| ["pull", "push", "subscribe", "presence", "room"].contains(w))
            .map(|at| words[at].to_owned())
            .unwrap_or_else(|| panic!("not a client command: {command}"));
        let sub = sub.as_str();
        if command.contains('|') {
            // `echo ... | $C ... push -`: the whole pipeline, through sh.
            let out = Command::new("sh")
                .args(["-c", &command])
                .env("C", &c)
                .output()
                .unwrap();
            assert!(out.status.success(), "{command}: {out:?}");
            let pushed: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(pushed["merged"], 1, "{command}: {pushed}");
            checked.push(sub.to_owned());
            // The follower started before it prints the change.
            for (lines, _) in &followers {
                let lines: &Lines = lines;
                lines.until("with the pushed change", |v| v.get("change").is_some());
            }
            continue;
        }
        let mut process = Killed(sh(&command).spawn().unwrap());
        let lines = Lines::of(&mut process);
        match sub {
            "subscribe" => {
                let ack = lines.until("subscribed", |v| v["subscribed"] == true);
                assert_eq!(ack["resume"]["recovered"], true, "{command}: {ack}");
                if background {
                    followers.push((lines, process));
                } else {
                    assert_eq!(terminate(process).code(), Some(0), "{command}");
                }
            }
            "presence" => {
                let snapshot = lines.until("with the snapshot", |v| v.get("states").is_some());
                assert_eq!(
                    snapshot["states"].as_array().unwrap().len(),
                    1,
                    "{snapshot}"
                );
                assert_eq!(terminate(process).code(), Some(0), "{command}");
            }
            _ => {
                let first = lines.until("with the answer", |_| true);
                let status = process.0.wait().unwrap();
                assert!(status.success(), "{command}: {status} {first}");
                assert!(first.get("error").is_none(), "{command}: {first}");
                if sub == "pull" {
                    assert!(first["changes"].is_array(), "{command}: {first}");
                    let printed = first["cursor"].as_str().expect("a pull prints its cursor");
                    if cursor.is_none() {
                        assert_eq!(first["changes"].as_array().unwrap().len(), 1, "{first}");
                        cursor = Some(printed.to_owned());
                    } else {
                        assert_eq!(first["recovered"], true, "{command}: {first}");
                    }
                }
                if sub == "room" {
                    assert_eq!(first["sent"], "hello", "{command}: {first}");
                }
            }
        }
        checked.push(sub.to_owned());
    }
    for (_, process) in followers {
        assert_eq!(terminate(process).code(), Some(0));
    }
    checked.sort_unstable();
    checked.dedup();
    assert_eq!(
        checked,
        ["presence", "pull", "push", "room", "subscribe"],
        "the tour shows every command"
    );
}
