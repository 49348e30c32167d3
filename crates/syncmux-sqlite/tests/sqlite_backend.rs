//! The durable backend served by the tokio adapter
//! end to end: concurrent pushes share commits and get consecutive cursors, subscribers get
//! each change live, and after the server and its backend are shut down and opened again on
//! the same file (in this process) clients resume by cursor with `recovered: true`. On smol
//! too: the backend needs no runtime of its own.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use syncmux::payload::{ChangeRecord, Cursor, Hlc, PullRequest, RawJson, Subscribe};
use syncmux::{ClientConfig, ClientEvent, Server, ServerConfig};
use syncmux_runtime::{self as adapters, ClientEvents, ServerOptions, SyncServer};
use syncmux_sqlite::{SqliteBackend, SqliteBackendConfig};
use syncmux_sqlite::{SqliteConfig, SqliteError};

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

/// Pushes that wait for the writer together are merged in shared commits (group commit),
/// and each is still answered with its own positions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_waiting_together_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let backend = backend(&dir.path().join("changes.db"), 9);
    let pushes: Vec<_> = (1..=64).map(|pk| backend.push(vec![record(pk)])).collect();
    let mut seqs: Vec<u64> = futures_util::future::join_all(pushes)
        .await
        .into_iter()
        .map(|p| {
            let p = p.unwrap();
            assert_eq!(p.accepted.len(), 1);
            assert_eq!(
                p.head, p.accepted[0].0,
                "a push's head is its own last position"
            );
            p.head.seq
        })
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=64).collect::<Vec<u64>>());
    let (commits, pushes) = backend.commits();
    assert_eq!(pushes, 64);
    // The first push may commit alone; the rest wait for it together.
    assert!(commits < 64, "{commits} commits for 64 pushes");
    assert_eq!(backend.head().await.unwrap(), Cursor::new(9, 64));
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

/// A database cut short (a torn copy, a disk that lost its tail) is refused at open as
/// corrupt, instead of being read as a shorter history or replaced by an empty one.
#[test]
fn a_truncated_database_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("changes.db");
    let mut store = syncmux_sqlite::SqliteStore::open(&path, SqliteConfig::default()).unwrap();
    store
        .push_many(vec![(1..=2000).map(record).collect()])
        .unwrap();
    // Closing the last connection checkpoints the log into the main file.
    drop(store);
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(len > 64 * 1024, "{len}");
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(len / 2).unwrap();
    drop(file);
    let err = syncmux_sqlite::SqliteStore::open(&path, SqliteConfig::default()).unwrap_err();
    assert!(matches!(err, SqliteError::Corrupt { .. }), "{err}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len / 2);
}

/// Two writers on one file: the newer one writes, the older one's pushes fail without
/// writing anything, so two servers never both serve one log as its only writer.
#[test]
fn only_the_newest_opener_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("changes.db");
    let mut old = syncmux_sqlite::SqliteStore::open(&path, SqliteConfig::default()).unwrap();
    old.push(vec![record(1)]).unwrap();
    let mut new = syncmux_sqlite::SqliteStore::open(&path, SqliteConfig::default()).unwrap();
    let err = old.push(vec![record(2)]).unwrap_err();
    assert!(matches!(err, SqliteError::Displaced { .. }), "{err}");
    let pushed = new.push(vec![record(3)]).unwrap();
    assert_eq!(pushed.head.seq, 2, "the refused push took no position");
}

/// A database written by a newer schema is refused at open, not read as this one's.
#[test]
fn a_newer_schema_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("changes.db");
    drop(syncmux_sqlite::SqliteStore::open(&path, SqliteConfig::default()).unwrap());
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute("UPDATE meta SET schema = 2", [])
        .unwrap();
    let err = syncmux_sqlite::SqliteStore::open(&path, SqliteConfig::default()).unwrap_err();
    assert!(matches!(err, SqliteError::Foreign { .. }), "{err}");
    assert!(err.to_string().contains("schema version 2"), "{err}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// Bytes overwritten anywhere in a database never make the store panic: opening it
    /// fails, or it opens and every pull and push answers (an error or a history).
    #[test]
    fn damaged_bytes_never_panic(
        damage in proptest::collection::vec((0.0..1.0f64, proptest::prelude::any::<u8>()), 1..8),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("changes.db");
        let mut store = syncmux_sqlite::SqliteStore::open(&path, SqliteConfig::default()).unwrap();
        for start in [1, 301] {
            store.push_many(vec![(start..start + 300).map(record).collect()]).unwrap();
        }
        drop(store);
        let mut bytes = std::fs::read(&path).unwrap();
        for (at, byte) in damage {
            let at = ((bytes.len() - 1) as f64 * at) as usize;
            bytes[at] = byte;
        }
        std::fs::write(&path, &bytes).unwrap();
        let mut config = SqliteConfig::default();
        config.retention = 100;
        let opened = syncmux_sqlite::SqliteStore::open(&path, config);
        if let Ok(mut store) = opened {
            let tables = ["docs".to_owned()];
            let _ = store.pull(&tables, None, Some(&Cursor::new(0, 10)));
            let _ = store.pull(&tables, Some(&Hlc::new(50, 0, "w")), None);
            let _ = store.push(vec![record(5), record(1000)]);
            let _ = store.pull(&tables, None, None);
        }
    }
}
