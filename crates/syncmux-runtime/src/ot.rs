//! The OT endpoint served over WebSockets (README, "The OT profile"), shared by both runtimes:
//! the [`OtServer`] behind a lock, one task per connection, one timer task. Start it with
//! `Runtime::start_ot` and accept connections with `Runtime::serve` or `Runtime::accept`.
//!
//! It runs on the same [hub](crate::hub) as the sync server ([`SyncServer`](crate::SyncServer)),
//! and for the same reasons: tungstenite decides the upgrade in a synchronous callback, where
//! the state machine must answer (`?token=` refused with 401 before upgrading), so the state
//! machine sits behind a lock held only while one input runs and its outputs are handed to
//! the connections. This module is what the OT profile adds: the [`OtServer`] as the hub's
//! machine, and the events its shared history answers.
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

use bytes::Bytes;

use crate::clock::Clock;
use crate::hub::{Accepted, Hub, Machine, TimerTask, Transmit};
use crate::runtime::Binding;
use crate::{Rejection, ServerOptions};
use syncmux::ot::{OtHandshakeOutcome, OtServer, OtServerEvent, OtSessionId, OtTransmit};
use syncmux::Handshake;
use syncmux::Instant;

/// A running OT server: cheap to clone, shared by the accept loop, the connections and the
/// application. Made by `Runtime::start_ot`. What both endpoints do (`handshake`,
/// `shutdown`, `drained`, the counts) is [`Hub`]'s.
pub type OtServerHandle = Hub<OtMachine>;

/// A handshake the OT server accepted: answer the upgrade, then [`run`](Accepted::run) the
/// connection on the upgraded socket. Dropped without running, the session is closed. See
/// [`Accepted`].
pub type AcceptedOtSession = Accepted<OtMachine>;

/// The OT profile as the hub drives it: the server, and where its shared history's events
/// go ([`OtServerHandle::shared_events`]).
pub struct OtMachine {
    server: OtServer,
    shared: Option<async_channel::Sender<OtServerEvent>>,
}

impl Machine for OtMachine {
    const NAME: &'static str = "OtServerHandle";
    const BATCHES: bool = true;
    type Session = OtSessionId;
    type Accept = ();

    fn index(session: OtSessionId) -> usize {
        session.index()
    }

    fn handshake(
        &mut self,
        now: Instant,
        handshake: &Handshake,
    ) -> Result<(OtSessionId, ()), Rejection> {
        match self.server.handle_handshake(now, handshake) {
            OtHandshakeOutcome::Accept { session } => Ok((session, ())),
            OtHandshakeOutcome::Reject { status, reason } => Err(Rejection { status, reason }),
        }
    }

    /// The OT wire has no subprotocol.
    fn protocol((): &()) -> Option<&str> {
        None
    }

    fn message(&mut self, now: Instant, session: OtSessionId, bytes: Bytes) {
        self.server.handle_message(now, session, bytes);
    }

    /// The seed's `ws` server reads binary frames like text; so does the core.
    fn binary(&mut self, now: Instant, session: OtSessionId, bytes: Bytes) {
        self.server.handle_message(now, session, bytes);
    }

    fn pong(&mut self, now: Instant, session: OtSessionId) {
        self.server.handle_pong(now, session);
    }

    fn sent(&mut self, now: Instant, session: OtSessionId, bytes: usize) {
        self.server.handle_sent(now, session, bytes);
    }

    fn disconnected(&mut self, now: Instant, session: OtSessionId) {
        self.server.handle_disconnected(now, session);
    }

    fn timeout(&mut self, now: Instant) {
        self.server.handle_timeout(now);
    }

    fn shutdown(&mut self, now: Instant) {
        self.server.shutdown(now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.server.poll_timeout()
    }

    fn poll_transmit(&mut self) -> Option<Transmit<OtSessionId>> {
        Some(match self.server.poll_transmit()? {
            OtTransmit::Frame { session, bytes } => Transmit::Frame(session, bytes),
            OtTransmit::Ping { session } => Transmit::Ping(session),
            OtTransmit::Close {
                session,
                code,
                reason,
            } => Transmit::Close(session, code, reason),
            OtTransmit::Terminate { session } => Transmit::Terminate(session),
        })
    }

    fn events(&mut self, _: &Clock) -> bool {
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
        false
    }

    fn session_count(&self) -> usize {
        self.server.session_count()
    }
}

impl OtServerHandle {
    pub(crate) fn new(
        server: OtServer,
        options: ServerOptions,
    ) -> (OtServerHandle, TimerTask<OtMachine>) {
        let max_frame_len = server.config().max_frame_len;
        let machine = OtMachine {
            server,
            shared: None,
        };
        Hub::with_machine(machine, Clock::new(), options, max_frame_len)
    }

    /// An endpoint around `server` with its timer task running on `R`.
    pub(crate) fn start<R: Binding>(server: OtServer, options: ServerOptions) -> OtServerHandle {
        Hub::run_on::<R>(OtServerHandle::new(server, options))
    }

    /// The events a shared history answers (`Commit`, `Fetch`, `Load`, `DocumentCreated`,
    /// `DocumentDropped`; see [`OtServer`'s shared history](syncmux::ot::OtServer#shared-history)),
    /// from now on: the Redis adapter (`syncmux_redis::ot`) reads them. A second call takes
    /// them from the first receiver.
    pub fn shared_events(&self) -> async_channel::Receiver<OtServerEvent> {
        let (tx, rx) = async_channel::unbounded();
        self.lock().machine.shared = Some(tx);
        rx
    }

    /// Runs `f` on the state machine (to read a document, or close a session), then hands
    /// its outputs out.
    pub fn with_server<T>(&self, f: impl FnOnce(&mut OtServer, Instant) -> T) -> T {
        self.input(|m, now| f(&mut m.server, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::direct::Direct;
    use crate::hub::testing::{Recorder, Stuck, Writes};
    use core::future::Future;
    use core::pin::Pin;
    use core::task::Context;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};
    use syncmux::ot::OtServerConfig;
    use tungstenite::Message;

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
    fn ops_at_once() -> (OtServerHandle, TimerTask<OtMachine>) {
        let mut config = OtServerConfig::default();
        config.broadcast_delay = std::time::Duration::ZERO;
        let ot = OtServer::new(config).expect("valid config");
        OtServerHandle::new(ot, ServerOptions::default())
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
            let frames = payloads(&socket[0].1);
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
                .map(|(_, w)| payloads(w))
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
