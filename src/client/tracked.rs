//! What the client restores after a reconnect: subscribed tables with the newest HLC seen for
//! each, the newest stream cursor, presence topics and rooms (docs/protocol.md section 11).
//!
//! Ordered maps: the restore frames come out in the same order for the same history, whatever
//! the hasher: output never depends on `HashMap` order.

use super::event::RequestId;
use super::sorted::SortedMap;
use crate::payload::{Cursor, Hlc, RawJson};

/// One subscribed table.
#[derive(Clone, Debug)]
pub(crate) struct Table {
    /// The subscribe request that first asked for it (tags its change events).
    pub(crate) by: RequestId,
    /// The newest HLC seen for it (or the `since` it was subscribed with).
    pub(crate) since: Option<Hlc>,
    /// Whether its subscribe was acknowledged: its changes now arrive in stream order, so
    /// the session's stream position covers it. Until then (its replay may be cut off
    /// half-way) it resumes from `cursor`, the position its subscribe asked for.
    pub(crate) live: bool,
    /// The position it is known complete to: what its subscribe resumed from, then the head
    /// its replay reached.
    pub(crate) cursor: Option<String>,
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
    pub(crate) tables: SortedMap<String, Table>,
    pub(crate) topics: SortedMap<String, Membership>,
    pub(crate) rooms: SortedMap<String, Membership>,
    /// The session's stream position: the newest cursor of a `change` / `changes` frame or
    /// a pull / push response received while no resume replay was under way (a replay
    /// covers only its own tables), or the head of a new epoch.
    pub(crate) cursor: Option<String>,
}

impl Tracked {
    /// Tracks a subscribe of `tables` after `since` and `cursor`: a new table is known
    /// complete to the cursor the application gave (it resumes from there if cut before the
    /// ack).
    pub(crate) fn subscribe(
        &mut self,
        tables: &[String],
        since: Option<&Hlc>,
        cursor: Option<&str>,
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
                            live: false,
                            cursor: cursor.map(str::to_owned),
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

    /// A change of `table` at stream position `cursor` arrived. A live table's changes come
    /// in position order. So do those of a table whose resume replay is under way (docs/protocol.md
    /// section 7: a session receives changes in cursor order), when the server could serve
    /// its cursor (same epoch), or when it had none and resumed by `since` alone. Either way
    /// a cut resumes from here rather than receiving the same changes twice, or, worse,
    /// from the newest HLC of a replay cut short, which skips any change with an older HLC
    /// that was positioned after the replay was read.
    pub(crate) fn observe_table_change(&mut self, table: &str, cursor: &str) {
        let Some(table) = self.tables.get_mut(table) else {
            return;
        };
        if table.live {
            advance(&mut table.cursor, cursor);
            return;
        }
        let Some(from) = table.cursor.as_deref() else {
            if cursor.parse::<Cursor>().is_ok() {
                table.cursor = Some(cursor.to_owned());
            }
            return;
        };
        match (from.parse::<Cursor>(), cursor.parse::<Cursor>()) {
            (Ok(from), Ok(at)) if from.epoch == at.epoch => advance(&mut table.cursor, cursor),
            _ => {}
        }
    }

    /// A subscribe of `tables` was acknowledged; a resume ack says how far its replay went.
    pub(crate) fn settle(&mut self, tables: &[String], head: Option<&str>) {
        if let Some(head) = head {
            // A head of another epoch: the server's history did not continue, so the old
            // stream position means nothing any more (the ack said `recovered: false`).
            let epoch = |c: &str| c.parse::<Cursor>().ok().map(|c| c.epoch);
            if self
                .cursor
                .as_deref()
                .is_some_and(|g| epoch(g) != epoch(head))
            {
                self.cursor = Some(head.to_owned());
            }
        }
        for name in tables {
            if let Some(table) = self.tables.get_mut(name) {
                table.live = true;
                if let Some(head) = head {
                    advance(&mut table.cursor, head);
                }
            }
        }
    }

    /// Takes a stream position. Cursors are opaque to clients, but a syncmux cursor is
    /// `"<epoch>.<seq>"`: within one epoch keep the larger (a reordered or replayed frame
    /// must not move the resume point back); otherwise the newest arrival wins.
    pub(crate) fn observe_cursor(&mut self, cursor: &str) {
        advance(&mut self.cursor, cursor);
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

    /// After a disconnect every restorable entry is restored, whatever it was: the tables,
    /// grouped by where they resume. A live table resumes from the stream position (or the
    /// head of its own replay, if further); one whose subscribe was never acknowledged from
    /// where that subscribe asked. Every restored table then awaits its new ack.
    ///
    /// Without `with_cursor` the groups carry no cursor and resume as if none had been seen
    /// (by HLC alone, from the start of the history when there is no HLC either); the
    /// positions are still tracked.
    pub(crate) fn resume_groups(
        &mut self,
        with_cursor: bool,
    ) -> SortedMap<ResumePoint, Vec<String>> {
        let mut groups: SortedMap<ResumePoint, Vec<String>> = SortedMap::new();
        for (name, table) in self.tables.iter_mut().filter(|(_, t)| t.sent) {
            let was_live = table.live;
            if table.live {
                if let Some(stream) = &self.cursor {
                    advance(&mut table.cursor, stream);
                }
                table.live = false;
            }
            let cursor = table.cursor.clone().filter(|_| with_cursor);
            if cursor.is_none() && table.since.is_none() && was_live {
                // Subscribed, but no position and no HLC (a server that acknowledges without
                // a cursor): nothing shows what the session missed while it was away, so the
                // whole retained history is replayed, from now on until a position is known
                // (no gap beats less traffic).
                table.since = Some(Hlc::new(i64::MIN, 0, ""));
            }
            // A subscribe that asked for no replay and was never acknowledged took effect
            // nowhere: it is sent again as it was, and starts where its new ack says.
            let since = table.since.clone();
            groups
                .get_or_insert_with((cursor, since), Vec::new)
                .push(name.clone());
        }
        groups
    }
}

/// Where a subscription resumes: its cursor and its `since`.
pub(crate) type ResumePoint = (Option<String>, Option<Hlc>);

/// Moves a position on. Cursors are opaque to clients, but a syncmux cursor is
/// `"<epoch>.<seq>"`: within one epoch keep the larger (a reordered or replayed frame must not
/// move the resume point back); otherwise the newest arrival wins.
fn advance(slot: &mut Option<String>, cursor: &str) {
    if let Some(old) = slot {
        if let (Ok(old), Ok(new)) = (old.parse::<Cursor>(), cursor.parse::<Cursor>()) {
            if old.epoch == new.epoch && new.seq <= old.seq {
                return;
            }
        }
    }
    *slot = Some(cursor.to_owned());
}

fn raise(slot: &mut Option<Hlc>, candidate: Option<&Hlc>) {
    if let Some(candidate) = candidate {
        if slot.as_ref().is_none_or(|current| candidate > current) {
            *slot = Some(candidate.clone());
        }
    }
}
