//! The server on the durable store (`--data`, feature `sqlite`, on by default), over real sockets:
//! killed with SIGKILL at seeded moments during a stream of pushes and restarted on the same
//! data, it keeps every acknowledged change exactly once at its cursor, in the same epoch, and
//! clients resume by cursor with `recovered: true`. A damaged or foreign data file stops the
//! start-up; without `--data` the server says that nothing is kept.
#![cfg(unix)]
#![allow(clippy::unwrap_used)]

use crate::example_util;

use example_util::{start_server as start, stderr_of};
use syncmux::payload::{ChangeRecord, Cursor, Hlc, PullRequest, RawJson};
use syncmux::ClientConfig;
use syncmux_runtime::{self as adapters, SyncClient};

fn record(pk: u64) -> ChangeRecord {
    let ts = i64::try_from(pk).unwrap();
    ChangeRecord::new(
        "docs",
        pk.to_string(),
        "body",
        "lww",
        Hlc::new(ts, 0, "w"),
        "w",
    )
    .with_value(RawJson::from_serialize(&pk).unwrap())
}

/// Pulls everything after `cursor`: the answer's changes, its cursor, and `recovered`.
async fn pull_after(
    client: &SyncClient,
    cursor: Cursor,
) -> (Vec<ChangeRecord>, Cursor, Option<bool>) {
    let mut pull = PullRequest::new(["docs"]);
    pull.cursor = Some(cursor.to_string());
    let pulled = client.pull(pull).await.unwrap();
    (pulled.changes, pulled.cursor.unwrap(), pulled.recovered)
}

/// `--retention 3` (with `extra` flags): a cursor older than the 3 newest changes is
/// answered `recovered: false`, a recent one `recovered: true` with what came after it.
async fn retention_bounds_the_store(extra: &[&str]) {
    let mut args = vec!["--retention", "3"];
    args.extend_from_slice(extra);
    let (_server, url) = start(&args).unwrap();
    let (client, _events) = adapters::Tokio::connect(ClientConfig::new(&url, "w")).unwrap();
    let mut head = Cursor::default();
    for pk in 1..=5 {
        head = client.push(vec![record(pk)]).await.unwrap().cursor.unwrap();
    }
    let (kept, _, recovered) = pull_after(&client, Cursor::new(head.epoch, 2)).await;
    assert_eq!(recovered, Some(true));
    assert_eq!(kept, vec![record(3), record(4), record(5)]);
    let (_, _, recovered) = pull_after(&client, Cursor::new(head.epoch, 1)).await;
    assert_eq!(recovered, Some(false));
}

/// `--retention` bounds the in-memory store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_bounds_the_memory_store() {
    retention_bounds_the_store(&[]).await;
}

/// Without `--data` (and without Redis) the server warns at start-up that a restart loses
/// every change.
#[test]
fn without_data_the_server_says_nothing_is_kept() {
    let (mut server, _) = start(&[]).unwrap();
    server.0.kill().unwrap();
    server.0.wait().unwrap();
    let stderr = stderr_of(&mut server);
    assert!(stderr.contains("nothing survives a restart"), "{stderr}");
}

#[cfg(feature = "sqlite")]
mod durable {
    use std::collections::{BTreeMap, HashSet};
    use std::path::Path;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::{pull_after, record, retention_bounds_the_store, start, stderr_of};
    use syncmux::payload::{Cursor, Subscribe};
    use syncmux::ClientConfig;
    use syncmux_runtime as adapters;

    /// The writers pushing at once, so that pushes wait for the writer thread together and
    /// share commits.
    const WRITERS: usize = 4;

    /// A small seeded generator (xorshift64*): the kill points are the same on every run.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
        }
    }

    fn data_args(data: &Path) -> Vec<String> {
        vec!["--data".into(), data.display().to_string()]
    }

    /// Several rounds, each killed (SIGKILL) after a seeded number of acknowledged pushes
    /// while writers still push: after each restart every acknowledged change is there once,
    /// at the cursor its push was answered with, in the same epoch; a reader resuming after
    /// the last cursor it saw gets `recovered: true` and the rest, with nothing missing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acknowledged_changes_survive_sigkill_at_their_cursors() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("changes.db");
        let args = data_args(&data);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut rng = Rng(0x5eed_0020);
        // Every acknowledged change: pk -> its cursor.
        let mut acked: BTreeMap<u64, Cursor> = BTreeMap::new();
        let mut epoch: Option<u64> = None;
        let mut seen = Cursor::default();
        for round in 0..4u64 {
            let (mut server, url) = start(&args).unwrap();
            let (client, _events) = adapters::Tokio::connect(ClientConfig::new(&url, "w")).unwrap();

            // What the previous rounds were acknowledged is all there, once, at its cursor.
            let start_at = Cursor::new(epoch.unwrap_or(0), 0);
            if let Some(epoch) = epoch {
                let (all, head, recovered) = pull_after(&client, start_at).await;
                assert_eq!(recovered, Some(true), "round {round}: the epoch changed");
                assert_eq!(head.epoch, epoch, "round {round}");
                assert_eq!(
                    head.seq,
                    all.len() as u64,
                    "round {round}: positions have gaps"
                );
                let mut pks = HashSet::new();
                for change in &all {
                    assert!(pks.insert(change.pk.clone()), "{} twice", change.pk);
                }
                for (pk, cursor) in &acked {
                    let at = usize::try_from(cursor.seq - 1).unwrap();
                    assert_eq!(
                        all[at].pk,
                        pk.to_string(),
                        "round {round}: {pk} at {cursor}"
                    );
                    assert_eq!(all[at], record(*pk));
                }
                // The reader that last saw `seen` misses nothing.
                let (rest, _, recovered) = pull_after(&client, seen).await;
                assert_eq!(recovered, Some(true));
                let skipped = usize::try_from(seen.seq).unwrap();
                assert_eq!(rest, all[skipped..].to_vec(), "round {round}");
                // A subscriber resuming by cursor is told it recovered.
                let ack = client
                    .subscribe(Subscribe::new(["docs"]).after(seen))
                    .await
                    .unwrap()
                    .unwrap();
                assert!(ack.recovered, "round {round}");
                // The winners are on disk too: re-sending an acknowledged change merges nothing.
                let (pk, _) = acked.iter().next_back().unwrap();
                let again = client.push(vec![record(*pk)]).await.unwrap();
                assert_eq!(again.merged, 0, "round {round}: {pk} merged again");
                seen = head;
            }

            // A stream of pushes from several writers; kill after `kill_after` acknowledged
            // changes, with pushes in flight.
            let kill_after = 5 + rng.below(80) as usize;
            let answered: Arc<Mutex<Vec<(u64, Cursor)>>> = Arc::default();
            let (enough_tx, mut enough) = tokio::sync::mpsc::channel::<()>(1);
            let mut writers = Vec::new();
            for writer in 0..WRITERS as u64 {
                let client = client.clone();
                let answered = answered.clone();
                let enough_tx = enough_tx.clone();
                writers.push(tokio::spawn(async move {
                    // Writer w pushes w + 1 changes at a time: a push's changes take
                    // consecutive positions, ending at the head it is answered with.
                    let size = writer + 1;
                    for i in 0.. {
                        let first = 1 + round * 1_000_000 + (i * WRITERS as u64 + writer) * 10;
                        let pks: Vec<u64> = (first..first + size).collect();
                        let batch = pks.iter().copied().map(record).collect();
                        let Ok(pushed) = client.push(batch).await else {
                            return;
                        };
                        assert_eq!(pushed.merged, size);
                        let head = pushed.cursor.unwrap();
                        let mut answered = answered.lock().unwrap();
                        for (k, pk) in pks.into_iter().enumerate() {
                            let seq = head.seq + 1 + k as u64 - size;
                            answered.push((pk, Cursor::new(head.epoch, seq)));
                        }
                        if answered.len() >= kill_after {
                            let _ = enough_tx.try_send(());
                        }
                    }
                }));
            }
            tokio::time::timeout(Duration::from_secs(60), enough.recv())
                .await
                .expect("the writers were answered")
                .unwrap();
            server.0.kill().unwrap();
            server.0.wait().unwrap();
            for writer in writers {
                writer.abort();
            }
            drop(client);
            let answered = answered.lock().unwrap().clone();
            assert!(answered.len() >= kill_after, "{}", stderr_of(&mut server));
            for (pk, cursor) in answered {
                let epoch = *epoch.get_or_insert(cursor.epoch);
                assert_eq!(cursor.epoch, epoch);
                acked.insert(pk, cursor);
            }
            if seen == Cursor::default() {
                // A reader that saw the first answer of the first round.
                seen = *acked.values().min().unwrap();
            }
        }
    }

    /// A data file that is not a database, or is another program's SQLite database, stops
    /// the start-up with exit code 1 and says why; the file is left as it was.
    #[test]
    fn a_damaged_or_foreign_data_file_stops_the_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.db");
        let bytes: Vec<u8> = (0..16_384u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(&garbage, &bytes).unwrap();
        let args = data_args(&garbage);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let Err((code, stderr)) = start(&args) else {
            panic!("started on a garbage file");
        };
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("the database is corrupt"), "{stderr}");
        assert_eq!(
            std::fs::read(&garbage).unwrap(),
            bytes,
            "the file was changed"
        );

        let foreign = dir.path().join("foreign.db");
        rusqlite::Connection::open(&foreign)
            .unwrap()
            .execute_batch("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('x');")
            .unwrap();
        let args = data_args(&foreign);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let Err((code, stderr)) = start(&args) else {
            panic!("started on another program's database");
        };
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("not a syncmux database"), "{stderr}");
    }

    /// `--retention` bounds the durable store too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retention_bounds_the_durable_store() {
        let dir = tempfile::tempdir().unwrap();
        let args = data_args(&dir.path().join("changes.db"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        retention_bounds_the_store(&args).await;
    }
}

/// `--data` and `--redis` name two different logs: refused together (exit 2).
#[test]
fn data_and_redis_are_refused_together() {
    let Err((code, stderr)) = start(&["--data", "x.db", "--redis", "redis://127.0.0.1:1"]) else {
        panic!("started with both");
    };
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--redis"), "{stderr}");
}

/// A server built without the `sqlite` feature refuses `--data` instead of ignoring it.
#[cfg(not(feature = "sqlite"))]
#[test]
fn without_the_feature_data_is_refused() {
    let Err((code, stderr)) = start(&["--data", "x.db"]) else {
        panic!("started");
    };
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("--features sqlite"), "{stderr}");
}
