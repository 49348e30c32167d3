mod config;
mod event;
mod fanout;
mod handshake;
mod hub;
mod out;
mod remote;
mod requests;
mod session;
mod stats;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use crate::config::ConfigError;
use crate::payload::SyncFilter;
pub(crate) use config::{with_auth, AuthFn};
pub use config::{Access, Resource, ServerConfig};
pub use event::{
    AppError, PullId, PushId, RemoteSession, ReplayId, RoomChange, RoomJoinId, ServerEvent,
    ServerTransmit, SessionId,
};
pub use handshake::{AuthDecision, AuthRequest, Handshake, HandshakeOutcome};
pub use stats::ServerStats;

use handshake::{negotiate, valid_node_id, Version};
use hub::Hub;
use out::{error_frame, frame};
use session::{Fed, Output, Sent, Session, Sessions};

use crate::rng::Jitter;
use crate::time::Instant;
use crate::wire::{CloseCode, DecodeLimits, ErrorCode, Frame, FrameId, MessageType};

/// A request waiting for the application's answer.
struct Pending {
    session: SessionId,
    id: Option<FrameId>,
    kind: PendingKind,
}

enum PendingKind {
    Pull {
        /// What the pull said of its position.
        from: Resume,
        /// Its selective sync, if it restricts anything.
        filter: Option<Box<SyncFilter>>,
    },
    Push,
    Replay {
        /// Every table of the subscribe (their held changes are filtered by the replay).
        tables: Vec<Arc<str>>,
        /// The tables this subscribe added (dropped again if the replay fails).
        added: Vec<Arc<str>>,
        /// What the subscribe said of its position.
        from: Resume,
        /// Its selective sync, if it restricts anything.
        filter: Option<Box<SyncFilter>>,
    },
    /// A room join waiting for the shared place to admit it (`ServerEvent::RoomJoin`).
    /// Kept after its session ends, so that an admitted join is given back.
    RoomJoin {
        room: Arc<str>,
        node_id: Arc<str>,
        data: Option<crate::payload::RawJson>,
    },
}

/// Where a pull or subscribe asked to start, as far as the answer's shape depends on it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Resume {
    /// Neither `since` nor `cursor`: a subscribe starts at the head (no replay).
    Head,
    /// `since` alone: the answer is in HLC order, not a sequence of resume points.
    Since,
    /// A cursor the store may serve (it says in `complete` whether it did).
    Cursor,
    /// A string cursor that is not one of ours (another store, garbage): answered like a
    /// stale one, a fallback to `since` with `recovered: false` (docs/protocol.md section 5).
    Unservable,
}

/// The server: one pure state machine for every session of a process (docs/protocol.md sections 4,
/// 3 and 5).
///
/// A [`Server`] decides handshakes, reads each session's frames, and keeps a hub that indexes
/// sessions by table, presence topic and room, so routing a change, a presence event or a
/// room message costs work proportional to its recipients, never to all sessions. It does no
/// I/O and reads no clock: an adapter feeds it inputs (`handle_*`, each taking `now`) and
/// drains its outputs (`poll_*`). Pull, push and replay are [`ServerEvent`]s that the
/// application answers later (`answer_*`), in any order; the driver (`syncmux::driver`)
/// answers them from a `MemoryStore`.
///
/// # Contract
///
/// After every input (a `handle_*`, an `answer_*` or a command), drain
/// [`poll_transmit`](Server::poll_transmit) and [`poll_event`](Server::poll_event), then wait
/// until [`poll_timeout`](Server::poll_timeout) (or the next input) and call
/// [`handle_timeout`](Server::handle_timeout). Report every frame written with
/// [`handle_sent`](Server::handle_sent): until then its bytes count against the session's
/// outbound bound, and a session over it is closed with 4503 (it resumes from its cursor).
///
/// # Example
///
/// Two sessions; one subscribes, the other pushes; the application accepts the push and the
/// subscriber gets the change:
///
/// ```
/// use bytes::Bytes;
/// use syncmux::payload::{ChangeRecord, Cursor, Hlc};
/// use syncmux::{Handshake, HandshakeOutcome, PullAnswer, PushAnswer, ServerTransmit};
/// use syncmux::{Instant, Server, ServerConfig, ServerEvent};
///
/// let mut server = Server::new(ServerConfig::default())?;
/// let now = Instant::ZERO;
/// let mut open = |server: &mut Server, node: &str| {
///     let handshake = Handshake::new("/sync", format!("node_id={node}")).protocol("syncmux.v1");
///     match server.handle_handshake(now, &handshake) {
///         HandshakeOutcome::Accept { session, protocol, .. } => {
///             assert_eq!(protocol.as_deref(), Some("syncmux.v1"));
///             session
///         }
///         other => panic!("{other:?}"),
///     }
/// };
/// let (alice, bob) = (open(&mut server, "alice"), open(&mut server, "bob"));
///
/// let subscribe = r#"{"type":"subscribe","id":"s1","payload":{"tables":["docs"]}}"#;
/// server.handle_message(now, bob, Bytes::from(subscribe));
/// let push = r#"{"type":"push_request","id":"p1","payload":{"node_id":"alice","changes":[
///     {"table":"docs","pk":"1","field":"title","crdt_type":"lww","hlc":"5:0:alice","node_id":"alice","value":"Hi"}]}}"#;
/// server.handle_message(now, alice, Bytes::from(push));
///
/// // The application (here: by hand, its store empty so far) answers: the subscribe with
/// // where the stream stands, the push with the position it gave the change.
/// while let Some(event) = server.poll_event() {
///     match event {
///         ServerEvent::Replay { request, .. } => {
///             let head = Cursor::new(1, 0);
///             let answer = PullAnswer { head, complete: true, ..PullAnswer::default() };
///             server.answer_replay(now, request, Ok(answer));
///         }
///         ServerEvent::Push { request, changes, .. } => {
///             let accepted = vec![(Cursor::new(1, 1), changes[0].clone())];
///             let head = Cursor::new(1, 1);
///             let latest_hlc = Hlc::new(5, 0, "alice");
///             server.answer_push(now, request, Ok(PushAnswer { accepted, latest_hlc, head }));
///         }
///         _ => {}
///     }
/// }
///
/// let mut to_bob = Vec::new();
/// while let Some(transmit) = server.poll_transmit() {
///     if let ServerTransmit::Frame { session, bytes } = transmit {
///         server.handle_sent(now, session, bytes.len());
///         if session == bob {
///             to_bob.push(String::from_utf8(bytes.to_vec())?);
///         }
///     }
/// }
/// assert_eq!(to_bob[0], r#"{"type":"ack","id":"s1","payload":{"recovered":true,"cursor":"1.0"}}"#);
/// assert!(to_bob[1].starts_with(r#"{"type":"change","cursor":"1.1","payload":{"table":"docs""#));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Server {
    config: ServerConfig,
    decode_limits: DecodeLimits,
    now: Instant,
    sessions: Sessions,
    hub: Hub,
    /// The one timer table: each session's next deadline. Entries may fire early (a session
    /// that was active since): the session then recomputes and re-arms.
    timers: BTreeSet<(Instant, SessionId)>,
    events: VecDeque<ServerEvent>,
    pending: BTreeMap<u64, Pending>,
    /// Live routing in cursor order (docs/protocol.md section 5) when pushes are answered out of
    /// order: see [`Reorder`](fanout::Reorder).
    reorder: fanout::Reorder,
    next_request: u64,
    next_node: u64,
    node_prefix: u32,
    /// Sessions that overflowed their outbound bound and must be detached from the hub.
    doomed: VecDeque<SessionId>,
    /// Wall time at an instant, when the embedder gave it (`set_wall_clock`).
    wall_clock: Option<(Instant, u64)>,
    shut_down: bool,
    /// The counters of each transport sessions ran over (`Handshake::transport`), in the
    /// order each was first seen; a session knows its transport's place here.
    stats: Vec<(&'static str, ServerStats)>,
}

impl core::fmt::Debug for Server {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Server")
            .field("sessions", &self.sessions.len())
            .field("pending", &self.pending.len())
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server with this configuration.
    pub fn new(config: ServerConfig) -> Result<Server, ConfigError> {
        config.validate()?;
        let mut rng = Jitter::new(config.seed);
        let hub = Hub::new(rng.hasher());
        let node_prefix = rng.in_range(0..=u64::from(u32::MAX)) as u32;
        Ok(Server {
            decode_limits: DecodeLimits::with_max_frame_len(config.max_frame_len),
            sessions: Sessions::new(config.max_outbound_bytes, config.reports_writes),
            hub,
            config,
            now: Instant::ZERO,
            timers: BTreeSet::new(),
            events: VecDeque::new(),
            pending: BTreeMap::new(),
            reorder: fanout::Reorder::default(),
            next_request: 0,
            next_node: 0,
            node_prefix,
            doomed: VecDeque::new(),
            wall_clock: None,
            shut_down: false,
            stats: vec![(Handshake::default().transport, ServerStats::default())],
        })
    }

    // ---- getters ------------------------------------------------------------------------

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Sessions that exist (open or closing).
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Whether a session is open (not closing, not gone).
    pub fn is_open(&self, session: SessionId) -> bool {
        self.sessions
            .get(session)
            .is_some_and(|s| s.closing.is_none())
    }

    /// A session's node id.
    pub fn node_id(&self, session: SessionId) -> Option<&str> {
        self.sessions.get(session).map(|s| &*s.node_id)
    }

    /// The bytes counted against a session's outbound bound: queued, handed out and not yet
    /// reported written, and held behind a replay.
    pub fn outbound_bytes(&self, session: SessionId) -> Option<usize> {
        self.sessions.get(session).map(Session::outbound_bytes)
    }

    /// The tables a session subscribes to, in name order.
    pub fn subscriptions(&self, session: SessionId) -> Vec<&str> {
        self.sessions
            .get(session)
            .map(|s| s.tables.iter().map(|t| &**t).collect())
            .unwrap_or_default()
    }

    /// The sessions of this server present in a topic, in session order.
    pub fn presence_members(&self, topic: &str) -> Vec<SessionId> {
        self.hub
            .topic(topic)
            .map(|m| m.keys().filter_map(hub::MemberKey::local).collect())
            .unwrap_or_default()
    }

    /// The sessions of this server in a room, in session order.
    pub fn room_members(&self, room: &str) -> Vec<SessionId> {
        self.hub
            .room(room)
            .map(|m| m.keys().filter_map(hub::MemberKey::local).collect())
            .unwrap_or_default()
    }

    /// Requests handed to the application and not answered yet.
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }

    // ---- inputs -------------------------------------------------------------------------

    /// Decides a WebSocket handshake (docs/protocol.md section 3: path, origin, auth, node id,
    /// version). An accepted session is open at once; drain
    /// [`poll_transmit`](Self::poll_transmit) after answering the upgrade.
    pub fn handle_handshake(&mut self, now: Instant, handshake: &Handshake) -> HandshakeOutcome {
        let now = self.clamp(now);
        let reject = |status: u16, reason: &str| HandshakeOutcome::Reject {
            status,
            reason: reason.to_owned(),
        };
        if self.shut_down {
            return reject(503, "server is shutting down");
        }
        if let Some(path) = &self.config.path {
            if *path != handshake.path {
                return reject(404, "unknown path");
            }
        }
        if let (Some(allowed), Some(origin)) = (&self.config.allowed_origins, &handshake.origin) {
            if !allowed.iter().any(|a| a == origin) {
                return reject(403, "origin not allowed");
            }
        }
        if self.config.max_sessions != 0 && self.sessions.len() >= self.config.max_sessions {
            return reject(503, "too many sessions");
        }
        // Named but empty is an invalid node id (docs/protocol.md section 3.2), not a request
        // to be assigned one: a client that meant to name itself would otherwise run under an
        // id it never learns.
        let named_empty = match handshake.query_param("node_id") {
            Some(id) => id.is_empty(),
            None => handshake
                .header_value("x-node-id")
                .is_some_and(str::is_empty),
        };
        if named_empty {
            return reject(400, "invalid node id: empty");
        }
        let requested = handshake.requested_node_id();
        let node_id = match &self.config.auth {
            None => requested.map(|n| n.into_owned()),
            Some(auth) => {
                let Some(token) = handshake.token() else {
                    return reject(401, "missing token");
                };
                let decision = auth(&handshake::AuthRequest {
                    token: Some(&token),
                    node_id: requested.as_deref(),
                    handshake,
                });
                match decision {
                    AuthDecision::Deny { status, reason } => {
                        return HandshakeOutcome::Reject { status, reason }
                    }
                    AuthDecision::Allow { node_id: Some(id) } => {
                        if requested.as_deref().is_some_and(|r| r != id) {
                            return reject(403, "node id does not match the token");
                        }
                        Some(id)
                    }
                    AuthDecision::Allow { node_id: None } => requested.map(|n| n.into_owned()),
                }
            }
        };
        let assigned = node_id.is_none();
        let node_id = match node_id {
            Some(id) => id,
            None => {
                self.next_node += 1;
                format!("anon-{:08x}-{}", self.node_prefix, self.next_node)
            }
        };
        if !valid_node_id(&node_id) {
            return reject(400, "invalid node id");
        }
        let node: Arc<str> = Arc::from(node_id.as_str());
        let mut session = Session::new(
            node,
            now,
            self.config.rate_limit_burst,
            self.config.rate_limit_window,
        );
        session.unbound = assigned;
        session.transport = self.transport_index(handshake.transport);
        self.stats[session.transport].1.sessions_open += 1;
        let id = self.sessions.insert(session);
        match negotiate(&handshake.protocols) {
            Version::V1(protocol) => {
                if let Some(s) = self.sessions.get_mut(id) {
                    s.opened = true;
                    self.stats[s.transport].1.sessions_opened += 1;
                }
                self.events.push_back(ServerEvent::SessionOpened {
                    session: id,
                    node_id: node_id.clone(),
                });
                self.schedule(id);
                HandshakeOutcome::Accept {
                    session: id,
                    node_id,
                    protocol,
                }
            }
            Version::Mismatch { protocol, got } => {
                // Complete the upgrade so a browser sees why (docs/protocol.md section 3.1,
                // "Protocol version").
                let message = format!("protocol version 1 required, got {got}");
                self.send(
                    id,
                    error_frame(None, ErrorCode::SyncVersionMismatch, message),
                );
                self.close(
                    id,
                    CloseCode::VERSION_MISMATCH,
                    "protocol version mismatch",
                    true,
                );
                HandshakeOutcome::Accept {
                    session: id,
                    node_id,
                    protocol: Some(protocol),
                }
            }
        }
    }

    /// A text frame arrived from a session.
    pub fn handle_message(&mut self, now: Instant, session: SessionId, bytes: Bytes) {
        let now = self.clamp(now);
        let Some(s) = self.sessions.open_mut(session) else {
            return;
        };
        s.last_rx = now;
        let max = self.config.max_frame_len;
        if max != 0 && bytes.len() > max {
            self.oversized(session, bytes.len());
        } else {
            match Frame::decode(bytes, &self.decode_limits) {
                Err(e) => {
                    if self.admit(now, session, e.id()) {
                        let code = e.code();
                        self.send(session, error_frame(e.id(), code.clone(), e.to_string()));
                        // Unknown types may come from a newer client: answered, not punished.
                        if code != ErrorCode::UnknownType {
                            self.invalid(session);
                        }
                    }
                }
                Ok(frame) => {
                    self.counters(session).frame_in(frame.kind());
                    if !self.is_our_pong(session, &frame) && self.admit(now, session, frame.id()) {
                        let id = frame.id().cloned();
                        if let Err(e) = self.dispatch(now, session, frame) {
                            self.send(session, error_frame(id.as_ref(), e.code(), e.to_string()));
                            if e.is_invalid() {
                                self.invalid(session);
                            }
                        }
                    }
                }
            }
        }
        self.settle();
        self.schedule(session);
    }

    /// A binary frame of `len` bytes arrived (the protocol is text only: `INVALID_FRAME`).
    pub fn handle_binary(&mut self, now: Instant, session: SessionId, len: usize) {
        let now = self.clamp(now);
        let Some(s) = self.sessions.open_mut(session) else {
            return;
        };
        s.last_rx = now;
        let max = self.config.max_frame_len;
        if max != 0 && len > max {
            self.oversized(session, len);
        } else if self.admit(now, session, None) {
            let e = crate::wire::DecodeError::binary();
            self.send(session, error_frame(None, e.code(), e.to_string()));
            self.invalid(session);
        }
        self.settle();
        self.schedule(session);
    }

    /// The session's socket closed (by the peer or the transport). Its presence and rooms
    /// are left, its pending requests dropped. A no-op for a session the server closed.
    pub fn handle_disconnected(&mut self, now: Instant, session: SessionId) {
        self.clamp(now);
        let Some(s) = self.sessions.get(session) else {
            return;
        };
        let counters = &mut self.stats[s.transport].1;
        counters.sessions_open -= 1;
        if s.closing.is_none() {
            counters.peer_closes += u64::from(s.opened);
            self.detach(session, None);
        }
        self.sessions.remove(session);
        self.settle();
    }

    /// The adapter wrote `bytes` bytes of this session's frames: they no longer count
    /// against its outbound bound, and a replay paced by the bound continues. Only with
    /// [`ServerConfig::reports_writes`] on; otherwise a no-op (frames count as written once
    /// polled).
    pub fn handle_sent(&mut self, now: Instant, session: SessionId, bytes: usize) {
        self.clamp(now);
        self.sessions.sent(session, bytes);
        let fed = self.sessions.feed(session);
        self.after_feed(session, fed);
    }

    /// Time passed: runs every timer due at `now` (idle timeouts, presence expiry, pings).
    /// Calling it early is a no-op.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.clamp(now);
        while let Some(&(at, session)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            match self.sessions.open_mut(session) {
                Some(s) if s.wake == Some(at) => s.wake = None,
                _ => continue,
            }
            self.on_timer(now, session);
            self.settle();
            self.schedule(session);
        }
    }

    // ---- commands -----------------------------------------------------------------------

    /// Closes a session: its queued frames go out, then the close.
    pub fn close_session(
        &mut self,
        now: Instant,
        session: SessionId,
        code: CloseCode,
        reason: &str,
    ) {
        self.clamp(now);
        self.close(session, code, reason, true);
        self.settle();
    }

    /// Closes every session with 1001 and refuses new handshakes with 503.
    pub fn shutdown(&mut self, now: Instant) {
        self.clamp(now);
        self.shut_down = true;
        for session in self.sessions.ids() {
            self.close(session, CloseCode::GOING_AWAY, "server shutting down", true);
        }
        self.settle();
    }

    // ---- outputs ------------------------------------------------------------------------

    /// The next frame to send or socket to close, round-robin over sessions.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<ServerTransmit> {
        Some(match self.sessions.poll()? {
            Output::Frame(session, transport, kind, bytes) => {
                self.stats[transport].1.sent(kind, &bytes);
                if !self.config.reports_writes {
                    // Counted as written: a paced replay goes on at once.
                    let fed = self.sessions.feed(session);
                    self.after_feed(session, fed);
                }
                ServerTransmit::Frame { session, bytes }
            }
            Output::Close(session, transport, code, reason) => {
                let counters = &mut self.stats[transport].1;
                counters.closed(code);
                counters.sessions_open -= 1;
                ServerTransmit::Close {
                    session,
                    code,
                    reason: reason.into(),
                }
            }
        })
    }

    /// Gives the server wall time: at `now`, it is `unix_millis` milliseconds since the Unix
    /// epoch. The core's [`Instant`] is monotonic and says nothing of the calendar, so wall
    /// time is an input of its own, used where the protocol means it: presence
    /// `updated_at`. Without it, `updated_at` counts milliseconds of the server's own clock.
    /// Call it again to follow a wall clock that was adjusted.
    pub fn set_wall_clock(&mut self, now: Instant, unix_millis: u64) {
        let now = self.clamp(now);
        self.wall_clock = Some((now, unix_millis));
    }

    /// Milliseconds of wall time at `now` (see [`set_wall_clock`](Server::set_wall_clock)).
    pub(crate) fn wall_millis(&self, now: Instant) -> u64 {
        match self.wall_clock {
            Some((at, millis)) => {
                let since = now.saturating_duration_since(at).as_millis();
                millis.saturating_add(u64::try_from(since).unwrap_or(u64::MAX))
            }
            None => now.as_millis(),
        }
    }

    /// Reports this server's presence and room changes from now on, as
    /// [`ServerConfig::shared_presence`] does (an embedder whose backend shares them with other
    /// servers turns it on for the server it is given).
    pub fn share_presence(&mut self) {
        self.config.shared_presence = true;
    }

    /// Counts frames as unsent until [`handle_sent`](Server::handle_sent) reports them
    /// written, from now on, as [`ServerConfig::reports_writes`] does (an embedder that
    /// reports every write turns it on for the server it is given).
    pub fn report_writes(&mut self) {
        self.config.reports_writes = true;
        self.sessions.count_unsent();
    }

    /// The next event for the application.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    // ---- internals ----------------------------------------------------------------------

    /// Time never goes backwards: an earlier `now` is read as the latest seen.
    fn clamp(&mut self, now: Instant) -> Instant {
        self.now = self.now.max(now);
        self.now
    }

    /// Queues a frame; a session over its outbound bound is doomed (detached by `settle`).
    fn send(&mut self, session: SessionId, bytes: Bytes) {
        if self.sessions.send(session, bytes) == Sent::Overflow {
            self.doomed.push_back(session);
        }
    }

    /// Queues a replay frame as the outbound bound allows (see `Session::backlog`).
    fn send_paced(&mut self, session: SessionId, bytes: Bytes) {
        let fed = self.sessions.send_paced(session, bytes);
        if fed == Fed::Overflow {
            self.doomed.push_back(session);
        }
    }

    /// Once a paced replay is through, the live changes held behind it follow.
    fn after_feed(&mut self, session: SessionId, fed: Fed) {
        match fed {
            Fed::Drained => self.release_held(session),
            Fed::Idle | Fed::Waiting => {}
            Fed::Overflow => {
                self.doomed.push_back(session);
                self.settle();
            }
        }
    }

    fn ack(&mut self, session: SessionId, id: Option<&FrameId>) {
        if let Some(id) = id {
            self.send(session, frame(MessageType::Ack, Some(id), &()));
        }
    }

    /// Starts closing a session and detaches it from the hub.
    fn close(&mut self, session: SessionId, code: CloseCode, reason: &str, flush: bool) {
        if self.sessions.begin_close(session, code, reason, flush) {
            self.detach(session, Some(code));
        }
    }

    /// Detaches every session that overflowed, until none is left (detaching sends leave
    /// events, which may overflow others).
    fn settle(&mut self) {
        while let Some(session) = self.doomed.pop_front() {
            self.detach(session, Some(CloseCode::SLOW_CONSUMER));
        }
    }

    /// Removes a closing or gone session from the hub, the timers and the pending requests,
    /// and tells the others (presence and room leaves) and the application.
    fn detach(&mut self, session: SessionId, code: Option<CloseCode>) {
        let Some(s) = self.sessions.get_mut(session) else {
            return;
        };
        let tables = core::mem::take(&mut s.tables);
        let topics = core::mem::take(&mut s.topics);
        let rooms = core::mem::take(&mut s.rooms);
        let in_flight = core::mem::take(&mut s.in_flight);
        let wake = s.wake.take();
        let node = s.node_id.clone();
        let opened = core::mem::replace(&mut s.opened, false);
        s.replays_pending = 0;
        s.replayed.clear();
        for table in &tables {
            self.hub.unsubscribe(table, session);
        }
        for request in in_flight {
            if self
                .pending
                .get(&request.key)
                .is_some_and(|p| matches!(p.kind, PendingKind::RoomJoin { .. }))
            {
                continue; // its answer may have taken a place in the room: see answer_room_join
            }
            self.pending.remove(&request.key);
            // An answer may still come; it no longer holds back the pushes after it.
            self.reorder.answered(request.key);
        }
        if let Some(at) = wake {
            self.timers.remove(&(at, session));
        }
        for topic in topics {
            self.presence_leave(&topic, session, &node, false);
        }
        for room in rooms {
            self.room_leave(&room, session, &node);
        }
        if opened {
            self.events.push_back(ServerEvent::SessionClosed {
                session,
                node_id: node.to_string(),
                code,
            });
        }
    }

    /// Takes a token from the session's bucket; when empty, answers `RATE_LIMITED` and
    /// closes a session that keeps hammering (4429).
    fn admit(&mut self, now: Instant, session: SessionId, id: Option<&FrameId>) -> bool {
        let (burst, window) = (self.config.rate_limit_burst, self.config.rate_limit_window);
        let Some(s) = self.sessions.open_mut(session) else {
            return false;
        };
        if s.bucket.take(now, burst, window) {
            return true;
        }
        let refused = s.bucket.refused;
        self.counters(session).rate_limited += 1;
        self.send(
            session,
            error_frame(id, ErrorCode::RateLimited, "rate limit exceeded".into()),
        );
        if u64::from(refused) > 5 * u64::from(burst) {
            self.close(
                session,
                CloseCode::RATE_LIMIT_ABUSE,
                "rate limit abuse",
                true,
            );
        }
        false
    }

    fn oversized(&mut self, session: SessionId, len: usize) {
        let (max, tolerated) = (self.config.max_frame_len, self.config.max_oversized_frames);
        let Some(s) = self.sessions.open_mut(session) else {
            return;
        };
        s.oversized = s.oversized.saturating_add(1);
        let repeat = tolerated != 0 && s.oversized > tolerated;
        let message = format!("frame of {len} bytes exceeds the maximum of {max} bytes");
        self.send(
            session,
            error_frame(None, ErrorCode::FrameTooLarge, message),
        );
        if repeat {
            self.close(session, CloseCode::FRAME_TOO_LARGE, "frame too large", true);
        }
    }

    fn invalid(&mut self, session: SessionId) {
        let max = self.config.max_invalid_frames;
        let Some(s) = self.sessions.open_mut(session) else {
            return;
        };
        s.invalid = s.invalid.saturating_add(1);
        if max != 0 && s.invalid > max {
            self.close(
                session,
                CloseCode::INVALID_FRAMES,
                "too many invalid frames",
                true,
            );
        }
    }

    /// A session's next deadline: idle timeout, presence expiry, next ping.
    fn deadline(&self, s: &Session) -> Option<Instant> {
        let c = &self.config;
        let idle = (!c.idle_timeout.is_zero()).then(|| s.last_rx + c.idle_timeout);
        let presence =
            (!c.presence_ttl.is_zero() && !s.topics.is_empty()).then(|| s.last_rx + c.presence_ttl);
        let ping =
            (!c.ping_interval.is_zero()).then(|| s.last_rx.max(s.last_ping) + c.ping_interval);
        [idle, presence, ping].into_iter().flatten().min()
    }

    /// Arms the session's timer if its deadline moved earlier (a later deadline is found
    /// lazily, when the earlier entry fires).
    fn schedule(&mut self, session: SessionId) {
        let Some(s) = self.sessions.get(session).filter(|s| s.closing.is_none()) else {
            return;
        };
        let want = self.deadline(s);
        let wake = s.wake;
        if matches!((wake, want), (Some(w), Some(d)) if w <= d) {
            return;
        }
        if let Some(w) = wake {
            self.timers.remove(&(w, session));
        }
        if let Some(s) = self.sessions.get_mut(session) {
            s.wake = want;
        }
        if let Some(d) = want {
            self.timers.insert((d, session));
        }
    }

    fn on_timer(&mut self, now: Instant, session: SessionId) {
        let c = &self.config;
        let (idle, ttl, ping) = (c.idle_timeout, c.presence_ttl, c.ping_interval);
        let Some(s) = self.sessions.open_mut(session) else {
            return;
        };
        if !idle.is_zero() && now >= s.last_rx + idle {
            self.close(session, CloseCode::IDLE_TIMEOUT, "idle timeout", true);
            return;
        }
        if !ttl.is_zero() && !s.topics.is_empty() && now >= s.last_rx + ttl {
            let topics = core::mem::take(&mut s.topics);
            let node = s.node_id.clone();
            for topic in topics {
                self.presence_leave(&topic, session, &node, true);
            }
        }
        let Some(s) = self.sessions.open_mut(session) else {
            return;
        };
        if !ping.is_zero() && now >= s.last_rx.max(s.last_ping) + ping {
            s.ping_seq = s.ping_seq.wrapping_add(1);
            s.ping_outstanding = Some(s.ping_seq);
            s.last_ping = now;
            let id = FrameId::new(format!("srv-{}", s.ping_seq));
            self.send(session, frame(MessageType::Ping, Some(&id), &()));
        }
    }

    /// Whether the frame is the pong to the server's outstanding ping (exempt from the rate
    /// limit, docs/protocol.md section 4).
    fn is_our_pong(&mut self, session: SessionId, frame: &crate::wire::Frame) -> bool {
        if frame.kind() != MessageType::Pong {
            return false;
        }
        let Some(s) = self.sessions.open_mut(session) else {
            return false;
        };
        let seq = frame
            .id()
            .and_then(|id| id.as_str().strip_prefix("srv-"))
            .and_then(|n| n.parse::<u32>().ok());
        if seq.is_some() && seq == s.ping_outstanding {
            s.ping_outstanding = None;
            return true;
        }
        false
    }
}
