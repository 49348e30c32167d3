//! End to end over loopback, each against its baseline in the same run:
//!
//! - pull round trips through the tokio adapter (a `SyncClient` against the tokio server,
//!   and a bare tokio-tungstenite client against the same server) versus a bare
//!   tokio-tungstenite echo that answers a frame of the pull request's size with a frame of
//!   the pull response's size (goal: the adapter takes ≤ 1.3× the echo's time);
//! - one change fanned out to 1 000 real connections (deliveries per second).
//!
//! The summary also times a bare client that decodes each answer into typed records, as a
//! `SyncClient` does: the echo parses nothing, so most of the distance to it is protocol
//! work (the server's pull and serialisation, the client's typed decode), not the adapters.
//!
//! ```text
//! cargo bench -p syncmux-bench --bench e2e -- --warm-up-time 1 --measurement-time 3
//! ```
//! runs the criterion groups, then prints a summary with the ratios.

// A benchmark measures wall time; the core never reads a clock.
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use futures_util::{SinkExt, StreamExt};
use syncmux::payload::{PullRequest, PullResponse};
use syncmux::wire::{DecodeLimits, Frame};
use syncmux::Driver;
use syncmux::{ClientConfig, Server, ServerConfig};
use syncmux::{MemoryStore, StoreConfig};
use syncmux_runtime::{self as adapters, ServerOptions, SyncClient, SyncServer};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::protocol::frame::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

#[path = "support/dial.rs"]
mod dial;

type Ws = WebSocketStream<TcpStream>;

/// Changes in the pulled table: a response of about 1.6 KB.
const ROWS: usize = 8;
/// Connections a change fans out to.
const FAN_OUT: usize = 1_000;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn server() -> SyncServer {
    let mut config = ServerConfig::default();
    config.path = Some("/sync/ws".to_owned());
    // Limits and timers that a benchmark would trip are not what it measures.
    config.rate_limit_burst = 0;
    config.ping_interval = Duration::ZERO;
    config.idle_timeout = Duration::ZERO;
    let server = Server::new(config).expect("valid config");
    let driver = Driver::new(server, MemoryStore::new(StoreConfig::default()));
    adapters::Tokio::start(driver, ServerOptions::default())
}

async fn serve(server: &SyncServer) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(adapters::Tokio::serve(server.clone(), listener, None));
    format!("ws://{addr}/sync/ws")
}

/// A bare tokio-tungstenite client (Nagle off, as the adapters do).
async fn dial(url: &str) -> Ws {
    let tcp = dial::tcp(dial::host(url)).await;
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(ws_config()))
        .await
        .expect("handshake");
    ws
}

/// The adapters' read buffer for the bare sockets too: tungstenite zeroes its whole read
/// buffer on every read, so its 128 KiB default would slow the baseline, not the adapters.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(8 * 1024)
}

fn text(s: impl Into<Bytes>) -> Message {
    Message::Text(Utf8Bytes::try_from(s.into()).expect("UTF-8"))
}

/// Sends `frame` and gives back the text of the next text frame.
async fn round_trip(ws: &mut Ws, frame: Message) -> Utf8Bytes {
    ws.send(frame).await.expect("send");
    loop {
        match ws.next().await.expect("open").expect("read") {
            Message::Text(text) => return text,
            _ => continue,
        }
    }
}

fn record(pk: usize, ts: u64) -> String {
    format!(
        r#"{{"table":"docs","pk":"row-{pk}","field":"title","crdt_type":"lww","hlc":{{"ts":{ts},"c":0,"node":"bench"}},"node_id":"bench","value":"a title of some length, {pk}"}}"#
    )
}

fn push_frame(records: &[String]) -> Message {
    text(format!(
        r#"{{"type":"push_request","id":"p","payload":{{"node_id":"bench","changes":[{}]}}}}"#,
        records.join(",")
    ))
}

const PULL: &str = r#"{"type":"pull_request","id":"1","payload":{"tables":["docs"]}}"#;

/// The three ways to do one pull-sized round trip.
struct Pulls {
    echo: Ws,
    raw: Ws,
    client: SyncClient,
    response_len: usize,
}

/// A WebSocket server that answers every text frame with `answer`.
async fn echo_server(answer: Bytes) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tcp.set_nodelay(true).expect("nodelay");
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async_with_config(tcp, Some(ws_config()))
                    .await
                    .expect("accept");
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_text() && ws.send(text(answer.clone())).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("ws://{addr}/echo")
}

impl Pulls {
    async fn new() -> Pulls {
        let server = server();
        let url = serve(&server).await;
        let mut raw = dial(&format!("{url}?node_id=bench")).await;
        let rows: Vec<String> = (0..ROWS).map(|i| record(i, 1_000 + i as u64)).collect();
        let pushed = round_trip(&mut raw, push_frame(&rows)).await;
        assert!(pushed.starts_with(r#"{"type":"push_response""#), "{pushed}");
        let response = round_trip(&mut raw, text(PULL)).await;
        assert!(response.starts_with(r#"{"type":"pull_response""#));
        let response_len = response.len();
        let echo = dial(&echo_server(Bytes::from(response)).await).await;
        let (client, events) =
            adapters::Tokio::connect(ClientConfig::new(url, "bench-client")).expect("config");
        drop(events);
        assert_eq!(
            client
                .pull(PullRequest::new(["docs"]))
                .await
                .expect("pull")
                .changes
                .len(),
            ROWS
        );
        Pulls {
            echo,
            raw,
            client,
            response_len,
        }
    }

    async fn echo(&mut self, n: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..n {
            black_box(round_trip(&mut self.echo, text(PULL)).await);
        }
        start.elapsed()
    }

    async fn raw(&mut self, n: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..n {
            black_box(round_trip(&mut self.raw, text(PULL)).await);
        }
        start.elapsed()
    }

    /// [`Pulls::raw`], then decoding each answer into typed records as a `SyncClient` does:
    /// how much of the client's time is the decode rather than the adapter.
    async fn raw_decoded(&mut self, n: u64) -> Duration {
        let limits = DecodeLimits::default();
        let start = Instant::now();
        for _ in 0..n {
            let text = round_trip(&mut self.raw, text(PULL)).await;
            let frame = Frame::decode(Bytes::from(text), &limits).expect("frame");
            black_box(frame.payload::<PullResponse>().expect("pull response"));
        }
        start.elapsed()
    }

    async fn client(&mut self, n: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..n {
            black_box(
                self.client
                    .pull(PullRequest::new(["docs"]))
                    .await
                    .expect("pull"),
            );
        }
        start.elapsed()
    }
}

/// `FAN_OUT` bare connections subscribed to `docs`, counting the change frames they get,
/// and a pusher.
struct FanOut {
    pusher: Ws,
    delivered: Arc<AtomicUsize>,
    done: Arc<Notify>,
    pushed: u64,
    _server: SyncServer,
}

impl FanOut {
    async fn new() -> FanOut {
        let server = server();
        let url = serve(&server).await;
        let delivered = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(Notify::new());
        let subscribe = r#"{"type":"subscribe","id":"s","payload":{"tables":["docs"]}}"#;
        for i in 0..FAN_OUT {
            let mut ws = dial(&format!("{url}?node_id=sub-{i}")).await;
            let ack = round_trip(&mut ws, text(subscribe)).await;
            assert!(ack.starts_with(r#"{"type":"ack""#), "{ack}");
            let (delivered, done) = (delivered.clone(), done.clone());
            tokio::spawn(async move {
                while let Some(Ok(message)) = ws.next().await {
                    if let Message::Text(t) = message {
                        if t.starts_with(r#"{"type":"change"#)
                            && delivered.fetch_add(1, Ordering::AcqRel) % FAN_OUT == FAN_OUT - 1
                        {
                            done.notify_one();
                        }
                    }
                }
            });
        }
        let pusher = dial(&format!("{url}?node_id=bench")).await;
        FanOut {
            pusher,
            delivered,
            done,
            pushed: 0,
            _server: server,
        }
    }

    /// Pushes `n` changes one at a time, each once all its deliveries are in.
    async fn run(&mut self, n: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..n {
            self.pushed += 1;
            let change = record(self.pushed as usize, 1_000_000 + self.pushed);
            let answer = round_trip(&mut self.pusher, push_frame(&[change])).await;
            debug_assert!(answer.starts_with(r#"{"type":"push_response""#));
            let target = self.pushed as usize * FAN_OUT;
            loop {
                let notified = self.done.notified();
                if self.delivered.load(Ordering::Acquire) >= target {
                    break;
                }
                notified.await;
            }
        }
        start.elapsed()
    }
}

fn pulls(c: &mut Criterion, rt: &Runtime, pulls: &mut Pulls) {
    let mut group = c.benchmark_group("e2e/pull_round_trip");
    group.throughput(Throughput::Elements(1));
    group.bench_function("echo: bare tokio-tungstenite, same frame sizes", |b| {
        b.iter_custom(|n| rt.block_on(pulls.echo(n)))
    });
    group.bench_function(
        "bare tokio-tungstenite client -> tokio adapter server",
        |b| b.iter_custom(|n| rt.block_on(pulls.raw(n))),
    );
    group.bench_function("SyncClient -> tokio adapter server", |b| {
        b.iter_custom(|n| rt.block_on(pulls.client(n)))
    });
    group.finish();
}

fn fan_out(c: &mut Criterion, rt: &Runtime, fan: &mut FanOut) {
    let mut group = c.benchmark_group("e2e/fan_out");
    group.throughput(Throughput::Elements(FAN_OUT as u64));
    group.sample_size(20);
    group.bench_function("one change to 1000 connections", |b| {
        b.iter_custom(|n| rt.block_on(fan.run(n)))
    });
    group.finish();
}

/// The median of five interleaved runs of each, so that drift hits all alike.
fn summary(rt: &Runtime, pulls: &mut Pulls, fan: &mut FanOut) {
    println!("\n== e2e summary ==");
    pull_summary("2 worker threads", rt, pulls);
    // One thread: no cross-thread wake-ups, so what remains is the work each path does.
    let single = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut single_pulls = single.block_on(Pulls::new());
    pull_summary("current thread", &single, &mut single_pulls);
    let mut fans: Vec<Duration> = (0..5).map(|_| rt.block_on(fan.run(50))).collect();
    fans.sort();
    let per_change = fans[2].as_secs_f64() / 50.0;
    println!(
        "fan-out to {FAN_OUT} connections: {:.0} µs per change, {:.0} deliveries/s",
        per_change * 1e6,
        FAN_OUT as f64 / per_change
    );
}

fn pull_summary(runtime: &str, rt: &Runtime, pulls: &mut Pulls) {
    const N: u64 = 2_000;
    let (mut echo, mut raw, mut client) = (Vec::new(), Vec::new(), Vec::new());
    let mut decoded = Vec::new();
    for _ in 0..5 {
        echo.push(rt.block_on(pulls.echo(N)));
        raw.push(rt.block_on(pulls.raw(N)));
        decoded.push(rt.block_on(pulls.raw_decoded(N)));
        client.push(rt.block_on(pulls.client(N)));
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() / N as f64 * 1e6
    };
    let (echo, raw, client) = (median(&mut echo), median(&mut raw), median(&mut client));
    let decoded = median(&mut decoded);
    println!(
        "[{runtime}] pull round trip ({ROWS} changes, response {} bytes): echo {echo:.1} µs, \
         bare client -> adapter {raw:.1} µs, SyncClient -> adapter {client:.1} µs, \
         bare client + typed decode {decoded:.1} µs",
        pulls.response_len
    );
    println!(
        "[{runtime}] through the tokio adapter / echo, same bare client: {:.2} (goal <= 1.3)",
        raw / echo
    );
    println!(
        "[{runtime}] SyncClient / echo: {:.2}; bare client with the same typed decode / echo: \
         {:.2} (the echo decodes nothing)",
        client / echo,
        decoded / echo
    );
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let rt = runtime();
    let mut p = rt.block_on(Pulls::new());
    let mut f = rt.block_on(FanOut::new());
    pulls(&mut c, &rt, &mut p);
    fan_out(&mut c, &rt, &mut f);
    c.final_summary();
    // Only under `cargo bench` (criterion's `--bench`), not when tests run the bench target.
    if std::env::args().any(|a| a == "--bench") {
        summary(&rt, &mut p, &mut f);
    }
}
