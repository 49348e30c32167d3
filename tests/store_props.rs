//! Properties of `MemoryStore` under random pushes, orders and duplicates.

use proptest::prelude::*;
use syncmux::payload::{ChangeRecord, Cursor, Hlc, RawJson};
use syncmux::{MemoryStore, StoreConfig};

const EPOCH: u64 = 3;
const TABLES: [&str; 3] = ["a", "b", "c"];
const TYPES: [&str; 3] = ["lww", "counter", "not-yet-invented"];

/// A change drawn from a small space, so that collisions (duplicates, equal HLCs, superseded
/// writes) are common. Its content is a function of its identity (an HLC names one change),
/// and each register (table, pk, field) has one CRDT type.
fn change() -> impl Strategy<Value = ChangeRecord> {
    (0..3usize, 0..3usize, 0..2usize, 0..12i64, 0..2u32, 1..3u8).prop_map(
        |(table, pk, field, ts, c, node)| {
            let hlc = Hlc::new(ts, c, format!("n{node}"));
            let kind = TYPES[(table + pk + field) % TYPES.len()];
            let mut record = ChangeRecord::new(
                TABLES[table],
                pk.to_string(),
                ["x", "y"][field],
                kind,
                hlc.clone(),
                format!("n{node}"),
            );
            record.value = Some(RawJson::from_serialize(&hlc.to_string()).expect("a string"));
            record
        },
    )
}

fn batches() -> impl Strategy<Value = Vec<Vec<ChangeRecord>>> {
    prop::collection::vec(prop::collection::vec(change(), 0..6), 1..16)
}

fn since() -> impl Strategy<Value = Option<Hlc>> {
    prop::option::of(
        (-1..13i64, 0..2u32, 0..4u8).prop_map(|(ts, c, n)| Hlc::new(ts, c, format!("n{n}"))),
    )
}

fn table_set() -> impl Strategy<Value = Vec<String>> {
    prop::sample::subsequence(TABLES.to_vec(), 0..=3)
        .prop_map(|t| t.into_iter().map(String::from).collect())
}

fn store(retention: usize) -> MemoryStore {
    let mut config = StoreConfig::default();
    config.epoch = EPOCH;
    config.retention = retention;
    MemoryStore::new(config)
}

type Log = Vec<(Cursor, ChangeRecord)>;

/// The naive merge of the module docs: is `r` new against everything accepted before it?
fn is_new(accepted: &Log, r: &ChangeRecord) -> bool {
    let register = |o: &ChangeRecord| (&o.table, &o.pk, &o.field) == (&r.table, &r.pk, &r.field);
    if r.crdt_type == "lww" {
        !accepted
            .iter()
            .any(|(_, o)| o.crdt_type == "lww" && register(o) && o.hlc >= r.hlc)
    } else {
        !accepted
            .iter()
            .any(|(_, o)| o.crdt_type != "lww" && register(o) && o.hlc == r.hlc)
    }
}

/// The state a client folds from a log: last-writer-wins registers and the set of operations.
fn state(log: &Log) -> Vec<ChangeRecord> {
    let mut state: Vec<ChangeRecord> = Vec::new();
    for (_, r) in log {
        if is_new(
            &state
                .iter()
                .map(|s| (Cursor::default(), s.clone()))
                .collect(),
            r,
        ) {
            if r.crdt_type == "lww" {
                state.retain(|o| {
                    o.crdt_type != "lww"
                        || (&o.table, &o.pk, &o.field) != (&r.table, &r.pk, &r.field)
                });
            }
            state.push(r.clone());
        }
    }
    state.sort_by(|a, b| {
        (&a.table, &a.pk, &a.field, &a.crdt_type, &a.hlc).cmp(&(
            &b.table,
            &b.pk,
            &b.field,
            &b.crdt_type,
            &b.hlc,
        ))
    });
    state
}

fn in_tables(tables: &[String], r: &ChangeRecord) -> bool {
    tables.contains(&r.table)
}

/// The HLC-filtered log, in HLC order (ties by position).
fn after_since(log: &Log, tables: &[String], since: Option<&Hlc>) -> Log {
    let mut out: Log = log
        .iter()
        .filter(|(_, r)| in_tables(tables, r) && since.is_none_or(|s| r.hlc > *s))
        .cloned()
        .collect();
    out.sort_by(|(ca, a), (cb, b)| (&a.hlc, ca).cmp(&(&b.hlc, cb)));
    out
}

/// Which of `batch` the naive merge accepts after `log`.
fn new_in(log: &Log, batch: &[ChangeRecord]) -> Vec<ChangeRecord> {
    let mut seen = log.clone();
    let mut new = Vec::new();
    for r in batch {
        if is_new(&seen, r) {
            seen.push((Cursor::default(), r.clone()));
            new.push(r.clone());
        }
    }
    new
}

/// The identities of the operation-based changes of `log`, sorted.
fn operations(log: &Log) -> Vec<(String, String, String, Hlc)> {
    let mut ops: Vec<_> = log
        .iter()
        .filter(|(_, r)| r.crdt_type != "lww")
        .map(|(_, r)| {
            (
                r.table.clone(),
                r.pk.clone(),
                r.field.clone(),
                r.hlc.clone(),
            )
        })
        .collect();
    ops.sort();
    ops
}

/// A deterministic Fisher-Yates shuffle driven by an LCG from `seed`.
fn shuffle<T>(mut items: Vec<T>, seed: u64) -> Vec<T> {
    let mut x = seed | 1;
    for i in (1..items.len()).rev() {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        items.swap(i, (x >> 33) as usize % (i + 1));
    }
    items
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Accepted changes follow the naive merge, take consecutive positions, and a reader that
    /// resumes after each head it saw gets the log with no duplicate and no gap.
    #[test]
    fn cursor_resumes_have_no_gap_and_no_duplicate(
        batches in batches(),
        tables in table_set(),
        reads in prop::collection::vec(any::<bool>(), 16),
    ) {
        let mut store = store(0);
        let mut log: Log = Vec::new();
        let (mut read, mut cursor) = (Vec::new(), Cursor::new(EPOCH, 0));
        for (batch, reads_now) in batches.into_iter().zip(reads) {
            let expected = new_in(&log, &batch);
            let pushed = store.push(batch);
            let accepted: Vec<ChangeRecord> =
                pushed.accepted.iter().map(|(_, r)| r.clone()).collect();
            prop_assert_eq!(accepted, expected);
            for (i, (position, _)) in pushed.accepted.iter().enumerate() {
                prop_assert_eq!(*position, Cursor::new(EPOCH, (log.len() + i + 1) as u64));
            }
            log.extend(pushed.accepted);
            prop_assert_eq!(pushed.head, Cursor::new(EPOCH, log.len() as u64));
            if reads_now {
                let pulled = store.pull(&tables, None, Some(&cursor));
                prop_assert!(pulled.complete);
                read.extend(pulled.changes);
                cursor = pulled.head;
            }
        }
        let pulled = store.pull(&tables, None, Some(&cursor));
        read.extend(pulled.changes);
        let expected: Log = log.iter().filter(|(_, r)| in_tables(&tables, r)).cloned().collect();
        prop_assert_eq!(read, expected);
        prop_assert_eq!(store.len(), log.len());
    }

    /// A since pull is exactly the log filtered by table and HLC, in HLC order.
    #[test]
    fn since_pulls_are_the_hlc_filtered_log(
        batches in batches(),
        pulls in prop::collection::vec((table_set(), since()), 1..6),
    ) {
        let mut store = store(0);
        let mut log: Log = Vec::new();
        for batch in batches {
            log.extend(store.push(batch).accepted);
            for (tables, since) in &pulls {
                let pulled = store.pull(tables, since.as_ref(), None);
                prop_assert_eq!(&store.pull_borrowed(tables, since.as_ref(), None).cloned(), &pulled);
                prop_assert!(pulled.complete);
                prop_assert_eq!(pulled.changes, after_since(&log, tables, since.as_ref()));
                let newest =
                    log.iter().filter(|(_, r)| in_tables(tables, r)).map(|(_, r)| &r.hlc).max();
                let latest = newest.or(since.as_ref()).cloned().unwrap_or_default();
                prop_assert_eq!(pulled.latest_hlc, latest);
            }
        }
    }

    /// Pushing the same changes in another order, batched differently, gives the same state
    /// and accepts every operation exactly once.
    #[test]
    fn merging_is_commutative(
        changes in prop::collection::vec(change(), 0..40),
        seed in any::<u64>(),
        split in 1..8usize,
    ) {
        let shuffled = shuffle(changes.clone(), seed);
        let (mut first, mut second) = (store(0), store(0));
        let first_log: Log =
            changes.into_iter().flat_map(|r| first.push(vec![r]).accepted).collect();
        let second_log: Log =
            shuffled.chunks(split).flat_map(|chunk| second.push(chunk.to_vec()).accepted).collect();
        prop_assert_eq!(state(&first_log), state(&second_log));
        let first_ops = operations(&first_log);
        prop_assert!(first_ops.windows(2).all(|w| w[0] != w[1]), "an operation accepted twice");
        prop_assert_eq!(first_ops, operations(&second_log));
    }

    /// Under retention, memory stays bounded and a pull that says it is complete is: it equals
    /// what an unbounded log would have answered.
    #[test]
    fn retention_is_bounded_and_complete_never_lies(
        batches in batches(),
        retention in 1..8usize,
        pulls in prop::collection::vec((table_set(), since(), 0..40u64, any::<bool>()), 1..6),
    ) {
        let mut store = store(retention);
        let mut log: Log = Vec::new();
        for batch in batches {
            log.extend(store.push(batch).accepted);
            prop_assert!(store.len() <= retention);
            for (tables, since, seq, stale) in &pulls {
                let epoch = if *stale { EPOCH + 1 } else { EPOCH };
                let cursor = Cursor::new(epoch, *seq);
                let by_cursor = store.pull(tables, since.as_ref(), Some(&cursor));
                // Served: this epoch, not beyond the head, not before the oldest position - 1.
                let head = store.head().seq;
                let served = !*stale && *seq <= head && *seq + store.len() as u64 >= head;
                prop_assert_eq!(by_cursor.complete, served);
                if by_cursor.complete {
                    let expected: Log = log
                        .iter()
                        .filter(|(c, r)| c.seq > *seq && in_tables(tables, r))
                        .cloned()
                        .collect();
                    prop_assert_eq!(by_cursor.changes, expected);
                }
                let by_since = store.pull(tables, since.as_ref(), None);
                if by_since.complete {
                    prop_assert_eq!(by_since.changes, after_since(&log, tables, since.as_ref()));
                }
            }
        }
    }
}
