//! The tokio binding (feature `tokio`): tokio-tungstenite over tokio's sockets, tokio-rustls
//! for `wss://`. On plain TCP the hub writes a session's frames to its socket itself, through
//! io_uring on Linux.

use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll};
use core::time::Duration;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use syncmux::wire::CloseCode;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tungstenite::handshake::client::{Request as ClientRequest, Response as ClientResponse};
use tungstenite::protocol::WebSocketConfig;

use crate::direct::{Direct, DirectOutlet, Framing, RawSocket};
use crate::frames::{Channels, Events, Frames};
use crate::hub::{Accepted, Hub, Machine, Out, Read, Transport};
use crate::runtime::{self, Binding, Decide, Runtime};
use crate::server::HandshakeSlot;

/// Any byte stream a WebSocket runs over (plain TCP or TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// A client WebSocket of this binding.
type ClientSocket = WebSocketStream<Box<dyn Io>>;

/// The binding behind [`Tokio`](crate::Tokio).
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioBinding;

impl Runtime<TokioBinding> {
    /// [`Runtime::accept`] on a plain TCP connection, with the write path of
    /// [`Runtime::serve`]: the hub writes the session's frames to the socket itself, each
    /// broadcast framed once (for the OT endpoint, those of the ops read together in one write
    /// per socket), and the session's task only reads (and writes what the socket could not
    /// take at once). `read` is what a router already read from the connection (its request
    /// head, say); it is read again first.
    pub async fn accept_tcp<M: Machine>(
        server: &Hub<M>,
        tcp: tokio::net::TcpStream,
        read: Vec<u8>,
    ) {
        let slot = server.gate().slot().await;
        serve_direct(server.clone(), tcp, read, slot).await;
    }
}

impl Runtime<TokioBinding> {
    /// Runs `session` as a stream of events on a plain TCP connection (an SSE stream):
    /// `head` first (the response's head, say), then the session's frames as `events` makes
    /// them, written by the hub straight to the socket as [`accept_tcp`](Self::accept_tcp)'s
    /// are (no task wakes per delivery), `events`' keep-alive while the stream is quiet, and
    /// `events`' close last when the server closes the session. A consumer that stops reading
    /// is closed as a slow consumer, as on a WebSocket. The [`Frames`] takes the session's
    /// inbound frames and yields none; dropping it ends the session. The future runs the
    /// stream until the session ends (the consumer closed the connection, or the server the
    /// session): await it, or spawn it.
    pub fn events_tcp<M: Machine>(
        session: Accepted<M>,
        tcp: tokio::net::TcpStream,
        head: Bytes,
        events: Arc<dyn Events>,
    ) -> (Frames, impl Future<Output = ()> + Send) {
        let (frames, channels) = Channels::pair();
        let framing = Framing::Events(events.clone(), frames.inbox());
        let direct = Arc::new(Direct::with_framing(tcp, framing));
        if !head.is_empty() {
            direct.queue(head, 0);
        }
        let (every, keep_alive) = events.keep_alive();
        let stream = EventStream {
            channels,
            io: DirectIo {
                socket: direct.clone(),
                read: Bytes::new(),
            },
            events,
            every,
            keep_alive,
            tick: Box::pin(tokio::time::sleep(every)),
        };
        let run = async move {
            drop(session.run_direct(stream, direct).await);
        };
        (frames, run)
    }
}

impl Binding for TokioBinding {
    runtime::sockets!(tokio, tokio_rustls, tokio_tungstenite);

    fn spawn(task: BoxFuture<'static, ()>) {
        drop(tokio::spawn(task));
    }

    fn sleep_until(at: std::time::Instant) -> BoxFuture<'static, ()> {
        tokio::time::sleep_until(at.into()).boxed()
    }

    fn sleep(duration: Duration) -> BoxFuture<'static, ()> {
        tokio::time::sleep(duration).boxed()
    }

    fn http_io(io: Self::Io) -> Box<dyn crate::fallback::HttpIo> {
        Box::new(hyper_util::rt::TokioIo::new(io))
    }

    fn serve_plain<M: Machine>(
        server: Hub<M>,
        tcp: Self::Tcp,
        slot: HandshakeSlot,
    ) -> BoxFuture<'static, ()> {
        Box::pin(serve_direct(server, tcp, Vec::new(), slot))
    }
}

/// One plain TCP connection whose frames the hub writes itself: the handshake within the
/// deadline, holding `slot`, then the session. `read` is read again before the socket.
async fn serve_direct<M: Machine>(
    server: Hub<M>,
    tcp: tokio::net::TcpStream,
    read: Vec<u8>,
    slot: HandshakeSlot,
) {
    let socket = Arc::new(Direct::new(tcp));
    let io = DirectIo {
        socket: socket.clone(),
        read: read.into(),
    };
    // Boxed, so the session's task does not keep the handshake's size.
    let handshake = Box::pin(runtime::upgrade(&server, |decide, config| {
        tokio_tungstenite::accept_hdr_async_with_config(io, decide, Some(config))
    }));
    let deadline = server.gate().options().handshake_timeout;
    // In a block of its own, so that the handshake's result is dead (and takes no room in
    // the task) by the time the session runs.
    let session = {
        let upgraded = runtime::within_deadline::<TokioBinding, _>(deadline, handshake)
            .await
            .flatten();
        drop(slot);
        match upgraded {
            Some((session, ws)) => session.run_direct(ws, socket),
            None => return,
        }
    };
    // Only the boxed linger is held across its await, not the socket it took.
    if let Some(lingering) = session.await.map(runtime::linger::<TokioBinding, _>) {
        lingering.await;
    }
}

/// Frames leave through `send(2)` (one buffer) or `sendmsg(2)` (several) rather than tokio's
/// `write(2)`/`writev(2)`: a socket's own calls skip the file layer (`fdget_pos`,
/// `vfs_writev`), which cost ~8 % of the fan-out server's CPU.
impl RawSocket for tokio::net::TcpStream {
    fn try_write_vectored(&self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        self.try_io(tokio::io::Interest::WRITABLE, || {
            let socket = socket2::SockRef::from(self);
            match bufs {
                [one] => socket.send_with_flags(one, SEND_FLAGS),
                _ => socket.send_vectored_with_flags(bufs, SEND_FLAGS),
            }
        })
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        tokio::net::TcpStream::poll_write_ready(self, cx)
    }

    /// Straight to `send(2)`: tokio's readiness record is another cache miss per frame at
    /// 10 000 sockets, and the frames that find the socket full are written by the task's
    /// `try_write_vectored`, which keeps that record right.
    fn send_now(&self, buf: &[u8]) -> std::io::Result<usize> {
        socket2::SockRef::from(self).send_with_flags(buf, SEND_FLAGS)
    }

    /// The hub's batched sends skip tokio's readiness record for the same reason.
    #[cfg(target_os = "linux")]
    fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        Some(std::os::fd::AsFd::as_fd(self))
    }
}

/// The flags of every `send(2)` and `sendmsg(2)` of the direct write path. A send to a peer
/// that is gone fails with `EPIPE` and, without `MSG_NOSIGNAL`, raises `SIGPIPE`, which kills
/// the process unless it is ignored: Rust's `main` ignores it, but a library cannot count on
/// its host doing so (a C program embedding it, a binary built to die on a broken pipe).
#[cfg(target_os = "linux")]
const SEND_FLAGS: std::ffi::c_int = libc::MSG_NOSIGNAL;
/// Elsewhere `libc` is not a dependency, and macOS has no `MSG_NOSIGNAL` (its sockets take
/// `SO_NOSIGPIPE` instead).
#[cfg(not(target_os = "linux"))]
const SEND_FLAGS: std::ffi::c_int = 0;

/// The byte stream tungstenite reads a direct session from: reads go to the socket, writes
/// (its pong and close answers) queue behind the hub's frames.
pub(crate) struct DirectIo {
    socket: Arc<Direct<tokio::net::TcpStream>>,
    /// Bytes read from the socket before the handshake (a router's peek at the request),
    /// read first.
    read: bytes::Bytes,
}

impl AsyncRead for DirectIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            let head = self.read.split_to(n);
            buf.put_slice(&head);
            if self.read.is_empty() {
                // Let the buffer go.
                self.read = bytes::Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        let socket = &self.socket.socket;
        loop {
            match socket.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
            // A read that did not fill the buffer emptied the socket: its readiness is
            // cleared at once (by answering `WouldBlock` to `try_io`), as tokio's own
            // `TcpStream::poll_read` does, so the next read waits for the reactor instead of
            // costing a `recv(2)` that finds nothing. Edge-triggered readiness makes this
            // safe: bytes that arrive after the read are a new event.
            let unfilled = buf.initialize_unfilled();
            let want = unfilled.len();
            let mut got = None;
            let read = socket.try_io(tokio::io::Interest::READABLE, || {
                let n = socket.try_read(unfilled)?;
                got = Some(n);
                if 0 < n && n < want {
                    Err(std::io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(())
                }
            });
            if let Some(n) = got {
                buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            match read {
                Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => return Poll::Ready(Err(e)),
                // Not ready after all: wait for the reactor.
                _ => {}
            }
        }
    }
}

impl AsyncWrite for DirectIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.socket.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.socket.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // The socket closes once the hub and the task both dropped it.
        self.socket.poll_flush(cx)
    }
}

/// The transport of [`Runtime::events_tcp`]'s session: the hub writes its frames, so this
/// only reads (the inbox, and the socket for its end) and writes keep-alives and the close.
struct EventStream {
    channels: Channels,
    io: DirectIo,
    events: Arc<dyn Events>,
    every: Duration,
    keep_alive: Bytes,
    tick: Pin<Box<tokio::time::Sleep>>,
}

impl Transport for EventStream {
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Read> {
        if let Poll::Ready(read) = self.channels.poll_read(cx) {
            return Poll::Ready(read);
        }
        while self.tick.as_mut().poll(cx).is_ready() {
            // Behind the frames waiting, if any (then the socket is full, and a comment more
            // or less changes nothing).
            let _ = self.io.socket.poll_write(cx, &self.keep_alive);
            let next = tokio::time::Instant::now() + self.every;
            self.tick.as_mut().reset(next);
        }
        // A consumer sends nothing after its request: what it sends is dropped, and its end
        // is the stream's.
        let mut scratch = [0u8; 256];
        loop {
            let mut buf = tokio::io::ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                    return Poll::Ready(Read::Gone("the consumer closed the stream".to_owned()))
                }
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Read::Gone(e.to_string())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), String>> {
        Poll::Ready(Ok(()))
    }

    /// Never called: the hub writes a direct session's frames.
    fn start_send(&mut self, _: Out) -> Result<(), String> {
        Ok(())
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        self.io.socket.poll_flush(cx).map_err(|e| e.to_string())
    }

    fn close_now(&mut self, close: Option<(CloseCode, &str)>) -> bool {
        if let Some((code, reason)) = close {
            let last = self.events.close(code, reason);
            let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
            // Best effort, never waiting, as a WebSocket's close frame.
            let _ = self.io.socket.poll_write(&mut cx, &last);
        }
        self.channels.close_now(close)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A read that empties the socket clears its read readiness, as tokio's own
    /// `TcpStream` does: the next read waits for the reactor instead of paying for a
    /// `recv(2)` that finds nothing. A read that fills the buffer leaves it set.
    #[tokio::test]
    async fn a_read_that_empties_the_socket_clears_its_readiness() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (ours, _) = listener.accept().await.unwrap();
        let direct = Arc::new(Direct::new(ours));
        let mut io = DirectIo {
            socket: direct.clone(),
            read: bytes::Bytes::new(),
        };
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        let mut buf = [0u8; 16];

        peer.write_all(b"0123456789abcdefXYZ").await.unwrap();
        io.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"0123456789abcdef");
        assert!(
            direct.socket.poll_read_ready(&mut cx).is_ready(),
            "a full read"
        );

        let n = io.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"XYZ");
        assert!(
            direct.socket.poll_read_ready(&mut cx).is_pending(),
            "a short read"
        );

        // Bytes that come later are a new event.
        peer.write_all(b"more").await.unwrap();
        let n = io.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"more");
    }
}
