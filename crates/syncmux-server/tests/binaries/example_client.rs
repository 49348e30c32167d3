//! `syncmux-cli` as a user runs it: a follower follows until it is
//! told to stop, through a server that accepts every connection and drops it before
//! answering, and prints each change once the server finally answers.
#![allow(clippy::unwrap_used, clippy::result_large_err)] // test helpers fail loudly

use crate::example_util;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use example_util::{example_binary, Killed};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

/// A server that accepts the upgrade and drops the connection at once, `drops` times, and
/// then answers the first subscribe with an ack and one change.
async fn flaky_server(drops: usize) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(async move {
                let callback = |_: &Request, mut resp: Response| {
                    let v = "syncmux.v1".parse().unwrap();
                    resp.headers_mut().insert("Sec-WebSocket-Protocol", v);
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
                    return;
                };
                if n <= drops {
                    return; // dropped before answering anything
                }
                while let Some(Ok(Message::Text(text))) = ws.next().await {
                    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                    if v["type"] != "subscribe" {
                        continue;
                    }
                    let id = v["id"].as_str().unwrap();
                    let ack = format!(
                        r#"{{"type":"ack","id":"{id}","payload":{{"recovered":true,"cursor":"1.0"}}}}"#
                    );
                    let change = r#"{"type":"change","cursor":"1.1","payload":{"table":"docs","pk":"1","field":"title","crdt_type":"lww","hlc":"5:0:alice","node_id":"alice","value":"Hi"}}"#;
                    ws.send(Message::text(ack)).await.unwrap();
                    ws.send(Message::text(change)).await.unwrap();
                }
            });
        }
    });
    (format!("ws://{addr}/sync/ws"), accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_follows_through_a_server_that_drops_it_before_answering() {
    let binary = tokio::task::spawn_blocking(|| example_binary("client"))
        .await
        .unwrap();
    let (url, accepted) = flaky_server(4).await;
    let mut client = Killed(
        Command::new(binary)
            .args(["--url", &url, "--node-id", "bob"])
            .args(["--reconnect-delay", "20", "--max-reconnect-delay", "40"])
            // Shorter than the whole outage: the subscribe may time out, the follower stays.
            .args(["--request-timeout", "50"])
            .args(["subscribe", "docs"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = client.0.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let done = line.contains(r#""change""#);
            seen.push(line);
            if done {
                break;
            }
        }
        seen
    });
    let lines = tokio::time::timeout(Duration::from_secs(60), lines)
        .await
        .expect("the follower printed the change")
        .unwrap();
    assert!(
        accepted.load(Ordering::SeqCst) >= 5,
        "it reconnected through every drop"
    );
    assert!(
        client.0.try_wait().unwrap().is_none(),
        "still following: {lines:#?}"
    );
    let reconnects = lines.iter().filter(|l| l.contains("reconnecting")).count();
    assert!(reconnects >= 4, "{lines:#?}");
    let change = lines.last().unwrap();
    assert!(change.contains(r#""pk":"1""#) && change.contains(r#""cursor":"1.1""#));
}
