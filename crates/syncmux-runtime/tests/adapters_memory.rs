//! What an idle connection costs the tokio server adapter, in heap bytes, over real sockets.
//! 10 000 idle sessions must fit in well under 200 MB: tungstenite's default 128 KiB read
//! buffer and an outbound queue allocated up front (40 KiB) once made it 1.7 GB.
#![cfg(feature = "tokio")]
#![allow(clippy::unwrap_used)] // test helpers fail loudly

use std::alloc::System;

use futures_util::{SinkExt, StreamExt};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use syncmux::Driver;
use syncmux::{MemoryStore, StoreConfig};
use syncmux::{Server, ServerConfig};
use syncmux_runtime::{self as adapters, ServerOptions};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const CONNECTIONS: usize = 200;
/// Heap per connection, both ends together (the test's clients keep 4 KiB read buffers).
const BUDGET: usize = 32 * 1024;

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// A connection whose session answered a ping (so its task runs: socket and queues exist).
async fn idle_connection(addr: std::net::SocketAddr, i: usize) -> Ws {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let url = format!("ws://{addr}/?node_id=n{i}");
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config))
        .await
        .unwrap();
    ws.send(Message::text(r#"{"type":"ping","id":"1"}"#))
        .await
        .unwrap();
    let Some(Ok(Message::Text(pong))) = ws.next().await else {
        panic!("no pong")
    };
    assert!(pong.starts_with(r#"{"type":"pong""#), "{pong}");
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_costs_the_server_little_heap() {
    let mut config = ServerConfig::default();
    config.rate_limit_burst = 0;
    let driver = Driver::new(
        Server::new(config).unwrap(),
        MemoryStore::new(StoreConfig::default()),
    );
    let server = adapters::tokio::start(driver, ServerOptions::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(adapters::tokio::serve(server.clone(), listener, None));
    // Warm up: the first connection's and the runtime's first-use allocations stay out.
    let mut open = vec![idle_connection(addr, 0).await];
    let region = Region::new(GLOBAL);
    for i in 1..=CONNECTIONS {
        open.push(idle_connection(addr, i).await);
    }
    let stats = region.change();
    let net = stats.bytes_allocated as i64 - stats.bytes_deallocated as i64
        + stats.bytes_reallocated as i64;
    let per_connection = usize::try_from(net).unwrap_or(0) / CONNECTIONS;
    assert_eq!(server.session_count(), CONNECTIONS + 1);
    assert!(
        per_connection <= BUDGET,
        "{per_connection} heap bytes per idle connection (budget {BUDGET})"
    );
}
