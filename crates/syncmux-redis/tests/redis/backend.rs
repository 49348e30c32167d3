//! The Redis backend against a real `redis-server` (see `redis_util`): its merge, positions,
//! pulls and retention are exactly the `MemoryStore`'s, its epochs survive nothing but the
//! data, and its start-up fails clearly without Redis.

use crate::redis_util::RedisServer;
use syncmux::payload::{ChangeRecord, Cursor, Hlc, RawJson};
use syncmux::{MemoryStore, StoreConfig};
use syncmux_redis::{RedisBackend, RedisBackendError, RedisConfig};
use syncmux_runtime::Read;

/// A seeded xorshift: the same operations every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn record(rng: &mut Rng) -> ChangeRecord {
    let table = format!("t{}", rng.below(3));
    let pk = rng.below(4).to_string();
    let node = ["a", "b", "a:b", ""][rng.below(4) as usize];
    let ts = rng.below(20) as i64 - 5;
    let hlc = Hlc::new(ts, rng.below(2) as u32, node);
    let kind = ["lww", "lww", "counter", "set"][rng.below(4) as usize];
    ChangeRecord::new(table, pk, "f", kind, hlc, node)
        .with_value(RawJson::from_serialize(&rng.below(100)).unwrap())
}

fn read(tables: &[String], since: Option<Hlc>, cursor: Option<Cursor>) -> Read {
    let mut read = Read::new(tables.to_vec());
    read.since = since;
    read.cursor = cursor;
    read
}

/// Pushes the same random batches (re-sent ones and stale ones included) into a
/// `MemoryStore` and into Redis, and compares every answer and then pulls of every kind.
async fn same_as_memory_store(redis: &RedisServer, prefix: &str, retention: usize, seed: u64) {
    let mut config = RedisConfig::new(redis.url());
    config.prefix = prefix.to_owned();
    config.retention = retention;
    let backend = RedisBackend::connect(config).await.unwrap();
    let epoch = backend.head().await.unwrap().epoch;
    let mut store = StoreConfig::default();
    store.epoch = epoch;
    store.retention = retention;
    let mut memory = MemoryStore::new(store);
    let mut rng = Rng(seed);
    let mut sent: Vec<ChangeRecord> = Vec::new();
    for _ in 0..60 {
        let n = 1 + rng.below(4);
        let batch: Vec<ChangeRecord> = (0..n)
            .map(|_| {
                if !sent.is_empty() && rng.below(4) == 0 {
                    sent[rng.below(sent.len() as u64) as usize].clone()
                } else {
                    record(&mut rng)
                }
            })
            .collect();
        sent.extend(batch.iter().cloned());
        let want = memory.push(batch.clone());
        let got = backend.push(batch, None).await.unwrap();
        assert_eq!(got.accepted, want.accepted);
        assert_eq!(got.head, want.head);
        assert_eq!(got.latest_hlc, want.latest_hlc);
    }
    let head = memory.head().seq;
    let sets: [&[&str]; 4] = [&["t0"], &["t1", "t2"], &["t2", "t0", "t2"], &["nope", "t1"]];
    for tables in sets {
        let tables: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
        let mut cases = vec![(None, None)];
        for seq in [0, 1, head / 2, head.saturating_sub(3), head, head + 1] {
            cases.push((None, Some(Cursor::new(epoch, seq))));
            cases.push((Some(Hlc::new(3, 0, "a")), Some(Cursor::new(epoch, seq))));
        }
        cases.push((Some(Hlc::new(2, 1, "b")), Some(Cursor::new(epoch + 1, 1))));
        for ts in [-6, 0, 5, 14] {
            for node in ["", "a", "a:b"] {
                cases.push((Some(Hlc::new(ts, 0, node)), None));
            }
        }
        for (since, cursor) in cases {
            let want = memory.pull(&tables, since.as_ref(), cursor.as_ref());
            let got = backend
                .read(read(&tables, since.clone(), cursor))
                .await
                .unwrap();
            let what = format!("{tables:?} since {since:?} cursor {cursor:?}");
            assert_eq!(got.changes, want.changes, "{what}");
            assert_eq!(got.latest_hlc, want.latest_hlc, "{what}");
            assert_eq!(got.head, want.head, "{what}");
            assert_eq!(got.complete, want.complete, "{what}");
        }
    }
}

#[tokio::test]
async fn merge_positions_and_pulls_are_the_memory_stores() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    same_as_memory_store(&redis, "parity", 0, 0x9e37_79b9_7f4a_7c15).await;
    same_as_memory_store(&redis, "parity2", 0, 7).await;
}

#[tokio::test]
async fn retention_evicts_like_the_memory_store() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    same_as_memory_store(&redis, "kept7", 7, 0x1234_5678).await;
    same_as_memory_store(&redis, "kept1", 1, 99).await;
}

#[tokio::test]
async fn a_redis_that_lost_its_data_starts_a_new_epoch() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let backend = RedisBackend::connect(RedisConfig::new(redis.url()))
        .await
        .unwrap();
    let mut rng = Rng(5);
    let pushed = backend
        .push(vec![record(&mut rng), record(&mut rng)], None)
        .await
        .unwrap();
    let old = pushed.head;
    assert_eq!(old.seq, 2);
    redis.restart_empty();
    // The first request after the loss may find the old connection broken.
    let mut again = None;
    for _ in 0..20 {
        if let Ok(p) = backend.push(vec![record(&mut rng)], None).await {
            again = Some(p);
            break;
        }
    }
    let again = again.expect("the backend reconnects");
    assert_ne!(again.head.epoch, old.epoch, "a new epoch");
    assert_eq!(
        again.head.seq, 1,
        "numbered from the start of the new epoch"
    );
    let tables: Vec<String> = (0..3).map(|t| format!("t{t}")).collect();
    let resumed = backend.read(read(&tables, None, Some(old))).await.unwrap();
    assert!(!resumed.complete, "an old cursor is not served");
    assert_eq!(resumed.changes.len(), 1);
}

#[tokio::test]
async fn no_redis_at_start_up_is_a_clear_error() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    drop(redis);
    let mut config = RedisConfig::new(&url);
    config.request_timeout = std::time::Duration::from_secs(2);
    let err = RedisBackend::connect(config).await.unwrap_err();
    assert!(matches!(err, RedisBackendError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains(&url), "{err}");
    let err = RedisBackend::connect(RedisConfig::new("nonsense://x"))
        .await
        .unwrap_err();
    assert!(matches!(err, RedisBackendError::Url { .. }), "{err:?}");
}
