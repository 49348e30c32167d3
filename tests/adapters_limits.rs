//! The server adapters' limits over real loopback sockets (issue 13, items 6 and 7): frame
//! size follows the one configured number, the handshake has a deadline (TLS included), the
//! handshakes in progress are bounded, and sessions beyond the maximum get HTTP 503.
#![cfg(all(feature = "tokio", feature = "smol"))]
#![allow(clippy::unwrap_used)] // test helpers fail loudly

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use syncmux::adapters::{self, ServerOptions, SyncServer};
use syncmux::Driver;
use syncmux::{MemoryStore, StoreConfig};
use syncmux::{Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Generous: every wait here ends as soon as what it waits for happens.
const GUARD: Duration = Duration::from_secs(20);

fn driver(config: ServerConfig) -> Driver {
    Driver::new(
        Server::new(config).unwrap(),
        MemoryStore::new(StoreConfig::default()),
    )
}

#[derive(Clone, Copy, Debug)]
enum Runtime {
    Tokio,
    Smol,
}

/// A server on `runtime`, serving on a fresh loopback port (with TLS when given).
async fn serve(
    runtime: Runtime,
    config: ServerConfig,
    options: ServerOptions,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> (SyncServer, SocketAddr) {
    match runtime {
        Runtime::Tokio => {
            let server = adapters::tokio::start(driver(config), options);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(adapters::tokio::serve(server.clone(), listener, tls));
            (server, addr)
        }
        Runtime::Smol => {
            let server = adapters::smol::start(driver(config), options);
            let listener = smol::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            smol::spawn(adapters::smol::serve(server.clone(), listener, tls)).detach();
            (server, addr)
        }
    }
}

fn options(handshake_timeout: Duration) -> ServerOptions {
    let mut options = ServerOptions::default();
    options.handshake_timeout = handshake_timeout;
    options
}

/// Waits until the server closes `tcp` (end of stream or reset).
async fn closed_by_server(tcp: &mut TcpStream) {
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(GUARD, tcp.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the connection is still open after {GUARD:?}"),
        }
    }
}

/// One text frame from `ws`, skipping control frames.
async fn text<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(text) => return text.to_string(),
            Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => continue,
        }
    }
}

// ---- item 7: a connection that never finishes its upgrade does not stay forever ----------

/// A connection that sends nothing, and one that sends half a request, are both closed once
/// the handshake deadline passes.
async fn silent_and_half_requests_are_closed(runtime: Runtime) {
    let options = options(Duration::from_millis(300));
    let (_server, addr) = serve(runtime, ServerConfig::default(), options, None).await;
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(b"GET /sync/ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n")
        .await
        .unwrap();
    closed_by_server(&mut silent).await;
    closed_by_server(&mut half).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_handshake_deadline_closes_silent_and_half_requests() {
    silent_and_half_requests_are_closed(Runtime::Tokio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smol_handshake_deadline_closes_silent_and_half_requests() {
    silent_and_half_requests_are_closed(Runtime::Smol).await;
}

/// The deadline covers the TLS handshake: a TCP connection to a `wss://` server that never
/// starts TLS is closed too.
async fn silent_tls_connections_are_closed(runtime: Runtime) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let key = cert.signing_key.serialize_pem();
    let tls = adapters::server_tls(cert.cert.pem().as_bytes(), key.as_bytes()).unwrap();
    let options = options(Duration::from_millis(300));
    let (_server, addr) = serve(runtime, ServerConfig::default(), options, Some(tls)).await;
    let mut silent = TcpStream::connect(addr).await.unwrap();
    closed_by_server(&mut silent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_handshake_deadline_covers_tls() {
    silent_tls_connections_are_closed(Runtime::Tokio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smol_handshake_deadline_covers_tls() {
    silent_tls_connections_are_closed(Runtime::Smol).await;
}

/// With two handshakes allowed in progress and two connections that never finish theirs (no
/// deadline), a third connection's upgrade waits; it completes once one of them goes away.
async fn handshakes_in_progress_are_bounded(runtime: Runtime) {
    let mut options = options(Duration::ZERO);
    options.max_handshakes = 2;
    let (_server, addr) = serve(runtime, ServerConfig::default(), options, None).await;
    let first = TcpStream::connect(addr).await.unwrap();
    let _second = TcpStream::connect(addr).await.unwrap();
    let url = format!("ws://{addr}/sync/ws?node_id=third");
    let mut third = tokio::spawn(tokio_tungstenite::connect_async(url));
    // Not a timing assertion that can fail spuriously: on a bounded server the upgrade cannot
    // complete at all while both slots are held.
    let early = tokio::time::timeout(Duration::from_millis(500), &mut third).await;
    assert!(early.is_err(), "the third upgrade went through: {early:?}");
    drop(first);
    let (mut ws, response) = tokio::time::timeout(GUARD, third)
        .await
        .expect("the third upgrade never completed")
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 101);
    ws.send(Message::text(r#"{"type":"ping","id":"p"}"#))
        .await
        .unwrap();
    assert!(text(&mut ws).await.contains(r#""type":"pong""#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_handshakes_in_progress_are_bounded() {
    handshakes_in_progress_are_bounded(Runtime::Tokio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smol_handshakes_in_progress_are_bounded() {
    handshakes_in_progress_are_bounded(Runtime::Smol).await;
}

/// With `max_sessions` 2 (the example server's `--max-connections 2`), a third upgrade is
/// refused with HTTP 503; once a session ends, a new one is accepted.
async fn sessions_beyond_the_maximum_get_503(runtime: Runtime) {
    let mut config = ServerConfig::default();
    config.max_sessions = 2;
    let (server, addr) = serve(runtime, config, ServerOptions::default(), None).await;
    let url = |n: u32| format!("ws://{addr}/sync/ws?node_id=n{n}");
    let (mut one, _) = tokio_tungstenite::connect_async(url(1)).await.unwrap();
    let (_two, _) = tokio_tungstenite::connect_async(url(2)).await.unwrap();
    match tokio_tungstenite::connect_async(url(3)).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("expected HTTP 503, got {other:?}"),
    }
    one.close(None).await.unwrap();
    tokio::time::timeout(GUARD, async {
        while server.session_count() > 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    let (_four, response) = tokio_tungstenite::connect_async(url(4)).await.unwrap();
    assert_eq!(response.status(), 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_sessions_beyond_the_maximum_get_503() {
    sessions_beyond_the_maximum_get_503(Runtime::Tokio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smol_sessions_beyond_the_maximum_get_503() {
    sessions_beyond_the_maximum_get_503(Runtime::Smol).await;
}

// ---- item 6: one limit per rule; 0 disables -----------------------------------------------

/// Sends one `len`-byte frame of an unknown type and returns the server's answer.
async fn answer_to_a_frame_of(addr: SocketAddr, len: usize) -> String {
    let request = format!("ws://{addr}/sync/ws?node_id=big")
        .into_client_request()
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let head = r#"{"type":"bogus","id":"big","pad":""#;
    let frame = format!("{head}{}\"}}", "x".repeat(len - head.len() - 2));
    assert_eq!(frame.len(), len);
    ws.send(Message::text(frame)).await.unwrap();
    tokio::time::timeout(GUARD, text(&mut ws)).await.unwrap()
}

/// The frame size the server reads follows `ServerConfig::max_frame_len` all the way down:
/// above tungstenite's 16 MiB default when configured so, and without any limit at 0 (the
/// WebSocket layer used to refuse such frames by dropping the connection).
async fn frame_size_follows_the_configured_maximum(runtime: Runtime) {
    let big = 17 << 20;
    let mut config = ServerConfig::default();
    config.max_frame_len = 20 << 20;
    let (_server, addr) = serve(runtime, config, ServerOptions::default(), None).await;
    let answer = answer_to_a_frame_of(addr, big).await;
    assert!(answer.contains("UNKNOWN_TYPE"), "{answer}");

    let mut config = ServerConfig::default();
    config.max_frame_len = 0;
    let (_server, addr) = serve(runtime, config, ServerOptions::default(), None).await;
    let answer = answer_to_a_frame_of(addr, big).await;
    assert!(answer.contains("UNKNOWN_TYPE"), "{answer}");

    // Over the configured maximum, the state machine answers (the socket layer lets the
    // frame through to it).
    let mut config = ServerConfig::default();
    config.max_frame_len = 1 << 20;
    let (_server, addr) = serve(runtime, config, ServerOptions::default(), None).await;
    let answer = answer_to_a_frame_of(addr, 3 << 20).await;
    assert!(answer.contains("FRAME_TOO_LARGE"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_frame_size_follows_the_configured_maximum() {
    frame_size_follows_the_configured_maximum(Runtime::Tokio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smol_frame_size_follows_the_configured_maximum() {
    frame_size_follows_the_configured_maximum(Runtime::Smol).await;
}
