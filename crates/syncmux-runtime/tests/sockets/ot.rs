//! The OT endpoint's adapter over real loopback sockets (port 0), on tokio and on smol: the
//! upgrade decided by the state machine (`?token=`, 401), acks and broadcasts, binary frames,
//! WebSocket pings and their pongs, termination of a peer that does not answer, the
//! handshake deadline, `wss://`, shutdown with 1001, and a connection that stops reading
//! closed as a slow consumer (tokio's direct write path and smol's queues).
#![cfg(all(feature = "tokio", feature = "smol"))]
#![allow(clippy::unwrap_used)] // test helpers fail loudly

use std::future::Future;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use syncmux::ot::{OtServer, OtServerConfig};
use syncmux::AuthDecision;
use syncmux_runtime::{self as adapters, OtServerHandle, ServerOptions};

use crate::common::{read_until_closed, small_buffer_client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Only a hang reaches it.
const GUARD: Duration = Duration::from_secs(20);

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

fn ot_server(ping_interval: Duration) -> OtServer {
    let mut config = OtServerConfig::default().with_auth(|req| match req.token {
        Some("secret") => AuthDecision::allow(None),
        _ => AuthDecision::deny(401, "bad token"),
    });
    config.ping_interval = ping_interval;
    OtServer::new(config).unwrap()
}

async fn tokio_server(ping_interval: Duration, options: ServerOptions) -> (OtServerHandle, String) {
    let server = adapters::Tokio::start_ot(ot_server(ping_interval), options);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(adapters::Tokio::serve(server.clone(), listener, None));
    (server, addr.to_string())
}

fn smol_server(ping_interval: Duration) -> (OtServerHandle, String) {
    let server = adapters::Smol::start_ot(ot_server(ping_interval), ServerOptions::default());
    let listener = smol::block_on(smol::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    smol::spawn(adapters::Smol::serve(server.clone(), listener, None)).detach();
    (server, addr.to_string())
}

async fn guard<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, f).await.expect("hung")
}

async fn open(addr: &str, query: &str) -> Result<Ws, u16> {
    match tokio_tungstenite::connect_async(format!("ws://{addr}/ot{query}")).await {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("connect: {e}"),
    }
}

/// The next text frame.
async fn text(ws: &mut Ws) -> String {
    loop {
        match ws.next().await.expect("open").expect("read") {
            Message::Text(text) => return text.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Three connections on `doc-1`: an op is acked to its sender and sent to the two others,
/// a binary frame is read like text, a wrong or missing token is HTTP 401.
async fn scenario(addr: String) {
    assert_eq!(open(&addr, "?token=nope").await.err(), Some(401));
    assert_eq!(open(&addr, "").await.err(), Some(401));
    let mut a = open(&addr, "?token=secret").await.unwrap();
    let mut b = open(&addr, "?token=secret").await.unwrap();
    let mut c = open(&addr, "/doc?token=secret").await.unwrap();

    a.send(Message::text(
        r#"{"type":"op","op":[{"i":"Hi"}],"revision":0}"#,
    ))
    .await
    .unwrap();
    assert_eq!(text(&mut a).await, r#"{"type":"ack","revision":1}"#);
    let op = r#"{"type":"op","op":[{"i":"Hi"}],"revision":1}"#;
    assert_eq!(text(&mut b).await, op);
    assert_eq!(text(&mut c).await, op);

    let binary = r#"{"type":"op","op":[{"r":2},{"i":"!"}],"revision":1}"#;
    b.send(Message::binary(binary.as_bytes().to_vec()))
        .await
        .unwrap();
    assert_eq!(text(&mut b).await, r#"{"type":"ack","revision":2}"#);
    let op = r#"{"type":"op","op":[{"r":2},{"i":"!"}],"revision":2}"#;
    assert_eq!(text(&mut a).await, op);
    assert_eq!(text(&mut c).await, op);

    a.send(Message::text(r#"{"type":"snapshot"}"#))
        .await
        .unwrap();
    assert_eq!(
        text(&mut a).await,
        r#"{"type":"snapshot","revision":2,"text":"Hi!"}"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_server_acks_broadcasts_and_refuses_bad_tokens() {
    let (server, addr) = tokio_server(Duration::ZERO, ServerOptions::default()).await;
    guard(scenario(addr)).await;
    assert_eq!(
        server.with_server(|s, _| s.document("doc-1").unwrap().text().to_owned()),
        "Hi!"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smol_server_acks_broadcasts_and_refuses_bad_tokens() {
    let (_server, addr) = smol_server(Duration::ZERO);
    guard(scenario(addr)).await;
}

/// Pings go out as WebSocket pings, and the client's pongs (tungstenite answers them as it
/// reads) reach the state machine: without them the session would be terminated when the
/// second ping is due.
async fn pongs_keep_the_session(addr: String) {
    let mut ws = open(&addr, "?token=secret").await.unwrap();
    let mut pings = 0;
    while pings < 5 {
        match ws.next().await.expect("open").expect("read") {
            Message::Ping(_) => pings += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    ws.send(Message::text(
        r#"{"type":"op","op":[{"i":"x"}],"revision":0}"#,
    ))
    .await
    .unwrap();
    assert_eq!(text(&mut ws).await, r#"{"type":"ack","revision":1}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_go_out_and_pongs_keep_the_session_open() {
    let interval = Duration::from_millis(40);
    let (_server, addr) = tokio_server(interval, ServerOptions::default()).await;
    guard(pongs_keep_the_session(addr)).await;
    let (_server, addr) = smol_server(interval);
    guard(pongs_keep_the_session(addr)).await;
}

/// The upgrade by hand on a raw socket, which then never answers anything.
async fn raw_upgrade(addr: &str) -> tokio::net::TcpStream {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /ot?token=secret HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(
            tcp.read(&mut byte).await.unwrap(),
            1,
            "closed during upgrade"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tcp
}

/// A peer that never answers a ping is dropped when the next is due, without a close frame
/// (the seed's `ws.terminate()`): its socket carries pings only, then ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_does_not_answer_pings_is_terminated_without_a_close_frame() {
    let (server, addr) = tokio_server(Duration::from_millis(40), ServerOptions::default()).await;
    let mut tcp = raw_upgrade(&addr).await;
    let mut bytes = Vec::new();
    // Ends when the server drops the connection (a reset is an end too).
    let _ = guard(tcp.read_to_end(&mut bytes)).await;
    // Unmasked server frames: 0x89 0x00 is an empty ping; a close frame would start 0x88.
    assert!(!bytes.is_empty(), "no ping before the end");
    assert!(
        bytes.chunks(2).all(|frame| frame == [0x89, 0x00]),
        "{bytes:02x?}"
    );
    guard(server.drained()).await;
    assert_eq!(server.session_count(), 0);
    assert_eq!(server.outlet_count(), 0);
}

/// A connection that says nothing after connecting is dropped at the handshake deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_dropped_at_the_handshake_deadline() {
    let mut options = ServerOptions::default();
    options.handshake_timeout = Duration::from_millis(100);
    let (server, addr) = tokio_server(Duration::ZERO, options).await;
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(b"GET /ot HTTP/1.1\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let read = guard(tcp.read(&mut buf)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "answered: {read:?}");
    assert_eq!(server.session_count(), 0);
}

/// `wss://`: TLS in front of the same endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_serves_the_ot_endpoint() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_pem = cert.cert.pem();
    let key_pem = cert.signing_key.serialize_pem();
    let tls = adapters::server_tls(cert_pem.as_bytes(), key_pem.as_bytes()).unwrap();
    let server = adapters::Tokio::start_ot(ot_server(Duration::ZERO), ServerOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(adapters::Tokio::serve(server, listener, Some(tls)));

    let trust = adapters::client_tls_trusting(cert_pem.as_bytes()).unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = tokio_rustls::TlsConnector::from(trust)
        .connect(name, tcp)
        .await
        .unwrap();
    let url = format!("wss://localhost:{port}/ot?token=secret");
    let (mut ws, _) = guard(tokio_tungstenite::client_async(url, stream))
        .await
        .unwrap();
    ws.send(Message::text(
        r#"{"type":"op","op":[{"i":"tls"}],"revision":0}"#,
    ))
    .await
    .unwrap();
    let ack = loop {
        match guard(ws.next()).await.unwrap().unwrap() {
            Message::Text(text) => break text.to_string(),
            _ => continue,
        }
    };
    assert_eq!(ack, r#"{"type":"ack","revision":1}"#);
}

/// Shutdown closes every session with 1001; the tasks end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_every_session_with_1001() {
    let (server, addr) = tokio_server(Duration::ZERO, ServerOptions::default()).await;
    let mut ws = [
        open(&addr, "?token=secret").await.unwrap(),
        open(&addr, "?token=secret").await.unwrap(),
    ];
    server.shutdown();
    for ws in &mut ws {
        let close = loop {
            match guard(ws.next()).await {
                Some(Ok(Message::Close(frame))) => break frame,
                Some(Ok(_)) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        };
        assert_eq!(close.unwrap().code, CloseCode::Away);
    }
    guard(server.drained()).await;
    assert_eq!(server.session_count(), 0);
}

/// An editor whose socket stops taking bytes (a small receive buffer, never read): what the
/// kernel cannot take waits in the server, counted against `max_outbound_bytes` until it
/// is written, and past that bound the connection is closed with 4503. The other editor is
/// never held up; what the stuck one got before the close is every op in revision order,
/// without a gap. Without the count of unwritten bytes (on the hub's direct write path as
/// on the tasks' queues) nothing would bound what waits for it and no close would come.
async fn an_editor_that_stops_reading_is_closed_as_a_slow_consumer(
    start: impl FnOnce(OtServer) -> (OtServerHandle, String),
) {
    const OPS: u64 = 800;
    const LEN: usize = 16 * 1024;
    let mut config = OtServerConfig::default();
    config.max_outbound_bytes = 256 * 1024;
    config.rate_limit_messages = 0;
    config.ping_interval = Duration::ZERO;
    let (server, addr) = start(OtServer::new(config).unwrap());

    let url = format!("ws://{addr}/ot");
    let mut stuck = small_buffer_client(addr.parse().unwrap(), url).await;
    let mut editor = open(&addr, "").await.unwrap();

    // 800 ops of 16 KiB (each replaces the text): 13 MB for a connection allowed 256 KiB
    // beyond its socket (whose kernel send buffer grows to 4 MiB here, `tcp_wmem`).
    let letter = |k: u64| char::from(b'a' + (k % 26) as u8).to_string().repeat(LEN);
    for k in 0..OPS {
        let op = match k {
            0 => format!(r#"[{{"i":"{}"}}]"#, letter(k)),
            _ => format!(r#"[{{"d":{LEN}}},{{"i":"{}"}}]"#, letter(k)),
        };
        let frame = format!(r#"{{"type":"op","op":{op},"revision":{k}}}"#);
        editor.send(Message::text(frame)).await.unwrap();
        let ack = guard(text(&mut editor)).await;
        assert_eq!(ack, format!(r#"{{"type":"ack","revision":{}}}"#, k + 1));
    }
    guard(async {
        while server.session_count() > 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    // Read now: revisions 1, 2, ... in order, then the end of the connection (the close
    // frame is best effort on a socket that was full).
    let seen = read_until_closed(&mut stuck, |seen, op| {
        let revision = format!(r#""revision":{}}}"#, seen + 1);
        assert!(op.ends_with(&revision), "expected {revision}, got {op:.80}");
    })
    .await as u64;
    assert!(seen < OPS, "closed before it got all {OPS}: got {seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_an_editor_that_stops_reading_is_closed_as_a_slow_consumer() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    an_editor_that_stops_reading_is_closed_as_a_slow_consumer(|ot| {
        let server = adapters::Tokio::start_ot(ot, ServerOptions::default());
        tokio::spawn(adapters::Tokio::serve(server.clone(), listener, None));
        (server, addr)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smol_an_editor_that_stops_reading_is_closed_as_a_slow_consumer() {
    an_editor_that_stops_reading_is_closed_as_a_slow_consumer(|ot| {
        let server = adapters::Smol::start_ot(ot, ServerOptions::default());
        let listener = smol::block_on(smol::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        smol::spawn(adapters::Smol::serve(server.clone(), listener, None)).detach();
        (server, addr)
    })
    .await;
}

/// A command that races the close of its OT client (queued behind the close) fails with
/// `Closed` rather than waiting for ever: the ending task refuses what comes after it and
/// drops what was queued.
#[tokio::test]
async fn an_edit_queued_behind_a_close_fails_instead_of_hanging() {
    // Nothing listens there: the client keeps failing to dial, which is all this needs.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/ot", listener.local_addr().unwrap());
    drop(listener);
    let options = syncmux_runtime::OtConnectOptions::new(url);
    let config = syncmux::ot::OtClientConfig::new("a");
    let (client, _events) = adapters::Tokio::connect_ot(config, options).unwrap();
    // Both are queued before the task runs again: the close first, then the edit.
    let op = syncmux::ot::TextOp::new().insert("late");
    let ((), edited) = guard(futures_util::future::join(client.close(), client.edit(op))).await;
    assert!(
        matches!(edited, Err(syncmux_runtime::OtCommandError::Closed)),
        "{edited:?}"
    );
}

/// An OT client whose peer stops reading in the middle of a large op still answers its
/// commands: the task writes what the socket takes and goes on (it used to wait inside the
/// write, and every command with it). The peer is a proxy to a real server that stops reading
/// from the client once it is synchronized.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ot_client_whose_peer_stops_reading_still_answers_commands() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let ot = OtServer::new(OtServerConfig::default()).unwrap();
    let server = adapters::Tokio::start_ot(ot, ServerOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(adapters::Tokio::serve(server.clone(), listener, None));
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ot", proxy.local_addr().unwrap());
    let reading = Arc::new(AtomicBool::new(true));
    let still_reading = reading.clone();
    tokio::spawn(async move {
        let (client, _) = proxy.accept().await.unwrap();
        let server = tokio::net::TcpStream::connect(upstream).await.unwrap();
        let (mut from_client, mut to_client) = client.into_split();
        let (mut from_server, mut to_server) = server.into_split();
        tokio::spawn(async move { tokio::io::copy(&mut from_server, &mut to_client).await });
        let mut buf = vec![0; 4096];
        while still_reading.load(Ordering::SeqCst) {
            match from_client.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => to_server.write_all(&buf[..n]).await.unwrap(),
            }
        }
        // Stops reading, keeps the connection open.
        std::future::pending::<()>().await;
    });
    let options = syncmux_runtime::OtConnectOptions::new(url);
    let mut config = syncmux::ot::OtClientConfig::new("a");
    // An op larger than the socket buffers on both sides hold.
    config.max_document_len = 64 << 20;
    let (client, _events) = adapters::Tokio::connect_ot(config, options).unwrap();
    guard(async {
        while client.status().await.unwrap().state != syncmux::ot::OtClientState::Synchronized {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    reading.store(false, Ordering::SeqCst);
    // Once more through the proxy, which reads one chunk more and stops.
    client
        .edit(syncmux::ot::TextOp::new().insert("a"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let big = "x".repeat(32 << 20);
    let op = syncmux::ot::TextOp::new().retain(1).insert(&big);
    guard(client.edit(op)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = tokio::time::timeout(Duration::from_secs(10), client.status()).await;
    let status = status.expect("the client task hangs in its write").unwrap();
    assert_eq!(status.text.len(), big.len() + 1);
    assert!(status.unacked, "the op is not through");
}
