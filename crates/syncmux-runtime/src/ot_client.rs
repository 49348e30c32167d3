//! The OT client over a WebSocket to `/ot` (README, "The OT profile"), shared by both
//! runtimes: one task owns an [`OtClient`] and its socket; the application edits through a
//! cloneable [`OtClientHandle`] and reads the client's events from [`OtClientEvents`].
//! Start it with `Runtime::connect_ot`.
//!
//! The state machine decides what to send and how to recover (it fetches a snapshot on every
//! connect and re-sends its pending op rebased); the task only dials, reads, writes and
//! sleeps. [`OtClient`] has no dial output of its own, so the task redials after a lost
//! connection, waiting [`OtConnectOptions::reconnect_delay`], doubled per failed attempt up
//! to [`OtConnectOptions::max_reconnect_delay`].

use core::pin::Pin;
use core::task::{Context, Poll};
use core::time::Duration;
use std::sync::Arc;

use bytes::Bytes;
use futures_channel::oneshot;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, SinkExt, StreamExt};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use tungstenite::Message;

use crate::client::{Dialer, Writer};
use crate::clock::Clock;
use crate::common;
use crate::fallback::{Connection, TransportKind};
use crate::runtime::{self, Binding};
use syncmux::ot::{OpError, OtClient, OtClientConfig, OtClientEvent, OtClientState, TextOp};
use syncmux::{ConfigError, DialRequest};

/// How the OT client task connects.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct OtConnectOptions {
    /// The endpoint: `ws://HOST:PORT/ot` or `wss://...`.
    pub url: String,
    /// Sent as `?token=` (the seed's auth) and as `Authorization: Bearer`.
    pub token: Option<String>,
    /// TLS for `wss://`. Default: rustls with the webpki roots.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The first wait before redialing. Default 500 ms.
    pub reconnect_delay: Duration,
    /// The longest wait before redialing. Default 10 s.
    pub max_reconnect_delay: Duration,
    /// Commands waiting for the task. Default 64.
    pub command_capacity: usize,
}

impl OtConnectOptions {
    /// The defaults, for the endpoint at `url`.
    pub fn new(url: impl Into<String>) -> OtConnectOptions {
        OtConnectOptions {
            url: url.into(),
            token: None,
            tls: None,
            reconnect_delay: Duration::from_millis(500),
            max_reconnect_delay: Duration::from_secs(10),
            command_capacity: 64,
        }
    }
}

/// What the client holds now.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub struct OtStatus {
    /// The text, local edits included.
    pub text: String,
    /// The server revision the text is based on.
    pub revision: u64,
    /// The state machine's state.
    pub state: OtClientState,
    /// Whether local edits wait for their ack.
    pub unacked: bool,
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OtCommandError {
    /// The edit does not apply to the text.
    #[error(transparent)]
    Edit(#[from] OpError),
    /// The client task is gone ([`OtClientHandle::close`]).
    #[error("the OT client is closed")]
    Closed,
}

enum Command {
    Edit(TextOp, oneshot::Sender<Result<(), OpError>>),
    Status(oneshot::Sender<OtStatus>),
    Close(oneshot::Sender<()>),
}

/// The application's side of an OT client task. Cheap to clone.
#[derive(Clone, Debug)]
pub struct OtClientHandle {
    cmds: async_channel::Sender<Command>,
}

impl OtClientHandle {
    /// Applies a local edit (to [`status`](Self::status)'s text) and sends it when the
    /// protocol allows.
    pub async fn edit(&self, op: TextOp) -> Result<(), OtCommandError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Edit(op, tx)).await?;
        Ok(rx.await.map_err(|_| OtCommandError::Closed)??)
    }

    /// The text, revision and state now.
    pub async fn status(&self) -> Result<OtStatus, OtCommandError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Status(tx)).await?;
        rx.await.map_err(|_| OtCommandError::Closed)
    }

    /// Closes the connection and ends the task.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.send(Command::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    async fn send(&self, command: Command) -> Result<(), OtCommandError> {
        self.cmds
            .send(command)
            .await
            .map_err(|_| OtCommandError::Closed)
    }
}

/// The client's events ([`OtClientEvent`]: remote changes, acks, resyncs, errors). Dropping
/// it drops them. Bounded by the client's own `max_events` (past it the client sends
/// [`OtClientEvent::Reset`]).
#[derive(Debug)]
pub struct OtClientEvents {
    rx: Pin<Box<async_channel::Receiver<OtClientEvent>>>,
}

impl OtClientEvents {
    /// The next event; `None` once the task ended.
    pub async fn recv(&mut self) -> Option<OtClientEvent> {
        self.rx.next().await
    }
}

impl futures_util::Stream for OtClientEvents {
    type Item = OtClientEvent;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<OtClientEvent>> {
        self.rx.poll_next_unpin(cx)
    }
}

/// Starts the OT client task on runtime `R`.
pub(crate) fn start<R: Binding>(
    config: OtClientConfig,
    options: OtConnectOptions,
) -> Result<(OtClientHandle, OtClientEvents), ConfigError> {
    let client = OtClient::new(config)?;
    let (cmd_tx, cmd_rx) = async_channel::bounded(options.command_capacity.max(1));
    // Unbounded: the client's own `max_events` bounds what it hands out between reads.
    let (ev_tx, ev_rx) = async_channel::unbounded();
    let dial = dial_request(&options);
    let dialer = Arc::new(Dialer {
        tls: options.tls.clone().unwrap_or_else(common::default_tls),
        max_frame_len: 0,
        protocols: Vec::new(),
        // The OT profile is served over the WebSocket only.
        transports: vec![TransportKind::WebSocket],
    });
    R::spawn(Box::pin(run::<R>(
        client, dial, dialer, options, cmd_rx, ev_tx,
    )));
    Ok((
        OtClientHandle { cmds: cmd_tx },
        OtClientEvents {
            rx: Box::pin(ev_rx),
        },
    ))
}

/// The dial of every connection: the URL, with the token in its query (`?token=`, the seed's
/// auth) and as `Authorization: Bearer`.
fn dial_request(options: &OtConnectOptions) -> DialRequest {
    let mut url = options.url.clone();
    let mut headers = Vec::new();
    if let Some(token) = &options.token {
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str("token=");
        url.extend(utf8_percent_encode(token, UNRESERVED));
        headers.push(("Authorization", format!("Bearer {token}")));
    }
    DialRequest {
        url,
        // The OT wire has no subprotocol.
        protocols: Vec::new(),
        headers,
        token: options.token.clone(),
    }
}

/// What a token in a query keeps as it is: the unreserved bytes (RFC 3986).
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

enum Input {
    Command(Option<Command>),
    Message(Option<Result<Message, tungstenite::Error>>),
    Timeout,
}

/// The task: dial, then hand out the client's outputs and wait for one input, until closed.
async fn run<R: Binding>(
    mut client: OtClient,
    dial: DialRequest,
    dialer: Arc<Dialer>,
    options: OtConnectOptions,
    cmds: async_channel::Receiver<Command>,
    events: async_channel::Sender<OtClientEvent>,
) {
    let clock = Clock::new();
    let mut cmds = Box::pin(cmds);
    let mut delay = options.reconnect_delay;
    let mut ws: Option<Connection<R::Ws>> = None;
    let mut writer = Writer::default();
    let mut wait: Option<BoxFuture<'static, ()>> = None;
    loop {
        if ws.is_none() && wait.is_none() {
            match runtime::dial::<R>(dial.clone(), dialer.clone()).await {
                Ok((socket, _)) => {
                    ws = Some(socket);
                    // A frame held for the last connection belonged to it.
                    writer = Writer::default();
                    delay = options.reconnect_delay;
                    client.handle_connected(clock.now());
                }
                Err(why) => {
                    tracing::debug!(why, "OT dial failed");
                    let at = clock.to_std(clock.now() + delay);
                    wait = Some(R::sleep_until(at));
                    delay = (delay * 2).min(options.max_reconnect_delay);
                }
            }
        }
        while let Some(event) = client.poll_event() {
            // Fails only once the application dropped its stream.
            let _ = events.try_send(event);
        }
        let deadline = client.poll_timeout().map(|at| clock.to_std(at));
        let mut sleep = deadline.map(R::sleep_until);
        let input = core::future::poll_fn(|cx| {
            if let Poll::Ready(c) = cmds.poll_next_unpin(cx) {
                return Poll::Ready(Input::Command(c));
            }
            if let Some(socket) = ws.as_mut() {
                // What the socket takes, never waiting for it: a peer that stops reading
                // stalls the writes, not the commands.
                if let Err(e) = writer.write(cx, socket, || client.poll_transmit()) {
                    return Poll::Ready(Input::Message(Some(Err(e))));
                }
                if let Poll::Ready(m) = socket.poll_next_unpin(cx) {
                    return Poll::Ready(Input::Message(m));
                }
            }
            if let Some(w) = wait.as_mut() {
                if w.as_mut().poll(cx).is_ready() {
                    wait = None;
                    return Poll::Ready(Input::Timeout);
                }
            }
            if let Some(s) = sleep.as_mut() {
                if s.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Input::Timeout);
                }
            }
            Poll::Pending
        })
        .await;
        let now = clock.now();
        match input {
            Input::Command(None) => break,
            Input::Command(Some(Command::Close(done))) => {
                if let Some(mut socket) = ws.take() {
                    // Best effort, never waiting: a peer that stopped reading must not
                    // hold the close.
                    let _ = socket.close().now_or_never();
                }
                let _ = done.send(());
                break;
            }
            Input::Command(Some(Command::Edit(op, reply))) => {
                let _ = reply.send(client.edit(now, op));
            }
            Input::Command(Some(Command::Status(reply))) => {
                let _ = reply.send(OtStatus {
                    text: client.text().to_owned(),
                    revision: client.revision(),
                    state: client.state(),
                    unacked: client.has_unacked(),
                });
            }
            Input::Message(Some(Ok(Message::Text(text)))) => {
                client.handle_message(now, Bytes::from(text));
            }
            Input::Message(Some(Ok(Message::Binary(data)))) => client.handle_message(now, data),
            Input::Message(Some(Ok(_))) => {}
            Input::Message(Some(Err(_)) | None) => {
                ws = None;
                client.handle_disconnected(now);
                let at = clock.to_std(clock.now() + delay);
                wait = Some(R::sleep_until(at));
                delay = (delay * 2).min(options.max_reconnect_delay);
            }
            Input::Timeout => client.handle_timeout(now),
        }
    }
    // A command sent while the task was ending (an edit racing a close) would wait in the
    // channel for ever, its reply sender kept alive by the handle's side: refuse new ones,
    // and drop the queued ones, so that each fails with `Closed`.
    cmds.close();
    while cmds.try_recv().is_ok() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token with bytes a query reserves arrives as it was sent: percent-encoded in the
    /// query (unreserved bytes as they are), whole in the header.
    #[test]
    fn the_token_is_percent_encoded_in_the_query() {
        let mut options = OtConnectOptions::new("ws://h/ot?doc=a");
        options.token = Some("a b&c=d/é-._~".to_owned());
        let dial = dial_request(&options);
        assert_eq!(dial.url, "ws://h/ot?doc=a&token=a%20b%26c%3Dd%2F%C3%A9-._~");
        assert_eq!(
            dial.headers,
            vec![("Authorization", "Bearer a b&c=d/é-._~".to_owned())]
        );
        assert_eq!(
            dial_request(&OtConnectOptions::new("ws://h/ot")).url,
            "ws://h/ot"
        );
    }
}
