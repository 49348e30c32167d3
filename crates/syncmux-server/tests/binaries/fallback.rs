//! The native clients' fallback: behind a proxy that refuses WebSocket upgrades (as
//! corporate proxies do), a tokio and a smol client of `syncmux-server` connect over SSE and
//! POSTs instead, and pull, push, subscribe, share presence and talk in a room as over the
//! WebSocket, with a WebSocket client on the other side.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use crate::example_util::{self, Killed};

use std::time::Duration;

use futures_util::StreamExt;
use syncmux::payload::{ChangeRecord, PullRequest, RawJson, RoomEventKind, Subscribe};
use syncmux::{ClientConfig, ClientEvent, ClientState};
use syncmux_runtime::{self as adapters, ClientEvents, ClientOptions, SyncClient, TransportKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Long enough never to be reached on a loaded machine; only a hang reaches it.
const PATIENCE: Duration = Duration::from_secs(30);

/// A proxy to `upstream` that answers every WebSocket upgrade with 403 and passes
/// everything else on: its address.
async fn blocking_proxy(upstream: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let mut buf = [0u8; 1024];
                    match client.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                if text.contains("upgrade: websocket") {
                    let refusal = "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\
                                   Connection: close\r\n\r\n";
                    let _ = client.write_all(refusal.as_bytes()).await;
                    return;
                }
                let Ok(mut server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                if server.write_all(&head).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    addr
}

/// `syncmux-server`, and its sync URL through a proxy that blocks WebSockets.
async fn server_behind_proxy() -> (Killed, String, String) {
    let (server, url) = example_util::start_server(&[]).unwrap();
    let addr = url
        .strip_prefix("ws://")
        .unwrap()
        .strip_suffix("/sync/ws")
        .unwrap();
    let proxy = blocking_proxy(addr.to_owned()).await;
    (server, url, format!("ws://{proxy}/sync/ws"))
}

fn record(pk: &str, ts: u64, node: &str) -> ChangeRecord {
    let json = format!(
        r#"{{"table":"docs","pk":"{pk}","field":"title","crdt_type":"lww","hlc":"{ts}:0:{node}","node_id":"{node}","value":"v{ts}"}}"#
    );
    serde_json::from_str(&json).unwrap()
}

/// The next event that `pick` accepts (others are skipped).
async fn next<T>(events: &mut ClientEvents, mut pick: impl FnMut(ClientEvent) -> Option<T>) -> T {
    let wait = async {
        loop {
            let event = events.next().await.expect("client task ended");
            if let Some(found) = pick(event) {
                return found;
            }
        }
    };
    tokio::time::timeout(PATIENCE, wait)
        .await
        .expect("the event in time")
}

/// What a client does over the fallback, against `bob` on the WebSocket.
async fn scenario(
    (alice, mut alice_events): (SyncClient, ClientEvents),
    (bob, mut bob_events): (SyncClient, ClientEvents),
) {
    let open = async {
        while alice.state().await != ClientState::Open {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(PATIENCE, open)
        .await
        .expect("open in time");
    assert_eq!(alice.transport().await, Some(TransportKind::Sse));
    assert_eq!(bob.transport().await, Some(TransportKind::WebSocket));

    // Live changes both ways.
    let ack = alice.subscribe(Subscribe::new(["docs"])).await.unwrap();
    assert!(ack.unwrap().recovered);
    bob.subscribe(Subscribe::new(["docs"])).await.unwrap();
    bob.push(vec![record("1", 10, "bob")]).await.unwrap();
    let changes = next(&mut alice_events, |e| match e {
        ClientEvent::Changes { changes, .. } => Some(changes),
        _ => None,
    })
    .await;
    assert_eq!(changes, vec![record("1", 10, "bob")]);
    let pushed = alice.push(vec![record("2", 20, "alice")]).await.unwrap();
    assert_eq!(pushed.merged, 1);
    let changes = next(&mut bob_events, |e| match e {
        ClientEvent::Changes { changes, .. } => Some(changes),
        _ => None,
    })
    .await;
    assert_eq!(changes, vec![record("2", 20, "alice")]);
    let pulled = alice.pull(PullRequest::new(["docs"])).await.unwrap();
    assert_eq!(pulled.changes.len(), 2);

    // Presence, rooms, pings.
    let data = RawJson::from_string(r#"{"cursor":3}"#.to_owned()).unwrap();
    alice.update_presence("doc-1", data).await.unwrap();
    let snapshot = bob.get_presence("doc-1").await.unwrap();
    assert_eq!(snapshot.states[0].node_id, "alice");
    alice.join_room("room", None).await.unwrap();
    bob.join_room("room", None).await.unwrap();
    let hello = RawJson::from_string(r#""hello""#.to_owned()).unwrap();
    bob.broadcast("room", hello.clone()).await.unwrap();
    let message = next(&mut alice_events, |e| match e {
        ClientEvent::Room(r) if r.event == RoomEventKind::Message => Some(r),
        _ => None,
    })
    .await;
    assert_eq!(message.data, Some(hello));
    let pong = alice
        .ping(RawJson::from_string("42".to_owned()).unwrap())
        .await;
    assert_eq!(pong.unwrap().get(), "42");

    alice.close().await;
    assert_eq!(alice.state().await, ClientState::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tokio_client_falls_back_to_sse_when_the_upgrade_is_blocked() {
    let (_server, direct, proxied) = server_behind_proxy().await;
    let alice = adapters::Tokio::connect(ClientConfig::new(&proxied, "alice")).unwrap();
    let bob = adapters::Tokio::connect(ClientConfig::new(&direct, "bob")).unwrap();
    scenario(alice, bob).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smol_client_falls_back_to_sse_when_the_upgrade_is_blocked() {
    let (_server, direct, proxied) = server_behind_proxy().await;
    let alice = std::thread::spawn(move || {
        smol::block_on(async { adapters::Smol::connect(ClientConfig::new(&proxied, "alice")) })
    });
    let alice = alice.join().unwrap().unwrap();
    let bob = adapters::Tokio::connect(ClientConfig::new(&direct, "bob")).unwrap();
    scenario(alice, bob).await;
}

/// Without the fallback among its transports, a client behind the proxy never connects.
#[tokio::test]
async fn a_client_without_the_fallback_stays_disconnected() {
    let (_server, _, proxied) = server_behind_proxy().await;
    let mut options = ClientOptions::default();
    options.transports = vec![TransportKind::WebSocket];
    let (alice, _events) =
        adapters::Tokio::connect_with(ClientConfig::new(&proxied, "alice"), options).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(alice.transport().await, None);
    assert_ne!(alice.state().await, ClientState::Open);
}
