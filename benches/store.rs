//! `MemoryStore` benchmarks: pulling 100 changes from a 1 000 000-change log after a cursor and
//! after an HLC, and push throughput.
//!
//! Each group has a baseline: cloning the same number of records out of a `Vec`, the floor any
//! pull that returns owned records pays. Run with
//! `cargo bench --bench store -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use syncmux::payload::{ChangeRecord, Cursor, Hlc, RawJson};
use syncmux::{MemoryStore, StoreConfig};

const LOG: u64 = 1_000_000;
const TABLES: u64 = 4;
const PULL: u64 = 100;

/// Change `i`: a last-writer-wins title of row `i`, round-robin over the tables, with HLCs that
/// grow with `i`.
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

fn store(retention: usize) -> MemoryStore {
    let mut config = StoreConfig::default();
    config.retention = retention;
    MemoryStore::new(config)
}

/// A store holding changes `0..n`, pushed in batches as a server would.
fn filled(n: u64, retention: usize) -> MemoryStore {
    let mut store = store(retention);
    for start in (0..n).step_by(10_000) {
        let _ = store.push((start..n.min(start + 10_000)).map(record).collect());
    }
    store
}

fn pull(c: &mut Criterion) {
    let store = filled(LOG, 0);
    let tables: Vec<String> = (0..TABLES).map(|t| format!("t{t}")).collect();
    let cursor = Cursor::new(0, LOG - PULL);
    let since = record(LOG - PULL - 1).hlc;
    let floor: Vec<ChangeRecord> = (LOG - PULL..LOG).map(record).collect();
    assert_eq!(
        store.pull(&tables, None, Some(&cursor)).changes.len(),
        PULL as usize
    );
    assert_eq!(
        store.pull(&tables, Some(&since), None).changes.len(),
        PULL as usize
    );

    let mut group = c.benchmark_group("store/pull 100 of 1M (4 tables)");
    group.throughput(Throughput::Elements(PULL));
    group.bench_function("after cursor", |b| {
        b.iter(|| store.pull(black_box(&tables), None, Some(black_box(&cursor))))
    });
    group.bench_function("after hlc", |b| {
        b.iter(|| store.pull(black_box(&tables), Some(black_box(&since)), None))
    });
    group.bench_function("after cursor, borrowed", |b| {
        b.iter(|| store.pull_borrowed(black_box(&tables), None, Some(black_box(&cursor))))
    });
    group.bench_function("after hlc, borrowed", |b| {
        b.iter(|| store.pull_borrowed(black_box(&tables), Some(black_box(&since)), None))
    });
    // The same pulls from a log 100 times smaller: O(log n + k) means nearly the same time.
    let small = filled(LOG / 100, 0);
    let small_cursor = Cursor::new(0, LOG / 100 - PULL);
    let small_since = record(LOG / 100 - PULL - 1).hlc;
    group.bench_function("after cursor, borrowed, 10k log", |b| {
        b.iter(|| small.pull_borrowed(black_box(&tables), None, Some(black_box(&small_cursor))))
    });
    group.bench_function("after hlc, borrowed, 10k log", |b| {
        b.iter(|| small.pull_borrowed(black_box(&tables), Some(black_box(&small_since)), None))
    });
    group.bench_function("one table, after cursor", |b| {
        b.iter(|| store.pull(black_box(&tables[..1]), None, Some(black_box(&cursor))))
    });
    group.bench_function("baseline: clone 100 records", |b| {
        b.iter(|| black_box(&floor).clone())
    });
    group.finish();
}

fn push(c: &mut Criterion) {
    const BATCH: u64 = 100;
    let mut group = c.benchmark_group("store/push");
    group.throughput(Throughput::Elements(BATCH));
    // Steady state at the retention bound: every accepted change also evicts the oldest.
    let mut store = filled(100_000, 100_000);
    let mut next = 100_000;
    group.bench_function("100 new changes (retention 100k, full)", |b| {
        b.iter_batched(
            || {
                next += BATCH;
                (next - BATCH..next).map(record).collect::<Vec<_>>()
            },
            |batch| store.push(batch),
            BatchSize::SmallInput,
        )
    });
    let duplicates: Vec<ChangeRecord> = (next - BATCH..next).map(record).collect();
    group.bench_function("100 duplicates", |b| {
        b.iter_batched(
            || duplicates.clone(),
            |batch| store.push(batch),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("baseline: clone 100 records", |b| {
        b.iter(|| black_box(&duplicates).clone())
    });
    group.finish();
}

criterion_group!(benches, pull, push);
criterion_main!(benches);
