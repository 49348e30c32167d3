//! A session over channels, for the transports that are not a WebSocket: an SSE stream and
//! the POSTs that feed it (the POSTs come on other connections than the stream). The session's task is
//! the one of every session ([`Accepted`]); only its [`Transport`] differs: frames in come
//! from an inbox, frames out go to a bounded channel that the HTTP layer writes as events
//! ([`Events`] says how), or, on a plain TCP stream of tokio's, the hub writes them to the
//! socket itself as it writes a WebSocket's ([`Runtime::events_tcp`](crate::Runtime::events_tcp)).

use core::convert::Infallible;
use core::pin::Pin;
use core::task::{Context, Poll};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_channel::{mpsc, oneshot};
use futures_util::{FutureExt, Stream, StreamExt};
use syncmux::wire::CloseCode;

use crate::hub::{Accepted, Machine, Out, Read, Transport};

/// Frames of the session waiting for the HTTP layer. Few: past them the session's own
/// outbound bound applies (its frames wait in the hub, counted, and a consumer that stops
/// reading is closed as a slow consumer, as on a WebSocket).
const OUT_CAPACITY: usize = 16;

/// Frames of the application waiting for the session (its inbox): a POST that finds it
/// full waits.
const INBOX_CAPACITY: usize = 64;

/// How a session's frames are written on a stream of events (an SSE stream): by the HTTP
/// layer for each frame of a [`Frames`] stream, or by the hub itself on a stream of
/// [`Runtime::events_tcp`](crate::Runtime::events_tcp). Called for every frame, by whichever
/// task produced it, sometimes under the hub's lock: keep it short, and make a broadcast's
/// event once (every recipient's frame is the same buffer).
pub trait Events: Send + Sync + 'static {
    /// The bytes one frame of the session is written as; `None`: nothing is written for it
    /// (it counts as written). `inbox` is the session's, to answer a frame (a ping) for a
    /// consumer that only reads.
    fn frame(&self, frame: &Bytes, inbox: &async_channel::Sender<Bytes>) -> Option<Bytes>;
    /// The last bytes of a stream whose session the server closed with `code` and `reason`.
    fn close(&self, code: CloseCode, reason: &str) -> Bytes;
    /// What a stream writes to keep its connection open (a comment, say), and how often.
    fn keep_alive(&self) -> (Duration, Bytes);
}

/// A session run over channels: frames go in through [`inbox`](Frames::inbox), the
/// session's frames come out of this [`Stream`], which ends when the session does (then
/// [`closed_with`](Frames::closed_with) says how). Dropping it ends the session. Made by
/// [`Runtime::frames`](crate::Runtime::frames).
///
/// The transport answers the state machine's transport-level pings itself (the OT
/// profile's WebSocket pings): whether the peer is still there is the HTTP layer's to find
/// out, by writing (keep-alive comments, say).
#[derive(Debug)]
pub struct Frames {
    out: mpsc::Receiver<Bytes>,
    inbox: async_channel::Sender<Bytes>,
    closed: Arc<Mutex<Option<(CloseCode, String)>>>,
    /// Dropped with this: the session's task sees it and ends the session.
    _alive: oneshot::Sender<Infallible>,
}

impl Frames {
    /// Where the session's inbound frames go, in order (each one frame's JSON, as a
    /// WebSocket text message would carry it). Cheap to clone; sending fails once the
    /// session ended.
    pub fn inbox(&self) -> async_channel::Sender<Bytes> {
        self.inbox.clone()
    }

    /// The code and reason the server closed the session with, once it did (`None` while it
    /// runs, or when the session ended otherwise).
    pub fn closed_with(&self) -> Option<(CloseCode, String)> {
        self.closed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Stream for Frames {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        self.out.poll_next_unpin(cx)
    }
}

/// The transport of a [`Frames`] session.
pub(crate) struct Channels {
    inbox: Pin<Box<async_channel::Receiver<Bytes>>>,
    out: mpsc::Sender<Bytes>,
    closed: Arc<Mutex<Option<(CloseCode, String)>>>,
    /// Cancelled once the [`Frames`] is dropped.
    alive: oneshot::Receiver<Infallible>,
    /// A ping was handed over: its pong is the next read.
    pong: bool,
}

impl Transport for Channels {
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Read> {
        if core::mem::take(&mut self.pong) {
            return Poll::Ready(Read::Pong);
        }
        if self.alive.poll_unpin(cx).is_ready() {
            return Poll::Ready(Read::Gone("the stream was dropped".to_owned()));
        }
        self.inbox.poll_next_unpin(cx).map(|frame| match frame {
            Some(frame) => Read::Text(frame),
            // Never: `Frames` holds a sender until it is dropped, which `alive` tells first.
            None => Read::Gone("the inbox was closed".to_owned()),
        })
    }

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        self.out
            .poll_ready(cx)
            .map_err(|_| "the stream was dropped".to_owned())
    }

    fn start_send(&mut self, out: Out) -> Result<(), String> {
        match out {
            Out::Frame(frame) => self
                .out
                .start_send(frame)
                .map_err(|_| "the stream was dropped".to_owned()),
            Out::Ping => {
                self.pong = true;
                Ok(())
            }
        }
    }

    fn poll_flush(&mut self, _: &mut Context<'_>) -> Poll<Result<(), String>> {
        Poll::Ready(Ok(()))
    }

    fn close_now(&mut self, close: Option<(CloseCode, &str)>) -> bool {
        if let Some((code, reason)) = close {
            *self.closed.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((code, reason.to_owned()));
        }
        // The stream ends once the frames before the close are read.
        self.out.close_channel();
        false
    }
}

impl Channels {
    /// A session's [`Frames`] and the transport they talk to.
    pub(crate) fn pair() -> (Frames, Channels) {
        let (out_tx, out) = mpsc::channel(OUT_CAPACITY);
        let (inbox, inbox_rx) = async_channel::bounded(INBOX_CAPACITY);
        let (alive_tx, alive) = oneshot::channel();
        let closed = Arc::new(Mutex::new(None));
        let channels = Channels {
            inbox: Box::pin(inbox_rx),
            out: out_tx,
            closed: closed.clone(),
            alive,
            pong: false,
        };
        let frames = Frames {
            out,
            inbox,
            closed,
            _alive: alive_tx,
        };
        (frames, channels)
    }
}

impl<M: Machine> Accepted<M> {
    /// The session over channels: its [`Frames`], and the task to spawn that runs it.
    pub(crate) fn over_channels(self) -> (Frames, impl core::future::Future<Output = ()>) {
        let (frames, channels) = Channels::pair();
        (frames, async move { drop(self.run_to_end(channels).await) })
    }
}
