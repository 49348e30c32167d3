//! [`MemoryStore`]: the change log, its positions and its pulls.

use core::cmp::Reverse;
use core::fmt;
use core::ops::Bound;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::sync::OnceLock;

use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

use super::table::Table;
use super::Store;
use crate::answer::{PullAnswer, PushAnswer};
use crate::payload::{ChangeRecord, Cursor, Hlc};

/// Configuration of a [`MemoryStore`].
///
/// Every value of every field is meaningful, so there is nothing to validate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreConfig {
    /// The epoch of this store's history, the first half of every cursor it hands out.
    ///
    /// It must differ from the epoch of every earlier history that clients may hold cursors
    /// of: an adapter picks a fresh one per process start (for example from the wall clock,
    /// which the core never reads). Default: 0, fine for tests and examples only.
    pub epoch: u64,
    /// The maximum number of changes kept; the oldest positions are evicted first.
    /// Default: 0, unbounded.
    pub retention: usize,
}

/// The embedded change store (the crate docs (layers)): [`MemoryStore`], the default
/// backend of `syncmux-server`.
///
/// The store knows payload types only: it never imports the server or the client; a small
/// driver pairs a server with it. It reads no clock and no entropy: the adapter chooses the
/// [epoch](StoreConfig::epoch).
///
/// # Positions
///
/// Every accepted change gets the next position, a [`Cursor`](crate::payload::Cursor)
/// `epoch.seq` whose `seq` grows by one per accepted change, from 1. The epoch names one
/// continuous history: the adapter picks a fresh one per process start, so a cursor from
/// before a restart is never read as a position in the new history (docs/protocol.md section 5,
/// "Cursors").
///
/// # Merge
///
/// Merging is idempotent and commutative, so clients may re-send pushes after a reconnect and
/// nodes may push in any order. Which changes are *new* depends on the `crdt_type`:
///
/// - `lww` (last writer wins): per (table, pk, field) only the change with the greatest HLC
///   counts. A change is new only if its HLC is greater than the current winner's; an equal
///   HLC is the same change again (an HLC names its node, so two nodes never stamp equal ones).
/// - every other type (`counter`, `set`, `list`, `text`, and names not yet invented) is
///   operation-based: every operation matters and none supersedes another, so a change is new
///   iff its identity (table, pk, field, hlc) was not seen before. The store cannot know the
///   semantics of a type it has never heard of, and dropping an operation would lose data, so
///   the safe default is to keep every distinct operation.
///
/// A change that is not new is neither logged nor counted: it gets no position and is not
/// routed again, which is what makes a re-sent push deliver nothing twice. Superseded `lww`
/// changes stay in the log (it is a history, and positions never move); pullers apply
/// last-writer-wins themselves, as they must for live changes anyway.
///
/// # Pull
///
/// - after a `cursor` of the current epoch that is still retained: exactly the changes after
///   it, in position order, late changes with old HLCs included, `complete: true`;
/// - after `since` (exclusive): the changes with an HLC greater than it, in HLC order;
/// - neither: everything retained for the tables, in HLC order.
///
/// A cursor the store cannot serve (another epoch, beyond the head, or cut by retention) falls
/// back to `since`, or to everything, with `complete: false`: the caller answers
/// `recovered: false` and the client resynchronises. A `since` pull is incomplete when
/// retention evicted a change of the requested tables with an HLC greater than `since`.
///
/// # Retention
///
/// With [`StoreConfig::retention`] set, the oldest positions are evicted first and every index
/// forgets them, so memory is bounded by the retention. This includes what the merge
/// remembers: idempotence is exact within the retained window; a change re-pushed after its
/// original was evicted counts as new again. The alternative, refusing any change older than
/// the evicted history, would silently drop the edits of a node that was offline for long,
/// which is the case cursors exist for.
///
/// # Example
///
/// ```
/// use syncmux::payload::{ChangeRecord, Cursor, Hlc, RawJson};
/// use syncmux::{MemoryStore, StoreConfig};
///
/// let mut config = StoreConfig::default();
/// config.epoch = 7; // an adapter picks a fresh epoch per process start
/// let mut store = MemoryStore::new(config);
///
/// let title = |ts, value: &str| {
///     ChangeRecord::new("docs", "1", "title", "lww", Hlc::new(ts, 0, "n1"), "n1")
///         .with_value(RawJson::from_serialize(value).unwrap())
/// };
/// let pushed = store.push(vec![title(10, "draft"), title(20, "final")]);
/// assert_eq!(pushed.accepted.len(), 2);
/// assert_eq!(pushed.head, Cursor::new(7, 2));
///
/// // Re-sending is harmless, and an older write loses, but a late one is still positioned.
/// assert!(store.push(vec![title(20, "final")]).accepted.is_empty());
/// assert!(store.push(vec![title(15, "stale")]).accepted.is_empty());
///
/// // Resume after the first position: exactly what came after it.
/// let tables = ["docs".to_owned()];
/// let pulled = store.pull(&tables, None, Some(&Cursor::new(7, 1)));
/// assert!(pulled.complete);
/// assert_eq!(pulled.changes.len(), 1);
/// assert_eq!(pulled.changes[0].0, Cursor::new(7, 2));
/// assert_eq!(pulled.latest_hlc, Hlc::new(20, 0, "n1"));
///
/// // A cursor of another epoch (a restart) falls back to `since`, and says so.
/// let pulled = store.pull(&tables, Some(&Hlc::new(10, 0, "n1")), Some(&Cursor::new(6, 1)));
/// assert!(!pulled.complete);
/// assert_eq!(pulled.changes.len(), 1);
/// ```
///
/// Records are stored as pushed. Each keeps its JSON encoding once it was first read: the
/// [`Driver`](crate::driver::Driver) answers pulls and replays by copying those bytes into
/// the frame instead of serialising every record again for every reader (a pull round trip
/// of 8 records spent a tenth of its time there). The price is the JSON text per change
/// read, about the size of the record's own strings.
///
/// [`pull`](MemoryStore::pull) clones the records it returns, which is most of its cost (a
/// record is several small allocations); [`pull_borrowed`](MemoryStore::pull_borrowed) lends
/// them instead. Keeping records behind `Arc` would make owned pulls cheaper but cost an
/// allocation and a reference count per change and an `Arc` in every caller's types, while
/// the borrowing pull already avoids the copy where it matters.
pub struct MemoryStore {
    epoch: u64,
    retention: usize,
    /// The retained changes by position: `log[i]` is at seq `first_seq + i`.
    log: VecDeque<StoredChange>,
    /// The seq of the oldest retained change, or `head + 1` when none is retained.
    first_seq: u64,
    /// The indexes of every table holding a retained change (by name, for a defined order).
    tables: BTreeMap<String, Table>,
    /// The newest HLC evicted from tables that were dropped when their last change was: it
    /// stands for every table the store no longer knows, so no pull claims completeness
    /// falsely.
    forgotten: Option<Hlc>,
}

/// A change as a [`MemoryStore`] retains it: the record and its JSON encoding, made when
/// it is first read and written byte for byte by every answer after that (a pull's records,
/// borrowed through [`Store::pull`]).
///
/// Encoding on first read rather than on accept keeps pushes as cheap as before (encoding
/// every change up front cost a push of 100 changes into a full 100 000-change store 40 %
/// more), and a change nobody reads is never encoded.
pub struct StoredChange {
    record: ChangeRecord,
    json: OnceLock<Box<RawValue>>,
}

impl StoredChange {
    fn new(record: ChangeRecord) -> StoredChange {
        StoredChange {
            record,
            json: OnceLock::new(),
        }
    }

    fn json(&self) -> &RawValue {
        self.json.get_or_init(|| {
            serde_json::value::to_raw_value(&self.record)
                .expect("invariant: change records always serialise")
        })
    }
}

impl AsRef<ChangeRecord> for StoredChange {
    fn as_ref(&self) -> &ChangeRecord {
        &self.record
    }
}

impl fmt::Debug for StoredChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.record.fmt(f)
    }
}

/// Writes the kept encoding byte for byte (as raw JSON: the server encodes with serde_json).
impl Serialize for StoredChange {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.json().serialize(serializer)
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new(config: StoreConfig) -> MemoryStore {
        MemoryStore {
            epoch: config.epoch,
            retention: config.retention,
            log: VecDeque::new(),
            first_seq: 1,
            tables: BTreeMap::new(),
            forgotten: None,
        }
    }

    /// The epoch of this store's history.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The position of the newest accepted change; `Cursor::new(epoch, 0)` before the first.
    pub fn head(&self) -> Cursor {
        Cursor::new(self.epoch, self.head_seq())
    }

    /// The number of changes retained.
    pub fn len(&self) -> usize {
        self.log.len()
    }

    /// Whether no change is retained.
    pub fn is_empty(&self) -> bool {
        self.log.is_empty()
    }

    /// Merges `changes` (module docs, "Merge"), giving each new one the next position, then
    /// applies the retention. A push larger than the retention evicts some of its own
    /// changes; they are still reported as accepted.
    pub fn push(&mut self, changes: Vec<ChangeRecord>) -> PushAnswer {
        let mut accepted = Vec::new();
        let mut pushed_tables: Vec<String> = Vec::new();
        for record in changes {
            if pushed_tables.last() != Some(&record.table) {
                pushed_tables.push(record.table.clone());
            }
            let seq = self.head_seq() + 1;
            let table = match self.tables.get_mut(&record.table) {
                Some(table) => table,
                None => {
                    let table = Table::new(self.forgotten.clone());
                    self.tables.entry(record.table.clone()).or_insert(table)
                }
            };
            if !table.admit(&record, seq) {
                continue;
            }
            accepted.push((Cursor::new(self.epoch, seq), record.clone()));
            self.log.push_back(StoredChange::new(record));
            self.evict_beyond_retention();
        }
        pushed_tables.sort_unstable();
        pushed_tables.dedup();
        PushAnswer {
            accepted,
            latest_hlc: self
                .latest(pushed_tables.iter())
                .cloned()
                .unwrap_or_default(),
            head: self.head(),
        }
    }

    /// The changes of `tables` after `cursor`, or else after `since`, or else all of them
    /// (module docs, "Pull"), in O(log n + k) plus the clones of the k records. Unknown tables
    /// hold nothing; a table named twice counts once.
    #[must_use]
    pub fn pull(
        &self,
        tables: &[String],
        since: Option<&Hlc>,
        cursor: Option<&Cursor>,
    ) -> PullAnswer {
        self.pull_borrowed(tables, since, cursor).cloned()
    }

    /// [`pull`](MemoryStore::pull) without the clones: the records are borrowed from the
    /// store, in O(log n + k).
    #[must_use]
    pub fn pull_borrowed(
        &self,
        tables: &[String],
        since: Option<&Hlc>,
        cursor: Option<&Cursor>,
    ) -> PullAnswer<&ChangeRecord> {
        self.pull_stored(tables, since, cursor)
            .map(|stored| &stored.record)
    }

    /// [`pull_borrowed`](MemoryStore::pull_borrowed) with each record's encoding.
    fn pull_stored(
        &self,
        tables: &[String],
        since: Option<&Hlc>,
        cursor: Option<&Cursor>,
    ) -> PullAnswer<&StoredChange> {
        let mut names: Vec<&String> = tables.iter().collect();
        names.sort_unstable();
        names.dedup();
        let held: Vec<&Table> = names.iter().filter_map(|n| self.tables.get(*n)).collect();
        let latest_hlc = self.latest(names.iter().copied()).or(since);
        let latest_hlc = latest_hlc.cloned().unwrap_or_default();

        if let Some(after) = cursor.filter(|c| self.serves(c)) {
            let ranges = held.iter().map(|table| {
                let start = table.seqs.partition_point(|&seq| seq <= after.seq);
                table.seqs.range(start..).copied()
            });
            let changes = merge(ranges).map(|seq| self.at(seq)).collect();
            return PullAnswer {
                changes,
                latest_hlc,
                head: self.head(),
                complete: true,
            };
        }

        // After `since` (exclusive): (since, u64::MAX) is above every (since, seq).
        let lower = since.map_or(Bound::Unbounded, |h| Bound::Excluded((h.clone(), u64::MAX)));
        let ranges = held.iter().map(|table| {
            let range = table.by_hlc.range((lower.clone(), Bound::Unbounded));
            range.map(|(hlc, seq)| (hlc, *seq))
        });
        let changes = merge(ranges).map(|(_, seq)| self.at(seq)).collect();
        let evicted_after_since = names.iter().any(|name| {
            let evicted = match self.tables.get(*name) {
                Some(table) => table.evicted.as_ref(),
                None => self.forgotten.as_ref(),
            };
            evicted.is_some_and(|evicted| since.is_none_or(|since| evicted > since))
        });
        PullAnswer {
            changes,
            latest_hlc,
            head: self.head(),
            complete: cursor.is_none() && !evicted_after_since,
        }
    }

    fn head_seq(&self) -> u64 {
        self.first_seq + self.log.len() as u64 - 1
    }

    /// Whether the changes after `cursor` are all still here: same epoch, not beyond the
    /// head, and nothing after it evicted.
    fn serves(&self, cursor: &Cursor) -> bool {
        cursor.epoch == self.epoch
            && cursor.seq <= self.head_seq()
            && cursor.seq >= self.first_seq - 1
    }

    /// The retained change at `seq`, with its position.
    fn at(&self, seq: u64) -> (Cursor, &StoredChange) {
        let index = usize::try_from(seq - self.first_seq).expect("invariant: seq is retained");
        (Cursor::new(self.epoch, seq), &self.log[index])
    }

    /// The newest HLC accepted for `names` among the tables still held.
    fn latest<'a>(&self, names: impl Iterator<Item = &'a String>) -> Option<&Hlc> {
        names
            .filter_map(|name| self.tables.get(name))
            .map(|table| &table.latest)
            .max()
    }

    /// Evicts the oldest positions until the retention holds, dropping tables left empty.
    fn evict_beyond_retention(&mut self) {
        while self.retention != 0 && self.log.len() > self.retention {
            let StoredChange { mut record, .. } = self
                .log
                .pop_front()
                .expect("invariant: len > retention > 0");
            let seq = self.first_seq;
            self.first_seq += 1;
            let name = core::mem::take(&mut record.table);
            let table = self
                .tables
                .get_mut(&name)
                .expect("invariant: a retained change's table is held");
            table.evict(record, seq);
            if table.seqs.is_empty() {
                let table = self.tables.remove(&name).expect("invariant: just found");
                self.forgotten = self.forgotten.take().max(table.evicted);
            }
        }
    }
}

/// The in-memory log never fails.
impl Store for MemoryStore {
    type Error = core::convert::Infallible;
    type Record<'a> = &'a StoredChange;

    fn push(&mut self, changes: Vec<ChangeRecord>) -> Result<PushAnswer, Self::Error> {
        Ok(MemoryStore::push(self, changes))
    }

    fn pull(
        &self,
        tables: &[String],
        since: Option<&Hlc>,
        cursor: Option<&Cursor>,
    ) -> Result<PullAnswer<&StoredChange>, Self::Error> {
        Ok(self.pull_stored(tables, since, cursor))
    }

    fn head(&self) -> Cursor {
        MemoryStore::head(self)
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("head", &self.head())
            .field("len", &self.log.len())
            .field("tables", &self.tables.len())
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

/// Merges ascending iterators into one ascending iterator, in O(log t) per item for t inputs.
///
/// Written here because a heap-based k-way merge is a dozen lines, not worth a dependency of
/// the core.
fn merge<T: Ord, I: Iterator<Item = T>>(
    inputs: impl Iterator<Item = I>,
) -> impl Iterator<Item = T> {
    let mut inputs: Vec<I> = inputs.collect();
    let mut heads: BinaryHeap<Reverse<(T, usize)>> = inputs
        .iter_mut()
        .enumerate()
        .filter_map(|(i, input)| input.next().map(|item| Reverse((item, i))))
        .collect();
    core::iter::from_fn(move || {
        let Reverse((item, i)) = heads.pop()?;
        if let Some(next) = inputs[i].next() {
            heads.push(Reverse((next, i)));
        }
        Some(item)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The store can move between threads and be shared behind a lock or for reading.
    #[test]
    fn the_store_is_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<MemoryStore>();
    }

    /// What a pull answered from the kept encodings says is exactly what serialising the
    /// records says, unknown and optional fields included, after a cursor and after an HLC.
    #[test]
    fn kept_encodings_are_the_records_serialised() {
        let mut store = MemoryStore::new(StoreConfig::default());
        let records: Vec<ChangeRecord> = [
            r#"{"table":"t","pk":"1","field":"f","crdt_type":"lww","hlc":"9:0:a","node_id":"a","value":1.50,"x":{"y":[1]}}"#,
            r#"{"table":"t","pk":"2","field":"f","crdt_type":"counter","hlc":"3:1:b","node_id":"b","counter_delta":-2,"tombstone":true}"#,
        ]
        .iter()
        .map(|json| serde_json::from_str(json).unwrap())
        .collect();
        let _ = store.push(records);
        let tables = ["t".to_owned()];
        for cursor in [Some(Cursor::new(0, 0)), None] {
            let stored = store.pull_stored(&tables, None, cursor.as_ref());
            let plain = store.pull_borrowed(&tables, None, cursor.as_ref());
            assert_eq!(stored.changes.len(), 2);
            let stored: Vec<&StoredChange> = stored.changes.iter().map(|(_, r)| *r).collect();
            let plain: Vec<&ChangeRecord> = plain.changes.iter().map(|(_, r)| *r).collect();
            assert_eq!(
                serde_json::to_string(&stored).unwrap(),
                serde_json::to_string(&plain).unwrap()
            );
        }
    }
}
