//! The hub, written once for both endpoints: a sans-IO server state machine (the sync
//! [`Driver`](syncmux::Driver) or the [`OtServer`](syncmux::ot::OtServer)) behind a lock, one
//! task per session, one timer task. The per-runtime parts are only the listener, the timer
//! and spawn ([`Binding`](crate::runtime::Binding)); the per-profile parts are a
//! [`Machine`]: how its inputs and outputs are named, and what it does with its events.
//!
//! Why a lock rather than a task owning the state machine: tungstenite decides the upgrade
//! inside a synchronous callback, and the state machine must decide it there (to reject with
//! the HTTP status before upgrading, and to select its subprotocol). The lock is held only
//! while one input runs and its outputs are handed out, never across an `.await`.
//!
//! Each output goes to its session's [`Outlet`]: through a queue to the session's task, which
//! writes it to its [`Transport`] (a WebSocket, or any stream of bytes in and frames out), so
//! a slow socket stalls nobody else; or, when the session's socket is a plain TCP socket the
//! hub may write itself ([`direct`](crate::direct)), straight to it, framed once per
//! broadcast. Bytes are reported written (`handle_sent`) only once they left, so every queued
//! frame counts against the state machine's outbound bound, the one rule for slow consumers.
//!
//! | state machine | transport |
//! |---|---|
//! | [`Transmit::Frame`] | a text frame, then `handle_sent` once flushed |
//! | [`Transmit::Ping`] | a WebSocket ping; its pong → `handle_pong` |
//! | [`Transmit::Close`] | the frames queued before it, then a close frame |
//! | [`Transmit::Terminate`] | dropped at once, without a closing handshake |
//!
//! Nothing outlives a session: its queues leave the hub when the state machine closes it or
//! when its [`Accepted`] is dropped (its task ended, whoever ended it).

use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll};
use std::cell::Cell;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::http::{HeaderValue, StatusCode};
use tungstenite::Message;

use crate::clock::Clock;
use crate::common;
use crate::direct::{Direct, DirectOutlet, Framer, RawSocket, Writer};
use crate::runtime::Binding;
use crate::server::{Gate, RunningGuard};
use crate::ServerOptions;
use syncmux::wire::CloseCode;
use syncmux::{Handshake, Instant};

/// A server state machine as the hub drives it: the sync profile's driver or the OT
/// profile's server. Sealed (the crate implements it for both).
pub trait Machine: Send + 'static {
    /// Names the endpoint in logs and `Debug` output.
    const NAME: &'static str;
    /// Whether the frames an input queues for a direct socket wait until the task that read
    /// it has yielded once ([`Shared::flush`]), so that the inputs one reactor poll made
    /// ready leave together, one write per socket (the OT profile, whose ops are small and
    /// many); otherwise the drain writes them at once, in chunks (the sync profile's
    /// fan-out, one io_uring submission per chunk).
    const BATCHES: bool;
    /// A session's id.
    type Session: Copy + Eq + fmt::Display + fmt::Debug + Send + Sync + 'static;
    /// What an accepted handshake tells besides the session (the sync profile's node id and
    /// subprotocol).
    type Accept: Send + 'static;

    /// The session's slot: ids are slot indices with a generation.
    fn index(session: Self::Session) -> usize;
    /// Decides a handshake.
    fn handshake(
        &mut self,
        now: Instant,
        handshake: &Handshake,
    ) -> Result<(Self::Session, Self::Accept), Rejection>;
    /// The subprotocol an accepted upgrade selects.
    fn protocol(accept: &Self::Accept) -> Option<&str>;
    /// A text message.
    fn message(&mut self, now: Instant, session: Self::Session, bytes: Bytes);
    /// A binary message.
    fn binary(&mut self, now: Instant, session: Self::Session, bytes: Bytes);
    /// A pong to the machine's ping.
    fn pong(&mut self, now: Instant, session: Self::Session);
    /// `bytes` of the session's frames left.
    fn sent(&mut self, now: Instant, session: Self::Session, bytes: usize);
    /// The session's socket is gone.
    fn disconnected(&mut self, now: Instant, session: Self::Session);
    /// The machine's timers due at `now`.
    fn timeout(&mut self, now: Instant);
    /// Closes every session (1001) and refuses new ones.
    fn shutdown(&mut self, now: Instant);
    /// The machine's next deadline.
    fn poll_timeout(&self) -> Option<Instant>;
    /// The machine's next output for a session.
    fn poll_transmit(&mut self) -> Option<Transmit<Self::Session>>;
    /// Acts on the machine's events; `true` when that made more outputs (a backend answered
    /// at once).
    fn events(&mut self, clock: &Clock) -> bool;
    /// Sessions open (or closing).
    fn session_count(&self) -> usize;
}

/// What a [`Machine`] tells the hub to do with a session.
#[derive(Debug)]
pub enum Transmit<S> {
    /// Send a frame.
    Frame(S, Bytes),
    /// Send a WebSocket ping.
    Ping(S),
    /// Send a close frame after the frames queued before it.
    Close(S, CloseCode, String),
    /// Drop the connection at once.
    Terminate(S),
}

/// What a session's task is told to write.
pub(crate) enum Out {
    Frame(Bytes),
    Ping,
}

impl Out {
    /// The payload bytes it counts for against the outbound bound.
    pub(crate) fn len(&self) -> usize {
        match self {
            Out::Frame(bytes) => bytes.len(),
            Out::Ping => 0,
        }
    }
}

/// How a session ends, when the state machine ends it.
enum Ending {
    /// A close frame, after the frames queued before it.
    Close(CloseCode, String),
    /// Dropped at once.
    Terminate,
}

/// The queues of one session's task.
struct Outlet {
    out: async_channel::Sender<Out>,
    end: async_channel::Sender<Ending>,
    /// The session's socket, when the hub writes to it itself ([`direct`](crate::direct)):
    /// its frames skip `out` and its task.
    direct: Option<Arc<dyn DirectOutlet>>,
    /// Frames were queued on `direct` since the last [`Shared::flush`] (a `Cell`: set while
    /// the drain holds other outlets' sockets).
    dirty: Cell<bool>,
}

/// Each session's outlet at its session's slot index (slots are reused with a new
/// generation, which a lookup checks). The drain looks one up per delivered frame: an index
/// and a compare, where a `HashMap` hashed and probed (two cache misses per frame at 10 000
/// sessions).
struct Outlets<S> {
    slots: Vec<Option<(S, Outlet)>>,
    len: usize,
}

impl<S: Copy + Eq> Outlets<S> {
    fn new() -> Outlets<S> {
        Outlets {
            slots: Vec::new(),
            len: 0,
        }
    }

    fn get(&self, session: S, index: usize) -> Option<&Outlet> {
        match self.slots.get(index)? {
            Some((id, outlet)) if *id == session => Some(outlet),
            _ => None,
        }
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // tokio's direct path
    fn get_mut(&mut self, session: S, index: usize) -> Option<&mut Outlet> {
        match self.slots.get_mut(index)? {
            Some((id, outlet)) if *id == session => Some(outlet),
            _ => None,
        }
    }

    /// The session at slot `index`.
    fn at(&self, index: usize) -> Option<S> {
        self.slots.get(index)?.as_ref().map(|(id, _)| *id)
    }

    /// Puts `outlet` at `session`'s slot; an outlet left there by an earlier session of
    /// the slot (whose task has not ended yet) is dropped, which ends that task.
    fn insert(&mut self, session: S, index: usize, outlet: Outlet) {
        if self.slots.len() <= index {
            self.slots.resize_with(index + 1, || None);
        }
        if self.slots[index].replace((session, outlet)).is_none() {
            self.len += 1;
        }
    }

    fn remove(&mut self, session: S, index: usize) -> Option<Outlet> {
        let slot = self.slots.get_mut(index)?;
        if slot.as_ref().is_some_and(|(id, _)| *id == session) {
            self.len -= 1;
            return slot.take().map(|(_, outlet)| outlet);
        }
        None
    }
}

/// Frames written to direct sockets per pass of [`Shared::hand_out`]; one io_uring
/// submission on Linux, whose ring holds a chunk (`uring` asserts it).
pub(crate) const DIRECT_CHUNK: usize = 256;

/// What every task of one endpoint shares behind its lock: the state machine, the clock,
/// and each session's outlet.
pub(crate) struct Shared<M: Machine> {
    pub(crate) machine: M,
    clock: Clock,
    outlets: Outlets<M::Session>,
    /// The deadline the timer task sleeps until.
    armed: Option<Instant>,
    wake: async_channel::Sender<()>,
    stop: Option<async_channel::Sender<()>>,
    /// Writes the drain's chunks of direct frames (one io_uring submission each on Linux).
    pub(crate) writer: Writer,
    /// Sessions whose direct socket has frames queued for [`flush`](Self::flush).
    dirty: Vec<M::Session>,
    /// Frames the payloads handed out since the last flush, each once.
    framer: Framer,
}

impl<M: Machine> Shared<M> {
    pub(crate) fn now(&self) -> Instant {
        self.clock.now()
    }

    /// Runs `f` on the machine now, then hands its outputs out.
    pub(crate) fn apply<T>(&mut self, f: impl FnOnce(&mut M, Instant) -> T) -> T {
        let now = self.now();
        let out = f(&mut self.machine, now);
        self.drain();
        out
    }

    /// Hands every output of the last input out and writes the direct sockets.
    fn drain(&mut self) {
        self.hand_out();
        self.flush();
    }

    /// Hands every output of the last input to the sessions (see the module's table), acts
    /// on the machine's events, then re-arms the timer. A direct socket's frames leave at
    /// once in chunks, or wait for [`flush`](Self::flush) ([`Machine::BATCHES`]).
    fn hand_out(&mut self) {
        let mut now = None;
        let Shared {
            machine,
            outlets,
            clock,
            writer,
            dirty,
            framer,
            ..
        } = self;
        // Frames for direct sockets go out in chunks, in three passes: take the chunk's
        // frames from the state machine, write them, report what left. A write's syscall
        // evicts the session's state from the cache, so interleaving the three per frame
        // paid a cache miss per frame in each pass; in tight loops the misses overlap. The
        // chunk's writes are one io_uring submission where there is one (`uring`), one
        // `send(2)` per frame otherwise.
        let mut written: Vec<(usize, usize)> = Vec::new();
        loop {
            let mut chunk: Vec<(usize, &dyn DirectOutlet, Bytes, usize)> = Vec::new();
            let pause = loop {
                let (session, out) = match machine.poll_transmit() {
                    Some(Transmit::Frame(session, bytes)) => (session, Out::Frame(bytes)),
                    Some(Transmit::Ping(session)) => (session, Out::Ping),
                    // The frames so far go first.
                    ending => break ending,
                };
                let index = M::index(session);
                let Some(outlet) = outlets.get(session, index) else {
                    continue;
                };
                let Some(direct) = &outlet.direct else {
                    // Unbounded, but every frame in it counts against the state machine's
                    // outbound bound until the task reports it written (pings are one per
                    // interval). Closed only once the task is gone, and the outlet with it.
                    let _ = outlet.out.try_send(out);
                    continue;
                };
                let len = out.len();
                let Some(framed) = direct.framed(framer, &out) else {
                    // Nothing to write: a frame that is no event counts as written, and a
                    // ping as answered (a stream finds a gone consumer by writing).
                    match out {
                        Out::Frame(_) => written.push((index, len)),
                        Out::Ping => machine.pong(*now.get_or_insert_with(|| clock.now()), session),
                    }
                    continue;
                };
                if M::BATCHES {
                    direct.queue(framed, len);
                    if !outlet.dirty.replace(true) {
                        dirty.push(session);
                    }
                } else {
                    chunk.push((index, &**direct, framed, len));
                    if chunk.len() == DIRECT_CHUNK {
                        break None;
                    }
                }
            };
            let full = chunk.len() == DIRECT_CHUNK;
            writer.write(chunk, &mut written);
            let reported = !written.is_empty();
            if reported {
                let now = *now.get_or_insert_with(|| clock.now());
                for (index, n) in written.drain(..) {
                    if let Some(session) = outlets.at(index) {
                        machine.sent(now, session, n);
                    }
                }
            }
            let (session, ending) = match pause {
                Some(Transmit::Close(session, code, reason)) => {
                    (session, Ending::Close(code, reason))
                }
                Some(Transmit::Terminate(session)) => (session, Ending::Terminate),
                // More frames wait, or the reports may have let more in (a replay paced by
                // the outbound bound goes on as its frames are written).
                _ if full || reported => continue,
                _ => break,
            };
            if let Some(outlet) = outlets.remove(session, M::index(session)) {
                // Capacity 1 and sent once: never full.
                let _ = outlet.end.try_send(ending);
            }
        }
        if self.machine.events(&self.clock) {
            // A backend answered at once: its frames go out now.
            return self.hand_out();
        }
        let next = self.machine.poll_timeout();
        if next != self.armed && (self.armed.is_none() || next < self.armed) {
            // Only an earlier deadline needs the timer task's attention; a later one is
            // picked up when the current one fires (a spurious timeout is a no-op).
            self.armed = next;
            let _ = self.wake.try_send(());
        }
    }

    /// Writes every direct socket that has frames queued, each in one write, and reports
    /// what left (which may let more out).
    fn flush(&mut self) {
        let mut now = None;
        while !self.dirty.is_empty() {
            let mut sent = false;
            for session in core::mem::take(&mut self.dirty) {
                let Some(outlet) = self.outlets.get(session, M::index(session)) else {
                    continue;
                };
                outlet.dirty.set(false);
                let n = outlet.direct.as_ref().map_or(0, |d| d.flush_queued());
                if n > 0 {
                    let now = *now.get_or_insert_with(|| self.clock.now());
                    self.machine.sent(now, session, n);
                    sent = true;
                }
            }
            if sent {
                self.hand_out();
            }
        }
        // The round is out: its payloads need not stay alive for the next one.
        self.framer = Framer::default();
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

/// A running endpoint: a server state machine behind a lock, the sessions' queues, and a
/// timer task. Cheap to clone, shared by the accept loop, the sessions and the application.
/// Its two kinds are [`SyncServer`](crate::SyncServer) (the sync profile's driver) and
/// [`OtServerHandle`](crate::OtServerHandle) (the OT profile's server); `Runtime::serve` and
/// `Runtime::accept` take either.
pub struct Hub<M: Machine> {
    shared: Arc<Mutex<Shared<M>>>,
    gate: Gate,
}

impl<M: Machine> Clone for Hub<M> {
    fn clone(&self) -> Hub<M> {
        Hub {
            shared: self.shared.clone(),
            gate: self.gate.clone(),
        }
    }
}

impl<M: Machine> fmt::Debug for Hub<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(M::NAME)
            .field("sessions", &self.session_count())
            .field("options", self.gate.options())
            .finish_non_exhaustive()
    }
}

impl<M: Machine> Hub<M> {
    /// A hub around `machine`, and its timer task (to spawn).
    pub(crate) fn with_machine(
        machine: M,
        clock: Clock,
        options: ServerOptions,
        max_frame_len: usize,
    ) -> (Hub<M>, TimerTask<M>) {
        let (wake_tx, wake_rx) = async_channel::bounded(1);
        let (gate, stop_tx) = Gate::new(options, max_frame_len);
        let shared = Shared {
            machine,
            clock,
            outlets: Outlets::new(),
            armed: None,
            wake: wake_tx,
            stop: Some(stop_tx),
            writer: Writer::default(),
            dirty: Vec::new(),
            framer: Framer::default(),
        };
        let hub = Hub {
            shared: Arc::new(Mutex::new(shared)),
            gate,
        };
        let timer = TimerTask {
            shared: Arc::downgrade(&hub.shared),
            wake: Box::pin(wake_rx),
        };
        (hub, timer)
    }

    /// The hub of `made`, with its timer task spawned on `R`.
    pub(crate) fn run_on<R: Binding>((hub, timer): (Hub<M>, TimerTask<M>)) -> Hub<M> {
        R::spawn(Box::pin(timer.run(R::sleep_until)));
        hub
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Shared<M>> {
        // A panic while holding the lock is a bug already reported; keep serving.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state behind the lock, for a backend's tasks to reach without keeping it alive.
    pub(crate) fn shared(&self) -> &Arc<Mutex<Shared<M>>> {
        &self.shared
    }

    /// The adapter's options.
    pub fn options(&self) -> &ServerOptions {
        self.gate.options()
    }

    /// What the accept paths share with this handle.
    pub(crate) fn gate(&self) -> &Gate {
        &self.gate
    }

    /// Completes once [`shutdown`](Self::shutdown) was called (accept loops select on it).
    pub async fn stopped(&self) {
        self.gate.stopped().await;
    }

    /// Decides a handshake (docs/protocol.md section 4 for the sync profile; `?token=` and
    /// the other checks of [`OtServer::handle_handshake`](syncmux::ot::OtServer::handle_handshake)
    /// for the OT one). On acceptance the session exists at once (its first frames, if any,
    /// are queued for it); [`run`](Accepted::run) it on its socket.
    pub fn handshake(&self, handshake: &Handshake) -> Result<Accepted<M>, Rejection> {
        let mut hub = self.lock();
        let now = hub.now();
        let accepted = hub
            .machine
            .handshake(now, handshake)
            .map(|(session, accept)| {
                // Bounded by the state machine's outbound bytes, not by the channel: a
                // bounded channel allocates (and touches) every slot up front; this one
                // grows in small blocks.
                let (out_tx, out) = async_channel::unbounded();
                let (end_tx, end) = async_channel::bounded(1);
                let outlet = Outlet {
                    out: out_tx,
                    end: end_tx,
                    direct: None,
                    dirty: Cell::new(false),
                };
                hub.outlets.insert(session, M::index(session), outlet);
                Accepted {
                    hub: self.clone(),
                    session,
                    accept,
                    out: Box::pin(out),
                    end: Box::pin(end),
                    closing: None,
                    unflushed: 0,
                    dirty: false,
                    deferred: false,
                    flush: None,
                    lingers: false,
                    _running: self.gate.running(),
                }
            });
        hub.drain();
        accepted
    }

    /// One request on a session of its own, for a transport of single requests (an HTTP
    /// `POST /sync/pull`, say): the handshake, `frame` in, and the first frame out that
    /// `answers` picks (the request's reply), given back; the session ends with it. `None`
    /// when the session ended first (the server closed it, or shut down). Bound the wait
    /// with a timeout of the runtime's: a backend answers when it answers.
    pub async fn exchange(
        &self,
        handshake: &Handshake,
        frame: Bytes,
        answers: impl FnMut(&Bytes) -> bool + Send + Unpin,
    ) -> Result<Option<Bytes>, Rejection> {
        let session = self.handshake(handshake)?;
        let (reply, answer) = futures_channel::oneshot::channel();
        let exchange = Exchange {
            frame: Some(frame),
            answers,
            reply: Some(reply),
        };
        drop(session.run_to_end(exchange).await);
        Ok(answer.await.ok())
    }

    /// Closes every session with 1001, refuses new handshakes (503) and stops the accept
    /// loops.
    pub fn shutdown(&self) {
        let mut hub = self.lock();
        hub.apply(|m, now| m.shutdown(now));
        hub.stop = None;
    }

    /// Sessions open (or closing), as the state machine counts them.
    pub fn session_count(&self) -> usize {
        self.lock().machine.session_count()
    }

    /// Sessions the adapter holds queues for. A session's queues go when the state machine
    /// closes it or when its task ends, so once every task has settled this is never above
    /// [`session_count`](Self::session_count): for metrics and leak checks.
    pub fn outlet_count(&self) -> usize {
        self.lock().outlets.len
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

    /// Runs `f` on the machine, then hands its outputs out.
    pub(crate) fn input<T>(&self, f: impl FnOnce(&mut M, Instant) -> T) -> T {
        self.lock().apply(f)
    }

    /// [`input`](Self::input), leaving the direct sockets' frames queued for a later
    /// [`flush`](Shared::flush).
    fn input_deferred(&self, f: impl FnOnce(&mut M, Instant)) {
        let mut hub = self.lock();
        let now = hub.now();
        f(&mut hub.machine, now);
        hub.hand_out();
    }

    /// The socket is gone, whoever ended it: the state machine forgets the session (a
    /// no-op if it already did) and so does the hub.
    fn closed(&self, session: M::Session) {
        let mut hub = self.lock();
        hub.outlets.remove(session, M::index(session));
        hub.apply(|m, now| m.disconnected(now, session));
    }

    /// Runs the state machine's decision inside tungstenite's upgrade callback: a rejection
    /// answers with its HTTP status before upgrading; an acceptance selects its subprotocol.
    #[allow(clippy::result_large_err)] // tungstenite's callback signature fixes the error type
    pub(crate) fn decide(
        &self,
        request: &Request,
        mut response: Response,
        accepted: &mut Option<Accepted<M>>,
    ) -> Result<Response, ErrorResponse> {
        match self.handshake(&common::handshake_of(request)) {
            Ok(session) => {
                let protocol = M::protocol(&session.accept);
                if let Some(value) = protocol.and_then(|p| HeaderValue::from_str(p).ok()) {
                    response
                        .headers_mut()
                        .insert("Sec-WebSocket-Protocol", value);
                }
                *accepted = Some(session);
                Ok(response)
            }
            Err(rejection) => {
                tracing::info!(
                    endpoint = M::NAME,
                    status = rejection.status,
                    reason = rejection.reason,
                    "handshake refused"
                );
                let mut error = ErrorResponse::new(Some(rejection.reason));
                *error.status_mut() = StatusCode::from_u16(rejection.status)
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                Err(error)
            }
        }
    }
}

/// What a session's transport read.
pub(crate) enum Read {
    Text(Bytes),
    Binary(Bytes),
    Pong,
    /// The peer closes.
    Close,
    /// Nothing for the state machine (a ping the transport answered itself).
    Nothing,
    /// The transport is gone (read error or end).
    Gone(String),
}

/// The seam between a session's task and its connection: bytes in, frames out. A
/// WebSocket is one transport (every `Stream + Sink` of tungstenite messages is one).
pub(crate) trait Transport: Unpin {
    /// The next thing read.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Read>;
    /// Ready to take a [`start_send`](Self::start_send).
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), String>>;
    /// Takes a frame or a ping to write.
    fn start_send(&mut self, out: Out) -> Result<(), String>;
    /// Writes what it took.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), String>>;
    /// Ends the connection without waiting: with the server's close frame (`true` if the
    /// transport took it at once), or answering the peer's close (`None`).
    fn close_now(&mut self, close: Option<(CloseCode, &str)>) -> bool;
}

impl<W, E> Transport for W
where
    W: Stream<Item = Result<Message, E>> + Sink<Message> + Unpin,
    E: fmt::Display,
    <W as Sink<Message>>::Error: fmt::Display,
{
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Read> {
        self.poll_next_unpin(cx).map(|read| match read {
            Some(Ok(Message::Text(text))) => Read::Text(Bytes::from(text)),
            Some(Ok(Message::Binary(data))) => Read::Binary(data),
            Some(Ok(Message::Pong(_))) => Read::Pong,
            Some(Ok(Message::Close(_))) => Read::Close,
            // tungstenite answers pings itself.
            Some(Ok(Message::Ping(_) | Message::Frame(_))) => Read::Nothing,
            Some(Err(e)) => Read::Gone(e.to_string()),
            None => Read::Gone("connection closed".to_owned()),
        })
    }

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        self.poll_ready_unpin(cx).map_err(|e| e.to_string())
    }

    fn start_send(&mut self, out: Out) -> Result<(), String> {
        let message = match out {
            Out::Frame(bytes) => common::text(bytes),
            Out::Ping => Message::Ping(Bytes::new()),
        };
        self.start_send_unpin(message).map_err(|e| e.to_string())
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        self.poll_flush_unpin(cx).map_err(|e| e.to_string())
    }

    fn close_now(&mut self, close: Option<(CloseCode, &str)>) -> bool {
        let sent = match close {
            Some((code, reason)) => {
                let close = common::close_message(code, reason);
                matches!(self.send(close).now_or_never(), Some(Ok(())))
            }
            None => true,
        };
        if sent {
            let _ = self.close().now_or_never();
        }
        sent && close.is_some()
    }
}

/// The transport of [`Hub::exchange`]: one frame in, and the reply out.
struct Exchange<F> {
    frame: Option<Bytes>,
    answers: F,
    /// Taken once the reply went out: the transport is then done.
    reply: Option<futures_channel::oneshot::Sender<Bytes>>,
}

impl<F: FnMut(&Bytes) -> bool + Unpin> Transport for Exchange<F> {
    fn poll_read(&mut self, _: &mut Context<'_>) -> Poll<Read> {
        match (self.frame.take(), &self.reply) {
            (Some(frame), _) => Poll::Ready(Read::Text(frame)),
            (None, None) => Poll::Ready(Read::Gone("answered".to_owned())),
            // Woken by the reply's write (a step of its own).
            (None, Some(_)) => Poll::Pending,
        }
    }

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), String>> {
        Poll::Ready(Ok(()))
    }

    fn start_send(&mut self, out: Out) -> Result<(), String> {
        if let Out::Frame(bytes) = out {
            if self.reply.is_some() && (self.answers)(&bytes) {
                if let Some(reply) = self.reply.take() {
                    let _ = reply.send(bytes);
                }
            }
        }
        Ok(())
    }

    fn poll_flush(&mut self, _: &mut Context<'_>) -> Poll<Result<(), String>> {
        Poll::Ready(Ok(()))
    }

    fn close_now(&mut self, _: Option<(CloseCode, &str)>) -> bool {
        false
    }
}

/// Where a direct session's task stands with the frames its reads produced
/// ([`Machine::BATCHES`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "tokio"), allow(dead_code))] // tokio's direct path
enum Flush {
    /// Nothing read since the last flush.
    Idle,
    /// Read, the frames queued: yield once, then flush.
    Owed,
    /// Yielded: flush at the next poll.
    Yielded,
}

/// One step of a session's task.
enum Step {
    Read(Read),
    /// Frame bytes written and flushed.
    Sent(usize),
    /// Close with this code, the frames before it written (or the socket stuck).
    Close(CloseCode, String),
    /// Drop the socket now.
    Terminate,
}

/// A handshake the state machine accepted: answer the upgrade (selecting the subprotocol
/// the sync profile's [`protocol`](crate::AcceptedSession::protocol) names), then
/// [`run`](Self::run) the session on the upgraded socket. Dropped without running, the
/// session is closed.
pub struct Accepted<M: Machine> {
    hub: Hub<M>,
    session: M::Session,
    accept: M::Accept,
    out: Pin<Box<async_channel::Receiver<Out>>>,
    end: Pin<Box<async_channel::Receiver<Ending>>>,
    /// The close received from the state machine, sent once the frames before it are.
    closing: Option<(CloseCode, String)>,
    /// Bytes of frames handed to the socket and not yet flushed.
    unflushed: usize,
    /// Something (a frame or a ping) was handed to the socket and not yet flushed.
    dirty: bool,
    /// Frames waited and the task yielded once before writing them.
    deferred: bool,
    /// On a direct socket of a batching machine: where the frames of the reads stand.
    flush: Option<Flush>,
    /// The task sent the state machine's close frame: the socket is worth reading a while
    /// longer (see `runtime::linger`).
    lingers: bool,
    /// Dropped after [`Drop for Accepted`](Accepted) released the session.
    _running: RunningGuard,
}

impl<M: Machine> fmt::Debug for Accepted<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Accepted")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl<M: Machine> Accepted<M> {
    /// The session.
    pub fn session(&self) -> M::Session {
        self.session
    }

    /// What the handshake told besides the session.
    pub(crate) fn accept(&self) -> &M::Accept {
        &self.accept
    }

    /// Hands the state machine a text message of the session's, as if its transport had
    /// read it: for a transport that opens with a request of its own (an SSE stream's
    /// subscribe) before the session runs on it.
    pub fn message(&self, bytes: Bytes) {
        let session = self.session;
        self.hub.input(|m, now| m.message(now, session, bytes));
    }

    /// The next frame the state machine sent the session, before it runs on a transport
    /// (that frame's transport then never sees it): reported written at once, as a
    /// transport would once it wrote it. `None` once the server closed the session.
    pub async fn next_frame(&mut self) -> Option<Bytes> {
        let session = self.session;
        loop {
            match self.out.next().await? {
                Out::Frame(bytes) => {
                    let n = bytes.len();
                    self.hub.input(|m, now| m.sent(now, session, n));
                    return Some(bytes);
                }
                // Nothing but its pong would have told the server more.
                Out::Ping => self.hub.input(|m, now| m.pong(now, session)),
            }
        }
    }

    /// Drives the session on its upgraded socket until it ends. Reads and writes in one
    /// task: frames are written as the socket takes them while reading and the timers go
    /// on. However it ends (or if this future is dropped), the session is released.
    pub async fn run<W, E>(self, ws: W)
    where
        W: Stream<Item = Result<Message, E>> + Sink<Message> + Unpin,
        E: fmt::Display,
        <W as Sink<Message>>::Error: fmt::Display,
    {
        drop(self.run_to_end(ws).await);
    }

    /// [`run`](Self::run) on any transport, giving it back when the session ended with the
    /// server's close frame sent on it, for the runtime to read a while longer.
    pub(crate) async fn run_to_end<T: Transport>(mut self, mut transport: T) -> Option<T> {
        loop {
            let step = core::future::poll_fn(|cx| self.poll_step(cx, &mut transport)).await;
            if self.step(step, &mut transport) {
                return self.lingers.then_some(transport);
            }
        }
    }

    /// Carries out one step of the session's task; `true` once the task is over.
    fn step<T: Transport>(&mut self, step: Step, transport: &mut T) -> bool {
        let session = self.session;
        match step {
            Step::Read(Read::Text(bytes)) => self.read(bytes, M::message),
            Step::Read(Read::Binary(bytes)) => self.read(bytes, M::binary),
            Step::Read(Read::Pong) => self.hub.input(|m, now| m.pong(now, session)),
            Step::Read(Read::Nothing) => {}
            Step::Read(Read::Close) => {
                // Released first: a peer that stops reading cannot hold it while the close
                // answer waits for room.
                self.hub.closed(session);
                transport.close_now(None);
                return true;
            }
            Step::Read(Read::Gone(why)) => {
                tracing::debug!(%session, why, "socket gone");
                return true;
            }
            Step::Sent(n) => self.hub.input(|m, now| m.sent(now, session, n)),
            Step::Close(code, reason) => {
                // Best effort, never waiting: the state machine already forgot the session,
                // so a peer that stopped reading (a slow consumer) must not keep this task,
                // its socket and its buffers alive outside every limit.
                self.lingers = transport.close_now(Some((code, &reason)));
                return true;
            }
            // Dropping the socket closes the TCP connection with no closing handshake, as
            // the OT seed's `ws.terminate()`.
            Step::Terminate => return true,
        }
        false
    }

    /// A message read, into the state machine. On a direct socket of a batching machine its
    /// frames stay queued for the flush after the task has yielded.
    fn read(&mut self, bytes: Bytes, handle: fn(&mut M, Instant, M::Session, Bytes)) {
        let session = self.session;
        let input = |m: &mut M, now| handle(m, now, session, bytes);
        match self.flush {
            Some(flush) => {
                self.hub.input_deferred(input);
                if flush == Flush::Idle {
                    self.flush = Some(Flush::Owed);
                }
            }
            None => self.hub.input(input),
        }
    }

    fn poll_step<T: Transport>(&mut self, cx: &mut Context<'_>, transport: &mut T) -> Poll<Step> {
        if self.closing.is_none() {
            match self.end.poll_next_unpin(cx) {
                Poll::Ready(Some(Ending::Terminate)) => return Poll::Ready(Step::Terminate),
                Poll::Ready(Some(Ending::Close(code, reason))) => {
                    self.closing = Some((code, reason));
                }
                Poll::Ready(None) | Poll::Pending => {}
            }
        }
        // A batching machine's frames wait for one yield: the other connections made ready
        // by the same poll of the reactor read their inputs first, and their frames for
        // this one leave in the same write.
        let defer = M::BATCHES && !self.deferred && self.closing.is_none() && !self.out.is_empty();
        if defer {
            self.deferred = true;
            cx.waker().wake_by_ref();
        }
        // Write what the transport takes.
        let mut stuck = false;
        if !defer {
            match self.write_queued(cx, transport) {
                Ok(full) => stuck = full,
                Err(e) => return Poll::Ready(Step::Read(Read::Gone(e))),
            }
        }
        if self.dirty {
            match transport.poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    self.dirty = false;
                    if self.unflushed > 0 {
                        return Poll::Ready(Step::Sent(core::mem::take(&mut self.unflushed)));
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Step::Read(Read::Gone(e))),
                Poll::Pending => stuck = true,
            }
        }
        // A close waits for the frames queued before it, unless the socket cannot take
        // them (a slow consumer is closed at once: it resumes from its cursor).
        if self.closing.is_some() {
            if self.out.is_empty() || stuck {
                if let Some((code, reason)) = self.closing.take() {
                    return Poll::Ready(Step::Close(code, reason));
                }
            } else {
                cx.waker().wake_by_ref();
            }
        }
        transport.poll_read(cx).map(Step::Read)
    }

    /// Hands the queued frames to the transport while it takes them; `true` when it is full.
    fn write_queued<T: Transport>(
        &mut self,
        cx: &mut Context<'_>,
        transport: &mut T,
    ) -> Result<bool, String> {
        loop {
            if transport.poll_ready(cx)?.is_pending() {
                return Ok(true);
            }
            let Poll::Ready(Some(out)) = self.out.poll_next_unpin(cx) else {
                self.deferred = false;
                return Ok(false);
            };
            if let Out::Frame(bytes) = &out {
                self.unflushed += bytes.len();
            }
            self.dirty = true;
            transport.start_send(out)?;
        }
    }

    /// Runs the session with the hub writing its frames straight to `direct`, the socket
    /// `ws` reads from (see [`direct`](crate::direct)): its task reads, and writes only what
    /// the socket could not take at once.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // tokio's direct path
    pub(crate) async fn run_direct<T: Transport, S: RawSocket>(
        mut self,
        mut ws: T,
        direct: Arc<Direct<S>>,
    ) -> Option<T> {
        {
            // Under the hub's lock, so no frame of a drain slips in between: what was queued
            // before the socket was open goes first, then the hub writes by itself.
            let mut hub = self.hub.lock();
            let outlet: Arc<dyn DirectOutlet> = direct.clone();
            let (mut written, mut pinged) = (0, false);
            let mut framer = Framer::default();
            while let Ok(out) = self.out.try_recv() {
                match outlet.framed(&mut framer, &out) {
                    Some(framed) => outlet.queue(framed, out.len()),
                    None if matches!(out, Out::Ping) => pinged = true,
                    None => written += out.len(),
                }
            }
            written += outlet.flush_queued();
            // Already closed (at the handshake, say): its close waits in `end`.
            if let Some(slot) = hub.outlets.get_mut(self.session, M::index(self.session)) {
                slot.direct = Some(outlet);
            }
            let session = self.session;
            if written > 0 {
                hub.apply(|m, now| m.sent(now, session, written));
            }
            if pinged {
                hub.apply(|m, now| m.pong(now, session));
            }
        }
        if M::BATCHES {
            self.flush = Some(Flush::Idle);
        }
        loop {
            let step = core::future::poll_fn(|cx| self.poll_direct(cx, &mut ws, &direct)).await;
            if self.step(step, &mut ws) {
                return self.lingers.then_some(ws);
            }
        }
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // tokio's direct path
    fn poll_direct<T: Transport, S: RawSocket>(
        &mut self,
        cx: &mut Context<'_>,
        ws: &mut T,
        direct: &Direct<S>,
    ) -> Poll<Step> {
        direct.register(cx);
        match self.end.poll_next_unpin(cx) {
            Poll::Ready(Some(Ending::Terminate)) => return Poll::Ready(Step::Terminate),
            // A close goes out behind the frames already queued, or is dropped with them
            // when the socket takes nothing (a slow consumer resumes from its cursor).
            Poll::Ready(Some(Ending::Close(code, reason))) => {
                return Poll::Ready(Step::Close(code, reason))
            }
            Poll::Ready(None) | Poll::Pending => {}
        }
        if self.flush == Some(Flush::Yielded) {
            self.flush = Some(Flush::Idle);
            self.hub.lock().flush();
        }
        match direct.poll_drain(cx) {
            Poll::Ready(Ok(0)) | Poll::Pending => {}
            Poll::Ready(Ok(n)) => return Poll::Ready(Step::Sent(n)),
            Poll::Ready(Err(e)) => return Poll::Ready(Step::Read(Read::Gone(e))),
        }
        if let Poll::Ready(read) = ws.poll_read(cx) {
            return Poll::Ready(Step::Read(read));
        }
        if self.flush == Some(Flush::Owed) {
            // Nothing more to read: yield once, then write what was read (above).
            self.flush = Some(Flush::Yielded);
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        match direct.take_unreported() {
            0 => Poll::Pending,
            n => Poll::Ready(Step::Sent(n)),
        }
    }
}

impl<M: Machine> Drop for Accepted<M> {
    fn drop(&mut self) {
        // Ran to its end, dropped mid-way, or never run: the session is over either way.
        self.hub.closed(self.session);
    }
}

/// The timer task: sleeps until the state machine's next deadline (re-armed when an input
/// brings it forward), runs its timers, and ends when the hub is dropped.
pub(crate) struct TimerTask<M: Machine> {
    pub(crate) shared: std::sync::Weak<Mutex<Shared<M>>>,
    pub(crate) wake: Pin<Box<async_channel::Receiver<()>>>,
}

impl<M: Machine> Shared<M> {
    /// Arms the next deadline of the state machine and gives it on the runtime's clock.
    pub(crate) fn arm(&mut self) -> Option<std::time::Instant> {
        self.armed = self.machine.poll_timeout();
        self.armed.map(|at| self.clock.to_std(at))
    }

    /// Runs the state machine's timers due now and sends what they produced.
    pub(crate) fn fire(&mut self) {
        self.apply(|m, now| m.timeout(now));
    }
}

impl<M: Machine> TimerTask<M> {
    pub(crate) async fn run<F, S>(mut self, sleep_until: F)
    where
        F: Fn(std::time::Instant) -> S,
        S: Future<Output = ()> + Unpin,
    {
        let lock = |shared: &Mutex<Shared<M>>| {
            let mut shared = shared.lock().unwrap_or_else(|e| e.into_inner());
            shared.arm()
        };
        loop {
            let Some(deadline) = self.shared.upgrade().map(|s| lock(&s)) else {
                return;
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
                return; // every sender is gone: the hub was dropped
            }
            let Some(shared) = self.shared.upgrade() else {
                return;
            };
            shared.lock().unwrap_or_else(|e| e.into_inner()).fire();
        }
    }
}

#[cfg(test)]
impl<M: Machine> Accepted<M> {
    /// Frames queued for the task.
    pub(crate) fn queued(&self) -> usize {
        self.out.len()
    }

    /// Whether the state machine ended the session.
    pub(crate) fn ended(&self) -> bool {
        !self.end.is_empty()
    }

    /// The code the state machine closed the session with.
    pub(crate) fn closed_with(&self) -> Option<CloseCode> {
        match self.end.try_recv() {
            Ok(Ending::Close(code, _)) => Some(code),
            _ => None,
        }
    }
}

/// Fake sockets for the endpoints' tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use std::collections::VecDeque;

    /// A socket that takes nothing (a peer that stopped reading) but delivers `inbox`.
    #[derive(Default)]
    pub(crate) struct Stuck {
        pub(crate) inbox: VecDeque<Message>,
    }

    impl Stream for Stuck {
        type Item = Result<Message, String>;
        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            match self.inbox.pop_front() {
                Some(message) => Poll::Ready(Some(Ok(message))),
                None => Poll::Pending,
            }
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

    /// A socket that delivers `inbox` and takes every message, recording which messages
    /// each flush sent together.
    #[derive(Default)]
    pub(crate) struct Recorder {
        pub(crate) inbox: Arc<Mutex<VecDeque<Message>>>,
        pending: Vec<String>,
        pub(crate) flushes: Arc<Mutex<Vec<Vec<String>>>>,
    }

    impl Stream for Recorder {
        type Item = Result<Message, String>;
        fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            match self.inbox.lock().unwrap().pop_front() {
                Some(message) => Poll::Ready(Some(Ok(message))),
                None => Poll::Pending,
            }
        }
    }

    impl Sink<Message> for Recorder {
        type Error = String;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), String>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(mut self: Pin<&mut Self>, message: Message) -> Result<(), String> {
            let text = message.into_text().map_err(|e| e.to_string())?;
            self.pending.push(text.as_str().to_owned());
            Ok(())
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), String>> {
            let sent = core::mem::take(&mut self.pending);
            if !sent.is_empty() {
                self.flushes.lock().unwrap().push(sent);
            }
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), String>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A socket the hub writes to that takes everything, recording each write: where its
    /// first buffer lives, and its bytes.
    #[derive(Clone, Default)]
    pub(crate) struct Writes(pub(crate) Arc<Mutex<Vec<Write>>>);

    /// Where a write's first buffer lived, and the bytes written.
    pub(crate) type Write = (usize, Vec<u8>);

    impl RawSocket for Writes {
        fn try_write_vectored(&self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
            let bytes: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            let n = bytes.len();
            self.0
                .lock()
                .unwrap()
                .push((bufs[0].as_ptr() as usize, bytes));
            Ok(n)
        }
        fn poll_write_ready(&self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A transport that is not a WebSocket: it reads `inbox`, keeps what it writes in
    /// `sent`, and records how it was ended.
    #[derive(Default)]
    struct Lines {
        inbox: VecDeque<Read>,
        sent: Vec<String>,
        ended: Option<Option<CloseCode>>,
    }

    impl Transport for Lines {
        fn poll_read(&mut self, _: &mut Context<'_>) -> Poll<Read> {
            self.inbox.pop_front().map_or(Poll::Pending, Poll::Ready)
        }
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), String>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(&mut self, out: Out) -> Result<(), String> {
            let Out::Frame(bytes) = out else {
                return Err("a ping on the sync profile".to_owned());
            };
            self.sent
                .push(String::from_utf8(bytes.to_vec()).map_err(|e| e.to_string())?);
            Ok(())
        }
        fn poll_flush(&mut self, _: &mut Context<'_>) -> Poll<Result<(), String>> {
            Poll::Ready(Ok(()))
        }
        fn close_now(&mut self, close: Option<(CloseCode, &str)>) -> bool {
            self.ended = Some(close.map(|(code, _)| code));
            close.is_some()
        }
    }

    /// One request on a session of its own: its reply comes back, and the session is gone
    /// with it; a refused handshake is the refusal.
    #[test]
    fn an_exchange_gives_the_reply_and_ends_its_session() {
        let driver = syncmux::Driver::new(
            syncmux::Server::new(syncmux::ServerConfig::default()).expect("valid config"),
            syncmux::MemoryStore::new(syncmux::StoreConfig::default()),
        );
        let (server, _timer) = crate::SyncServer::new(driver, ServerOptions::default());
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        let ping = Bytes::from_static(br#"{"type":"ping","id":"7"}"#);
        let handshake = Handshake::new("/", "node_id=x");
        let is_pong = |b: &Bytes| b.windows(6).any(|w| w == b"\"pong\"");
        let mut exchange = Box::pin(server.exchange(&handshake, ping.clone(), is_pong));
        let Poll::Ready(Ok(Some(reply))) = exchange.as_mut().poll(&mut cx) else {
            panic!("no reply at once");
        };
        assert!(
            reply.starts_with(br#"{"type":"pong","id":"7""#),
            "{reply:?}"
        );
        drop(exchange);
        assert_eq!(server.session_count(), 0);
        assert_eq!(server.outlet_count(), 0);
        let empty = Handshake::new("/", "node_id=");
        let mut refused = Box::pin(server.exchange(&empty, ping, is_pong));
        let Poll::Ready(Err(rejection)) = refused.as_mut().poll(&mut cx) else {
            panic!("not refused");
        };
        assert_eq!(rejection.status, 400);
    }

    /// The session task drives any transport, not only a WebSocket: a ping read from it is
    /// answered on it, written bytes are reported (nothing stays counted against the
    /// outbound bound), and a shutdown ends it with the server's close, handing it back.
    #[test]
    fn a_session_runs_on_a_transport_that_is_not_a_websocket() {
        let driver = syncmux::Driver::new(
            syncmux::Server::new(syncmux::ServerConfig::default()).expect("valid config"),
            syncmux::MemoryStore::new(syncmux::StoreConfig::default()),
        );
        let (server, _timer) = crate::SyncServer::new(driver, ServerOptions::default());
        let accepted = server
            .handshake(&Handshake::new("/", "node_id=lines"))
            .expect("accepted");
        let session = accepted.session();
        let ping = Bytes::from_static(br#"{"type":"ping","id":"7"}"#);
        let lines = Lines {
            inbox: [Read::Text(ping)].into(),
            ..Lines::default()
        };
        let mut run = Box::pin(accepted.run_to_end(lines));
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        assert!(run.as_mut().poll(&mut cx).is_pending());
        let queued = server.with_driver(|d, _| d.server().outbound_bytes(session));
        assert_eq!(queued, Some(0), "the pong was reported written");
        server.shutdown();
        let Poll::Ready(Some(lines)) = run.as_mut().poll(&mut cx) else {
            panic!("the task did not end with the transport handed back");
        };
        assert_eq!(lines.sent.len(), 1, "{:?}", lines.sent);
        assert!(
            lines.sent[0].contains(r#""type":"pong""#),
            "{:?}",
            lines.sent
        );
        assert_eq!(lines.ended, Some(Some(CloseCode::GOING_AWAY)));
    }

    /// An outlet is found only by its own session: a slot reused by a later session (a new
    /// generation) replaces the earlier one's outlet, which no lookup finds any more.
    #[test]
    fn outlets_are_found_by_session_generation_and_all() {
        let outlet = || Outlet {
            out: async_channel::unbounded().0,
            end: async_channel::bounded(1).0,
            direct: None,
            dirty: Cell::new(false),
        };
        // (generation, slot)
        let (first, later, other) = ((0, 3), (1, 3), (0, 0));
        let mut outlets = Outlets::new();
        assert!(outlets.get(first, 3).is_none());
        outlets.insert(first, 3, outlet());
        outlets.insert(other, 0, outlet());
        assert_eq!(outlets.len, 2);
        assert!(outlets.get(first, 3).is_some());
        assert!(outlets.get(later, 3).is_none(), "another generation");
        outlets.insert(later, 3, outlet());
        assert_eq!(outlets.len, 2, "replaced, not added");
        assert!(outlets.get(first, 3).is_none());
        assert!(outlets.remove(first, 3).is_none());
        assert_eq!(outlets.at(3), Some(later));
        assert!(outlets.get_mut(later, 3).is_some());
        assert!(outlets.remove(later, 3).is_some());
        assert!(outlets.remove(later, 3).is_none());
        assert_eq!(outlets.len, 1);
    }
}
