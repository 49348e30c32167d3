//! The native OT client (`tokio::connect_ot`, `smol::connect_ot`): an
//! `OtClient` driven over a real WebSocket to `/ot`. Clients of `syncmux-server` converge;
//! a client whose connection is cut redials, fetches a snapshot and re-sends its edit; the
//! smol runtime does the same as tokio.
#![cfg(unix)]
#![allow(clippy::unwrap_used)]

use crate::example_util;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use syncmux::ot::{OtClientConfig, OtClientEvent, OtServer, OtServerConfig, TextOp};
use syncmux::CloseCode;
use syncmux_runtime::{self as adapters, OtClientHandle, OtConnectOptions, ServerOptions};

/// Only a hang reaches it.
const GUARD: Duration = Duration::from_secs(30);

/// Waits until every client has no unacked edit and all hold the same text; that text.
async fn settled(clients: &[&OtClientHandle]) -> String {
    tokio::time::timeout(GUARD, async {
        loop {
            let mut texts = Vec::new();
            let mut idle = true;
            for c in clients {
                let s = c.status().await.unwrap();
                idle &= !s.unacked && s.state == syncmux::ot::OtClientState::Synchronized;
                texts.push((s.text, s.revision));
            }
            if idle && texts.windows(2).all(|w| w[0] == w[1]) {
                return texts.swap_remove(0).0;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("hung")
}

fn options(url: &str) -> OtConnectOptions {
    let mut options = OtConnectOptions::new(url);
    options.reconnect_delay = Duration::from_millis(20);
    options
}

/// Two tokio clients of `syncmux-server` (`/ot`, `--token`) edit at once and converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_of_the_example_server_converge() {
    let mut command = Command::new(example_util::example_binary("server"));
    command
        .args(["--listen", "127.0.0.1:0", "--token", "secret"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut process = example_util::Killed(command.spawn().unwrap());
    let mut stdout = BufReader::new(process.0.stdout.take().unwrap());
    let url = loop {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "the server stopped"
        );
        if let Some(url) = line.trim().strip_prefix("ot on ") {
            break url.to_owned();
        }
    };
    let mut with_token = options(&url);
    with_token.token = Some("secret".to_owned());
    let (a, _ea) =
        adapters::Tokio::connect_ot(OtClientConfig::new("a"), with_token.clone()).unwrap();
    let (b, mut eb) = adapters::Tokio::connect_ot(OtClientConfig::new("b"), with_token).unwrap();
    settled(&[&a, &b]).await;
    for i in 0..20 {
        a.edit(TextOp::new().insert(format!("a{i};")))
            .await
            .unwrap();
        b.edit(TextOp::new().insert(format!("b{i};")))
            .await
            .unwrap();
    }
    let text = settled(&[&a, &b]).await;
    for i in 0..20 {
        assert!(
            text.contains(&format!("a{i};")) && text.contains(&format!("b{i};")),
            "{text}"
        );
    }
    // b saw a's edits as remote changes.
    let mut changed = false;
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(50), eb.recv()).await {
        changed |= matches!(event, OtClientEvent::Changed { .. });
    }
    assert!(changed);
    // A wrong token is refused at the upgrade: the client never synchronizes.
    let mut bad = options(&url);
    bad.token = Some("wrong".to_owned());
    let (c, _ec) = adapters::Tokio::connect_ot(OtClientConfig::new("c"), bad).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_ne!(
        c.status().await.unwrap().state,
        syncmux::ot::OtClientState::Synchronized
    );
    a.close().await;
    assert!(a.edit(TextOp::new().insert("x")).await.is_err(), "closed");
}

/// The server closes every session: the client redials, fetches a snapshot (it missed an
/// edit meanwhile) and its own edit made while cut off is re-sent and applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_lost_its_connection_redials_and_resumes() {
    let server = adapters::Tokio::start_ot(
        OtServer::new(OtServerConfig::default()).unwrap(),
        ServerOptions::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ot", listener.local_addr().unwrap());
    tokio::spawn(adapters::Tokio::serve(server.clone(), listener, None));
    let (a, mut ea) = adapters::Tokio::connect_ot(OtClientConfig::new("a"), options(&url)).unwrap();
    a.edit(TextOp::new().insert("one ")).await.unwrap();
    settled(&[&a]).await;
    // Cut a's connection.
    server.with_server(|s, now| {
        for session in s.document("doc-1").unwrap().members() {
            s.close_session(now, session, CloseCode::GOING_AWAY, "cut");
        }
    });
    a.edit(TextOp::new().retain(4).insert("two")).await.unwrap();
    let (b, _eb) = adapters::Tokio::connect_ot(OtClientConfig::new("b"), options(&url)).unwrap();
    b.edit(TextOp::new().insert("zero ")).await.unwrap();
    let text = settled(&[&a, &b]).await;
    // b's insert, made at revision 0 when b edits before its snapshot came, is concurrent with
    // whichever of a's ops the server applied before it, and goes after each of them (an
    // incoming op yields at a tie): before "one ", between "one " and "two", or after both.
    // a's "two" is there whichever it is.
    let outcomes = ["zero one two", "one zero two", "one twozero "];
    assert!(outcomes.contains(&text.as_str()), "{text}");
    let mut resynced = 0;
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(50), ea.recv()).await {
        resynced += usize::from(matches!(event, OtClientEvent::Resynced { .. }));
    }
    assert!(
        resynced >= 2,
        "a fetched a snapshot on each connect: {resynced}"
    );
}

/// The same client on smol.
#[test]
fn the_smol_client_converges() {
    smol::block_on(async {
        let server = adapters::Smol::start_ot(
            OtServer::new(OtServerConfig::default()).unwrap(),
            ServerOptions::default(),
        );
        let listener = smol::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ot", listener.local_addr().unwrap());
        smol::spawn(adapters::Smol::serve(server.clone(), listener, None)).detach();
        let (a, _ea) = adapters::Smol::connect_ot(OtClientConfig::new("a"), options(&url)).unwrap();
        let (b, _eb) = adapters::Smol::connect_ot(OtClientConfig::new("b"), options(&url)).unwrap();
        a.edit(TextOp::new().insert("smol")).await.unwrap();
        loop {
            let (sa, sb) = (a.status().await.unwrap(), b.status().await.unwrap());
            if !sa.unacked && sb.text == "smol" {
                break;
            }
            smol::Timer::after(Duration::from_millis(10)).await;
        }
        assert_eq!(
            server.with_server(|s, _| s.document("doc-1").unwrap().text().to_owned()),
            "smol"
        );
    });
}
