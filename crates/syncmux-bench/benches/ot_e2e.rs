//! The OT profile end to end over real sockets: acked ops per second, the
//! server's CPU per acked op, and the time an op takes from its sender to the other clients
//! (median and 99th percentile), with 5 concurrent clients, one op in flight each, every op
//! sent on to the 4 others. The server is `syncmux-server` (`/ot`, built with this bench's
//! profile; as deployed, then with `TOKIO_WORKER_THREADS=1`, then with
//! `--ot-broadcast-delay 0`, every op sent on at once, against the default 1 ms; and as
//! deployed with its 5 clients on the HTTP + SSE transport instead, `GET /ot/events` and a
//! `POST /ot/messages` per op, against the 5 WebSocket clients) and, when
//! `node` and the server crate's `tests/node/node_modules/ws` are there, in the same run, the baseline: a
//! minimal Node server built the seed's way (`tests/node/ot_seed_server.mjs`).
//!
//! ```text
//! cargo bench -p syncmux-bench --bench ot_e2e              # OT_BENCH_SECS=5 by default
//! ```
//!
//! With `--features redis` and `redis-server` on the PATH, the same run also measures
//! the server with `--redis` (every op committed by the Lua script and published),
//! reporting Redis' CPU per op too, and the ratios to the in-memory server:
//!
//! ```text
//! cargo bench -p syncmux-bench --features redis --bench ot_e2e
//! ```
//!
//! `OT_BENCH_URL=ws://ADDR/ot OT_BENCH_PID=PID` drives a server already running instead (to
//! profile it, or to measure another implementation).
//!
//! Each client is a bare tokio-tungstenite connection running the seed's client loop on the
//! seed's wire (no extension): it keeps the text, edits it (one character inserted or,
//! past 16 characters, deleted, at a varying place), sends the op at its revision, and
//! meanwhile transforms the others' ops against its op in flight, as open-ot's client does.
//! Most ops cross others and are transformed on the server too; the text stays short, so
//! apply costs the same at the end as at the start. The server's CPU is `utime + stime` from
//! `/proc/PID/stat` (all its threads) over the measured window, after a warm-up; the
//! clients' own CPU is not counted. Not a criterion bench: one long window per server is what
//! a CPU-per-op figure needs (the clock tick is 10 ms).

// A benchmark measures wall time; the core never reads a clock.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use syncmux::ot::{Side, TextOp};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

// `syncmux-server` built and started as a user starts it (shared with the HTTP bench).
#[path = "support/dial.rs"]
mod dial;
#[path = "support/server.rs"]
mod server;
use server::{example_server, start, Server};

const CLIENTS: usize = 5;
const WARM_UP: Duration = Duration::from_secs(1);

/// The server crate, whose tests hold the Node packages.
fn server_crate() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../syncmux-server")
}

/// CPU seconds (user + system, every thread) the process used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let (user, system) = cpu_split(pid);
    user + system
}

/// CPU seconds in user space and in the kernel (every thread) the process used so far.
fn cpu_split(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // After the command name in parentheses: field 3 (state) onwards; utime and stime are
    // fields 14 and 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = clock_ticks();
    (
        fields[11].parse::<f64>().expect("utime") / tick,
        fields[12].parse::<f64>().expect("stime") / tick,
    )
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// One client: an edit at its revision, its ack awaited while the others' ops are applied,
/// until `stop`.
async fn client(url: String, seed: u64, shared: Arc<Shared>) {
    let mut link = Link::open(&url, shared.sse).await;
    // Every client is a member before anyone edits: none misses an op.
    shared.connected.wait().await;
    let (mut doc, mut revision, mut rng) = (String::new(), 0u64, seed);
    // When this client sent the ops acked to it, and when it received the others', by
    // revision, in the measured window: the ops' latency from sender to receiver.
    let (mut sent, mut received) = (Vec::new(), Vec::new());
    while !shared.stop.load(Ordering::Relaxed) {
        // xorshift: a varying place per edit.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let len = doc.len() as u64; // ASCII only: bytes are UTF-16 units
        let mut mine = if len > 16 {
            TextOp::new().retain(rng % len).delete(1)
        } else {
            TextOp::new().retain(rng % (len + 1)).insert("x")
        };
        doc = mine.apply(&doc).expect("a valid edit");
        let frame = format!(
            r#"{{"type":"op","op":{},"revision":{revision}}}"#,
            mine.to_json()
        );
        let sent_at = Instant::now();
        link.send(frame).await;
        let measured = shared.measuring.load(Ordering::Relaxed);
        loop {
            let text = link.next().await;
            let mut frame: serde_json::Value = serde_json::from_str(&text).expect("JSON");
            let at = frame["revision"]
                .as_u64()
                .unwrap_or_else(|| panic!("{text}"));
            assert_eq!(at, revision + 1, "{text}");
            revision = at;
            match frame["type"].as_str() {
                Some("ack") => {
                    if measured {
                        sent.push((at, sent_at));
                    }
                    break;
                }
                Some("op") => {
                    if measured {
                        received.push((at, Instant::now()));
                    }
                    // The server put this op before ours (ours on its right side).
                    let theirs = TextOp::from_json(frame["op"].take()).expect("an op");
                    doc = theirs
                        .transform(&mine, Side::Left)
                        .apply(&doc)
                        .expect("applies");
                    mine = mine.transform(&theirs, Side::Right);
                }
                _ => panic!("unexpected {text}"),
            }
        }
        shared.acked.fetch_add(1, Ordering::Relaxed);
    }
    let mut times = shared.times.lock().expect("times");
    times.0.extend(sent);
    times.1.extend(received);
}

/// A client's connection to `/ot`: a WebSocket, or (`sse`) the OT profile's HTTP + SSE
/// transport, `GET /ot/events` and a `POST /ot/messages` per op (a connection each, as the
/// server keeps none alive), its ack read from the stream.
enum Link {
    Ws(tokio_tungstenite::WebSocketStream<TcpStream>),
    Sse {
        events: tokio::io::BufReader<TcpStream>,
        addr: String,
        cookie: String,
    },
}

impl Link {
    async fn open(url: &str, sse: bool) -> Link {
        let addr = dial::host(url);
        let tcp = dial::tcp(addr).await;
        if !sse {
            let (ws, _) = tokio_tungstenite::client_async(url, tcp)
                .await
                .expect("handshake");
            return Link::Ws(ws);
        }
        let mut events = tokio::io::BufReader::new(tcp);
        let request = format!("GET /ot/events HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        events.write_all(request.as_bytes()).await.expect("request");
        let mut cookie = None;
        loop {
            let mut line = String::new();
            events.read_line(&mut line).await.expect("head");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some(value) = line.strip_prefix("Set-Cookie: ") {
                cookie = value.split(';').next().map(str::to_owned);
            }
        }
        let mut link = Link::Sse {
            events,
            addr: addr.to_owned(),
            cookie: cookie.expect("the stream's cookie"),
        };
        let init = link.next().await;
        assert!(init.starts_with(r#"{"type":"init""#), "{init}");
        link
    }

    async fn send(&mut self, frame: String) {
        match self {
            Link::Ws(ws) => ws.send(Message::text(frame)).await.expect("send"),
            Link::Sse { addr, cookie, .. } => {
                let mut tcp = dial::tcp(addr).await;
                let request = format!(
                    "POST /ot/messages HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\n\
                     Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{frame}",
                    frame.len()
                );
                tcp.write_all(request.as_bytes()).await.expect("post");
                let mut answer = Vec::new();
                tcp.read_to_end(&mut answer).await.expect("answer");
                assert!(
                    answer.starts_with(b"HTTP/1.1 202"),
                    "{}",
                    String::from_utf8_lossy(&answer)
                );
            }
        }
    }

    /// The next frame from the server.
    async fn next(&mut self) -> String {
        match self {
            Link::Ws(ws) => loop {
                if let Message::Text(text) = ws.next().await.expect("open").expect("read") {
                    return text.to_string();
                }
            },
            // The next unnamed event's data (the stream's `event: session` is skipped).
            Link::Sse { events, .. } => {
                let (mut data, mut named) = (None, false);
                loop {
                    let mut line = String::new();
                    let n = events.read_line(&mut line).await.expect("event");
                    assert!(n > 0, "the stream ended");
                    let line = line.trim_end();
                    if line.is_empty() {
                        match data.take() {
                            Some(data) if !named => return data,
                            _ => named = false,
                        }
                    } else if let Some(value) = line.strip_prefix("data: ") {
                        data = Some(value.to_owned());
                    } else if line.starts_with("event:") {
                        named = true;
                    }
                }
            }
        }
    }
}

/// What the clients of one run share.
struct Shared {
    /// The clients use the HTTP + SSE transport.
    sse: bool,
    connected: tokio::sync::Barrier,
    acked: AtomicU64,
    stop: AtomicBool,
    /// The measured window is on: the clients note when ops leave and arrive.
    measuring: AtomicBool,
    /// Every client's (revision, sent at) of its acked ops and (revision, received at) of
    /// the others', once they stopped.
    times: Mutex<(Times, Times)>,
}

/// Ops by revision, and when one was sent or received.
type Times = Vec<(u64, Instant)>;

/// The median and 99th percentile, in µs, of the time from an op's send to its arrival at
/// each other client (ops sent in the measured window).
fn latency(times: &(Times, Times)) -> Option<(f64, f64)> {
    let sent: std::collections::HashMap<u64, Instant> = times.0.iter().copied().collect();
    let mut micros: Vec<f64> = times
        .1
        .iter()
        .filter_map(|(revision, at)| {
            let from = sent.get(revision)?;
            Some(at.saturating_duration_since(*from).as_secs_f64() * 1e6)
        })
        .collect();
    if micros.is_empty() {
        return None;
    }
    micros.sort_by(f64::total_cmp);
    let at = |q: f64| micros[((micros.len() - 1) as f64 * q) as usize];
    Some((at(0.5), at(0.99)))
}

/// What one server did in the measured window.
struct Figures {
    ops_per_second: f64,
    cpu_micros_per_op: f64,
    cpu_share: f64,
    /// CPU per op of the other process measured (Redis), if any.
    other_micros_per_op: Option<f64>,
}

fn measure(name: &str, server: &Server, window: Duration) -> Figures {
    measure_with(name, server, None, false, window)
}

fn measure_with(
    name: &str,
    server: &Server,
    other: Option<u32>,
    sse: bool,
    window: Duration,
) -> Figures {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let shared = Arc::new(Shared {
        sse,
        connected: tokio::sync::Barrier::new(CLIENTS),
        acked: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        measuring: AtomicBool::new(false),
        times: Mutex::default(),
    });
    let (acked, stop) = (&shared.acked, &shared.stop);
    let pid = server.pid;
    rt.block_on(async {
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let seed = 0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1);
                tokio::spawn(client(server.url.clone(), seed, shared.clone()))
            })
            .collect();
        tokio::time::sleep(WARM_UP).await;
        shared.measuring.store(true, Ordering::Relaxed);
        let other0 = other.map(cpu_seconds);
        let (ops0, (user0, sys0), t0) = (
            acked.load(Ordering::Relaxed),
            cpu_split(pid),
            Instant::now(),
        );
        tokio::time::sleep(window).await;
        let (ops1, (user1, sys1), t1) = (
            acked.load(Ordering::Relaxed),
            cpu_split(pid),
            Instant::now(),
        );
        let (cpu0, cpu1) = (user0 + sys0, user1 + sys1);
        let other1 = other.map(cpu_seconds);
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.await.expect("client");
        }
        let ops = (ops1 - ops0) as f64;
        let elapsed = (t1 - t0).as_secs_f64();
        let figures = Figures {
            ops_per_second: ops / elapsed,
            cpu_micros_per_op: (cpu1 - cpu0) * 1e6 / ops,
            cpu_share: (cpu1 - cpu0) / elapsed,
            other_micros_per_op: other0.zip(other1).map(|(a, b)| (b - a) * 1e6 / ops),
        };
        println!(
            "ot e2e {name}: {:.1} µs server CPU per acked op (user {:.1}, kernel {:.1}), \
             {:.0} acked ops/s ({:.0}% of a core; {CLIENTS} clients, one op in flight each, \
             {ops} ops in {elapsed:.1} s)",
            figures.cpu_micros_per_op,
            (user1 - user0) * 1e6 / ops,
            (sys1 - sys0) * 1e6 / ops,
            figures.ops_per_second,
            figures.cpu_share * 100.0,
        );
        if let Some(other) = figures.other_micros_per_op {
            println!("ot e2e {name}: {other:.1} µs redis-server CPU per acked op");
        }
        if let Some((median, p99)) = latency(&shared.times.lock().expect("times")) {
            println!(
                "ot e2e {name}: an op reaches the other clients in {median:.0} µs \
                 (median), {p99:.0} µs (99th percentile)"
            );
        }
        figures
    })
}

fn node_baseline() -> Option<Command> {
    let script = server_crate().join("tests/node/ot_seed_server.mjs");
    let ws = server_crate().join("tests/node/node_modules/ws/package.json");
    let node = Command::new("node").arg("--version").output();
    if !ws.exists() || !node.is_ok_and(|o| o.status.success()) {
        println!(
            "ot e2e node: skipped (needs node and `npm install --prefix crates/syncmux-server/tests/node --no-audit --no-fund`)"
        );
        return None;
    }
    let mut command = Command::new("node");
    command.arg(script);
    Some(command)
}

/// A `redis-server` on a free port, killed when dropped; `None` without one.
fn redis_server() -> Option<Server> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .ok()?
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let server = Server {
        pid: child.id(),
        child: Some(child),
        url: format!("redis://127.0.0.1:{port}"),
    };
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(server);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    None
}

/// The server with `--redis`: CPU per op of the server and of Redis, and the ratios
/// to the in-memory server measured in the same run.
fn on_redis(binary: &Path, memory: &Figures, window: Duration) {
    let Some(redis) = redis_server() else {
        println!("ot e2e redis: skipped (no redis-server on the PATH)");
        return;
    };
    let mut command = Command::new(binary);
    command
        .args([
            "--listen",
            "127.0.0.1:0",
            "--rate-limit",
            "0",
            "--redis",
            &redis.url,
        ])
        .env("RUST_LOG", "warn")
        .env_remove("TOKIO_WORKER_THREADS");
    let server = start(command, "ot on ");
    let figures = measure_with("syncmux on redis", &server, Some(redis.pid), false, window);
    println!(
        "ot e2e redis / memory: {:.2}x server CPU per acked op, {:.2}x acked ops/s",
        figures.cpu_micros_per_op / memory.cpu_micros_per_op,
        figures.ops_per_second / memory.ops_per_second,
    );
}

fn main() {
    let secs = std::env::var("OT_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let window = Duration::from_secs_f64(secs);
    if let (Ok(url), Ok(pid)) = (std::env::var("OT_BENCH_URL"), std::env::var("OT_BENCH_PID")) {
        let pid = pid.parse().expect("OT_BENCH_PID is a process id");
        let server = Server {
            child: None,
            pid,
            url,
        };
        measure("external", &server, window);
        return;
    }
    let binary = example_server();
    // `sse`: the clients on the HTTP + SSE transport.
    let syncmux = |workers: Option<&str>, flags: &[&str], sse: bool| {
        let mut command = Command::new(&binary);
        command
            .args(["--listen", "127.0.0.1:0", "--rate-limit", "0"])
            .args(flags)
            .env("RUST_LOG", "warn");
        let name = match workers {
            // tokio's multi-thread runtime reads it (the server uses `Runtime::new`).
            Some(n) => {
                command.env("TOKIO_WORKER_THREADS", n);
                format!("syncmux {n} worker")
            }
            None => {
                command.env_remove("TOKIO_WORKER_THREADS");
                "syncmux".to_owned()
            }
        };
        let name = match (flags, sse) {
            (_, true) => format!("{name} sse clients"),
            ([], false) => name,
            (flags, false) => format!("{name} {}", flags.join(" ")),
        };
        let server = start(command, "ot on ");
        measure_with(&name, &server, None, sse, window)
    };
    // As deployed (a worker per core; `/ot` on a thread of its own), then with the whole
    // server on one worker: the two should agree. Then without the broadcast delay (every
    // op sent on at once, each socket written every round), the baseline of what it saves.
    let default = syncmux(None, &[], false);
    // The same server, its 5 clients on HTTP + SSE (`GET /ot/events`, a POST per op).
    let sse = syncmux(None, &[], true);
    println!(
        "ot e2e SSE / WebSocket clients, CPU per acked op: {:.2}x; acked ops/s: {:.2}x",
        sse.cpu_micros_per_op / default.cpu_micros_per_op,
        sse.ops_per_second / default.ops_per_second,
    );
    let one = syncmux(Some("1"), &[], false);
    let at_once = syncmux(None, &["--ot-broadcast-delay", "0"], false);
    println!(
        "ot e2e no broadcast delay / default, CPU per acked op: {:.2}x; acked ops/s: {:.2}x",
        at_once.cpu_micros_per_op / default.cpu_micros_per_op,
        at_once.ops_per_second / default.ops_per_second,
    );
    if cfg!(feature = "redis") {
        on_redis(&binary, &default, window);
    }
    if let Some(command) = node_baseline() {
        let node = {
            let server = start(command, "listening on ");
            measure("node", &server, window)
        };
        println!(
            "ot e2e node / syncmux CPU per acked op: {:.1}x ({:.1}x on 1 worker); \
             syncmux / node acked ops/s: {:.2}x",
            node.cpu_micros_per_op / default.cpu_micros_per_op,
            node.cpu_micros_per_op / one.cpu_micros_per_op,
            default.ops_per_second / node.ops_per_second,
        );
    }
}
