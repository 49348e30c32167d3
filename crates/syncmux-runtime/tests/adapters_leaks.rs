//! A closed connection leaves nothing behind: after sessions opened and
//! ended every way (the peer closes, the peer drops the socket, the server closes, the
//! handshake is refused), the adapter's and the state machine's per-session maps are empty
//! and the heap is back at its baseline, on both server adapters.
#![cfg(all(feature = "tokio", feature = "smol"))]
#![allow(clippy::unwrap_used)] // test helpers fail loudly

use std::alloc::System;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use syncmux::Driver;
use syncmux::{MemoryStore, StoreConfig};
use syncmux::{Server, ServerConfig};
use syncmux_runtime::{self as adapters, ServerOptions, SyncServer};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const GUARD: Duration = Duration::from_secs(20);
/// Sessions per way of ending, per round.
const N: usize = 50;
/// Heap a round may leave behind, all sessions together: a leak of one small allocation
/// per session (a channel) is above it.
const SLACK: i64 = 8 * 1024;

fn driver() -> Driver {
    let mut config = ServerConfig::default();
    config.path = Some("/sync/ws".to_owned());
    config.rate_limit_burst = 0;
    Driver::new(
        Server::new(config).unwrap(),
        MemoryStore::new(StoreConfig::default()),
    )
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A session that subscribed, joined a topic and got its pong (so every structure exists).
async fn open(addr: SocketAddr, node: &str) -> Ws {
    let mut request = format!("ws://{addr}/sync/ws?node_id={node}")
        .into_client_request()
        .unwrap();
    let protocol = "syncmux.v1".parse().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol);
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    for frame in [
        r#"{"type":"subscribe","id":"s","payload":{"tables":["docs"]}}"#,
        r#"{"type":"presence_update","id":"u","payload":{"topic":"t","data":{"x":1}}}"#,
        r#"{"type":"room","id":"r","payload":{"action":"join","room":"lobby"}}"#,
        r#"{"type":"ping","id":"p"}"#,
    ] {
        ws.send(Message::text(frame)).await.unwrap();
    }
    loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(text) if text.contains(r#""type":"pong""#) => return ws,
            _ => {}
        }
    }
}

/// Reads until the server's close (or the end of the stream).
async fn until_closed(ws: &mut Ws) {
    while let Some(Ok(message)) = ws.next().await {
        if let Message::Close(_) = message {
            break;
        }
    }
}

/// N sessions ended each way.
async fn round(addr: SocketAddr, tag: &str) {
    for i in 0..N {
        // The peer closes.
        let mut ws = open(addr, &format!("{tag}-close-{i}")).await;
        ws.close(None).await.unwrap();
        until_closed(&mut ws).await;
        // The peer drops the socket without a close.
        drop(open(addr, &format!("{tag}-drop-{i}")).await);
        // The server closes: only protocol version 2 offered, so it answers 4426.
        let mut request = format!("ws://{addr}/sync/ws?node_id={tag}-v2-{i}")
            .into_client_request()
            .unwrap();
        let protocol = "syncmux.v2".parse().unwrap();
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", protocol);
        let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        until_closed(&mut ws).await;
        // The handshake is refused: unknown path.
        match tokio_tungstenite::connect_async(format!("ws://{addr}/nope")).await {
            Err(WsError::Http(response)) => assert_eq!(response.status(), 404),
            other => panic!("expected 404, got {other:?}"),
        }
    }
}

/// Waits until the server holds no session anywhere.
async fn drained(server: &SyncServer) {
    let waited = tokio::time::timeout(GUARD, async {
        while server.session_count() != 0 || server.outlet_count() != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "still {} sessions and {} outlets",
        server.session_count(),
        server.outlet_count()
    );
    let present = server.with_driver(|d, _| d.server().presence_members("t").len());
    let members = server.with_driver(|d, _| d.server().room_members("lobby").len());
    assert_eq!((present, members), (0, 0));
}

/// Net heap bytes since `region` began. (stats_alloc already counts a reallocation's growth
/// or shrinkage in `bytes_allocated` or `bytes_deallocated`; `bytes_reallocated` repeats it.)
fn net(region: &Region<'_, System>) -> i64 {
    let stats = region.change();
    stats.bytes_allocated as i64 - stats.bytes_deallocated as i64
}

async fn leaves_nothing_behind(server: SyncServer, addr: SocketAddr) {
    // Warm up: maps and slabs reach their peak size, runtimes their first-use allocations.
    round(addr, "warm").await;
    drained(&server).await;
    let region = Region::new(GLOBAL);
    round(addr, "measured").await;
    drained(&server).await;
    // Tasks that ended may free their last bytes a moment after the maps are empty.
    let settled = tokio::time::timeout(GUARD, async {
        while net(&region) > SLACK {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        settled.is_ok(),
        "{} heap bytes left behind by {} sessions (slack {SLACK})",
        net(&region),
        3 * N
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_way_a_session_ends_releases_it() {
    // One test for both runtimes: the allocator's counters are process-wide.
    let server = adapters::tokio::start(driver(), ServerOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(adapters::tokio::serve(server.clone(), listener, None));
    leaves_nothing_behind(server, addr).await;

    let server = adapters::smol::start(driver(), ServerOptions::default());
    let listener = smol::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    smol::spawn(adapters::smol::serve(server.clone(), listener, None)).detach();
    leaves_nothing_behind(server, addr).await;
}
