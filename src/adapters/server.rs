//! The server side shared by both runtimes: the [`Driver`] behind a lock, one task per
//! session, one timer task. The per-runtime parts are only the listener, the timer and spawn.
//!
//! Why a lock rather than a task owning the driver: tungstenite decides the upgrade inside a
//! synchronous callback, and the state machine must decide it there (to reject with the HTTP
//! status before upgrading and to select its subprotocol). The lock is held only while one
//! input runs and its outputs are handed to the sessions' queues, never across an `.await`.
//!
//! Back pressure: each session's frames go through its own bounded queue to its own task,
//! so a slow socket stalls nobody else. A session's task reports what it wrote
//! ([`Server::handle_sent`](crate::Server::handle_sent)), so the state machine's outbound
//! bound applies (over it: close 4503); a queue that fills up first has the same outcome.

use core::fmt;
use core::pin::Pin;
use core::task::{Context, Poll};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use tungstenite::Message;

use super::clock::Clock;
use super::common;
use crate::driver::Driver;
use crate::server::{Handshake, HandshakeOutcome, ServerEvent, ServerTransmit, SessionId};
use crate::time::Instant;
use crate::wire::CloseCode;

/// Options of the server adapter (the protocol's options are the
/// [`ServerConfig`](crate::ServerConfig) inside the driver).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerOptions {
    /// Frames queued for one session's socket. A session whose queue is full is closed with
    /// 4503, like one over the state machine's outbound bound. Default 1024.
    pub max_queued_frames: usize,
    /// Largest frame read from a client (tungstenite's limit; the state machine has its own).
    /// Default 16 MiB; 0: no limit.
    pub max_ws_frame_len: usize,
}

impl Default for ServerOptions {
    fn default() -> ServerOptions {
        ServerOptions {
            max_queued_frames: 1024,
            max_ws_frame_len: 16 << 20,
        }
    }
}

/// A running sync server: cheap to clone, shared by the accept loop, the sessions and the
/// application. Made by `adapters::tokio::start` or `adapters::smol::start`.
#[derive(Clone)]
pub struct SyncServer {
    shared: Arc<Mutex<Hub>>,
    /// Closed on shutdown: accept loops stop.
    stop: async_channel::Receiver<()>,
    options: Arc<ServerOptions>,
}

impl fmt::Debug for SyncServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncServer")
            .field("sessions", &self.session_count())
            .finish_non_exhaustive()
    }
}

/// The queues of one session's task.
struct Outlet {
    frames: async_channel::Sender<Bytes>,
    close: async_channel::Sender<(CloseCode, String)>,
}

pub(crate) struct Hub {
    driver: Driver,
    clock: Clock,
    outlets: HashMap<SessionId, Outlet>,
    /// The deadline the timer task sleeps until.
    armed: Option<Instant>,
    wake: async_channel::Sender<()>,
    stop: Option<async_channel::Sender<()>>,
    max_queued_frames: usize,
}

impl Hub {
    fn now(&self) -> Instant {
        self.clock.now()
    }

    /// Hands every output of the last input to the sessions' queues, then re-arms the timer.
    fn drain(&mut self) {
        let mut slow = Vec::new();
        loop {
            while let Some(transmit) = self.driver.poll_transmit() {
                match transmit {
                    ServerTransmit::Frame { session, bytes } => {
                        if let Some(outlet) = self.outlets.get(&session) {
                            // Only the hub sends, under the lock: the check is exact.
                            if outlet.frames.len() >= self.max_queued_frames
                                || outlet.frames.try_send(bytes).is_err()
                            {
                                slow.push(session);
                            }
                        }
                    }
                    ServerTransmit::Close {
                        session,
                        code,
                        reason,
                    } => {
                        if let Some(outlet) = self.outlets.remove(&session) {
                            // Capacity 1 and sent once: never full.
                            let _ = outlet.close.try_send((code, reason));
                        }
                    }
                }
            }
            if slow.is_empty() {
                break;
            }
            let now = self.now();
            slow.sort();
            slow.dedup();
            for session in slow.drain(..) {
                let reason = "outbound queue full";
                self.driver
                    .close_session(now, session, CloseCode::SLOW_CONSUMER, reason);
            }
        }
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
                other => tracing::debug!(?other, "server event"),
            }
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
    ran: bool,
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
    pub(crate) fn new(driver: Driver, options: ServerOptions) -> (SyncServer, TimerTask) {
        let (wake_tx, wake_rx) = async_channel::bounded(1);
        let (stop_tx, stop_rx) = async_channel::bounded(1);
        let hub = Hub {
            driver,
            clock: Clock::new(),
            outlets: HashMap::new(),
            armed: None,
            wake: wake_tx,
            stop: Some(stop_tx),
            max_queued_frames: options.max_queued_frames.max(1),
        };
        let server = SyncServer {
            shared: Arc::new(Mutex::new(hub)),
            stop: stop_rx,
            options: Arc::new(options),
        };
        let timer = TimerTask {
            shared: Arc::downgrade(&server.shared),
            wake: Box::pin(wake_rx),
        };
        (server, timer)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Hub> {
        // A panic while holding the lock is a bug already reported; keep serving.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn options(&self) -> &ServerOptions {
        &self.options
    }

    /// Completes once [`SyncServer::shutdown`] was called (accept loops select on it).
    pub(crate) async fn stopped(&self) {
        let _ = self.stop.recv().await;
    }

    /// Decides a handshake (DESIGN.md section 2). On acceptance the session exists at once
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
                // Bounded by `max_queued_frames` in `Hub::drain`, not by the channel: a
                // bounded channel allocates (and touches) every slot up front, 40 KiB per
                // idle session at the default bound; this one grows in small blocks.
                let (frames_tx, frames) = async_channel::unbounded();
                let (close_tx, close) = async_channel::bounded(1);
                let outlet = Outlet {
                    frames: frames_tx,
                    close: close_tx,
                };
                hub.outlets.insert(session, outlet);
                Ok(AcceptedSession {
                    server: self.clone(),
                    session,
                    node_id,
                    protocol,
                    frames: Box::pin(frames),
                    close: Box::pin(close),
                    ran: false,
                })
            }
            HandshakeOutcome::Reject { status, reason } => Err(Rejection { status, reason }),
        };
        hub.drain();
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

    /// Sessions open (or closing).
    pub fn session_count(&self) -> usize {
        self.lock().driver.server().session_count()
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
    /// task: frames are written as the socket takes them while reading goes on.
    pub async fn run<W, E>(mut self, mut ws: W)
    where
        W: Stream<Item = Result<Message, E>> + Sink<Message> + Unpin,
        E: fmt::Display,
        <W as Sink<Message>>::Error: fmt::Display,
    {
        self.ran = true;
        let session = self.session;
        let mut unflushed = 0usize;
        loop {
            let step =
                core::future::poll_fn(|cx| self.poll_step(cx, &mut ws, &mut unflushed)).await;
            match step {
                Step::Message(Message::Text(text)) => {
                    let bytes = Bytes::from(text);
                    self.server
                        .input(|d, now| d.handle_message(now, session, bytes));
                }
                Step::Message(Message::Binary(data)) => {
                    let len = data.len();
                    self.server
                        .input(|d, now| d.handle_binary(now, session, len));
                }
                Step::Message(Message::Close(_)) => {
                    let _ = ws.close().await;
                    self.server.input(|d, now| d.handle_closed(now, session));
                    return;
                }
                // tungstenite answers pings itself.
                Step::Message(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Step::Sent(n) => self.server.input(|d, now| d.handle_sent(now, session, n)),
                Step::Gone(why) => {
                    tracing::debug!(%session, why, "socket gone");
                    self.server.input(|d, now| d.handle_closed(now, session));
                    return;
                }
                Step::Close(code, reason) => {
                    // Best effort, and never waiting: the state machine already forgot the
                    // session, so a peer that stopped reading (a slow consumer) would keep
                    // this task, its socket and its buffers alive outside every limit. A
                    // socket with room takes the close frame at once.
                    let close = common::close_message(code, &reason);
                    if let Some(Ok(())) = ws.send(close).now_or_never() {
                        let _ = ws.close().now_or_never();
                    }
                    return;
                }
            }
        }
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

impl Drop for AcceptedSession {
    fn drop(&mut self) {
        if !self.ran {
            let session = self.session;
            self.server.input(|d, now| d.handle_closed(now, session));
        }
    }
}

/// The timer task: sleeps until the state machine's next deadline (re-armed when an input
/// brings it forward), runs `handle_timeout`, and ends when the server is dropped.
pub(crate) struct TimerTask {
    shared: std::sync::Weak<Mutex<Hub>>,
    wake: Pin<Box<async_channel::Receiver<()>>>,
}

impl TimerTask {
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
                let mut hub = shared.lock().unwrap_or_else(|e| e.into_inner());
                hub.armed = hub.driver.poll_timeout();
                hub.armed.map(|at| hub.clock.to_std(at))
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
            let mut hub = shared.lock().unwrap_or_else(|e| e.into_inner());
            let now = hub.now();
            hub.driver.handle_timeout(now);
            hub.drain();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::Server;
    use crate::store::{MemoryStore, StoreConfig};
    use crate::ServerConfig;
    use core::future::Future;

    /// A session whose queue holds `max_queued_frames` unsent frames is closed with 4503 on
    /// the next one, and its queue keeps only what fitted.
    #[test]
    fn a_full_outbound_queue_closes_the_session_with_4503() {
        let driver = Driver::new(
            Server::new(ServerConfig::default()).expect("valid config"),
            MemoryStore::new(StoreConfig::default()),
        );
        let options = ServerOptions {
            max_queued_frames: 2,
            ..ServerOptions::default()
        };
        // No runtime: the timer task never runs and the session's task never drains.
        let (server, _timer) = SyncServer::new(driver, options);
        let accepted = server
            .handshake(&Handshake::new("/", "node_id=slow"))
            .expect("accepted");
        let session = accepted.session();
        for id in 0..2 {
            let ping = Bytes::from(format!(r#"{{"type":"ping","id":"{id}"}}"#));
            server.input(|d, now| d.handle_message(now, session, ping));
            assert!(accepted.close.is_empty(), "closed after {id} frames");
        }
        assert_eq!(accepted.frames.len(), 2);
        let ping = Bytes::from_static(br#"{"type":"ping","id":"2"}"#);
        server.input(|d, now| d.handle_message(now, session, ping));
        let (code, _) = accepted.close.try_recv().expect("closed");
        assert_eq!(code, CloseCode::SLOW_CONSUMER);
        assert_eq!(accepted.frames.len(), 2, "nothing queued past the bound");
        assert_eq!(server.session_count(), 0);
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

    /// A session closed while its peer does not read ends its task at once (it does not
    /// wait forever to send the close frame).
    #[test]
    fn a_session_closed_on_a_stuck_socket_ends() {
        let driver = Driver::new(
            Server::new(ServerConfig::default()).expect("valid config"),
            MemoryStore::new(StoreConfig::default()),
        );
        let (server, _timer) = SyncServer::new(driver, ServerOptions::default());
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
