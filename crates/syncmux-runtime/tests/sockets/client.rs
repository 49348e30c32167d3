//! The client adapters against a canned WebSocket peer over loopback (no server state
//! machine involved): dial, subprotocol, request correlation, close codes.
#![cfg(all(feature = "tokio", feature = "smol"))]
#![allow(clippy::unwrap_used, clippy::result_large_err)] // test helpers fail loudly

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use syncmux::payload::{Cursor, PullRequest};
use syncmux::wire::CloseCode;
use syncmux::ClientConfig;
use syncmux::{ClientEvent, ClientState, CloseReason};
use syncmux_runtime::{self as adapters, SyncClient};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

const GUARD: Duration = Duration::from_secs(10);

/// A peer that selects `syncmux.v1`, answers every pull with a canned response under the
/// request's id, and closes with 4401 on a ping.
async fn canned_peer() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let callback = |req: &Request, mut resp: Response| {
                    assert_eq!(req.headers()["Sec-WebSocket-Protocol"], "syncmux.v1");
                    assert!(req.uri().query().unwrap().contains("node_id="));
                    let v = "syncmux.v1".parse().unwrap();
                    resp.headers_mut().insert("Sec-WebSocket-Protocol", v);
                    Ok(resp)
                };
                let mut ws = tokio_tungstenite::accept_hdr_async(tcp, callback)
                    .await
                    .unwrap();
                while let Some(Ok(Message::Text(text))) = ws.next().await {
                    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                    let id = v["id"].as_str().unwrap().to_owned();
                    if v["type"] == "ping" {
                        let frame = CloseFrame {
                            code: WsCode::from(4401),
                            reason: "no".into(),
                        };
                        ws.send(Message::Close(Some(frame))).await.unwrap();
                        continue;
                    }
                    let answer = format!(
                        r#"{{"type":"pull_response","id":"{id}","payload":{{"changes":[],"latest_hlc":"7:0:srv","cursor":"1.0"}}}}"#
                    );
                    ws.send(Message::text(answer)).await.unwrap();
                }
            });
        }
    });
    format!("ws://{addr}/sync/ws")
}

async fn exercise(client: SyncClient, mut events: adapters::ClientEvents) {
    let (a, b) = tokio::join!(
        client.pull(PullRequest::new(["docs"])),
        client.pull(PullRequest::new(["notes"]))
    );
    assert_eq!(a.unwrap().cursor, Some(Cursor::new(1, 0)));
    assert_eq!(b.unwrap().latest_hlc.ts, 7);
    assert_eq!(events.recv().await, Some(ClientEvent::Connected));
    assert_eq!(client.state().await, ClientState::Open);
    // 4401 closes for good: the ping fails with DISCONNECTED and the client says why.
    let ping = client.ping(syncmux::payload::RawJson::null()).await;
    assert_eq!(ping.unwrap_err().code().as_str(), "DISCONNECTED");
    loop {
        match events.recv().await.unwrap() {
            ClientEvent::Closed {
                reason: CloseReason::Server { code, .. },
            } => {
                assert_eq!(code, CloseCode::UNAUTHORIZED);
                break;
            }
            ClientEvent::Disconnected { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(client.state().await, ClientState::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_client_pulls_and_stops_on_4401() {
    let url = canned_peer().await;
    let (client, events) = adapters::tokio::connect(ClientConfig::new(url, "n1")).unwrap();
    tokio::time::timeout(GUARD, exercise(client, events))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smol_client_pulls_and_stops_on_4401() {
    let url = canned_peer().await;
    let (client, events) = adapters::smol::connect(ClientConfig::new(url, "n2")).unwrap();
    tokio::time::timeout(GUARD, exercise(client, events))
        .await
        .unwrap();
}
