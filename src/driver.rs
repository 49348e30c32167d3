use std::collections::VecDeque;

use bytes::Bytes;

use crate::answer::PullAnswer;
use crate::server::{Handshake, HandshakeOutcome, Server, ServerEvent, ServerTransmit, SessionId};
use serde::{Serialize, Serializer};

use crate::payload::{ChangeRecord, HasHlc, Hlc};
use crate::server::AppError;
use crate::store::{MemoryStore, Store};
use crate::time::Instant;
use crate::wire::CloseCode;

/// The driver's inputs: each is the server's input of the same name, after which the driver
/// answers what the server asked of the store.
macro_rules! inputs {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {$(
        #[doc = concat!("See [`Server::", stringify!($name), "`].")]
        pub fn $name(&mut self, now: Instant, $($arg: $ty),*) {
            self.server.$name(now, $($arg),*);
            self.pump(now);
        }
    )*};
}

/// A [`Server`] paired with a [`Store`] (by default the embedded [`MemoryStore`]): one call
/// per input runs both.
///
/// The server never imports the store and the store never imports the server (see the
/// crate docs); this driver is the small piece between them. It forwards every input to the
/// server, answers the pull, push and replay events at once from the store, and passes every
/// other event through. An adapter (or a test) drives a `Driver` exactly as it would drive a
/// `Server`: after each input, drain [`poll_transmit`](Driver::poll_transmit) and
/// [`poll_event`](Driver::poll_event), then wait for [`poll_timeout`](Driver::poll_timeout).
///
/// ```
/// use bytes::Bytes;
/// use syncmux::Driver;
/// use syncmux::{Handshake, HandshakeOutcome, ServerTransmit};
/// use syncmux::{MemoryStore, StoreConfig};
/// use syncmux::{Instant, Server, ServerConfig};
///
/// let server = Server::new(ServerConfig::default())?;
/// let mut driver = Driver::new(server, MemoryStore::new(StoreConfig::default()));
/// let now = Instant::ZERO;
/// let HandshakeOutcome::Accept { session, .. } =
///     driver.handle_handshake(now, &Handshake::new("/", "node_id=a"))
/// else {
///     panic!("refused")
/// };
/// let push = r#"{"type":"push_request","id":"1","payload":{"node_id":"a","changes":[
///     {"table":"docs","pk":"1","field":"t","crdt_type":"lww","hlc":"5:0:a","node_id":"a","value":1}]}}"#;
/// driver.handle_message(now, session, Bytes::from(push));
/// let Some(ServerTransmit::Frame { bytes, .. }) = driver.poll_transmit() else {
///     panic!("no answer")
/// };
/// assert!(bytes.starts_with(br#"{"type":"push_response","id":"1","payload":{"merged":1"#));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Driver<S: Store = MemoryStore> {
    server: Server,
    /// `None`: store-facing events pass through to `poll_event`, for an async backend.
    store: Option<S>,
    events: VecDeque<ServerEvent>,
}

impl<S: Store> core::fmt::Debug for Driver<S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Driver")
            .field("server", &self.server)
            .field("events", &self.events.len())
            .finish_non_exhaustive()
    }
}

impl<S: Store> Driver<S> {
    /// Pairs a server with a store.
    pub fn new(server: Server, store: S) -> Self {
        Driver {
            server,
            store: Some(store),
            events: VecDeque::new(),
        }
    }

    /// A driver whose store answers nothing: every event, pulls, pushes and replays included,
    /// goes to [`poll_event`](Driver::poll_event), for an asynchronous backend to answer later
    /// through [`with_server`](Driver::with_server).
    pub fn deferring(server: Server) -> Self {
        Driver {
            server,
            store: None,
            events: VecDeque::new(),
        }
    }

    /// Runs `f` on the server (an answer from an asynchronous backend, an input of the
    /// embedder's own), then answers what it asked of the store.
    pub fn with_server(&mut self, now: Instant, f: impl FnOnce(&mut Server)) {
        f(&mut self.server);
        self.pump(now);
    }

    /// The server.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// The store (`None` for a [`deferring`](Driver::deferring) driver).
    pub fn store(&self) -> Option<&S> {
        self.store.as_ref()
    }

    /// The server, for settings an embedder turns on (see
    /// [`Server::report_writes`], [`Server::share_presence`]). Inputs go through the driver's
    /// own methods, so that what they ask of the store is answered.
    pub fn server_mut(&mut self) -> &mut Server {
        &mut self.server
    }

    /// The store, for seeding or inspection (`None` for a [`deferring`](Driver::deferring)
    /// driver).
    pub fn store_mut(&mut self) -> Option<&mut S> {
        self.store.as_mut()
    }

    /// See [`Server::handle_handshake`].
    pub fn handle_handshake(&mut self, now: Instant, handshake: &Handshake) -> HandshakeOutcome {
        let outcome = self.server.handle_handshake(now, handshake);
        self.pump(now);
        outcome
    }

    inputs! {
        handle_message(session: SessionId, bytes: Bytes);
        handle_binary(session: SessionId, len: usize);
        handle_disconnected(session: SessionId);
    }

    /// See [`Server::handle_sent`].
    pub fn handle_sent(&mut self, now: Instant, session: SessionId, bytes: usize) {
        self.server.handle_sent(now, session, bytes);
    }

    inputs! {
        handle_timeout();
        close_session(session: SessionId, code: CloseCode, reason: &str);
        shutdown();
    }

    /// See [`Server::poll_transmit`].
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<ServerTransmit> {
        self.server.poll_transmit()
    }

    /// The server's events other than pull, push and replay (which the store answered).
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// See [`Server::poll_timeout`].
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.server.poll_timeout()
    }

    /// Answers every store-facing event at once, in order, so pushes are answered in the
    /// order the store accepts them (sessions then see changes in cursor order).
    fn pump(&mut self, now: Instant) {
        while let Some(event) = self.server.poll_event() {
            let other = match &mut self.store {
                Some(store) => answer(store, &mut self.server, now, event),
                None => Some(event),
            };
            self.events.extend(other);
        }
    }
}

impl MemoryStore {
    /// Answers `event` from this store at once when it asks the store (a pull, a push or a
    /// replay) and gives it back otherwise. This is what a [`Driver`] does with every event;
    /// call it yourself to hold some events back or answer them out of order (a test
    /// harness, a simulation), or to drive a [`Server`] you own.
    ///
    /// Records go out borrowed and with their kept encodings, as in a `Driver`.
    pub fn answer(
        &mut self,
        server: &mut Server,
        now: Instant,
        event: ServerEvent,
    ) -> Option<ServerEvent> {
        answer(self, server, now, event)
    }
}

/// Answers `event` from `store` when it asks the store, and gives it back otherwise. A store
/// that fails answers the request with an error frame (`HANDLER_ERROR`, the store's text).
fn answer<S: Store>(
    store: &mut S,
    server: &mut Server,
    now: Instant,
    event: ServerEvent,
) -> Option<ServerEvent> {
    match event {
        ServerEvent::Pull {
            request,
            tables,
            since,
            cursor,
            ..
        } => {
            let out = store.pull(&tables, since.as_ref(), cursor.as_ref());
            server.answer_pull_with(now, request, answered(out));
        }
        ServerEvent::Replay {
            request,
            tables,
            since,
            cursor,
            head_only,
            ..
        } => {
            // Without a replay, the answer is where the stream stands: after the head.
            let cursor = if head_only {
                Some(store.head())
            } else {
                cursor
            };
            let out = store.pull(&tables, since.as_ref(), cursor.as_ref());
            server.answer_replay_with(now, request, answered(out));
        }
        ServerEvent::Push {
            request, changes, ..
        } => {
            let out = store.push(changes);
            server.answer_push(now, request, out.map_err(|e| AppError::new(e.to_string())));
        }
        other => return Some(other),
    }
    None
}

/// A store's pull as the server's answer: its records as they are (owned, borrowed or
/// encoded), seen by the server through `AsRef`.
fn answered<R, E: core::fmt::Display>(
    out: Result<PullAnswer<R>, E>,
) -> Result<PullAnswer<ByRecord<R>>, AppError> {
    match out {
        Ok(out) => Ok(out.map(ByRecord)),
        Err(e) => Err(AppError::new(e.to_string())),
    }
}

/// A store's record, serialised as the store writes it and ordered by the record it borrows.
struct ByRecord<R>(R);

impl<R: Serialize> Serialize for ByRecord<R> {
    fn serialize<Z: Serializer>(&self, serializer: Z) -> Result<Z::Ok, Z::Error> {
        self.0.serialize(serializer)
    }
}

impl<R: AsRef<ChangeRecord>> HasHlc for ByRecord<R> {
    fn hlc(&self) -> &Hlc {
        &self.0.as_ref().hlc
    }
    fn table(&self) -> &str {
        &self.0.as_ref().table
    }
    fn pk(&self) -> &str {
        &self.0.as_ref().pk
    }
    fn field(&self) -> &str {
        &self.0.as_ref().field
    }
}
