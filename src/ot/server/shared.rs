//! The shared history (`OtServerConfig::shared_history`): the documents' history is decided
//! outside this server (by Redis, for `syncmux-server`), and this server keeps a copy of
//! each document that it advances op by op, in revision order, from what it is told.
//!
//! An op from a session is rebased onto the copy's head and handed out as a
//! [`OtServerEvent::Commit`]; the application appends it to the shared history at that
//! revision (transforming it against what others appended first, if they did) and answers
//! with [`OtServer::handle_committed`]. Ops of other servers come in with
//! [`OtServer::handle_remote_op`]. Either way an op is applied when the copy reaches its
//! revision: then its sender gets the ack and the document's other members the op, so each
//! connection still receives a document's frames in revision order, without gaps. An op
//! that arrives ahead of a gap waits (bounded), and an [`OtServerEvent::Fetch`] asks the
//! application for the missing ones: a lost Pub/Sub message costs a read, never an op.

use std::sync::Arc;

use super::{OtCloseReason, OtServer, OtServerEvent};
use crate::ot::document::{Awaiting, Rebased, Refused};
use crate::ot::session::OtSessionId;
use crate::ot::text::TextOp;
use crate::ot::wire::{
    encode_ack, encode_error, encode_init, encode_op, encode_snapshot, DEFAULT_DOC_ID,
};
use crate::time::Instant;
use crate::wire::CloseCode;

/// A commit the server asked for ([`OtServerEvent::Commit`]), to answer with
/// [`OtServer::handle_committed`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct OtCommitId(pub(crate) u64);

impl core::fmt::Display for OtCommitId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "commit-{}", self.0)
    }
}

/// An op waiting for its commit.
#[derive(Debug)]
pub(super) struct Pending {
    session: OtSessionId,
    doc: Arc<str>,
    echo: bool,
    op_id: Option<Box<str>>,
}

impl OtServer {
    /// Shared history: the commit `commit` asked for is decided. `Ok((revision, op))`: the op,
    /// as appended (made on `revision - 1`), is the shared history's revision `revision`; its
    /// sender is acked once this server's copy reaches it. `Err(message)`: it was refused
    /// (it does not fit the text it was transformed to, or the shared store failed); its
    /// sender gets an error frame with `message`. Unknown commits are ignored.
    pub fn handle_committed(
        &mut self,
        now: Instant,
        commit: OtCommitId,
        outcome: Result<(u64, TextOp), String>,
    ) {
        self.clamp(now);
        let Some(pending) = self.commits.remove(&commit) else {
            return;
        };
        if let Some(s) = self.sessions.get_mut(pending.session) {
            s.commits = s.commits.saturating_sub(1);
        }
        let Some(doc) = self.docs.get_mut(&pending.doc) else {
            return;
        };
        doc.committing = doc.committing.saturating_sub(1);
        let echo = pending.echo.then_some(&*pending.doc);
        match outcome {
            Err(message) => {
                self.send(pending.session, encode_error(&message, echo));
            }
            Ok((revision, _)) if revision <= doc.revision() => {
                // The copy got there first (from the channel, with no commit of this
                // server's in flight): the op went out to the others then; the ack is all
                // that is left.
                self.send(pending.session, encode_ack(revision, echo));
            }
            Ok((revision, op)) => {
                doc.awaiting.insert(
                    revision,
                    Awaiting {
                        session: pending.session,
                        echo: pending.echo,
                        op_id: pending.op_id,
                    },
                );
                self.advance(&pending.doc, revision, Arc::new(op));
            }
        }
        // What waited for the commits in flight may go now.
        self.drain_early(&pending.doc);
    }

    /// Shared history: `op` is the shared history's revision `revision` of `doc` (from
    /// another server, or read back to fill a gap). Applied once this server's copy reaches
    /// it; one ahead of a gap waits, and a [`OtServerEvent::Fetch`] asks for the missing
    /// ones. Documents without a copy here and revisions already applied are ignored, and so
    /// is every call without a shared history (the server's own history is the truth then).
    pub fn handle_remote_op(&mut self, now: Instant, doc: &str, revision: u64, op: TextOp) {
        self.clamp(now);
        if !self.config.shared_history {
            return;
        }
        if let Some((key, _)) = self.docs.get_key_value(doc) {
            let key = key.clone();
            self.advance(&key, revision, Arc::new(op));
        }
    }

    /// Shared history: `doc`'s head revision is `revision` (polled, in case the last
    /// message of the channel was lost). A copy behind it gets an
    /// [`OtServerEvent::Fetch`] for the rest; a copy still waiting for its first snapshot
    /// gets it after that snapshot, and only if the snapshot is older. Ignored without a
    /// shared history.
    pub fn handle_remote_head(&mut self, now: Instant, doc: &str, revision: u64) {
        self.clamp(now);
        if !self.config.shared_history {
            return;
        }
        let Some(d) = self.docs.get_mut(doc) else {
            return;
        };
        if d.loading {
            d.head_seen = d.head_seen.max(revision);
            return;
        }
        if revision > d.revision() {
            d.fetched = revision;
            let from = d.revision() + 1;
            let key = self.doc_key(doc);
            self.event(OtServerEvent::Fetch {
                doc: key,
                from,
                to: revision,
            });
        }
    }

    /// Shared history: the shared history of `doc` no longer holds every revision this
    /// server's copy has (its store failed over to a replica that lacked the newest): the
    /// copy is ahead of the truth, and every client of it too. The copy is dropped
    /// ([`OtServerEvent::DocumentDropped`]) and each member session closed with 4503, as a
    /// sync subscriber is after a gap in the log: its client reconnects and loads the
    /// document from the shared history. Returns how many sessions were closed. Ignored
    /// without a shared history, or for a copy still loading (its snapshot is the truth).
    pub fn handle_history_lost(&mut self, now: Instant, doc: &str) -> usize {
        self.clamp(now);
        if !self.config.shared_history {
            return 0;
        }
        let Some(d) = self.docs.get(doc) else {
            return 0;
        };
        if d.loading {
            return 0;
        }
        let members: Vec<OtSessionId> = d.members.iter().copied().collect();
        for &session in &members {
            if self.is_open(session) {
                let close = (
                    CloseCode::SLOW_CONSUMER,
                    "the shared history lost revisions: load the document again",
                    true,
                );
                self.begin_close(session, Some(close), OtCloseReason::Closed);
            }
        }
        let key = self.doc_key(doc);
        self.docs.remove(doc);
        self.event(OtServerEvent::DocumentDropped { doc: key });
        members.len()
    }

    /// Shared history: `doc`'s text at `revision` (read when the document got its copy
    /// here, see [`OtServerEvent::DocumentCreated`]). Taken if newer than the copy; the
    /// members are then told nothing of the ops in between (none was sent to them), and ops
    /// waiting for it are applied. Ignored without a shared history.
    pub fn handle_remote_snapshot(&mut self, now: Instant, doc: &str, revision: u64, text: String) {
        self.clamp(now);
        if !self.config.shared_history {
            return;
        }
        let Some(d) = self.docs.get_mut(doc) else {
            return;
        };
        let was_loading = core::mem::replace(&mut d.loading, false);
        if !d.reset(revision, text) {
            if was_loading {
                let key = self.doc_key(doc);
                self.answer_snapshots(&key);
                self.drain_early(&key);
                self.fetch_gap(&key);
                self.fetch_head_seen(&key);
            }
            return;
        }
        // Local ops already inside the snapshot: their senders are owed the ack only.
        let mut owed = Vec::new();
        while let Some(entry) = d.awaiting.first_entry() {
            if *entry.key() > revision {
                break;
            }
            let (r, a) = entry.remove_entry();
            owed.push((r, a));
        }
        d.early = d.early.split_off(&(revision + 1));
        let key = self.doc_key(doc);
        for (r, a) in owed {
            let echo = a.echo.then_some(&*key);
            self.send(a.session, encode_ack(r, echo));
        }
        self.answer_snapshots(&key);
        self.drain_early(&key);
        self.fetch_gap(&key);
        self.fetch_head_seen(&key);
    }

    /// Asks for the ops up to the head polled while the document loaded, if its first
    /// snapshot (and the ops after it) did not get there.
    fn fetch_head_seen(&mut self, key: &Arc<str>) {
        let Some(doc) = self.docs.get_mut(key) else {
            return;
        };
        let seen = core::mem::take(&mut doc.head_seen);
        let from = doc.revision().max(doc.fetched) + 1;
        if seen >= from {
            doc.fetched = seen;
            self.event(OtServerEvent::Fetch {
                doc: key.clone(),
                from,
                to: seen,
            });
        }
    }

    /// Answers the snapshot requests that waited for the document's first snapshot, before
    /// the ops waiting behind it go out: each requester gets the text, then every op after it.
    fn answer_snapshots(&mut self, key: &Arc<str>) {
        let Some(doc) = self.docs.get_mut(key) else {
            return;
        };
        let waiting = core::mem::take(&mut doc.snapshots);
        let mut frames = Vec::with_capacity(waiting.len());
        for w in waiting {
            let echo = w.echo.then_some(&**key);
            let frame = if w.init {
                encode_init(doc.revision(), doc.text(), echo)
            } else {
                let status = w.op_id.map(|id| doc.op_status(&id, w.revision));
                encode_snapshot(doc.revision(), doc.text(), echo, status)
            };
            frames.push((w.session, frame));
        }
        for (session, frame) in frames {
            self.send(session, frame);
        }
    }

    /// Asks for the ops between the copy's head and the first op waiting, if any wait.
    fn fetch_gap(&mut self, key: &Arc<str>) {
        let first = self
            .docs
            .get(key)
            .and_then(|doc| doc.early.keys().next().copied());
        if let Some(first) = first {
            self.fetch_to(key, first.saturating_sub(1));
        }
    }

    /// Asks for the ops of `key` up to revision `to` that are neither in the copy nor asked
    /// for already, if there are any.
    fn fetch_to(&mut self, key: &Arc<str>, to: u64) {
        let Some(doc) = self.docs.get_mut(key) else {
            return;
        };
        let known = doc.fetched.max(doc.revision());
        if to > known {
            doc.fetched = to;
            self.event(OtServerEvent::Fetch {
                doc: key.clone(),
                from: known + 1,
                to,
            });
        }
    }

    /// The doc's key (`doc` exists).
    fn doc_key(&self, doc: &str) -> Arc<str> {
        self.docs
            .get_key_value(doc)
            .map_or_else(|| Arc::from(doc), |(k, _)| k.clone())
    }

    /// An op from a session, shared history: rebased onto the copy's head and handed out to
    /// commit.
    pub(super) fn commit_op(
        &mut self,
        session: OtSessionId,
        key: Arc<str>,
        echo: Option<&str>,
        op: TextOp,
        revision: u64,
        op_id: Option<String>,
    ) {
        let limits = self.limits();
        let max = self.config.max_commits_in_flight;
        let Some(doc) = self.docs.get(&key) else {
            return;
        };
        let rebased = doc.rebase(op, revision, op_id.as_deref(), limits);
        let base = doc.revision();
        match rebased {
            Err(refused) => self.send(session, encode_error(&refused.to_string(), echo)),
            Ok(Rebased::Duplicate { revision }) => self.send(session, encode_ack(revision, echo)),
            Ok(Rebased::Ready { op, text, .. }) => {
                let Some(s) = self.sessions.open_mut(session) else {
                    return;
                };
                if max != 0 && s.commits >= max {
                    let message = format!("Too many operations in flight (max {max})");
                    self.send(session, encode_error(&message, echo));
                    return;
                }
                s.commits += 1;
                if let Some(doc) = self.docs.get_mut(&key) {
                    doc.committing += 1;
                }
                let commit = OtCommitId(self.next_commit);
                self.next_commit += 1;
                self.commits.insert(
                    commit,
                    Pending {
                        session,
                        doc: key.clone(),
                        echo: echo.is_some(),
                        op_id: op_id.map(Box::from),
                    },
                );
                self.event(OtServerEvent::Commit {
                    commit,
                    doc: key,
                    base,
                    op: Arc::new(op),
                    text,
                });
            }
        }
    }

    /// The shared history's revision `revision` of `key` is `op`: applied if it is the
    /// copy's next, kept for later if it is ahead of a gap (and the gap fetched).
    fn advance(&mut self, key: &Arc<str>, revision: u64, op: Arc<TextOp>) {
        let cap = self.config.max_history.max(64);
        let Some(doc) = self.docs.get_mut(key) else {
            return;
        };
        let head = doc.revision();
        if revision <= head {
            return;
        }
        if revision == head + 1 && doc.held_for_commits(revision) {
            // No gap: nothing to fetch.
            doc.early.insert(revision, op);
            return;
        }
        if revision > head + 1 {
            // Bounded: past it, the fetch brings them again.
            if doc.early.len() < cap {
                doc.early.insert(revision, op);
            }
            if !doc.loading {
                self.fetch_to(key, revision - 1);
            }
            return;
        }
        self.apply_shared(key, revision, op);
        self.drain_early(key);
    }

    /// Applies the ops that waited behind a gap now filled, or for commits now answered.
    fn drain_early(&mut self, key: &Arc<str>) {
        loop {
            let Some(doc) = self.docs.get_mut(key) else {
                return;
            };
            let next = doc.revision() + 1;
            // Copies of revisions applied meanwhile (a local op's, read back) are done with.
            while doc.early.first_key_value().is_some_and(|(r, _)| *r < next) {
                doc.early.pop_first();
            }
            if doc.held_for_commits(next) {
                return;
            }
            let Some(op) = doc.early.remove(&next) else {
                return;
            };
            self.apply_shared(key, next, op);
        }
    }

    /// Applies the copy's next revision and tells everyone: the ack to its sender if it is
    /// a local op, the op to every other member.
    fn apply_shared(&mut self, key: &Arc<str>, revision: u64, op: Arc<TextOp>) {
        let limits = self.limits();
        let Some(doc) = self.docs.get_mut(key) else {
            return;
        };
        let mine = doc.awaiting.remove(&revision);
        let op_id = mine.as_ref().and_then(|a| a.op_id.as_deref());
        match doc.apply_next(revision, op.clone(), op_id, limits) {
            Ok(true) => {}
            Ok(false) => return,
            Err(refused) => {
                // The shared history holds only ops that fit: this copy went wrong. Ask for
                // a snapshot to start again from.
                let _: Refused = refused;
                self.event(OtServerEvent::Load { doc: key.clone() });
                return;
            }
        }
        let mut recipients = core::mem::take(&mut self.scratch);
        recipients.clear();
        recipients.extend(doc.members.iter().copied());
        let named = (**key != *DEFAULT_DOC_ID).then_some(&**key);
        let frame = encode_op(&op, revision, named);
        let sender = mine.as_ref().map(|a| a.session);
        if let Some(a) = &mine {
            let echo = a.echo.then_some(&**key);
            self.send(a.session, encode_ack(revision, echo));
        }
        for &member in &recipients {
            if Some(member) != sender {
                self.send_on(member, frame.clone());
            }
        }
        self.scratch = recipients;
        if let Some(session) = sender {
            self.event(OtServerEvent::Applied {
                session,
                doc: key.clone(),
                revision,
                op,
            });
        }
    }
}
