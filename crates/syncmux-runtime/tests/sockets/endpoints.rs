//! The adapters end to end over real loopback sockets (port 0): tokio client ↔ tokio
//! server, smol client ↔ tokio server, tokio client ↔ smol server.
#![cfg(all(feature = "tokio", feature = "smol"))]
#![allow(clippy::unwrap_used)] // test helpers fail loudly

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use syncmux::payload::{ChangeRecord, Cursor, PullRequest, RawJson, RoomEventKind, Subscribe};
use syncmux::Driver;
use syncmux::{AuthDecision, Resource};
use syncmux::{ClientConfig, Server, ServerConfig};
use syncmux::{ClientEvent, ClientState};
use syncmux::{MemoryStore, StoreConfig};
use syncmux_runtime::{self as adapters, ClientEvents, ServerOptions, SyncClient, SyncServer};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

const GUARD: Duration = Duration::from_secs(20);

fn driver() -> Driver {
    let mut config = ServerConfig::default();
    config.path = Some("/sync/ws".to_owned());
    config.max_room_size = 2;
    // Token "secret" required; "secret" also may not read the table "private".
    config.auth = Some(Arc::new(|req: &syncmux::AuthRequest<'_>| {
        if req.token == Some("secret") {
            AuthDecision::allow(None)
        } else {
            AuthDecision::deny(401, "bad token")
        }
    }));
    config.authorize = Some(Arc::new(|access: &syncmux::Access<'_>| {
        access.resource != Resource::ReadTable("private")
    }));
    let server = Server::new(config).unwrap();
    let mut store = StoreConfig::default();
    store.epoch = 7;
    Driver::new(server, MemoryStore::new(store))
}

async fn tokio_server() -> (SyncServer, String) {
    let server = adapters::tokio::start(driver(), ServerOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(adapters::tokio::serve(server.clone(), listener, None));
    (server, format!("ws://{addr}/sync/ws"))
}

fn smol_server() -> (SyncServer, String) {
    let server = adapters::smol::start(driver(), ServerOptions::default());
    let listener = smol::block_on(smol::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    smol::spawn(adapters::smol::serve(server.clone(), listener, None)).detach();
    (server, format!("ws://{addr}/sync/ws"))
}

type Connect = fn(ClientConfig) -> (SyncClient, ClientEvents);

fn tokio_client(config: ClientConfig) -> (SyncClient, ClientEvents) {
    adapters::tokio::connect(config).unwrap()
}

fn smol_client(config: ClientConfig) -> (SyncClient, ClientEvents) {
    adapters::smol::connect(config).unwrap()
}

fn config(url: &str, node: &str) -> ClientConfig {
    let mut config = ClientConfig::new(url, node);
    config.token = Some("secret".to_owned());
    config
}

fn record(pk: &str, ts: i64, node: &str) -> ChangeRecord {
    let json = format!(
        r#"{{"table":"docs","pk":"{pk}","field":"title","crdt_type":"lww","hlc":"{ts}:0:{node}","node_id":"{node}","value":"v{ts}"}}"#
    );
    serde_json::from_str(&json).unwrap()
}

/// The next event that `pick` accepts (others are skipped).
async fn next<T>(events: &mut ClientEvents, mut pick: impl FnMut(ClientEvent) -> Option<T>) -> T {
    loop {
        let event = events.next().await.expect("client task ended");
        if let Some(found) = pick(event) {
            return found;
        }
    }
}

async fn scenario(url: String, connect: Connect) {
    let (alice, mut alice_events) = connect(config(&url, "alice"));
    let (bob, mut bob_events) = connect(config(&url, "bob"));

    // Subscribe, then a push by another node arrives live with its cursor.
    // Its ack says where bob's stream starts: the store's head, nothing replayed.
    let ack = bob
        .subscribe(Subscribe::new(["docs"]))
        .await
        .unwrap()
        .unwrap();
    assert!(ack.recovered);
    assert_eq!(ack.cursor.seq, 0, "{ack:?}");
    let pushed = alice.push(vec![record("1", 10, "alice")]).await.unwrap();
    assert_eq!(pushed.merged, 1);
    let (changes, cursor) = next(&mut bob_events, |e| match e {
        ClientEvent::Changes {
            changes, cursor, ..
        } => Some((changes, cursor)),
        _ => None,
    })
    .await;
    assert_eq!(changes, vec![record("1", 10, "alice")]);
    assert_eq!(cursor, Some(Cursor::new(7, 1)));

    // Pull.
    let pulled = alice.pull(PullRequest::new(["docs"])).await.unwrap();
    assert_eq!(pulled.changes.len(), 1);
    assert_eq!(pulled.cursor, Some(Cursor::new(7, 1)));

    // Presence: the snapshot names the member; the sender gets its own event too.
    let data = RawJson::from_string(r#"{"cursor":3}"#.to_owned()).unwrap();
    alice.update_presence("doc-1", data).await.unwrap();
    let snapshot = bob.get_presence("doc-1").await.unwrap();
    assert_eq!(snapshot.states.len(), 1);
    assert_eq!(snapshot.states[0].node_id, "alice");
    let event = next(&mut alice_events, |e| match e {
        ClientEvent::Presence(p) => Some(p),
        _ => None,
    })
    .await;
    assert_eq!(event.node_id, "alice");

    // Rooms: a broadcast reaches the other member.
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
    assert_eq!(message.node_id.as_deref(), Some("bob"));

    // An error frame: a third member of a room of two.
    let (carol, _carol_events) = connect(config(&url, "carol"));
    let full = carol.join_room("room", None).await.unwrap_err();
    assert_eq!(full.code().as_str(), "ROOM_FULL");
    let forbidden = carol.pull(PullRequest::new(["private"])).await.unwrap_err();
    assert_eq!(forbidden.code().as_str(), "FORBIDDEN");

    // Ping / pong.
    let pong = alice
        .ping(RawJson::from_string("42".to_owned()).unwrap())
        .await;
    assert_eq!(pong.unwrap().get(), "42");

    alice.close().await;
    assert_eq!(alice.state().await, ClientState::Closed);
}

async fn guard<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(GUARD, f)
        .await
        .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_client_with_tokio_server() {
    let (_server, url) = tokio_server().await;
    guard(scenario(url, tokio_client)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smol_client_with_tokio_server() {
    let (_server, url) = tokio_server().await;
    guard(scenario(url, smol_client)).await;
}

/// The smol adapters alone, on smol's executor with no tokio runtime anywhere.
#[test]
fn smol_client_with_smol_server() {
    smol::block_on(async {
        let (_server, url) = smol_server();
        let timeout = async {
            smol::Timer::after(GUARD).await;
            panic!("the scenario took longer than {GUARD:?}");
        };
        smol::future::or(scenario(url, smol_client), timeout).await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_client_with_smol_server() {
    let (_server, url) = smol_server();
    guard(scenario(url, tokio_client)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_are_refused_with_401_and_4426() {
    let (_server, url) = tokio_server().await;
    guard(async move {
        // No token: HTTP 401 before any upgrade.
        let request = format!("{url}?node_id=x").into_client_request().unwrap();
        match tokio_tungstenite::connect_async(request).await {
            Err(WsError::Http(response)) => assert_eq!(response.status(), 401),
            other => panic!("expected 401, got {other:?}"),
        }
        // Only version 2 offered: upgraded, told why, closed with 4426.
        let mut request = format!("{url}?node_id=x&access_token=secret")
            .into_client_request()
            .unwrap();
        let headers = request.headers_mut();
        headers.insert("Sec-WebSocket-Protocol", "syncmux.v2".parse().unwrap());
        let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
        assert_eq!(response.headers()["Sec-WebSocket-Protocol"], "syncmux.v2");
        let Some(Ok(Message::Text(error))) = ws.next().await else {
            panic!("no error frame")
        };
        assert!(error.contains("SYNC_VERSION_MISMATCH"), "{error}");
        let Some(Ok(Message::Close(Some(close)))) = ws.next().await else {
            panic!("no close")
        };
        assert_eq!(u16::from(close.code), 4426);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_every_session_with_1001() {
    let (server, url) = tokio_server().await;
    guard(async move {
        let (client, mut events) = tokio_client(config(&url, "n"));
        client.ping(RawJson::null()).await.unwrap();
        server.shutdown();
        let code = next(&mut events, |e| match e {
            ClientEvent::Disconnected { code, .. } => Some(code),
            _ => None,
        })
        .await;
        assert_eq!(code.map(|c| c.0), Some(1001));
    })
    .await;
}
