//! The server side shared by both runtimes: the [`Driver`] behind a lock, one task per
//! session, one timer task. The per-runtime parts are only the listener, the timer and spawn.
//!
//! Why a lock rather than a task owning the driver: tungstenite decides the upgrade inside a
//! synchronous callback, and the state machine must decide it there (to reject with the HTTP
//! status before upgrading and to select its subprotocol). The lock is held only while one
//! input runs and its outputs are handed to the sessions' queues, never across an `.await`.
//!
//! Back pressure: each session's frames go through its own queue to its own task, so a slow
//! socket stalls nobody else. A session's task reports what it wrote
//! ([`Server::handle_sent`](syncmux::Server::handle_sent)), so every frame in the queue counts
//! against the state machine's outbound bound
//! ([`ServerConfig::max_outbound_bytes`](syncmux::ServerConfig::max_outbound_bytes)), the one
//! rule for slow consumers: over it the session is closed with 4503.
//!
//! Nothing outlives a session: its queues leave the hub when the state machine closes it or
//! when its [`AcceptedSession`] is dropped (its task ended, whoever ended it).

use core::fmt;
use core::pin::Pin;
use core::task::{Context, Poll};
use core::time::Duration;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use tungstenite::Message;

use crate::backend::{Backend, Link, Spawn};
use crate::clock::Clock;
use crate::common;
use crate::direct::{self, Direct, DirectOutlet, Framer, RawSocket, Writer};
use crate::metrics;
use crate::runtime::Binding;
use syncmux::payload::Cursor;
use syncmux::wire::CloseCode;
use syncmux::Driver;
use syncmux::Instant;
use syncmux::{Handshake, HandshakeOutcome, ServerEvent, ServerStats, ServerTransmit, SessionId};

/// Options of the server adapter: how it treats connections before they are sessions. The
/// protocol's options, frame size and outbound bound included, are the
/// [`ServerConfig`](syncmux::ServerConfig) inside the driver; the maximum number of sessions
/// (beyond it an upgrade gets HTTP 503) is its `max_sessions`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerOptions {
    /// Deadline of a connection's whole handshake: TLS and the WebSocket upgrade for a
    /// connection taken by `serve`, the upgrade for one given to `accept`. A connection that
    /// has not finished by then is dropped, so a peer that sends nothing, or half a request,
    /// holds no socket for long. Default 10 s; zero disables it.
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once. At the bound, `serve` stops accepting (new
    /// connections wait in the listener's backlog) and `accept` waits for a slot. Default
    /// 1024; 0: no bound.
    pub max_handshakes: usize,
}

impl Default for ServerOptions {
    fn default() -> ServerOptions {
        ServerOptions {
            handshake_timeout: Duration::from_secs(10),
            max_handshakes: 1024,
        }
    }
}

/// A running sync server: cheap to clone, shared by the accept loop, the sessions and the
/// application. Made by `Runtime::start` or `Runtime::start_with_backend`.
#[derive(Clone)]
pub struct SyncServer {
    shared: Arc<Mutex<Shared>>,
    gate: Gate,
}

/// What a server handle shares with its accept paths and session tasks, alike for both
/// endpoints (the sync server's and the OT one's): the shutdown signal, the options, the
/// handshake slots, the WebSocket layer's read limit and the count of running session tasks.
#[derive(Clone, Debug)]
pub struct Gate {
    /// Closed on shutdown: accept loops stop.
    stop: async_channel::Receiver<()>,
    options: Arc<ServerOptions>,
    /// Handshakes in progress, one token each (a semaphore); `None` without a bound.
    handshakes: Option<HandshakeSlots>,
    /// The WebSocket layer's read limit, derived from the state machine's frame limit.
    ws_frame_limit: usize,
    /// Session tasks that have not ended.
    running: Arc<Running>,
}

impl Gate {
    /// The gate of a state machine whose frames are at most `max_frame_len` bytes, and the
    /// sender whose drop (at shutdown) closes it.
    pub(crate) fn new(
        options: ServerOptions,
        max_frame_len: usize,
    ) -> (Gate, async_channel::Sender<()>) {
        let (stop_tx, stop) = async_channel::bounded(1);
        let gate = Gate {
            stop,
            handshakes: HandshakeSlots::new(options.max_handshakes),
            options: Arc::new(options),
            ws_frame_limit: common::ws_read_limit(max_frame_len),
            running: Running::new(),
        };
        (gate, stop_tx)
    }

    /// The adapter's options.
    pub(crate) fn options(&self) -> &ServerOptions {
        &self.options
    }

    /// The largest message the WebSocket layer reads (0: no limit); see
    /// [`common::ws_read_limit`].
    pub(crate) fn ws_frame_limit(&self) -> usize {
        self.ws_frame_limit
    }

    /// Waits for one of the `max_handshakes` slots; hold it until the handshake is over.
    pub(crate) async fn slot(&self) -> HandshakeSlot {
        HandshakeSlots::take(self.handshakes.as_ref()).await
    }

    /// Completes once the server shut down (accept loops select on it).
    pub(crate) async fn stopped(&self) {
        let _ = self.stop.recv().await;
    }

    /// Counts a session task as running until dropped.
    pub(crate) fn running(&self) -> RunningGuard {
        RunningGuard::new(&self.running)
    }

    /// Session tasks running.
    pub(crate) fn running_count(&self) -> usize {
        self.running.count()
    }

    /// Completes once no session task is running.
    pub(crate) async fn drained(&self) {
        self.running.idle().await;
    }
}

/// A count of running session tasks, and a wake-up for whoever waits for it to reach zero.
#[derive(Debug)]
pub(crate) struct Running {
    count: AtomicUsize,
    /// Capacity 1: a token left here by the last session to end wakes the waiter.
    idle_tx: async_channel::Sender<()>,
    idle_rx: async_channel::Receiver<()>,
}

/// Held by an [`AcceptedSession`]: one running session.
pub(crate) struct RunningGuard(Arc<Running>);

impl RunningGuard {
    pub(crate) fn new(running: &Arc<Running>) -> RunningGuard {
        running.count.fetch_add(1, Ordering::SeqCst);
        RunningGuard(running.clone())
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            let _ = self.0.idle_tx.try_send(());
        }
    }
}

/// A counting semaphore of handshake slots: a slot is a token in the channel, so taking one
/// waits while the channel is full.
#[derive(Clone, Debug)]
pub(crate) struct HandshakeSlots {
    take: async_channel::Sender<()>,
    give_back: async_channel::Receiver<()>,
}

/// One handshake slot, given back when dropped.
pub struct HandshakeSlot(Option<async_channel::Receiver<()>>);

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        if let Some(slots) = &self.0 {
            // The token this slot put in; always there, as only slots take tokens out.
            let _ = slots.try_recv();
        }
    }
}

// Shared with the OT endpoint's adapter (`ot`).
impl Running {
    pub(crate) fn new() -> Arc<Running> {
        let (idle_tx, idle_rx) = async_channel::bounded(1);
        Arc::new(Running {
            count: AtomicUsize::new(0),
            idle_tx,
            idle_rx,
        })
    }

    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Completes once no session task is running.
    pub(crate) async fn idle(&self) {
        while self.count() > 0 {
            // Never closed: `self` holds the sender.
            let _ = self.idle_rx.recv().await;
        }
    }
}

impl HandshakeSlots {
    /// `max` slots; `None` (no bound) for 0.
    pub(crate) fn new(max: usize) -> Option<HandshakeSlots> {
        (max > 0).then(|| {
            let (take, give_back) = async_channel::bounded(max);
            HandshakeSlots { take, give_back }
        })
    }

    /// Waits for a slot (at once without a bound); hold it until the handshake is over.
    pub(crate) async fn take(slots: Option<&HandshakeSlots>) -> HandshakeSlot {
        match slots {
            None => HandshakeSlot(None),
            Some(slots) => {
                // Never closed: the caller holds the other end.
                let _ = slots.take.send(()).await;
                HandshakeSlot(Some(slots.give_back.clone()))
            }
        }
    }
}

impl fmt::Debug for SyncServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncServer")
            .field("sessions", &self.session_count())
            .field("options", self.gate.options())
            .finish_non_exhaustive()
    }
}

/// The queues of one session's task.
struct Outlet {
    frames: async_channel::Sender<Bytes>,
    close: async_channel::Sender<(CloseCode, String)>,
    /// The session's socket, when the hub writes to it itself ([`direct`](crate::direct)):
    /// its frames skip `frames` and its task.
    direct: Option<Arc<dyn DirectOutlet>>,
}

/// Each session's outlet at its session's slot index (slots are reused with a new
/// generation, which a lookup checks). The drain looks one up per delivered frame: an index
/// and a compare, where a `HashMap` hashed and probed (two cache misses per frame at 10 000
/// sessions).
#[derive(Default)]
struct Outlets {
    slots: Vec<Option<(SessionId, Outlet)>>,
    len: usize,
}

impl Outlets {
    fn get(&self, session: &SessionId) -> Option<&Outlet> {
        match self.slots.get(session.index())? {
            Some((id, outlet)) if id == session => Some(outlet),
            _ => None,
        }
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // tokio's direct path
    fn get_mut(&mut self, session: &SessionId) -> Option<&mut Outlet> {
        match self.slots.get_mut(session.index())? {
            Some((id, outlet)) if id == session => Some(outlet),
            _ => None,
        }
    }

    /// Puts `outlet` at `session`'s slot; an outlet left there by an earlier session of
    /// the slot (whose task has not ended yet) is dropped, which ends that task.
    fn insert(&mut self, session: SessionId, outlet: Outlet) {
        let index = session.index();
        if self.slots.len() <= index {
            self.slots.resize_with(index + 1, || None);
        }
        if self.slots[index].replace((session, outlet)).is_none() {
            self.len += 1;
        }
    }

    fn remove(&mut self, session: &SessionId) -> Option<Outlet> {
        let slot = self.slots.get_mut(session.index())?;
        if slot.as_ref().is_some_and(|(id, _)| id == session) {
            self.len -= 1;
            return slot.take().map(|(_, outlet)| outlet);
        }
        None
    }

    fn len(&self) -> usize {
        self.len
    }
}

/// Frames written to direct sockets per pass of [`Shared::drain`]; one io_uring submission
/// on Linux, whose ring holds a chunk (`uring` asserts it).
pub(super) const DIRECT_CHUNK: usize = 256;

/// What every task of one server shares behind its lock: the state machine (with its
/// store), the clock, and each session's outlet.
pub(crate) struct Shared {
    driver: Driver,
    clock: Clock,
    outlets: Outlets,
    /// The deadline the timer task sleeps until.
    armed: Option<Instant>,
    wake: async_channel::Sender<()>,
    stop: Option<async_channel::Sender<()>>,
    /// An async backend answering the store-facing events (`None`: the driver's store
    /// answers them inline).
    backend: Option<Link>,
    /// Writes the drain's chunks of direct frames (one io_uring submission each on Linux).
    writer: Writer,
}

impl Shared {
    fn now(&self) -> Instant {
        self.clock.now()
    }

    /// Runs `f` on the driver now (a backend's answer, the log's entries), then hands its
    /// outputs out.
    pub(crate) fn apply(&mut self, f: impl FnOnce(&mut Driver, Instant)) {
        let now = self.now();
        f(&mut self.driver, now);
        self.drain();
    }

    /// Queues everything this server's sessions are in for the backend to publish again.
    pub(crate) fn announce(&mut self) {
        if let Some(link) = &self.backend {
            for change in self.driver.server().shared_state() {
                link.dispatch_change(change);
            }
        }
    }

    /// Where the backend's follower stands in the shared log.
    pub(crate) fn followed(&mut self, position: Cursor) {
        if let Some(link) = &mut self.backend {
            link.set_followed(position);
        }
    }

    /// Hands every output of the last input to the sessions' queues, then re-arms the timer.
    fn drain(&mut self) {
        // One drain's broadcast is framed once for all its recipients.
        let mut framer = Framer::default();
        let mut now = None;
        let Shared {
            driver,
            outlets,
            clock,
            writer,
            ..
        } = self;
        // Frames for direct sockets go out in chunks, in three passes: take the chunk's
        // frames from the state machine, write them, report what left. A write's syscall
        // evicts the session's state from the cache, so interleaving the three per frame
        // (as before) paid a cache miss per frame in each pass; in tight loops the misses
        // overlap. The chunk's writes are one io_uring submission where there is one
        // (`uring`), one `send(2)` per frame otherwise.
        let mut written: Vec<(SessionId, usize)> = Vec::new();
        loop {
            let mut chunk: Vec<(SessionId, &dyn DirectOutlet, Bytes, usize)> = Vec::new();
            let pause = loop {
                match driver.poll_transmit() {
                    Some(ServerTransmit::Frame { session, bytes }) => match outlets.get(&session) {
                        Some(Outlet {
                            direct: Some(direct),
                            ..
                        }) => {
                            let len = bytes.len();
                            chunk.push((session, &**direct, framer.frame(&bytes), len));
                            if chunk.len() == DIRECT_CHUNK {
                                break None;
                            }
                        }
                        Some(outlet) => {
                            // Unbounded, but every frame in it counts against the state
                            // machine's outbound bound until the session's task reports it
                            // written. Closed only once the task is gone, and then the
                            // outlet is gone too.
                            let _ = outlet.frames.try_send(bytes);
                        }
                        None => {}
                    },
                    // The frames so far go first.
                    close @ Some(ServerTransmit::Close { .. }) => break close,
                    None => break None,
                }
            };
            let full = chunk.len() == DIRECT_CHUNK;
            writer.write(chunk, &mut written);
            let reported = !written.is_empty();
            if reported {
                let now = *now.get_or_insert_with(|| clock.now());
                for (session, n) in written.drain(..) {
                    driver.handle_sent(now, session, n);
                }
            }
            match pause {
                Some(ServerTransmit::Close {
                    session,
                    code,
                    reason,
                }) => {
                    if let Some(outlet) = outlets.remove(&session) {
                        // Capacity 1 and sent once: never full.
                        let _ = outlet.close.try_send((code, reason));
                    }
                }
                // More frames wait, or the reports may have let more in (a replay paced
                // by the outbound bound goes on as its frames are written).
                _ if full || reported => {}
                _ => break,
            }
        }
        let mut again = false;
        while let Some(event) = self.driver.poll_event() {
            match event {
                ServerEvent::SessionOpened { session, node_id } => {
                    metrics::session_opened();
                    tracing::info!(%session, node_id, "session opened");
                }
                ServerEvent::SessionClosed {
                    session,
                    node_id,
                    code,
                } => {
                    if code.is_none() {
                        metrics::peer_closed();
                    }
                    let code = code.map(|c| c.0);
                    tracing::info!(%session, node_id, ?code, "session closed");
                }
                other => match &mut self.backend {
                    Some(link) if Link::wants(&other) => {
                        again |= link.dispatch(&mut self.driver, self.clock.now(), other);
                    }
                    _ => tracing::debug!(?other, "server event"),
                },
            }
        }
        if again {
            // A backend answered at once: its frames go out now.
            return self.drain();
        }
        let next = self.driver.poll_timeout();
        if next != self.armed && (self.armed.is_none() || next < self.armed) {
            // Only an earlier deadline needs the timer task's attention; a later one is
            // picked up when the current one fires (a spurious timeout is a no-op).
            self.armed = next;
            let _ = self.wake.try_send(());
        }
    }
}

/// Why a handshake was refused: answer the upgrade with this HTTP status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The HTTP status (401, 403, 404, 503, ...).
    pub status: u16,
    /// Why.
    pub reason: String,
}

/// A handshake the state machine accepted: answer the upgrade selecting
/// [`protocol`](AcceptedSession::protocol), then [`run`](AcceptedSession::run) the session on
/// the upgraded socket. Dropped without running, the session is closed.
pub struct AcceptedSession {
    server: SyncServer,
    session: SessionId,
    node_id: String,
    protocol: Option<String>,
    frames: Pin<Box<async_channel::Receiver<Bytes>>>,
    close: Pin<Box<async_channel::Receiver<(CloseCode, String)>>>,
    /// The task sent the state machine's close frame: the socket is worth reading a while
    /// longer (see `runtime::linger`).
    lingers: bool,
    /// Dropped after [`Drop for AcceptedSession`](AcceptedSession) released the session.
    _running: RunningGuard,
}

impl fmt::Debug for AcceptedSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcceptedSession")
            .field("session", &self.session)
            .field("node_id", &self.node_id)
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

impl SyncServer {
    pub(crate) fn new(mut driver: Driver, options: ServerOptions) -> (SyncServer, TimerTask) {
        // Every write is reported (`handle_sent`), so a socket that stops taking bytes makes
        // its session a slow consumer rather than an unbounded buffer.
        driver.server_mut().report_writes();
        let clock = Clock::new();
        // Presence `updated_at` is wall time.
        driver
            .server_mut()
            .set_wall_clock(clock.now(), clock.unix_millis());
        let (wake_tx, wake_rx) = async_channel::bounded(1);
        let (gate, stop_tx) = Gate::new(options, driver.server().config().max_frame_len);
        let hub = Shared {
            driver,
            clock,
            outlets: Outlets::default(),
            armed: None,
            wake: wake_tx,
            stop: Some(stop_tx),
            backend: None,
            writer: Writer::default(),
        };
        let server = SyncServer {
            shared: Arc::new(Mutex::new(hub)),
            gate,
        };
        let timer = TimerTask {
            shared: Arc::downgrade(&server.shared),
            wake: Box::pin(wake_rx),
        };
        (server, timer)
    }

    /// A server whose pulls, pushes and replays `backend` answers (see
    /// [`Backend`](crate::Backend)), its tasks spawned with `spawn`.
    pub(crate) fn with_backend(
        server: syncmux::Server,
        backend: Arc<dyn Backend>,
        spawn: Spawn,
        options: ServerOptions,
    ) -> (SyncServer, TimerTask) {
        let driver = Driver::deferring(server);
        let (server, timer) = SyncServer::new(driver, options);
        let (link, tasks) = Link::new(backend, spawn, &server.shared);
        {
            let mut shared = server.lock();
            if link.shares_presence() {
                shared.driver.server_mut().share_presence();
            }
            shared.backend = Some(link);
        }
        for task in tasks {
            spawn(task);
        }
        (server, timer)
    }

    /// A server around `driver` with its timer task running on `R`.
    pub(crate) fn start<R: Binding>(driver: Driver, options: ServerOptions) -> SyncServer {
        let (server, timer) = SyncServer::new(driver, options);
        R::spawn(Box::pin(timer.run(R::sleep_until)));
        server
    }

    /// A server answered by `backend`, its timer task and the backend's tasks on `R`.
    pub(crate) fn start_with_backend<R: Binding>(
        server: syncmux::Server,
        backend: Arc<dyn Backend>,
        options: ServerOptions,
    ) -> SyncServer {
        let (server, timer) = SyncServer::with_backend(server, backend, R::spawn, options);
        R::spawn(Box::pin(timer.run(R::sleep_until)));
        server
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding the lock is a bug already reported; keep serving.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The adapter's options.
    pub fn options(&self) -> &ServerOptions {
        self.gate.options()
    }

    /// What the accept paths share with this handle.
    pub(crate) fn gate(&self) -> &Gate {
        &self.gate
    }

    /// Completes once [`SyncServer::shutdown`] was called (accept loops select on it).
    pub async fn stopped(&self) {
        self.gate.stopped().await;
    }

    /// Decides a handshake (docs/protocol.md section 4). On acceptance the session exists at once
    /// (its first frames, if any, are queued for it).
    pub fn handshake(&self, handshake: &Handshake) -> Result<AcceptedSession, Rejection> {
        let mut hub = self.lock();
        let now = hub.now();
        let outcome = hub.driver.handle_handshake(now, handshake);
        let accepted = match outcome {
            HandshakeOutcome::Accept {
                session,
                node_id,
                protocol,
            } => {
                // Bounded by the state machine's outbound bytes, not by the channel: a
                // bounded channel allocates (and touches) every slot up front; this one
                // grows in small blocks.
                let (frames_tx, frames) = async_channel::unbounded();
                let (close_tx, close) = async_channel::bounded(1);
                let outlet = Outlet {
                    frames: frames_tx,
                    close: close_tx,
                    direct: None,
                };
                hub.outlets.insert(session, outlet);
                Ok(AcceptedSession {
                    server: self.clone(),
                    session,
                    node_id,
                    protocol,
                    frames: Box::pin(frames),
                    close: Box::pin(close),
                    lingers: false,
                    _running: self.gate.running(),
                })
            }
            HandshakeOutcome::Reject { status, reason } => Err(Rejection { status, reason }),
        };
        hub.drain();
        drop(hub);
        metrics::handshake(accepted.as_ref().err().map(|r| r.status));
        accepted
    }

    /// Closes every session with 1001, refuses new handshakes (503) and stops the accept
    /// loops.
    pub fn shutdown(&self) {
        let mut hub = self.lock();
        let now = hub.now();
        hub.driver.shutdown(now);
        hub.drain();
        hub.stop = None;
    }

    /// Sessions open (or closing), as the state machine counts them.
    pub fn session_count(&self) -> usize {
        self.lock().driver.server().session_count()
    }

    /// Sessions the adapter holds queues for (its per-session map). A session's queues go
    /// when the state machine closes it or when its task ends, so once every task has
    /// settled this is never above [`session_count`](Self::session_count): for metrics and
    /// leak checks.
    pub fn outlet_count(&self) -> usize {
        self.lock().outlets.len()
    }

    /// Completes once every session's task has ended: after [`shutdown`](Self::shutdown),
    /// once each close frame went out (or its socket could not take it) and every socket
    /// was dropped. Bound the wait with a timeout of the runtime's.
    pub async fn drained(&self) {
        self.gate.drained().await;
    }

    /// Sessions whose task is running (it may be sending its close frame).
    pub fn running_sessions(&self) -> usize {
        self.gate.running_count()
    }

    /// The state machine's counters (a copy): see [`ServerStats`].
    pub fn stats(&self) -> ServerStats {
        self.lock().driver.server().stats().clone()
    }

    /// Copies the state machine's counters and the open sessions into the [`metrics`]
    /// facade (see [`metrics`](crate::metrics) for every metric); an exporter calls
    /// it before it renders. The other metrics are recorded as they happen.
    pub fn publish_metrics(&self) {
        let (stats, open) = {
            let hub = self.lock();
            let server = hub.driver.server();
            (server.stats().clone(), server.session_count())
        };
        metrics::publish(&stats, open);
    }

    /// A text frame from a session, timed: the driver answers pulls, pushes and replays
    /// inside the input, so its duration is the store's time (see
    /// [`STORE_SECONDS`](metrics::STORE_SECONDS)).
    fn message(&self, session: SessionId, bytes: Bytes) {
        let mut hub = self.lock();
        let now = hub.now();
        let before = metrics::StoreWork::of(hub.driver.server().stats());
        hub.driver.handle_message(now, session, bytes);
        let took = hub.now().saturating_duration_since(now);
        hub.drain();
        let after = metrics::StoreWork::of(hub.driver.server().stats());
        drop(hub);
        after.record_since(before, took);
    }

    /// The session's socket is gone, whoever ended it: the state machine forgets it (a
    /// no-op if it already did) and so does the hub.
    fn closed(&self, session: SessionId) {
        let mut hub = self.lock();
        let now = hub.now();
        hub.driver.handle_disconnected(now, session);
        hub.outlets.remove(&session);
        hub.drain();
    }

    /// Runs `f` on the driver (for metrics, or the store), then hands its outputs out.
    pub fn with_driver<T>(&self, f: impl FnOnce(&mut Driver, Instant) -> T) -> T {
        let mut hub = self.lock();
        let now = hub.now();
        let out = f(&mut hub.driver, now);
        hub.drain();
        out
    }

    fn input(&self, f: impl FnOnce(&mut Driver, Instant)) {
        self.with_driver(f);
    }
}

/// One step of a session's task.
enum Step {
    Message(Message),
    /// The socket is gone (read error or end).
    Gone(String),
    /// Bytes written and flushed.
    Sent(usize),
    /// The server closes the session.
    Close(CloseCode, String),
}

impl AcceptedSession {
    /// The session.
    pub fn session(&self) -> SessionId {
        self.session
    }

    /// Its node id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The subprotocol to select in the upgrade response (`Sec-WebSocket-Protocol`).
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// Drives the session on its upgraded socket until it closes. Reads and writes in one
    /// task: frames are written as the socket takes them while reading goes on. However it
    /// ends (or if this future is dropped), the session is released.
    pub async fn run<W, E>(self, ws: W)
    where
        W: Stream<Item = Result<Message, E>> + Sink<Message> + Unpin,
        E: fmt::Display,
        <W as Sink<Message>>::Error: fmt::Display,
    {
        drop(self.run_to_end(ws).await);
    }

    /// [`run`](Self::run), giving the socket back when the session ended with the server's
    /// close frame sent on it, for the runtime to read a while longer.
    pub(crate) async fn run_to_end<W, E>(mut self, mut ws: W) -> Option<W>
    where
        W: Stream<Item = Result<Message, E>> + Sink<Message> + Unpin,
        E: fmt::Display,
        <W as Sink<Message>>::Error: fmt::Display,
    {
        let mut unflushed = 0usize;
        loop {
            let step =
                core::future::poll_fn(|cx| self.poll_step(cx, &mut ws, &mut unflushed)).await;
            if self.step(step, &mut ws) {
                return self.lingers.then_some(ws);
            }
        }
    }

    /// Acts on one step of the session's task; `true` when the task ends.
    fn step<W, E>(&mut self, step: Step, ws: &mut W) -> bool
    where
        W: Stream<Item = Result<Message, E>> + Sink<Message> + Unpin,
        E: fmt::Display,
        <W as Sink<Message>>::Error: fmt::Display,
    {
        let session = self.session;
        match step {
            Step::Message(Message::Text(text)) => {
                self.server.message(session, Bytes::from(text));
            }
            Step::Message(Message::Binary(data)) => {
                let len = data.len();
                self.server
                    .input(|d, now| d.handle_binary(now, session, len));
            }
            Step::Message(Message::Close(_)) => {
                // Released first: a peer that stops reading cannot hold it while the
                // close answer waits for room.
                self.server.closed(session);
                let _ = ws.close().now_or_never();
                return true;
            }
            // tungstenite answers pings itself.
            Step::Message(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
            Step::Sent(n) => self.server.input(|d, now| d.handle_sent(now, session, n)),
            Step::Gone(why) => {
                tracing::debug!(%session, why, "socket gone");
                return true;
            }
            Step::Close(code, reason) => {
                // Best effort, and never waiting: the state machine already forgot the
                // session, so a peer that stopped reading (a slow consumer) would keep
                // this task, its socket and its buffers alive outside every limit. A
                // socket with room takes the close frame at once.
                let close = common::close_message(code, &reason);
                if let Some(Ok(())) = ws.send(close).now_or_never() {
                    let _ = ws.close().now_or_never();
                    self.lingers = true;
                }
                return true;
            }
        }
        false
    }

    fn poll_step<W, E>(
        &mut self,
        cx: &mut Context<'_>,
        ws: &mut W,
        unflushed: &mut usize,
    ) -> Poll<Step>
    where
        W: Stream<Item = Result<Message, E>> + Sink<Message> + Unpin,
        E: fmt::Display,
        <W as Sink<Message>>::Error: fmt::Display,
    {
        // Write what the socket takes.
        let mut stuck = false;
        loop {
            match Pin::new(&mut *ws).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Step::Gone(e.to_string())),
                Poll::Pending => {
                    stuck = true;
                    break;
                }
            }
            match self.frames.poll_next_unpin(cx) {
                Poll::Ready(Some(bytes)) => {
                    *unflushed += bytes.len();
                    if let Err(e) = Pin::new(&mut *ws).start_send(common::text(bytes)) {
                        return Poll::Ready(Step::Gone(e.to_string()));
                    }
                }
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        if *unflushed > 0 {
            match Pin::new(&mut *ws).poll_flush(cx) {
                Poll::Ready(Ok(())) => return Poll::Ready(Step::Sent(core::mem::take(unflushed))),
                Poll::Ready(Err(e)) => return Poll::Ready(Step::Gone(e.to_string())),
                Poll::Pending => stuck = true,
            }
        }
        // A close waits for the frames queued before it, unless the socket cannot take
        // them (a slow consumer is closed at once: it resumes from its cursor).
        if self.frames.is_empty() || stuck {
            if let Poll::Ready(Some((code, reason))) = self.close.poll_next_unpin(cx) {
                return Poll::Ready(Step::Close(code, reason));
            }
        } else {
            cx.waker().wake_by_ref();
        }
        match ws.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(message))) => Poll::Ready(Step::Message(message)),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Step::Gone(e.to_string())),
            Poll::Ready(None) => Poll::Ready(Step::Gone("connection closed".to_owned())),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg_attr(not(feature = "tokio"), allow(dead_code))] // tokio's direct path
impl AcceptedSession {
    /// Runs the session with the hub writing its frames straight to `direct`, the socket
    /// `ws` reads from (see [`direct`](crate::direct)): its task only reads, and writes what
    /// the socket could not take at once.
    pub(crate) async fn run_direct<W, E, S>(
        mut self,
        mut ws: W,
        direct: Arc<Direct<S>>,
    ) -> Option<W>
    where
        W: Stream<Item = Result<Message, E>> + Sink<Message> + Unpin,
        E: fmt::Display,
        <W as Sink<Message>>::Error: fmt::Display,
        S: RawSocket,
    {
        let session = self.session;
        {
            // Under the hub's lock, so no frame of a drain slips in between: what was queued
            // before the socket was open goes first, then the hub writes by itself.
            let mut hub = self.server.lock();
            let outlet: Arc<dyn DirectOutlet> = direct.clone();
            let mut written = 0;
            while let Ok(bytes) = self.frames.try_recv() {
                written += outlet.send(direct::frame(&bytes), bytes.len());
            }
            // Already closed (at the handshake, say): its close waits in `close`.
            if let Some(slot) = hub.outlets.get_mut(&session) {
                slot.direct = Some(outlet);
            }
            if written > 0 {
                let now = hub.now();
                hub.driver.handle_sent(now, session, written);
                hub.drain();
            }
        }
        loop {
            let step = core::future::poll_fn(|cx| self.poll_direct(cx, &mut ws, &direct)).await;
            if self.step(step, &mut ws) {
                return self.lingers.then_some(ws);
            }
        }
    }

    fn poll_direct<W, E, S>(
        &mut self,
        cx: &mut Context<'_>,
        ws: &mut W,
        direct: &Direct<S>,
    ) -> Poll<Step>
    where
        W: Stream<Item = Result<Message, E>> + Unpin,
        E: fmt::Display,
        S: RawSocket,
    {
        direct.register(cx);
        // A close goes out behind the frames already queued, or is dropped with them when
        // the socket takes nothing (a slow consumer resumes from its cursor).
        if let Poll::Ready(Some((code, reason))) = self.close.poll_next_unpin(cx) {
            return Poll::Ready(Step::Close(code, reason));
        }
        match direct.poll_drain(cx) {
            Poll::Ready(Ok(0)) | Poll::Pending => {}
            Poll::Ready(Ok(n)) => return Poll::Ready(Step::Sent(n)),
            Poll::Ready(Err(e)) => return Poll::Ready(Step::Gone(e)),
        }
        match ws.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(message))) => Poll::Ready(Step::Message(message)),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Step::Gone(e.to_string())),
            Poll::Ready(None) => Poll::Ready(Step::Gone("connection closed".to_owned())),
            Poll::Pending => match direct.take_unreported() {
                0 => Poll::Pending,
                n => Poll::Ready(Step::Sent(n)),
            },
        }
    }
}

impl Drop for AcceptedSession {
    fn drop(&mut self) {
        // Ran to its end, dropped mid-way, or never run: the session is over either way.
        self.server.closed(self.session);
    }
}

/// What a [`TimerTask`] drives: a state machine behind the adapter's lock, with its clock.
pub(crate) trait Timed {
    /// Arms the next deadline of the state machine and gives it on the runtime's clock.
    fn arm(&mut self) -> Option<std::time::Instant>;
    /// Runs the state machine's timers due now and sends what they produced.
    fn fire(&mut self);
}

impl Timed for Shared {
    fn arm(&mut self) -> Option<std::time::Instant> {
        self.armed = self.driver.poll_timeout();
        self.armed.map(|at| self.clock.to_std(at))
    }

    fn fire(&mut self) {
        let now = self.now();
        self.driver.handle_timeout(now);
        self.drain();
    }
}

/// The timer task: sleeps until the state machine's next deadline (re-armed when an input
/// brings it forward), runs `handle_timeout`, and ends when the server is dropped. One for
/// the sync server ([`Shared`]) and the OT endpoint's alike.
pub(crate) struct TimerTask<T = Shared> {
    pub(crate) shared: std::sync::Weak<Mutex<T>>,
    pub(crate) wake: Pin<Box<async_channel::Receiver<()>>>,
}

impl<T: Timed> TimerTask<T> {
    pub(crate) async fn run<F, S>(mut self, sleep_until: F)
    where
        F: Fn(std::time::Instant) -> S,
        S: core::future::Future<Output = ()> + Unpin,
    {
        loop {
            let deadline = {
                let Some(shared) = self.shared.upgrade() else {
                    return;
                };
                let mut shared = shared.lock().unwrap_or_else(|e| e.into_inner());
                shared.arm()
            };
            let mut sleep = deadline.map(&sleep_until);
            let woken = core::future::poll_fn(|cx| {
                if let Poll::Ready(r) = self.wake.poll_next_unpin(cx) {
                    return Poll::Ready(r.is_some());
                }
                match sleep.as_mut() {
                    Some(s) => Pin::new(s).poll(cx).map(|()| true),
                    None => Poll::Pending,
                }
            })
            .await;
            if !woken {
                return; // every sender is gone: the server was dropped
            }
            let Some(shared) = self.shared.upgrade() else {
                return;
            };
            shared.lock().unwrap_or_else(|e| e.into_inner()).fire();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::future::Future;
    use syncmux::Server;
    use syncmux::ServerConfig;
    use syncmux::{MemoryStore, StoreConfig};

    /// A server on a `MemoryStore` with `config`, and its timer task (kept, never run).
    fn memory_server(config: ServerConfig) -> (SyncServer, TimerTask) {
        let driver = Driver::new(
            Server::new(config).expect("valid config"),
            MemoryStore::new(StoreConfig::default()),
        );
        SyncServer::new(driver, ServerOptions::default())
    }

    /// The one rule for a slow consumer is the state machine's outbound byte budget: 2000
    /// small frames under it stay queued (the adapter used to close at 1024 frames, whatever
    /// their size), and the frame that goes over it closes the session with 4503.
    #[test]
    fn small_frames_are_bounded_by_the_outbound_byte_budget_alone() {
        let mut config = ServerConfig::default();
        config.rate_limit_burst = 0;
        config.max_outbound_bytes = 64 * 1024;
        // No runtime: the timer task never runs and the session's task never drains.
        let (server, _timer) = memory_server(config);
        let accepted = server
            .handshake(&Handshake::new("/", "node_id=slow"))
            .expect("accepted");
        let session = accepted.session();
        let ping = |id: usize| Bytes::from(format!(r#"{{"type":"ping","id":"{id}"}}"#));
        for id in 0..2000 {
            server.input(|d, now| d.handle_message(now, session, ping(id)));
        }
        assert!(accepted.close.is_empty(), "closed under the byte budget");
        assert_eq!(accepted.frames.len(), 2000);
        let queued = server.with_driver(|d, _| d.server().outbound_bytes(session));
        assert!(queued.is_some_and(|b| b < 64 * 1024), "{queued:?}");
        let mut id = 2000;
        while accepted.close.is_empty() {
            server.input(|d, now| d.handle_message(now, session, ping(id)));
            id += 1;
            assert!(id < 10_000, "never closed");
        }
        let (code, _) = accepted.close.try_recv().expect("closed");
        assert_eq!(code, CloseCode::SLOW_CONSUMER);
        assert_eq!(server.session_count(), 0);
        assert_eq!(server.outlet_count(), 0);
    }

    /// A socket that takes nothing and says nothing: a peer that stopped reading.
    struct Stuck;

    impl Stream for Stuck {
        type Item = Result<Message, String>;
        fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            Poll::Pending
        }
    }

    impl Sink<Message> for Stuck {
        type Error = String;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), String>> {
            Poll::Pending
        }
        fn start_send(self: Pin<&mut Self>, _: Message) -> Result<(), String> {
            Err("not ready".to_owned())
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), String>> {
            Poll::Pending
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), String>> {
            Poll::Pending
        }
    }

    /// A socket that takes everything and records each write's first buffer.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(usize, Vec<u8>)>>);

    impl RawSocket for Arc<Recorder> {
        fn try_write_vectored(&self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
            let mut writes = self.0.lock().unwrap();
            let bytes = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            writes.push((bufs[0].as_ptr() as usize, bytes));
            Ok(bufs.iter().map(|b| b.len()).sum())
        }
        fn poll_write_ready(&self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A broadcast reaches every subscriber's socket from the hub's drain, without their
    /// tasks running, as one shared frame buffer (framed once, whatever the number of
    /// recipients), and is reported written at once: past one chunk of the drain's writes
    /// too.
    #[test]
    fn the_hub_writes_one_shared_frame_to_every_subscriber() {
        let (server, _timer) = memory_server(ServerConfig::default());
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        let subscribe = br#"{"type":"subscribe","id":"s","payload":{"tables":["t"]}}"#;
        let mut subscribers = Vec::new();
        for i in 0..DIRECT_CHUNK + 5 {
            let accepted = server
                .handshake(&Handshake::new("/", format!("node_id=s{i}")))
                .expect("accepted");
            let session = accepted.session();
            server.message(session, Bytes::from_static(subscribe));
            let recorder = Arc::new(Recorder::default());
            let direct = Arc::new(Direct::new(recorder.clone()));
            let mut run = Box::pin(accepted.run_direct(Stuck, direct));
            assert!(run.as_mut().poll(&mut cx).is_pending());
            let ack = recorder.0.lock().unwrap().last().map(|w| w.1.clone());
            let ack = ack.unwrap_or_default();
            assert!(
                ack.windows(5).any(|w| w == b"\"ack\""),
                "the ack went out first"
            );
            subscribers.push((session, recorder, run));
        }
        let pusher = server
            .handshake(&Handshake::new("/", "node_id=p"))
            .expect("accepted");
        let push = br#"{"type":"push_request","id":"p","payload":{"node_id":"p","changes":[{"table":"t","pk":"r","field":"f","crdt_type":"lww","hlc":{"ts":1,"c":0,"node":"p"},"node_id":"p","value":1}]}}"#;
        // No subscriber's task runs from here on.
        server.message(pusher.session(), Bytes::from_static(push));
        let mut frames = Vec::new();
        for (session, recorder, _run) in &subscribers {
            let writes = recorder.0.lock().unwrap();
            assert_eq!(writes.len(), 2, "the ack, then the change");
            let (ptr, bytes) = writes[1].clone();
            assert_eq!(bytes[0], 0x81, "a final text frame");
            assert!(bytes.windows(8).any(|w| w == b"\"change\""));
            frames.push(ptr);
            let queued = server.with_driver(|d, _| d.server().outbound_bytes(*session));
            assert_eq!(queued, Some(0), "reported written");
        }
        assert!(
            frames.iter().all(|&p| p == frames[0]),
            "one buffer for all: {frames:?}"
        );
    }

    /// On Linux the drain's chunks of direct frames leave as io_uring submissions, one per
    /// chunk: a push to more subscribers than a chunk holds is two submissions, and every
    /// subscriber's socket gets the change (skipped where this kernel has no io_uring).
    #[cfg(all(feature = "tokio", target_os = "linux"))]
    #[test]
    fn a_drain_sends_one_submission_per_chunk() {
        use crate::uring::testing::{pair, read_all};
        let (server, _timer) = memory_server(ServerConfig::default());
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        let subscribe = br#"{"type":"subscribe","id":"s","payload":{"tables":["t"]}}"#;
        let mut subscribers = Vec::new();
        for i in 0..DIRECT_CHUNK + 5 {
            let accepted = server
                .handshake(&Handshake::new("/", format!("node_id=s{i}")))
                .expect("accepted");
            server.message(accepted.session(), Bytes::from_static(subscribe));
            let (ours, mut peer) = pair();
            let mut run = Box::pin(accepted.run_direct(Stuck, Arc::new(Direct::new(ours))));
            assert!(run.as_mut().poll(&mut cx).is_pending());
            assert!(!read_all(&mut peer).is_empty(), "the ack");
            subscribers.push((peer, run));
        }
        let before = server.lock().writer.submissions();
        if !server.lock().writer.has_ring() {
            crate::uring::testing::skipped();
            return;
        }
        let pusher = server
            .handshake(&Handshake::new("/", "node_id=p"))
            .expect("accepted");
        let push = br#"{"type":"push_request","id":"p","payload":{"node_id":"p","changes":[{"table":"t","pk":"r","field":"f","crdt_type":"lww","hlc":{"ts":1,"c":0,"node":"p"},"node_id":"p","value":1}]}}"#;
        server.message(pusher.session(), Bytes::from_static(push));
        assert_eq!(server.lock().writer.submissions() - before, 2, "two chunks");
        for (peer, _run) in &mut subscribers {
            let got = read_all(peer);
            assert!(got.windows(8).any(|w| w == b"\"change\""));
        }
    }

    /// A replay larger than the outbound bound reaches a direct socket whole, and its ack
    /// after it, with no input but the subscribe: each write the hub reports lets the next
    /// frames of the paced replay in, and the same drain writes them.
    #[test]
    fn a_paced_replay_goes_on_as_the_hub_writes_it() {
        let mut config = ServerConfig::default();
        config.max_outbound_bytes = 2_000;
        config.max_changes_per_frame = 1;
        config.rate_limit_burst = 0;
        let (server, _timer) = memory_server(config);
        let pusher = server
            .handshake(&Handshake::new("/", "node_id=p"))
            .expect("accepted");
        let value = "x".repeat(400);
        let changes: Vec<String> = (0..30)
            .map(|k| {
                format!(
                    r#"{{"table":"t","pk":"r{k}","field":"f","crdt_type":"lww","hlc":{{"ts":{},"c":0,"node":"p"}},"node_id":"p","value":"{value}"}}"#,
                    k + 1
                )
            })
            .collect();
        let push = format!(
            r#"{{"type":"push_request","id":"p","payload":{{"node_id":"p","changes":[{}]}}}}"#,
            changes.join(",")
        );
        server.message(pusher.session(), Bytes::from(push));
        let accepted = server
            .handshake(&Handshake::new("/", "node_id=s"))
            .expect("accepted");
        let session = accepted.session();
        let recorder = Arc::new(Recorder::default());
        let direct = Arc::new(Direct::new(recorder.clone()));
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        let mut run = Box::pin(accepted.run_direct(Stuck, direct));
        assert!(run.as_mut().poll(&mut cx).is_pending());
        let subscribe = br#"{"type":"subscribe","id":"s","payload":{"tables":["t"],"since":{"ts":0,"c":0,"node":""}}}"#;
        server.message(session, Bytes::from_static(subscribe));
        let writes = recorder.0.lock().unwrap();
        let changes = writes
            .iter()
            .filter(|(_, w)| w.windows(8).any(|x| x == b"\"change\""))
            .count();
        assert_eq!(changes, 30, "the whole replay, over 2 000 bytes at a time");
        let last = &writes.last().expect("written").1;
        assert!(last.windows(5).any(|x| x == b"\"ack\""), "then the ack");
    }

    /// An outlet is found only by its own session: a slot reused by a later session (a new
    /// generation) replaces the earlier one's outlet, which no lookup finds any more.
    #[test]
    fn outlets_are_found_by_session_generation_and_all() {
        let outlet = || Outlet {
            frames: async_channel::unbounded().0,
            close: async_channel::bounded(1).0,
            direct: None,
        };
        let first = SessionId::from_u64(3 << 32);
        let later = SessionId::from_u64((3 << 32) | 1);
        let other = SessionId::from_u64(0);
        let mut outlets = Outlets::default();
        assert!(outlets.get(&first).is_none());
        outlets.insert(first, outlet());
        outlets.insert(other, outlet());
        assert_eq!(outlets.len(), 2);
        assert!(outlets.get(&first).is_some());
        assert!(outlets.get(&later).is_none(), "another generation");
        outlets.insert(later, outlet());
        assert_eq!(outlets.len(), 2, "replaced, not added");
        assert!(outlets.get(&first).is_none());
        assert!(outlets.remove(&first).is_none());
        assert!(outlets.get_mut(&later).is_some());
        assert!(outlets.remove(&later).is_some());
        assert!(outlets.remove(&later).is_none());
        assert_eq!(outlets.len(), 1);
    }

    /// A session closed while its peer does not read ends its task at once (it does not
    /// wait forever to send the close frame).
    #[test]
    fn a_session_closed_on_a_stuck_socket_ends() {
        let (server, _timer) = memory_server(ServerConfig::default());
        let accepted = server
            .handshake(&Handshake::new("/", "node_id=stuck"))
            .expect("accepted");
        let session = accepted.session();
        let ping = Bytes::from_static(br#"{"type":"ping","id":"1"}"#);
        server.input(|d, now| d.handle_message(now, session, ping));
        let mut run = Box::pin(accepted.run(Stuck));
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        assert!(
            run.as_mut().poll(&mut cx).is_pending(),
            "the pong cannot go out"
        );
        server.shutdown();
        assert!(run.as_mut().poll(&mut cx).is_ready(), "the task ended");
        assert_eq!(server.session_count(), 0);
    }
}
