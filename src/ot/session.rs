//! Per-connection state of the OT server and the slab that holds it.

use core::fmt;
use core::time::Duration;
use std::sync::Arc;

use bytes::Bytes;

use crate::time::Instant;

/// One connection to the OT endpoint. Never reused: a slot freed by a closed session comes
/// back with a new generation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct OtSessionId {
    index: u32,
    generation: u32,
}

impl OtSessionId {
    /// The session's slot: dense from 0, taken again (with a new generation) once the
    /// session is gone, so an embedder can keep its own per-session state in a `Vec` indexed
    /// by it, checking the whole id on each use.
    pub fn index(self) -> usize {
        self.index as usize
    }
}

impl fmt::Display for OtSessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ot{}.{}", self.index, self.generation)
    }
}

/// Whether a session takes input and output.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum State {
    Open,
    /// Its close (or termination) is queued; nothing more is accepted or routed to it.
    /// `flush`: its frames queued before the close still go out.
    Closing {
        flush: bool,
    },
}

pub(crate) struct Session {
    pub(crate) state: State,
    /// The documents it joined, `doc-1` first.
    pub(crate) docs: Vec<Arc<str>>,
    /// The seed's rate limit: messages counted in the window that ends at `window_end`.
    window_end: Instant,
    count: u32,
    /// A ping went out and no pong came back yet.
    pub(crate) awaiting_pong: bool,
    /// The deadline this session has in the timer table.
    pub(crate) wake: Option<Instant>,
    /// Bytes of frames queued (or held) and not polled yet.
    pub(crate) queued: usize,
    /// Ops sent on to it and held back for `broadcast_delay`, oldest first.
    pub(crate) held: Vec<Bytes>,
    /// It is in the server's list of sessions with ops held back.
    pub(crate) listed: bool,
    /// Bytes of frames polled and not yet reported written.
    pub(crate) unacked: usize,
    /// Ops waiting for their commit (shared history).
    pub(crate) commits: usize,
}

impl Session {
    pub(crate) fn new(now: Instant, window: Duration) -> Self {
        Session {
            state: State::Open,
            docs: Vec::new(),
            window_end: now + window,
            count: 0,
            awaiting_pong: false,
            wake: None,
            queued: 0,
            held: Vec::new(),
            listed: false,
            unacked: 0,
            commits: 0,
        }
    }

    /// Counts a message against the rate limit, as the seed does: a fixed window, renewed
    /// by the first message after it ended. `false`: over the limit.
    pub(crate) fn admit(&mut self, now: Instant, limit: u32, window: Duration) -> bool {
        if limit == 0 {
            return true;
        }
        if now > self.window_end {
            self.count = 0;
            self.window_end = now + window;
        }
        self.count = self.count.saturating_add(1);
        self.count <= limit
    }

    pub(crate) fn outbound(&self) -> usize {
        self.queued + self.unacked
    }
}

struct Slot {
    generation: u32,
    session: Option<Session>,
}

/// The sessions, indexed by [`OtSessionId`].
#[derive(Default)]
pub(crate) struct Slab {
    slots: Vec<Slot>,
    free: Vec<u32>,
    len: usize,
}

impl Slab {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn insert(&mut self, session: Session) -> OtSessionId {
        self.len += 1;
        if let Some(index) = self.free.pop() {
            if let Some(slot) = self.slots.get_mut(index as usize) {
                slot.generation = slot.generation.wrapping_add(1);
                slot.session = Some(session);
                return OtSessionId {
                    index,
                    generation: slot.generation,
                };
            }
        }
        let index = u32::try_from(self.slots.len()).expect("invariant: fewer than 2^32 sessions");
        self.slots.push(Slot {
            generation: 0,
            session: Some(session),
        });
        OtSessionId {
            index,
            generation: 0,
        }
    }

    pub(crate) fn get(&self, id: OtSessionId) -> Option<&Session> {
        self.slots
            .get(id.index as usize)
            .filter(|s| s.generation == id.generation)
            .and_then(|s| s.session.as_ref())
    }

    pub(crate) fn get_mut(&mut self, id: OtSessionId) -> Option<&mut Session> {
        self.slots
            .get_mut(id.index as usize)
            .filter(|s| s.generation == id.generation)
            .and_then(|s| s.session.as_mut())
    }

    /// The session, if it is open.
    pub(crate) fn open_mut(&mut self, id: OtSessionId) -> Option<&mut Session> {
        self.get_mut(id).filter(|s| s.state == State::Open)
    }

    pub(crate) fn remove(&mut self, id: OtSessionId) -> Option<Session> {
        let slot = self
            .slots
            .get_mut(id.index as usize)
            .filter(|s| s.generation == id.generation)?;
        let session = slot.session.take()?;
        self.free.push(id.index);
        self.len -= 1;
        Some(session)
    }

    /// Every session's id, in slot order.
    pub(crate) fn ids(&self) -> Vec<OtSessionId> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.session.is_some())
            .map(|(i, s)| OtSessionId {
                index: i as u32,
                generation: s.generation,
            })
            .collect()
    }
}
