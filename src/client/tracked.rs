//! What the client restores after a reconnect: subscribed tables with the newest HLC seen for
//! each, the newest stream cursor, presence topics and rooms (DESIGN.md section 4).
//!
//! Ordered maps: the restore frames come out in the same order for the same history, whatever
//! the hasher (STYLE.md: output never depends on `HashMap` order).

use std::collections::BTreeMap;

use super::event::RequestId;
use crate::payload::{Cursor, Hlc, RawJson};

/// One subscribed table.
#[derive(Clone, Debug)]
pub(crate) struct Table {
    /// The subscribe request that first asked for it (tags its change events).
    pub(crate) by: RequestId,
    /// The newest HLC seen for it (or the `since` it was subscribed with).
    pub(crate) since: Option<Hlc>,
    /// Whether a subscribe for it has gone out; one still in the offline queue is not
    /// restored (the queued frame will subscribe it).
    pub(crate) sent: bool,
}

/// A joined presence topic or room.
#[derive(Clone, Debug)]
pub(crate) struct Membership {
    pub(crate) by: RequestId,
    pub(crate) data: Option<RawJson>,
    pub(crate) sent: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Tracked {
    pub(crate) tables: BTreeMap<String, Table>,
    pub(crate) topics: BTreeMap<String, Membership>,
    pub(crate) rooms: BTreeMap<String, Membership>,
    /// The position of the last change this session's stream delivered (from `change` /
    /// `changes` frames and resume acks).
    pub(crate) cursor: Option<String>,
}

impl Tracked {
    pub(crate) fn subscribe(
        &mut self,
        tables: &[String],
        since: Option<&Hlc>,
        by: RequestId,
        sent: bool,
    ) {
        for name in tables {
            match self.tables.get_mut(name) {
                // Already subscribed: keep its tag and restore status, only move `since` on.
                Some(table) => raise(&mut table.since, since),
                None => {
                    self.tables.insert(
                        name.clone(),
                        Table {
                            by,
                            since: since.cloned(),
                            sent,
                        },
                    );
                }
            }
        }
    }

    /// How many of `tables` are not subscribed yet.
    pub(crate) fn new_tables(&self, tables: &[String]) -> usize {
        tables
            .iter()
            .filter(|t| !self.tables.contains_key(*t))
            .count()
    }

    pub(crate) fn observe_hlc(&mut self, table: &str, hlc: &Hlc) {
        if let Some(table) = self.tables.get_mut(table) {
            raise(&mut table.since, Some(hlc));
        }
    }

    /// Takes a stream position. Cursors are opaque to clients, but a syncmux cursor is
    /// `"<epoch>.<seq>"`: within one epoch keep the larger (a reordered or replayed frame
    /// must not move the resume point back); otherwise the newest arrival wins.
    pub(crate) fn observe_cursor(&mut self, cursor: &str) {
        if let Some(old) = &self.cursor {
            if let (Ok(old), Ok(new)) = (old.parse::<Cursor>(), cursor.parse::<Cursor>()) {
                if old.epoch == new.epoch && new.seq <= old.seq {
                    return;
                }
            }
        }
        self.cursor = Some(cursor.to_owned());
    }

    /// The subscribe, presence or room request `by` went out from the offline queue.
    pub(crate) fn mark_sent(&mut self, by: RequestId) {
        let tables = self.tables.values_mut().filter(|t| t.by == by);
        tables.for_each(|t| t.sent = true);
        for m in self.topics.values_mut().chain(self.rooms.values_mut()) {
            if m.by == by {
                m.sent = true;
            }
        }
    }

    /// The server refused request `by`: forget what it added.
    pub(crate) fn roll_back(&mut self, by: RequestId) {
        self.tables.retain(|_, t| t.by != by);
        self.topics.retain(|_, m| m.by != by);
        self.rooms.retain(|_, m| m.by != by);
    }

    /// After a disconnect every restorable entry is restored, whatever it was.
    pub(crate) fn subscription_groups(&self) -> BTreeMap<Option<&Hlc>, Vec<String>> {
        let mut groups: BTreeMap<Option<&Hlc>, Vec<String>> = BTreeMap::new();
        for (name, table) in self.tables.iter().filter(|(_, t)| t.sent) {
            groups
                .entry(table.since.as_ref())
                .or_default()
                .push(name.clone());
        }
        groups
    }
}

fn raise(slot: &mut Option<Hlc>, candidate: Option<&Hlc>) {
    if let Some(candidate) = candidate {
        if slot.as_ref().is_none_or(|current| candidate > current) {
            *slot = Some(candidate.clone());
        }
    }
}
