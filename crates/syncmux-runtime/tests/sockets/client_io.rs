//! The native client adapters against raw WebSocket peers over loopback (items 5
//! and 6): writes never stall reads or timers, the client's event queue is its one back
//! pressure rule, and the subprotocols it offers can be configured.
#![cfg(all(feature = "tokio", feature = "smol"))]
#![allow(clippy::unwrap_used, clippy::result_large_err)] // test helpers fail loudly

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use syncmux::payload::{ChangeRecord, RawJson};
use syncmux::wire::CloseCode;
use syncmux::ClientConfig;
use syncmux::ClientEvent;
use syncmux_runtime::{self as adapters, ClientEvents, ClientOptions, SyncClient};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Generous: every wait here ends as soon as what it waits for happens.
const GUARD: Duration = Duration::from_secs(20);

type Connect = fn(ClientConfig, ClientOptions) -> (SyncClient, ClientEvents);

fn tokio_client(config: ClientConfig, options: ClientOptions) -> (SyncClient, ClientEvents) {
    adapters::Tokio::connect_with(config, options).unwrap()
}

fn smol_client(config: ClientConfig, options: ClientOptions) -> (SyncClient, ClientEvents) {
    adapters::Smol::connect_with(config, options).unwrap()
}

/// Accepts WebSocket upgrades selecting `syncmux.v1`, records each offered
/// `Sec-WebSocket-Protocol`, and hands every upgraded socket to `on_socket`.
async fn peer<F, Fut>(offered: Arc<Mutex<Vec<String>>>, on_socket: F) -> String
where
    F: Fn(usize, WebSocketStream<TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let on_socket = Arc::new(on_socket);
    tokio::spawn(async move {
        for n in 0.. {
            let (tcp, _) = listener.accept().await.unwrap();
            let (offered, on_socket) = (offered.clone(), on_socket.clone());
            tokio::spawn(async move {
                let callback = |req: &Request, mut resp: Response| {
                    let header = req.headers().get("Sec-WebSocket-Protocol");
                    let value = header.map(|v| v.to_str().unwrap().to_owned());
                    offered.lock().unwrap().push(value.unwrap_or_default());
                    let v = "syncmux.v1".parse().unwrap();
                    resp.headers_mut().insert("Sec-WebSocket-Protocol", v);
                    Ok(resp)
                };
                if let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await {
                    on_socket(n, ws).await;
                }
            });
        }
    });
    format!("ws://{addr}/sync/ws")
}

/// Answers every frame on `ws` with a pong of its id (these tests' clients send nothing but
/// pings), until the socket ends.
async fn answer_pings(ws: &mut WebSocketStream<TcpStream>) {
    while let Some(Ok(Message::Text(text))) = ws.next().await {
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let id = v["id"].as_str().unwrap();
        let pong = format!(r#"{{"type":"pong","id":"{id}"}}"#);
        let _ = ws.send(Message::text(pong)).await;
    }
}

fn big_record(i: usize) -> ChangeRecord {
    let value = "x".repeat(1 << 20);
    let json = format!(
        r#"{{"table":"docs","pk":"{i}","field":"body","crdt_type":"lww","hlc":"{i}:0:n","node_id":"n","value":"{value}"}}"#
    );
    serde_json::from_str(&json).unwrap()
}

/// A peer that completes the upgrade and then never reads again (a dead host whose socket
/// buffers fill up): the client keeps pushing 1 MiB frames, yet its pong timeout still
/// fires and it reports the connection dead (it used to await the blocked write forever, so
/// neither reads nor timers ran again).
async fn detects_a_peer_that_stopped_reading(connect: Connect) {
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    let url = peer(Arc::default(), move |_, ws| {
        // Keep the socket open, unread, for the whole test.
        keep.lock().unwrap().push(ws);
        async {}
    })
    .await;
    let mut config = ClientConfig::new(url, "n");
    config.ping_interval = Duration::from_millis(200);
    config.pong_timeout = Duration::from_millis(300);
    config.reconnect_delay = Duration::from_secs(60);
    config.max_reconnect_delay = Duration::from_secs(60);
    let (client, mut events) = connect(config, ClientOptions::default());
    let found = tokio::time::timeout(GUARD, async {
        assert_eq!(events.next().await, Some(ClientEvent::Connected));
        // 32 MiB: far more than loopback socket buffers hold.
        for i in 0..32 {
            let push = client.push(vec![big_record(i)]);
            tokio::spawn(async move { drop(push.await) });
        }
        match events.next().await.unwrap() {
            ClientEvent::Disconnected { code, .. } => code,
            other => panic!("unexpected {other:?}"),
        }
    })
    .await
    .expect("the dead connection was never detected");
    assert_eq!(found, Some(CloseCode::IDLE_TIMEOUT));
    assert_eq!(held.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_client_detects_a_peer_that_stopped_reading() {
    detects_a_peer_that_stopped_reading(tokio_client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smol_client_detects_a_peer_that_stopped_reading() {
    detects_a_peer_that_stopped_reading(smol_client).await;
}

/// An application that does not read its events: the client's own event bound
/// (`max_queued_events`) applies — the connection is closed as a slow consumer (4503) and
/// comes back — and the client task goes on meanwhile: it reconnects and its keepalive pings
/// keep coming (it used to block on the adapter's event channel, a second bound of its own,
/// which stalled keepalive and never closed).
async fn unread_events_close_with_4503_and_keepalive_goes_on(connect: Connect) {
    let (pings_tx, mut pings) = tokio::sync::mpsc::unbounded_channel();
    let url = peer(Arc::default(), move |n, mut ws| {
        let pings = pings_tx.clone();
        async move {
            if n == 0 {
                for i in 0..200 {
                    let event = format!(
                        r#"{{"type":"presence_event","payload":{{"type":"join","node_id":"p{i}","topic":"t","data":null}}}}"#
                    );
                    if ws.send(Message::text(event)).await.is_err() {
                        return;
                    }
                }
            }
            while let Some(Ok(Message::Text(text))) = ws.next().await {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                if v["type"] == "ping" {
                    let _ = pings.send(n);
                    let id = v["id"].as_str().unwrap();
                    let pong = format!(r#"{{"type":"pong","id":"{id}"}}"#);
                    let _ = ws.send(Message::text(pong)).await;
                }
            }
        }
    })
    .await;
    let mut config = ClientConfig::new(url, "n");
    config.max_queued_events = 8;
    config.ping_interval = Duration::from_millis(100);
    config.reconnect_delay = Duration::from_millis(50);
    config.max_reconnect_delay = Duration::from_millis(50);
    let (_client, mut events) = connect(config, ClientOptions::default());
    tokio::time::timeout(GUARD, async {
        // Events unread, a keepalive ping arrives on a later connection.
        while pings.recv().await.unwrap() == 0 {}
        // Now read: what the client kept, then why the first connection ended.
        let mut presence = 0;
        loop {
            match events.next().await.unwrap() {
                ClientEvent::Connected => {}
                ClientEvent::Presence(_) => presence += 1,
                ClientEvent::Disconnected { code, .. } => {
                    assert_eq!(code, Some(CloseCode::SLOW_CONSUMER));
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        // Each queue held max_queued_events: the application's `Connected` and 7 presence
        // events, then the client's 8; the next one closed the connection.
        assert_eq!(presence, 15);
    })
    .await
    .expect("no keepalive after the application stopped reading events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_client_unread_events_close_with_4503() {
    unread_events_close_with_4503_and_keepalive_goes_on(tokio_client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smol_client_unread_events_close_with_4503() {
    unread_events_close_with_4503_and_keepalive_goes_on(smol_client).await;
}

/// An application that dropped its event stream: events are discarded, requests go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_events_are_discarded() {
    let url = peer(Arc::default(), |_, mut ws| async move {
        for i in 0..100 {
            let event = format!(
                r#"{{"type":"presence_event","payload":{{"type":"join","node_id":"p{i}","topic":"t"}}}}"#
            );
            let _ = ws.send(Message::text(event)).await;
        }
        answer_pings(&mut ws).await;
    })
    .await;
    let mut config = ClientConfig::new(url, "n");
    config.max_queued_events = 8;
    let (client, events) = tokio_client(config, ClientOptions::default());
    drop(events);
    tokio::time::timeout(GUARD, async {
        for _ in 0..3 {
            client.ping(RawJson::null()).await.unwrap();
        }
    })
    .await
    .unwrap();
}

/// The subprotocols a native client offers: `syncmux.v1` first, then those of
/// `ClientOptions::protocols` (as the browser adapter's `protocols` option).
async fn offers_configured_subprotocols(connect: Connect) {
    let offered = Arc::new(Mutex::new(Vec::new()));
    let url = peer(offered.clone(), |_, mut ws| async move {
        answer_pings(&mut ws).await;
    })
    .await;
    let mut options = ClientOptions::default();
    options.protocols = vec!["chat".to_owned(), "x-extra.v2".to_owned()];
    let (client, _events) = connect(ClientConfig::new(url, "n"), options);
    tokio::time::timeout(GUARD, client.ping(RawJson::null()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        offered.lock().unwrap().as_slice(),
        ["syncmux.v1, chat, x-extra.v2"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_client_offers_configured_subprotocols() {
    offers_configured_subprotocols(tokio_client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smol_client_offers_configured_subprotocols() {
    offers_configured_subprotocols(smol_client).await;
}
