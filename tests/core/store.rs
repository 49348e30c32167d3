//! The rules of `MemoryStore` (src/store/mod.rs), one test per rule.

use syncmux::payload::{ChangeRecord, Cursor, Hlc, RawJson};
use syncmux::{MemoryStore, PullAnswer, StoreConfig};

const EPOCH: u64 = 7;

fn store(retention: usize) -> MemoryStore {
    let mut config = StoreConfig::default();
    config.epoch = EPOCH;
    config.retention = retention;
    MemoryStore::new(config)
}

fn json(value: impl serde::Serialize) -> RawJson {
    RawJson::from_serialize(&value).expect("serialisable")
}

fn lww(table: &str, pk: &str, ts: i64, value: &str) -> ChangeRecord {
    ChangeRecord::new(table, pk, "title", "lww", Hlc::new(ts, 0, "n1"), "n1")
        .with_value(json(value))
}

fn op(crdt_type: &str, table: &str, pk: &str, ts: i64) -> ChangeRecord {
    let mut record = ChangeRecord::new(table, pk, "n", crdt_type, Hlc::new(ts, 0, "n1"), "n1");
    record.counter_delta = Some(json(1));
    record
}

fn tables(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

fn at(seq: u64) -> Cursor {
    Cursor::new(EPOCH, seq)
}

fn seqs(pulled: &PullAnswer) -> Vec<u64> {
    pulled.changes.iter().map(|(c, _)| c.seq).collect()
}

fn stamps(pulled: &PullAnswer) -> Vec<i64> {
    pulled.changes.iter().map(|(_, r)| r.hlc.ts).collect()
}

#[test]
fn positions_start_at_one_in_the_configured_epoch_and_grow_per_accepted_change() {
    let mut store = store(0);
    assert_eq!(store.epoch(), EPOCH);
    assert_eq!(store.head(), at(0));
    assert!(store.is_empty());

    let pushed = store.push(vec![
        lww("t", "a", 1, "x"),
        lww("t", "a", 1, "x"),
        lww("t", "b", 1, "y"),
    ]);
    let positions: Vec<Cursor> = pushed.accepted.iter().map(|(c, _)| *c).collect();
    assert_eq!(positions, [at(1), at(2)], "the duplicate takes no position");
    assert_eq!(pushed.head, at(2));
    let pushed = store.push(vec![lww("t", "c", 1, "z")]);
    assert_eq!(pushed.accepted[0].0, at(3));
    assert_eq!((store.head(), store.len()), (at(3), 3));
}

#[test]
fn since_is_exclusive() {
    let mut store = store(0);
    let _ = store.push(
        (1..=3)
            .map(|ts| lww("t", &ts.to_string(), ts, "v"))
            .collect(),
    );
    let pulled = store.pull(&tables(&["t"]), Some(&Hlc::new(2, 0, "n1")), None);
    assert_eq!(stamps(&pulled), [3]);
    assert!(pulled.complete);
    // The order is ts, c, node: the same ts and counter from a greater node is after.
    let pulled = store.pull(&tables(&["t"]), Some(&Hlc::new(2, 0, "n0")), None);
    assert_eq!(stamps(&pulled), [2, 3]);
}

#[test]
fn lww_is_superseded_only_by_a_greater_hlc() {
    let mut store = store(0);
    assert_eq!(store.push(vec![lww("t", "a", 5, "five")]).accepted.len(), 1);
    assert!(store
        .push(vec![lww("t", "a", 3, "older")])
        .accepted
        .is_empty());
    assert!(
        store
            .push(vec![lww("t", "a", 5, "same hlc")])
            .accepted
            .is_empty(),
        "equal HLC is the same change"
    );
    let newer = store.push(vec![lww("t", "a", 7, "seven")]);
    assert_eq!(
        newer.accepted[0].1.value.as_ref().map(RawJson::get),
        Some(r#""seven""#)
    );
    // Another row or another field is another register.
    assert_eq!(store.push(vec![lww("t", "b", 1, "b")]).accepted.len(), 1);
    let mut other_field = lww("t", "a", 1, "body");
    other_field.field = "body".into();
    assert_eq!(store.push(vec![other_field]).accepted.len(), 1);
    assert_eq!(store.len(), 4);
}

#[test]
fn operation_based_changes_are_deduplicated_by_identity_not_superseded() {
    for crdt_type in ["counter", "set", "list", "text", "not-yet-invented"] {
        let mut store = store(0);
        assert_eq!(
            store.push(vec![op(crdt_type, "t", "a", 5)]).accepted.len(),
            1
        );
        assert!(
            store
                .push(vec![op(crdt_type, "t", "a", 5)])
                .accepted
                .is_empty(),
            "{crdt_type}"
        );
        // An older operation still matters: it is not a losing write.
        assert_eq!(
            store.push(vec![op(crdt_type, "t", "a", 3)]).accepted.len(),
            1,
            "{crdt_type}"
        );
        // The same HLC on another row, field or table is another operation.
        let mut other_field = op(crdt_type, "t", "a", 5);
        other_field.field = "m".into();
        let pushed = store.push(vec![
            op(crdt_type, "t", "b", 5),
            op(crdt_type, "u", "a", 5),
            other_field,
        ]);
        assert_eq!(pushed.accepted.len(), 3, "{crdt_type}");
        assert_eq!(store.len(), 5);
    }
}

#[test]
fn a_repeated_push_accepts_nothing_and_changes_nothing() {
    let mut store = store(0);
    let batch = vec![
        lww("t", "a", 2, "x"),
        op("counter", "t", "a", 2),
        op("set", "u", "s", 1),
    ];
    assert_eq!(store.push(batch.clone()).accepted.len(), 3);
    let before = store.pull(&tables(&["t", "u"]), None, None);
    let again = store.push(batch);
    assert!(again.accepted.is_empty());
    assert_eq!(again.head, at(3));
    assert_eq!(store.pull(&tables(&["t", "u"]), None, None), before);
}

/// The state a client folds from the log: the last-writer-wins winner per register, and the set
/// of operations.
fn state(store: &MemoryStore, names: &[String]) -> Vec<ChangeRecord> {
    let mut winners: Vec<ChangeRecord> = Vec::new();
    for (_, record) in store.pull(names, None, None).changes {
        let same = |w: &ChangeRecord| {
            w.crdt_type == "lww"
                && (&w.table, &w.pk, &w.field) == (&record.table, &record.pk, &record.field)
        };
        match winners
            .iter_mut()
            .find(|w| record.crdt_type == "lww" && same(w))
        {
            Some(winner) if winner.hlc < record.hlc => *winner = record,
            Some(_) => {}
            None => winners.push(record),
        }
    }
    winners.sort_by(|a, b| {
        (&a.table, &a.pk, &a.field, &a.hlc).cmp(&(&b.table, &b.pk, &b.field, &b.hlc))
    });
    winners
}

#[test]
fn merging_is_commutative() {
    let changes = [
        lww("t", "a", 3, "three"),
        lww("t", "a", 9, "nine"),
        lww("t", "a", 5, "five"),
        lww("t", "b", 1, "one"),
        op("counter", "t", "a", 4),
        op("counter", "t", "a", 2),
        op("text", "u", "d", 1),
        op("counter", "t", "a", 4),
    ];
    let names = tables(&["t", "u"]);
    let orders: Vec<Vec<usize>> = vec![
        (0..8).collect(),
        (0..8).rev().collect(),
        vec![1, 7, 3, 0, 5, 2, 6, 4],
        vec![4, 2, 6, 0, 7, 1, 5, 3],
    ];
    let mut states = Vec::new();
    for order in &orders {
        let mut store = store(0);
        let mut accepted = Vec::new();
        // One change per push and one batch give the same result.
        for &i in order {
            accepted.extend(
                store
                    .push(vec![changes[i].clone()])
                    .accepted
                    .into_iter()
                    .map(|(_, r)| r),
            );
        }
        let mut batched = self::store(0);
        let _ = batched.push(order.iter().map(|&i| changes[i].clone()).collect());
        assert_eq!(state(&batched, &names), state(&store, &names));

        // Every operation is accepted exactly once and every winner is accepted, whatever the
        // order; which superseded writes were accepted first depends on the order (they are
        // harmless: a puller's last-writer-wins ignores them).
        let ops: Vec<_> = accepted
            .iter()
            .filter(|r| r.crdt_type != "lww")
            .map(|r| (&r.table, r.hlc.ts, &r.crdt_type))
            .collect();
        assert_eq!(ops.len(), 3, "{order:?}");
        assert!(accepted.contains(&changes[1]) && accepted.contains(&changes[3]));
        states.push(state(&store, &names));
    }
    assert!(states.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(states[0].len(), 5, "two winners and three operations");
}

#[test]
fn a_cursor_resumes_exactly_after_it_including_late_changes_with_old_hlcs() {
    let mut store = store(0);
    let _ = store.push(vec![lww("t", "a", 100, "x"), lww("t", "b", 200, "y")]);
    let seen = store.pull(&tables(&["t"]), None, None);
    let (cursor, latest) = (seen.head, seen.latest_hlc.clone());

    // While the reader is away, a node that was offline pushes an edit with an old HLC.
    let _ = store.push(vec![lww("t", "late", 50, "old"), lww("t", "c", 300, "new")]);

    let resumed = store.pull(&tables(&["t"]), Some(&latest), Some(&cursor));
    assert!(resumed.complete);
    assert_eq!(seqs(&resumed), [3, 4], "position order");
    assert_eq!(stamps(&resumed), [50, 300]);
    assert_eq!(resumed.head, at(4));
    // `since` alone misses the late change: the reason cursors exist.
    assert_eq!(
        stamps(&store.pull(&tables(&["t"]), Some(&latest), None)),
        [300]
    );

    // At the head there is nothing more; position 0 means from the start.
    let at_head = store.pull(&tables(&["t"]), None, Some(&at(4)));
    assert!(at_head.complete && at_head.changes.is_empty());
    assert_eq!(
        seqs(&store.pull(&tables(&["t"]), None, Some(&at(0)))),
        [1, 2, 3, 4]
    );
}

#[test]
fn a_cursor_pull_keeps_only_the_requested_tables_in_position_order() {
    let mut store = store(0);
    let _ = store.push(vec![
        lww("a", "1", 9, "x"),
        lww("b", "1", 1, "x"),
        lww("c", "1", 5, "x"),
        lww("a", "2", 2, "x"),
    ]);
    let pulled = store.pull(&tables(&["c", "a", "a", "nope"]), None, Some(&at(0)));
    assert_eq!(seqs(&pulled), [1, 3, 4]);
    assert!(pulled.complete);
}

#[test]
fn a_cursor_the_store_cannot_serve_falls_back_to_since_and_says_so() {
    let mut store = store(0);
    let _ = store.push(
        (1..=4)
            .map(|ts| lww("t", &ts.to_string(), ts, "v"))
            .collect(),
    );
    let since = Hlc::new(2, 0, "n1");
    let names = tables(&["t"]);
    for stale in [Cursor::new(EPOCH - 1, 2), Cursor::new(EPOCH + 1, 2), at(5)] {
        let pulled = store.pull(&names, Some(&since), Some(&stale));
        assert!(!pulled.complete, "{stale}");
        assert_eq!(stamps(&pulled), [3, 4], "{stale}: falls back to since");
        // Without `since`, everything retained, still incomplete.
        let pulled = store.pull(&names, None, Some(&stale));
        assert_eq!(
            (pulled.changes.len(), pulled.complete),
            (4, false),
            "{stale}"
        );
    }
}

#[test]
fn retention_bounds_the_log_and_a_cut_cursor_or_since_is_incomplete() {
    let mut store = store(3);
    let pushed = store.push(
        (1..=5)
            .map(|ts| lww("t", &ts.to_string(), ts, "v"))
            .collect(),
    );
    assert_eq!(pushed.accepted.len(), 5, "evicted at once, still accepted");
    assert_eq!((store.len(), store.head()), (3, at(5)));
    let names = tables(&["t"]);

    // Positions 3..=5 are retained: a cursor at 2 is served, one at 1 lost position 2.
    let served = store.pull(&names, None, Some(&at(2)));
    assert_eq!((seqs(&served), served.complete), (vec![3, 4, 5], true));
    let cut = store.pull(&names, Some(&Hlc::new(1, 0, "n1")), Some(&at(1)));
    assert_eq!((stamps(&cut), cut.complete), (vec![3, 4, 5], false));

    // Since pulls: incomplete while an evicted change is after since.
    assert!(
        !store
            .pull(&names, Some(&Hlc::new(1, 0, "n1")), None)
            .complete
    );
    assert!(
        store
            .pull(&names, Some(&Hlc::new(2, 0, "n1")), None)
            .complete
    );
    assert!(!store.pull(&names, None, None).complete);
    // Other tables lost nothing.
    let _ = store.push(vec![lww("u", "1", 1, "v")]);
    assert!(store.pull(&tables(&["u"]), None, None).complete);

    for ts in 6..1000 {
        let _ = store.push(vec![
            lww("t", &ts.to_string(), ts, "v"),
            op("counter", "t", "c", ts),
        ]);
        assert_eq!(store.len(), 3);
    }
    assert_eq!(store.head(), at(5 + 1 + 2 * 994));
}

#[test]
fn eviction_keeps_the_indexes_consistent() {
    let mut store = store(2);
    // An old winner's eviction leaves the newer winner in charge.
    let _ = store.push(vec![
        lww("t", "a", 1, "old"),
        lww("t", "a", 2, "new"),
        op("counter", "t", "a", 9),
    ]);
    assert_eq!(store.len(), 2);
    assert!(store
        .push(vec![lww("t", "a", 2, "new")])
        .accepted
        .is_empty());
    assert!(store
        .push(vec![op("counter", "t", "a", 9)])
        .accepted
        .is_empty());
    // What is evicted is forgotten: memory stays bounded (module docs, "Retention").
    let _ = store.push(vec![lww("t", "b", 1, "x"), lww("t", "c", 1, "x")]);
    assert_eq!(
        store.push(vec![op("counter", "t", "a", 9)]).accepted.len(),
        1
    );
    assert_eq!(store.push(vec![lww("t", "a", 2, "new")]).accepted.len(), 1);

    // A table whose changes were all evicted is dropped, but its horizon is not: re-created or
    // never seen, a table's since pull before that horizon is incomplete.
    let mut store = self::store(1);
    let _ = store.push(vec![lww("gone", "a", 50, "x"), lww("t", "a", 1, "x")]);
    assert!(
        !store
            .pull(&tables(&["gone"]), Some(&Hlc::new(10, 0, "n1")), None)
            .complete
    );
    assert!(
        store
            .pull(&tables(&["gone"]), Some(&Hlc::new(50, 0, "n1")), None)
            .complete
    );
    let _ = store.push(vec![lww("gone", "b", 60, "x")]);
    let pulled = store.pull(&tables(&["gone"]), Some(&Hlc::new(10, 0, "n1")), None);
    assert_eq!((stamps(&pulled), pulled.complete), (vec![60], false));
}

#[test]
fn latest_hlc_is_the_newest_of_the_requested_tables_else_since_else_default() {
    let mut store = store(0);
    let names = tables(&["t", "u"]);
    let since = Hlc::new(4, 0, "n1");
    assert_eq!(store.pull(&names, None, None).latest_hlc, Hlc::default());
    assert_eq!(store.pull(&names, Some(&since), None).latest_hlc, since);

    let pushed = store.push(vec![
        lww("t", "a", 9, "x"),
        lww("t", "b", 3, "x"),
        lww("v", "a", 99, "x"),
    ]);
    assert_eq!(pushed.latest_hlc, Hlc::new(99, 0, "n1"));
    // A push that merged nothing still reports the newest HLC of its tables.
    let pushed = store.push(vec![lww("t", "a", 1, "loses")]);
    assert!(pushed.accepted.is_empty());
    assert_eq!(pushed.latest_hlc, Hlc::new(9, 0, "n1"));
    assert_eq!(store.push(vec![]).latest_hlc, Hlc::default());

    // Only the requested tables count, whatever the since or cursor.
    assert_eq!(
        store.pull(&names, Some(&since), None).latest_hlc,
        Hlc::new(9, 0, "n1")
    );
    assert_eq!(
        store.pull(&names, None, Some(&at(3))).latest_hlc,
        Hlc::new(9, 0, "n1")
    );
    assert_eq!(
        store
            .pull(&tables(&["nope"]), Some(&since), None)
            .latest_hlc,
        since
    );
}

#[test]
fn since_pulls_merge_tables_in_hlc_order_and_name_each_once() {
    let mut store = store(0);
    let _ = store.push(vec![
        lww("a", "1", 9, "x"),
        lww("b", "1", 1, "x"),
        lww("a", "2", 5, "x"),
        lww("b", "2", 7, "x"),
        lww("c", "1", 6, "x"),
    ]);
    let pulled = store.pull(&tables(&["b", "a", "b"]), Some(&Hlc::new(1, 0, "n1")), None);
    assert_eq!(stamps(&pulled), [5, 7, 9]);
    assert_eq!(seqs(&pulled), [3, 4, 1], "each change keeps its position");
    assert!(store.pull(&tables(&[]), None, None).changes.is_empty());
}

#[test]
fn records_come_back_exactly_as_pushed() {
    let json = r#"{"table":"docs","pk":"1","field":"body","crdt_type":"text","hlc":{"ts":5,"c":2,"node":"n:1"},"node_id":"relay","list_op":{"ins":[1,"é"]},"value":1.50,"tombstone":false,"x-trace":{"span":[1e400]}}"#;
    let record: ChangeRecord = serde_json::from_str(json).unwrap();
    let mut store = store(0);
    let pushed = store.push(vec![record.clone()]);
    assert_eq!(pushed.accepted[0].1, record);
    let pulled = store.pull(&tables(&["docs"]), None, None);
    assert_eq!(
        serde_json::to_string(&pulled.changes[0].1).unwrap(),
        serde_json::to_string(&record).unwrap()
    );
    assert!(serde_json::to_string(&pulled.changes[0].1)
        .unwrap()
        .ends_with(r#""x-trace":{"span":[1e400]}}"#));
}

#[test]
fn a_borrowed_pull_lends_the_same_changes_as_an_owned_one() {
    let mut store = store(3);
    let _ = store.push(
        (1..=5)
            .map(|ts| lww("t", &ts.to_string(), 6 - ts, "v"))
            .collect(),
    );
    let names = tables(&["t", "u"]);
    let since = Hlc::new(2, 0, "n1");
    for cursor in [None, Some(at(2)), Some(at(1)), Some(Cursor::new(1, 3))] {
        for since in [None, Some(&since)] {
            let borrowed = store.pull_borrowed(&names, since, cursor.as_ref());
            assert_eq!(
                borrowed.clone().cloned(),
                store.pull(&names, since, cursor.as_ref())
            );
            assert!(borrowed
                .changes
                .iter()
                .all(|(c, r)| r.table == "t" && c.seq >= 3));
        }
    }
}
