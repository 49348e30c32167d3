//! `syncmux-server` as it is deployed: flags and their environment variables
//! (errors included), the Prometheus metrics after real traffic, shutdown on SIGTERM and
//! SIGINT, static files, JSON logs; and `syncmux-cli`'s flags and variables.
//!
//! Every server listens on port 0 and the test reads the addresses it prints.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use crate::example_util;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use example_util::{example_binary, open, text, Killed, Ws};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// Long enough never to be reached on a loaded machine; only a hang reaches it.
const PATIENCE: Duration = Duration::from_secs(30);

fn binary(name: &'static str) -> PathBuf {
    static SERVER: OnceLock<PathBuf> = OnceLock::new();
    static CLIENT: OnceLock<PathBuf> = OnceLock::new();
    let cell = if name == "server" { &SERVER } else { &CLIENT };
    cell.get_or_init(|| example_binary(name)).clone()
}

/// A running `syncmux-server` and what it printed.
struct Running {
    process: Killed,
    /// `ws://127.0.0.1:PORT/sync/ws`
    url: String,
    /// `127.0.0.1:PORT` of the metrics listener, with `--metrics`.
    metrics: Option<String>,
}

impl Running {
    fn addr(&self) -> &str {
        let rest = self.url.strip_prefix("ws://").unwrap();
        rest.strip_suffix("/sync/ws").unwrap()
    }

    fn pid(&self) -> u32 {
        self.process.0.id()
    }
}

/// Starts the server with `args` and `env` (nothing inherited from the test's own
/// `SYNCMUX_*`), and reads its first lines.
fn start(args: &[&str], env: &[(&str, &str)]) -> Running {
    let mut command = Command::new(binary("server"));
    command
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut process = Killed(command.spawn().expect("start the server"));
    let mut stdout = BufReader::new(process.0.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    let metrics = if args.contains(&"--metrics") || env.iter().any(|(k, _)| *k == "SYNCMUX_METRICS")
    {
        line.clear();
        stdout.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("metrics on http://")
            .and_then(|rest| rest.strip_suffix("/metrics"))
            .unwrap_or_else(|| panic!("unexpected second line {line:?}"));
        Some(addr.to_owned())
    } else {
        None
    };
    Running {
        process,
        url,
        metrics,
    }
}

/// Runs an example to completion (it must not start serving).
fn run(name: &'static str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(binary(name));
    command.args(args).stdin(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run the example")
}

/// The next text frame, as JSON; `Err` with the close code when the server closes instead.
async fn next(ws: &mut Ws) -> Result<serde_json::Value, Option<u16>> {
    loop {
        let message = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("an answer in time");
        match message {
            Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text).unwrap()),
            Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| u16::from(f.code))),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Err(None),
        }
    }
}

/// Sends a frame and returns the first frame of type `want` (skipping others).
async fn ask(ws: &mut Ws, frame: &str, want: &str) -> serde_json::Value {
    ws.send(Message::text(frame.to_owned())).await.unwrap();
    loop {
        let answer = next(ws).await.expect("no close");
        if answer["type"] == want {
            return answer;
        }
    }
}

fn change(table: &str, pk: &str, node: &str, ts: u64, value: &str) -> String {
    format!(
        r#"{{"table":"{table}","pk":"{pk}","field":"f","crdt_type":"lww","hlc":"{ts}:0:{node}","node_id":"{node}","value":"{value}"}}"#
    )
}

fn push(id: &str, node: &str, changes: &[String]) -> String {
    format!(
        r#"{{"type":"push_request","id":"{id}","payload":{{"node_id":"{node}","changes":[{}]}}}}"#,
        changes.join(",")
    )
}

/// One HTTP/1.1 `GET` on a fresh connection ([`example_util::exchange`]): (status code,
/// content type, body).
async fn get(addr: &str, path: &str) -> (u16, String, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let (status, head, body) = example_util::exchange(addr, &request).await;
    let kind = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(": ")?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.to_owned())
        })
        .unwrap_or_default();
    (status, kind, body)
}

/// A scrape, as `name{k="v",...}` (labels sorted) -> value.
type Scrape = BTreeMap<String, f64>;

async fn scrape(addr: &str) -> Scrape {
    let (status, kind, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    assert!(kind.starts_with("text/plain"), "{kind}");
    let mut out = Scrape::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (key, value) = line.rsplit_once(' ').unwrap();
        let key = match key.split_once('{') {
            None => key.to_owned(),
            Some((name, labels)) => {
                let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                labels.sort_unstable();
                format!("{name}{{{}}}", labels.join(","))
            }
        };
        out.insert(key, value.parse().unwrap());
    }
    out
}

/// How much a series grew between two scrapes (absent counts as 0).
fn grew(before: &Scrape, after: &Scrape, key: &str) -> f64 {
    let value = |s: &Scrape| s.get(key).copied().unwrap_or(0.0);
    value(after) - value(before)
}

/// Sends `signal` (`TERM`, `INT`) to the process and waits for it to exit.
async fn signal_and_wait(server: Running, signal: &str) -> (ExitStatus, String) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(server.pid().to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal}");
    let mut process = server.process;
    let waited = tokio::task::spawn_blocking(move || {
        let status = process.0.wait().unwrap();
        let mut stderr = String::new();
        process
            .0
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        (status, stderr)
    });
    tokio::time::timeout(PATIENCE, waited)
        .await
        .expect("the server exited in time")
        .unwrap()
}

#[test]
fn every_server_flag_has_help_and_an_environment_variable() {
    let out = run("server", &["--help"], &[]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for (flag, var) in [
        ("--listen", "SYNCMUX_LISTEN"),
        ("--token", "SYNCMUX_TOKEN"),
        ("--rate-limit", "SYNCMUX_RATE_LIMIT"),
        ("--max-frame", "SYNCMUX_MAX_FRAME"),
        ("--max-outbound", "SYNCMUX_MAX_OUTBOUND"),
        ("--ping-interval", "SYNCMUX_PING_INTERVAL"),
        ("--ot-broadcast-delay", "SYNCMUX_OT_BROADCAST_DELAY"),
        ("--idle-timeout", "SYNCMUX_IDLE_TIMEOUT"),
        ("--presence-ttl", "SYNCMUX_PRESENCE_TTL"),
        ("--room-max", "SYNCMUX_ROOM_MAX"),
        ("--handshake-timeout", "SYNCMUX_HANDSHAKE_TIMEOUT"),
        ("--max-connections", "SYNCMUX_MAX_CONNECTIONS"),
        ("--tls-cert", "SYNCMUX_TLS_CERT"),
        ("--tls-key", "SYNCMUX_TLS_KEY"),
        ("--static", "SYNCMUX_STATIC"),
        ("--metrics", "SYNCMUX_METRICS"),
        ("--log-format", "SYNCMUX_LOG_FORMAT"),
        ("--shutdown-timeout", "SYNCMUX_SHUTDOWN_TIMEOUT"),
        ("--redis", "SYNCMUX_REDIS"),
        ("--redis-prefix", "SYNCMUX_REDIS_PREFIX"),
        ("--redis-retention", "SYNCMUX_REDIS_RETENTION"),
        ("--redis-min-replicas", "SYNCMUX_REDIS_MIN_REPLICAS"),
        ("--trusted-proxies", "SYNCMUX_TRUSTED_PROXIES"),
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
        assert!(help.contains(var), "{var} missing from --help:\n{help}");
    }
    // The token never shows in the help, even when set.
    let out = run("server", &["--help"], &[("SYNCMUX_TOKEN", "hunter2")]);
    assert!(!text(&out.stdout).contains("hunter2"));
}

#[test]
fn invalid_server_values_exit_2_with_a_message() {
    for (args, env, message) in [
        (
            &["--max-frame", "abc"][..],
            &[][..],
            "invalid value 'abc' for '--max-frame <BYTES>'",
        ),
        (
            &[],
            &[("SYNCMUX_MAX_FRAME", "abc")][..],
            "invalid value 'abc' for '--max-frame <BYTES>'",
        ),
        (
            &["--rate-limit", "10"],
            &[],
            "\"10\" is not N/SECS (for example 100/60) or 0",
        ),
        (
            &[],
            &[("SYNCMUX_PING_INTERVAL", "-5")],
            "invalid value '-5' for '--ping-interval <MS>'",
        ),
        (&["--tls-cert", "cert.pem"], &[], "--tls-key <PEM>"),
        (
            &["--log-format", "xml"],
            &[],
            "invalid value 'xml' for '--log-format <LOG_FORMAT>'",
        ),
        (
            &["--no-such-flag"],
            &[],
            "unexpected argument '--no-such-flag'",
        ),
        // Parsed, but a configuration the server refuses: a rate limit without a window.
        (&["--rate-limit", "5/0"], &[], "error:"),
    ] {
        let out = run("server", args, env);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?} {env:?}: {stderr}");
        assert!(
            !text(&out.stdout).contains("listening on"),
            "{args:?} started serving"
        );
    }
}

/// The variables configure the server; a flag wins over its variable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_variables_configure_the_server_and_flags_win() {
    let env = [
        ("SYNCMUX_LISTEN", "127.0.0.1:0"),
        ("SYNCMUX_TOKEN", "sekrit"),
        ("SYNCMUX_MAX_FRAME", "2000"),
    ];
    let padded = |n: usize| {
        format!(
            r#"{{"type":"ping","id":"big","payload":"{}"}}"#,
            "a".repeat(n)
        )
    };
    let server = start(&[], &env);
    assert!(server.url.starts_with("ws://127.0.0.1:"), "{}", server.url);
    assert_eq!(open(&server.url, "node_id=a").await.err(), Some(401));
    let mut ws = open(&server.url, "node_id=a&token=sekrit").await.unwrap();
    let answer = ask(&mut ws, &padded(3000), "error").await;
    assert_eq!(answer["payload"]["code"], "FRAME_TOO_LARGE", "{answer}");
    assert!(
        answer["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("maximum of 2000 bytes"),
        "{answer}"
    );
    drop(server);

    let server = start(&["--max-frame", "5000"], &env);
    let mut ws = open(&server.url, "node_id=a&token=sekrit").await.unwrap();
    let answer = ask(&mut ws, &padded(3000), "pong").await;
    assert_eq!(answer["id"], "big");
}

#[test]
fn the_client_reads_flags_and_variables_and_refuses_bad_values() {
    for (args, env, message) in [
        (
            &["pull", "docs"][..],
            &[][..],
            "the following required arguments were not provided",
        ),
        (
            &[
                "--url",
                "ws://127.0.0.1:9/sync/ws",
                "--node-id",
                "a",
                "pull",
                "--since",
                "garbage",
                "docs",
            ],
            &[],
            "invalid value 'garbage' for '--since <HLC>'",
        ),
        (
            &["pull", "docs"],
            &[
                ("SYNCMUX_URL", "ws://127.0.0.1:9/sync/ws"),
                ("SYNCMUX_NODE_ID", "a"),
                ("SYNCMUX_REQUEST_TIMEOUT", "soon"),
            ],
            "invalid value 'soon' for '--request-timeout <MS>'",
        ),
        (
            &[
                "--url",
                "http://127.0.0.1:9/",
                "--node-id",
                "a",
                "pull",
                "docs",
            ],
            &[],
            "must start with ws:// or wss://",
        ),
        (
            &[
                "--url",
                "ws://127.0.0.1:9/sync/ws",
                "--node-id",
                "a",
                "pull",
            ],
            &[],
            "<TABLE>",
        ),
    ] {
        let out = run("client", args, env);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
    let help = text(&run("client", &["--help"], &[]).stdout);
    for var in [
        "SYNCMUX_URL",
        "SYNCMUX_NODE_ID",
        "SYNCMUX_TOKEN",
        "SYNCMUX_RECONNECT_DELAY",
        "SYNCMUX_MAX_RECONNECT_DELAY",
        "SYNCMUX_PING_INTERVAL",
        "SYNCMUX_REQUEST_TIMEOUT",
    ] {
        assert!(help.contains(var), "{var} missing from --help:\n{help}");
    }

    // A pull configured by the environment alone, against a server that wants a token.
    let server = start(&["--listen", "127.0.0.1:0", "--token", "t0k"], &[]);
    let env = [
        ("SYNCMUX_URL", server.url.as_str()),
        ("SYNCMUX_NODE_ID", "env-client"),
        ("SYNCMUX_TOKEN", "t0k"),
        ("SYNCMUX_RECONNECT_DELAY", "20"),
    ];
    let out = run("client", &["pull", "docs"], &env);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", text(&out.stderr));
    let pulled: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(pulled["changes"].is_array(), "{pulled}");
}

/// Each metric moves with real traffic: sessions, handshakes (accepted, rejected by
/// status), frames in and out by type, deliveries, error frames by code, closes by code,
/// rate-limited messages, slow-consumer closes, replay sizes and store latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_real_traffic() {
    let server = start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--token",
            "t",
            "--rate-limit",
            "4/600",
            "--max-outbound",
            "4096",
        ],
        &[],
    );
    let metrics = server.metrics.clone().unwrap();
    assert_eq!(get(&metrics, "/health").await.0, 200);
    assert_eq!(get(&metrics, "/nope").await.0, 404);
    let before = scrape(&metrics).await;
    let url = &server.url;

    assert_eq!(open(url, "node_id=x").await.err(), Some(401));
    // A subscriber, and a pusher whose two changes it gets live.
    let mut sub = open(url, "node_id=sub&token=t").await.unwrap();
    ask(
        &mut sub,
        r#"{"type":"subscribe","id":"s","payload":{"tables":["docs"]}}"#,
        "ack",
    )
    .await;
    let mut pusher = open(url, "node_id=pusher&token=t").await.unwrap();
    let changes = [
        change("docs", "1", "pusher", 5, "a"),
        change("docs", "2", "pusher", 6, "b"),
    ];
    ask(&mut pusher, &push("p", "pusher", &changes), "push_response").await;
    let live = next(&mut sub).await.unwrap();
    assert_eq!(live["type"], "changes", "{live}");
    // A pull, a replay of both changes, and an invalid frame.
    let mut puller = open(url, "node_id=puller&token=t").await.unwrap();
    let pull = r#"{"type":"pull_request","id":"q","payload":{"tables":["docs"]}}"#;
    ask(&mut puller, pull, "pull_response").await;
    let replay = r#"{"type":"subscribe","id":"r","payload":{"tables":["docs"],"since":"0:0:x"}}"#;
    ask(&mut puller, replay, "ack").await;
    ask(&mut puller, "not json", "error").await;
    // Six pings where four are allowed: two refused.
    let mut abuser = open(url, "node_id=abuser&token=t").await.unwrap();
    for i in 0..6 {
        let ping = format!(r#"{{"type":"ping","id":"{i}"}}"#);
        abuser.send(Message::text(ping)).await.unwrap();
    }
    let mut refused = 0;
    for _ in 0..6 {
        let answer = next(&mut abuser).await.unwrap();
        refused += usize::from(answer["payload"]["code"] == "RATE_LIMITED");
    }
    assert_eq!(refused, 2);
    // A change bigger than the outbound bound closes its subscriber as a slow consumer.
    let mut slow = open(url, "node_id=slow&token=t").await.unwrap();
    ask(
        &mut slow,
        r#"{"type":"subscribe","id":"s","payload":{"tables":["big"]}}"#,
        "ack",
    )
    .await;
    let huge = change("big", "1", "pusher", 7, &"x".repeat(5000));
    ask(&mut pusher, &push("p2", "pusher", &[huge]), "push_response").await;
    assert_eq!(next(&mut slow).await.err(), Some(Some(4503)));
    // A session its peer closes.
    sub.close(None).await.unwrap();
    while sub.next().await.is_some() {}

    let after = scrape(&metrics).await;
    let moved = |key: &str| grew(&before, &after, key);
    assert!(
        after
            .get(r#"syncmux_sessions_open{transport="websocket"}"#)
            .copied()
            .unwrap_or(0.0)
            >= 3.0,
        "{after:#?}"
    );
    assert_eq!(
        moved(r#"syncmux_sessions_opened_total{transport="websocket"}"#),
        5.0,
        "{after:#?}"
    );
    assert_eq!(
        moved(r#"syncmux_handshakes_total{result="accepted",transport="websocket"}"#),
        5.0
    );
    assert_eq!(
        moved(r#"syncmux_handshakes_total{result="rejected",status="401",transport="websocket"}"#),
        1.0
    );
    for (kind, at_least) in [
        ("subscribe", 3.0),
        ("push_request", 2.0),
        ("pull_request", 1.0),
        ("ping", 6.0),
    ] {
        let key = format!(r#"syncmux_frames_in_total{{transport="websocket",type="{kind}"}}"#);
        assert!(moved(&key) >= at_least, "{key}: {after:#?}");
    }
    for (kind, at_least) in [
        ("ack", 3.0),
        ("push_response", 2.0),
        ("pull_response", 1.0),
        ("changes", 2.0),
        ("pong", 4.0),
        ("error", 3.0),
    ] {
        let key = format!(r#"syncmux_frames_out_total{{transport="websocket",type="{kind}"}}"#);
        assert!(moved(&key) >= at_least, "{key}: {after:#?}");
    }
    assert_eq!(
        moved(r#"syncmux_deliveries_total{transport="websocket"}"#),
        1.0,
        "{after:#?}"
    );
    for (key, want) in [
        (
            r#"syncmux_error_frames_total{code="RATE_LIMITED",transport="websocket"}"#,
            2.0,
        ),
        (
            r#"syncmux_error_frames_total{code="INVALID_FRAME",transport="websocket"}"#,
            1.0,
        ),
        (r#"syncmux_rate_limited_total{transport="websocket"}"#, 2.0),
        (
            r#"syncmux_closes_total{code="4503",transport="websocket"}"#,
            1.0,
        ),
        (
            r#"syncmux_slow_consumer_closes_total{transport="websocket"}"#,
            1.0,
        ),
        (r#"syncmux_peer_closes_total{transport="websocket"}"#, 1.0),
        // Three subscribes: two start at the head (no change replayed), one replays both.
        (
            r#"syncmux_replay_changes_count{transport="websocket"}"#,
            3.0,
        ),
        (r#"syncmux_replay_changes_sum{transport="websocket"}"#, 2.0),
        (
            r#"syncmux_replay_changes_bucket{le="0",transport="websocket"}"#,
            2.0,
        ),
        (
            r#"syncmux_replay_changes_bucket{le="10",transport="websocket"}"#,
            3.0,
        ),
        (
            r#"syncmux_store_seconds_count{op="push",transport="websocket"}"#,
            2.0,
        ),
        (
            r#"syncmux_store_seconds_count{op="pull",transport="websocket"}"#,
            1.0,
        ),
        (
            r#"syncmux_store_seconds_count{op="replay",transport="websocket"}"#,
            3.0,
        ),
    ] {
        assert_eq!(moved(key), want, "{key}: {after:#?}");
    }
    assert!(moved(r#"syncmux_store_seconds_sum{op="push",transport="websocket"}"#) > 0.0);

    // An SSE stream and an HTTP pull: their metrics carry their transport.
    let addr = server.addr().to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = "GET /sync/stream?tables=docs&token=t HTTP/1.1\r\nHost: x\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut read = Vec::new();
    while !text(&read).contains("\n\n") {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await;
        let n = n.unwrap().unwrap();
        assert!(n > 0, "{}", text(&read));
        read.extend_from_slice(&buf[..n]);
    }
    let json = ["Content-Type: application/json", "Authorization: Bearer t"];
    let pull = r#"{"tables":["docs"],"node_id":"grove"}"#;
    let (status, _, body) = http(&addr, "POST", "/sync/pull", &json, pull).await;
    assert_eq!(status, 200, "{body}");
    let mid = after;
    let after = scrape(&metrics).await;
    let moved = |key: &str| grew(&mid, &after, key);
    for transport in ["sse", "http"] {
        let opened = format!(r#"syncmux_sessions_opened_total{{transport="{transport}"}}"#);
        assert_eq!(moved(&opened), 1.0, "{after:#?}");
        let accepted =
            format!(r#"syncmux_handshakes_total{{result="accepted",transport="{transport}"}}"#);
        assert_eq!(moved(&accepted), 1.0, "{after:#?}");
    }
    assert_eq!(
        after.get(r#"syncmux_sessions_open{transport="sse"}"#),
        Some(&1.0),
        "the stream is open: {after:#?}"
    );
    let subscribes = r#"syncmux_frames_in_total{transport="sse",type="subscribe"}"#;
    assert_eq!(moved(subscribes), 1.0, "{after:#?}");
    let pulled = r#"syncmux_frames_out_total{transport="http",type="pull_response"}"#;
    assert_eq!(moved(pulled), 1.0, "{after:#?}");
    let timed = r#"syncmux_store_seconds_count{op="pull",transport="http"}"#;
    assert_eq!(moved(timed), 1.0, "{after:#?}");
    let websocket = r#"syncmux_frames_out_total{transport="websocket",type="pull_response"}"#;
    assert_eq!(moved(websocket), 0.0, "not the WebSocket's");
}

/// Opens three sync sessions and an `/ot` one (on plain TCP it runs on the OT endpoint's own
/// thread; with static files on the workers), sends `signal`, and checks each gets a 1001
/// close and the process exits 0.
async fn closes_every_session_on(signal: &str, extra: &[&str]) -> String {
    let mut args = vec!["--listen", "127.0.0.1:0", "--log-format", "json"];
    args.extend_from_slice(extra);
    let server = start(&args, &[("RUST_LOG", "info")]);
    let mut sessions = Vec::new();
    for i in 0..3 {
        let mut ws = open(&server.url, &format!("node_id=n{i}")).await.unwrap();
        ask(&mut ws, r#"{"type":"ping","id":"1"}"#, "pong").await;
        sessions.push(ws);
    }
    let ot_url = format!("ws://{}/ot", server.addr());
    let (mut ot, _) = tokio_tungstenite::connect_async(ot_url).await.unwrap();
    let op = r#"{"type":"op","op":[{"i":"x"}],"revision":0}"#;
    ot.send(Message::text(op)).await.unwrap();
    assert_eq!(
        next(&mut ot).await,
        Ok(serde_json::json!({"type": "ack", "revision": 1}))
    );
    sessions.push(ot);
    let (status, stderr) = signal_and_wait(server, signal).await;
    for mut ws in sessions {
        loop {
            match next(&mut ws).await {
                Ok(_) => continue,
                Err(code) => {
                    assert_eq!(code, Some(1001), "{signal}");
                    break;
                }
            }
        }
    }
    assert!(status.success(), "{signal}: {status}\n{stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_every_session_with_1001_and_exits_0() {
    let stderr = closes_every_session_on("TERM", &[]).await;
    // `--log-format json`: every log line is a JSON object, the shutdown's included.
    let mut shutdown = false;
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let entry: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert!(entry["level"].is_string(), "{line}");
        let message = entry["fields"]["message"].as_str().unwrap_or_default();
        shutdown |= message.starts_with("shutting down") && entry["fields"]["signal"] == "SIGTERM";
    }
    assert!(shutdown, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_closes_every_session_with_1001_and_exits_0_with_static_files_too() {
    let dir = std::env::temp_dir().join(format!("syncmux-sigint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dir_arg = dir.display().to_string();
    closes_every_session_on("INT", &["--static", &dir_arg]).await;
    std::fs::remove_dir_all(dir).unwrap();
}

/// `--static DIR` through the real binary: types by extension (`.wasm` as
/// `application/wasm`), the npm package's files, and nothing outside DIR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_files_have_their_types_and_stay_inside_the_directory() {
    let base = std::env::temp_dir().join(format!("syncmux-files-{}", std::process::id()));
    let dir = base.join("www");
    let package = dir.join("node_modules/syncmux");
    std::fs::create_dir_all(&package).unwrap();
    std::fs::write(dir.join("index.html"), "<h1>demo</h1>").unwrap();
    std::fs::write(dir.join("style.css"), "h1 {}").unwrap();
    std::fs::write(package.join("syncmux.js"), "export default 1;").unwrap();
    std::fs::write(package.join("syncmux_bg.wasm"), b"\0asm\x01\0\0\0").unwrap();
    std::fs::write(package.join("package.json"), "{}").unwrap();
    std::fs::write(base.join("secret.txt"), "top secret").unwrap();
    let dir_arg = dir.display().to_string();
    let server = start(&["--listen", "127.0.0.1:0", "--static", &dir_arg], &[]);
    let addr = server.addr();

    let (status, kind, body) = get(addr, "/").await;
    assert_eq!((status, body.as_str()), (200, "<h1>demo</h1>"));
    assert!(kind.starts_with("text/html"), "{kind}");
    for (path, want) in [
        ("/style.css", "text/css"),
        ("/node_modules/syncmux/syncmux.js", "text/javascript"),
        ("/node_modules/syncmux/syncmux_bg.wasm", "application/wasm"),
        ("/node_modules/syncmux/package.json", "application/json"),
    ] {
        let (status, kind, _) = get(addr, path).await;
        assert_eq!(status, 200, "{path}");
        assert!(kind.starts_with(want), "{path}: {kind}");
    }
    for escape in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
        "/node_modules/../../secret.txt",
        "/missing.js",
    ] {
        let (status, _, body) = get(addr, escape).await;
        assert_eq!(status, 404, "{escape}: {body}");
        assert!(!body.contains("top secret"), "{escape}");
    }
    // The sync path on the same port is still the WebSocket.
    let mut ws = open(&server.url, "node_id=web").await.unwrap();
    ask(&mut ws, r#"{"type":"ping","id":"1"}"#, "pong").await;
    drop(server);
    std::fs::remove_dir_all(base).unwrap();
}

/// One HTTP/1.1 request with `headers` and `body` on a connection of its own
/// ([`example_util::exchange`]): the status, the head lower-cased, the body.
async fn http(
    addr: &str,
    method: &str,
    target: &str,
    headers: &[&str],
    body: &str,
) -> (u16, String, String) {
    let mut request = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request.push_str(body);
    let (status, head, body) = example_util::exchange(addr, &request).await;
    (status, head.to_ascii_lowercase(), body)
}

/// Grove's HTTP transport (`POST /sync/push`, `POST /sync/pull`) as its `HTTPClient` sends
/// it: the node named in the body (none in the query), Grove's HLC objects, its selective
/// sync filter; answers with Grove's fields; errors as a status with `{"error","code"}`.
#[tokio::test]
async fn grove_http_push_and_pull_answer_as_grove_expects() {
    let flags = [
        "--listen",
        "127.0.0.1:0",
        "--max-frame",
        "2048",
        "--handshake-timeout",
        "500",
    ];
    let server = start(&flags, &[]);
    let addr = server.addr().to_owned();
    let json = ["Content-Type: application/json"];
    let record = |pk: &str, field: &str, ts: u64| {
        format!(
            r#"{{"table":"docs","pk":"{pk}","field":"{field}","crdt_type":"lww","hlc":{{"ts":{ts},"c":0,"node":"grove-a"}},"node_id":"grove-a","value":"v"}}"#
        )
    };
    let push = format!(
        r#"{{"changes":[{},{},{}],"node_id":"grove-a"}}"#,
        record("1", "title", 1),
        record("1", "body", 2),
        record("2", "title", 3)
    );
    let (status, head, body) = http(&addr, "POST", "/sync/push", &json, &push).await;
    assert_eq!(status, 200, "{body}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["merged"], 3, "{answer}");
    assert_eq!(answer["latest_hlc"]["ts"], 3, "{answer}");

    let pull = r#"{"tables":["docs"],"since":{"ts":0,"c":0,"node":""},"node_id":"grove-b","filter":{"pk_filter":["1"],"field_filter":["title"]}}"#;
    let (status, _, body) = http(&addr, "POST", "/sync/pull", &json, pull).await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let changes = answer["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{answer}");
    assert_eq!(
        (&changes[0]["pk"], &changes[0]["field"]),
        (&"1".into(), &"title".into())
    );
    assert_eq!(answer["latest_hlc"]["ts"], 3, "of the whole read: {answer}");

    // Errors: a status and {"error","code"}.
    let error = |body: &str| -> serde_json::Value { serde_json::from_str(body).unwrap() };
    let (status, _, body) = http(&addr, "POST", "/sync/pull", &json, "{not json").await;
    assert_eq!(status, 400);
    assert_eq!(error(&body)["code"], "INVALID_PAYLOAD", "{body}");
    let (status, _, body) = http(&addr, "POST", "/sync/pull", &json, r#"{"tables":"docs"}"#).await;
    assert_eq!(status, 400);
    assert_eq!(error(&body)["code"], "INVALID_PAYLOAD", "{body}");
    let (status, _, body) = http(&addr, "POST", "/sync/push?node_id=other", &json, &push).await;
    assert_eq!(status, 403, "another node's changes");
    assert_eq!(error(&body)["code"], "FORBIDDEN", "{body}");
    let big = format!(r#"{{"tables":["{}"]}}"#, "x".repeat(4096));
    let (status, _, body) = http(&addr, "POST", "/sync/pull", &json, &big).await;
    assert_eq!(status, 413);
    assert_eq!(error(&body)["code"], "FRAME_TOO_LARGE", "{body}");
    let (status, head, _) = http(&addr, "GET", "/sync/pull", &[], "").await;
    assert_eq!(status, 405);
    assert!(head.contains("allow: post"), "{head}");

    // A body that never ends is dropped at the handshake deadline, unanswered.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = "POST /sync/pull HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"tables\"";
    slow.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(PATIENCE, slow.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "still open");
    assert!(answer.is_empty(), "{}", text(&answer));

    // Auth as on the WebSocket.
    let secured = start(&["--listen", "127.0.0.1:0", "--token", "s3cret"], &[]);
    let addr = secured.addr().to_owned();
    let pull = r#"{"tables":["docs"],"node_id":"grove-b"}"#;
    let (status, _, body) = http(&addr, "POST", "/sync/pull", &json, pull).await;
    assert_eq!(status, 401);
    assert_eq!(error(&body)["code"], "UNAUTHORIZED", "{body}");
    let bearer = [
        "Content-Type: application/json",
        "Authorization: Bearer s3cret",
    ];
    let (status, _, body) = http(&addr, "POST", "/sync/pull", &bearer, pull).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = http(&addr, "POST", "/sync/pull?token=s3cret", &json, pull).await;
    assert_eq!(status, 200);
}

/// Grove's requests are a session each, so the session's rate limit would never apply: they
/// are limited per client address instead, with the same burst per window (`--rate-limit`),
/// and answered 429 with `RATE_LIMITED` and the seconds until the next one goes through.
/// Another server's limit (none) lets every request through.
#[tokio::test]
async fn grove_http_requests_are_rate_limited_per_client() {
    let server = start(&["--listen", "127.0.0.1:0", "--rate-limit", "3/600"], &[]);
    let addr = server.addr().to_owned();
    let json = ["Content-Type: application/json"];
    let pull = r#"{"tables":["docs"],"node_id":"grove"}"#;
    for _ in 0..2 {
        let (status, _, body) = http(&addr, "POST", "/sync/pull", &json, pull).await;
        assert_eq!(status, 200, "{body}");
    }
    let presence = r#"{"node_id":"grove","topic":"t","data":{"x":1}}"#;
    let (status, _, body) = http(&addr, "POST", "/sync/presence", &json, presence).await;
    assert_eq!(status, 200, "presence counts too: {body}");
    let (status, head, body) = http(&addr, "POST", "/sync/pull", &json, pull).await;
    assert_eq!(status, 429, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["code"], "RATE_LIMITED", "{body}");
    // One request per 200 s comes back: the wait is about that long.
    let retry = head
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .map(|v| v.trim().parse::<u64>().unwrap());
    assert!(retry.is_some_and(|s| (150..=200).contains(&s)), "{head}");

    // Behind a trusted proxy, each forwarded client has its own bucket; from an untrusted
    // peer the header is ignored.
    let flags = ["--listen", "127.0.0.1:0", "--rate-limit", "2/600"];
    let proxied = start(
        &[&flags[..], &["--trusted-proxies", "127.0.0.0/8"]].concat(),
        &[],
    );
    let direct = start(&flags, &[]);
    for (server, third) in [(&proxied, 200), (&direct, 429)] {
        let from = |client: &str| {
            let header = format!("X-Forwarded-For: {client}");
            ["Content-Type: application/json".to_owned(), header]
        };
        for client in ["203.0.113.1", "203.0.113.1", "203.0.113.2"] {
            let headers = from(client);
            let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
            let (status, _, body) = http(server.addr(), "POST", "/sync/pull", &headers, pull).await;
            let want = if client.ends_with(".2") { third } else { 200 };
            assert_eq!(status, want, "{client}: {body}");
        }
    }

    let unlimited = start(&["--listen", "127.0.0.1:0", "--rate-limit", "0"], &[]);
    for _ in 0..10 {
        let (status, _, body) = http(unlimited.addr(), "POST", "/sync/pull", &json, pull).await;
        assert_eq!(status, 200, "{body}");
    }
}
