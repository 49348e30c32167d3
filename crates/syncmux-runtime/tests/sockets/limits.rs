//! The server adapters' limits over real loopback sockets: frame
//! size follows the one configured number, the handshake has a deadline (TLS included), the
//! handshakes in progress are bounded, and sessions beyond the maximum get HTTP 503.
#![cfg(all(feature = "tokio", feature = "smol"))]
#![allow(clippy::unwrap_used)] // test helpers fail loudly

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use syncmux::CloseCode;
use syncmux::Driver;
use syncmux::{MemoryStore, StoreConfig};
use syncmux::{Server, ServerConfig};
use syncmux_runtime::{self as adapters, ServerOptions, SyncServer};

use crate::common::{read_until_closed, small_buffer_client};
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
            let server = adapters::Tokio::start(driver(config), options);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(adapters::Tokio::serve(server.clone(), listener, tls));
            (server, addr)
        }
        Runtime::Smol => {
            let server = adapters::Smol::start(driver(config), options);
            let listener = smol::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            smol::spawn(adapters::Smol::serve(server.clone(), listener, tls)).detach();
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

/// With `max_sessions` 2 (`syncmux-server`'s `--max-connections 2`), a third upgrade is
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

// ---- back pressure: a subscriber that stops reading -------------------------------------

/// A push of one change to table `t`, row `r{k}`, its value `pad` bytes long.
fn push_of(k: usize, pad: usize) -> String {
    format!(
        r#"{{"type":"push_request","id":"p{k}","payload":{{"node_id":"pusher","changes":[{{"table":"t","pk":"r{k}","field":"f","crdt_type":"lww","hlc":{{"ts":{},"c":0,"node":"pusher"}},"node_id":"pusher","value":"{}"}}]}}}}"#,
        1_700_000_000_000u64 + k as u64,
        "x".repeat(pad)
    )
}

/// A subscriber whose socket stops taking bytes (a small receive buffer, never read):
/// what the kernel cannot take waits in the server, counted against `max_outbound_bytes`
/// until it is written, and past that bound the subscriber is closed as a slow consumer.
/// The pusher is never held up; what the subscriber got before the close is every change in
/// order, without a gap (it resumes from its cursor for the rest). Without the count of
/// unwritten bytes nothing would bound the queue and no 4503 would come.
async fn a_subscriber_that_stops_reading_is_closed_as_a_slow_consumer(runtime: Runtime) {
    const PUSHES: usize = 800;
    let mut config = ServerConfig::default();
    config.max_outbound_bytes = 256 * 1024;
    config.rate_limit_burst = 0;
    let (server, addr) = serve(runtime, config, ServerOptions::default(), None).await;

    let url = format!("ws://{addr}/sync/ws?node_id=slow");
    let mut slow = small_buffer_client(addr, url).await;
    let subscribe = r#"{"type":"subscribe","id":"s","payload":{"tables":["t"]}}"#;
    slow.send(Message::text(subscribe)).await.unwrap();
    let ack = tokio::time::timeout(GUARD, text(&mut slow)).await.unwrap();
    assert!(ack.contains("\"ack\""), "{ack}");

    // 800 changes of 16 KiB: 13 MB for a subscriber allowed 256 KiB beyond its sockets (the
    // server's kernel send buffer grows to 4 MiB here, `tcp_wmem`).
    let url = format!("ws://{addr}/sync/ws?node_id=pusher");
    let (mut pusher, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    for k in 0..PUSHES {
        pusher
            .send(Message::text(push_of(k, 16 * 1024)))
            .await
            .unwrap();
        let answer = tokio::time::timeout(GUARD, text(&mut pusher))
            .await
            .unwrap();
        assert!(answer.contains("push_response"), "{answer}");
    }
    let closed = |server: &SyncServer| server.stats().closes_of(CloseCode::SLOW_CONSUMER);
    let deadline = tokio::time::Instant::now() + GUARD;
    while closed(&server) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no slow-consumer close"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(closed(&server), 1);

    // Read now: changes r0, r1, ... in order, then the end of the connection (the close
    // frame is best effort on a socket that was full).
    let seen = read_until_closed(&mut slow, |seen, change| {
        let row = format!("\"r{seen}\"");
        assert!(change.contains(&row), "expected {row}, got {:.80}", change);
    })
    .await;
    assert!(
        seen < PUSHES,
        "closed before it got all {PUSHES}: got {seen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_a_subscriber_that_stops_reading_is_closed_as_a_slow_consumer() {
    a_subscriber_that_stops_reading_is_closed_as_a_slow_consumer(Runtime::Tokio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smol_a_subscriber_that_stops_reading_is_closed_as_a_slow_consumer() {
    a_subscriber_that_stops_reading_is_closed_as_a_slow_consumer(Runtime::Smol).await;
}

/// A client that floods pings and never pauses gets the 4429 close frame, not a reset
/// connection: the server reads on after its close (and drops what it reads) until the
/// client answers it, rather than closing a socket with unread input, whose reset would take
/// the close frame with it.
async fn a_flooder_gets_the_4429_close_frame(runtime: Runtime) {
    let mut config = ServerConfig::default();
    config.rate_limit_burst = 10;
    let (_server, addr) = serve(runtime, config, ServerOptions::default(), None).await;
    let url = format!("ws://{addr}/sync/ws?node_id=flooder");
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let (mut sink, mut stream) = ws.split();
    let flood = tokio::spawn(async move {
        let mut id = 0u64;
        loop {
            id += 1;
            let ping = format!(r#"{{"type":"ping","id":"{id}"}}"#);
            if sink.send(Message::Text(ping.into())).await.is_err() {
                return;
            }
        }
    });
    let close = tokio::time::timeout(GUARD, async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("the connection failed before its close frame: {e}"),
                None => panic!("the connection ended without a close frame"),
            }
        }
    })
    .await
    .expect("hung");
    flood.abort();
    assert_eq!(close, Some(CloseCode::RATE_LIMIT_ABUSE.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_a_flooder_gets_the_4429_close_frame() {
    a_flooder_gets_the_4429_close_frame(Runtime::Tokio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smol_a_flooder_gets_the_4429_close_frame() {
    a_flooder_gets_the_4429_close_frame(Runtime::Smol).await;
}
