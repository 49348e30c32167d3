//! What a store answers and the server takes: one pair of types for both, so a store's pull
//! or push goes to the server as it is.

use crate::payload::{ChangeRecord, Cursor, Hlc};

/// What a pull found: a [`Store`](crate::Store)'s answer, and the server's answer to a
/// [`ServerEvent::Pull`](crate::ServerEvent::Pull) or
/// [`ServerEvent::Replay`](crate::ServerEvent::Replay).
///
/// Owned records by default; [`MemoryStore::pull_borrowed`](crate::MemoryStore::pull_borrowed)
/// lends them, and the embedded [`Driver`](crate::Driver) answers with records borrowed from
/// its store, so a pull copies nothing before it is encoded.
///
/// Plain data, built by any store (the durable one included), hence exhaustive.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PullAnswer<R = ChangeRecord> {
    /// The changes, each with its position: in position order after a cursor the store
    /// served, in HLC order otherwise (a replay by `since` goes out in this order, so that
    /// every prefix of it is complete below its newest HLC).
    pub changes: Vec<(Cursor, R)>,
    /// The newest HLC the store holds for the requested tables, or the request's `since`
    /// when there is none, or `Hlc::default()`.
    pub latest_hlc: Hlc,
    /// The store's head, where to resume: every change at or before it was visible to this
    /// read.
    pub head: Cursor,
    /// Whether the answer holds everything asked for; `false` when the store could not
    /// serve the cursor and fell back to `since`, or when retention evicted changes the
    /// request would have returned (the subscribe's ack, or the pull's response, then says
    /// `recovered: false`, and the client resynchronises).
    pub complete: bool,
}

impl<R> Default for PullAnswer<R> {
    fn default() -> Self {
        PullAnswer {
            changes: Vec::new(),
            latest_hlc: Hlc::default(),
            head: Cursor::default(),
            complete: false,
        }
    }
}

impl<R> PullAnswer<R> {
    /// The same answer with each record mapped by `f`.
    pub(crate) fn map<T>(self, mut f: impl FnMut(R) -> T) -> PullAnswer<T> {
        PullAnswer {
            changes: self.changes.into_iter().map(|(c, r)| (c, f(r))).collect(),
            latest_hlc: self.latest_hlc,
            head: self.head,
            complete: self.complete,
        }
    }
}

impl PullAnswer<&ChangeRecord> {
    /// The same answer with owned records.
    pub fn cloned(self) -> PullAnswer {
        self.map(ChangeRecord::clone)
    }
}

/// What a push did: a [`Store`](crate::Store)'s answer, and the server's answer to a
/// [`ServerEvent::Push`](crate::ServerEvent::Push).
///
/// Plain data, built by any store (the durable one included), hence exhaustive.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct PushAnswer {
    /// The changes that were new, each with its position, in position order. Only these
    /// are routed to the other subscribers and counted as `merged`, so a re-sent push
    /// delivers nothing twice.
    pub accepted: Vec<(Cursor, ChangeRecord)>,
    /// The newest HLC the store holds for the pushed tables after the merge, or
    /// `Hlc::default()`.
    pub latest_hlc: Hlc,
    /// The store's head after the merge: the position of the newest accepted change.
    pub head: Cursor,
}
