//! Sessions over channels (`Runtime::frames`), the seam of the HTTP transports: frames in
//! through the inbox, the session's frames out of the stream, the same state machine and
//! limits as a WebSocket session.
#![cfg(feature = "tokio")]
#![allow(clippy::unwrap_used)] // test helpers fail loudly

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use syncmux::wire::{CloseCode, DecodeLimits, MessageType};
use syncmux::{Driver, Handshake, MemoryStore, Server, ServerConfig, StoreConfig};
use syncmux_runtime::{self as adapters, Frames, ServerOptions, SyncServer};

const GUARD: Duration = Duration::from_secs(20);

fn server(config: ServerConfig) -> SyncServer {
    let driver = Driver::new(
        Server::new(config).unwrap(),
        MemoryStore::new(StoreConfig::default()),
    );
    adapters::Tokio::start(driver, ServerOptions::default())
}

fn open(server: &SyncServer, node: &str) -> Frames {
    let handshake = Handshake::new("/sync", format!("node_id={node}"));
    adapters::Tokio::frames(server.handshake(&handshake).unwrap())
}

async fn send(frames: &Frames, frame: &str) {
    frames
        .inbox()
        .send(Bytes::from(frame.to_owned()))
        .await
        .unwrap();
}

/// The next frame of `kind` (others are skipped), within the guard.
async fn next(frames: &mut Frames, kind: MessageType) -> syncmux::wire::Frame {
    tokio::time::timeout(GUARD, async {
        loop {
            let bytes = frames.next().await.expect("the session ended");
            let frame = syncmux::wire::Frame::decode(bytes, &DecodeLimits::default()).unwrap();
            if frame.kind() == kind {
                return frame;
            }
        }
    })
    .await
    .unwrap()
}

fn push(id: &str, pk: &str, ts: u64) -> String {
    format!(
        r#"{{"type":"push_request","id":"{id}","payload":{{"node_id":"alice","changes":[{{"table":"docs","pk":"{pk}","field":"title","crdt_type":"lww","hlc":"{ts}:0:alice","node_id":"alice","value":"{}"}}]}}}}"#,
        "x".repeat(1000)
    )
}

/// Two sessions over channels: bob's subscribed to `docs` (its ack read), and alice's.
async fn subscribed(server: &SyncServer) -> (Frames, Frames) {
    let mut bob = open(server, "bob");
    let alice = open(server, "alice");
    let subscribe = r#"{"type":"subscribe","id":"s","payload":{"tables":["docs"]}}"#;
    send(&bob, subscribe).await;
    let ack = next(&mut bob, MessageType::Ack).await;
    assert_eq!(ack.id().unwrap().as_str(), "s");
    (bob, alice)
}

/// Two sessions over channels: one subscribes, the other pushes; the change arrives live
/// with its cursor, as on a WebSocket. Dropping a stream ends its session.
#[tokio::test]
async fn sessions_run_over_frames() {
    let server = server(ServerConfig::default());
    let (mut bob, mut alice) = subscribed(&server).await;
    send(&alice, &push("p", "1", 10)).await;
    let answer = next(&mut alice, MessageType::PushResponse).await;
    assert_eq!(answer.id().unwrap().as_str(), "p");
    let live = next(&mut bob, MessageType::Change).await;
    assert!(live.cursor().is_some(), "a live change carries its cursor");
    assert_eq!(server.session_count(), 2);

    drop(bob);
    tokio::time::timeout(GUARD, async {
        while server.session_count() > 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("a dropped stream ends its session");
    assert!(alice.closed_with().is_none());
}

/// A stream nobody reads holds a few frames; the rest wait in the server, counted against
/// its outbound bound, and past it the session is closed as a slow consumer (4503): the
/// stream then ends, and says why.
#[tokio::test]
async fn a_stream_nobody_reads_is_closed_as_a_slow_consumer() {
    let mut config = ServerConfig::default();
    config.max_outbound_bytes = 64 * 1024;
    config.rate_limit_burst = 0;
    let server = server(config);
    let (mut bob, mut alice) = subscribed(&server).await;
    for n in 0..200 {
        send(&alice, &push(&format!("p{n}"), &n.to_string(), 10 + n)).await;
        next(&mut alice, MessageType::PushResponse).await;
    }
    let read = tokio::time::timeout(GUARD, bob.by_ref().count())
        .await
        .unwrap();
    assert!(read < 200, "the stream ended early: {read} frames read");
    assert_eq!(
        bob.closed_with().map(|(code, _)| code),
        Some(CloseCode::SLOW_CONSUMER)
    );
}

/// A server that shuts down closes the sessions over channels like any other (1001).
#[tokio::test]
async fn a_shutdown_ends_the_stream_with_its_close_code() {
    let server = server(ServerConfig::default());
    let mut bob = open(&server, "bob");
    server.shutdown();
    let rest = tokio::time::timeout(GUARD, bob.by_ref().count()).await;
    assert!(rest.is_ok(), "the stream ends");
    assert_eq!(
        bob.closed_with().map(|(code, _)| code),
        Some(CloseCode::GOING_AWAY)
    );
}

/// Frames as lines of text, and a close as a last line: the events of the test below.
struct Lines;

impl adapters::Events for Lines {
    fn frame(&self, frame: &Bytes, _: &async_channel::Sender<Bytes>) -> Option<Bytes> {
        let decoded = syncmux::wire::Frame::decode(frame.clone(), &DecodeLimits::default());
        // Only changes are events; the rest counts as written without a byte.
        (decoded.ok()?.kind() == MessageType::Change).then(|| {
            let mut line = frame.to_vec();
            line.push(b'\n');
            Bytes::from(line)
        })
    }

    fn close(&self, code: CloseCode, reason: &str) -> Bytes {
        Bytes::from(format!("close {} {reason}\n", code.0))
    }

    fn keep_alive(&self) -> (Duration, Bytes) {
        (
            Duration::from_secs(3600),
            Bytes::from_static(b"keep-alive\n"),
        )
    }
}

/// A session as a stream of events on a TCP connection (`events_tcp`): the head first, then
/// each frame as the `Events` makes it, written by the hub (a frame that is no event is
/// skipped, and does not count against the outbound bound), then the close as the last
/// bytes. The inbox feeds the session; the consumer's end ends it.
#[tokio::test]
async fn a_session_runs_as_events_on_tcp() {
    use tokio::io::AsyncReadExt;
    let server = server(ServerConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let consumer = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
    let (consumer, accepted) = tokio::join!(consumer, listener.accept());
    let (mut consumer, tcp) = (consumer.unwrap(), accepted.unwrap().0);
    let session = server
        .handshake(&Handshake::new("/sync", "node_id=bob"))
        .unwrap();
    let head = Bytes::from_static(b"head\n");
    let (bob, stream) = adapters::Tokio::events_tcp(session, tcp, head, std::sync::Arc::new(Lines));
    let stream = tokio::spawn(stream);
    let subscribe = r#"{"type":"subscribe","id":"s","payload":{"tables":["docs"]}}"#;
    send(&bob, subscribe).await;
    let (_, mut alice) = (0, open(&server, "alice"));
    for (i, pk) in ["1", "2"].into_iter().enumerate() {
        send(&alice, &push(&format!("p{i}"), pk, 10 + i as u64)).await;
        next(&mut alice, MessageType::PushResponse).await;
    }
    server.shutdown();
    let mut read = String::new();
    let ended = tokio::time::timeout(GUARD, consumer.read_to_string(&mut read)).await;
    ended.unwrap().unwrap();
    let lines: Vec<&str> = read.lines().collect();
    assert_eq!(lines.len(), 4, "{read}");
    assert_eq!(lines[0], "head");
    for (line, pk) in lines[1..3].iter().zip(["1", "2"]) {
        let frame =
            syncmux::wire::Frame::decode(Bytes::from(line.to_string()), &DecodeLimits::default());
        let frame = frame.unwrap();
        assert_eq!(frame.kind(), MessageType::Change, "{line}");
        assert!(line.contains(&format!(r#""pk":"{pk}""#)), "{line}");
    }
    assert!(lines[3].starts_with("close 1001 "), "{read}");
    tokio::time::timeout(GUARD, stream).await.unwrap().unwrap();
    drop(bob);
}
