//! The OT document server: one pure state machine for every connection of the OT endpoint
//! (the wire of `@open-ot/transport-websocket`).
//!
//! It keeps every document's text, head revision and recent history, transforms each
//! incoming op against the ops logged since its revision, applies it, acks the sender and
//! sends it to the document's other members. It decides handshakes (`?token=`), counts the
//! seed's rate limit, and runs the heartbeat: it says when to send a WebSocket ping
//! ([`OtTransmit::Ping`]) and when to terminate a connection that did not answer the
//! previous one ([`OtTransmit::Terminate`]); the adapter reports pongs with
//! [`handle_pong`](OtServer::handle_pong).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use super::config::OtServerConfig;
use super::document::{Document, Limits, SnapshotWait, Submitted, MAX_SNAPSHOTS_WAITING};
use super::session::{OtSessionId, Session, Slab, State};
use super::text::TextOp;
use super::wire::{
    decode_client, encode_ack, encode_error, encode_init, encode_op, encode_snapshot,
    ClientMessage, DEFAULT_DOC_ID,
};
use crate::config::ConfigError;
use crate::rng::{Jitter, KeyedHasher};
use crate::server::{AuthDecision, AuthRequest, Handshake};
use crate::time::Instant;
use crate::wire::CloseCode;

mod shared;

pub use shared::OtCommitId;

/// The answer to a handshake.
#[derive(Clone, PartialEq, Eq, Debug)]
// Exhaustive on purpose: every embedder acts on every variant, so a new one is a breaking
// change that the compiler must point out, not a silent `_` arm.
pub enum OtHandshakeOutcome {
    /// Upgrade; the session is open and a member of `doc-1`.
    Accept {
        /// The new session.
        session: OtSessionId,
    },
    /// Refuse the upgrade with this HTTP status: 401 (no or bad token, or the auth hook's
    /// status), 503 (full, shutting down).
    Reject {
        /// The HTTP status.
        status: u16,
        /// Why.
        reason: String,
    },
}

/// Something for the adapter to do on a connection. Drain with
/// [`OtServer::poll_transmit`].
#[derive(Clone, PartialEq, Eq, Debug)]
// Exhaustive on purpose: every embedder acts on every variant, so a new one is a breaking
// change that the compiler must point out, not a silent `_` arm.
pub enum OtTransmit {
    /// Send one text frame, then report its length with [`OtServer::handle_sent`] once
    /// written.
    Frame {
        /// The session.
        session: OtSessionId,
        /// The frame (UTF-8 JSON), possibly shared with other sessions.
        bytes: Bytes,
    },
    /// Send a WebSocket ping control frame, and call [`OtServer::handle_pong`] when its
    /// pong arrives.
    Ping {
        /// The session.
        session: OtSessionId,
    },
    /// Close the socket with this code. The session is gone; nothing more comes for it.
    Close {
        /// The session.
        session: OtSessionId,
        /// The close code.
        code: CloseCode,
        /// The close reason.
        reason: String,
    },
    /// Drop the connection without a closing handshake (it did not answer a ping, as the
    /// seed's `ws.terminate()`). The session is gone.
    Terminate {
        /// The session.
        session: OtSessionId,
    },
}

/// Why a session ended.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum OtCloseReason {
    /// The peer or the transport closed it ([`OtServer::handle_disconnected`]).
    Peer,
    /// It did not answer a ping before the next was due.
    Unresponsive,
    /// Its outbound bound was exceeded (closed with 4503).
    SlowConsumer,
    /// [`OtServer::close_session`].
    Closed,
    /// [`OtServer::shutdown`] (closed with 1001).
    Shutdown,
}

/// Something the application may want to know. Drain with [`OtServer::poll_event`].
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum OtServerEvent {
    /// A document was created (empty, at revision 0) by its first use.
    DocumentCreated {
        /// The document.
        doc: Arc<str>,
    },
    /// An op became a document's revision `revision` (to persist it, or publish it).
    Applied {
        /// The session that sent it.
        session: OtSessionId,
        /// The document.
        doc: Arc<str>,
        /// The revision it produced.
        revision: u64,
        /// The op as applied (transformed to the revision before).
        op: Arc<TextOp>,
    },
    /// Shared history ([`OtServerConfig::shared_history`]): append `op` to `doc`'s shared
    /// history as revision `base + 1`, or, if others appended first, transformed against
    /// their ops (`op` on side `right`) at the head; then answer with
    /// [`OtServer::handle_committed`]. `text` is the text `op` makes of revision `base`'s.
    Commit {
        /// The commit, to answer.
        commit: OtCommitId,
        /// The document.
        doc: Arc<str>,
        /// The revision `op` applies to.
        base: u64,
        /// The op, rebased onto `base`.
        op: Arc<TextOp>,
        /// The text after `op`.
        text: String,
    },
    /// Shared history: this server's copy of `doc` misses revisions `from..=to`; read them
    /// from the shared history and hand each over with [`OtServer::handle_remote_op`].
    Fetch {
        /// The document.
        doc: Arc<str>,
        /// The first revision missing.
        from: u64,
        /// The last revision missing.
        to: u64,
    },
    /// Shared history: read `doc`'s snapshot and hand it over with
    /// [`OtServer::handle_remote_snapshot`] (this server's copy cannot go on from what it
    /// has).
    Load {
        /// The document.
        doc: Arc<str>,
    },
    /// Shared history: this server dropped its copy of `doc` (no session was a member, and
    /// a new document needed its place under [`OtServerConfig::max_documents`]); the
    /// shared history keeps the document, and its next use loads it again. Stop following
    /// its changes.
    DocumentDropped {
        /// The document.
        doc: Arc<str>,
    },
    /// A session ended; it left every document.
    SessionClosed {
        /// The session.
        session: OtSessionId,
        /// Why.
        reason: OtCloseReason,
    },
}

/// A read-only view of a document.
#[derive(Clone, Copy)]
pub struct OtDocument<'a>(&'a Document);

impl OtDocument<'_> {
    /// The text at the head revision.
    pub fn text(&self) -> &str {
        self.0.text()
    }

    /// The head revision (0 for a new document).
    pub fn revision(&self) -> u64 {
        self.0.revision()
    }

    /// How many ops the history holds.
    pub fn history_len(&self) -> usize {
        self.0.history_len()
    }

    /// The sessions that receive the document's ops, in session order.
    pub fn members(&self) -> Vec<OtSessionId> {
        self.0.members.iter().copied().collect()
    }

    /// The ops that made the revisions after `revision`, oldest first, each with the
    /// revision it made (what a poll answers); `None` when the history kept no longer
    /// holds them all (the client must load the document again). Empty when `revision` is
    /// the head or past it.
    pub fn ops_since(&self, revision: u64) -> Option<impl Iterator<Item = (u64, &TextOp)> + '_> {
        self.0.ops_since(revision)
    }
}

impl core::fmt::Debug for OtDocument<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("OtDocument")
            .field("revision", &self.revision())
            .field("len", &self.text().len())
            .finish_non_exhaustive()
    }
}

/// Ops a session's hold keeps room for once it is empty again.
const MAX_HELD_KEPT: usize = 16;

/// What the outbound queue holds for a session.
enum Out {
    Frame(Bytes),
    Ping,
    Close(CloseCode, Box<str>),
    Terminate,
}

/// The OT server state machine.
///
/// # Contract
///
/// After every input (a `handle_*` or a command), drain [`poll_transmit`](Self::poll_transmit)
/// and [`poll_event`](Self::poll_event), then wait until [`poll_timeout`](Self::poll_timeout)
/// (or the next input) and call [`handle_timeout`](Self::handle_timeout). Report every frame
/// written with [`handle_sent`](Self::handle_sent), every pong with
/// [`handle_pong`](Self::handle_pong), every closed socket with
/// [`handle_disconnected`](Self::handle_disconnected). A `now` earlier than one already seen is taken as
/// the latest seen. Binary frames are read like text (the seed's `ws` server does the same).
///
/// # Shared history
///
/// With [`OtServerConfig::shared_history`], several servers serve the same documents and
/// their history is decided outside (`syncmux-server`: Redis, through the crate `syncmux-redis`).
/// The seam is the same as the sync server's backend: the state machine asks and is
/// answered later. Each server keeps a copy of every document it serves; an op from a
/// session is rebased onto the copy's head and comes out as an [`OtServerEvent::Commit`],
/// answered with [`handle_committed`](Self::handle_committed); the ops of other servers come
/// in with [`handle_remote_op`](Self::handle_remote_op). The copy applies ops strictly in
/// revision order: the sender's ack and the others' op go out when it reaches the op's
/// revision, so every connection still gets a document's frames in order and without gaps.
/// An op ahead of a gap waits and an [`OtServerEvent::Fetch`] asks for the missing ones
/// (a lost Pub/Sub message), [`handle_remote_head`](Self::handle_remote_head) catches a
/// loss at the tail, and [`handle_remote_snapshot`](Self::handle_remote_snapshot) gives a
/// document's copy its start ([`OtServerEvent::DocumentCreated`], or
/// [`OtServerEvent::Load`]); snapshot requests wait for it. A copy is a cache: at
/// [`OtServerConfig::max_documents`] the one idle longest makes room for a new document
/// ([`OtServerEvent::DocumentDropped`]).
///
/// # Broadcast delay
///
/// An op sent on to the other members of its document may wait up to
/// [`OtServerConfig::broadcast_delay`] (1 ms by default) before it is handed out, so that it
/// leaves in one write with what that member gets next: a member that is editing gets the
/// ops held for it ahead of its own ack, at once; a member that only reads gets every op of
/// the delay together when it is over ([`poll_timeout`](Self::poll_timeout)). Answers to a
/// session's own messages are never held. Frames still reach each connection in revision
/// order: held ops always go out before anything sent to the session after them.
///
/// # Example
///
/// Two connections on `doc-1`; one inserts, the other receives the op once the broadcast
/// delay is over:
///
/// ```
/// use bytes::Bytes;
/// use syncmux::ot::{OtHandshakeOutcome, OtServer, OtServerConfig, OtTransmit};
/// use syncmux::Handshake;
/// use syncmux::Instant;
///
/// let mut server = OtServer::new(OtServerConfig::default())?;
/// let now = Instant::ZERO;
/// let mut open = |server: &mut OtServer| match server.handle_handshake(now, &Handshake::new("/ot", "")) {
///     OtHandshakeOutcome::Accept { session } => session,
///     other => panic!("{other:?}"),
/// };
/// let (alice, bob) = (open(&mut server), open(&mut server));
/// let mut frames = |server: &mut OtServer, now| {
///     let mut frames = Vec::new();
///     while let Some(transmit) = server.poll_transmit() {
///         if let OtTransmit::Frame { session, bytes } = transmit {
///             server.handle_sent(now, session, bytes.len());
///             frames.push((session, String::from_utf8(bytes.to_vec()).unwrap()));
///         }
///     }
///     frames
/// };
///
/// server.handle_message(now, alice, Bytes::from(r#"{"type":"op","op":[{"i":"Hello"}],"revision":0}"#));
/// assert_eq!(frames(&mut server, now), [(alice, r#"{"type":"ack","revision":1}"#.to_owned())]);
///
/// let later = server.poll_timeout().expect("the broadcast delay");
/// server.handle_timeout(later);
/// assert_eq!(frames(&mut server, later), [
///     (bob, r#"{"type":"op","op":[{"i":"Hello"}],"revision":1}"#.to_owned()),
/// ]);
/// assert_eq!(server.document("doc-1").map(|d| d.text().to_owned()), Some("Hello".into()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct OtServer {
    config: OtServerConfig,
    now: Instant,
    sessions: Slab,
    docs: HashMap<Arc<str>, Document, KeyedHasher>,
    /// Documents left by their last member so far (orders [`Document::idle_since`]).
    departures: u64,
    /// The one timer table: each session's next heartbeat.
    timers: BTreeSet<(Instant, OtSessionId)>,
    /// Every session's output, in order (a close after its frames). Each session's share is
    /// bounded by `max_outbound_bytes`; entries of sessions gone are skipped when polled.
    out: VecDeque<(OtSessionId, Out)>,
    events: VecDeque<OtServerEvent>,
    dropped_events: u64,
    /// Sessions with ops held back (`broadcast_delay`), each once.
    held: Vec<OtSessionId>,
    /// When the ops held back go out, whatever comes before.
    held_until: Option<Instant>,
    /// Recipients of the op being routed (kept to reuse its allocation).
    scratch: Vec<OtSessionId>,
    shut_down: bool,
    /// Shared history: ops waiting for their commit (bounded per session by
    /// `max_commits_in_flight`).
    commits: BTreeMap<OtCommitId, shared::Pending>,
    next_commit: u64,
}

impl core::fmt::Debug for OtServer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("OtServer")
            .field("sessions", &self.sessions.len())
            .field("documents", &self.docs.len())
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

impl OtServer {
    /// The document a frame without `docId` is about: `doc-1`.
    pub const DEFAULT_DOC_ID: &'static str = DEFAULT_DOC_ID;

    /// A server with this configuration and the empty document `doc-1` (every connection
    /// is a member of it).
    pub fn new(config: OtServerConfig) -> Result<OtServer, ConfigError> {
        config.validate()?;
        let mut docs = HashMap::with_hasher(Jitter::new(config.seed).hasher());
        let mut first = Document::new();
        first.loading = config.shared_history;
        docs.insert(Arc::from(DEFAULT_DOC_ID), first);
        Ok(OtServer {
            config,
            now: Instant::ZERO,
            sessions: Slab::default(),
            docs,
            departures: 0,
            timers: BTreeSet::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            dropped_events: 0,
            held: Vec::new(),
            held_until: None,
            scratch: Vec::new(),
            shut_down: false,
            commits: BTreeMap::new(),
            next_commit: 0,
        })
    }

    // ---- getters ------------------------------------------------------------------------

    /// The configuration.
    pub fn config(&self) -> &OtServerConfig {
        &self.config
    }

    /// Sessions that exist (open or closing).
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Whether a session is open (not closing, not gone).
    pub fn is_open(&self, session: OtSessionId) -> bool {
        self.sessions
            .get(session)
            .is_some_and(|s| s.state == State::Open)
    }

    /// How many documents exist.
    pub fn document_count(&self) -> usize {
        self.docs.len()
    }

    /// A document, if it exists.
    pub fn document(&self, doc: &str) -> Option<OtDocument<'_>> {
        self.docs.get(doc).map(OtDocument)
    }

    /// The documents a session joined, `doc-1` first.
    pub fn joined(&self, session: OtSessionId) -> Vec<&str> {
        self.sessions
            .get(session)
            .map(|s| s.docs.iter().map(|d| &**d).collect())
            .unwrap_or_default()
    }

    /// The bytes counted against a session's outbound bound: queued, and handed out but not
    /// yet reported written.
    pub fn outbound_bytes(&self, session: OtSessionId) -> Option<usize> {
        self.sessions.get(session).map(Session::outbound)
    }

    /// Entries waiting in the outbound queue (frames, pings, closes; not the ops held back
    /// for the broadcast delay).
    pub fn queued_transmits(&self) -> usize {
        self.out.len()
    }

    /// Events dropped because `max_events` were waiting to be polled.
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events
    }

    // ---- inputs -------------------------------------------------------------------------

    /// Decides a WebSocket handshake: the token (query `token` or `access_token`, or
    /// `Authorization: Bearer`) goes to the auth hook; no token while a hook is set is 401.
    /// Any path is accepted (the adapter routes). An accepted session is a member of
    /// `doc-1`.
    pub fn handle_handshake(&mut self, now: Instant, handshake: &Handshake) -> OtHandshakeOutcome {
        let now = self.clamp(now);
        let reject = |status: u16, reason: &str| OtHandshakeOutcome::Reject {
            status,
            reason: reason.to_owned(),
        };
        if self.shut_down {
            return reject(503, "server is shutting down");
        }
        if let (Some(allowed), Some(origin)) = (&self.config.allowed_origins, &handshake.origin) {
            if !allowed.iter().any(|a| a == origin) {
                return reject(403, "origin not allowed");
            }
        }
        if self.config.max_sessions != 0 && self.sessions.len() >= self.config.max_sessions {
            return reject(503, "too many sessions");
        }
        if let Some(auth) = &self.config.auth {
            let Some(token) = handshake.token() else {
                return reject(401, "missing token");
            };
            let node_id = handshake.requested_node_id();
            let request = AuthRequest {
                token: Some(&token),
                node_id: node_id.as_deref(),
                handshake,
            };
            if let AuthDecision::Deny { status, reason } = auth(&request) {
                return OtHandshakeOutcome::Reject { status, reason };
            }
        }
        let session = self
            .sessions
            .insert(Session::new(now, self.config.rate_limit_window));
        // Every connection starts as a member of doc-1 (the seed's single-document server
        // sends each op to every other client). It exists from the start and joining it is
        // the session's first: this cannot fail.
        let _ = self.join(session, None);
        self.arm(session, now);
        OtHandshakeOutcome::Accept { session }
    }

    /// A message arrived from a session (a text frame, or a binary one: both are read as
    /// UTF-8 JSON).
    pub fn handle_message(&mut self, now: Instant, session: OtSessionId, bytes: Bytes) {
        let now = self.clamp(now);
        let (limit, window) = (
            self.config.rate_limit_messages,
            self.config.rate_limit_window,
        );
        let Some(s) = self.sessions.open_mut(session) else {
            return;
        };
        // Before anything else, as the seed: a message past the limit is not even read.
        if !s.admit(now, limit, window) {
            self.send(session, encode_error("Rate limit exceeded", None));
            return;
        }
        let max = self.config.max_frame_len;
        if max != 0 && bytes.len() > max {
            let message = format!("Message too large: {} bytes (max {max})", bytes.len());
            self.send(session, encode_error(&message, None));
            return;
        }
        match decode_client(&bytes) {
            Err((error, doc_id)) => {
                self.send(session, encode_error(&error.to_string(), doc_id.as_deref()));
            }
            Ok(ClientMessage::Op {
                doc_id,
                op,
                revision,
                op_id,
            }) => self.on_op(session, doc_id, op, revision, op_id),
            Ok(ClientMessage::Snapshot {
                doc_id,
                op_id,
                revision,
            }) => self.on_snapshot(session, doc_id, op_id, revision, false),
        }
    }

    /// Opens a session on a transport that starts with its document, as an HTTP stream
    /// does (`GET /ot/events?docId=ID`): the session becomes a member of `doc_id` (`None`
    /// or empty: `doc-1`) and of no other document, and is sent
    /// `{"type":"init","snapshot":TEXT,"revision":V}` (with `docId` when one is named). Under
    /// shared history that waits for the document's copy to load, and comes before any op
    /// after it. A `docId` that a limit refuses gets an error frame instead, as a snapshot
    /// request would.
    pub fn handle_init(&mut self, now: Instant, session: OtSessionId, doc_id: Option<&str>) {
        self.clamp(now);
        let doc_id = doc_id.filter(|d| !d.is_empty() && *d != DEFAULT_DOC_ID);
        if doc_id.is_some() {
            // Every session starts in doc-1; a stream of another document must not carry
            // doc-1's ops (its client would apply them to its own document).
            self.leave(session, DEFAULT_DOC_ID);
        }
        self.on_snapshot(session, doc_id.map(str::to_owned), None, None, true);
    }

    /// The pong to a session's ping arrived.
    pub fn handle_pong(&mut self, now: Instant, session: OtSessionId) {
        self.clamp(now);
        if let Some(s) = self.sessions.open_mut(session) {
            s.awaiting_pong = false;
        }
    }

    /// The adapter wrote `bytes` bytes of this session's frames: they no longer count
    /// against its outbound bound.
    pub fn handle_sent(&mut self, now: Instant, session: OtSessionId, bytes: usize) {
        self.clamp(now);
        if let Some(s) = self.sessions.get_mut(session) {
            s.unacked = s.unacked.saturating_sub(bytes);
        }
    }

    /// The session's socket closed (by the peer or the transport): it leaves its documents
    /// and is gone.
    pub fn handle_disconnected(&mut self, now: Instant, session: OtSessionId) {
        self.clamp(now);
        if self.is_open(session) {
            self.detach(session, OtCloseReason::Peer);
        }
        self.sessions.remove(session);
    }

    /// Time passed: sends the ops held back once their delay is over, the pings due, and
    /// terminates the sessions that did not answer the previous one. Calling it early is a
    /// no-op.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.clamp(now);
        self.release_held_if_due();
        while let Some(&(at, session)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let Some(s) = self.sessions.open_mut(session) else {
                continue;
            };
            if s.wake != Some(at) {
                continue;
            }
            s.wake = None;
            if s.awaiting_pong {
                self.begin_close(session, None, OtCloseReason::Unresponsive);
                continue;
            }
            s.awaiting_pong = true;
            // With the ops held for it: the ping is a write anyway.
            self.release(session);
            self.out.push_back((session, Out::Ping));
            // From now, not from `at`: after a long stall (a suspended host) the next ping
            // still leaves a whole interval for the pong.
            self.arm(session, now);
        }
    }

    // ---- commands -----------------------------------------------------------------------

    /// Closes a session: its queued frames go out, then the close.
    pub fn close_session(
        &mut self,
        now: Instant,
        session: OtSessionId,
        code: CloseCode,
        reason: &str,
    ) {
        self.clamp(now);
        if self.is_open(session) {
            self.begin_close(session, Some((code, reason, true)), OtCloseReason::Closed);
        }
    }

    /// Closes every session with 1001 and refuses new handshakes with 503.
    pub fn shutdown(&mut self, now: Instant) {
        self.clamp(now);
        self.shut_down = true;
        for session in self.sessions.ids() {
            if self.is_open(session) {
                let close = (CloseCode::GOING_AWAY, "server shutting down", true);
                self.begin_close(session, Some(close), OtCloseReason::Shutdown);
            }
        }
    }

    // ---- outputs ------------------------------------------------------------------------

    /// The next thing to do on a socket: send a frame or a ping, close, terminate.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<OtTransmit> {
        while let Some((session, out)) = self.out.pop_front() {
            let Some(s) = self.sessions.get_mut(session) else {
                continue; // gone: its socket is closed already
            };
            match out {
                Out::Frame(bytes) => {
                    s.queued = s.queued.saturating_sub(bytes.len());
                    if matches!(s.state, State::Open | State::Closing { flush: true }) {
                        s.unacked += bytes.len();
                        return Some(OtTransmit::Frame { session, bytes });
                    }
                }
                Out::Ping => {
                    if s.state == State::Open {
                        return Some(OtTransmit::Ping { session });
                    }
                }
                Out::Close(code, reason) => {
                    self.sessions.remove(session);
                    return Some(OtTransmit::Close {
                        session,
                        code,
                        reason: reason.into(),
                    });
                }
                Out::Terminate => {
                    self.sessions.remove(session);
                    return Some(OtTransmit::Terminate { session });
                }
            }
        }
        None
    }

    /// The next event for the application.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<OtServerEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let heartbeat = self.timers.first().map(|(at, _)| *at);
        match (heartbeat, self.held_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ---- internals ----------------------------------------------------------------------

    /// Time never goes backwards: an earlier `now` is read as the latest seen.
    fn clamp(&mut self, now: Instant) -> Instant {
        self.now = self.now.max(now);
        self.now
    }

    fn limits(&self) -> Limits {
        Limits {
            max_history: self.config.max_history,
            max_history_bytes: self.config.max_history_bytes,
            max_document_len: self.config.max_document_len,
        }
    }

    fn on_op(
        &mut self,
        session: OtSessionId,
        doc_id: Option<String>,
        op: TextOp,
        revision: u64,
        op_id: Option<String>,
    ) {
        let echo = doc_id.as_deref();
        let max = self.config.max_op_components;
        if max != 0 && op.components().len() > max {
            let n = op.components().len();
            let message = format!("Operation too large: {n} components (max {max})");
            self.send(session, encode_error(&message, echo));
            return;
        }
        let key = match self.join(session, doc_id.as_deref()) {
            Ok(key) => key,
            Err(message) => {
                self.send(session, encode_error(&message, echo));
                return;
            }
        };
        if self.config.shared_history {
            self.commit_op(session, key, echo, op, revision, op_id);
            return;
        }
        let limits = self.limits();
        let Some(doc) = self.docs.get_mut(&key) else {
            return; // joined documents exist: `join` made sure
        };
        let submitted = doc.submit(op, revision, op_id.as_deref(), limits);
        let mut recipients = core::mem::take(&mut self.scratch);
        recipients.clear();
        if matches!(submitted, Ok(Submitted::Applied { .. })) {
            recipients.extend(doc.members.iter().filter(|m| **m != session));
        }
        match submitted {
            Err(refused) => self.send(session, encode_error(&refused.to_string(), echo)),
            Ok(Submitted::Duplicate { revision }) => self.send(session, encode_ack(revision, echo)),
            Ok(Submitted::Applied { revision, op }) => {
                self.send(session, encode_ack(revision, echo));
                // Encoded once, shared by every recipient (the crate docs).
                let named = (*key != *DEFAULT_DOC_ID).then_some(&*key);
                let frame = encode_op(&op, revision, named);
                for &member in &recipients {
                    self.send_on(member, frame.clone());
                }
                self.event(OtServerEvent::Applied {
                    session,
                    doc: key,
                    revision,
                    op,
                });
            }
        }
        self.scratch = recipients;
    }

    fn on_snapshot(
        &mut self,
        session: OtSessionId,
        doc_id: Option<String>,
        op_id: Option<String>,
        revision: Option<u64>,
        init: bool,
    ) {
        let echo = doc_id.as_deref();
        let key = match self.join(session, echo) {
            Ok(key) => key,
            Err(message) => {
                self.send(session, encode_error(&message, echo));
                return;
            }
        };
        let Some(doc) = self.docs.get_mut(&key) else {
            return;
        };
        if doc.loading {
            // Shared history: the copy is not the document yet; answered with its first
            // snapshot (`handle_remote_snapshot`), before any op after it.
            if doc.snapshots.len() >= MAX_SNAPSHOTS_WAITING {
                self.send(session, encode_error("Document is loading: retry", echo));
            } else {
                doc.snapshots.push(SnapshotWait {
                    session,
                    init,
                    echo: echo.is_some(),
                    op_id,
                    revision,
                });
            }
            return;
        }
        let frame = if init {
            encode_init(doc.revision(), doc.text(), echo)
        } else {
            let status = op_id.map(|id| doc.op_status(&id, revision));
            encode_snapshot(doc.revision(), doc.text(), echo, status)
        };
        self.send(session, frame);
    }

    /// Takes the session out of the document `name`, if it is a member.
    fn leave(&mut self, session: OtSessionId, name: &str) {
        let Some(s) = self.sessions.get_mut(session) else {
            return;
        };
        let Some(at) = s.docs.iter().position(|d| **d == *name) else {
            return;
        };
        let key = s.docs.remove(at);
        self.remove_member(&key, session);
    }

    /// Takes the session out of the members of document `key` (not out of its own list).
    fn remove_member(&mut self, key: &str, session: OtSessionId) {
        if let Some(doc) = self.docs.get_mut(key) {
            doc.members.remove(&session);
            if doc.members.is_empty() {
                self.departures += 1;
                doc.idle_since = self.departures;
            }
        }
    }

    /// Makes the session a member of the document (creating it empty on first use) and
    /// returns the document's key; the error frame's message when a limit says no.
    fn join(&mut self, session: OtSessionId, doc_id: Option<&str>) -> Result<Arc<str>, String> {
        let name = doc_id.unwrap_or(DEFAULT_DOC_ID);
        let max_len = self.config.max_doc_id_len;
        if max_len != 0 && name.len() > max_len {
            return Err(format!(
                "docId too long: {} bytes (max {max_len})",
                name.len()
            ));
        }
        let Some(s) = self.sessions.get(session) else {
            return Err("session closed".into());
        };
        if let Some(key) = s.docs.iter().find(|d| ***d == *name) {
            return Ok(key.clone());
        }
        let per_session = self.config.max_documents_per_session;
        if per_session != 0 && s.docs.len() >= per_session {
            return Err(format!(
                "Too many documents joined on this connection (max {per_session})"
            ));
        }
        let key = match self.docs.get_key_value(name) {
            Some((key, _)) => key.clone(),
            None => {
                let max = self.config.max_documents;
                if max != 0 && self.docs.len() >= max && !self.drop_idle_copy() {
                    return Err(format!("Too many documents (max {max})"));
                }
                let key: Arc<str> = Arc::from(name);
                let mut doc = Document::new();
                doc.loading = self.config.shared_history;
                self.docs.insert(key.clone(), doc);
                self.event(OtServerEvent::DocumentCreated { doc: key.clone() });
                key
            }
        };
        if let Some(doc) = self.docs.get_mut(&key) {
            doc.members.insert(session);
        }
        if let Some(s) = self.sessions.get_mut(session) {
            s.docs.push(key.clone());
        }
        Ok(key)
    }

    /// Queues a frame, after the ops held back for the session; a session over its outbound
    /// bound is closed (4503) instead.
    fn send(&mut self, session: OtSessionId, bytes: Bytes) {
        if self.reserve(session, bytes.len()) {
            self.release(session);
            self.out.push_back((session, Out::Frame(bytes)));
        }
    }

    /// Sends an op on to a member: held back (at most `broadcast_delay`) to leave with what
    /// the member gets next, or queued at once without a delay.
    fn send_on(&mut self, member: OtSessionId, frame: Bytes) {
        let delay = self.config.broadcast_delay;
        if delay.is_zero() {
            return self.send(member, frame);
        }
        // Should the timer be late, what waited goes now, and a new delay starts.
        self.release_held_if_due();
        if !self.reserve(member, frame.len()) {
            return;
        }
        let Some(s) = self.sessions.get_mut(member) else {
            return;
        };
        s.held.push(frame);
        if !s.listed {
            s.listed = true;
            self.held.push(member);
        }
        self.held_until.get_or_insert(self.now + delay);
    }

    /// Counts a frame of `len` bytes against an open session's outbound bound: `false` when
    /// the session is not open, or over its bound (and closed now with 4503).
    fn reserve(&mut self, session: OtSessionId, len: usize) -> bool {
        let max = self.config.max_outbound_bytes;
        let Some(s) = self.sessions.open_mut(session) else {
            return false;
        };
        let outbound = s.outbound();
        if max != 0 && outbound > 0 && outbound.saturating_add(len) > max {
            let close = (CloseCode::SLOW_CONSUMER, "slow consumer", false);
            self.begin_close(session, Some(close), OtCloseReason::SlowConsumer);
            return false;
        }
        s.queued += len;
        true
    }

    /// Queues the ops held back for the session, ahead of whatever it is sent next.
    fn release(&mut self, session: OtSessionId) {
        if let Some(s) = self.sessions.get_mut(session) {
            for frame in s.held.drain(..) {
                self.out.push_back((session, Out::Frame(frame)));
            }
            if s.held.capacity() > MAX_HELD_KEPT {
                // A burst's room is not kept by a session that may stay idle.
                s.held = Vec::new();
            }
        }
    }

    /// Once the delay is over, every op held back is queued.
    fn release_held_if_due(&mut self) {
        if self.held_until.is_none_or(|at| at > self.now) {
            return;
        }
        self.held_until = None;
        let mut held = core::mem::take(&mut self.held);
        for session in held.drain(..) {
            if let Some(s) = self.sessions.get_mut(session) {
                s.listed = false;
            }
            self.release(session);
        }
        self.held = held;
    }

    /// Starts closing an open session: it leaves its documents and its close (with `code`,
    /// after its queued frames when `flush`) or termination (`None`) is queued.
    fn begin_close(
        &mut self,
        session: OtSessionId,
        close: Option<(CloseCode, &str, bool)>,
        reason: OtCloseReason,
    ) {
        self.detach(session, reason);
        self.release(session);
        let Some(s) = self.sessions.get_mut(session) else {
            return;
        };
        let out = match close {
            Some((code, text, flush)) => {
                s.state = State::Closing { flush };
                Out::Close(code, text.into())
            }
            None => {
                s.state = State::Closing { flush: false };
                Out::Terminate
            }
        };
        self.out.push_back((session, out));
    }

    /// Takes a session out of its documents and the timers, and tells the application.
    fn detach(&mut self, session: OtSessionId, reason: OtCloseReason) {
        let Some(s) = self.sessions.get_mut(session) else {
            return;
        };
        let docs = core::mem::take(&mut s.docs);
        if let Some(at) = s.wake.take() {
            self.timers.remove(&(at, session));
        }
        for key in docs {
            self.remove_member(&key, session);
        }
        self.event(OtServerEvent::SessionClosed { session, reason });
    }

    /// Shared history: drops the copy of the document with no member that has been idle
    /// longest, to make room for another; false when there is none (or the server's own
    /// history is the truth, and a document cannot be dropped without losing it). A scan of
    /// the documents, made only at the limit.
    fn drop_idle_copy(&mut self) -> bool {
        if !self.config.shared_history {
            return false;
        }
        let idle = self
            .docs
            .iter()
            .filter(|(_, d)| d.members.is_empty())
            .min_by_key(|(_, d)| d.idle_since)
            .map(|(key, _)| key.clone());
        let Some(key) = idle else {
            return false;
        };
        self.docs.remove(&key);
        self.event(OtServerEvent::DocumentDropped { doc: key });
        true
    }

    /// Arms the session's next heartbeat.
    fn arm(&mut self, session: OtSessionId, now: Instant) {
        let interval = self.config.ping_interval;
        if interval.is_zero() {
            return;
        }
        if let Some(s) = self.sessions.get_mut(session) {
            let at = now + interval;
            s.wake = Some(at);
            self.timers.insert((at, session));
        }
    }

    fn event(&mut self, event: OtServerEvent) {
        let max = self.config.max_events;
        if max != 0 && self.events.len() >= max {
            self.events.pop_front();
            self.dropped_events += 1;
        }
        self.events.push_back(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader held a burst of ops keeps no room for them once they left; a few, it keeps.
    #[test]
    fn a_burst_held_for_a_reader_leaves_no_room_behind() {
        let config = OtServerConfig {
            rate_limit_messages: 0,
            ..OtServerConfig::default()
        };
        let delay = config.broadcast_delay;
        let mut server = OtServer::new(config).expect("valid config");
        let mut now = Instant::ZERO;
        let mut open = || match server.handle_handshake(now, &Handshake::new("/ot", "")) {
            OtHandshakeOutcome::Accept { session } => session,
            other => panic!("{other:?}"),
        };
        let (a, b) = (open(), open());
        let mut revision = 0;
        let mut burst = |server: &mut OtServer, now, ops| {
            for _ in 0..ops {
                let op = format!(r#"{{"type":"op","op":[{{"i":"x"}}],"revision":{revision}}}"#);
                server.handle_message(now, a, Bytes::from(op));
                revision += 1;
            }
            let held = |server: &OtServer| server.sessions.get(b).map(|s| s.held.len());
            assert_eq!(held(server), Some(ops));
            server.handle_timeout(now + delay);
            while server.poll_transmit().is_some() {}
            assert_eq!(held(server), Some(0));
            server.sessions.get(b).map_or(0, |s| s.held.capacity())
        };
        assert_eq!(burst(&mut server, now, 40), 0, "no room kept after 40");
        now += delay;
        let kept = burst(&mut server, now, 3);
        assert!((3..=MAX_HELD_KEPT).contains(&kept), "{kept}");
    }
}
