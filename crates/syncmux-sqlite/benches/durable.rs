//! The durable store beside the `MemoryStore` (the baseline: what being
//! durable costs), and beside redb, a pure-Rust embedded database, doing the same with the
//! same schema idea (a log by position, a per-table position index, `lww` winners; one
//! transaction per push, synced: redb's default durability, SQLite's `synchronous=FULL`):
//!
//! - `durable_push`: one change, a batch of 100, and 64 pushes of one change at once, which the
//!   `SqliteBackend`'s writer thread merges in shared commits (group commit) where 64
//!   `SqliteStore::push` calls one after the other sync 64 times;
//! - `durable_pull_100_after_cursor_of_1m`: the last 100 changes of a 1 000 000-change log after a
//!   cursor (and, for SQLite, the same from a 10 000-change log: the index makes them alike);
//!   `durable_pull_100_after_hlc_of_1m`: the same after an HLC;
//! - `durable_open_1m`: opening a 1 000 000-change database (with SQLite's `quick_check`, without, and
//!   redb's open).
//!
//! One run on the project's 2-core machine (shared with other builds, so ±30 %),
//! mean times: push of 1: memory 2.9 µs, SQLite 160 µs, redb 249 µs; push of 100: memory
//! 290 µs, SQLite 1.08 ms, redb 1.33 ms; 64 pushes of 1: SQLite one by one 10.9 ms, through
//! the backend at once 1.23 ms; pull of 100 after a cursor from 1M: memory 27 µs, SQLite
//! 105 µs (from 10k: 105 µs), redb 109 µs; after an HLC: memory 34 µs, SQLite 115 µs; open of
//! 1M: SQLite 0.24 ms (413 ms with `quick_check`), redb 10 ms; files of 1M: SQLite 317 MB,
//! redb 540 MB. redb is not clearly better on any of them, so SQLite stays.
//!
//! The 1 000 000-change databases are built once (in batches of 10 000 per transaction) and
//! kept in the target directory for later runs. Run with
//! `cargo bench -p syncmux-sqlite --bench durable -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
use syncmux::payload::{ChangeRecord, Cursor, Hlc, RawJson};
use syncmux::{MemoryStore, StoreConfig};
use syncmux_sqlite::{SqliteBackend, SqliteBackendConfig};
use syncmux_sqlite::{SqliteConfig, SqliteStore};

const LOG: u64 = 1_000_000;
const PULL: u64 = 100;
const FILL_BATCH: u64 = 10_000;
const TABLES: u64 = 4;

fn record(i: u64) -> ChangeRecord {
    let value = RawJson::from_string(format!("\"title {i}\"")).expect("a JSON string");
    let hlc = Hlc::new(1_706_000_000_000_000_000 + i as i64 * 1000, 0, "node-1");
    ChangeRecord::new(
        format!("t{}", i % TABLES),
        i.to_string(),
        "title",
        "lww",
        hlc,
        "node-1",
    )
    .with_value(value)
}

fn tables() -> Vec<String> {
    (0..TABLES).map(|t| format!("t{t}")).collect()
}

fn bench_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("durable-bench");
    std::fs::create_dir_all(&dir).expect("bench directory");
    dir
}

fn sqlite_config(verify: bool) -> SqliteConfig {
    let mut config = SqliteConfig::default();
    config.epoch = 1;
    config.verify = verify;
    config
}

// ---- redb, the same schema idea ---------------------------------------------------------

/// seq -> the record's JSON.
const CHANGES: TableDefinition<u64, &str> = TableDefinition::new("changes");
/// (table, seq): the per-table position index.
const BY_SEQ: TableDefinition<(&str, u64), ()> = TableDefinition::new("by_seq");
/// (table, pk, field) -> (HLC key, seq): the `lww` winners.
const WINNERS: TableDefinition<(&str, &str, &str), (&[u8], u64)> = TableDefinition::new("winners");

/// The same order-preserving HLC key as the SQLite store's.
fn hlc_key(hlc: &Hlc) -> Vec<u8> {
    let mut key = Vec::with_capacity(12 + hlc.node.len());
    key.extend_from_slice(&((hlc.ts as u64) ^ (1 << 63)).to_be_bytes());
    key.extend_from_slice(&hlc.c.to_be_bytes());
    key.extend_from_slice(hlc.node.as_bytes());
    key
}

struct Redb {
    db: redb::Database,
}

impl Redb {
    fn open(path: &Path) -> Redb {
        Redb {
            db: redb::Database::create(path).expect("redb"),
        }
    }

    fn head(&self) -> u64 {
        let tx = self.db.begin_read().expect("read");
        match tx.open_table(CHANGES) {
            Ok(t) => t.last().expect("last").map_or(0, |(k, _)| k.value()),
            Err(_) => 0,
        }
    }

    fn len(&self) -> u64 {
        let tx = self.db.begin_read().expect("read");
        tx.open_table(CHANGES).map_or(0, |t| t.len().expect("len"))
    }

    /// One transaction: `lww` against the winner, then the log and its index.
    fn push(&self, changes: Vec<ChangeRecord>) -> Vec<u64> {
        let tx = self.db.begin_write().expect("write");
        let mut accepted = Vec::new();
        {
            let mut log = tx.open_table(CHANGES).expect("changes");
            let mut by_seq = tx.open_table(BY_SEQ).expect("by_seq");
            let mut winners = tx.open_table(WINNERS).expect("winners");
            let mut head = log.last().expect("last").map_or(0, |(k, _)| k.value());
            for record in changes {
                let key = hlc_key(&record.hlc);
                let register = (
                    record.table.as_str(),
                    record.pk.as_str(),
                    record.field.as_str(),
                );
                let winner = winners.get(register).expect("get");
                if winner.is_some_and(|w| w.value().0 >= key.as_slice()) {
                    continue;
                }
                head += 1;
                winners
                    .insert(register, (key.as_slice(), head))
                    .expect("insert");
                let json = serde_json::to_string(&record).expect("json");
                log.insert(head, json.as_str()).expect("insert");
                by_seq
                    .insert((record.table.as_str(), head), ())
                    .expect("insert");
                accepted.push(head);
            }
        }
        tx.commit().expect("commit");
        accepted
    }

    /// The changes of `tables` after `after`, in position order, parsed.
    fn pull(&self, tables: &[String], after: u64) -> Vec<(u64, ChangeRecord)> {
        let tx = self.db.begin_read().expect("read");
        let log = tx.open_table(CHANGES).expect("changes");
        let by_seq = tx.open_table(BY_SEQ).expect("by_seq");
        let mut seqs = Vec::new();
        for table in tables {
            let range = by_seq
                .range((table.as_str(), after + 1)..=(table.as_str(), u64::MAX))
                .expect("range");
            for entry in range {
                seqs.push(entry.expect("entry").0.value().1);
            }
        }
        seqs.sort_unstable();
        seqs.into_iter()
            .map(|seq| {
                let json = log.get(seq).expect("get").expect("logged");
                (seq, serde_json::from_str(json.value()).expect("record"))
            })
            .collect()
    }
}

// ---- the 1 000 000-change databases -------------------------------------------------------

/// The SQLite database of LOG changes, built on the first run.
fn sqlite_1m() -> PathBuf {
    let path = bench_dir().join("sqlite-1m.db");
    if let Ok(store) = SqliteStore::open(&path, sqlite_config(false)) {
        if store.head().seq == LOG {
            return path;
        }
    }
    remove_sqlite(&path);
    let mut store = SqliteStore::open(&path, sqlite_config(false)).expect("create");
    for start in (1..=LOG).step_by(FILL_BATCH as usize) {
        let batch = (start..start + FILL_BATCH).map(record).collect();
        store.push_many(vec![batch]).expect("fill");
    }
    path
}

fn remove_sqlite(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(name));
    }
}

/// The redb database of LOG changes, built on the first run.
fn redb_1m() -> PathBuf {
    let path = bench_dir().join("redb-1m.redb");
    if path.exists() && Redb::open(&path).len() == LOG {
        return path;
    }
    let _ = std::fs::remove_file(&path);
    let db = Redb::open(&path);
    for start in (1..=LOG).step_by(FILL_BATCH as usize) {
        db.push((start..start + FILL_BATCH).map(record).collect());
    }
    path
}

// ---- the benches -------------------------------------------------------------------------

fn push(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(bench_dir()).expect("temporary directory");
    let mut memory = MemoryStore::new(StoreConfig::default());
    let mut sqlite =
        SqliteStore::open(dir.path().join("push.db"), sqlite_config(true)).expect("sqlite");
    let redb = Redb::open(&dir.path().join("push.redb"));
    let mut next = 0u64;

    let mut group = c.benchmark_group("durable_push");
    group.throughput(Throughput::Elements(1));
    group.bench_function("memory_store_1", |b| {
        b.iter(|| {
            next += 1;
            black_box(memory.push(vec![record(next)]))
        })
    });
    group.bench_function("sqlite_1", |b| {
        b.iter(|| {
            next += 1;
            black_box(sqlite.push(vec![record(next)]).expect("push"))
        })
    });
    group.bench_function("redb_1", |b| {
        b.iter(|| {
            next += 1;
            black_box(redb.push(vec![record(next)]))
        })
    });
    group.throughput(Throughput::Elements(100));
    let batch = |next: &mut u64| {
        let batch: Vec<ChangeRecord> = (*next..*next + 100).map(record).collect();
        *next += 100;
        batch
    };
    group.bench_function("memory_store_100", |b| {
        b.iter_batched(
            || batch(&mut next),
            |v| black_box(memory.push(v)),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("sqlite_100", |b| {
        b.iter_batched(
            || batch(&mut next),
            |v| black_box(sqlite.push(v).expect("push")),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("redb_100", |b| {
        b.iter_batched(
            || batch(&mut next),
            |v| black_box(redb.push(v)),
            BatchSize::SmallInput,
        )
    });

    // 64 pushes of one change: one after the other on the store (64 syncs), and at once
    // through the backend (its writer thread groups them).
    group.throughput(Throughput::Elements(64));
    group.bench_function("memory_store_1_x64", |b| {
        b.iter(|| {
            for _ in 0..64 {
                next += 1;
                black_box(memory.push(vec![record(next)]));
            }
        })
    });
    group.bench_function("sqlite_1_x64_one_by_one", |b| {
        b.iter(|| {
            for _ in 0..64 {
                next += 1;
                black_box(sqlite.push(vec![record(next)]).expect("push"));
            }
        })
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let backend = std::sync::Arc::new(
        SqliteBackend::open(
            dir.path().join("backend.db"),
            sqlite_config(true),
            SqliteBackendConfig::default(),
        )
        .expect("backend"),
    );
    group.bench_function("sqlite_backend_1_from_64_tasks", |b| {
        b.iter(|| {
            let start = next;
            next += 64;
            rt.block_on(async {
                let tasks: Vec<_> = (start..start + 64)
                    .map(|i| {
                        let backend = backend.clone();
                        tokio::spawn(async move { backend.push(vec![record(i)]).await })
                    })
                    .collect();
                for t in tasks {
                    black_box(t.await.expect("task").expect("push"));
                }
            })
        })
    });
    group.finish();
}

fn pull(c: &mut Criterion) {
    let tables = tables();
    let cursor = Cursor::new(1, LOG - PULL);
    let sqlite = SqliteStore::open(sqlite_1m(), sqlite_config(false)).expect("sqlite");
    let redb = Redb::open(&redb_1m());
    assert_eq!(redb.head(), LOG);
    let mut config = StoreConfig::default();
    config.epoch = 1;
    let mut memory = MemoryStore::new(config);
    for start in (1..=LOG).step_by(FILL_BATCH as usize) {
        let _ = memory.push((start..start + FILL_BATCH).map(record).collect());
    }
    let expected = memory.pull(&tables, None, Some(&cursor));
    assert_eq!(expected.changes.len(), PULL as usize);
    assert_eq!(
        sqlite.pull(&tables, None, Some(&cursor)).expect("pull"),
        expected
    );
    assert_eq!(redb.pull(&tables, LOG - PULL).len(), PULL as usize);

    let mut group = c.benchmark_group("durable_pull_100_after_cursor_of_1m");
    group.throughput(Throughput::Elements(PULL));
    group.bench_function("memory_store", |b| {
        b.iter(|| black_box(memory.pull(&tables, None, Some(&cursor))))
    });
    group.bench_function("sqlite", |b| {
        b.iter(|| black_box(sqlite.pull(&tables, None, Some(&cursor)).expect("pull")))
    });
    let reader = sqlite.reader().expect("reader");
    group.bench_function("sqlite_reader", |b| {
        b.iter(|| black_box(reader.pull(&tables, None, Some(&cursor)).expect("pull")))
    });
    group.bench_function("redb", |b| {
        b.iter(|| black_box(redb.pull(&tables, LOG - PULL)))
    });
    // The same pull from a log 100 times smaller: O(log n + k) makes the two alike.
    let dir = tempfile::tempdir_in(bench_dir()).expect("temporary directory");
    let mut small =
        SqliteStore::open(dir.path().join("10k.db"), sqlite_config(false)).expect("sqlite");
    small
        .push_many(vec![(1..=LOG / 100).map(record).collect()])
        .expect("fill");
    let small_cursor = Cursor::new(1, LOG / 100 - PULL);
    assert_eq!(
        small
            .pull(&tables, None, Some(&small_cursor))
            .expect("pull")
            .changes
            .len(),
        PULL as usize
    );
    group.bench_function("sqlite_of_10k", |b| {
        b.iter(|| {
            black_box(
                small
                    .pull(&tables, None, Some(&small_cursor))
                    .expect("pull"),
            )
        })
    });
    group.finish();

    // After an HLC instead: the per-table HLC index.
    let since = record(LOG - PULL).hlc;
    let expected = memory.pull(&tables, Some(&since), None);
    assert_eq!(expected.changes.len(), PULL as usize);
    assert_eq!(
        sqlite.pull(&tables, Some(&since), None).expect("pull"),
        expected
    );
    let mut group = c.benchmark_group("durable_pull_100_after_hlc_of_1m");
    group.throughput(Throughput::Elements(PULL));
    group.bench_function("memory_store", |b| {
        b.iter(|| black_box(memory.pull(&tables, Some(&since), None)))
    });
    group.bench_function("sqlite", |b| {
        b.iter(|| black_box(sqlite.pull(&tables, Some(&since), None).expect("pull")))
    });
    group.finish();
}

fn open(c: &mut Criterion) {
    let sqlite = sqlite_1m();
    let redb = redb_1m();
    let mut group = c.benchmark_group("durable_open_1m");
    group.sample_size(10);
    group.bench_function("sqlite_quick_check", |b| {
        b.iter(|| black_box(SqliteStore::open(&sqlite, sqlite_config(true)).expect("open")))
    });
    group.bench_function("sqlite_without_check", |b| {
        b.iter(|| black_box(SqliteStore::open(&sqlite, sqlite_config(false)).expect("open")))
    });
    group.bench_function("redb", |b| b.iter(|| black_box(Redb::open(&redb).head())));
    group.finish();
}

criterion_group!(durable, push, pull, open);
criterion_main!(durable);
