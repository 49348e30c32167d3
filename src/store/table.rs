//! The per-table indexes of the [`MemoryStore`](super::MemoryStore).

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::payload::{ChangeRecord, Hlc};

/// The `crdt_type` merged by last-writer-wins; every other type is operation-based.
pub(super) const LWW: &str = "lww";

/// What the store holds for one table: the indexes over its retained changes.
///
/// A table exists while it holds at least one retained change, so memory stays bounded by the
/// retention. Keys are owned copies of the record's strings: `BTreeMap` (not a hash map) so
/// that no peer-chosen string can degrade it and iteration order is defined.
#[derive(Debug, Default)]
pub(super) struct Table {
    /// The "since" index: (HLC, position) of every retained change, in HLC order. The position
    /// breaks ties between changes with equal HLCs (different rows or fields).
    pub(super) by_hlc: BTreeSet<(Hlc, u64)>,
    /// The "cursor" index: positions of the retained changes, ascending.
    pub(super) seqs: VecDeque<u64>,
    /// `lww` winners per (pk, field): the winning HLC and its position.
    winners: BTreeMap<(String, String), (Hlc, u64)>,
    /// Identities (pk, field, hlc) of the retained operation-based changes.
    ops: BTreeSet<(String, String, Hlc)>,
    /// The newest HLC accepted since the table was created.
    pub(super) latest: Hlc,
    /// The newest HLC evicted by retention, inherited when the table was re-created.
    pub(super) evicted: Option<Hlc>,
}

impl Table {
    /// A table that inherits the eviction horizon of the tables the store has forgotten.
    pub(super) fn new(evicted: Option<Hlc>) -> Table {
        Table {
            evicted,
            ..Table::default()
        }
    }

    /// Indexes `record` at position `seq` if it is new (module docs, "Merge"); says whether
    /// it was. Nothing changes when it was not.
    pub(super) fn admit(&mut self, record: &ChangeRecord, seq: u64) -> bool {
        let hlc = &record.hlc;
        if record.crdt_type == LWW {
            match self
                .winners
                .entry((record.pk.clone(), record.field.clone()))
            {
                Entry::Occupied(winner) if winner.get().0 >= *hlc => return false,
                Entry::Occupied(mut winner) => *winner.get_mut() = (hlc.clone(), seq),
                Entry::Vacant(slot) => {
                    slot.insert((hlc.clone(), seq));
                }
            }
        } else if !self
            .ops
            .insert((record.pk.clone(), record.field.clone(), hlc.clone()))
        {
            return false;
        }
        self.by_hlc.insert((hlc.clone(), seq));
        self.seqs.push_back(seq);
        if *hlc > self.latest {
            self.latest = hlc.clone();
        }
        true
    }

    /// Forgets `record`, the table's oldest retained change, at position `seq`.
    pub(super) fn evict(&mut self, record: ChangeRecord, seq: u64) {
        let oldest = self.seqs.pop_front();
        debug_assert_eq!(oldest, Some(seq), "evictions go oldest first");
        let hlc = if record.crdt_type == LWW {
            let key = (record.pk, record.field);
            // A superseded change is not the winner; only the winner's own eviction ends it.
            if self.winners.get(&key).is_some_and(|w| w.1 == seq) {
                self.winners.remove(&key);
            }
            record.hlc
        } else {
            let key = (record.pk, record.field, record.hlc);
            self.ops.remove(&key);
            key.2
        };
        let key = (hlc, seq);
        self.by_hlc.remove(&key);
        if self.evicted.as_ref().is_none_or(|newest| key.0 > *newest) {
            self.evicted = Some(key.0);
        }
    }
}
