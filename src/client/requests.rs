//! Requests in flight: correlation by id, and their deadlines in an ordered map.

use bytes::Bytes;

use super::sorted::SortedMap;
use crate::time::Instant;
use crate::wire::MessageType;

/// What a request asked for, which decides the reply it expects.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    Pull,
    Push,
    Subscribe,
    Unsubscribe,
    PresenceUpdate,
    PresenceGet,
    Room,
    Ping,
}

impl Kind {
    /// The message type of a successful reply.
    pub(crate) fn reply(self) -> MessageType {
        match self {
            Kind::Pull => MessageType::PullResponse,
            Kind::Push => MessageType::PushResponse,
            Kind::PresenceGet => MessageType::PresenceSnapshot,
            Kind::Ping => MessageType::Pong,
            Kind::Subscribe | Kind::Unsubscribe | Kind::PresenceUpdate | Kind::Room => {
                MessageType::Ack
            }
        }
    }

    /// The message type of the request itself.
    pub(crate) fn message(self) -> MessageType {
        match self {
            Kind::Pull => MessageType::PullRequest,
            Kind::Push => MessageType::PushRequest,
            Kind::Subscribe => MessageType::Subscribe,
            Kind::Unsubscribe => MessageType::Unsubscribe,
            Kind::PresenceUpdate => MessageType::PresenceUpdate,
            Kind::PresenceGet => MessageType::PresenceGet,
            Kind::Room => MessageType::Room,
            Kind::Ping => MessageType::Ping,
        }
    }

    /// Pull and push may be sent twice: CRDT merges are idempotent (docs/protocol.md section 11).
    pub(crate) fn idempotent(self) -> bool {
        matches!(self, Kind::Pull | Kind::Push)
    }
}

/// Who waits for the outcome.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) enum Owner {
    /// The application: the outcome becomes a `ClientEvent::Response`.
    App,
    /// The client itself, restoring a subscription of these tables after a reconnect.
    RestoreTables(Vec<String>),
    /// The client itself, restoring a presence topic or a room.
    RestoreOther(String),
}

/// What an application's request establishes on the server, which decides what a dropped
/// connection does to it (docs/protocol.md section 11): the restore after the reconnect
/// re-establishes subscriptions, presence and rooms, so a request that establishes one of
/// them completes with that restore instead of failing.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub(crate) enum Effect {
    /// Nothing the restore re-establishes: a pull or push (re-sent instead), a presence get,
    /// a ping or a room broadcast (fail with `DISCONNECTED`: the client cannot know whether
    /// the server saw them, and sending a message twice is not harmless).
    #[default]
    None,
    /// Subscribes these tables: done when their restore is acknowledged.
    Tables(Vec<String>),
    /// Joins or updates this presence topic: done when its restore is acknowledged.
    Topic(String),
    /// Joins this room: done when its restore is acknowledged.
    Room(String),
    /// Removes something (unsubscribe, presence leave, room leave): the restore leaves it
    /// out, so it is done once the new connection is open.
    Removal,
}

/// Where a request is in its life.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Status {
    /// In the offline queue, never sent.
    Queued,
    /// Sent on the current connection.
    Sent,
    /// Sent on a connection that dropped; to be sent again after the reconnect.
    Resend,
    /// Sent on a connection that dropped; completes when the restore after the reconnect
    /// re-establishes its [`Effect`].
    Restoring,
}

#[derive(Clone, Debug)]
pub(crate) struct Pending {
    pub(crate) kind: Kind,
    pub(crate) owner: Owner,
    /// The encoded frame, kept to send it (again) without re-encoding.
    pub(crate) frame: Bytes,
    pub(crate) deadline: Option<Instant>,
    pub(crate) status: Status,
    /// For a subscribe: its tables, which its ack settles.
    pub(crate) tables: Vec<String>,
    /// A subscribe with `since` or `cursor`: the server replays before its ack.
    pub(crate) resumes: bool,
    /// An application's request: what the restore after a reconnect re-establishes for it.
    pub(crate) effect: Effect,
    /// An application's request in [`Status::Restoring`]: how many restore requests it
    /// still waits for, and the resume ack they gave so far (for a subscribe).
    pub(crate) awaiting: usize,
    pub(crate) restored: Option<crate::payload::ResumeAck>,
    /// A restore request: the application's requests waiting for it.
    pub(crate) waiters: Vec<u64>,
}

impl Pending {
    /// A request in its first state, with nothing restored or waited for.
    pub(crate) fn new(kind: Kind, owner: Owner, frame: Bytes, status: Status) -> Pending {
        Pending {
            kind,
            owner,
            frame,
            deadline: None,
            status,
            tables: Vec::new(),
            resumes: false,
            effect: Effect::None,
            awaiting: 0,
            restored: None,
            waiters: Vec::new(),
        }
    }
}

/// Pending requests by id. Ids grow, so the map's order is issue order; deadlines sit in an
/// ordered map, so the earliest is found without a scan.
#[derive(Debug, Default)]
pub(crate) struct Requests {
    map: SortedMap<u64, Pending>,
    deadlines: SortedMap<(Instant, u64), ()>,
    app: usize,
    resuming: usize,
}

impl Requests {
    pub(crate) fn insert(&mut self, id: u64, pending: Pending) {
        if let Some(deadline) = pending.deadline {
            self.deadlines.insert((deadline, id), ());
        }
        if pending.owner == Owner::App {
            self.app += 1;
        }
        if pending.resumes {
            self.resuming += 1;
        }
        if let Some(old) = self.map.insert(id, pending) {
            // Ids are never reused; keep the counts right all the same.
            self.forget(id, &old);
        }
    }

    pub(crate) fn remove(&mut self, id: u64) -> Option<Pending> {
        let pending = self.map.remove(&id)?;
        self.forget(id, &pending);
        Some(pending)
    }

    fn forget(&mut self, id: u64, pending: &Pending) {
        if let Some(deadline) = pending.deadline {
            self.deadlines.remove(&(deadline, id));
        }
        if pending.owner == Owner::App {
            self.app -= 1;
        }
        if pending.resumes {
            self.resuming -= 1;
        }
    }

    pub(crate) fn get(&self, id: u64) -> Option<&Pending> {
        self.map.get(&id)
    }

    pub(crate) fn get_mut(&mut self, id: u64) -> Option<&mut Pending> {
        self.map.get_mut(&id)
    }

    /// Application requests pending (queued, sent or waiting to be re-sent).
    pub(crate) fn app_len(&self) -> usize {
        self.app
    }

    /// All pending requests, the client's own included.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|((at, _), ())| *at)
    }

    /// Removes and returns the earliest request whose deadline is at or before `now`.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<(u64, Pending)> {
        let &((at, id), ()) = self.deadlines.first()?;
        if at > now {
            return None;
        }
        let pending = self
            .remove(id)
            .expect("invariant: every deadline has its request");
        Some((id, pending))
    }

    /// Ids in issue order (a snapshot, so the caller may change the map meanwhile).
    /// Records which tables subscribe `id` settles, and whether the server replays first.
    pub(crate) fn settle_tables(&mut self, id: u64, tables: &[String], resumes: bool) {
        if let Some(pending) = self.map.get_mut(&id) {
            pending.tables = tables.to_vec();
            if resumes && !pending.resumes {
                pending.resumes = true;
                self.resuming += 1;
            }
        }
    }

    /// Whether a subscribe with `since` or `cursor` awaits its ack: its replay may still be
    /// on the way, so stream positions seen meanwhile do not yet cover every table.
    pub(crate) fn resuming(&self) -> bool {
        self.resuming > 0
    }

    pub(crate) fn ids(&self) -> Vec<u64> {
        self.map.keys().copied().collect()
    }
}
