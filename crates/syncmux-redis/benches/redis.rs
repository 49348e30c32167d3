//! The Redis backend against a local `redis-server` it starts itself (on a
//! free port, no persistence): a push of one change and of a batch of 100, and a pull of 100
//! changes after a cursor from a log of 100 000, each beside the `MemoryStore` doing the same
//! (the baseline: what leaving the process costs). Also pushes from 64 tasks at once, which a
//! multiplexed connection pipelines. And end to end over WebSockets: a push reaching a
//! subscriber on another server through Redis versus on the same server with `MemoryStore`,
//! and deliveries per second per server with 50 subscribers on each of two servers versus one
//! `MemoryStore` server with 50. And a push through Sentinel, with `min_replicas` 1 and on a
//! Cluster beside one Redis. Skipped, loudly, without `redis-server` (and `redis-sentinel`).
//! Run with
//! `cargo bench --features redis --bench redis -- --warm-up-time 1 --measurement-time 3`.

// Wall-clock time is what a benchmark measures.
#![allow(clippy::disallowed_methods)]

#[path = "../tests/redis_util/mod.rs"]
mod redis_util;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use syncmux::payload::{ChangeRecord, Cursor, Hlc, RawJson, Subscribe};
use syncmux::{ClientConfig, ClientEvent, Driver, MemoryStore, Server, ServerConfig, StoreConfig};
use syncmux_redis::{RedisBackend, RedisConfig};
use syncmux_runtime::{
    self as adapters, ClientEvents, Read, ServerOptions, SyncClient, SyncServer,
};

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

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

fn benches(c: &mut Criterion) {
    let Some(redis) = redis_util::RedisServer::start() else {
        return;
    };
    let rt = runtime();
    let backend = rt
        .block_on(RedisBackend::connect(RedisConfig::new(redis.url())))
        .expect("redis");
    let mut memory = MemoryStore::new(StoreConfig::default());
    let mut next = 0u64;

    let mut group = c.benchmark_group("redis_push");
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
    let mut group = c.benchmark_group("redis_pull_100_after_cursor");
    group.throughput(Throughput::Elements(PULL));
    group.bench_function("memory_store", |b| {
        b.iter(|| black_box(memory.pull(&tables, None, Some(&cursor))))
    });
    group.bench_function("redis", |b| {
        b.iter(|| black_box(rt.block_on(log.read(read.clone())).expect("read")))
    });
    group.finish();
}

fn server_config() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.path = Some("/sync/ws".to_owned());
    // Limits and timers that a benchmark would trip are not what it measures.
    config.rate_limit_burst = 0;
    config.ping_interval = Duration::ZERO;
    config.idle_timeout = Duration::ZERO;
    config
}

/// A server on `backend` (Redis) or on its own `MemoryStore`, listening; its URL.
async fn listen(backend: Option<RedisBackend>) -> (SyncServer, String) {
    let server = Server::new(server_config()).expect("config");
    let server = match backend {
        Some(b) => {
            adapters::Tokio::start_with_backend(server, Arc::new(b), ServerOptions::default())
        }
        None => {
            let driver = Driver::new(server, MemoryStore::new(StoreConfig::default()));
            adapters::Tokio::start(driver, ServerOptions::default())
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("ws://{}/sync/ws", listener.local_addr().expect("addr"));
    tokio::spawn(adapters::Tokio::serve(server.clone(), listener, None));
    (server, url)
}

async fn subscriber(url: &str, id: &str) -> (SyncClient, ClientEvents) {
    let (client, events) = adapters::Tokio::connect(ClientConfig::new(url, id)).expect("config");
    client
        .subscribe(Subscribe::new(["t0"]))
        .await
        .expect("subscribe");
    (client, events)
}

/// A pusher and subscribers, each change awaited at every subscriber.
struct Delivery {
    _servers: Vec<SyncServer>,
    pusher: SyncClient,
    subscribers: Vec<(SyncClient, ClientEvents)>,
    next: u64,
}

impl Delivery {
    /// `per_server` subscribers on each server at `urls`; the pusher on the first.
    async fn new(servers: Vec<(SyncServer, String)>, per_server: usize, next: u64) -> Delivery {
        let (pusher, _) =
            adapters::Tokio::connect(ClientConfig::new(&servers[0].1, "pusher")).expect("config");
        let mut subscribers = Vec::new();
        for (k, (_, url)) in servers.iter().enumerate() {
            for i in 0..per_server {
                subscribers.push(subscriber(url, &format!("s{k}-{i}")).await);
            }
        }
        Delivery {
            _servers: servers.into_iter().map(|(s, _)| s).collect(),
            pusher,
            subscribers,
            next,
        }
    }

    async fn run(&mut self, n: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..n {
            self.next += 1;
            self.pusher
                .push(vec![record(self.next * 4)])
                .await
                .expect("push");
            for (_, events) in &mut self.subscribers {
                loop {
                    match events.recv().await.expect("client") {
                        ClientEvent::Changes { .. } => break,
                        _ => continue,
                    }
                }
            }
        }
        start.elapsed()
    }
}

fn end_to_end(c: &mut Criterion) {
    let Some(redis) = redis_util::RedisServer::start() else {
        return;
    };
    let rt = runtime();
    let connect = |prefix: &str| {
        let mut config = RedisConfig::new(redis.url());
        config.prefix = prefix.to_owned();
        rt.block_on(RedisBackend::connect(config)).expect("redis")
    };
    let next = 1_000_000_000;
    let mut group = c.benchmark_group("redis_push_to_delivery");
    group.throughput(Throughput::Elements(1));
    let mut one = rt.block_on(async { Delivery::new(vec![listen(None).await], 1, next).await });
    group.bench_function("one_server_memory_store", |b| {
        b.iter_custom(|n| rt.block_on(one.run(n)))
    });
    let (a, b) = (connect("e2e"), connect("e2e"));
    let mut two = rt.block_on(async {
        let servers = vec![listen(Some(a)).await, listen(Some(b)).await];
        // The subscriber on the second server only: the change crosses Redis.
        let mut d = Delivery::new(servers, 1, next).await;
        d.subscribers.remove(0);
        d
    });
    group.bench_function("two_servers_on_redis", |b| {
        b.iter_custom(|n| rt.block_on(two.run(n)))
    });
    group.finish();
    drop((one, two));

    const PER_SERVER: usize = 50;
    let mut group = c.benchmark_group("redis_deliveries_per_server");
    group.throughput(Throughput::Elements(PER_SERVER as u64));
    let mut one =
        rt.block_on(async { Delivery::new(vec![listen(None).await], PER_SERVER, next).await });
    group.bench_function("one_server_memory_store", |b| {
        b.iter_custom(|n| rt.block_on(one.run(n)))
    });
    let (a, b) = (connect("fan"), connect("fan"));
    let mut two = rt.block_on(async {
        let servers = vec![listen(Some(a)).await, listen(Some(b)).await];
        Delivery::new(servers, PER_SERVER, next).await
    });
    // Each push reaches PER_SERVER subscribers on each of the two servers: per server, the
    // elements per iteration are the same as the single server's.
    group.bench_function("each_of_two_servers_on_redis", |b| {
        b.iter_custom(|n| rt.block_on(two.run(n)))
    });
    group.finish();
}

/// A push of one change through each high-availability setup, beside one Redis (the primary
/// of the same Sentinel deployment, reached directly) in the same run: through the Sentinels,
/// acknowledged once a replica holds it (`min_replicas` 1), and on a three-primary Cluster.
fn high_availability(c: &mut Criterion) {
    let (Some(sentinels), Some(cluster)) =
        (redis_util::Sentinels::start(), redis_util::Cluster::start())
    else {
        return;
    };
    let rt = runtime();
    let connect = |url: String, prefix: &str, min_replicas: usize| {
        let mut config = RedisConfig::new(url);
        config.prefix = prefix.to_owned();
        config.min_replicas = min_replicas;
        rt.block_on(RedisBackend::connect(config)).expect("redis")
    };
    let setups = [
        ("one_redis", connect(sentinels.primary().url(), "one", 0)),
        ("sentinel", connect(sentinels.url(), "sentinel", 0)),
        (
            "min_replicas_1",
            connect(sentinels.primary().url(), "min", 1),
        ),
        ("cluster", connect(cluster.url(), "cluster", 0)),
    ];
    let mut next = 0u64;
    let mut group = c.benchmark_group("redis_ha_push");
    group.throughput(Throughput::Elements(1));
    for (name, backend) in &setups {
        group.bench_function(*name, |b| {
            b.iter(|| {
                next += 1;
                black_box(
                    rt.block_on(backend.push(vec![record(next)], None))
                        .expect("push"),
                )
            })
        });
    }
    group.finish();
}

criterion_group!(redis, benches, end_to_end, high_availability);
criterion_main!(redis);
