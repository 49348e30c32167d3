//! The application's answers, and routing accepted changes to subscribers: each frame is
//! encoded once and shared, each session gets its changes in cursor order, and live changes
//! wait behind a pending replay with no gap and no duplicate (docs/protocol.md sections 4 to 7).

use std::collections::BTreeSet;
use std::ops::Range;

use bytes::Bytes;
use serde::Serialize;

use super::event::{AppError, PullId, PushId, ReplayId};
use super::out::{changes_frame, error_frame, frame, PullResponseOut, Records};
use super::session::{Batch, Held, Sent, Sessions};
use super::{PendingKind, Resume, Server, SessionId};
use crate::answer::{PullAnswer, PushAnswer};
use crate::payload::{ChangeRecord, Cursor, HasHlc, PushResponse, ResumeAck};
use crate::time::Instant;
use crate::wire::{CloseCode, MessageType};

impl Server {
    /// Answers a [`ServerEvent::Pull`](super::ServerEvent::Pull). An error becomes
    /// `HANDLER_ERROR`; an answer for a closed session or an unknown id is dropped.
    pub fn answer_pull(
        &mut self,
        now: Instant,
        request: PullId,
        answer: Result<PullAnswer, AppError>,
    ) {
        self.answer_pull_with(now, request, answer);
    }

    /// [`answer_pull`](Server::answer_pull) with records of any form that serialises as one
    /// (owned, borrowed, or already encoded).
    pub(crate) fn answer_pull_with<R: Serialize + HasHlc>(
        &mut self,
        now: Instant,
        request: PullId,
        mut answer: Result<PullAnswer<R>, AppError>,
    ) {
        self.clamp(now);
        let Some(pending) = self.take_pending(request.0, |k| matches!(k, PendingKind::Pull { .. }))
        else {
            return;
        };
        let PendingKind::Pull { from, filter } = pending.kind else {
            return;
        };
        if let (Ok(a), Some(filter)) = (&mut answer, filter) {
            a.changes.retain(|(_, r)| filter.matches(r.pk(), r.field()));
        }
        let bytes = match &answer {
            Ok(a) => frame(
                MessageType::PullResponse,
                pending.id.as_ref(),
                &PullResponseOut {
                    changes: Records(&a.changes),
                    latest_hlc: &a.latest_hlc,
                    cursor: a.head.to_string(),
                    // Only a pull that named a cursor learns whether it was served.
                    recovered: match from {
                        Resume::Cursor => Some(a.complete),
                        Resume::Unservable => Some(false),
                        Resume::Head | Resume::Since => None,
                    },
                },
            ),
            Err(e) => error_frame(pending.id.as_ref(), e.code().clone(), e.message.clone()),
        };
        self.send(pending.session, bytes);
        self.settle();
    }

    /// Answers a [`ServerEvent::Push`](super::ServerEvent::Push): the pusher gets its
    /// `push_response`, and the accepted changes go to every other subscriber of their
    /// tables, in cursor order: answers may come in any order (a real backend is
    /// asynchronous), and a batch that comes before its predecessors waits until they are
    /// answered or no push is left unanswered. The changes are routed even if the pusher has
    /// gone.
    pub fn answer_push(
        &mut self,
        now: Instant,
        request: PushId,
        answer: Result<PushAnswer, AppError>,
    ) {
        self.answer_push_routing(now, request, answer, true);
    }

    /// Answers a [`ServerEvent::Push`](super::ServerEvent::Push) whose accepted changes
    /// reach the subscribers another way: from a log shared by several servers, which each
    /// server follows and feeds to [`handle_accepted`](Server::handle_accepted), its own
    /// pushes included (README, "Scaling out over Redis"). Only the pusher's `push_response` goes
    /// out here; routing the answer as well would deliver its changes twice.
    ///
    /// Use it for every push of a server that follows a log; [`answer_push`] for a store
    /// that only this server writes.
    ///
    /// [`answer_push`]: Server::answer_push
    pub fn answer_push_unrouted(
        &mut self,
        now: Instant,
        request: PushId,
        answer: Result<PushAnswer, AppError>,
    ) {
        self.answer_push_routing(now, request, answer, false);
    }

    /// Changes a log shared by several servers accepted, as this server follows the log:
    /// routed at once to the subscribers of their tables, each frame with its cursor, except
    /// to `pushed_by`, the session of this server that pushed them (it has its
    /// `push_response`; `None` for another server's changes). Live changes of a session
    /// whose replay is pending wait for it, and a change its replay already held is not sent
    /// again, as with [`answer_push`](Server::answer_push).
    ///
    /// Feed every entry of the log exactly once and in log order, one call per run of
    /// entries from one push (or one call per entry); answer this server's pushes with
    /// [`answer_push_unrouted`](Server::answer_push_unrouted). A change with an older
    /// cursor than one already fed is routed all the same: the caller owns the order.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use syncmux::payload::{ChangeRecord, Cursor, Hlc};
    /// use syncmux::{Handshake, HandshakeOutcome, Instant, PullAnswer, Server, ServerConfig};
    /// use syncmux::{ServerEvent, ServerTransmit};
    ///
    /// let mut server = Server::new(ServerConfig::default())?;
    /// let now = Instant::ZERO;
    /// let HandshakeOutcome::Accept { session, .. } =
    ///     server.handle_handshake(now, &Handshake::new("/", "node_id=bob"))
    /// else {
    ///     panic!("refused")
    /// };
    /// let subscribe = r#"{"type":"subscribe","id":"s","payload":{"tables":["docs"]}}"#;
    /// server.handle_message(now, session, Bytes::from(subscribe));
    /// while let Some(event) = server.poll_event() {
    ///     if let ServerEvent::Replay { request, .. } = event {
    ///         let answer = PullAnswer { head: Cursor::new(9, 4), complete: true, ..PullAnswer::default() };
    ///         server.answer_replay(now, request, Ok(answer));
    ///     }
    /// }
    /// // Another server accepted a change at 9.5; this one read it from the shared log.
    /// let record = ChangeRecord::new("docs", "1", "title", "lww", Hlc::new(5, 0, "alice"), "alice");
    /// server.handle_accepted(now, vec![(Cursor::new(9, 5), record)], None);
    /// let mut frames = Vec::new();
    /// while let Some(ServerTransmit::Frame { bytes, .. }) = server.poll_transmit() {
    ///     frames.push(String::from_utf8(bytes.to_vec())?);
    /// }
    /// assert!(frames[1].starts_with(r#"{"type":"change","cursor":"9.5""#));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn handle_accepted(
        &mut self,
        now: Instant,
        mut changes: Vec<(Cursor, ChangeRecord)>,
        pushed_by: Option<SessionId>,
    ) {
        self.clamp(now);
        changes.sort_by_key(|(cursor, _)| *cursor);
        self.reorder
            .routed_through(changes.last().map(|(cursor, _)| *cursor));
        self.route(pushed_by, changes);
        self.settle();
    }

    /// The log this server follows lost entries before the server read them (a retention
    /// that trimmed the log past a follower that lagged behind): its subscribers missed
    /// changes that can no longer reach them live. Each session with a subscription is
    /// closed with 4503, as a consumer that fell behind is; its client reconnects and
    /// resumes from its cursor, and is told `recovered: false` if the log no longer holds
    /// what comes after it. Sessions without subscriptions missed nothing and stay. Returns
    /// how many sessions were closed.
    pub fn handle_log_gap(&mut self, now: Instant) -> usize {
        self.clamp(now);
        let behind: Vec<SessionId> = self
            .sessions
            .ids()
            .into_iter()
            .filter(|s| self.sessions.get(*s).is_some_and(|s| !s.tables.is_empty()))
            .collect();
        for session in &behind {
            self.close(
                *session,
                CloseCode::SLOW_CONSUMER,
                "the server fell behind the shared log",
                true,
            );
        }
        self.settle();
        behind.len()
    }

    fn answer_push_routing(
        &mut self,
        now: Instant,
        request: PushId,
        answer: Result<PushAnswer, AppError>,
        routed: bool,
    ) {
        self.clamp(now);
        let pending = self.take_pending(request.0, |k| matches!(k, PendingKind::Push));
        let pusher = pending.as_ref().map(|p| p.session);
        if let Some(pending) = &pending {
            let bytes = match &answer {
                Ok(a) => frame(
                    MessageType::PushResponse,
                    pending.id.as_ref(),
                    &PushResponse {
                        merged: a.accepted.len() as u64,
                        latest_hlc: a.latest_hlc.clone(),
                        cursor: Some(a.head),
                    },
                ),
                Err(e) => error_frame(pending.id.as_ref(), e.code().clone(), e.message.clone()),
            };
            self.send(pending.session, bytes);
        }
        self.reorder.answered(request.0);
        if let (Ok(answer), true) = (answer, routed) {
            self.reorder.hold(pusher, answer.accepted);
        }
        while let Some((pusher, batch)) = self.reorder.next() {
            self.route(pusher, batch);
        }
        self.settle();
    }

    /// Answers a [`ServerEvent::Replay`](super::ServerEvent::Replay): the replayed changes
    /// are queued, then the subscribe's `ack` (`{recovered, cursor}`), then the live changes
    /// held meanwhile that the replay did not already hold. An error becomes
    /// `HANDLER_ERROR` and undoes the subscribe's new tables.
    pub fn answer_replay(
        &mut self,
        now: Instant,
        request: ReplayId,
        answer: Result<PullAnswer, AppError>,
    ) {
        self.answer_replay_with(now, request, answer);
    }

    /// [`answer_replay`](Server::answer_replay) with records of any form that serialises as
    /// one (owned, borrowed, or already encoded).
    pub(crate) fn answer_replay_with<R: Serialize + HasHlc>(
        &mut self,
        now: Instant,
        request: ReplayId,
        answer: Result<PullAnswer<R>, AppError>,
    ) {
        self.clamp(now);
        let Some(pending) =
            self.take_pending(request.0, |k| matches!(k, PendingKind::Replay { .. }))
        else {
            return;
        };
        let PendingKind::Replay {
            tables,
            added,
            from,
            filter,
        } = pending.kind
        else {
            return;
        };
        let session = pending.session;
        if let Some(s) = self.sessions.get_mut(session) {
            s.replays_pending = s.replays_pending.saturating_sub(1);
        }
        match answer {
            Ok(mut answer) => {
                if from == Resume::Head {
                    // Nothing was asked for; a store that replays anyway must not make the
                    // session see history twice.
                    answer.changes.clear();
                }
                // Only the tables the replay still serves: one the session unsubscribed from
                // meanwhile is not sent (a later subscribe's replay sends it).
                answer.changes.retain(|(_, r)| {
                    tables.iter().any(|t| **t == *r.table())
                        && filter.as_ref().is_none_or(|f| f.matches(r.pk(), r.field()))
                });
                self.counters(session).replayed(answer.changes.len());
                let per_frame = match self.config.max_changes_per_frame {
                    0 => usize::MAX,
                    n => n,
                };
                if from == Resume::Cursor && answer.complete {
                    // After a served cursor: in cursor order, each frame with the cursor of
                    // its last change, so a client cut off half-way resumes from there
                    // without gap or duplicate. Already sorted, this costs one pass.
                    answer.changes.sort_by_key(|(cursor, _)| *cursor);
                    for chunk in answer.changes.chunks(per_frame) {
                        let records: Vec<&R> = chunk.iter().map(|(_, r)| r).collect();
                        let last = chunk.iter().map(|(c, _)| *c).max();
                        self.send_paced(session, changes_frame(&records, last));
                    }
                } else {
                    // By `since` alone (a fallback included): in the store's HLC order and
                    // without per-frame cursors, which would not be resume points. Every
                    // prefix is complete below its newest HLC, so a seed client resuming
                    // from the newest HLC it has seen loses nothing; a frame never ends
                    // inside a run of equal HLCs (`since` is exclusive).
                    let mut rest = &answer.changes[..];
                    while !rest.is_empty() {
                        let mut end = per_frame.min(rest.len());
                        while end < rest.len() && rest[end].1.hlc() == rest[end - 1].1.hlc() {
                            end += 1;
                        }
                        let (chunk, tail) = rest.split_at(end);
                        let records: Vec<&R> = chunk.iter().map(|(_, r)| r).collect();
                        self.send_paced(session, changes_frame(&records, None));
                        rest = tail;
                    }
                }
                if let Some(id) = &pending.id {
                    let ack = ResumeAck {
                        recovered: answer.complete && from != Resume::Unservable,
                        cursor: answer.head,
                    };
                    self.send_paced(session, frame(MessageType::Ack, Some(id), &ack));
                }
                if let Some(s) = self.sessions.get_mut(session) {
                    for table in tables {
                        match s.replayed.iter_mut().find(|(t, _)| *t == table) {
                            Some((_, head)) => *head = (*head).max(answer.head),
                            None => s.replayed.push((table, answer.head)),
                        }
                    }
                    let subscribed = &s.tables;
                    s.replayed.retain(|(t, _)| subscribed.contains(t));
                }
            }
            Err(e) => {
                let code = e.code().clone();
                let bytes = error_frame(pending.id.as_ref(), code, e.message);
                self.send(session, bytes);
                for table in added {
                    if let Some(s) = self.sessions.get_mut(session) {
                        if s.tables.remove(&*table) {
                            self.hub.unsubscribe(&table, session);
                        }
                    }
                }
            }
        }
        self.release_held(session);
        self.settle();
    }

    /// Removes a pending request if it is of the expected kind, and its in-flight entry.
    pub(super) fn take_pending(
        &mut self,
        key: u64,
        is: impl Fn(&PendingKind) -> bool,
    ) -> Option<super::Pending> {
        if !self.pending.get(&key).is_some_and(|p| is(&p.kind)) {
            return None;
        }
        let pending = self.pending.remove(&key)?;
        if let Some(s) = self.sessions.get_mut(pending.session) {
            s.in_flight.retain(|r| r.key != key);
        }
        Some(pending)
    }

    /// Routes accepted changes to the subscribers of their tables, except the pusher.
    fn route(&mut self, pusher: Option<SessionId>, accepted: Vec<(Cursor, ChangeRecord)>) {
        if accepted.is_empty() {
            return;
        }
        let batch: Batch = accepted.into();
        // Runs of consecutive records of one table, in cursor order.
        let mut runs: Vec<(Range<usize>, &str)> = Vec::new();
        for (i, (_, record)) in batch.iter().enumerate() {
            match runs.last_mut() {
                Some((range, table)) if *table == record.table => range.end = i + 1,
                _ => runs.push((i..i + 1, &record.table)),
            }
        }
        let mut tables: Vec<&str> = runs.iter().map(|(_, t)| *t).collect();
        tables.sort_unstable();
        tables.dedup();
        let Server {
            hub,
            sessions,
            doomed,
            stats,
            ..
        } = self;
        let mut deliver = |sessions: &mut Sessions, session, bytes, range: Range<usize>| {
            // A replay already gave this session what its store held up to the replay's head;
            // a change accepted before that head but routed after it (its push was answered
            // late) is not sent twice.
            let replayed = sessions.get(session).map(|s| &s.replayed);
            let covered = |(cursor, record): &(Cursor, ChangeRecord)| {
                replayed.is_some_and(|r| {
                    r.iter()
                        .any(|(t, h)| **t == *record.table && within(cursor, h))
                })
            };
            let sent = if batch[range.clone()].iter().any(covered) {
                let rest: Vec<(Cursor, ChangeRecord)> = batch[range]
                    .iter()
                    .filter(|c| !covered(c))
                    .cloned()
                    .collect();
                if rest.is_empty() {
                    return;
                }
                let rest: Batch = rest.into();
                let whole = 0..rest.len();
                sessions.route(session, encode(&rest, whole.clone()), &rest, whole)
            } else {
                sessions.route(session, bytes, &batch, range)
            };
            if sent == Sent::Overflow {
                doomed.push_back(session);
            }
            if let Sent::Queued(transport) = sent {
                stats[transport].1.deliveries += 1;
            }
        };
        let whole = 0..batch.len();
        if let [table] = tables[..] {
            // The common case: one table, one frame shared by every subscriber.
            let Some(subscribers) = hub.subscribers(table) else {
                return;
            };
            let bytes = encode(&batch, whole.clone());
            for &session in subscribers {
                if Some(session) != pusher {
                    deliver(sessions, session, bytes.clone(), whole.clone());
                }
            }
            return;
        }
        // Several tables: a session that has them all shares one frame of the whole batch;
        // the others get the runs of their tables, each run encoded once.
        let mut recipients = BTreeSet::new();
        for table in &tables {
            if let Some(subscribers) = hub.subscribers(table) {
                recipients.extend(subscribers.iter().filter(|s| Some(**s) != pusher));
            }
        }
        let mut full: Option<Bytes> = None;
        let mut run_frames: Vec<Option<Bytes>> = vec![None; runs.len()];
        for session in recipients {
            let Some(subscribed) = sessions.get(session).map(|s| &s.tables) else {
                continue;
            };
            let has = |t: &str| subscribed.contains(t);
            if tables.iter().all(|t| has(t)) {
                let bytes = full.get_or_insert_with(|| encode(&batch, whole.clone()));
                deliver(sessions, session, bytes.clone(), whole.clone());
                continue;
            }
            let mine: Vec<usize> = (0..runs.len()).filter(|i| has(runs[*i].1)).collect();
            for i in mine {
                let range = runs[i].0.clone();
                let bytes = run_frames[i].get_or_insert_with(|| encode(&batch, range.clone()));
                deliver(sessions, session, bytes.clone(), range);
            }
        }
    }

    /// Once no replay is pending, delivers the held live changes that the replays did not
    /// already hold (cursor at or before a replayed table's head) and whose table the session
    /// still subscribes to.
    pub(super) fn release_held(&mut self, session: SessionId) {
        let Some(s) = self.sessions.get_mut(session) else {
            return;
        };
        if s.holding() || s.closing.is_some() {
            return;
        }
        let held = s.take_held();
        // Kept afterwards too: see `route`.
        let replayed = s.replayed.clone();
        for Held {
            frame,
            batch,
            range,
        } in held
        {
            let Some(s) = self.sessions.get(session) else {
                return;
            };
            let fresh = |(cursor, record): &&(Cursor, ChangeRecord)| {
                s.tables.contains(record.table.as_str())
                    && !replayed
                        .iter()
                        .any(|(t, head)| **t == *record.table && within(cursor, head))
            };
            let keep: Vec<&(Cursor, ChangeRecord)> =
                batch[range.clone()].iter().filter(fresh).collect();
            if keep.len() == range.len() {
                self.send(session, frame);
            } else if !keep.is_empty() {
                let last = keep.iter().map(|(c, _)| *c).max();
                let records: Vec<&ChangeRecord> = keep.iter().map(|(_, r)| r).collect();
                self.send(session, changes_frame(&records, last));
            }
        }
    }
}

/// An accepted batch, with the session that pushed it (which does not get it back).
type Accepted = (Option<SessionId>, Vec<(Cursor, ChangeRecord)>);

/// Accepted batches waiting to be routed in cursor order.
///
/// The store numbers accepted changes one by one, so a batch whose first position follows
/// the last routed one goes out at once; one that comes early waits for the answers still
/// outstanding. When no push is left unanswered, nothing can fill a gap any more (positions
/// taken by another writer of the store), and everything waiting goes out in order. Bounded:
/// past [`Reorder::MAX_WAITING`] batches, the oldest go out regardless.
#[derive(Default)]
pub(crate) struct Reorder {
    /// Push requests handed to the application and not answered yet.
    outstanding: BTreeSet<u64>,
    /// Batches answered early, by their first position.
    waiting: std::collections::BTreeMap<Cursor, Accepted>,
    /// The position of the last change routed.
    routed: Option<Cursor>,
}

impl Reorder {
    /// How many early batches may wait for their predecessors.
    pub(crate) const MAX_WAITING: usize = 1024;

    pub(crate) fn asked(&mut self, request: u64) {
        self.outstanding.insert(request);
    }

    pub(crate) fn answered(&mut self, request: u64) {
        self.outstanding.remove(&request);
    }

    /// Changes up to `last` were routed by other means (a followed log).
    fn routed_through(&mut self, last: Option<Cursor>) {
        if last.is_some() {
            self.routed = last;
        }
    }

    fn hold(&mut self, pusher: Option<SessionId>, mut batch: Vec<(Cursor, ChangeRecord)>) {
        batch.sort_by_key(|(cursor, _)| *cursor);
        if let Some((first, _)) = batch.first() {
            self.waiting.insert(*first, (pusher, batch));
        }
    }

    /// The next batch to route, if its turn has come.
    fn next(&mut self) -> Option<Accepted> {
        let (first, _) = self.waiting.first_key_value()?;
        let follows = match self.routed {
            // At or before what went out already: waiting cannot put it in order any more.
            Some(last) if last.epoch == first.epoch => first.seq <= last.seq + 1,
            // A new epoch starts at 1.
            Some(_) => first.seq == 1,
            // Nothing routed yet: only position 1 surely comes first. A later one waits for
            // the answers outstanding (one may hold an earlier position), or goes out once
            // none is left.
            None => first.seq <= 1,
        };
        let turn =
            follows || self.outstanding.is_empty() || self.waiting.len() > Reorder::MAX_WAITING;
        if !turn {
            return None;
        }
        let (_, (pusher, batch)) = self.waiting.pop_first()?;
        self.routed = batch.last().map(|(cursor, _)| *cursor).or(self.routed);
        Some((pusher, batch))
    }
}

/// Whether a change at `cursor` is one a replay up to `head` held: same history (a log that
/// lost its data starts a new epoch, whose changes no replay of the old one held), not after.
fn within(cursor: &Cursor, head: &Cursor) -> bool {
    cursor.epoch == head.epoch && cursor.seq <= head.seq
}

/// Encodes records `range` of a batch as one `change` / `changes` frame.
fn encode(batch: &[(Cursor, ChangeRecord)], range: Range<usize>) -> Bytes {
    let slice = &batch[range];
    let records: Vec<&ChangeRecord> = slice.iter().map(|(_, r)| r).collect();
    let last = slice.iter().map(|(c, _)| *c).max();
    changes_frame(&records, last)
}
