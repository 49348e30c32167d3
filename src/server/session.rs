//! Per-connection state, the slab that holds it, and each session's bounded outbound queue.

use core::time::Duration;
use std::collections::{BTreeSet, VecDeque};
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use super::event::SessionId;
use super::stats::kind_of;
use crate::payload::{ChangeRecord, Cursor};
use crate::time::Instant;
use crate::wire::{CloseCode, MessageType};

/// A routed batch of accepted changes, shared by every session it reaches.
pub(crate) type Batch = Arc<[(Cursor, ChangeRecord)]>;

/// Live changes held back behind a pending replay: the shared frame, and which records of
/// the batch it holds (so they can be filtered against the replay when released).
pub(crate) struct Held {
    pub(crate) frame: Bytes,
    pub(crate) batch: Batch,
    pub(crate) range: Range<usize>,
}

/// One request in flight on a session.
pub(crate) struct InFlight {
    /// The server-wide request key.
    pub(crate) key: u64,
    /// The client's id, for `DUPLICATE_ID`.
    pub(crate) id: Option<Box<str>>,
}

/// One WebSocket connection.
pub(crate) struct Session {
    pub(crate) node_id: Arc<str>,
    /// The node id was assigned (the handshake named none, its token held none) and no
    /// request or presence topic or room has used it yet: the first request that names a
    /// node id binds the session to it (Grove's clients name theirs only in their requests).
    pub(crate) unbound: bool,
    /// Whether `SessionOpened` was emitted (a version-mismatch session never opens).
    pub(crate) opened: bool,
    /// Its transport's place in the server's counters (`Server::stats_by_transport`).
    pub(crate) transport: usize,
    /// Set once the session is being closed: nothing more is accepted or routed to it; the
    /// close goes out after the queue drains.
    pub(crate) closing: Option<(CloseCode, Box<str>)>,
    /// Each frame with its message type, known where it was queued (counted when handed
    /// out without reading the frame again).
    out: VecDeque<(MessageType, Bytes)>,
    queued_bytes: usize,
    unacked_bytes: usize,
    held_bytes: usize,
    /// Whether the session is in the ready list.
    ready: bool,
    /// Last frame received (refreshes idle timeout and presence TTL).
    pub(crate) last_rx: Instant,
    /// Last server ping sent.
    pub(crate) last_ping: Instant,
    /// The id counter of server pings, and the one awaiting its pong.
    pub(crate) ping_seq: u32,
    pub(crate) ping_outstanding: Option<u32>,
    /// The deadline this session has in the timer table.
    pub(crate) wake: Option<Instant>,
    pub(crate) bucket: Bucket,
    pub(crate) oversized: u32,
    pub(crate) invalid: u32,
    pub(crate) in_flight: Vec<InFlight>,
    pub(crate) tables: BTreeSet<Arc<str>>,
    pub(crate) topics: Vec<Arc<str>>,
    pub(crate) rooms: Vec<Arc<str>>,
    /// Replays not yet answered; while non-zero, live changes are held.
    pub(crate) replays_pending: u32,
    /// Frames of answered replays (and their acks) not yet queued: they enter the queue as
    /// the adapter reports frames written, so a backlog larger than the outbound bound
    /// still gets through (a resume would otherwise be closed as a slow consumer, resume
    /// again, and loop). Bounded by the application's answers; live changes stay held
    /// until it is empty.
    backlog: VecDeque<Bytes>,
    pub(crate) held: VecDeque<Held>,
    /// The heads of replays answered while others were still pending, per table.
    pub(crate) replayed: Vec<(Arc<str>, Cursor)>,
}

impl Session {
    pub(crate) fn new(node_id: Arc<str>, now: Instant, burst: u32, window: Duration) -> Self {
        Session {
            node_id,
            unbound: false,
            opened: false,
            transport: 0,
            closing: None,
            out: VecDeque::new(),
            queued_bytes: 0,
            unacked_bytes: 0,
            held_bytes: 0,
            ready: false,
            last_rx: now,
            last_ping: now,
            ping_seq: 0,
            ping_outstanding: None,
            wake: None,
            bucket: Bucket::new(now, burst, window),
            oversized: 0,
            invalid: 0,
            in_flight: Vec::new(),
            tables: BTreeSet::new(),
            topics: Vec::new(),
            rooms: Vec::new(),
            replays_pending: 0,
            backlog: VecDeque::new(),
            held: VecDeque::new(),
            replayed: Vec::new(),
        }
    }

    /// Bytes counted against the outbound bound.
    pub(crate) fn outbound_bytes(&self) -> usize {
        self.queued_bytes + self.unacked_bytes + self.held_bytes
    }

    /// Whether live changes must wait: a replay is pending or its frames are still paced.
    pub(crate) fn holding(&self) -> bool {
        self.replays_pending > 0 || !self.backlog.is_empty()
    }

    /// Drops everything queued or held (a slow consumer resumes from its cursor).
    fn drop_output(&mut self) {
        self.out.clear();
        self.backlog.clear();
        self.held.clear();
        self.queued_bytes = 0;
        self.held_bytes = 0;
    }

    /// Takes the held changes out (for release after the replays).
    pub(crate) fn take_held(&mut self) -> VecDeque<Held> {
        self.held_bytes = 0;
        core::mem::take(&mut self.held)
    }
}

/// A token bucket: burst N, refilled N per window (docs/protocol.md section 10.1, "Rate limit").
///
/// The level is kept in units of `1 / window_nanos` tokens, so refilling is exact integer
/// arithmetic: `elapsed_nanos * N` units, one message costs `window_nanos` units.
pub(crate) struct Bucket {
    level: u128,
    stamp: Instant,
    /// Start of the current abuse window and messages refused within it.
    window_start: Instant,
    pub(crate) refused: u32,
}

impl Bucket {
    fn new(now: Instant, burst: u32, window: Duration) -> Self {
        Bucket {
            level: u128::from(burst) * window.as_nanos(),
            stamp: now,
            window_start: now,
            refused: 0,
        }
    }

    /// Takes one token; `false` when the bucket is empty (and counts the refusal).
    pub(crate) fn take(&mut self, now: Instant, burst: u32, window: Duration) -> bool {
        if burst == 0 {
            return true;
        }
        let cost = window.as_nanos();
        let capacity = u128::from(burst) * cost;
        let elapsed = u128::from((now - self.stamp).as_nanos() as u64);
        self.level = capacity.min(self.level + elapsed * u128::from(burst));
        self.stamp = now;
        if self.level >= cost {
            self.level -= cost;
            return true;
        }
        if now - self.window_start >= window {
            self.window_start = now;
            self.refused = 0;
        }
        self.refused = self.refused.saturating_add(1);
        false
    }
}

/// What happened to a frame offered to a session.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Sent {
    /// Queued (or held), for a session of the transport at this place in the counters.
    Queued(usize),
    /// The session is closing or gone; the frame was dropped.
    Dropped,
    /// The frame would have exceeded the outbound bound: the session is now closing with
    /// 4503 and must be detached from the hub.
    Overflow,
}

/// Where a session's replay backlog stands after [`Sessions::feed`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Fed {
    /// Nothing was waiting (or the session is closing or gone).
    Idle,
    /// The last waiting frames entered the queue.
    Drained,
    /// Frames wait for the adapter to report writes.
    Waiting,
    /// The session overflowed: it is closing with 4503 and must be detached.
    Overflow,
}

struct Slot {
    generation: u32,
    /// Inline, not boxed: routing a broadcast touches every subscriber's session, and a
    /// pointer to follow per session was a dependent cache miss per delivery.
    session: Option<Session>,
}

/// Every session, in a slab indexed by [`SessionId`], with the ready list that orders output.
pub(crate) struct Sessions {
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
    /// Sessions with output to hand out, in the order they became ready.
    ready: VecDeque<SessionId>,
    max_outbound: usize,
    /// Whether frames handed out count until reported written (`ServerConfig::reports_writes`).
    counts_unsent: bool,
}

impl Sessions {
    pub(crate) fn new(max_outbound: usize, counts_unsent: bool) -> Self {
        Sessions {
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            ready: VecDeque::new(),
            max_outbound,
            counts_unsent,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.live
    }

    pub(crate) fn insert(&mut self, session: Session) -> SessionId {
        self.live += 1;
        let session = Some(session);
        match self.free.pop() {
            Some(index) => {
                let slot = &mut self.slots[index as usize];
                slot.session = session;
                SessionId {
                    index,
                    generation: slot.generation,
                }
            }
            None => {
                let index = u32::try_from(self.slots.len())
                    .expect("invariant: max_sessions keeps the slab below u32::MAX");
                self.slots.push(Slot {
                    generation: 0,
                    session,
                });
                SessionId {
                    index,
                    generation: 0,
                }
            }
        }
    }

    pub(crate) fn get(&self, id: SessionId) -> Option<&Session> {
        let slot = self.slots.get(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.session.as_ref()
    }

    pub(crate) fn get_mut(&mut self, id: SessionId) -> Option<&mut Session> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.session.as_mut()
    }

    /// An open (not closing) session.
    pub(crate) fn open_mut(&mut self, id: SessionId) -> Option<&mut Session> {
        self.get_mut(id).filter(|s| s.closing.is_none())
    }

    pub(crate) fn remove(&mut self, id: SessionId) -> Option<Session> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        let session = slot.session.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(id.index);
        self.live -= 1;
        Some(session)
    }

    /// Every live session id, in slot order.
    pub(crate) fn ids(&self) -> Vec<SessionId> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.session.is_some())
            .map(|(index, slot)| SessionId {
                index: index as u32,
                generation: slot.generation,
            })
            .collect()
    }

    fn mark_ready(ready: &mut VecDeque<SessionId>, id: SessionId, session: &mut Session) {
        if !session.ready {
            session.ready = true;
            ready.push_back(id);
        }
    }

    /// Queues a frame for an open session, under the outbound bound.
    pub(crate) fn send(&mut self, id: SessionId, frame: Bytes) -> Sent {
        let (session, ready) = match self.admit(id, frame.len()) {
            Ok(admitted) => admitted,
            Err(sent) => return sent,
        };
        session.queued_bytes += frame.len();
        session.out.push_back((kind_of(&frame), frame));
        Self::mark_ready(ready, id, session);
        Sent::Queued(session.transport)
    }

    /// Queues a routed live change, or holds it while the session waits for a replay
    /// (under the same bound). One slot lookup: this is the fan-out hot path.
    pub(crate) fn route(
        &mut self,
        id: SessionId,
        frame: Bytes,
        batch: &Batch,
        range: Range<usize>,
    ) -> Sent {
        let (session, ready) = match self.admit(id, frame.len()) {
            Ok(admitted) => admitted,
            Err(sent) => return sent,
        };
        if session.holding() {
            session.held_bytes += frame.len();
            session.held.push_back(Held {
                frame,
                batch: batch.clone(),
                range,
            });
        } else {
            // A routed frame's type is its record count's: no need to read the frame.
            let kind = if range.len() == 1 {
                MessageType::Change
            } else {
                MessageType::Changes
            };
            session.queued_bytes += frame.len();
            session.out.push_back((kind, frame));
            Self::mark_ready(ready, id, session);
        }
        Sent::Queued(session.transport)
    }

    fn overflow(ready: &mut VecDeque<SessionId>, id: SessionId, session: &mut Session) {
        session.drop_output();
        session.closing = Some((CloseCode::SLOW_CONSUMER, "slow consumer".into()));
        Self::mark_ready(ready, id, session);
    }

    /// An open session that may take `len` more outbound bytes, and the ready queue; or what
    /// became of the frame instead (a session over the bound is closed as a slow consumer).
    fn admit(
        &mut self,
        id: SessionId,
        len: usize,
    ) -> Result<(&mut Session, &mut VecDeque<SessionId>), Sent> {
        let max = self.max_outbound;
        let Some((session, ready)) = self.get_mut_split(id) else {
            return Err(Sent::Dropped);
        };
        if session.closing.is_some() {
            return Err(Sent::Dropped);
        }
        if max != 0 && session.outbound_bytes() + len > max {
            Self::overflow(ready, id, session);
            return Err(Sent::Overflow);
        }
        Ok((session, ready))
    }

    fn get_mut_split(&mut self, id: SessionId) -> Option<(&mut Session, &mut VecDeque<SessionId>)> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        Some((slot.session.as_mut()?, &mut self.ready))
    }

    /// Starts closing a session: after its queue drains (or at once, without `flush`), the
    /// close is handed out. Returns `false` if it was already closing or is gone.
    pub(crate) fn begin_close(
        &mut self,
        id: SessionId,
        code: CloseCode,
        reason: &str,
        flush: bool,
    ) -> bool {
        let Some((session, ready)) = self.get_mut_split(id) else {
            return false;
        };
        if session.closing.is_some() {
            return false;
        }
        if !flush {
            session.drop_output();
        }
        session.backlog.clear();
        session.held.clear();
        session.held_bytes = 0;
        session.closing = Some((code, reason.into()));
        Self::mark_ready(ready, id, session);
        true
    }

    /// Frames handed out count until reported written from now on.
    pub(crate) fn count_unsent(&mut self) {
        self.counts_unsent = true;
    }

    /// The adapter wrote `n` bytes of this session's frames.
    pub(crate) fn sent(&mut self, id: SessionId, n: usize) {
        if let Some(session) = self.get_mut(id) {
            session.unacked_bytes = session.unacked_bytes.saturating_sub(n);
        }
    }

    /// Adds a replay frame to the session's backlog and queues what fits.
    pub(crate) fn send_paced(&mut self, id: SessionId, frame: Bytes) -> Fed {
        match self.get_mut(id) {
            Some(session) if session.closing.is_none() => session.backlog.push_back(frame),
            _ => return Fed::Idle,
        }
        self.feed(id)
    }

    /// Moves backlog frames into the queue while they fit under the outbound bound. When
    /// nothing is queued or unwritten and the next frame still does not fit (live changes
    /// held behind the replay filled the bound, or one frame is larger than it), the
    /// session is a slow consumer.
    pub(crate) fn feed(&mut self, id: SessionId) -> Fed {
        let max = self.max_outbound;
        let Some((session, ready)) = self.get_mut_split(id) else {
            return Fed::Idle;
        };
        if session.closing.is_some() || session.backlog.is_empty() {
            return Fed::Idle;
        }
        while let Some(len) = session.backlog.front().map(Bytes::len) {
            if max != 0 && session.outbound_bytes() + len > max {
                if session.queued_bytes + session.unacked_bytes == 0 {
                    Self::overflow(ready, id, session);
                    return Fed::Overflow;
                }
                return Fed::Waiting;
            }
            let frame = session
                .backlog
                .pop_front()
                .expect("invariant: front() was Some");
            session.queued_bytes += len;
            session.out.push_back((kind_of(&frame), frame));
            Self::mark_ready(ready, id, session);
        }
        Fed::Drained
    }

    /// The next frame or close, round-robin over ready sessions. A close frees the slot.
    pub(crate) fn poll(&mut self) -> Option<Output> {
        let counts_unsent = self.counts_unsent;
        while let Some(id) = self.ready.pop_front() {
            let Some((session, ready)) = self.get_mut_split(id) else {
                continue;
            };
            if let Some((kind, frame)) = session.out.pop_front() {
                session.queued_bytes -= frame.len();
                if counts_unsent {
                    session.unacked_bytes += frame.len();
                }
                if session.out.is_empty() && session.closing.is_none() {
                    session.ready = false;
                } else {
                    ready.push_back(id);
                }
                return Some(Output::Frame(id, session.transport, kind, frame));
            }
            session.ready = false;
            if let Some((code, reason)) = session.closing.take() {
                let transport = session.transport;
                self.remove(id);
                return Some(Output::Close(id, transport, code, reason));
            }
        }
        None
    }
}

/// One output of [`Sessions::poll`], with its session's transport's place in the counters.
pub(crate) enum Output {
    Frame(SessionId, usize, MessageType, Bytes),
    Close(SessionId, usize, CloseCode, Box<str>),
}
