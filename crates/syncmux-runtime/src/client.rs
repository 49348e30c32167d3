//! The client task and its handle, written once over [`Runtime`].
//!
//! Reads, timers and writes progress independently: a frame is taken from the client's
//! transmit queue only once the socket can take it, so a peer that stops reading (its
//! socket buffers full) stalls nothing but the writes, and the pong timeout still finds the
//! connection dead. Frames waiting meanwhile are bounded by the client's own
//! `max_queued_transmits`.

use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll};
use core::time::Duration;
use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures_channel::oneshot;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use tungstenite::Message;

use crate::clock::Clock;
use crate::common;
use crate::fallback::{Connection, TransportKind};
use crate::runtime::{self, Binding};
use syncmux::payload::{
    ChangeRecord, PresenceSnapshot, PullRequest, PullResponse, PushResponse, RawJson, ResumeAck,
    Subscribe,
};
use syncmux::wire::CloseCode;
use syncmux::ConfigError;
use syncmux::Instant;
use syncmux::{
    Client, ClientConfig, ClientEvent, ClientState, ClientTransmit, RequestError, RequestId,
    Response,
};

/// Options of the adapter itself (the protocol's options are the [`ClientConfig`]).
///
/// Events have no bound of their own here: they wait for the application in a queue of
/// [`ClientConfig::max_queued_events`], and when the application does not keep up they stay
/// in the client's own queue of that size, whose rule then applies — the client closes the
/// connection as a slow consumer (4503), reconnects and resumes from the last position it
/// delivered, losing nothing. The client task never blocks on the application, so keepalive
/// and requests go on meanwhile. Drop the [`ClientEvents`] to ignore events.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClientOptions {
    /// TLS for `wss://`. Default: rustls with the `ring` provider and the webpki roots.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Commands waiting for the client task. Default 64.
    pub command_capacity: usize,
    /// Subprotocols offered after `syncmux.v1` in the handshake's `Sec-WebSocket-Protocol`
    /// (as the browser adapter's `protocols` option), for a proxy or gateway that routes on
    /// them. The server must still select `syncmux.v1`: a client whose server selects another
    /// closes for good (4426). Default: none.
    pub protocols: Vec<String>,
    /// Seed of the backoff jitter. Default: `None`, a fresh one per client (from
    /// [`Clock::seed`]); the `seed` of the [`ClientConfig`] is then ignored.
    pub seed: Option<u64>,
    /// The transports each connect tries, in order: the next when one's handshake fails or
    /// is refused (a proxy that blocks the WebSocket upgrade), none when the server cannot
    /// be reached. Every reconnect starts again from the first, so a client on the fallback
    /// goes back to the WebSocket once it gets through. Default: the WebSocket, then SSE
    /// and POSTs ([`TransportKind::Sse`]).
    pub transports: Vec<TransportKind>,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            tls: None,
            command_capacity: 64,
            protocols: Vec::new(),
            seed: None,
            transports: vec![TransportKind::WebSocket, TransportKind::Sse],
        }
    }
}

/// How every dial of one client goes: TLS, the frame limit, the extra subprotocols.
#[derive(Debug)]
pub(crate) struct Dialer {
    pub(crate) tls: Arc<rustls::ClientConfig>,
    /// Largest frame read from the server (0: no limit).
    pub(crate) max_frame_len: usize,
    /// Subprotocols offered after the client's own.
    pub(crate) protocols: Vec<String>,
    /// What a dial tries, in order.
    pub(crate) transports: Vec<TransportKind>,
}

/// A dial under way: the open socket and the selected subprotocol, or why it failed.
pub(crate) type Dialing<W> = BoxFuture<'static, Result<(W, Option<String>), String>>;

type Issue = Box<dyn FnOnce(&mut Client, Instant) -> Result<RequestId, RequestError> + Send>;
type Reply = oneshot::Sender<Result<Response, RequestError>>;

pub(crate) enum Command {
    Request { issue: Issue, reply: Reply },
    Connect,
    Close(oneshot::Sender<()>),
    State(oneshot::Sender<ClientState>),
    Transport(oneshot::Sender<Option<TransportKind>>),
}

/// How long a socket the client is done with may take to send its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Starts the client task on runtime `R`.
pub(crate) fn start<R: Binding>(
    mut config: ClientConfig,
    options: ClientOptions,
) -> Result<(SyncClient, ClientEvents), ConfigError> {
    let clock = Clock::new();
    config.seed = options.seed.unwrap_or_else(|| clock.seed());
    let client = Client::new(config)?;
    let (cmd_tx, cmd_rx) = async_channel::bounded(options.command_capacity.max(1));
    // Unbounded: `Outbox` fills it only up to the client's `max_queued_events` (a bounded
    // channel would allocate every slot up front).
    let (ev_tx, ev_rx) = async_channel::unbounded();
    let (room_tx, room_rx) = async_channel::bounded(1);
    let dialer = Arc::new(Dialer {
        tls: options.tls.unwrap_or_else(common::default_tls),
        max_frame_len: client.config().decode_limits.max_frame_len,
        protocols: options.protocols,
        transports: options.transports,
    });
    let outbox = Outbox {
        events: ev_tx,
        capacity: client.config().max_queued_events,
        room: Box::pin(room_rx),
        full: false,
    };
    R::spawn(Box::pin(run::<R>(client, clock, dialer, cmd_rx, outbox)));
    Ok((
        SyncClient { cmds: cmd_tx },
        ClientEvents {
            rx: Box::pin(ev_rx),
            room: room_tx,
        },
    ))
}

/// One input to the client, the result of waiting on every source at once.
enum Input<W> {
    Command(Option<Command>),
    Message(Option<Result<Message, tungstenite::Error>>),
    Dialed(Result<(W, Option<String>), String>),
    Timeout,
    /// Writing to the socket failed.
    WriteFailed(tungstenite::Error),
    /// A transmit that is not a frame turned up while frames were being written.
    Transmit(ClientTransmit),
    /// The application read events: there is room for more.
    EventRoom,
}

/// Frames on their way to the open socket.
#[derive(Default)]
pub(crate) struct Writer {
    /// A frame taken from the client that the socket could not take yet.
    held: Option<Bytes>,
    /// Frames handed to the socket since its last flush.
    unflushed: bool,
}

/// The application's side of the events.
struct Outbox {
    /// Filled up to `capacity` (only this task sends, so the check is exact).
    events: async_channel::Sender<ClientEvent>,
    capacity: usize,
    /// A token per read while the queue was full (see [`ClientEvents`]).
    room: Pin<Box<async_channel::Receiver<()>>>,
    /// The queue was full at the last pass: events wait in the client.
    full: bool,
}

impl Outbox {
    /// Hands the client's events on: request outcomes to their futures, the rest to the
    /// application's queue while it has room. What does not fit stays in the client's queue,
    /// where its own bound applies (docs/protocol.md section 11).
    fn pass(&mut self, client: &mut Client, waiters: &mut BTreeMap<RequestId, Reply>) {
        self.full = false;
        loop {
            // An application that dropped its stream does not want events: they are dropped.
            if !self.events.is_closed() && self.events.len() >= self.capacity {
                self.full = true;
                return;
            }
            let Some(event) = client.poll_event() else {
                return;
            };
            let event = match event {
                ClientEvent::Response { id, outcome } => match waiters.remove(&id) {
                    // A dropped future just doesn't want the answer.
                    Some(reply) => {
                        drop(reply.send(outcome));
                        continue;
                    }
                    None => ClientEvent::Response { id, outcome },
                },
                other => other,
            };
            // Unbounded: fails only once the application dropped its stream.
            let _ = self.events.try_send(event);
        }
    }
}

/// The client task: hands out the client's outputs, then waits for one input.
async fn run<R: Binding>(
    mut client: Client,
    clock: Clock,
    dialer: Arc<Dialer>,
    cmds: async_channel::Receiver<Command>,
    mut outbox: Outbox,
) {
    let mut cmds = Box::pin(cmds);
    let mut ws: Option<Connection<R::Ws>> = None;
    let mut writer = Writer::default();
    let mut dialing: Option<Dialing<Connection<R::Ws>>> = None;
    let mut timer: Option<(Instant, BoxFuture<'static, ()>)> = None;
    let mut waiters: BTreeMap<RequestId, Reply> = BTreeMap::new();
    let mut commands_open = true;
    let mut pending: Option<ClientTransmit> = None;
    client.connect(clock.now());
    loop {
        // Frames of the open connection wait in the client until the socket takes them (in
        // `poll_inputs`). Anything else is acted on now: a dial, a close, or frames for a
        // connection that is gone (the client only queues frames while open, and drops them
        // when it leaves that state, so a held one is stale).
        if client.state() != ClientState::Open || ws.is_none() || pending.is_some() {
            writer = Writer::default();
            while let Some(transmit) = pending.take().or_else(|| client.poll_transmit()) {
                match transmit {
                    ClientTransmit::Connect(dial) => {
                        if let Some(socket) = ws.take() {
                            close_in_background::<R>(socket, CloseCode::NORMAL, "", &clock);
                        }
                        dialing = Some(Box::pin(runtime::dial::<R>(dial, dialer.clone())));
                    }
                    ClientTransmit::Frame(_) => {}
                    ClientTransmit::Close { code, reason } => {
                        dialing = None;
                        if let Some(socket) = ws.take() {
                            // The client already counts the connection as gone.
                            close_in_background::<R>(socket, code, &reason, &clock);
                        }
                    }
                }
                if client.state() == ClientState::Open && ws.is_some() {
                    break;
                }
            }
        }
        outbox.pass(&mut client, &mut waiters);
        if !commands_open && client.state() == ClientState::Closed {
            return;
        }
        let deadline = client.poll_timeout();
        if timer.as_ref().map(|(at, _)| *at) != deadline {
            timer = deadline.map(|at| (at, R::sleep_until(clock.to_std(at))));
        }

        let input = core::future::poll_fn(|cx| {
            poll_inputs(
                cx,
                &mut client,
                Sources {
                    commands: commands_open.then_some(&mut cmds),
                    ws: &mut ws,
                    writer: &mut writer,
                    dialing: &mut dialing,
                    timer: &mut timer,
                    outbox: &mut outbox,
                },
            )
        })
        .await;
        let now = clock.now();
        match input {
            Input::Command(Some(Command::Request { issue, reply })) => {
                match issue(&mut client, now) {
                    Ok(id) => drop(waiters.insert(id, reply)),
                    Err(e) => drop(reply.send(Err(e))),
                }
            }
            Input::Command(Some(Command::Connect)) => client.connect(now),
            Input::Command(Some(Command::Close(done))) => {
                client.close(now);
                let _ = done.send(());
            }
            Input::Command(Some(Command::State(reply))) => drop(reply.send(client.state())),
            Input::Command(Some(Command::Transport(reply))) => {
                let _ = reply.send(ws.as_ref().map(Connection::kind));
            }
            Input::Command(None) => {
                // Every handle is gone: close (1000) and end once the close is sent.
                commands_open = false;
                client.close(now);
            }
            Input::Message(Some(Ok(message))) => match message {
                Message::Text(text) => client.handle_message(now, text.into()),
                Message::Binary(data) => client.handle_binary(now, data.len()),
                Message::Close(frame) => {
                    let (code, reason) = common::close_code(frame.as_ref());
                    ws = None;
                    client.handle_disconnected(now, code, &reason);
                }
                // tungstenite answers pings itself; pongs and raw frames carry nothing.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            },
            Input::Message(Some(Err(e))) | Input::WriteFailed(e) => {
                ws = None;
                client.handle_disconnected(now, None, &e.to_string());
            }
            Input::Message(None) => {
                ws = None;
                client.handle_disconnected(now, None, "connection closed");
            }
            Input::Dialed(Ok((socket, protocol))) => {
                dialing = None;
                ws = Some(socket);
                writer = Writer::default();
                client.handle_connected(now, protocol.as_deref());
            }
            Input::Dialed(Err(why)) => {
                dialing = None;
                client.handle_disconnected(now, None, &why);
            }
            Input::Timeout => {
                timer = None;
                client.handle_timeout(now);
            }
            Input::Transmit(transmit) => pending = Some(transmit),
            Input::EventRoom => {}
        }
    }
}

/// Sends a close frame on a socket the client is done with and closes it, in the
/// background and for [`CLOSE_GRACE`] at most: a peer that stopped reading cannot hold the
/// client task, and need not hold the socket for long.
fn close_in_background<R: Binding>(
    mut socket: Connection<R::Ws>,
    code: CloseCode,
    reason: &str,
    clock: &Clock,
) {
    let close = common::close_message(code, reason);
    let grace = R::sleep_until(clock.to_std(clock.now() + CLOSE_GRACE));
    R::spawn(Box::pin(async move {
        let closing = async move {
            // Best effort: the peer may be gone already.
            if socket.send(close).await.is_ok() {
                let _ = socket.close().await;
            }
        };
        futures_util::future::select(Box::pin(closing), grace).await;
    }));
}

/// Everything the client task waits on.
struct Sources<'a, W> {
    /// `None` once every handle is gone.
    commands: Option<&'a mut Pin<Box<async_channel::Receiver<Command>>>>,
    ws: &'a mut Option<W>,
    writer: &'a mut Writer,
    dialing: &'a mut Option<Dialing<W>>,
    timer: &'a mut Option<(Instant, BoxFuture<'static, ()>)>,
    outbox: &'a mut Outbox,
}

/// Polls every input source once, in a fixed order (commands first, so an application's
/// requests are not starved by a busy socket), writing what the socket takes on the way.
fn poll_inputs<W>(cx: &mut Context<'_>, client: &mut Client, s: Sources<'_, W>) -> Poll<Input<W>>
where
    W: Stream<Item = Result<Message, tungstenite::Error>>
        + Sink<Message, Error = tungstenite::Error>
        + Unpin,
{
    if let Some(cmds) = s.commands {
        if let Poll::Ready(cmd) = cmds.poll_next_unpin(cx) {
            return Poll::Ready(Input::Command(cmd));
        }
    }
    if let Some(socket) = s.ws.as_mut() {
        if client.state() == ClientState::Open {
            match write(cx, client, socket, s.writer) {
                Ok(None) => {}
                Ok(Some(transmit)) => return Poll::Ready(Input::Transmit(transmit)),
                Err(e) => return Poll::Ready(Input::WriteFailed(e)),
            }
        }
        if let Poll::Ready(message) = socket.poll_next_unpin(cx) {
            return Poll::Ready(Input::Message(message));
        }
    }
    if let Some(dial) = s.dialing.as_mut() {
        if let Poll::Ready(result) = dial.poll_unpin(cx) {
            return Poll::Ready(Input::Dialed(result));
        }
    }
    if let Some((_, sleep)) = s.timer.as_mut() {
        if sleep.poll_unpin(cx).is_ready() {
            return Poll::Ready(Input::Timeout);
        }
    }
    if s.outbox.full && s.outbox.room.poll_next_unpin(cx).is_ready() {
        return Poll::Ready(Input::EventRoom);
    }
    Poll::Pending
}

/// Hands the socket the client's frames while it takes them, and flushes. Never waits: a
/// frame the socket cannot take yet is held (one at most; the rest stay in the client's
/// bounded queue) and the socket wakes the task when it has room. Gives back a transmit
/// that is not a frame, for the task to act on.
fn write<W>(
    cx: &mut Context<'_>,
    client: &mut Client,
    socket: &mut W,
    writer: &mut Writer,
) -> Result<Option<ClientTransmit>, tungstenite::Error>
where
    W: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let mut other = None;
    writer.write(cx, socket, || match client.poll_transmit()? {
        ClientTransmit::Frame(bytes) => Some(bytes),
        transmit => {
            other = Some(transmit);
            None
        }
    })?;
    Ok(other)
}

impl Writer {
    /// Hands `socket` the frames `next` gives while it takes them, and flushes; never waits
    /// (a frame it cannot take yet is held for the next call). The sync and the OT client
    /// tasks write alike.
    pub(crate) fn write<W>(
        &mut self,
        cx: &mut Context<'_>,
        socket: &mut W,
        mut next: impl FnMut() -> Option<Bytes>,
    ) -> Result<(), tungstenite::Error>
    where
        W: Sink<Message, Error = tungstenite::Error> + Unpin,
    {
        loop {
            let Some(bytes) = self.held.take().or_else(&mut next) else {
                break;
            };
            match Pin::new(&mut *socket).poll_ready(cx) {
                Poll::Ready(Ok(())) => {
                    Pin::new(&mut *socket).start_send(common::text(bytes))?;
                    self.unflushed = true;
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => {
                    self.held = Some(bytes);
                    break;
                }
            }
        }
        if self.unflushed {
            if let Poll::Ready(flushed) = Pin::new(&mut *socket).poll_flush(cx) {
                flushed?;
                self.unflushed = false;
            }
        }
        Ok(())
    }
}

/// The application's handle on a client task. Cheap to clone; the task closes the
/// connection (1000) and ends when every handle is dropped.
///
/// Each request method returns a future of its one outcome (docs/protocol.md section 11): the
/// server's answer, its error frame, a timeout, or a disconnect. A command the task can no
/// longer take fails with [`RequestError::Closed`].
#[derive(Clone, Debug)]
pub struct SyncClient {
    cmds: async_channel::Sender<Command>,
}

impl core::fmt::Debug for Command {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Command::Request { .. } => "Request",
            Command::Connect => "Connect",
            Command::Close(_) => "Close",
            Command::State(_) => "State",
            Command::Transport(_) => "Transport",
        })
    }
}

impl SyncClient {
    /// Issues any command of the [`Client`] and waits for its outcome.
    pub fn request<F>(
        &self,
        issue: F,
    ) -> impl Future<Output = Result<Response, RequestError>> + Send
    where
        F: FnOnce(&mut Client, Instant) -> Result<RequestId, RequestError> + Send + 'static,
    {
        let cmds = self.cmds.clone();
        async move {
            let (reply, answer) = oneshot::channel();
            let issue = Box::new(issue);
            cmds.send(Command::Request { issue, reply })
                .await
                .map_err(|_| RequestError::Closed)?;
            answer.await.map_err(|_| RequestError::Closed)?
        }
    }

    /// Issues a command and takes its answer apart with `pick` (which gives back an answer
    /// of another kind, to report).
    fn ask<T: Send>(
        &self,
        issue: impl FnOnce(&mut Client, Instant) -> Result<RequestId, RequestError> + Send + 'static,
        pick: fn(Response) -> Result<T, Response>,
    ) -> impl Future<Output = Result<T, RequestError>> + Send {
        let answer = self.request(issue);
        async move {
            pick(answer.await?).map_err(|other| RequestError::InvalidResponse {
                message: format!("unexpected answer {other:?}"),
            })
        }
    }

    /// Pulls what `pull` asks for; see [`Client::pull`].
    pub fn pull(
        &self,
        pull: PullRequest,
    ) -> impl Future<Output = Result<PullResponse, RequestError>> + Send {
        self.ask(
            move |c, now| c.pull(now, pull),
            |r| match r {
                Response::Pull(pull) => Ok(pull),
                other => Err(other),
            },
        )
    }

    /// Pushes `changes` as this node.
    pub fn push(
        &self,
        changes: Vec<ChangeRecord>,
    ) -> impl Future<Output = Result<PushResponse, RequestError>> + Send {
        self.ask(
            move |c, now| c.push(now, changes),
            |r| match r {
                Response::Push(push) => Ok(push),
                other => Err(other),
            },
        )
    }

    /// Subscribes to the tables of `subscribe` (replaying first what it asks for); live
    /// changes arrive as [`ClientEvent::Changes`]. Restored after every reconnect; see
    /// [`Client::subscribe`].
    pub fn subscribe(
        &self,
        subscribe: Subscribe,
    ) -> impl Future<Output = Result<Option<ResumeAck>, RequestError>> + Send {
        self.ask(move |c, now| c.subscribe(now, subscribe), ack)
    }

    /// Unsubscribes from `tables`.
    pub fn unsubscribe<I, T>(
        &self,
        tables: I,
    ) -> impl Future<Output = Result<(), RequestError>> + Send
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        let tables: Vec<String> = tables.into_iter().map(Into::into).collect();
        self.ask(move |c, now| c.unsubscribe(now, tables), acked)
    }

    /// Joins `topic` with `data` or updates this node's state in it.
    pub fn update_presence(
        &self,
        topic: impl Into<String>,
        data: RawJson,
    ) -> impl Future<Output = Result<(), RequestError>> + Send {
        let topic = topic.into();
        self.ask(move |c, now| c.update_presence(now, topic, data), acked)
    }

    /// Leaves `topic`.
    pub fn leave_presence(
        &self,
        topic: impl Into<String>,
    ) -> impl Future<Output = Result<(), RequestError>> + Send {
        let topic = topic.into();
        self.ask(move |c, now| c.leave_presence(now, topic), acked)
    }

    /// The members of `topic`.
    pub fn get_presence(
        &self,
        topic: impl Into<String>,
    ) -> impl Future<Output = Result<PresenceSnapshot, RequestError>> + Send {
        let topic = topic.into();
        self.ask(
            move |c, now| c.get_presence(now, topic),
            |r| match r {
                Response::PresenceSnapshot(snapshot) => Ok(snapshot),
                other => Err(other),
            },
        )
    }

    /// Joins `room`; the member list arrives as a [`ClientEvent::Room`].
    pub fn join_room(
        &self,
        room: impl Into<String>,
        data: Option<RawJson>,
    ) -> impl Future<Output = Result<(), RequestError>> + Send {
        let room = room.into();
        self.ask(move |c, now| c.join_room(now, room, data), acked)
    }

    /// Leaves `room`.
    pub fn leave_room(
        &self,
        room: impl Into<String>,
    ) -> impl Future<Output = Result<(), RequestError>> + Send {
        let room = room.into();
        self.ask(move |c, now| c.leave_room(now, room), acked)
    }

    /// Sends `data` to the other members of `room`.
    pub fn broadcast(
        &self,
        room: impl Into<String>,
        data: RawJson,
    ) -> impl Future<Output = Result<(), RequestError>> + Send {
        let room = room.into();
        self.ask(move |c, now| c.broadcast(now, room, data), acked)
    }

    /// Pings the server; gives back the echoed payload.
    pub fn ping(
        &self,
        payload: RawJson,
    ) -> impl Future<Output = Result<RawJson, RequestError>> + Send {
        self.ask(
            move |c, now| c.ping(now, payload),
            |r| match r {
                Response::Pong(payload) => Ok(payload),
                other => Err(other),
            },
        )
    }

    /// Where the connection stands (`Closed` once the task has ended).
    pub async fn state(&self) -> ClientState {
        let (reply, answer) = oneshot::channel();
        if self.cmds.send(Command::State(reply)).await.is_err() {
            return ClientState::Closed;
        }
        answer.await.unwrap_or(ClientState::Closed)
    }

    /// The transport of the open connection (`None` while there is none): the WebSocket, or
    /// the SSE fallback ([`ClientOptions::transports`]).
    pub async fn transport(&self) -> Option<TransportKind> {
        let (reply, answer) = oneshot::channel();
        self.cmds.send(Command::Transport(reply)).await.ok()?;
        answer.await.ok().flatten()
    }

    /// Connects again after the client closed for good (see [`Client::connect`]).
    pub async fn connect(&self) {
        // A task that is gone cannot connect; `state` reports it as closed.
        let _ = self.cmds.send(Command::Connect).await;
    }

    /// Closes for good (1000); pending requests fail with `DISCONNECTED`.
    pub async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.cmds.send(Command::Close(done)).await.is_ok() {
            let _ = closed.await;
        }
    }
}

/// A subscribe's answer.
fn ack(response: Response) -> Result<Option<ResumeAck>, Response> {
    match response {
        Response::Ack(ack) => Ok(ack),
        other => Err(other),
    }
}

/// An ack, of a request that resumes nothing.
fn acked(response: Response) -> Result<(), Response> {
    ack(response).map(drop)
}

/// The client's events, in order: connection changes, live changes, presence and room
/// events, errors. Responses come to the futures of their requests instead.
///
/// Events wait here up to the client's `max_queued_events`; an application that does not
/// read them gets the client's slow consumer rule (see [`ClientOptions`]).
#[derive(Debug)]
pub struct ClientEvents {
    rx: Pin<Box<async_channel::Receiver<ClientEvent>>>,
    /// Tells the client task that a read made room (a token, coalesced).
    room: async_channel::Sender<()>,
}

impl ClientEvents {
    /// The next event; `None` once the client task has ended.
    pub async fn recv(&mut self) -> Option<ClientEvent> {
        self.next().await
    }
}

impl Stream for ClientEvents {
    type Item = ClientEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ClientEvent>> {
        let next = self.rx.as_mut().poll_next(cx);
        if let Poll::Ready(Some(_)) = next {
            // Full already means a wake-up is pending.
            let _ = self.room.try_send(());
        }
        next
    }
}
