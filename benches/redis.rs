//! The Redis backend (feature `redis`) against a local `redis-server` it starts itself (on a
//! free port, no persistence): a push of one change and of a batch of 100, and a pull of 100
//! changes after a cursor from a log of 100 000, each beside the `MemoryStore` doing the same
//! (the baseline: what leaving the process costs). Also pushes from 64 tasks at once, which a
//! multiplexed connection pipelines. Skipped, loudly, without `redis-server`. Run with
//! `cargo bench --features tokio,redis --bench redis -- --warm-up-time 1 --measurement-time 3`.

#[path = "../tests/redis_util/mod.rs"]
mod redis_util;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use syncmux::adapters::redis::{RedisBackend, RedisConfig};
use syncmux::adapters::Read;
use syncmux::payload::{ChangeRecord, Cursor, Hlc, RawJson};
use syncmux::{MemoryStore, StoreConfig};

const LOG: u64 = 100_000;
const PULL: u64 = 100;

fn record(i: u64) -> ChangeRecord {
    let value = RawJson::from_string(format!("\"title {i}\"")).expect("a JSON string");
    let hlc = Hlc::new(1_706_000_000_000_000_000 + i as i64 * 1000, 0, "node-1");
    ChangeRecord::new(
        format!("t{}", i % 4),
        i.to_string(),
        "title",
        "lww",
        hlc,
        "node-1",
    )
    .with_value(value)
}

fn benches(c: &mut Criterion) {
    let Some(redis) = redis_util::RedisServer::start() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let backend = rt
        .block_on(RedisBackend::connect(RedisConfig::new(redis.url())))
        .expect("redis");
    let mut memory = MemoryStore::new(StoreConfig::default());
    let mut next = 0u64;

    let mut group = c.benchmark_group("push");
    group.throughput(Throughput::Elements(1));
    group.bench_function("memory_store_1", |b| {
        b.iter(|| {
            next += 1;
            black_box(memory.push(vec![record(next)]))
        })
    });
    group.bench_function("redis_1", |b| {
        b.iter(|| {
            next += 1;
            black_box(
                rt.block_on(backend.push(vec![record(next)], None))
                    .expect("push"),
            )
        })
    });
    group.throughput(Throughput::Elements(100));
    group.bench_function("memory_store_100", |b| {
        b.iter(|| {
            let batch = (next..next + 100).map(record).collect();
            next += 100;
            black_box(memory.push(batch))
        })
    });
    group.bench_function("redis_100", |b| {
        b.iter(|| {
            let batch = (next..next + 100).map(record).collect();
            next += 100;
            black_box(rt.block_on(backend.push(batch, None)).expect("push"))
        })
    });
    group.throughput(Throughput::Elements(64));
    group.bench_function("redis_1_from_64_tasks", |b| {
        b.iter(|| {
            let start = next;
            next += 64;
            rt.block_on(async {
                let tasks: Vec<_> = (start..start + 64)
                    .map(|i| {
                        let backend = backend.clone();
                        tokio::spawn(async move { backend.push(vec![record(i)], None).await })
                    })
                    .collect();
                for t in tasks {
                    black_box(t.await.expect("task").expect("push"));
                }
            })
        })
    });
    group.finish();

    // A log of LOG changes in each; pull the last PULL after a cursor.
    let prefix = "pull";
    let mut config = RedisConfig::new(redis.url());
    config.prefix = prefix.to_owned();
    let log = rt.block_on(RedisBackend::connect(config)).expect("redis");
    let epoch = rt.block_on(log.head()).expect("head").epoch;
    let mut store = StoreConfig::default();
    store.epoch = epoch;
    let mut memory = MemoryStore::new(store);
    for start in (0..LOG).step_by(1000) {
        let batch: Vec<ChangeRecord> = (start..start + 1000).map(record).collect();
        let _ = memory.push(batch.clone());
        rt.block_on(log.push(batch, None)).expect("fill");
    }
    let tables: Vec<String> = (0..4).map(|t| format!("t{t}")).collect();
    let cursor = Cursor::new(epoch, LOG - PULL);
    let mut read = Read::new(tables.clone());
    read.cursor = Some(cursor);
    let got = rt.block_on(log.read(read.clone())).expect("read");
    assert_eq!(got.changes.len(), PULL as usize);
    let mut group = c.benchmark_group("pull_100_after_cursor");
    group.throughput(Throughput::Elements(PULL));
    group.bench_function("memory_store", |b| {
        b.iter(|| black_box(memory.pull(&tables, None, Some(&cursor))))
    });
    group.bench_function("redis", |b| {
        b.iter(|| black_box(rt.block_on(log.read(read.clone())).expect("read")))
    });
    group.finish();
}

criterion_group!(redis, benches);
criterion_main!(redis);
