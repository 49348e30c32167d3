//! What the server hands out: handles, events for the application, its answers, and frames.

use core::fmt;

use bytes::Bytes;
use thiserror::Error;

use crate::payload::{ChangeRecord, Cursor, Hlc, RawJson};
use crate::wire::{CloseCode, ErrorCode};

/// One session (one WebSocket connection). Never reused: a slot freed by a closed session
/// comes back with a new generation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct SessionId {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

impl SessionId {
    /// The session's slot: dense from 0, taken again (with a new generation) once the
    /// session is gone, so an embedder can keep its own per-session state in a `Vec` indexed
    /// by it, checking the whole id on each use.
    pub fn index(self) -> usize {
        self.index as usize
    }

    /// The session as one number, unique among this server's sessions for its lifetime:
    /// how a server names its sessions to others ([`RemoteSession::session`]).
    pub fn as_u64(self) -> u64 {
        (u64::from(self.index) << 32) | u64::from(self.generation)
    }

    /// The id that [`as_u64`](SessionId::as_u64) gave, for an embedder that kept it (a shared
    /// backend tags the changes a session pushed with it). An id of no live session is
    /// ignored by every input that takes one.
    pub fn from_u64(id: u64) -> SessionId {
        SessionId {
            index: (id >> 32) as u32,
            generation: id as u32,
        }
    }
}

/// A session of another server that shares its presence topics and rooms with this one
/// (README, "Scaling out over Redis"): the name the application gives that server, and the
/// session's number there ([`SessionId::as_u64`]).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct RemoteSession {
    /// The server, as the application names it (unique among the servers sharing).
    pub server: String,
    /// The session's number on that server.
    pub session: u64,
}

/// What a session did in a room, as one server tells the others
/// ([`ServerEvent::RoomChanged`], [`Server::handle_remote_room`](super::Server::handle_remote_room)).
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum RoomChange {
    /// It joined (or joined again, with new data).
    Joined {
        /// Its member data.
        data: Option<RawJson>,
    },
    /// It left (or its session ended).
    Left,
    /// It broadcast a message to the room.
    Message {
        /// The message.
        data: Option<RawJson>,
    },
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}.{}", self.index, self.generation)
    }
}

macro_rules! request_ids {
    ($($(#[$doc:meta])* $name:ident,)*) => {$(
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
        pub struct $name(pub(crate) u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    )*};
}

request_ids! {
    /// A pull the application must answer with [`Server::answer_pull`](super::Server::answer_pull).
    PullId,
    /// A push the application must answer with [`Server::answer_push`](super::Server::answer_push).
    PushId,
    /// A replay the application must answer with
    /// [`Server::answer_replay`](super::Server::answer_replay).
    ReplayId,
    /// A room join the application must admit or refuse with
    /// [`Server::answer_room_join`](super::Server::answer_room_join).
    RoomJoinId,
}

/// Something the application should know or do. Drain with
/// [`Server::poll_event`](super::Server::poll_event) after every input.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum ServerEvent {
    /// A handshake was accepted and the session is open.
    SessionOpened {
        /// The session.
        session: SessionId,
        /// Its node id.
        node_id: String,
    },
    /// A session ended; its requests still unanswered are dropped (answering them is a
    /// no-op).
    SessionClosed {
        /// The session.
        session: SessionId,
        /// Its node id.
        node_id: String,
        /// The close code the server sent, or `None` when the peer or transport ended it.
        code: Option<CloseCode>,
    },
    /// Answer with the changes of `tables` after `cursor` in position order (or, without a
    /// usable cursor, after `since` in HLC order):
    /// [`Server::answer_pull`](super::Server::answer_pull).
    Pull {
        /// The handle to answer.
        request: PullId,
        /// The session asking.
        session: SessionId,
        /// Its node id.
        node_id: String,
        /// The tables.
        tables: Vec<String>,
        /// Only changes with a greater HLC.
        since: Option<Hlc>,
        /// Only changes after this position.
        cursor: Option<Cursor>,
    },
    /// Merge `changes` and answer with the new ones:
    /// [`Server::answer_push`](super::Server::answer_push).
    Push {
        /// The handle to answer.
        request: PushId,
        /// The session pushing.
        session: SessionId,
        /// Its node id.
        node_id: String,
        /// The changes to merge.
        changes: Vec<ChangeRecord>,
    },
    /// A subscribe took effect; answer with the changes to replay, as for a pull, and the
    /// store's head: [`Server::answer_replay`](super::Server::answer_replay). Live changes
    /// of the session wait until then. The subscribe's `ack` tells the client where its
    /// stream stands (the head), so every subscribe that carried an id comes here.
    Replay {
        /// The handle to answer.
        request: ReplayId,
        /// The session subscribing.
        session: SessionId,
        /// The tables.
        tables: Vec<String>,
        /// Only changes with a greater HLC, **in HLC order** (without a usable `cursor`).
        since: Option<Hlc>,
        /// Only changes after this position, in position order; when the store cannot
        /// serve it, fall back to `since` and answer `complete: false`.
        cursor: Option<Cursor>,
        /// The subscribe asked for no replay: answer with no changes, only the head.
        head_only: bool,
    },
    /// With [`ServerConfig::shared_presence`](super::ServerConfig::shared_presence): a
    /// session of this server joined, updated or left (`data: None`) a presence topic. Tell
    /// the other servers, which apply it with
    /// [`Server::handle_remote_presence`](super::Server::handle_remote_presence).
    PresenceChanged {
        /// The session.
        session: SessionId,
        /// Its node id.
        node_id: String,
        /// The topic.
        topic: String,
        /// Its presence data; `None` when it left.
        data: Option<RawJson>,
        /// When, in milliseconds of wall time (the snapshot's `updated_at`).
        updated_at: u64,
    },
    /// With [`ServerConfig::shared_presence`](super::ServerConfig::shared_presence) and a
    /// [`max_room_size`](super::ServerConfig::max_room_size): a session of this server asks
    /// to join a room it is not in, which this server's view does not find full. Only the
    /// place the servers share can tell atomically whether the room has room: answer with
    /// [`Server::answer_room_join`](super::Server::answer_room_join) (`Ok(true)` admits and
    /// counts the session as a member there from now on; `Ok(false)` refuses with
    /// `ROOM_FULL`). If the session is gone when the answer comes, an admitted join is
    /// given back at once with a [`ServerEvent::RoomChanged`] `Left`.
    RoomJoin {
        /// The handle to answer.
        request: RoomJoinId,
        /// The session joining.
        session: SessionId,
        /// Its node id.
        node_id: String,
        /// The room.
        room: String,
        /// The most members the room may have, over every server.
        max_size: usize,
    },
    /// With [`ServerConfig::shared_presence`](super::ServerConfig::shared_presence): a
    /// session of this server joined, left or broadcast to a room. Tell the other servers,
    /// which apply it with [`Server::handle_remote_room`](super::Server::handle_remote_room).
    RoomChanged {
        /// The session.
        session: SessionId,
        /// Its node id.
        node_id: String,
        /// The room.
        room: String,
        /// What it did.
        change: RoomChange,
    },
}

/// The application could not handle a request; the session gets an `error` frame with this
/// message: `HANDLER_ERROR`, or `UNAVAILABLE` for [`AppError::unavailable`].
#[derive(Clone, PartialEq, Eq, Debug, Error)]
#[error("{message}")]
pub struct AppError {
    /// What the client is told.
    pub message: String,
    /// The error frame's code.
    code: ErrorCode,
}

impl AppError {
    /// An error with a message for the client (`HANDLER_ERROR`).
    pub fn new(message: impl Into<String>) -> Self {
        AppError {
            message: message.into(),
            code: ErrorCode::HandlerError,
        }
    }

    /// The backend (a shared store) cannot be reached for now; the client may retry the
    /// request later, and its session stays open (`UNAVAILABLE`).
    pub fn unavailable(message: impl Into<String>) -> Self {
        AppError {
            message: message.into(),
            code: ErrorCode::Unavailable,
        }
    }

    /// The code of the error frame the session gets.
    pub fn code(&self) -> &ErrorCode {
        &self.code
    }
}

/// Something for the adapter to do on a session's socket. Drain with
/// [`Server::poll_transmit`](super::Server::poll_transmit).
#[derive(Clone, PartialEq, Eq, Debug)]
// Exhaustive on purpose: every embedder acts on every variant, so a new one is a breaking
// change that the compiler must point out, not a silent `_` arm.
pub enum ServerTransmit {
    /// Send one text frame, then report its length with
    /// [`Server::handle_sent`](super::Server::handle_sent) once written.
    Frame {
        /// The session.
        session: SessionId,
        /// The frame (UTF-8 JSON), possibly shared with other sessions.
        bytes: Bytes,
    },
    /// Close the socket with this code. The session is gone; nothing more comes for it.
    Close {
        /// The session.
        session: SessionId,
        /// The close code.
        code: CloseCode,
        /// The close reason.
        reason: String,
    },
}

impl ServerTransmit {
    /// The session concerned.
    pub fn session(&self) -> SessionId {
        match self {
            ServerTransmit::Frame { session, .. } | ServerTransmit::Close { session, .. } => {
                *session
            }
        }
    }
}
