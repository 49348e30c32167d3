//! The store properties, generic over the store: the core's `store_props` runs them on the
//! `MemoryStore`, syncmux-sqlite's on the `SqliteStore` (which includes this file).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use syncmux::payload::{ChangeRecord, Cursor, Hlc, RawJson};
use syncmux::{MemoryStore, PullAnswer, PushAnswer, StoreConfig};

pub const EPOCH: u64 = 3;
pub const TABLES: [&str; 3] = ["a", "b", "c"];
pub const TYPES: [&str; 3] = ["lww", "counter", "not-yet-invented"];

/// A change drawn from a small space, so that collisions (duplicates, equal HLCs, superseded
/// writes) are common. Its content is a function of its identity (an HLC names one change),
/// and each register (table, pk, field) has one CRDT type.
pub fn change() -> impl Strategy<Value = ChangeRecord> {
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

pub fn batches() -> impl Strategy<Value = Vec<Vec<ChangeRecord>>> {
    prop::collection::vec(prop::collection::vec(change(), 0..6), 1..16)
}

pub fn since() -> impl Strategy<Value = Option<Hlc>> {
    prop::option::of(
        (-1..13i64, 0..2u32, 0..4u8).prop_map(|(ts, c, n)| Hlc::new(ts, c, format!("n{n}"))),
    )
}

pub fn table_set() -> impl Strategy<Value = Vec<String>> {
    prop::sample::subsequence(TABLES.to_vec(), 0..=3)
        .prop_map(|t| t.into_iter().map(String::from).collect())
}

/// What the properties ask of a store: the operations both embedded stores share.
pub trait Store {
    fn push(&mut self, changes: Vec<ChangeRecord>) -> PushAnswer;
    fn pull(&self, tables: &[String], since: Option<&Hlc>, cursor: Option<&Cursor>) -> PullAnswer;
    fn head(&self) -> Cursor;
    fn len(&self) -> usize;
    /// Whether the store's other ways to pull agree with `pull` (the borrowing pull).
    fn other_pulls_agree(&self, _tables: &[String], _since: Option<&Hlc>) -> bool {
        true
    }
}

impl Store for MemoryStore {
    fn push(&mut self, changes: Vec<ChangeRecord>) -> PushAnswer {
        MemoryStore::push(self, changes)
    }
    fn pull(&self, tables: &[String], since: Option<&Hlc>, cursor: Option<&Cursor>) -> PullAnswer {
        MemoryStore::pull(self, tables, since, cursor)
    }
    fn head(&self) -> Cursor {
        MemoryStore::head(self)
    }
    fn len(&self) -> usize {
        MemoryStore::len(self)
    }
    fn other_pulls_agree(&self, tables: &[String], since: Option<&Hlc>) -> bool {
        self.pull_borrowed(tables, since, None).cloned() == self.pull(tables, since, None)
    }
}

pub fn memory(retention: usize) -> MemoryStore {
    let mut config = StoreConfig::default();
    config.epoch = EPOCH;
    config.retention = retention;
    MemoryStore::new(config)
}

pub type Log = Vec<(Cursor, ChangeRecord)>;

/// The naive merge of the module docs: is `r` new against everything accepted before it?
pub fn is_new(accepted: &Log, r: &ChangeRecord) -> bool {
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
pub fn state(log: &Log) -> Vec<ChangeRecord> {
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

pub fn in_tables(tables: &[String], r: &ChangeRecord) -> bool {
    tables.contains(&r.table)
}

/// The HLC-filtered log, in HLC order (ties by position).
pub fn after_since(log: &Log, tables: &[String], since: Option<&Hlc>) -> Log {
    let mut out: Log = log
        .iter()
        .filter(|(_, r)| in_tables(tables, r) && since.is_none_or(|s| r.hlc > *s))
        .cloned()
        .collect();
    out.sort_by(|(ca, a), (cb, b)| (&a.hlc, ca).cmp(&(&b.hlc, cb)));
    out
}

/// Which of `batch` the naive merge accepts after `log`.
pub fn new_in(log: &Log, batch: &[ChangeRecord]) -> Vec<ChangeRecord> {
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
pub fn operations(log: &Log) -> Vec<(String, String, String, Hlc)> {
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
pub fn shuffle<T>(mut items: Vec<T>, seed: u64) -> Vec<T> {
    let mut x = seed | 1;
    for i in (1..items.len()).rev() {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        items.swap(i, (x >> 33) as usize % (i + 1));
    }
    items
}

/// Accepted changes follow the naive merge, take consecutive positions, and a reader that
/// resumes after each head it saw gets the log with no duplicate and no gap.
pub fn cursor_resumes_have_no_gap_and_no_duplicate<S: Store>(
    mut store: S,
    batches: Vec<Vec<ChangeRecord>>,
    tables: Vec<String>,
    reads: Vec<bool>,
) -> Result<(), TestCaseError> {
    let mut log: Log = Vec::new();
    let (mut read, mut cursor) = (Vec::new(), Cursor::new(EPOCH, 0));
    for (batch, reads_now) in batches.into_iter().zip(reads) {
        let expected = new_in(&log, &batch);
        let pushed = store.push(batch);
        let accepted: Vec<ChangeRecord> = pushed.accepted.iter().map(|(_, r)| r.clone()).collect();
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
    let expected: Log = log
        .iter()
        .filter(|(_, r)| in_tables(&tables, r))
        .cloned()
        .collect();
    prop_assert_eq!(read, expected);
    prop_assert_eq!(store.len(), log.len());
    Ok(())
}

/// A since pull is exactly the log filtered by table and HLC, in HLC order.
pub fn since_pulls_are_the_hlc_filtered_log<S: Store>(
    mut store: S,
    batches: Vec<Vec<ChangeRecord>>,
    pulls: Vec<(Vec<String>, Option<Hlc>)>,
) -> Result<(), TestCaseError> {
    let mut log: Log = Vec::new();
    for batch in batches {
        log.extend(store.push(batch).accepted);
        for (tables, since) in &pulls {
            let pulled = store.pull(tables, since.as_ref(), None);
            prop_assert!(store.other_pulls_agree(tables, since.as_ref()));
            prop_assert!(pulled.complete);
            prop_assert_eq!(pulled.changes, after_since(&log, tables, since.as_ref()));
            let newest = log
                .iter()
                .filter(|(_, r)| in_tables(tables, r))
                .map(|(_, r)| &r.hlc)
                .max();
            let latest = newest.or(since.as_ref()).cloned().unwrap_or_default();
            prop_assert_eq!(pulled.latest_hlc, latest);
        }
    }
    Ok(())
}

/// Pushing the same changes in another order, batched differently, gives the same state
/// and accepts every operation exactly once.
pub fn merging_is_commutative<S: Store>(
    (mut first, mut second): (S, S),
    changes: Vec<ChangeRecord>,
    seed: u64,
    split: usize,
) -> Result<(), TestCaseError> {
    let shuffled = shuffle(changes.clone(), seed);
    let first_log: Log = changes
        .into_iter()
        .flat_map(|r| first.push(vec![r]).accepted)
        .collect();
    let second_log: Log = shuffled
        .chunks(split)
        .flat_map(|chunk| second.push(chunk.to_vec()).accepted)
        .collect();
    prop_assert_eq!(state(&first_log), state(&second_log));
    let first_ops = operations(&first_log);
    prop_assert!(
        first_ops.windows(2).all(|w| w[0] != w[1]),
        "an operation accepted twice"
    );
    prop_assert_eq!(first_ops, operations(&second_log));
    Ok(())
}

pub type CursorPull = (Vec<String>, Option<Hlc>, u64, bool);

/// Under retention, the store stays bounded and a pull that says it is complete is: it
/// equals what an unbounded log would have answered.
pub fn retention_is_bounded_and_complete_never_lies<S: Store>(
    mut store: S,
    batches: Vec<Vec<ChangeRecord>>,
    retention: usize,
    pulls: Vec<CursorPull>,
) -> Result<(), TestCaseError> {
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
    Ok(())
}

pub fn cursor_pulls() -> impl Strategy<Value = Vec<CursorPull>> {
    prop::collection::vec((table_set(), since(), 0..40u64, any::<bool>()), 1..6)
}
