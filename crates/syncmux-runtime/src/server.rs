//! The sync profile's endpoint: the [`Driver`] as the [hub](crate::hub)'s machine, with the
//! link to its backend; and what both endpoints share before a connection is a session
//! (the options and the [`Gate`]).

use core::time::Duration;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;

use crate::backend::{Backend, Link, Served, Spawn, Work};
use crate::clock::Clock;
use crate::common;
use crate::hub::{Accepted, Hub, Machine, Rejection, Shared, TimerTask, Transmit};
use crate::metrics;
use crate::runtime::Binding;
use syncmux::payload::Cursor;
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

/// What a server handle shares with its accept paths and session tasks, alike for both
/// endpoints (the sync server's and the OT one's): the shutdown signal, the options, the
/// handshake slots, the WebSocket layer's read limit and the count of running session tasks.
#[derive(Clone, Debug)]
pub(crate) struct Gate {
    /// Closed on shutdown: accept loops stop.
    stop: async_channel::Receiver<()>,
    options: Arc<ServerOptions>,
    /// Handshakes in progress, a permit each; `None` without a bound.
    handshakes: Option<Arc<async_lock::Semaphore>>,
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
            handshakes: (options.max_handshakes > 0)
                .then(|| Arc::new(async_lock::Semaphore::new(options.max_handshakes))),
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
        match &self.handshakes {
            None => HandshakeSlot { _permit: None },
            Some(slots) => HandshakeSlot {
                _permit: Some(slots.acquire_arc().await),
            },
        }
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

/// One handshake slot, given back when dropped.
pub struct HandshakeSlot {
    _permit: Option<async_lock::SemaphoreGuardArc>,
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

/// A running sync server: cheap to clone, shared by the accept loop, the sessions and the
/// application. Made by `Runtime::start` or `Runtime::start_with_backend`. What both
/// endpoints do (`handshake`, `shutdown`, `drained`, the counts) is [`Hub`]'s.
pub type SyncServer = Hub<SyncMachine>;

/// A handshake the sync server accepted: answer the upgrade selecting
/// [`protocol`](Accepted::protocol), then [`run`](Accepted::run) the session on the
/// upgraded socket. Dropped without running, the session is closed. See [`Accepted`].
pub type AcceptedSession = Accepted<SyncMachine>;

/// The sync profile as the hub drives it: the driver (with its store), and the link to an
/// async backend answering its store-facing events (`None`: the driver's store answers them
/// inline).
pub struct SyncMachine {
    driver: Driver,
    backend: Option<Link>,
    /// The store's work before the last message, and how long the driver took with it:
    /// recorded once its answers were polled (counted as they are).
    timed: Option<(metrics::StoreWork, core::time::Duration)>,
    /// The hub's clock.
    clock: Clock,
}

impl Machine for SyncMachine {
    const NAME: &'static str = "SyncServer";
    const BATCHES: bool = false;
    type Session = SessionId;
    /// The node id and the selected subprotocol.
    type Accept = (String, Option<String>);

    fn index(session: SessionId) -> usize {
        session.index()
    }

    fn handshake(
        &mut self,
        now: Instant,
        handshake: &Handshake,
    ) -> Result<(SessionId, Self::Accept), Rejection> {
        let outcome = match self.driver.handle_handshake(now, handshake) {
            HandshakeOutcome::Accept {
                session,
                node_id,
                protocol,
            } => Ok((session, (node_id, protocol))),
            HandshakeOutcome::Reject { status, reason } => Err(Rejection { status, reason }),
        };
        metrics::handshake(
            handshake.transport,
            outcome.as_ref().err().map(|r| r.status),
        );
        outcome
    }

    fn protocol((_, protocol): &Self::Accept) -> Option<&str> {
        protocol.as_deref()
    }

    /// Timed: the driver answers pulls, pushes and replays inside the input, so its
    /// duration is the store's time (see [`STORE_SECONDS`](metrics::STORE_SECONDS)).
    fn message(&mut self, now: Instant, session: SessionId, bytes: Bytes) {
        let before = metrics::StoreWork::of(self.driver.server(), session);
        self.driver.handle_message(now, session, bytes);
        let took = self.clock.now().saturating_duration_since(now);
        self.timed = before.map(|before| (before, took));
    }

    fn binary(&mut self, now: Instant, session: SessionId, bytes: Bytes) {
        self.driver.handle_binary(now, session, bytes.len());
    }

    /// The sync profile's keepalive is its own frames; tungstenite answers pings.
    fn pong(&mut self, _: Instant, _: SessionId) {}

    fn sent(&mut self, now: Instant, session: SessionId, bytes: usize) {
        self.driver.handle_sent(now, session, bytes);
    }

    fn disconnected(&mut self, now: Instant, session: SessionId) {
        self.driver.handle_disconnected(now, session);
    }

    fn timeout(&mut self, now: Instant) {
        self.driver.handle_timeout(now);
    }

    fn shutdown(&mut self, now: Instant) {
        self.driver.shutdown(now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.driver.poll_timeout()
    }

    fn poll_transmit(&mut self) -> Option<Transmit<SessionId>> {
        Some(match self.driver.poll_transmit()? {
            ServerTransmit::Frame { session, bytes } => Transmit::Frame(session, bytes),
            ServerTransmit::Close {
                session,
                code,
                reason,
            } => Transmit::Close(session, code, reason),
        })
    }

    fn events(&mut self, clock: &Clock) -> bool {
        if let Some((before, took)) = self.timed.take() {
            before.record_until(self.driver.server(), took);
        }
        let mut again = false;
        while let Some(event) = self.driver.poll_event() {
            match event {
                ServerEvent::SessionOpened { session, node_id } => {
                    tracing::info!(%session, node_id, "session opened");
                }
                ServerEvent::SessionClosed {
                    session,
                    node_id,
                    code,
                } => {
                    let code = code.map(|c| c.0);
                    tracing::info!(%session, node_id, ?code, "session closed");
                }
                other => match &mut self.backend {
                    Some(link) if Link::wants(&other) => {
                        again |= link.dispatch(&mut self.driver, clock.now(), other);
                    }
                    _ => tracing::debug!(?other, "server event"),
                },
            }
        }
        again
    }

    fn session_count(&self) -> usize {
        self.driver.server().session_count()
    }
}

/// What the backend's tasks do to the server, under its lock.
impl Served for Mutex<Shared<SyncMachine>> {
    fn apply(&self, followed: Option<Cursor>, work: Option<Work<'_>>) {
        let mut shared = self.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(position), Some(link)) = (followed, &mut shared.machine.backend) {
            link.set_followed(position);
        }
        if let Some(work) = work {
            shared.apply(|m, now| work(&mut m.driver, now));
        }
    }

    fn announce(&self) {
        let shared = self.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(link) = &shared.machine.backend {
            for change in shared.machine.driver.server().shared_state() {
                link.dispatch_change(change);
            }
        }
    }
}

impl SyncServer {
    pub(crate) fn new(
        mut driver: Driver,
        options: ServerOptions,
    ) -> (SyncServer, TimerTask<SyncMachine>) {
        // Every write is reported (`handle_sent`), so a socket that stops taking bytes makes
        // its session a slow consumer rather than an unbounded buffer.
        driver.server_mut().report_writes();
        let clock = Clock::new();
        // Presence `updated_at` is wall time.
        driver
            .server_mut()
            .set_wall_clock(clock.now(), clock.unix_millis());
        let max_frame_len = driver.server().config().max_frame_len;
        let machine = SyncMachine {
            driver,
            backend: None,
            timed: None,
            clock,
        };
        Hub::with_machine(machine, clock, options, max_frame_len)
    }

    /// A server whose pulls, pushes and replays `backend` answers (see
    /// [`Backend`](crate::Backend)), its tasks spawned with `spawn`.
    pub(crate) fn with_backend(
        server: syncmux::Server,
        backend: Arc<dyn Backend>,
        spawn: Spawn,
        options: ServerOptions,
    ) -> (SyncServer, TimerTask<SyncMachine>) {
        let (server, timer) = SyncServer::new(Driver::deferring(server), options);
        let served: Weak<dyn Served> = Arc::downgrade(server.shared()) as _;
        let (link, tasks) = Link::new(backend, spawn, served);
        {
            let mut shared = server.lock();
            if link.shares_presence() {
                shared.machine.driver.server_mut().share_presence();
            }
            shared.machine.backend = Some(link);
        }
        for task in tasks {
            spawn(task);
        }
        (server, timer)
    }

    /// A server around `driver` with its timer task running on `R`.
    pub(crate) fn start<R: Binding>(driver: Driver, options: ServerOptions) -> SyncServer {
        Hub::run_on::<R>(SyncServer::new(driver, options))
    }

    /// A server answered by `backend`, its timer task and the backend's tasks on `R`.
    pub(crate) fn start_with_backend<R: Binding>(
        server: syncmux::Server,
        backend: Arc<dyn Backend>,
        options: ServerOptions,
    ) -> SyncServer {
        Hub::run_on::<R>(SyncServer::with_backend(server, backend, R::spawn, options))
    }

    /// The state machine's counters over every transport (a copy): see [`ServerStats`].
    pub fn stats(&self) -> ServerStats {
        self.lock().machine.driver.server().stats()
    }

    /// Copies the state machine's counters and the open sessions into the [`metrics`]
    /// facade (see [`metrics`](crate::metrics) for every metric); an exporter calls
    /// it before it renders. The other metrics are recorded as they happen.
    pub fn publish_metrics(&self) {
        let by_transport: Vec<_> = {
            let hub = self.lock();
            let stats = hub.machine.driver.server().stats_by_transport();
            stats
                .map(|(transport, stats)| (transport, stats.clone()))
                .collect()
        };
        metrics::publish(&by_transport);
    }

    /// Runs `f` on the driver (for metrics, or the store), then hands its outputs out.
    pub fn with_driver<T>(&self, f: impl FnOnce(&mut Driver, Instant) -> T) -> T {
        self.input(|m, now| f(&mut m.driver, now))
    }
}

impl AcceptedSession {
    /// Its node id.
    pub fn node_id(&self) -> &str {
        &self.accept().0
    }

    /// The subprotocol to select in the upgrade response (`Sec-WebSocket-Protocol`).
    pub fn protocol(&self) -> Option<&str> {
        SyncMachine::protocol(self.accept())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::direct::{Direct, RawSocket};
    use crate::hub::testing::{Stuck, Writes};
    use crate::hub::DIRECT_CHUNK;
    use core::future::Future;
    use core::pin::Pin;
    use core::task::Context;
    use syncmux::wire::CloseCode;
    use syncmux::Server;
    use syncmux::ServerConfig;
    use syncmux::{MemoryStore, StoreConfig};

    /// A text frame from `session`.
    fn message(server: &SyncServer, session: SessionId, bytes: Bytes) {
        server.input(|m, now| m.message(now, session, bytes));
    }

    /// A subscriber of table `t` whose task runs with the hub writing to `socket`, polled
    /// once: its ack is out.
    fn direct_subscriber<S: RawSocket>(
        server: &SyncServer,
        i: usize,
        socket: S,
    ) -> (SessionId, Pin<Box<impl Future>>) {
        let accepted = server
            .handshake(&Handshake::new("/", format!("node_id=s{i}")))
            .expect("accepted");
        let session = accepted.session();
        let subscribe = br#"{"type":"subscribe","id":"s","payload":{"tables":["t"]}}"#;
        message(server, session, Bytes::from_static(subscribe));
        let mut run =
            Box::pin(accepted.run_direct(Stuck::default(), Arc::new(Direct::new(socket))));
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        assert!(run.as_mut().poll(&mut cx).is_pending());
        (session, run)
    }

    /// A session that pushes one change to table `t`.
    fn push_one_change(server: &SyncServer) {
        let pusher = server
            .handshake(&Handshake::new("/", "node_id=p"))
            .expect("accepted");
        let push = br#"{"type":"push_request","id":"p","payload":{"node_id":"p","changes":[{"table":"t","pk":"r","field":"f","crdt_type":"lww","hlc":{"ts":1,"c":0,"node":"p"},"node_id":"p","value":1}]}}"#;
        message(server, pusher.session(), Bytes::from_static(push));
    }

    /// A server on a `MemoryStore` with `config`, and its timer task (kept, never run).
    fn memory_server(config: ServerConfig) -> (SyncServer, TimerTask<SyncMachine>) {
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
            server.with_driver(|d, now| d.handle_message(now, session, ping(id)));
        }
        assert!(!accepted.ended(), "closed under the byte budget");
        assert_eq!(accepted.queued(), 2000);
        let queued = server.with_driver(|d, _| d.server().outbound_bytes(session));
        assert!(queued.is_some_and(|b| b < 64 * 1024), "{queued:?}");
        let mut id = 2000;
        while !accepted.ended() {
            server.with_driver(|d, now| d.handle_message(now, session, ping(id)));
            id += 1;
            assert!(id < 10_000, "never closed");
        }
        assert_eq!(accepted.closed_with(), Some(CloseCode::SLOW_CONSUMER));
        assert_eq!(server.session_count(), 0);
        assert_eq!(server.outlet_count(), 0);
    }

    /// A broadcast reaches every subscriber's socket from the hub's drain, without their
    /// tasks running, as one shared frame buffer (framed once, whatever the number of
    /// recipients), and is reported written at once: past one chunk of the drain's writes
    /// too.
    #[test]
    fn the_hub_writes_one_shared_frame_to_every_subscriber() {
        let (server, _timer) = memory_server(ServerConfig::default());
        let mut subscribers = Vec::new();
        for i in 0..DIRECT_CHUNK + 5 {
            let recorder = Writes::default();
            let (session, run) = direct_subscriber(&server, i, recorder.clone());
            let ack = recorder.0.lock().unwrap().last().map(|w| w.1.clone());
            let ack = ack.unwrap_or_default();
            assert!(
                ack.windows(5).any(|w| w == b"\"ack\""),
                "the ack went out first"
            );
            subscribers.push((session, recorder, run));
        }
        // No subscriber's task runs from here on.
        push_one_change(&server);
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
        let mut subscribers = Vec::new();
        for i in 0..DIRECT_CHUNK + 5 {
            let (ours, mut peer) = pair();
            let (_, run) = direct_subscriber(&server, i, ours);
            assert!(!read_all(&mut peer).is_empty(), "the ack");
            subscribers.push((peer, run));
        }
        let before = server.lock().writer.submissions();
        if !server.lock().writer.has_ring() {
            crate::uring::testing::skipped();
            return;
        }
        push_one_change(&server);
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
        message(&server, pusher.session(), Bytes::from(push));
        let accepted = server
            .handshake(&Handshake::new("/", "node_id=s"))
            .expect("accepted");
        let session = accepted.session();
        let recorder = Writes::default();
        let direct = Arc::new(Direct::new(recorder.clone()));
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        let mut run = Box::pin(accepted.run_direct(Stuck::default(), direct));
        assert!(run.as_mut().poll(&mut cx).is_pending());
        let subscribe = br#"{"type":"subscribe","id":"s","payload":{"tables":["t"],"since":{"ts":0,"c":0,"node":""}}}"#;
        message(&server, session, Bytes::from_static(subscribe));
        let writes = recorder.0.lock().unwrap();
        let changes = writes
            .iter()
            .filter(|(_, w)| w.windows(8).any(|x| x == b"\"change\""))
            .count();
        assert_eq!(changes, 30, "the whole replay, over 2 000 bytes at a time");
        let last = &writes.last().expect("written").1;
        assert!(last.windows(5).any(|x| x == b"\"ack\""), "then the ack");
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
        server.with_driver(|d, now| d.handle_message(now, session, ping));
        let mut run = Box::pin(accepted.run(Stuck::default()));
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
