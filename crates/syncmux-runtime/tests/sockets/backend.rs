//! The async backend seam with a backend of the test's own (a `MemoryStore` behind a lock,
//! answering from another task, pushes in reverse order): on tokio and on smol, pulls,
//! pushes and replays are answered later and subscribers still get each change once, in
//! cursor order, never their own.
#![cfg(all(feature = "tokio", feature = "smol"))]
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use syncmux::payload::{ChangeRecord, Cursor, Hlc, PullRequest, RawJson, Subscribe};
use syncmux::{AppError, ClientConfig, ClientEvent, PullAnswer, PushAnswer};
use syncmux::{MemoryStore, Server, ServerConfig, StoreConfig};
use syncmux_runtime::{
    self, Backend, BackendFuture, ClientEvents, Push, Read, ServerOptions, SyncClient, SyncServer,
};

/// A store only this server writes, answered asynchronously. Each push waits until the
/// next one arrives (or a short while), so pushes are answered out of order.
struct Async {
    store: Arc<Mutex<MemoryStore>>,
    reads: Arc<Mutex<Vec<Read>>>,
}

impl Backend for Async {
    fn read(&self, read: Read) -> BackendFuture<Result<PullAnswer, AppError>> {
        let store = self.store.clone();
        self.reads.lock().unwrap().push(read.clone());
        Box::pin(async move {
            futures_util::future::ready(()).await;
            let store = store.lock().unwrap();
            let cursor = if read.head_only {
                Some(store.head())
            } else {
                read.cursor
            };
            let out = store.pull(&read.tables, read.since.as_ref(), cursor.as_ref());
            Ok(PullAnswer {
                changes: out.changes,
                latest_hlc: out.latest_hlc,
                head: out.head,
                complete: out.complete,
            })
        })
    }

    fn push(&self, push: Push) -> BackendFuture<Result<PushAnswer, AppError>> {
        let store = self.store.clone();
        Box::pin(async move {
            let out = store.lock().unwrap().push(push.changes);
            if out.accepted.first().is_some_and(|(c, _)| c.seq % 2 == 1) {
                // Odd positions answer late: after the next push's answer, usually.
                for _ in 0..50 {
                    futures_util::future::ready(()).await;
                    yield_now().await;
                }
            }
            Ok(PushAnswer {
                accepted: out.accepted,
                latest_hlc: out.latest_hlc,
                head: out.head,
            })
        })
    }
}

/// Gives other tasks a turn, on any executor.
async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await;
}

fn backend() -> (Arc<Async>, Arc<Mutex<Vec<Read>>>) {
    let mut config = StoreConfig::default();
    config.epoch = 3;
    let reads = Arc::new(Mutex::new(Vec::new()));
    let backend = Async {
        store: Arc::new(Mutex::new(MemoryStore::new(config))),
        reads: reads.clone(),
    };
    (Arc::new(backend), reads)
}

fn server() -> Server {
    let mut config = ServerConfig::default();
    config.rate_limit_burst = 0;
    Server::new(config).unwrap()
}

fn record(pk: &str, ts: i64, node: &str) -> ChangeRecord {
    ChangeRecord::new("docs", pk, "t", "lww", Hlc::new(ts, 0, node), node)
        .with_value(RawJson::from_serialize(&ts).unwrap())
}

async fn changes(events: &mut ClientEvents, n: usize) -> Vec<(Option<Cursor>, String)> {
    let mut got = Vec::new();
    while got.len() < n {
        match events.recv().await.expect("client ended") {
            ClientEvent::Changes {
                changes, cursor, ..
            } => {
                let last = changes.len() - 1;
                for (i, c) in changes.into_iter().enumerate() {
                    got.push(((i == last).then_some(cursor).flatten(), c.pk));
                }
            }
            _ => continue,
        }
    }
    got
}

async fn scenario(
    url: String,
    connect: fn(ClientConfig) -> (SyncClient, ClientEvents),
    reads: Arc<Mutex<Vec<Read>>>,
) {
    let (reader, mut reader_events) = connect(ClientConfig::new(&url, "reader"));
    let ack = reader
        .subscribe(Subscribe::new(["docs"]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ack.cursor, Cursor::new(3, 0));
    assert!(
        reads.lock().unwrap()[0].head_only,
        "the head was read from the backend"
    );
    let (writer, mut writer_events) = connect(ClientConfig::new(&url, "writer"));
    writer.subscribe(Subscribe::new(["docs"])).await.unwrap();
    let pushes: Vec<_> = (0..10)
        .map(|k| writer.push(vec![record(&k.to_string(), k + 1, "writer")]))
        .collect();
    for p in futures_util::future::join_all(pushes).await {
        assert_eq!(p.unwrap().merged, 1);
    }
    let got = changes(&mut reader_events, 10).await;
    let cursors: Vec<u64> = got.iter().filter_map(|(c, _)| c.map(|c| c.seq)).collect();
    assert!(
        cursors.windows(2).all(|w| w[0] < w[1]),
        "cursor order: {cursors:?}"
    );
    assert_eq!(cursors.last(), Some(&10));
    // The writer gets none of its own changes back.
    writer
        .ping(RawJson::from_serialize(&1).unwrap())
        .await
        .unwrap();
    while let Some(Some(e)) = futures_util::FutureExt::now_or_never(writer_events.recv()) {
        assert!(!matches!(e, ClientEvent::Changes { .. }), "{e:?}");
    }
    let pulled = reader
        .pull(PullRequest::new(["docs"]).after(Cursor::new(3, 4)))
        .await
        .unwrap();
    assert_eq!(pulled.recovered, Some(true));
    assert_eq!(pulled.changes.len(), 6);
}

#[tokio::test]
async fn on_tokio() {
    let (backend, reads) = backend();
    let server: SyncServer =
        syncmux_runtime::tokio::start_with_backend(server(), backend, ServerOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    tokio::spawn(syncmux_runtime::tokio::serve(server, listener, None));
    let connect = |c| syncmux_runtime::tokio::connect(c).unwrap();
    tokio::time::timeout(Duration::from_secs(30), scenario(url, connect, reads))
        .await
        .unwrap();
}

#[test]
fn on_smol() {
    smol::block_on(async {
        let (backend, reads) = backend();
        let server =
            syncmux_runtime::smol::start_with_backend(server(), backend, ServerOptions::default());
        let listener = smol::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/", listener.local_addr().unwrap());
        smol::spawn(syncmux_runtime::smol::serve(server, listener, None)).detach();
        let connect = |c| syncmux_runtime::smol::connect(c).unwrap();
        scenario(url, connect, reads).await;
    });
}
