mod backoff;
mod config;
mod error;
mod event;
mod receive;
mod requests;
mod sorted;
mod timer;
mod tracked;

use std::collections::VecDeque;

use bytes::Bytes;
use serde::Serialize;

use crate::config::ConfigError;
pub use config::ClientConfig;
pub use error::RequestError;
pub use event::{
    ClientEvent, ClientState, ClientTransmit, CloseReason, DialRequest, RequestId, Response,
};

use backoff::Backoff;
use requests::{Effect, Kind, Owner, Pending, Requests, Status};
use timer::{Timer, Timers};
use tracked::{Membership, Tracked};

use crate::payload::{
    ChangeRecord, Cursor, Hlc, PresenceGet, PresenceUpdate, PullRequest, PushRequest, RawJson,
    ResumeAck, RoomAction, RoomRequest, Subscribe, Unsubscribe,
};
use crate::time::Instant;
use crate::wire::{CloseCode, Frame, FrameId, MessageType};

/// Counts of what a client holds, for metrics and for checking its bounds.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[non_exhaustive]
pub struct ClientStats {
    /// Application requests pending (≤ `max_in_flight`).
    pub requests: usize,
    /// All pending requests, the client's own restore requests included.
    pub all_requests: usize,
    /// Commands waiting in the offline queue (≤ `max_offline_queue`).
    pub offline_queue: usize,
    /// Events not yet polled.
    pub events: usize,
    /// Transport actions not yet polled.
    pub transmits: usize,
    /// Subscribed tables (≤ `max_subscriptions`).
    pub subscriptions: usize,
    /// Joined presence topics (≤ `max_presence_topics`).
    pub presence_topics: usize,
    /// Joined rooms (≤ `max_rooms`).
    pub rooms: usize,
}

/// The client state machine (docs/protocol.md section 11): connection lifecycle, request
/// correlation, subscriptions, presence and rooms restored after a reconnect, keepalive and
/// backoff.
///
/// A [`Client`] does no I/O and reads no clock. Its interface is:
///
/// - **inputs**, each taking `now` first: [`handle_connected`](Client::handle_connected),
///   [`handle_message`](Client::handle_message), [`handle_binary`](Client::handle_binary),
///   [`handle_disconnected`](Client::handle_disconnected) (also for a failed dial) and
///   [`handle_timeout`](Client::handle_timeout);
/// - **commands**, which return a [`RequestId`] at once (or a [`RequestError`] when refused
///   locally): [`pull`](Client::pull), [`push`](Client::push),
///   [`subscribe`](Client::subscribe), ..., plus [`connect`](Client::connect) and
///   [`close`](Client::close). A command issued while idle starts the connection;
/// - **outputs**, drained by polling: [`poll_transmit`](Client::poll_transmit) (dial, send a
///   frame, close), [`poll_timeout`](Client::poll_timeout) (when to call `handle_timeout`
///   next) and [`poll_event`](Client::poll_event).
///
/// **The contract: after every input or command, drain `poll_transmit` and `poll_event`
/// until they return `None`, then read `poll_timeout`.** Every request ends in exactly one
/// [`ClientEvent::Response`]: the server's answer, its error frame, `TIMEOUT`, or
/// `DISCONNECTED`. A `now` earlier than one already seen is taken as the latest seen.
///
/// # Example
///
/// A client pulls a table; the "server" is a hand-made frame.
///
/// ```
/// use bytes::Bytes;
/// use syncmux::payload::{Cursor, PullRequest};
/// use syncmux::{Client, ClientConfig, ClientEvent, ClientTransmit, Instant, Response};
///
/// let mut client = Client::new(ClientConfig::new("wss://sync.example/ws", "node-1"))?;
/// let now = Instant::ZERO;
///
/// // The first command starts the connection; the pull waits for it in the offline queue.
/// let id = client.pull(now, PullRequest::new(["documents"]))?;
/// let Some(ClientTransmit::Connect(dial)) = client.poll_transmit() else { panic!("expected a dial") };
/// assert_eq!(dial.url, "wss://sync.example/ws?node_id=node-1");
/// assert_eq!(dial.protocols, ["syncmux.v1"]);
///
/// // The adapter opened the socket: the queued pull goes out.
/// client.handle_connected(now, Some("syncmux.v1"));
/// let Some(ClientTransmit::Frame(frame)) = client.poll_transmit() else { panic!("expected a frame") };
/// assert_eq!(
///     &frame[..],
///     br#"{"type":"pull_request","id":"1","payload":{"tables":["documents"],"node_id":"node-1"}}"#
/// );
/// assert_eq!(client.poll_event(), Some(ClientEvent::Connected));
///
/// // The server answers.
/// client.handle_message(now, Bytes::from_static(
///     br#"{"type":"pull_response","id":"1","payload":{"changes":[],"latest_hlc":"5:0:srv","cursor":"1.0"}}"#,
/// ));
/// match client.poll_event() {
///     Some(ClientEvent::Response { id: got, outcome: Ok(Response::Pull(pull)) }) => {
///         assert_eq!(got, id);
///         assert_eq!(pull.cursor, Some(Cursor::new(1, 0)));
///     }
///     other => panic!("unexpected {other:?}"),
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    state: ClientState,
    /// The latest `now` seen; earlier ones are clamped to it.
    now: Instant,
    next_id: u64,
    requests: Requests,
    /// Ids of queued requests, in issue order.
    offline: VecDeque<u64>,
    tracked: Tracked,
    backoff: Backoff,
    timers: Timers,
    /// The id of the keepalive ping awaiting its pong.
    keepalive: Option<u64>,
    transmits: VecDeque<ClientTransmit>,
    events: VecDeque<ClientEvent>,
}

impl Client {
    /// A client in the idle state. Nothing happens until a command or [`Client::connect`].
    pub fn new(config: ClientConfig) -> Result<Client, ConfigError> {
        config.validate()?;
        Ok(Client {
            backoff: Backoff::new(
                config.reconnect_delay,
                config.max_reconnect_delay,
                config.seed,
            ),
            config,
            state: ClientState::Idle,
            now: Instant::ZERO,
            next_id: 1,
            requests: Requests::default(),
            offline: VecDeque::new(),
            tracked: Tracked::default(),
            timers: Timers::default(),
            keepalive: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        })
    }

    // ----- getters -------------------------------------------------------------------------

    /// Where the connection stands.
    pub fn state(&self) -> ClientState {
        self.state
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Failed connection attempts since the last healthy connection.
    pub fn reconnect_attempt(&self) -> u32 {
        self.backoff.attempt()
    }

    /// The newest stream position seen (where subscriptions resume), when the server has
    /// cursors.
    pub fn cursor(&self) -> Option<Cursor> {
        self.tracked.cursor.as_deref().and_then(|c| c.parse().ok())
    }

    /// The newest HLC seen for a subscribed table.
    pub fn newest_hlc(&self, table: &str) -> Option<&Hlc> {
        self.tracked.tables.get(table)?.since.as_ref()
    }

    /// What the client holds right now.
    pub fn stats(&self) -> ClientStats {
        ClientStats {
            requests: self.requests.app_len(),
            all_requests: self.requests.len(),
            offline_queue: self.offline.len(),
            events: self.events.len(),
            transmits: self.transmits.len(),
            subscriptions: self.tracked.tables.len(),
            presence_topics: self.tracked.topics.len(),
            rooms: self.tracked.rooms.len(),
        }
    }

    /// Replaces the bearer token used by the next dial (for example after a 4401 close and
    /// a re-login, before [`Client::connect`]).
    pub fn set_token(&mut self, token: Option<String>) {
        self.config.token = token;
    }

    // ----- outputs -------------------------------------------------------------------------

    /// The next transport action: dial, send a frame, or close.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<ClientTransmit> {
        self.transmits.pop_front()
    }

    /// When to call [`Client::handle_timeout`] next; `None` when no timer runs.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.timers.next(), self.requests.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next event for the application.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    // ----- inputs --------------------------------------------------------------------------

    /// The dial succeeded. `selected_protocol` is the subprotocol the server chose (`None` if
    /// it chose none, as plain servers of the seed protocol do). Ignored unless connecting.
    pub fn handle_connected(&mut self, now: Instant, selected_protocol: Option<&str>) {
        let now = self.clamp(now);
        if self.state != ClientState::Connecting {
            return;
        }
        if let Some(selected) = selected_protocol.filter(|p| *p != Frame::SUBPROTOCOL) {
            let reason = format!(
                "server selected subprotocol {selected:?}, not {}",
                Frame::SUBPROTOCOL
            );
            self.transmits.push_back(ClientTransmit::Close {
                code: CloseCode::VERSION_MISMATCH,
                reason,
            });
            self.close_for_good(CloseReason::ProtocolMismatch {
                selected: selected.to_owned(),
            });
            return;
        }
        self.state = ClientState::Open;
        self.lifecycle(ClientEvent::Connected);
        if self.config.healthy_after.is_zero() {
            self.backoff.reset();
        } else {
            self.timers
                .set(Timer::Healthy, now + self.config.healthy_after);
        }
        if !self.config.ping_interval.is_zero() {
            self.timers
                .set(Timer::Ping, now + self.config.ping_interval);
        }
        self.restore();
        self.link_restoring();
        self.resend_and_flush();
    }

    /// The transport closed, or a dial failed. `code` is the close code when one was
    /// received. Ignored unless connecting or open.
    ///
    /// A terminal code (4401, 4403, 4426) closes the client for good; otherwise it waits a
    /// backoff delay and dials again.
    pub fn handle_disconnected(&mut self, now: Instant, code: Option<CloseCode>, reason: &str) {
        let now = self.clamp(now);
        if matches!(self.state, ClientState::Connecting | ClientState::Open) {
            self.on_disconnect(now, code, reason.to_owned());
        }
    }

    /// Timers due at `now` fire; a call with nothing due does nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.clamp(now);
        while let Some((id, pending)) = self.requests.pop_expired(now) {
            self.forget_queued(id, &pending);
            self.complete(id, pending, Err(RequestError::Timeout));
        }
        for timer in Timer::ALL {
            if !self.timers.take_expired(timer, now) {
                continue;
            }
            match timer {
                Timer::Pong => {
                    let reason = "no frame from the server within the pong timeout";
                    self.drop_connection(now, CloseCode::IDLE_TIMEOUT, reason);
                }
                Timer::Healthy => self.backoff.reset(),
                Timer::Ping => self.send_keepalive(now),
                Timer::Reconnect => self.dial(),
            }
        }
    }

    // ----- commands ------------------------------------------------------------------------

    /// Starts connecting, when idle or closed (a closed client starts afresh, with the
    /// attempt counter at zero). Otherwise does nothing.
    pub fn connect(&mut self, now: Instant) {
        self.clamp(now);
        if matches!(self.state, ClientState::Idle | ClientState::Closed) {
            self.backoff.reset();
            self.dial();
        }
    }

    /// Dials at once when waiting to reconnect, instead of waiting out the backoff (the
    /// network is back: a browser's `online` event, say); the dial counts as the next
    /// attempt. Otherwise does nothing.
    pub fn reconnect_now(&mut self, now: Instant) {
        self.clamp(now);
        if self.state == ClientState::WaitingToReconnect {
            self.dial();
        }
    }

    /// Closes for good: an open transport is closed with 1000, every pending and queued
    /// request fails with `DISCONNECTED`, and a [`ClientEvent::Closed`] follows.
    pub fn close(&mut self, now: Instant) {
        self.clamp(now);
        match self.state {
            ClientState::Closed => return,
            ClientState::Open | ClientState::Connecting => {
                self.transmits
                    .retain(|t| !matches!(t, ClientTransmit::Frame(_)));
                let reason = "closed by the application".to_owned();
                self.transmits.push_back(ClientTransmit::Close {
                    code: CloseCode::NORMAL,
                    reason: reason.clone(),
                });
                if self.state == ClientState::Open {
                    self.lifecycle(ClientEvent::Disconnected {
                        code: Some(CloseCode::NORMAL),
                        reason,
                    });
                }
            }
            ClientState::Idle | ClientState::WaitingToReconnect => {}
        }
        self.close_for_good(CloseReason::Local);
    }

    /// Pulls what `pull` asks for: the changes of its tables after its cursor (exactly what
    /// came after it, late changes with old HLCs included, when the server can serve it), or
    /// after its `since`, or all of them. Re-sent after a reconnect unless
    /// `resend_idempotent` is off. The pull always names this client's node.
    ///
    /// ```
    /// use syncmux::payload::{Cursor, PullRequest};
    /// use syncmux::{Client, ClientConfig, ClientTransmit, Instant};
    ///
    /// let mut client = Client::new(ClientConfig::new("ws://sync.example/ws", "n1"))?;
    /// client.connect(Instant::ZERO);
    /// let _dial = client.poll_transmit();
    /// client.handle_connected(Instant::ZERO, Some("syncmux.v1"));
    /// client.pull(Instant::ZERO, PullRequest::new(["docs"]).after(Cursor::new(7, 41)))?;
    /// let Some(ClientTransmit::Frame(frame)) = client.poll_transmit() else { panic!() };
    /// assert_eq!(
    ///     &frame[..],
    ///     br#"{"type":"pull_request","id":"1","payload":{"tables":["docs"],"cursor":"7.41","node_id":"n1"}}"#
    /// );
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pull(&mut self, now: Instant, pull: PullRequest) -> Result<RequestId, RequestError> {
        let payload = PullRequest {
            node_id: Some(self.config.node_id.clone()),
            ..pull
        };
        self.request(now, Kind::Pull, &payload, Effect::None)
    }

    /// Pushes `changes` as this node (the config's `node_id`). Re-sent after a reconnect
    /// unless `resend_idempotent` is off.
    pub fn push(
        &mut self,
        now: Instant,
        changes: Vec<ChangeRecord>,
    ) -> Result<RequestId, RequestError> {
        let payload = PushRequest {
            changes,
            node_id: self.config.node_id.clone(),
        };
        self.request(now, Kind::Push, &payload, Effect::None)
    }

    /// Subscribes to the live changes of the tables of `subscribe`, replaying first what
    /// came after its cursor (in cursor order) or after its `since` (in HLC order). The ack
    /// says where the live stream starts: [`Response::Ack`] carries a
    /// [`ResumeAck`](crate::payload::ResumeAck) whose `recovered` is false when the server
    /// could not serve the cursor and fell back (the application resynchronises).
    ///
    /// The client remembers the subscription: after a reconnect it subscribes again from the
    /// newest position (or, per table, the newest HLC) it has seen; until the ack, a table
    /// this request adds resumes from where the request asked. A refusal by the server
    /// forgets the tables this request added.
    pub fn subscribe(
        &mut self,
        now: Instant,
        subscribe: Subscribe,
    ) -> Result<RequestId, RequestError> {
        let max = self.config.max_subscriptions;
        if self.tracked.tables.len() + self.tracked.new_tables(&subscribe.tables) > max {
            return Err(RequestError::TooManySubscriptions { max });
        }
        let sent = self.state == ClientState::Open;
        let payload = subscribe;
        let effect = Effect::Tables(payload.tables.clone());
        let id = self.request(now, Kind::Subscribe, &payload, effect)?;
        let resumes = payload.since.is_some() || payload.cursor.is_some();
        self.requests.settle_tables(id.0, &payload.tables, resumes);
        self.tracked.subscribe(
            &payload.tables,
            payload.since.as_ref(),
            payload.cursor.as_deref(),
            id,
            sent,
        );
        Ok(id)
    }

    /// Unsubscribes from `tables`; they are no longer restored after a reconnect.
    pub fn unsubscribe<I, T>(&mut self, now: Instant, tables: I) -> Result<RequestId, RequestError>
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        let payload = Unsubscribe {
            tables: strings(tables),
        };
        let id = self.request(now, Kind::Unsubscribe, &payload, Effect::Removal)?;
        for table in &payload.tables {
            self.tracked.tables.remove(table);
        }
        Ok(id)
    }

    /// Joins `topic` with `data`, or updates this node's state in it. `null` data leaves.
    /// The last data is sent again after a reconnect.
    pub fn update_presence(
        &mut self,
        now: Instant,
        topic: impl Into<String>,
        data: RawJson,
    ) -> Result<RequestId, RequestError> {
        let topic = topic.into();
        if data.is_null() {
            return self.leave_presence(now, topic);
        }
        let max = self.config.max_presence_topics;
        if !self.tracked.topics.contains_key(&topic) && self.tracked.topics.len() >= max {
            return Err(RequestError::TooManyPresenceTopics { max });
        }
        let sent = self.state == ClientState::Open;
        let payload = PresenceUpdate {
            topic,
            data: Some(data),
        };
        let effect = Effect::Topic(payload.topic.clone());
        let id = self.request(now, Kind::PresenceUpdate, &payload, effect)?;
        let member = Membership {
            by: id,
            data: payload.data,
            sent,
        };
        self.tracked.topics.insert(payload.topic, member);
        Ok(id)
    }

    /// Leaves `topic` (a `presence_update` with `data: null`).
    pub fn leave_presence(
        &mut self,
        now: Instant,
        topic: impl Into<String>,
    ) -> Result<RequestId, RequestError> {
        let payload = PresenceUpdate {
            topic: topic.into(),
            data: None,
        };
        let id = self.request(now, Kind::PresenceUpdate, &payload, Effect::Removal)?;
        self.tracked.topics.remove(&payload.topic);
        Ok(id)
    }

    /// Asks for the members of `topic`.
    pub fn get_presence(
        &mut self,
        now: Instant,
        topic: impl Into<String>,
    ) -> Result<RequestId, RequestError> {
        let payload = PresenceGet {
            topic: topic.into(),
        };
        self.request(now, Kind::PresenceGet, &payload, Effect::None)
    }

    /// Joins `room` with `data`; rejoined with the same data after a reconnect.
    pub fn join_room(
        &mut self,
        now: Instant,
        room: impl Into<String>,
        data: Option<RawJson>,
    ) -> Result<RequestId, RequestError> {
        let room = room.into();
        let max = self.config.max_rooms;
        if !self.tracked.rooms.contains_key(&room) && self.tracked.rooms.len() >= max {
            return Err(RequestError::TooManyRooms { max });
        }
        let sent = self.state == ClientState::Open;
        let payload = RoomRequest {
            action: RoomAction::Join,
            room,
            data,
        };
        let effect = Effect::Room(payload.room.clone());
        let id = self.request(now, Kind::Room, &payload, effect)?;
        let member = Membership {
            by: id,
            data: payload.data,
            sent,
        };
        self.tracked.rooms.insert(payload.room, member);
        Ok(id)
    }

    /// Leaves `room`.
    pub fn leave_room(
        &mut self,
        now: Instant,
        room: impl Into<String>,
    ) -> Result<RequestId, RequestError> {
        let payload = RoomRequest {
            action: RoomAction::Leave,
            room: room.into(),
            data: None,
        };
        let id = self.request(now, Kind::Room, &payload, Effect::Removal)?;
        self.tracked.rooms.remove(&payload.room);
        Ok(id)
    }

    /// Sends `data` to the other members of `room`.
    pub fn broadcast(
        &mut self,
        now: Instant,
        room: impl Into<String>,
        data: RawJson,
    ) -> Result<RequestId, RequestError> {
        let payload = RoomRequest {
            action: RoomAction::Broadcast,
            room: room.into(),
            data: Some(data),
        };
        self.request(now, Kind::Room, &payload, Effect::None)
    }

    /// Pings the server; the outcome is [`Response::Pong`] with the echoed payload.
    pub fn ping(&mut self, now: Instant, payload: RawJson) -> Result<RequestId, RequestError> {
        self.request(now, Kind::Ping, &payload, Effect::None)
    }

    // ----- internals -----------------------------------------------------------------------

    fn clamp(&mut self, now: Instant) -> Instant {
        self.now = self.now.max(now);
        self.now
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// The common path of every request command: local bounds, id, encoding, then send it
    /// or queue it (starting the connection when idle). Only the encoding depends on the
    /// payload's type: the rest is [`Client::admit`] and [`Client::enqueue`], once in the
    /// binary rather than once per payload type (which counts in the browser client's `.wasm`).
    fn request<P: Serialize>(
        &mut self,
        now: Instant,
        kind: Kind,
        payload: &P,
        effect: Effect,
    ) -> Result<RequestId, RequestError> {
        let (now, open) = self.admit(now)?;
        let id = self.take_id();
        let frame = encode_request(kind.message(), id, payload);
        Ok(self.enqueue(now, open, kind, id, frame, effect))
    }

    /// The local bounds of a new request: the clamped time, and whether it can go out now.
    fn admit(&mut self, now: Instant) -> Result<(Instant, bool), RequestError> {
        let now = self.clamp(now);
        let open = match self.state {
            ClientState::Closed => return Err(RequestError::Closed),
            ClientState::Open => true,
            _ => false,
        };
        if self.requests.app_len() >= self.config.max_in_flight {
            return Err(RequestError::TooManyInFlight {
                max: self.config.max_in_flight,
            });
        }
        if open && self.transmits.len() >= self.config.max_queued_transmits {
            return Err(RequestError::QueueFull {
                max: self.config.max_queued_transmits,
            });
        }
        if !open {
            let max = self.config.max_offline_queue;
            if max == 0 {
                // Fail fast, but still start the connection the application evidently wants.
                self.dial_if_idle();
                return Err(RequestError::NotConnected);
            }
            if self.offline.len() >= max {
                return Err(RequestError::QueueFull { max });
            }
        }
        Ok((now, open))
    }

    /// Sends (when `open`) or queues the encoded request `id`, and tracks it.
    fn enqueue(
        &mut self,
        now: Instant,
        open: bool,
        kind: Kind,
        id: u64,
        frame: Bytes,
        effect: Effect,
    ) -> RequestId {
        let deadline =
            (!self.config.request_timeout.is_zero()).then(|| now + self.config.request_timeout);
        let status = if open {
            self.transmits
                .push_back(ClientTransmit::Frame(frame.clone()));
            Status::Sent
        } else {
            self.offline.push_back(id);
            Status::Queued
        };
        let mut pending = Pending::new(kind, Owner::App, frame, status);
        pending.deadline = deadline;
        pending.effect = effect;
        self.requests.insert(id, pending);
        self.dial_if_idle();
        RequestId(id)
    }

    fn dial_if_idle(&mut self) {
        if self.state == ClientState::Idle {
            self.dial();
        }
    }

    fn dial(&mut self) {
        self.state = ClientState::Connecting;
        self.timers.stop(Timer::Reconnect);
        let dial = DialRequest::new(
            &self.config.url,
            &self.config.node_id,
            self.config.token.as_deref(),
        );
        self.transmits.push_back(ClientTransmit::Connect(dial));
    }

    /// Sends what the last connection had established, before anything else (docs/protocol.md
    /// section 11): subscriptions (grouped by their resume cursor and `since`), presence
    /// topics with their last data, rooms with their join data.
    fn restore(&mut self) {
        let with_cursor = self.config.resume_with_cursor;
        for ((cursor, since), tables) in self.tracked.resume_groups(with_cursor) {
            // Live changes were never filtered, so the replay of what they missed is not.
            let payload = Subscribe {
                tables,
                since,
                cursor,
                filter: None,
            };
            self.send_internal(
                Kind::Subscribe,
                &payload,
                Owner::RestoreTables(payload.tables.clone()),
            );
        }
        let topics: Vec<(String, Option<RawJson>)> = self
            .tracked
            .topics
            .iter()
            .filter(|(_, m)| m.sent)
            .map(|(topic, m)| (topic.clone(), m.data.clone()))
            .collect();
        for (topic, data) in topics {
            let payload = PresenceUpdate { topic, data };
            self.send_internal(
                Kind::PresenceUpdate,
                &payload,
                Owner::RestoreOther(payload.topic.clone()),
            );
        }
        let rooms: Vec<(String, Option<RawJson>)> = self
            .tracked
            .rooms
            .iter()
            .filter(|(_, m)| m.sent)
            .map(|(room, m)| (room.clone(), m.data.clone()))
            .collect();
        for (room, data) in rooms {
            let payload = RoomRequest {
                action: RoomAction::Join,
                room,
                data,
            };
            self.send_internal(
                Kind::Room,
                &payload,
                Owner::RestoreOther(payload.room.clone()),
            );
        }
    }

    /// Ties each application request that a dropped connection left
    /// [`Restoring`](Status::Restoring) to the restore requests that re-establish its effect;
    /// it completes when they are all answered (or fails with the first refusal). One that
    /// removed something is done now: the restore left it out.
    fn link_restoring(&mut self) {
        let ids = self.requests.ids();
        let restore_ids: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| {
                self.requests
                    .get(*id)
                    .is_some_and(|p| p.owner != Owner::App)
            })
            .collect();
        for id in ids {
            let Some(pending) = self.requests.get(id) else {
                continue;
            };
            if pending.status != Status::Restoring {
                continue;
            }
            let effect = pending.effect.clone();
            let restores: Vec<u64> = restore_ids
                .iter()
                .copied()
                .filter(|r| {
                    let Some(restore) = self.requests.get(*r) else {
                        return false;
                    };
                    match (&effect, &restore.owner) {
                        (Effect::Tables(tables), Owner::RestoreTables(restored)) => {
                            tables.iter().any(|t| restored.contains(t))
                        }
                        (Effect::Topic(topic), Owner::RestoreOther(name)) => {
                            restore.kind == Kind::PresenceUpdate && name == topic
                        }
                        (Effect::Room(room), Owner::RestoreOther(name)) => {
                            restore.kind == Kind::Room && name == room
                        }
                        _ => false,
                    }
                })
                .collect();
            if restores.is_empty() {
                // Nothing left to restore (a removal, or what it established is gone).
                self.finish_restoring(id, Ok(Response::Ack(None)));
                continue;
            }
            for restore in &restores {
                if let Some(restore) = self.requests.get_mut(*restore) {
                    restore.waiters.push(id);
                }
            }
            if let Some(pending) = self.requests.get_mut(id) {
                pending.awaiting = restores.len();
            }
        }
    }

    /// A restore request ended: the application's requests waiting for it move on.
    pub(super) fn restore_answered(
        &mut self,
        waiters: Vec<u64>,
        outcome: &Result<Response, RequestError>,
    ) {
        for id in waiters {
            let Some(pending) = self.requests.get_mut(id) else {
                continue; // it timed out meanwhile
            };
            if pending.status != Status::Restoring {
                continue;
            }
            match outcome {
                Ok(Response::Ack(ack)) => {
                    if let Some(ack) = ack {
                        // Several restores (tables resuming from different points): the
                        // request recovered if all of them did.
                        let recovered = pending.restored.as_ref().is_none_or(|r| r.recovered);
                        pending.restored = Some(ResumeAck {
                            recovered: recovered && ack.recovered,
                            cursor: ack.cursor,
                        });
                    }
                    pending.awaiting = pending.awaiting.saturating_sub(1);
                    if pending.awaiting == 0 {
                        let ack = pending.restored.take();
                        self.finish_restoring(id, Ok(Response::Ack(ack)));
                    }
                }
                Ok(_) => {}
                Err(err) => self.finish_restoring(id, Err(err.clone())),
            }
        }
    }

    /// Ends an application request through its restore: the restore already did the
    /// bookkeeping, so only the application hears of it.
    fn finish_restoring(&mut self, id: u64, outcome: Result<Response, RequestError>) {
        if self.requests.remove(id).is_some() {
            self.events.push_back(ClientEvent::Response {
                id: RequestId(id),
                outcome,
            });
        }
    }

    /// Sends one of the client's own requests. They bypass the transmit bound: there are at
    /// most `max_subscriptions + max_presence_topics + max_rooms` of them per connection, and
    /// they have no deadline (a connection that drops forgets them).
    fn send_internal<P: Serialize>(&mut self, kind: Kind, payload: &P, owner: Owner) {
        let id = self.take_id();
        let frame = encode_request(kind.message(), id, payload);
        self.send_encoded(kind, id, frame, owner);
    }

    /// [`Client::send_internal`] past the encoding: the same code for every payload type.
    fn send_encoded(&mut self, kind: Kind, id: u64, frame: Bytes, owner: Owner) {
        self.transmits
            .push_back(ClientTransmit::Frame(frame.clone()));
        let tables = match &owner {
            Owner::RestoreTables(tables) => tables.clone(),
            _ => Vec::new(),
        };
        let mut pending = Pending::new(kind, owner, frame, Status::Sent);
        pending.tables = tables;
        pending.resumes = kind == Kind::Subscribe;
        self.requests.insert(id, pending);
    }

    /// After the restore: pending pulls and pushes of the last connection, then the offline
    /// queue, each in issue order.
    fn resend_and_flush(&mut self) {
        for id in self.requests.ids() {
            let pending = self
                .requests
                .get_mut(id)
                .expect("invariant: id just listed");
            if pending.status == Status::Resend {
                pending.status = Status::Sent;
                let frame = pending.frame.clone();
                self.transmits.push_back(ClientTransmit::Frame(frame));
            }
        }
        while let Some(id) = self.offline.pop_front() {
            let Some(pending) = self.requests.get_mut(id) else {
                continue;
            };
            pending.status = Status::Sent;
            let frame = pending.frame.clone();
            self.transmits.push_back(ClientTransmit::Frame(frame));
            self.tracked.mark_sent(RequestId(id));
        }
    }

    fn send_keepalive(&mut self, now: Instant) {
        if self.state != ClientState::Open {
            return;
        }
        self.timers
            .set(Timer::Ping, now + self.config.ping_interval);
        // Whatever happens to the ping, the server must be heard from within the pong
        // timeout: a full transmit queue (the socket takes nothing) is how a dead peer often
        // looks, and must not hide it.
        if self.timers.get(Timer::Pong).is_none() {
            self.timers.set(Timer::Pong, now + self.config.pong_timeout);
        }
        // A full transmit queue means the adapter is not draining: skip this ping; the next
        // one will try again.
        if self.transmits.len() >= self.config.max_queued_transmits {
            return;
        }
        let id = self.take_id();
        self.keepalive = Some(id);
        self.transmits
            .push_back(ClientTransmit::Frame(encode_request(
                MessageType::Ping,
                id,
                &(),
            )));
    }

    /// Queues a connection lifecycle event. They always fit, but an application that reads
    /// no events while the client reconnects again and again must not make them pile up
    /// without bound: past [`MAX_LIFECYCLE_EVENTS`] unread, the oldest goes (the newest
    /// say where the connection stands now).
    fn lifecycle(&mut self, event: ClientEvent) {
        let is_lifecycle = |e: &ClientEvent| {
            matches!(
                e,
                ClientEvent::Connected
                    | ClientEvent::Disconnected { .. }
                    | ClientEvent::Reconnecting { .. }
            )
        };
        if self.events.iter().filter(|e| is_lifecycle(e)).count() >= MAX_LIFECYCLE_EVENTS {
            if let Some(oldest) = self.events.iter().position(is_lifecycle) {
                self.events.remove(oldest);
            }
        }
        self.events.push_back(event);
    }

    /// The client itself ends the connection (dead peer, slow application).
    fn drop_connection(&mut self, now: Instant, code: CloseCode, reason: &str) {
        self.transmits
            .retain(|t| !matches!(t, ClientTransmit::Frame(_)));
        self.transmits.push_back(ClientTransmit::Close {
            code,
            reason: reason.to_owned(),
        });
        self.on_disconnect(now, Some(code), reason.to_owned());
    }

    fn on_disconnect(&mut self, now: Instant, code: Option<CloseCode>, reason: String) {
        // Frames not yet sent were for the dead connection: what must survive is re-sent
        // from the request map after the reconnect.
        self.transmits
            .retain(|t| !matches!(t, ClientTransmit::Frame(_)));
        self.timers.stop_all();
        self.keepalive = None;
        self.lifecycle(ClientEvent::Disconnected {
            code,
            reason: reason.clone(),
        });
        for id in self.requests.ids() {
            let pending = self
                .requests
                .get_mut(id)
                .expect("invariant: id just listed");
            if pending.status == Status::Queued {
                continue;
            }
            let app = pending.owner == Owner::App;
            if app && pending.kind.idempotent() && self.config.resend_idempotent {
                pending.status = Status::Resend;
            } else if app && pending.effect != Effect::None {
                // Its restore after the reconnect completes it (docs/protocol.md section 11).
                pending.status = Status::Restoring;
                pending.awaiting = 0;
                pending.restored = None;
            } else if pending.owner != Owner::App {
                // The restore of a dead connection: the next connection restores afresh.
                self.requests.remove(id);
            } else if let Some(pending) = self.requests.remove(id) {
                self.complete(id, pending, Err(RequestError::Disconnected));
            }
        }
        match code {
            Some(code) if self.config.terminal_close_codes.contains(&code) => {
                self.close_for_good(CloseReason::Server { code, reason });
            }
            _ => self.schedule_reconnect(now),
        }
    }

    fn schedule_reconnect(&mut self, now: Instant) {
        if let Some(max) = self.config.max_reconnect_attempts {
            if self.backoff.attempt() >= max {
                let attempts = self.backoff.attempt();
                self.close_for_good(CloseReason::MaxAttempts { attempts });
                return;
            }
        }
        let (attempt, delay) = self.backoff.next_delay();
        self.state = ClientState::WaitingToReconnect;
        self.timers.set(Timer::Reconnect, now + delay);
        self.lifecycle(ClientEvent::Reconnecting { attempt, delay });
    }

    /// Stops for good: every request still pending fails with `DISCONNECTED`.
    fn close_for_good(&mut self, reason: CloseReason) {
        self.state = ClientState::Closed;
        self.timers.stop_all();
        self.keepalive = None;
        self.offline.clear();
        for id in self.requests.ids() {
            if let Some(pending) = self.requests.remove(id) {
                self.complete(id, pending, Err(RequestError::Disconnected));
            }
        }
        self.events.push_back(ClientEvent::Closed { reason });
    }

    /// A request left the map before being sent (timeout while queued).
    fn forget_queued(&mut self, id: u64, pending: &Pending) {
        if pending.status == Status::Queued {
            self.offline.retain(|queued| *queued != id);
            // What it would have established never reached the server.
            self.tracked.roll_back(RequestId(id));
        }
    }
}

/// How many connected / disconnected / reconnecting events may wait unread.
const MAX_LIFECYCLE_EVENTS: usize = 32;

fn strings<I: IntoIterator<Item = T>, T: Into<String>>(items: I) -> Vec<String> {
    items.into_iter().map(Into::into).collect()
}

fn encode_request<P: Serialize + ?Sized>(ty: MessageType, id: u64, payload: &P) -> Bytes {
    let id = FrameId::new(id.to_string());
    Frame::encode(ty, Some(&id), payload)
        .expect("invariant: the crate's payload types always serialise")
}
