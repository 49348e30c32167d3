//! The OT endpoint served over WebSockets (README, "The OT profile"), shared by both runtimes:
//! the [`OtServer`] behind a lock, one task per connection, one timer task. Start it with
//! `Runtime::start_ot` and accept connections with `Runtime::serve` or `Runtime::accept`.
//!
//! It is built like the sync server's adapter ([`SyncServer`](crate::SyncServer)), and for
//! the same reasons: tungstenite decides the upgrade in a synchronous callback, where the
//! state machine must answer (`?token=` refused with 401 before upgrading), so the state
//! machine sits behind a lock held only while one input runs and its outputs are handed to
//! the connections.
//!
//! On a plain TCP socket (tokio's `serve` and `accept_tcp`) the hub writes the frames
//! itself, as the sync server's fan-out does ([`direct`](crate::direct)): a broadcast is
//! framed once, queued on each recipient's socket, and written when the task that read the
//! op has yielded once — by then the other connections the same reactor poll made ready
//! have read their ops too, so each socket gets the frames of all of them (its ack and the
//! others' ops) in one write, and no task is woken to write them: one `sendmsg` per socket
//! per round, however many ops the round read. What a socket does not take waits on it, for
//! its task to write once it is writable.
//!
//! Elsewhere (TLS, smol, `accept`) each connection's task writes its own queue, so a slow
//! socket stalls nobody else; it too yields once before writing, for the same batching.
//!
//! Either way bytes are reported written
//! ([`OtServer::handle_sent`](syncmux::ot::OtServer::handle_sent)) only once they left: every
//! queued frame counts against the state machine's outbound bound until then.
//!
//! What the adapter does with each output of the state machine:
//!
//! | state machine | socket |
//! |---|---|
//! | [`OtTransmit::Frame`] | a text frame, then `handle_sent` once flushed |
//! | [`OtTransmit::Ping`] | a WebSocket ping; its pong → `handle_pong` |
//! | [`OtTransmit::Close`] | the frames queued before it, then a close frame |
//! | [`OtTransmit::Terminate`] | dropped at once, without a closing handshake |
//!
//! A text or binary message goes to `handle_message`; a closed or failed socket to
//! `handle_disconnected`; the timer task calls `handle_timeout` at `poll_timeout`.

use core::fmt;
use core::pin::Pin;
use core::task::{Context, Poll};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::http::StatusCode;
use tungstenite::Message;

use crate::clock::Clock;
use crate::common;
use crate::direct::{self, Direct, DirectOutlet, Framer, RawSocket};
use crate::runtime::Binding;
use crate::server::{Gate, RunningGuard, Timed, TimerTask};
use crate::{Rejection, ServerOptions};
use syncmux::ot::{OtHandshakeOutcome, OtServer, OtServerEvent, OtSessionId, OtTransmit};
use syncmux::wire::CloseCode;
use syncmux::Handshake;
use syncmux::Instant;

/// A running OT server: cheap to clone, shared by the accept loop, the connections and the
/// application. Made by `Runtime::start_ot`.
#[derive(Clone)]
pub struct OtServerHandle {
    shared: Arc<Mutex<Shared>>,
    gate: Gate,
}

impl fmt::Debug for OtServerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtServerHandle")
            .field("sessions", &self.session_count())
            .field("options", self.gate.options())
            .finish_non_exhaustive()
    }
}

/// What a connection's task is told to write.
enum Out {
    Frame(Bytes),
    Ping,
}

/// How a connection ends, when the state machine ends it.
enum Ending {
    /// A close frame, after the frames queued before it.
    Close(CloseCode, String),
    /// Dropped at once.
    Terminate,
}

/// The queues of one connection's task.
struct Outlet {
    out: async_channel::Sender<Out>,
    end: async_channel::Sender<Ending>,
    /// The connection's socket, when the hub writes to it itself ([`direct`](crate::direct)):
    /// its frames skip `out` and its task.
    direct: Option<Arc<dyn DirectOutlet>>,
    /// Frames were queued on `direct` since the last [`Shared::flush`].
    dirty: bool,
}

/// A WebSocket ping with no payload, as the hub writes it to a direct socket.
const PING: Bytes = Bytes::from_static(&[0x89, 0x00]);

/// What every task of one server shares behind its lock.
pub(crate) struct Shared {
    server: OtServer,
    clock: Clock,
    outlets: HashMap<OtSessionId, Outlet>,
    /// The deadline the timer task sleeps until.
    armed: Option<Instant>,
    wake: async_channel::Sender<()>,
    stop: Option<async_channel::Sender<()>>,
    /// Where the shared history's events go ([`OtServerHandle::shared_events`]).
    shared: Option<async_channel::Sender<OtServerEvent>>,
    /// Sessions whose direct socket has frames queued for [`flush`](Self::flush).
    dirty: Vec<OtSessionId>,
    /// Frames the payloads handed out since the last flush, each once.
    framer: Framer,
}

impl Shared {
    fn now(&self) -> Instant {
        self.clock.now()
    }

    /// Hands every output of the last input out and writes the direct sockets.
    fn drain(&mut self) {
        self.hand_out();
        self.flush();
    }

    /// Writes every direct socket that has frames queued, each in one write, and reports
    /// what left (which may let more out).
    fn flush(&mut self) {
        let mut now = None;
        while !self.dirty.is_empty() {
            let mut sent = false;
            for session in core::mem::take(&mut self.dirty) {
                let Some(outlet) = self.outlets.get_mut(&session) else {
                    continue;
                };
                outlet.dirty = false;
                let Some(direct) = &outlet.direct else {
                    continue;
                };
                let n = direct.flush_queued();
                if n > 0 {
                    let now = *now.get_or_insert_with(|| self.clock.now());
                    self.server.handle_sent(now, session, n);
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

    /// Hands every output of the last input to the connections (a direct socket's frames
    /// are queued on it, framed once per broadcast, for [`flush`](Self::flush)), then
    /// re-arms the timer.
    fn hand_out(&mut self) {
        let mut framer = core::mem::take(&mut self.framer);
        while let Some(transmit) = self.server.poll_transmit() {
            let (session, out) = match transmit {
                OtTransmit::Frame { session, bytes } => (session, Out::Frame(bytes)),
                OtTransmit::Ping { session } => (session, Out::Ping),
                OtTransmit::Close {
                    session,
                    code,
                    reason,
                } => {
                    self.end(session, Ending::Close(code, reason));
                    continue;
                }
                OtTransmit::Terminate { session } => {
                    self.end(session, Ending::Terminate);
                    continue;
                }
            };
            let Some(outlet) = self.outlets.get_mut(&session) else {
                continue;
            };
            if let Some(direct) = &outlet.direct {
                match out {
                    Out::Frame(bytes) => direct.queue(framer.frame(&bytes), bytes.len()),
                    Out::Ping => direct.queue(PING, 0),
                }
                if !outlet.dirty {
                    outlet.dirty = true;
                    self.dirty.push(session);
                }
            } else {
                // Unbounded, but every frame in it counts against the state machine's
                // outbound bound until the task reports it written (pings are one per
                // interval). Closed only once the task is gone, and the outlet with it.
                let _ = outlet.out.try_send(out);
            }
        }
        self.framer = framer;
        while let Some(event) = self.server.poll_event() {
            match event {
                OtServerEvent::SessionClosed { session, reason } => {
                    tracing::info!(%session, ?reason, "OT session closed");
                }
                OtServerEvent::Applied { .. } => {}
                event @ (OtServerEvent::Commit { .. }
                | OtServerEvent::Fetch { .. }
                | OtServerEvent::Load { .. }
                | OtServerEvent::DocumentCreated { .. }
                | OtServerEvent::DocumentDropped { .. })
                    if self.shared.is_some() =>
                {
                    if let Some(sink) = &self.shared {
                        // Unbounded, but bounded by the state machine: commits by
                        // `max_commits_in_flight` per session, fetches by the gaps it saw.
                        let _ = sink.try_send(event);
                    }
                }
                other => tracing::debug!(?other, "OT server event"),
            }
        }
        let next = self.server.poll_timeout();
        if next != self.armed && (self.armed.is_none() || next < self.armed) {
            // Only an earlier deadline needs the timer task's attention; a later one is
            // picked up when the current one fires (a spurious timeout is a no-op).
            self.armed = next;
            let _ = self.wake.try_send(());
        }
    }

    fn end(&mut self, session: OtSessionId, ending: Ending) {
        if let Some(outlet) = self.outlets.remove(&session) {
            // Capacity 1 and sent once: never full.
            let _ = outlet.end.try_send(ending);
        }
    }
}

/// A handshake the OT server accepted: answer the upgrade, then [`run`](Self::run) the
/// connection on the upgraded socket. Dropped without running, the session is closed.
pub struct AcceptedOtSession {
    server: OtServerHandle,
    session: OtSessionId,
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
    /// On a direct socket: where the frames of the ops read stand (`None` on the channel
    /// path).
    flush: Option<Flush>,
    /// The task sent the state machine's close frame: the socket is worth reading a while
    /// longer (see `runtime::linger`).
    lingers: bool,
    /// Dropped after [`Drop for AcceptedOtSession`](AcceptedOtSession) released the session.
    _running: RunningGuard,
}

impl fmt::Debug for AcceptedOtSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcceptedOtSession")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl OtServerHandle {
    pub(crate) fn new(server: OtServer, options: ServerOptions) -> (OtServerHandle, OtTimerTask) {
        let (wake_tx, wake_rx) = async_channel::bounded(1);
        let (gate, stop_tx) = Gate::new(options, server.config().max_frame_len);
        let shared = Shared {
            server,
            clock: Clock::new(),
            outlets: HashMap::new(),
            armed: None,
            wake: wake_tx,
            stop: Some(stop_tx),
            shared: None,
            dirty: Vec::new(),
            framer: Framer::default(),
        };
        let handle = OtServerHandle {
            shared: Arc::new(Mutex::new(shared)),
            gate,
        };
        let timer = OtTimerTask {
            shared: Arc::downgrade(&handle.shared),
            wake: Box::pin(wake_rx),
        };
        (handle, timer)
    }

    /// An endpoint around `server` with its timer task running on `R`.
    pub(crate) fn start<R: Binding>(server: OtServer, options: ServerOptions) -> OtServerHandle {
        let (handle, timer) = OtServerHandle::new(server, options);
        R::spawn(Box::pin(timer.run(R::sleep_until)));
        handle
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
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

    /// Completes once [`shutdown`](Self::shutdown) was called (accept loops select on it).
    pub async fn stopped(&self) {
        self.gate.stopped().await;
    }

    /// Decides a handshake: `?token=` and the other checks of
    /// [`OtServer::handle_handshake`]. On acceptance the session exists at once and is a
    /// member of `doc-1`.
    pub fn handshake(&self, handshake: &Handshake) -> Result<AcceptedOtSession, Rejection> {
        let mut hub = self.lock();
        let now = hub.now();
        let outcome = hub.server.handle_handshake(now, handshake);
        let accepted = match outcome {
            OtHandshakeOutcome::Accept { session } => {
                // Bounded by the state machine's outbound bytes, not by the channel.
                let (out_tx, out) = async_channel::unbounded();
                let (end_tx, end) = async_channel::bounded(1);
                let outlet = Outlet {
                    out: out_tx,
                    end: end_tx,
                    direct: None,
                    dirty: false,
                };
                hub.outlets.insert(session, outlet);
                Ok(AcceptedOtSession {
                    server: self.clone(),
                    session,
                    out: Box::pin(out),
                    end: Box::pin(end),
                    closing: None,
                    unflushed: 0,
                    dirty: false,
                    deferred: false,
                    flush: None,
                    lingers: false,
                    _running: self.gate.running(),
                })
            }
            OtHandshakeOutcome::Reject { status, reason } => Err(Rejection { status, reason }),
        };
        hub.drain();
        accepted
    }

    /// Runs the state machine's decision inside tungstenite's upgrade callback: a rejection
    /// answers with its HTTP status before upgrading.
    #[allow(clippy::result_large_err)] // tungstenite's callback signature fixes the error type
    pub(crate) fn decide(
        &self,
        request: &Request,
        response: Response,
        accepted: &mut Option<AcceptedOtSession>,
    ) -> Result<Response, ErrorResponse> {
        match self.handshake(&common::handshake_of(request)) {
            Ok(session) => {
                *accepted = Some(session);
                Ok(response)
            }
            Err(rejection) => {
                tracing::info!(
                    status = rejection.status,
                    reason = rejection.reason,
                    "OT handshake refused"
                );
                let mut error = ErrorResponse::new(Some(rejection.reason));
                *error.status_mut() = StatusCode::from_u16(rejection.status)
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                Err(error)
            }
        }
    }

    /// The events a shared history answers (`Commit`, `Fetch`, `Load`, `DocumentCreated`,
    /// `DocumentDropped`; see [`OtServer`'s shared history](syncmux::ot::OtServer#shared-history)),
    /// from now on: the Redis adapter (`syncmux_redis::ot`) reads them. A second call takes
    /// them from the first receiver.
    pub fn shared_events(&self) -> async_channel::Receiver<OtServerEvent> {
        let (tx, rx) = async_channel::unbounded();
        self.lock().shared = Some(tx);
        rx
    }

    /// Closes every session with 1001, refuses new handshakes (503) and stops the accept
    /// loops.
    pub fn shutdown(&self) {
        let mut hub = self.lock();
        let now = hub.now();
        hub.server.shutdown(now);
        hub.drain();
        hub.stop = None;
    }

    /// Sessions open (or closing), as the state machine counts them.
    pub fn session_count(&self) -> usize {
        self.lock().server.session_count()
    }

    /// Sessions the adapter holds queues for; once every task has settled, never above
    /// [`session_count`](Self::session_count) (for leak checks).
    pub fn outlet_count(&self) -> usize {
        self.lock().outlets.len()
    }

    /// Completes once every connection's task has ended (after
    /// [`shutdown`](Self::shutdown), once each close frame went out or could not). Bound the
    /// wait with a timeout of the runtime's.
    pub async fn drained(&self) {
        self.gate.drained().await;
    }

    /// Connections whose task is running.
    pub fn running_sessions(&self) -> usize {
        self.gate.running_count()
    }

    /// Runs `f` on the state machine (to read a document, or close a session), then hands
    /// its outputs out.
    pub fn with_server<T>(&self, f: impl FnOnce(&mut OtServer, Instant) -> T) -> T {
        let mut hub = self.lock();
        let now = hub.now();
        let out = f(&mut hub.server, now);
        hub.drain();
        out
    }

    fn input(&self, f: impl FnOnce(&mut OtServer, Instant)) {
        self.with_server(f);
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // tokio's direct path
    /// [`input`](Self::input), leaving the direct sockets' frames queued for a later
    /// [`flush`](Self::flush).
    fn input_deferred(&self, f: impl FnOnce(&mut OtServer, Instant)) {
        let mut hub = self.lock();
        let now = hub.now();
        f(&mut hub.server, now);
        hub.hand_out();
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // tokio's direct path
    /// Writes every direct socket with frames queued.
    fn flush(&self) {
        self.lock().flush();
    }

    /// The socket is gone, whoever ended it: the state machine forgets the session (a
    /// no-op if it already did) and so does the hub.
    fn closed(&self, session: OtSessionId) {
        let mut hub = self.lock();
        let now = hub.now();
        hub.server.handle_disconnected(now, session);
        hub.outlets.remove(&session);
        hub.drain();
    }
}

#[cfg_attr(not(feature = "tokio"), allow(dead_code))] // tokio's direct path
/// Where a direct connection's task stands with the frames its reads produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flush {
    /// Nothing read since the last flush.
    Idle,
    /// Ops read, their frames queued: yield once, then flush.
    Owed,
    /// Yielded: flush at the next poll.
    Yielded,
}

impl Flush {
    /// After a read: a flush is owed, unless one is already due at the next poll.
    fn owed(self) -> Flush {
        match self {
            Flush::Idle => Flush::Owed,
            due => due,
        }
    }
}

/// One step of a connection's task.
enum Step {
    Message(Message),
    /// The socket is gone (read or write error, or end).
    Gone(String),
    /// Frame bytes written and flushed.
    Sent(usize),
    /// Close with this code, the frames before it written (or the socket stuck).
    Close(CloseCode, String),
    /// Drop the socket now.
    Terminate,
}

impl AcceptedOtSession {
    /// The session.
    pub fn session(&self) -> OtSessionId {
        self.session
    }

    /// Drives the connection on its upgraded socket until it ends. Reads and writes in one
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

    /// [`run`](Self::run), giving the socket back when the connection ended with the
    /// server's close frame sent on it, for the runtime to read a while longer.
    pub(crate) async fn run_to_end<W, E>(mut self, mut ws: W) -> Option<W>
    where
        W: Stream<Item = Result<Message, E>> + Sink<Message> + Unpin,
        E: fmt::Display,
        <W as Sink<Message>>::Error: fmt::Display,
    {
        loop {
            let step = core::future::poll_fn(|cx| self.poll_step(cx, &mut ws)).await;
            if self.step(step, &mut ws) {
                return self.lingers.then_some(ws);
            }
        }
    }

    /// Carries out one step of the connection's task; `true` once the task is over.
    fn step<W, E>(&mut self, step: Step, ws: &mut W) -> bool
    where
        W: Stream<Item = Result<Message, E>> + Sink<Message> + Unpin,
        <W as Sink<Message>>::Error: fmt::Display,
    {
        let session = self.session;
        match step {
            // The seed's `ws` server reads binary frames like text; so does the core.
            Step::Message(Message::Text(text)) => self.read(Bytes::from(text)),
            Step::Message(Message::Binary(data)) => self.read(data),
            Step::Message(Message::Pong(_)) => {
                self.server.input(|s, now| s.handle_pong(now, session));
            }
            Step::Message(Message::Close(_)) => {
                // Released first: a peer that stops reading cannot hold it while the close
                // answer waits for room.
                self.server.closed(session);
                let _ = ws.close().now_or_never();
                return true;
            }
            // tungstenite answers pings itself.
            Step::Message(Message::Ping(_) | Message::Frame(_)) => {}
            Step::Sent(n) => self.server.input(|s, now| s.handle_sent(now, session, n)),
            Step::Gone(why) => {
                tracing::debug!(%session, why, "OT socket gone");
                return true;
            }
            Step::Close(code, reason) => {
                // Best effort, never waiting: the state machine already forgot the session,
                // so a peer that stopped reading must not keep this task alive.
                let close = common::close_message(code, &reason);
                if let Some(Ok(())) = ws.send(close).now_or_never() {
                    let _ = ws.close().now_or_never();
                    self.lingers = true;
                }
                return true;
            }
            // Dropping the socket closes the TCP connection with no closing handshake, as
            // the seed's `ws.terminate()`.
            Step::Terminate => return true,
        }
        false
    }

    /// A message read from the socket, into the state machine. On a direct socket its
    /// frames stay queued for the flush after the task has yielded.
    fn read(&mut self, data: Bytes) {
        let session = self.session;
        let message = |s: &mut OtServer, now| s.handle_message(now, session, data);
        match self.flush {
            Some(flush) => {
                self.server.input_deferred(message);
                self.flush = Some(flush.owed());
            }
            None => self.server.input(message),
        }
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // tokio's direct path
    /// Runs the connection with the hub writing its frames straight to `direct`, the socket
    /// `ws` reads from (see [`direct`](crate::direct)): the task reads, and writes only what
    /// the socket could not take at once. The frames an op read here produces (its ack, its
    /// broadcast) are queued on their sockets, and written once this task had yielded: by
    /// then the other connections the same reactor poll made ready have read their ops, so
    /// each socket gets its frames of all of them in one write, and no task is woken to
    /// write them.
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
        {
            // Under the hub's lock, so no frame slips in between: what was queued before
            // the socket was open goes first, then the hub writes by itself.
            let mut hub = self.server.lock();
            let outlet: Arc<dyn DirectOutlet> = direct.clone();
            while let Ok(out) = self.out.try_recv() {
                match out {
                    Out::Frame(bytes) => outlet.queue(direct::frame(&bytes), bytes.len()),
                    Out::Ping => outlet.queue(PING, 0),
                }
            }
            let written = outlet.flush_queued();
            // Already closed (at the handshake, say): its close waits in `end`.
            if let Some(slot) = hub.outlets.get_mut(&self.session) {
                slot.direct = Some(outlet);
            }
            if written > 0 {
                let now = hub.now();
                hub.server.handle_sent(now, self.session, written);
                hub.drain();
            }
        }
        self.flush = Some(Flush::Idle);
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
        match self.end.poll_next_unpin(cx) {
            Poll::Ready(Some(Ending::Terminate)) => return Poll::Ready(Step::Terminate),
            // A close goes out behind the frames already queued, or is dropped with them
            // when the socket takes nothing.
            Poll::Ready(Some(Ending::Close(code, reason))) => {
                return Poll::Ready(Step::Close(code, reason))
            }
            Poll::Ready(None) | Poll::Pending => {}
        }
        if self.flush == Some(Flush::Yielded) {
            self.flush = Some(Flush::Idle);
            self.server.flush();
        }
        match direct.poll_drain(cx) {
            Poll::Ready(Ok(0)) | Poll::Pending => {}
            Poll::Ready(Ok(n)) => return Poll::Ready(Step::Sent(n)),
            Poll::Ready(Err(e)) => return Poll::Ready(Step::Gone(e)),
        }
        match ws.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(message))) => return Poll::Ready(Step::Message(message)),
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Step::Gone(e.to_string())),
            Poll::Ready(None) => return Poll::Ready(Step::Gone("connection closed".to_owned())),
            Poll::Pending => {}
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

    fn poll_step<W, E>(&mut self, cx: &mut Context<'_>, ws: &mut W) -> Poll<Step>
    where
        W: Stream<Item = Result<Message, E>> + Sink<Message> + Unpin,
        E: fmt::Display,
        <W as Sink<Message>>::Error: fmt::Display,
    {
        if self.closing.is_none() {
            match self.end.poll_next_unpin(cx) {
                Poll::Ready(Some(Ending::Terminate)) => return Poll::Ready(Step::Terminate),
                Poll::Ready(Some(Ending::Close(code, reason))) => {
                    self.closing = Some((code, reason));
                }
                Poll::Ready(None) | Poll::Pending => {}
            }
        }
        // Frames to write: yield once first, so that the other connections made ready by the
        // same poll of the reactor read their ops before this one writes. Their frames for
        // this connection then leave in the same write as its ack.
        let defer = !self.deferred && self.closing.is_none() && !self.out.is_empty();
        if defer {
            self.deferred = true;
            cx.waker().wake_by_ref();
        }
        // Write what the socket takes.
        let mut stuck = false;
        if !defer {
            loop {
                match Pin::new(&mut *ws).poll_ready(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Step::Gone(e.to_string())),
                    Poll::Pending => {
                        stuck = true;
                        break;
                    }
                }
                let message = match self.out.poll_next_unpin(cx) {
                    Poll::Ready(Some(Out::Frame(bytes))) => {
                        self.unflushed += bytes.len();
                        common::text(bytes)
                    }
                    Poll::Ready(Some(Out::Ping)) => Message::Ping(Bytes::new()),
                    Poll::Ready(None) | Poll::Pending => {
                        self.deferred = false;
                        break;
                    }
                };
                self.dirty = true;
                if let Err(e) = Pin::new(&mut *ws).start_send(message) {
                    return Poll::Ready(Step::Gone(e.to_string()));
                }
            }
        }
        if self.dirty {
            match Pin::new(&mut *ws).poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    self.dirty = false;
                    if self.unflushed > 0 {
                        return Poll::Ready(Step::Sent(core::mem::take(&mut self.unflushed)));
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Step::Gone(e.to_string())),
                Poll::Pending => stuck = true,
            }
        }
        // A close waits for the frames queued before it, unless the socket cannot take
        // them.
        if self.closing.is_some() {
            if self.out.is_empty() || stuck {
                if let Some((code, reason)) = self.closing.take() {
                    return Poll::Ready(Step::Close(code, reason));
                }
            } else {
                cx.waker().wake_by_ref();
            }
        }
        match ws.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(message))) => Poll::Ready(Step::Message(message)),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Step::Gone(e.to_string())),
            Poll::Ready(None) => Poll::Ready(Step::Gone("connection closed".to_owned())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for AcceptedOtSession {
    fn drop(&mut self) {
        // Ran to its end, dropped mid-way, or never run: the session is over either way.
        self.server.closed(self.session);
    }
}

impl Timed for Shared {
    fn arm(&mut self) -> Option<std::time::Instant> {
        self.armed = self.server.poll_timeout();
        self.armed.map(|at| self.clock.to_std(at))
    }

    fn fire(&mut self) {
        let now = self.now();
        self.server.handle_timeout(now);
        self.drain();
    }
}

/// The OT endpoint's timer task.
pub(crate) type OtTimerTask = TimerTask<Shared>;

#[cfg(test)]
mod tests {
    use super::*;
    use core::future::Future;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};
    use syncmux::ot::OtServerConfig;

    /// A socket that takes nothing (a peer that stopped reading) but delivers `inbox`.
    struct Stuck {
        inbox: VecDeque<Message>,
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

    /// Writes never stall reads: a socket that takes no byte still has its messages read
    /// and applied (their acks wait, counted against the outbound bound), and a close of
    /// such a socket ends its task at once.
    #[test]
    fn reads_go_on_while_the_socket_takes_no_writes() {
        let ot = OtServer::new(OtServerConfig::default()).expect("valid config");
        // No runtime: the timer task never runs.
        let (server, _timer) = OtServerHandle::new(ot, ServerOptions::default());
        let accepted = server
            .handshake(&Handshake::new("/ot", ""))
            .expect("accepted");
        let session = accepted.session();
        let op = |revision: u64| {
            let op = format!(r#"{{"type":"op","op":[{{"i":"x"}}],"revision":{revision}}}"#);
            Message::text(op)
        };
        let socket = Stuck {
            inbox: (0..3).map(op).collect(),
        };
        let mut run = Box::pin(accepted.run(socket));
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        assert!(run.as_mut().poll(&mut cx).is_pending());
        let (revision, outbound) = server.with_server(|s, _| {
            let doc = s.document("doc-1").map(|d| d.revision());
            (doc, s.outbound_bytes(session))
        });
        assert_eq!(revision, Some(3), "every message was read and applied");
        assert!(
            outbound.is_some_and(|n| n > 0),
            "the acks wait: {outbound:?}"
        );
        server.shutdown();
        assert!(run.as_mut().poll(&mut cx).is_ready(), "the task ended");
        assert_eq!(server.session_count(), 0);
        assert_eq!(server.running_sessions(), 0);
    }

    /// A socket that delivers `inbox` and takes every write, recording which messages
    /// each flush sent together.
    #[derive(Default)]
    struct Recorder {
        inbox: Arc<Mutex<VecDeque<Message>>>,
        pending: Vec<String>,
        flushes: Arc<Mutex<Vec<Vec<String>>>>,
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

    /// An op inserting `text` at revision 0 of `doc-1`.
    fn op(text: &str) -> Message {
        Message::text(format!(
            r#"{{"type":"op","op":[{{"i":"{text}"}}],"revision":0}}"#
        ))
    }

    /// Two connections whose ops are read in the same round of the runtime: each gets its
    /// ack and the other's op in one write (the task yields once before writing, so the
    /// other connection's op is in by then), not one write each.
    #[test]
    fn frames_of_ops_read_together_leave_in_one_write() {
        let (server, _timer) = ops_at_once();
        let mut tasks = Vec::new();
        let mut flushes = Vec::new();
        for text in ["a", "b"] {
            let accepted = server
                .handshake(&Handshake::new("/ot", ""))
                .expect("accepted");
            let socket = Recorder::default();
            socket.inbox.lock().unwrap().push_back(op(text));
            flushes.push(socket.flushes.clone());
            tasks.push(Box::pin(accepted.run(socket)));
        }
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        // As a runtime runs two connections made ready together: each once, then again.
        for _ in 0..2 {
            for task in &mut tasks {
                assert!(task.as_mut().poll(&mut cx).is_pending());
            }
        }
        let first = flushes[0].lock().unwrap().clone();
        assert_eq!(first.len(), 1, "one write: {first:?}");
        assert!(
            first[0][0].contains(r#""type":"ack","revision":1"#),
            "{first:?}"
        );
        assert!(first[0][1].contains(r#""type":"op""#), "{first:?}");
        let second = flushes[1].lock().unwrap().clone();
        assert_eq!(second.len(), 1, "one write: {second:?}");
        assert_eq!(second[0].len(), 2, "{second:?}");
    }

    /// A server that sends every op on at once: the round, not the broadcast delay, batches
    /// in the tests that use it.
    fn ops_at_once() -> (OtServerHandle, OtTimerTask) {
        let mut config = OtServerConfig::default();
        config.broadcast_delay = std::time::Duration::ZERO;
        let ot = OtServer::new(config).expect("valid config");
        OtServerHandle::new(ot, ServerOptions::default())
    }

    /// A socket the hub writes to that takes everything, recording each write.
    #[derive(Clone, Default)]
    struct Writes(Arc<Mutex<Vec<Vec<u8>>>>);

    impl RawSocket for Writes {
        fn try_write_vectored(&self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
            let write: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            let n = write.len();
            self.0.lock().unwrap().push(write);
            Ok(n)
        }
        fn poll_write_ready(&self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A session whose task runs on a direct socket: what it was written, where its reads
    /// come from.
    struct DirectSession {
        session: OtSessionId,
        writes: Writes,
        inbox: Arc<Mutex<VecDeque<Message>>>,
    }

    /// `n` sessions of `server` on direct sockets, and their tasks (not yet polled).
    fn direct_sessions(
        server: &OtServerHandle,
        n: usize,
    ) -> (Vec<Pin<Box<impl Future>>>, Vec<DirectSession>) {
        let mut tasks = Vec::new();
        let mut sockets = Vec::new();
        for _ in 0..n {
            let accepted = server
                .handshake(&Handshake::new("/ot", ""))
                .expect("accepted");
            let writes = Writes::default();
            let ws = Recorder::default();
            sockets.push(DirectSession {
                session: accepted.session(),
                writes: writes.clone(),
                inbox: ws.inbox.clone(),
            });
            tasks.push(Box::pin(
                accepted.run_direct(ws, Arc::new(Direct::new(writes))),
            ));
        }
        (tasks, sockets)
    }

    /// Every task polled twice, as a runtime runs connections made ready together: reads,
    /// then the flush after the yield.
    fn round<F: Future>(tasks: &mut [Pin<Box<F>>]) {
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        for _ in 0..2 {
            for task in tasks.iter_mut() {
                assert!(task.as_mut().poll(&mut cx).is_pending());
            }
        }
    }

    /// The text payloads of the unmasked frames in `bytes`.
    fn payloads(mut bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        while let [0x81, len, rest @ ..] = bytes {
            let (payload, next) = rest.split_at(usize::from(*len));
            out.push(String::from_utf8(payload.to_vec()).unwrap());
            bytes = next;
        }
        assert!(bytes.is_empty(), "only short text frames: {bytes:?}");
        out
    }

    /// On sockets the hub writes itself, the same: the frames of the ops read in one round
    /// leave in one write per socket, written by the hub, every byte reported written.
    #[test]
    fn on_direct_sockets_the_frames_of_ops_read_together_leave_in_one_write() {
        let (server, _timer) = ops_at_once();
        let (mut tasks, sockets) = direct_sessions(&server, 2);
        // Both running, then an op arrives on each.
        round(&mut tasks);
        for (socket, text) in sockets.iter().zip(["a", "b"]) {
            socket.inbox.lock().unwrap().push_back(op(text));
        }
        round(&mut tasks);
        for (socket, peer) in sockets.iter().zip(["b", "a"]) {
            let socket = socket.writes.0.lock().unwrap();
            assert_eq!(socket.len(), 1, "one write: {socket:?}");
            let frames = payloads(&socket[0]);
            assert_eq!(frames.len(), 2, "{frames:?}");
            assert!(
                frames.iter().any(|f| f.contains(r#""type":"ack""#)),
                "{frames:?}"
            );
            let theirs = format!(r#"{{"i":"{peer}"}}"#);
            assert!(frames.iter().any(|f| f.contains(&theirs)), "{frames:?}");
        }
        for socket in &sockets {
            let outbound = server.with_server(|s, _| s.outbound_bytes(socket.session));
            assert_eq!(outbound, Some(0), "reported written");
        }
    }

    /// With the default broadcast delay, an op sent on waits on its socket: an editor's
    /// socket takes the ops held for it with its own ack, in one write; a reader's takes
    /// every op of the delay in one write when the timer fires (which the hub woke for it).
    #[test]
    fn with_the_broadcast_delay_a_socket_takes_the_ops_held_for_it_in_one_write() {
        let ot = OtServer::new(OtServerConfig::default()).expect("valid config");
        let (server, timer) = OtServerHandle::new(ot, ServerOptions::default());
        let (mut tasks, sockets) = direct_sessions(&server, 3);
        round(&mut tasks);
        while timer.wake.try_recv().is_ok() {}
        let writes_of = |i: usize| -> Vec<Vec<String>> {
            sockets[i]
                .writes
                .0
                .lock()
                .unwrap()
                .iter()
                .map(|w| payloads(w))
                .collect()
        };
        let (a, b, c) = (0, 1, 2);

        sockets[a].inbox.lock().unwrap().push_back(op("x"));
        round(&mut tasks);
        assert_eq!(writes_of(a), [[r#"{"type":"ack","revision":1}"#]]);
        assert!(writes_of(b).is_empty() && writes_of(c).is_empty());
        assert!(
            timer.wake.try_recv().is_ok(),
            "the timer task is told of the delay"
        );

        sockets[b].inbox.lock().unwrap().push_back(op("y"));
        round(&mut tasks);
        assert_eq!(
            writes_of(b),
            [[
                r#"{"type":"op","op":[{"i":"x"}],"revision":1}"#,
                r#"{"type":"ack","revision":2}"#
            ]]
        );
        assert!(writes_of(c).is_empty());

        assert!(server.lock().arm().is_some(), "the delay's deadline");
        // Past the deadline (the delay, 1 ms, ran from a's op, before this), then the timer.
        std::thread::sleep(2 * OtServerConfig::default().broadcast_delay);
        server.lock().fire();
        assert_eq!(
            writes_of(c),
            [[
                r#"{"type":"op","op":[{"i":"x"}],"revision":1}"#,
                r#"{"type":"op","op":[{"r":1},{"i":"y"}],"revision":2}"#
            ]]
        );
        assert_eq!(writes_of(a).len(), 2, "a's ack, then b's op");
    }
}
