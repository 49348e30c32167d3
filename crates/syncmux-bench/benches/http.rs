//! A pull over HTTP against the same pull over the WebSocket, on one `syncmux-server` in the
//! same run: Grove's `POST /sync/pull` (each request a connection and a session of its own,
//! as the server answers one request per connection) beside a `pull_request` frame on an open
//! WebSocket, the same 8 changes answered.
//!
//! ```text
//! cargo bench -p syncmux-bench --bench http
//! ```

// A benchmark measures wall time; the core never reads a clock.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

// `syncmux-server` built and started as a user starts it (shared with the OT bench, which
// also reads its process id).
#[path = "support/dial.rs"]
#[allow(dead_code)]
mod dial;
#[path = "support/server.rs"]
#[allow(dead_code)]
mod server;

/// Grove's pull body: the table's changes from the start.
const PULL: &str = r#"{"tables":["docs"],"node_id":"bench"}"#;

/// One HTTP pull: a connection, the request, the whole answer.
async fn http_pull(addr: &str) -> usize {
    let mut tcp = dial::tcp(addr).await;
    let request = format!(
        "POST /sync/pull HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{PULL}",
        PULL.len()
    );
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::with_capacity(4096);
    tcp.read_to_end(&mut answer).await.expect("read");
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    answer.len()
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// One WebSocket pull on an open connection: the frame, its answer.
async fn ws_pull(ws: &mut Ws, id: u64) {
    let frame = format!(r#"{{"type":"pull_request","id":"{id}","payload":{PULL}}}"#);
    ws.send(Message::text(frame)).await.expect("send");
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.contains("pull_response") => return,
            Some(Ok(_)) => {}
            other => panic!("pull: {other:?}"),
        }
    }
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut command = std::process::Command::new(server::example_server());
    command
        .args(["--listen", "127.0.0.1:0", "--rate-limit", "0"])
        .env("RUST_LOG", "warn");
    let server = server::start(command, "listening on ");
    let addr = server.url["ws://".len()..]
        .trim_end_matches("/sync/ws")
        .to_owned();
    let mut ws: Ws = runtime.block_on(async {
        let url = format!("{}?node_id=bench", server.url);
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("connect");
        // The 8 changes every pull answers.
        let changes: Vec<String> = (1..=8)
            .map(|k| {
                format!(
                    r#"{{"table":"docs","pk":"{k}","field":"title","crdt_type":"lww","hlc":{{"ts":{k},"c":0,"node":"bench"}},"node_id":"bench","value":"a change of the bench, {k}"}}"#
                )
            })
            .collect();
        let push = format!(
            r#"{{"type":"push_request","id":"push","payload":{{"node_id":"bench","changes":[{}]}}}}"#,
            changes.join(",")
        );
        ws.send(Message::text(push)).await.expect("push");
        while let Some(Ok(m)) = ws.next().await {
            if m.to_text().is_ok_and(|t| t.contains("push_response")) {
                break;
            }
        }
        ws
    });

    let mut group = c.benchmark_group("http/pull_round_trip");
    let mut id = 0;
    group.bench_function("WebSocket: pull_request on an open connection", |b| {
        b.iter(|| {
            id += 1;
            runtime.block_on(ws_pull(&mut ws, id));
        });
    });
    group.bench_function("HTTP: POST /sync/pull, a connection each", |b| {
        b.iter(|| runtime.block_on(http_pull(&addr)));
    });
    group.finish();

    // The ratio of the two, in one window each, for the bench report.
    let window = |f: &mut dyn FnMut()| {
        let (start, mut n) = (Instant::now(), 0u32);
        while start.elapsed() < Duration::from_secs(2) {
            f();
            n += 1;
        }
        start.elapsed() / n
    };
    let ws_rt = window(&mut || {
        id += 1;
        runtime.block_on(ws_pull(&mut ws, id));
    });
    let http_rt = window(&mut || {
        runtime.block_on(http_pull(&addr));
    });
    println!(
        "http pull round trip {:.1} µs, websocket {:.1} µs; http/websocket: {:.2}",
        http_rt.as_secs_f64() * 1e6,
        ws_rt.as_secs_f64() * 1e6,
        http_rt.as_secs_f64() / ws_rt.as_secs_f64()
    );
    drop(server);
}

criterion_group!(benches, bench);
criterion_main!(benches);
