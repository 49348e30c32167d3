//! One document on the server: its text, head revision and recent history, and the OT step
//! that turns an incoming op into the next revision.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use thiserror::Error;

use super::session::OtSessionId;
use super::text::{Component, OpError, Side, TextOp};
use super::wire::OpStatus;

/// The bounds a document keeps to (from `OtServerConfig`; 0 disables each).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) max_history: usize,
    pub(crate) max_history_bytes: usize,
    pub(crate) max_document_len: u64,
}

/// A logged op.
struct Entry {
    op: Arc<TextOp>,
    op_id: Option<Box<str>>,
    /// What it counts against `max_history_bytes`.
    bytes: usize,
}

/// What became of an op.
#[derive(Debug)]
pub(crate) enum Submitted {
    /// It is revision `revision`, as `op` (transformed to apply to the text before it).
    Applied { revision: u64, op: Arc<TextOp> },
    /// An op with the same `opId` was already logged after the op's revision: it is not
    /// applied again.
    Duplicate { revision: u64 },
}

/// An op rebased onto the head revision, not yet committed.
#[derive(Debug)]
pub(crate) enum Rebased {
    /// It fits: `op` applies to the head text and makes `text` (`len` UTF-16 units).
    Ready { op: TextOp, text: String, len: u64 },
    /// The same op (by `opId`) is already revision `revision`.
    Duplicate { revision: u64 },
}

/// Why an op was refused. The `Display` text is the error frame's message.
#[derive(Clone, PartialEq, Eq, Debug, Error)]
pub(crate) enum Refused {
    /// Made on a revision the document has not reached (open-ot's message).
    #[error("Invalid revision: {revision} > {head}")]
    Future { revision: u64, head: u64 },
    /// Made on a revision older than the history kept: it cannot be transformed.
    #[error(
        "Revision {revision} is older than the history kept (it starts at revision \
         {oldest}): fetch a snapshot"
    )]
    TooOld { revision: u64, oldest: u64 },
    /// It does not fit the text (transformed to the head revision), or would make the
    /// document longer than allowed.
    #[error(transparent)]
    Op(#[from] OpError),
}

/// A document: created empty at revision 0 on first use.
pub(crate) struct Document {
    text: String,
    /// `text`'s length in UTF-16 code units, kept rather than recounted per op.
    len: u64,
    revision: u64,
    /// The ops that produced revisions `revision - history.len() + 1 ..= revision`.
    history: VecDeque<Entry>,
    history_bytes: usize,
    /// The sessions that receive the document's ops, in a stable order.
    pub(crate) members: BTreeSet<OtSessionId>,
    /// Shared history: the local ops committed at a revision this copy has not reached,
    /// acked (with their `docId` echo and id) once it does.
    pub(crate) awaiting: BTreeMap<u64, Awaiting>,
    /// Shared history: ops that came ahead of a gap, applied once it is filled.
    pub(crate) early: BTreeMap<u64, Arc<TextOp>>,
    /// Shared history: the newest revision asked for to fill a gap.
    pub(crate) fetched: u64,
    /// Shared history: waiting for its first snapshot (gaps are not fetched meanwhile: the
    /// snapshot fills them).
    pub(crate) loading: bool,
    /// When the last member left (a count of departures, not a time): in shared-history
    /// mode the document idle longest is the first dropped to make room.
    pub(crate) idle_since: u64,
    /// Shared history: the newest head polled while `loading`, fetched after the first
    /// snapshot if that is older.
    pub(crate) head_seen: u64,
    /// Shared history: snapshot requests that came while `loading`, answered with the
    /// first snapshot (at most [`MAX_SNAPSHOTS_WAITING`]).
    pub(crate) snapshots: Vec<SnapshotWait>,
}

/// Snapshot requests a loading document keeps; past them a request gets an error frame.
pub(crate) const MAX_SNAPSHOTS_WAITING: usize = 1024;

/// A snapshot request waiting for a document's first snapshot.
#[derive(Debug)]
pub(crate) struct SnapshotWait {
    pub(crate) session: OtSessionId,
    /// An `init` (a stream's first event, [`OtServer::handle_init`]) rather than a
    /// `snapshot` answer.
    ///
    /// [`OtServer::handle_init`]: super::OtServer::handle_init
    pub(crate) init: bool,
    pub(crate) echo: bool,
    pub(crate) op_id: Option<String>,
    pub(crate) revision: Option<u64>,
}

/// A local op committed to the shared history, waiting for this copy to reach it.
#[derive(Debug)]
pub(crate) struct Awaiting {
    pub(crate) session: OtSessionId,
    pub(crate) echo: bool,
    pub(crate) op_id: Option<Box<str>>,
}

impl Document {
    pub(crate) fn new() -> Self {
        Document {
            text: String::new(),
            len: 0,
            revision: 0,
            history: VecDeque::new(),
            history_bytes: 0,
            members: BTreeSet::new(),
            awaiting: BTreeMap::new(),
            early: BTreeMap::new(),
            fetched: 0,
            loading: false,
            idle_since: 0,
            head_seen: 0,
            snapshots: Vec::new(),
        }
    }

    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    pub(crate) fn revision(&self) -> u64 {
        self.revision
    }

    pub(crate) fn history_len(&self) -> usize {
        self.history.len()
    }

    /// The logged ops that produced the revisions after `revision`, oldest first, with the
    /// revision each produced; `None` when the history no longer holds them all.
    pub(crate) fn ops_since(
        &self,
        revision: u64,
    ) -> Option<impl Iterator<Item = (u64, &TextOp)> + '_> {
        let oldest = self.oldest_base();
        if revision < oldest {
            return None;
        }
        let skip = usize::try_from(revision - oldest).unwrap_or(usize::MAX);
        let ops = self.history.iter().enumerate().skip(skip);
        Some(ops.map(move |(i, entry)| (oldest + i as u64 + 1, &*entry.op)))
    }

    /// The oldest revision an op may be made on and still be transformed: the history holds
    /// every op after it.
    pub(crate) fn oldest_base(&self) -> u64 {
        self.revision - self.history.len() as u64
    }

    /// Turns an op made at `revision` into the next revision: transformed against the logged
    /// ops after `revision`, oldest first, the incoming op on side `right` (so the logged
    /// op's insert comes first at a tie, as open-ot's server does), then applied. Unlike
    /// open-ot's server we apply every op, so nothing that does not fit is ever logged.
    pub(crate) fn submit(
        &mut self,
        op: TextOp,
        revision: u64,
        op_id: Option<&str>,
        limits: Limits,
    ) -> Result<Submitted, Refused> {
        match self.rebase(op, revision, op_id, limits)? {
            Rebased::Duplicate { revision } => Ok(Submitted::Duplicate { revision }),
            Rebased::Ready { op, text, len } => {
                let op = Arc::new(op);
                self.advance(op.clone(), text, len, op_id, limits);
                Ok(Submitted::Applied {
                    revision: self.revision,
                    op,
                })
            }
        }
    }

    /// The OT step of [`submit`](Self::submit) without its commit: the op transformed to
    /// the head revision and the text it makes, or why it does not fit.
    pub(crate) fn rebase(
        &self,
        op: TextOp,
        revision: u64,
        op_id: Option<&str>,
        limits: Limits,
    ) -> Result<Rebased, Refused> {
        if revision > self.revision {
            return Err(Refused::Future {
                revision,
                head: self.revision,
            });
        }
        let oldest = self.oldest_base();
        if revision < oldest {
            return Err(Refused::TooOld { revision, oldest });
        }
        let skip = usize::try_from(revision - oldest).unwrap_or(usize::MAX);
        let mut op = op;
        for (i, entry) in self.history.iter().enumerate().skip(skip) {
            // An op logged after this one's revision with the same id is this op, sent again
            // (the client lost the connection before the ack).
            if op_id.is_some() && entry.op_id.as_deref() == op_id {
                return Ok(Rebased::Duplicate {
                    revision: oldest + i as u64 + 1,
                });
            }
            op = op.transform(&entry.op, Side::Right);
        }
        let (text, len) = self.fit(&op, limits)?;
        Ok(Rebased::Ready { op, text, len })
    }

    /// Applies an op made on the head revision: the next revision, as a shared history
    /// decided it (`revision` must be the head + 1, else nothing happens and `false` comes
    /// back). An op that does not fit is refused: the shared history holds only ops that
    /// fit, so that means this copy went wrong.
    pub(crate) fn apply_next(
        &mut self,
        revision: u64,
        op: Arc<TextOp>,
        op_id: Option<&str>,
        limits: Limits,
    ) -> Result<bool, Refused> {
        if revision != self.revision + 1 {
            return Ok(false);
        }
        // The shared history already holds it: the length bound is not this copy's to apply.
        let unbounded = Limits {
            max_document_len: 0,
            ..limits
        };
        let (text, len) = self.fit(&op, unbounded)?;
        self.advance(op, text, len, op_id, limits);
        Ok(true)
    }

    /// Replaces the text by a newer snapshot of the shared history: `revision`'s text. The
    /// history kept is dropped (it does not lead there). Ignored unless newer.
    pub(crate) fn reset(&mut self, revision: u64, text: String) -> bool {
        if revision <= self.revision {
            return false;
        }
        self.len = TextOp::utf16_len(&text);
        self.text = text;
        self.revision = revision;
        self.history.clear();
        self.history_bytes = 0;
        true
    }

    /// The text `op` makes of the head text, and its UTF-16 length.
    fn fit(&self, op: &TextOp, limits: Limits) -> Result<(String, u64), Refused> {
        let text = op.apply(&self.text)?;
        let len = self.len + inserted(op) - deleted(op);
        if limits.max_document_len != 0 && len > limits.max_document_len {
            return Err(Refused::Op(OpError::TooLong {
                len,
                max: limits.max_document_len,
            }));
        }
        debug_assert_eq!(len, TextOp::utf16_len(&text));
        Ok((text, len))
    }

    fn advance(
        &mut self,
        op: Arc<TextOp>,
        text: String,
        len: u64,
        op_id: Option<&str>,
        limits: Limits,
    ) {
        self.text = text;
        self.len = len;
        self.revision += 1;
        self.log(op, op_id, limits);
    }

    /// Where the op with this id stands, for a snapshot request naming it; `revision` is the
    /// revision the op was made on, if the client said.
    pub(crate) fn op_status(&self, op_id: &str, revision: Option<u64>) -> OpStatus {
        let oldest = self.oldest_base();
        if let Some(i) = self
            .history
            .iter()
            .position(|e| e.op_id.as_deref() == Some(op_id))
        {
            return OpStatus::Applied {
                revision: oldest + i as u64 + 1,
            };
        }
        // Not found: certain only if every op after the revision it was made on is kept.
        match revision {
            Some(r) if r >= oldest => OpStatus::Absent,
            _ if oldest == 0 => OpStatus::Absent,
            _ => OpStatus::Unknown,
        }
    }

    fn log(&mut self, op: Arc<TextOp>, op_id: Option<&str>, limits: Limits) {
        let bytes = op
            .components()
            .iter()
            .map(|c| {
                core::mem::size_of::<Component>()
                    + match c {
                        Component::Insert(s) => s.len(),
                        _ => 0,
                    }
            })
            .sum::<usize>()
            + op_id.map_or(0, str::len);
        self.history.push_back(Entry {
            op,
            op_id: op_id.map(Box::from),
            bytes,
        });
        self.history_bytes += bytes;
        let over = |d: &Document| {
            (limits.max_history != 0 && d.history.len() > limits.max_history)
                || (limits.max_history_bytes != 0 && d.history_bytes > limits.max_history_bytes)
        };
        while over(self) {
            match self.history.pop_front() {
                Some(old) => self.history_bytes -= old.bytes,
                None => break,
            }
        }
    }
}

fn inserted(op: &TextOp) -> u64 {
    op.components()
        .iter()
        .map(|c| match c {
            Component::Insert(s) => TextOp::utf16_len(s),
            _ => 0,
        })
        .sum()
}

fn deleted(op: &TextOp) -> u64 {
    op.components()
        .iter()
        .map(|c| match c {
            Component::Delete(n) => *n,
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_history: 3,
        max_history_bytes: 0,
        max_document_len: 10,
    };

    fn applied(s: Result<Submitted, Refused>) -> u64 {
        match s {
            Ok(Submitted::Applied { revision, .. }) => revision,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stale_ops_are_transformed_and_old_ones_refused() {
        let mut doc = Document::new();
        assert_eq!(
            applied(doc.submit(TextOp::new().insert("ab"), 0, None, LIMITS)),
            1
        );
        // Made at 0 too: transformed past "ab" (the logged insert comes first at a tie).
        assert_eq!(
            applied(doc.submit(TextOp::new().insert("x"), 0, None, LIMITS)),
            2
        );
        assert_eq!(doc.text(), "abx");
        for _ in 0..3 {
            doc.submit(TextOp::new().retain(1), doc.revision(), None, LIMITS)
                .unwrap();
        }
        assert_eq!(
            (doc.revision(), doc.history_len(), doc.oldest_base()),
            (5, 3, 2)
        );
        assert_eq!(
            doc.submit(TextOp::new(), 1, None, LIMITS).unwrap_err(),
            Refused::TooOld {
                revision: 1,
                oldest: 2
            }
        );
        assert_eq!(
            doc.submit(TextOp::new(), 6, None, LIMITS)
                .unwrap_err()
                .to_string(),
            "Invalid revision: 6 > 5"
        );
        assert_eq!(
            doc.submit(TextOp::new().insert("12345678"), 5, None, LIMITS)
                .unwrap_err(),
            Refused::Op(OpError::TooLong { len: 11, max: 10 })
        );
        assert_eq!(doc.text(), "abx");
    }

    #[test]
    fn an_op_id_is_applied_once() {
        let mut doc = Document::new();
        let op = TextOp::new().insert("a");
        assert_eq!(applied(doc.submit(op.clone(), 0, Some("c-1"), LIMITS)), 1);
        assert!(matches!(
            doc.submit(op.clone(), 0, Some("c-1"), LIMITS),
            Ok(Submitted::Duplicate { revision: 1 })
        ));
        // The same id made after it was logged is another op (ids are the client's affair).
        assert_eq!(applied(doc.submit(op, 1, Some("c-1"), LIMITS)), 2);
        assert_eq!(
            doc.op_status("c-1", Some(0)),
            OpStatus::Applied { revision: 1 }
        );
        assert_eq!(doc.op_status("c-9", Some(0)), OpStatus::Absent);
        for _ in 0..3 {
            doc.submit(TextOp::new(), doc.revision(), None, LIMITS)
                .unwrap();
        }
        assert_eq!(doc.op_status("c-9", Some(0)), OpStatus::Unknown);
        assert_eq!(doc.op_status("c-9", Some(2)), OpStatus::Absent);
    }
}
