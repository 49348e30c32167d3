//! The client task and its handle, shared by both runtimes. The per-runtime part is only
//! how to dial and how to sleep ([`Runtime`]).

use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll};
use std::collections::BTreeMap;
use std::sync::Arc;

use futures_channel::oneshot;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use tungstenite::Message;

use super::clock::Clock;
use super::common;
use crate::client::{
    Client, ClientConfig, ClientEvent, ClientState, ConfigError, DialRequest, RequestError,
    RequestId, Response, Transmit,
};
use crate::payload::{
    ChangeRecord, Hlc, PresenceSnapshot, PullResponse, PushResponse, RawJson, ResumeAck,
};
use crate::time::Instant;

/// Options of the adapter itself (the protocol's options are the [`ClientConfig`]).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClientOptions {
    /// TLS for `wss://`. Default: rustls with the `ring` provider and the webpki roots.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Commands waiting for the client task. Default 64.
    pub command_capacity: usize,
    /// Events waiting for the application. When full, the client task waits for the
    /// application to read (drop the [`ClientEvents`] to ignore events). Default 1024.
    pub event_capacity: usize,
    /// Seed of the backoff jitter. Default: `None`, a fresh one per client (from
    /// [`Clock::seed`]); the `seed` of the [`ClientConfig`] is then ignored.
    pub seed: Option<u64>,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            tls: None,
            command_capacity: 64,
            event_capacity: 1024,
            seed: None,
        }
    }
}

/// What a runtime supplies: a dial and a timer. Everything else is shared.
pub(crate) trait Runtime: 'static {
    /// An open WebSocket.
    type Ws: Stream<Item = Result<Message, tungstenite::Error>>
        + Sink<Message, Error = tungstenite::Error>
        + Unpin
        + Send
        + 'static;

    /// Opens a WebSocket; gives it with the subprotocol the server selected.
    fn dial(
        dial: DialRequest,
        tls: Arc<rustls::ClientConfig>,
        max_frame_len: usize,
    ) -> Dialing<Self::Ws>;

    /// Completes at `at`.
    fn sleep_until(at: std::time::Instant) -> BoxFuture<'static, ()>;

    /// Runs the task in the background.
    fn spawn(task: BoxFuture<'static, ()>);
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
}

/// Starts the client task on runtime `R`.
pub(crate) fn start<R: Runtime>(
    mut config: ClientConfig,
    options: ClientOptions,
) -> Result<(SyncClient, ClientEvents), ConfigError> {
    let clock = Clock::new();
    config.seed = options.seed.unwrap_or_else(|| clock.seed());
    let client = Client::new(config)?;
    let (cmd_tx, cmd_rx) = async_channel::bounded(options.command_capacity.max(1));
    let (ev_tx, ev_rx) = async_channel::bounded(options.event_capacity.max(1));
    let tls = options.tls.unwrap_or_else(common::default_tls);
    R::spawn(Box::pin(run::<R>(client, clock, tls, cmd_rx, ev_tx)));
    Ok((
        SyncClient { cmds: cmd_tx },
        ClientEvents {
            rx: Box::pin(ev_rx),
        },
    ))
}

/// One input to the client, the result of waiting on every source at once.
enum Input<W> {
    Command(Option<Command>),
    Message(Option<Result<Message, tungstenite::Error>>),
    Dialed(Result<(W, Option<String>), String>),
    Timeout,
}

/// The client task: drains the client's outputs, then waits for one input (STYLE.md 3).
async fn run<R: Runtime>(
    mut client: Client,
    clock: Clock,
    tls: Arc<rustls::ClientConfig>,
    cmds: async_channel::Receiver<Command>,
    events: async_channel::Sender<ClientEvent>,
) {
    let mut cmds = Box::pin(cmds);
    let max_frame_len = client.config().decode_limits.max_frame_len;
    let mut ws: Option<R::Ws> = None;
    let mut dialing: Option<Dialing<R::Ws>> = None;
    let mut timer: Option<(Instant, BoxFuture<'static, ()>)> = None;
    let mut waiters: BTreeMap<RequestId, Reply> = BTreeMap::new();
    let mut commands_open = true;
    client.connect(clock.now());
    loop {
        while let Some(transmit) = client.poll_transmit() {
            match transmit {
                Transmit::Dial(dial) => {
                    ws = None;
                    dialing = Some(R::dial(dial, tls.clone(), max_frame_len));
                }
                Transmit::Frame(bytes) => {
                    if let Some(socket) = ws.as_mut() {
                        if let Err(e) = socket.feed(common::text(bytes)).await {
                            ws = None;
                            client.handle_disconnected(clock.now(), None, &e.to_string());
                        }
                    }
                }
                Transmit::Close { code, reason } => {
                    dialing = None;
                    if let Some(mut socket) = ws.take() {
                        // Best effort: the client already counts the connection as gone.
                        let _ = socket.send(common::close_message(code, &reason)).await;
                    }
                }
            }
        }
        if let Some(socket) = ws.as_mut() {
            if let Err(e) = socket.flush().await {
                ws = None;
                client.handle_disconnected(clock.now(), None, &e.to_string());
                continue;
            }
        }
        while let Some(event) = client.poll_event() {
            if let ClientEvent::Response { id, outcome } = event {
                match waiters.remove(&id) {
                    // A dropped future just doesn't want the answer.
                    Some(reply) => drop(reply.send(outcome)),
                    None => forward(&events, ClientEvent::Response { id, outcome }).await,
                }
            } else {
                forward(&events, event).await;
            }
        }
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
                commands_open,
                &mut cmds,
                &mut ws,
                &mut dialing,
                &mut timer,
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
            Input::Command(None) => {
                // Every handle is gone: close (1000) and end once the close is sent.
                commands_open = false;
                client.close(now);
            }
            Input::Message(Some(Ok(message))) => match message {
                Message::Text(text) => client.handle_message(now, text.into()),
                Message::Binary(_) => client.handle_binary(now),
                Message::Close(frame) => {
                    let (code, reason) = common::close_code(frame.as_ref());
                    ws = None;
                    client.handle_disconnected(now, code, &reason);
                }
                // tungstenite answers pings itself; pongs and raw frames carry nothing.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            },
            Input::Message(Some(Err(e))) => {
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
        }
    }
}

/// Polls every input source once, in a fixed order (commands first, so an application's
/// requests are not starved by a busy socket).
fn poll_inputs<W: Stream<Item = Result<Message, tungstenite::Error>> + Unpin>(
    cx: &mut Context<'_>,
    commands_open: bool,
    cmds: &mut Pin<Box<async_channel::Receiver<Command>>>,
    ws: &mut Option<W>,
    dialing: &mut Option<Dialing<W>>,
    timer: &mut Option<(Instant, BoxFuture<'static, ()>)>,
) -> Poll<Input<W>> {
    if commands_open {
        if let Poll::Ready(cmd) = cmds.poll_next_unpin(cx) {
            return Poll::Ready(Input::Command(cmd));
        }
    }
    if let Some(socket) = ws.as_mut() {
        if let Poll::Ready(message) = socket.poll_next_unpin(cx) {
            return Poll::Ready(Input::Message(message));
        }
    }
    if let Some(dial) = dialing.as_mut() {
        if let Poll::Ready(result) = dial.poll_unpin(cx) {
            return Poll::Ready(Input::Dialed(result));
        }
    }
    if let Some((_, sleep)) = timer.as_mut() {
        if sleep.poll_unpin(cx).is_ready() {
            return Poll::Ready(Input::Timeout);
        }
    }
    Poll::Pending
}

async fn forward(events: &async_channel::Sender<ClientEvent>, event: ClientEvent) {
    // An application that dropped its event stream does not want events.
    let _ = events.send(event).await;
}

/// The application's handle on a client task. Cheap to clone; the task closes the
/// connection (1000) and ends when every handle is dropped.
///
/// Each request method returns a future of its one outcome (DESIGN.md section 4): the
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
        })
    }
}

fn strings<I: IntoIterator<Item = T>, T: Into<String>>(items: I) -> Vec<String> {
    items.into_iter().map(Into::into).collect()
}

fn unexpected(response: Response) -> RequestError {
    RequestError::InvalidResponse {
        message: format!("unexpected answer {response:?}"),
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

    /// Pulls the changes of `tables` after `since`.
    pub fn pull<I, T>(
        &self,
        tables: I,
        since: Option<Hlc>,
    ) -> impl Future<Output = Result<PullResponse, RequestError>> + Send
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.pull_after(tables, since, None)
    }

    /// Pulls the changes of `tables` after the server position `cursor` (falling back to
    /// `since` where the server cannot serve it); see [`Client::pull_after`].
    pub fn pull_after<I, T>(
        &self,
        tables: I,
        since: Option<Hlc>,
        cursor: Option<String>,
    ) -> impl Future<Output = Result<PullResponse, RequestError>> + Send
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        let tables = strings(tables);
        let answer = self.request(move |c, now| c.pull_after(now, tables, since, cursor));
        async move {
            match answer.await? {
                Response::Pull(pull) => Ok(pull),
                other => Err(unexpected(other)),
            }
        }
    }

    /// Pushes `changes` as this node.
    pub fn push(
        &self,
        changes: Vec<ChangeRecord>,
    ) -> impl Future<Output = Result<PushResponse, RequestError>> + Send {
        let answer = self.request(move |c, now| c.push(now, changes));
        async move {
            match answer.await? {
                Response::Push(push) => Ok(push),
                other => Err(unexpected(other)),
            }
        }
    }

    /// Subscribes to `tables` (replaying the changes after `since` first); live changes
    /// arrive as [`ClientEvent::Changes`]. Restored after every reconnect.
    pub fn subscribe<I, T>(
        &self,
        tables: I,
        since: Option<Hlc>,
    ) -> impl Future<Output = Result<Option<ResumeAck>, RequestError>> + Send
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.subscribe_after(tables, since, None)
    }

    /// Subscribes to `tables`, replaying first the changes after the server position
    /// `cursor` (or after `since` where the server cannot serve it; the ack then says
    /// `recovered: false`); see [`Client::subscribe_after`].
    pub fn subscribe_after<I, T>(
        &self,
        tables: I,
        since: Option<Hlc>,
        cursor: Option<String>,
    ) -> impl Future<Output = Result<Option<ResumeAck>, RequestError>> + Send
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        let tables = strings(tables);
        let answer = self.request(move |c, now| c.subscribe_after(now, tables, since, cursor));
        async move { ack(answer.await?) }
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
        let tables = strings(tables);
        let answer = self.request(move |c, now| c.unsubscribe(now, tables));
        async move { ack(answer.await?).map(drop) }
    }

    /// Joins `topic` with `data` or updates this node's state in it.
    pub fn update_presence(
        &self,
        topic: impl Into<String>,
        data: RawJson,
    ) -> impl Future<Output = Result<(), RequestError>> + Send {
        let topic = topic.into();
        let answer = self.request(move |c, now| c.update_presence(now, topic, data));
        async move { ack(answer.await?).map(drop) }
    }

    /// Leaves `topic`.
    pub fn leave_presence(
        &self,
        topic: impl Into<String>,
    ) -> impl Future<Output = Result<(), RequestError>> + Send {
        let topic = topic.into();
        let answer = self.request(move |c, now| c.leave_presence(now, topic));
        async move { ack(answer.await?).map(drop) }
    }

    /// The members of `topic`.
    pub fn get_presence(
        &self,
        topic: impl Into<String>,
    ) -> impl Future<Output = Result<PresenceSnapshot, RequestError>> + Send {
        let topic = topic.into();
        let answer = self.request(move |c, now| c.get_presence(now, topic));
        async move {
            match answer.await? {
                Response::PresenceSnapshot(snapshot) => Ok(snapshot),
                other => Err(unexpected(other)),
            }
        }
    }

    /// Joins `room`; the member list arrives as a [`ClientEvent::Room`].
    pub fn join_room(
        &self,
        room: impl Into<String>,
        data: Option<RawJson>,
    ) -> impl Future<Output = Result<(), RequestError>> + Send {
        let room = room.into();
        let answer = self.request(move |c, now| c.join_room(now, room, data));
        async move { ack(answer.await?).map(drop) }
    }

    /// Leaves `room`.
    pub fn leave_room(
        &self,
        room: impl Into<String>,
    ) -> impl Future<Output = Result<(), RequestError>> + Send {
        let room = room.into();
        let answer = self.request(move |c, now| c.leave_room(now, room));
        async move { ack(answer.await?).map(drop) }
    }

    /// Sends `data` to the other members of `room`.
    pub fn broadcast(
        &self,
        room: impl Into<String>,
        data: RawJson,
    ) -> impl Future<Output = Result<(), RequestError>> + Send {
        let room = room.into();
        let answer = self.request(move |c, now| c.broadcast(now, room, data));
        async move { ack(answer.await?).map(drop) }
    }

    /// Pings the server; gives back the echoed payload.
    pub fn ping(
        &self,
        payload: RawJson,
    ) -> impl Future<Output = Result<RawJson, RequestError>> + Send {
        let answer = self.request(move |c, now| c.ping(now, payload));
        async move {
            match answer.await? {
                Response::Pong(payload) => Ok(payload),
                other => Err(unexpected(other)),
            }
        }
    }

    /// Where the connection stands (`Closed` once the task has ended).
    pub async fn state(&self) -> ClientState {
        let (reply, answer) = oneshot::channel();
        if self.cmds.send(Command::State(reply)).await.is_err() {
            return ClientState::Closed;
        }
        answer.await.unwrap_or(ClientState::Closed)
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

fn ack(response: Response) -> Result<Option<ResumeAck>, RequestError> {
    match response {
        Response::Ack(ack) => Ok(ack),
        other => Err(unexpected(other)),
    }
}

/// The client's events, in order: connection changes, live changes, presence and room
/// events, errors. Responses come to the futures of their requests instead.
#[derive(Debug)]
pub struct ClientEvents {
    rx: Pin<Box<async_channel::Receiver<ClientEvent>>>,
}

impl ClientEvents {
    /// The next event; `None` once the client task has ended.
    pub async fn recv(&mut self) -> Option<ClientEvent> {
        self.rx.recv().await.ok()
    }
}

impl Stream for ClientEvents {
    type Item = ClientEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ClientEvent>> {
        self.rx.as_mut().poll_next(cx)
    }
}
