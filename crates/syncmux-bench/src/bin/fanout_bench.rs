//! Fan-out benchmark: what one delivered change costs a server, in CPU (user and
//! kernel, from `/proc/<pid>/stat`) and what an idle subscriber costs it in memory (VmRSS with
//! N connections minus before them), for `syncmux-server`, a minimal Node `ws`
//! broadcast server (`crates/syncmux-server/tests/node/fanout_server.mjs`) and a naive tokio-tungstenite broadcast
//! loop (this binary, `--serve-naive`), all driven by the same clients in the same run; and
//! `syncmux-sse`, the same `syncmux-server` with its subscribers on Grove's SSE stream
//! (`GET /sync/stream`) instead of WebSockets, against `syncmux` for the SSE/WebSocket ratio.
//!
//! Workload per server: N subscribers of table `bench` (each subscribes and waits for its
//! ack), then one pusher pushes 300 (`--pushes`) single-change `push_request`s, each after
//! the previous one reached all N subscribers. CPU is the server's user and system time over
//! the push phase, divided by the deliveries.
//!
//! ```text
//! scripts/fanout-bench                      # 1 000 and 10 000 connections, 3 runs each
//! scripts/fanout-bench --conns 1000 --runs 1
//! ```
//! The script builds this and the server in release mode, raises the open-file limit
//! and runs `target/release/fanout_bench`. Linux only (`/proc`).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{stream, SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// Pushes per measurement by default. `/proc/<pid>/stat` counts CPU in clock ticks (10 ms
/// here): 60 pushes to 1 000 subscribers cost the server ~7 ticks of user time, so a tick
/// more or less moved the user figure by 15 %; 300 pushes bring that under 3 %.
const PUSHES: u64 = 300;
const USAGE: &str =
    "usage: fanout_bench [--conns 1000,10000] [--runs 3] [--pushes 300] [--servers syncmux,syncmux-sse,node,naive] \
                     [--syncmux PATH] [--node-script PATH]   |   fanout_bench --serve-naive";

fn main() -> ExitCode {
    let mut conns = vec![1000usize, 10_000];
    let mut runs = 3usize;
    let mut pushes = PUSHES;
    let mut servers = vec!["syncmux".to_owned(), "node".to_owned(), "naive".to_owned()];
    let mut syncmux = "target/release/syncmux-server".to_owned();
    let mut node_script = "crates/syncmux-server/tests/node/fanout_server.mjs".to_owned();
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        if flag == "--serve-naive" {
            return naive::main();
        }
        let value = argv.next();
        match (flag.as_str(), value) {
            ("--conns", Some(v)) => {
                conns = v.split(',').filter_map(|n| n.trim().parse().ok()).collect();
            }
            ("--runs", Some(v)) => runs = v.parse().unwrap_or(1),
            ("--pushes", Some(v)) => pushes = v.parse().unwrap_or(PUSHES),
            ("--servers", Some(v)) => servers = v.split(',').map(str::to_owned).collect(),
            ("--syncmux", Some(v)) => syncmux = v,
            ("--node-script", Some(v)) => node_script = v,
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let tick = clock_tick();
    let mut rows = Vec::new();
    for &n in &conns {
        for run in 1..=runs {
            let mut figures = Vec::new();
            for name in &servers {
                let command = match name.as_str() {
                    "syncmux" | "syncmux-sse" => {
                        let mut c = Command::new(&syncmux);
                        c.args(["--listen", "127.0.0.1:0", "--rate-limit", "0"])
                            .args(["--ping-interval", "0", "--idle-timeout", "0"])
                            .args(["--log-format", "human"])
                            .env("RUST_LOG", "warn");
                        c
                    }
                    "node" => {
                        let mut c = Command::new("node");
                        c.arg(&node_script);
                        c
                    }
                    "naive" => {
                        let mut c = Command::new(std::env::current_exe().unwrap_or_default());
                        c.arg("--serve-naive");
                        c
                    }
                    other => {
                        eprintln!("unknown server {other}");
                        return ExitCode::from(2);
                    }
                };
                // `syncmux-sse`: the same server, its subscribers on SSE streams.
                let sse = name == "syncmux-sse";
                match runtime.block_on(measure(command, n, pushes, tick, sse)) {
                    Ok(f) => {
                        println!(
                            "{name:8} conns {n:6} run {run}: deliveries {:7}  cpu/delivery {:6.2} µs \
                             (user {:5.2}, kernel {:5.2})  idle RSS/conn {:5.1} KiB",
                            f.deliveries, f.total_us(), f.user_us, f.sys_us, f.rss_kib
                        );
                        figures.push((name.clone(), f));
                    }
                    Err(why) => {
                        eprintln!("error: {name} with {n} connections: {why}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            rows.push((n, run, figures));
        }
    }
    println!();
    println!("| conns | run | server | deliveries | CPU/delivery µs | user µs | kernel µs | idle RSS/conn KiB |");
    println!("|---|---|---|---|---|---|---|---|");
    for (n, run, figures) in &rows {
        for (name, f) in figures {
            println!(
                "| {n} | {run} | {name} | {} | {:.2} | {:.2} | {:.2} | {:.1} |",
                f.deliveries,
                f.total_us(),
                f.user_us,
                f.sys_us,
                f.rss_kib
            );
        }
    }
    println!();
    for (n, run, figures) in &rows {
        let find = |s: &str| figures.iter().find(|(name, _)| name == s).map(|(_, f)| f);
        if let (Some(s), Some(node)) = (find("syncmux"), find("node")) {
            print!(
                "fanout ratio conns {n} run {run}: syncmux/node user {:.2}  kernel {:.2}  total {:.2} \
                 (node/syncmux {:.2}x)  idle RSS {:.2}",
                s.user_us / node.user_us,
                s.sys_us / node.sys_us,
                s.total_us() / node.total_us(),
                node.total_us() / s.total_us(),
                s.rss_kib / node.rss_kib
            );
            if let Some(naive) = find("naive") {
                print!("  syncmux/naive user {:.2}", s.user_us / naive.user_us);
            }
            println!();
        }
        if let (Some(s), Some(sse)) = (find("syncmux"), find("syncmux-sse")) {
            println!(
                "fanout ratio conns {n} run {run}: SSE/WebSocket total {:.2} (user {:.2}, kernel {:.2})",
                sse.total_us() / s.total_us(),
                sse.user_us / s.user_us,
                sse.sys_us / s.sys_us
            );
        }
    }
    // For bench_report (scripts/bench-report.sh): the first run's figures.
    if let Some((n, _, figures)) = rows.first() {
        let find = |s: &str| figures.iter().find(|(name, _)| name == s).map(|(_, f)| f);
        if let (Some(s), Some(node)) = (find("syncmux"), find("node")) {
            println!(
                "fanout {n} syncmux/node user CPU per delivery: {:.2}",
                s.user_us / node.user_us
            );
            println!(
                "fanout {n} node/syncmux CPU per delivery: {:.2}",
                node.total_us() / s.total_us()
            );
            println!(
                "fanout {n} syncmux idle RSS per connection KiB: {:.1}",
                s.rss_kib
            );
        }
        if let (Some(s), Some(sse)) = (find("syncmux"), find("syncmux-sse")) {
            println!(
                "fanout {n} SSE/WebSocket CPU per delivery: {:.2}",
                sse.total_us() / s.total_us()
            );
        }
    }
    ExitCode::SUCCESS
}

/// One server's figures.
struct Figures {
    deliveries: u64,
    user_us: f64,
    sys_us: f64,
    rss_kib: f64,
}

impl Figures {
    fn total_us(&self) -> f64 {
        self.user_us + self.sys_us
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` times.
fn clock_tick() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The runtime of the clients and of the naive server: two workers, like the example
/// server's default on this machine.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// User and system ticks of a process.
fn cpu_ticks(pid: u32) -> Result<(u64, u64), String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse().ok()).unwrap_or(0u64);
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    Ok((field(11), field(12)))
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> Result<u64, String> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| "no VmRSS".to_owned())
}

/// A server process, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn measure(
    mut command: Command,
    n: usize,
    pushes: u64,
    tick: f64,
    sse: bool,
) -> Result<Figures, String> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {command:?}: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let server = Server(child);
    let pid = server.0.id();
    let url = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let url = lines.find_map(|l| {
            l.ok()
                .and_then(|l| l.strip_prefix("listening on ").map(str::to_owned))
        });
        // Keep draining so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        url
    })
    .await
    .map_err(|e| e.to_string())?
    .ok_or("the server printed no `listening on` line")?;
    let addr = url
        .strip_prefix("ws://")
        .and_then(|r| r.split('/').next())
        .ok_or("not a ws:// url")?
        .to_owned();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_kib(pid)?;

    let delivered = Arc::new(AtomicU64::new(0));
    let subscribers = stream::iter(0..n)
        .map(|i| {
            let (addr, url, delivered) = (addr.clone(), url.clone(), delivered.clone());
            async move {
                match sse {
                    true => subscribe_sse(addr, i, delivered).await,
                    false => subscribe(addr, url, i, delivered).await,
                }
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    let mut readers = Vec::with_capacity(n);
    for s in subscribers {
        readers.push(s?);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle = rss_kib(pid)?;

    let mut pusher = connect(&addr, &format!("{url}?node_id=pusher")).await?;
    let (user0, sys0) = cpu_ticks(pid)?;
    for k in 1..=pushes {
        let push = format!(
            r#"{{"type":"push_request","id":"p{k}","payload":{{"node_id":"pusher","changes":[{{"table":"bench","pk":"row","field":"f","crdt_type":"lww","hlc":{{"ts":{},"c":0,"node":"pusher"}},"node_id":"pusher","value":{k}}}]}}}}"#,
            1_700_000_000_000_000_000u64 + k
        );
        pusher
            .send(Message::text(push))
            .await
            .map_err(|e| e.to_string())?;
        loop {
            match pusher.next().await {
                Some(Ok(Message::Text(t))) if t.contains("push_response") => break,
                Some(Ok(Message::Text(t))) if t.contains("\"error\"") => {
                    return Err(format!("push refused: {t}"))
                }
                Some(Ok(_)) => {}
                other => return Err(format!("pusher: {other:?}")),
            }
        }
        let target = k * n as u64;
        let all_in = async {
            while delivered.load(Ordering::Relaxed) < target {
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(60), all_in)
            .await
            .is_err()
        {
            return Err(format!(
                "push {k}: {} of {target} deliveries after 60 s",
                delivered.load(Ordering::Relaxed)
            ));
        }
    }
    let (user1, sys1) = cpu_ticks(pid)?;
    let deliveries = delivered.load(Ordering::Relaxed);
    let per = |ticks: u64| ticks as f64 / tick * 1e6 / deliveries as f64;
    let figures = Figures {
        deliveries,
        user_us: per(user1 - user0),
        sys_us: per(sys1 - sys0),
        rss_kib: rss_idle.saturating_sub(rss_before) as f64 / n as f64,
    };
    for r in readers {
        r.abort();
    }
    drop(server);
    Ok(figures)
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn connect(addr: &str, url: &str) -> Result<Ws, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    // Small client buffers: this process holds N of them too.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    Ok(ws)
}

/// Connects subscriber `i`, subscribes to `bench`, waits for the ack, and leaves a task
/// counting the changes it receives.
async fn subscribe(
    addr: String,
    url: String,
    i: usize,
    delivered: Arc<AtomicU64>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let mut ws = connect(&addr, &format!("{url}?node_id=sub{i}")).await?;
    let subscribe = r#"{"type":"subscribe","id":"s","payload":{"tables":["bench"]}}"#;
    ws.send(Message::text(subscribe))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.contains("\"ack\"") => break,
            Some(Ok(_)) => {}
            other => return Err(format!("subscriber {i}: {other:?}")),
        }
    }
    Ok(tokio::spawn(async move {
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Text(t) = message {
                if t.contains("\"change\"") {
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }))
}

/// Opens subscriber `i` as Grove's SSE stream of `bench`, waits for the subscribe's ack (a
/// bare `id:` event), and leaves a task counting the `change` events it receives.
async fn subscribe_sse(
    addr: String,
    i: usize,
    delivered: Arc<AtomicU64>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(&addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let request =
        format!("GET /sync/stream?tables=bench&node_id=sub{i} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut lines = tokio::io::BufReader::with_capacity(4096, tcp).lines();
    loop {
        match lines.next_line().await {
            Ok(Some(line)) if line.starts_with("id: ") => break,
            Ok(Some(_)) => {}
            other => return Err(format!("SSE subscriber {i}: {other:?}")),
        }
    }
    Ok(tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if line == "event: change" {
                delivered.fetch_add(1, Ordering::Relaxed);
            }
        }
    }))
}

/// The naive broadcast loop the issue measures beside the others: tokio-tungstenite, parse the
/// envelope, route by table, encode once, one writer task per subscriber fed by a channel.
mod naive {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;
    use tokio::sync::mpsc;

    type Subscribers = Arc<Mutex<HashMap<String, Vec<(usize, mpsc::UnboundedSender<Message>)>>>>;

    pub(super) fn main() -> ExitCode {
        let runtime = match super::runtime() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        runtime.block_on(async {
            let Ok(listener) = tokio::net::TcpListener::bind("127.0.0.1:0").await else {
                return ExitCode::FAILURE;
            };
            let Ok(addr) = listener.local_addr() else {
                return ExitCode::FAILURE;
            };
            println!("listening on ws://{addr}/sync/ws");
            let subscribers: Subscribers = Arc::default();
            let mut id = 0;
            while let Ok((tcp, _)) = listener.accept().await {
                id += 1;
                let _ = tcp.set_nodelay(true);
                tokio::spawn(connection(id, tcp, subscribers.clone()));
            }
            ExitCode::SUCCESS
        })
    }

    async fn connection(id: usize, tcp: TcpStream, subscribers: Subscribers) {
        let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
        let Ok(ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(config)).await else {
            return;
        };
        let (mut sink, mut source) = ws.split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
        let writer = tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if sink.send(m).await.is_err() {
                    return;
                }
            }
        });
        let mut seq = 0u64;
        while let Some(Ok(message)) = source.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            let msg_id = v.get("id").cloned().unwrap_or(serde_json::Value::Null);
            match v.get("type").and_then(|t| t.as_str()) {
                Some("subscribe") => {
                    let tables = v["payload"]["tables"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    let mut subs = subscribers.lock().unwrap_or_else(|e| e.into_inner());
                    for t in tables.iter().filter_map(|t| t.as_str()) {
                        subs.entry(t.to_owned()).or_default().push((id, tx.clone()));
                    }
                    let ack = serde_json::json!({"type": "ack", "id": msg_id, "payload": null});
                    let _ = tx.send(Message::text(ack.to_string()));
                }
                Some("push_request") => {
                    let changes = v["payload"]["changes"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    for change in &changes {
                        seq += 1;
                        let table = change["table"].as_str().unwrap_or("");
                        let frame = serde_json::json!({"type": "change", "payload": change, "cursor": format!("0.{seq}")});
                        let frame = Message::text(frame.to_string());
                        let subs = subscribers.lock().unwrap_or_else(|e| e.into_inner());
                        for (peer, out) in subs.get(table).into_iter().flatten() {
                            if *peer != id {
                                let _ = out.send(frame.clone());
                            }
                        }
                    }
                    let reply = serde_json::json!({"type": "push_response", "id": msg_id, "payload": {"merged": changes.len()}});
                    let _ = tx.send(Message::text(reply.to_string()));
                }
                _ => {}
            }
        }
        writer.abort();
    }
}
