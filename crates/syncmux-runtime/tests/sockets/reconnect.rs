//! Reconnect recovery over real sockets: a TCP proxy between a subscriber and the
//! tokio server cuts every connection, again and again, while another client pushes (some
//! changes with old HLCs, which only a cursor resume can recover). The subscriber reconnects
//! with backoff, re-subscribes from its cursor, and ends with every change exactly once.
#![cfg(feature = "tokio")]
#![allow(clippy::unwrap_used)] // test helpers fail loudly

use std::collections::BTreeMap;
use std::time::Duration;

use syncmux::payload::{ChangeRecord, PullRequest, Subscribe};
use syncmux::ClientEvent;
use syncmux::Driver;
use syncmux::{ClientConfig, Server, ServerConfig};
use syncmux::{MemoryStore, StoreConfig};
use syncmux_runtime::{self as adapters, ClientEvents, ServerOptions};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const GUARD: Duration = Duration::from_secs(30);
/// Rounds of push-then-cut.
const ROUNDS: u64 = 12;

/// A proxy on port 0 in front of `upstream`. Every connection it carries is dropped (both
/// sockets, abruptly) when the generation in `cut` moves.
struct Proxy {
    url: String,
    cut: watch::Sender<u64>,
}

async fn proxy(upstream: std::net::SocketAddr) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (cut, cuts) = watch::channel(0u64);
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let mut cuts = cuts.clone();
            cuts.mark_unchanged();
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = cuts.changed() => {}
                }
                // Both sockets drop here, mid-stream: neither side gets a close frame.
            });
        }
    });
    Proxy {
        url: format!("ws://{addr}/sync/ws"),
        cut,
    }
}

impl Proxy {
    fn cut_all(&self) {
        self.cut.send_modify(|g| *g += 1);
    }
}

fn driver() -> Driver {
    let mut config = ServerConfig::default();
    config.path = Some("/sync/ws".to_owned());
    // The subscriber re-subscribes on every reconnect; the default bucket is not the subject.
    config.rate_limit_burst = 0;
    let server = Server::new(config).unwrap();
    let mut store = StoreConfig::default();
    store.epoch = 3;
    Driver::new(server, MemoryStore::new(store))
}

fn record(pk: u64, ts: i64) -> ChangeRecord {
    let json = format!(
        r#"{{"table":"docs","pk":"{pk}","field":"title","crdt_type":"lww","hlc":"{ts}:0:pusher","node_id":"pusher","value":"v{pk}"}}"#
    );
    serde_json::from_str(&json).unwrap()
}

/// What the subscriber has seen so far, published by the task reading its events.
#[derive(Clone, Default, Debug)]
struct Seen {
    connected: u64,
    reconnecting: u64,
    /// Deliveries per primary key.
    changes: BTreeMap<String, u32>,
    resync_needed: bool,
}

fn watch_events(mut events: ClientEvents) -> watch::Receiver<Seen> {
    let (tx, rx) = watch::channel(Seen::default());
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            tx.send_modify(|seen| match event {
                ClientEvent::Connected => seen.connected += 1,
                ClientEvent::Reconnecting { delay, .. } => {
                    assert!(delay <= Duration::from_millis(40), "backoff over the max");
                    seen.reconnecting += 1;
                }
                ClientEvent::Changes { changes, .. } => {
                    for change in changes {
                        *seen.changes.entry(change.pk.clone()).or_default() += 1;
                    }
                }
                ClientEvent::ResyncNeeded { .. } => seen.resync_needed = true,
                _ => {}
            });
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_recovers_every_change_exactly_once_across_cuts() {
    let server = adapters::tokio::start(driver(), ServerOptions::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(adapters::tokio::serve(server.clone(), listener, None));
    let proxy = proxy(addr).await;

    tokio::time::timeout(GUARD, async move {
        let mut config = ClientConfig::new(proxy.url.clone(), "subscriber");
        config.reconnect_delay = Duration::from_millis(5);
        config.max_reconnect_delay = Duration::from_millis(40);
        let (subscriber, events) = adapters::tokio::connect(config).unwrap();
        let mut seen = watch_events(events);
        let (pusher, _pusher_events) =
            adapters::tokio::connect(ClientConfig::new(format!("ws://{addr}/sync/ws"), "pusher"))
                .unwrap();

        subscriber
            .subscribe(Subscribe::new(["docs"]))
            .await
            .unwrap();
        let mut pk = 0;
        let mut connected_at_cut = 0;
        for round in 0..ROUNDS {
            // Mostly cut a connection that is up again (re-subscribing or re-subscribed);
            // every third round, cut again at once, while the subscriber may be dialing.
            if round % 3 != 2 {
                seen.wait_for(|s| s.connected > connected_at_cut)
                    .await
                    .unwrap();
            }
            let mut batch = Vec::new();
            for i in 0..3 {
                pk += 1;
                // Every third change is late: an HLC older than everything already pushed,
                // which a resume by HLC would never see again.
                let ts = if i == 2 { 1 } else { 1_000 + pk as i64 };
                batch.push(record(pk, ts));
            }
            assert_eq!(pusher.push(batch).await.unwrap().merged, 3);
            connected_at_cut = seen.borrow().connected;
            proxy.cut_all();
            if round % 2 == 1 {
                pk += 1;
                pusher.push(vec![record(pk, 1)]).await.unwrap();
            }
        }
        // A last change after the cuts: the subscriber's session delivers in cursor order,
        // so once it is here every earlier change (and any duplicate) is too.
        pk += 1;
        let sentinel = pk.to_string();
        pusher.push(vec![record(pk, 2_000_000)]).await.unwrap();
        let seen = seen
            .wait_for(|s| s.changes.contains_key(&sentinel))
            .await
            .unwrap()
            .clone();

        let log = pusher.pull(PullRequest::new(["docs"])).await.unwrap();
        assert_eq!(log.changes.len() as u64, pk, "the store holds every push");
        let expected: BTreeMap<String, u32> =
            log.changes.iter().map(|c| (c.pk.clone(), 1)).collect();
        assert_eq!(seen.changes, expected, "every change exactly once");
        assert!(!seen.resync_needed, "cursor resume never loses its place");
        // Two rounds in three wait for a fresh connection, and the sentinel needs one more.
        assert!(
            seen.connected > ROUNDS * 2 / 3,
            "reconnected after the cuts"
        );
        assert!(
            seen.reconnecting >= seen.connected - 1,
            "backoff before each dial"
        );
    })
    .await
    .expect("test timed out");
}
