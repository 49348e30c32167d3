//! The durable backend (`adapters::sqlite`, feature `sqlite`) served by the tokio adapter
//! end to end: concurrent pushes share commits and get consecutive cursors, subscribers get
//! each change live, and after the server and its backend are shut down and opened again on
//! the same file (in this process) clients resume by cursor with `recovered: true`. On smol
//! too: the backend needs no runtime of its own.
#![cfg(all(feature = "tokio", feature = "smol", feature = "sqlite"))]
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use syncmux::adapters::sqlite::{SqliteBackend, SqliteBackendConfig};
use syncmux::adapters::{self, ClientEvents, ServerOptions, SyncServer};
use syncmux::payload::{ChangeRecord, Cursor, Hlc, PullRequest, RawJson, Subscribe};
use syncmux::{ClientConfig, ClientEvent, Server, ServerConfig, SqliteConfig, SqliteError};

fn server() -> Server {
    let mut config = ServerConfig::default();
    config.rate_limit_burst = 0;
    Server::new(config).unwrap()
}

fn backend(path: &Path, epoch: u64) -> SqliteBackend {
    let mut config = SqliteConfig::default();
    config.epoch = epoch;
    SqliteBackend::open(path, config, SqliteBackendConfig::default()).unwrap()
}

fn record(pk: u64) -> ChangeRecord {
    let ts = i64::try_from(pk).unwrap();
    ChangeRecord::new(
        "docs",
        pk.to_string(),
        "t",
        "lww",
        Hlc::new(ts, 0, "w"),
        "w",
    )
    .with_value(RawJson::from_serialize(&pk).unwrap())
}

/// Starts a server on `backend` on the current tokio runtime: its URL.
async fn start(backend: SqliteBackend) -> (SyncServer, String) {
    let server =
        adapters::tokio::start_with_backend(server(), Arc::new(backend), ServerOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    tokio::spawn(adapters::tokio::serve(server.clone(), listener, None));
    (server, url)
}

/// The next `n` changes a subscriber receives, with the cursor of each batch's last one.
async fn changes(events: &mut ClientEvents, n: usize) -> Vec<ChangeRecord> {
    let mut got = Vec::new();
    while got.len() < n {
        if let ClientEvent::Changes { changes, .. } = events.recv().await.expect("client ended") {
            got.extend(changes);
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_survive_a_restart_and_clients_resume_by_cursor() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("changes.db");
        let (server, url) = start(backend(&path, 41)).await;
        let (reader, mut events) =
            adapters::tokio::connect(ClientConfig::new(&url, "reader")).unwrap();
        let ack = reader
            .subscribe(Subscribe::new(["docs"]))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ack.cursor, Cursor::new(41, 0));
        let (writer, _w) = adapters::tokio::connect(ClientConfig::new(&url, "w")).unwrap();
        // 64 pushes at once: they wait for the writer thread together and share commits,
        // yet each is answered with its own position.
        let pushes: Vec<_> = (1..=64).map(|pk| writer.push(vec![record(pk)])).collect();
        let mut cursors: Vec<u64> = futures_util::future::join_all(pushes)
            .await
            .into_iter()
            .map(|p| {
                let p = p.unwrap();
                assert_eq!(p.merged, 1);
                p.cursor.unwrap().seq
            })
            .collect();
        cursors.sort_unstable();
        assert_eq!(cursors, (1..=64).collect::<Vec<u64>>());
        let live = changes(&mut events, 64).await;
        assert_eq!(live.len(), 64);
        let seen = Cursor::new(41, 40);

        // Down, and up again on the same file with another epoch in the configuration.
        server.shutdown();
        server.drained().await;
        drop((reader, writer, events));
        let (server, url) = start(backend(&path, 42)).await;
        let (client, _e) = adapters::tokio::connect(ClientConfig::new(&url, "reader")).unwrap();
        let pulled = client
            .pull(PullRequest::new(["docs"]).after(seen))
            .await
            .unwrap();
        assert_eq!(pulled.recovered, Some(true));
        assert_eq!(pulled.cursor, Some(Cursor::new(41, 64)));
        let pks: Vec<String> = pulled.changes.iter().map(|c| c.pk.clone()).collect();
        let expected: Vec<String> = live[40..].iter().map(|c| c.pk.clone()).collect();
        assert_eq!(pks, expected, "the same changes at the same positions");
        let ack = client
            .subscribe(Subscribe::new(["docs"]).after(seen))
            .await
            .unwrap()
            .unwrap();
        assert!(ack.recovered);
        // The winners came back: an old change merges nothing, a new one goes on at 65.
        let (w, _we) = adapters::tokio::connect(ClientConfig::new(&url, "w")).unwrap();
        assert_eq!(w.push(vec![record(7)]).await.unwrap().merged, 0);
        let next = w.push(vec![record(100)]).await.unwrap();
        assert_eq!(next.cursor, Some(Cursor::new(41, 65)));
        server.shutdown();
    })
    .await
    .unwrap();
}

#[test]
fn on_smol() {
    smol::block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let server = adapters::smol::start_with_backend(
            server(),
            Arc::new(backend(&dir.path().join("changes.db"), 5)),
            ServerOptions::default(),
        );
        let listener = smol::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/", listener.local_addr().unwrap());
        smol::spawn(adapters::smol::serve(server, listener, None)).detach();
        let (client, _e) = adapters::smol::connect(ClientConfig::new(&url, "w")).unwrap();
        let pushed = client.push(vec![record(1), record(2)]).await.unwrap();
        assert_eq!(pushed.cursor, Some(Cursor::new(5, 2)));
        let pulled = client
            .pull(PullRequest::new(["docs"]).after(Cursor::new(5, 1)))
            .await
            .unwrap();
        assert_eq!(pulled.changes, vec![record(2)]);
    });
}

/// A file that is not a database is refused at open, and left as it was.
#[test]
fn a_garbage_file_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("changes.db");
    let garbage = vec![0xA5u8; 8192];
    std::fs::write(&path, &garbage).unwrap();
    let err = SqliteBackend::open(
        &path,
        SqliteConfig::default(),
        SqliteBackendConfig::default(),
    )
    .unwrap_err();
    assert!(matches!(err, SqliteError::Corrupt { .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), garbage);
}
