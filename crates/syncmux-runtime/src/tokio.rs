//! The tokio binding (feature `tokio`): tokio-tungstenite over tokio's sockets, tokio-rustls
//! for `wss://`. On plain TCP the hub writes a session's frames to its socket itself, through
//! io_uring on Linux.

use core::pin::Pin;
use core::task::{Context, Poll};
use core::time::Duration;
use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tungstenite::handshake::client::{Request as ClientRequest, Response as ClientResponse};
use tungstenite::protocol::WebSocketConfig;

use crate::common::Endpoint;
use crate::direct::{Direct, RawSocket};
use crate::runtime::{self, Decide, Runtime};
use crate::server::HandshakeSlot;
use crate::{ClientEvents, ClientOptions, OtServerHandle, ServerOptions, SyncClient, SyncServer};
use syncmux::ot::OtServer;
use syncmux::ClientConfig;
use syncmux::ConfigError;
use syncmux::Driver;

/// Any byte stream a WebSocket runs over (plain TCP or TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// A client WebSocket of this adapter.
pub type ClientSocket = WebSocketStream<Box<dyn Io>>;

/// Starts a client task on the current tokio runtime and connects. Must be called inside a
/// runtime.
pub fn connect(config: ClientConfig) -> Result<(SyncClient, ClientEvents), ConfigError> {
    connect_with(config, ClientOptions::default())
}

/// [`connect`] with adapter options (TLS roots, channel capacities, jitter seed).
pub fn connect_with(
    config: ClientConfig,
    options: ClientOptions,
) -> Result<(SyncClient, ClientEvents), ConfigError> {
    crate::client::start::<Tokio>(config, options)
}

/// Starts an OT client task (an [`OtClient`](syncmux::ot::OtClient) over a WebSocket to the
/// OT endpoint, see [`OtConnectOptions`](crate::OtConnectOptions)) on this runtime; it
/// connects at once and redials when the connection is lost.
pub fn connect_ot(
    config: syncmux::ot::OtClientConfig,
    options: crate::OtConnectOptions,
) -> Result<(crate::OtClientHandle, crate::OtClientEvents), syncmux::ot::OtConfigError> {
    crate::ot_client::start::<Tokio>(config, options)
}

/// Starts a server around `driver` on the current tokio runtime (its timer task); accept
/// connections with [`serve`] or [`accept`], or mount it in an HTTP server with
/// [`SyncServer::handshake`] and [`AcceptedSession::run`](crate::AcceptedSession::run).
pub fn start(driver: Driver, options: ServerOptions) -> SyncServer {
    SyncServer::start::<Tokio>(driver, options)
}

/// Starts a server whose pulls, pushes and replays `backend` answers, asynchronously (for
/// example the Redis backend of the crate `syncmux-redis`), on the current tokio runtime:
/// its timer task, one task per request, and the backend's log follower. Serve it like one
/// from [`start`].
pub fn start_with_backend(
    server: syncmux::Server,
    backend: Arc<dyn crate::Backend>,
    options: ServerOptions,
) -> SyncServer {
    SyncServer::start_with_backend::<Tokio>(server, backend, options)
}

/// Accepts connections until [`SyncServer::shutdown`], each in its own task; with `tls`,
/// serves `wss://`.
///
/// Each connection's whole handshake (TLS, then the upgrade) must end within
/// [`ServerOptions::handshake_timeout`]; at most [`ServerOptions::max_handshakes`] are under
/// way at once (at the bound, no connection is accepted until one ends).
pub async fn serve(
    server: SyncServer,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    runtime::serve::<Tokio, _>(server, listener, tls).await;
}

/// Runs the WebSocket handshake on `io` through the state machine, then the session. The
/// handshake takes one of the [`ServerOptions::max_handshakes`] slots (waiting for one) and
/// must end within [`ServerOptions::handshake_timeout`].
pub async fn accept<S: Io>(server: &SyncServer, io: S) {
    runtime::accept::<Tokio, _>(server, Box::new(io)).await;
}

/// [`accept`] on a plain TCP connection, with the fast write path of [`serve`]: the hub
/// writes the session's frames to the socket itself, each broadcast framed once, and the
/// session's task only reads (and writes what the socket could not take at once). `read` is
/// what a router already read from the connection (its request head, say); it is read again
/// first.
pub async fn accept_tcp(server: &SyncServer, tcp: tokio::net::TcpStream, read: Vec<u8>) {
    let slot = server.handshake_slot().await;
    serve_direct(server.clone(), tcp, read, slot).await;
}

/// Starts the OT endpoint's server on the current tokio runtime (its timer task); accept
/// connections with [`serve_ot`], [`accept_ot_tcp`] or [`accept_ot`].
///
/// Its state machine is one lock, so its connections gain nothing from being spread over a
/// multi-thread runtime's workers but contention and cross-thread wake-ups: `syncmux-server`
/// starts it, and runs its plain-TCP connections, on a current-thread runtime of its own.
pub fn start_ot(server: OtServer, options: ServerOptions) -> OtServerHandle {
    OtServerHandle::start::<Tokio>(server, options)
}

/// [`serve`] for the OT endpoint: accepts connections until [`OtServerHandle::shutdown`],
/// each in its own task, with the same handshake deadline and bound
/// ([`ServerOptions`]); with `tls`, serves `wss://`. Every path is accepted.
pub async fn serve_ot(
    server: OtServerHandle,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    runtime::serve::<Tokio, _>(server, listener, tls).await;
}

/// [`accept`] for the OT endpoint: the WebSocket handshake on `io` (decided by the state
/// machine, within the handshake deadline, holding a handshake slot), then the session.
pub async fn accept_ot<S: Io>(server: &OtServerHandle, io: S) {
    runtime::accept::<Tokio, _>(server, Box::new(io)).await;
}

/// [`accept_ot`] on a plain TCP connection, with the write path of [`serve_ot`]: the hub
/// writes the frames to the socket itself, those of the ops read together in one write per
/// socket, and the connection's task only reads (and writes what the socket could not take
/// at once). `read` is what a router already read from the connection; it is read again
/// first.
pub async fn accept_ot_tcp(server: &OtServerHandle, tcp: tokio::net::TcpStream, read: Vec<u8>) {
    let slot = server.handshake_slot().await;
    serve_direct(server.clone(), tcp, read, slot).await;
}

/// The runtime.
pub(crate) struct Tokio;

impl Runtime for Tokio {
    type Tcp = tokio::net::TcpStream;
    type Listener = tokio::net::TcpListener;
    type Io = Box<dyn Io>;
    type Ws = ClientSocket;

    fn spawn(task: BoxFuture<'static, ()>) {
        drop(tokio::spawn(task));
    }

    fn sleep_until(at: std::time::Instant) -> BoxFuture<'static, ()> {
        tokio::time::sleep_until(at.into()).boxed()
    }

    fn sleep(duration: Duration) -> BoxFuture<'static, ()> {
        tokio::time::sleep(duration).boxed()
    }

    fn connect(host: &str, port: u16) -> BoxFuture<'_, std::io::Result<Self::Tcp>> {
        async move {
            let tcp = tokio::net::TcpStream::connect((host, port)).await?;
            let _ = tcp.set_nodelay(true);
            Ok(tcp)
        }
        .boxed()
    }

    fn accept(
        listener: &Self::Listener,
    ) -> BoxFuture<'_, std::io::Result<(Self::Tcp, SocketAddr)>> {
        async move {
            let (tcp, peer) = listener.accept().await?;
            let _ = tcp.set_nodelay(true);
            Ok((tcp, peer))
        }
        .boxed()
    }

    fn plain(tcp: Self::Tcp) -> Self::Io {
        Box::new(tcp)
    }

    fn tls_connect(
        tls: Arc<rustls::ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
        tcp: Self::Tcp,
    ) -> BoxFuture<'static, std::io::Result<Self::Io>> {
        let connecting = tokio_rustls::TlsConnector::from(tls).connect(name, tcp);
        async move { Ok(Box::new(connecting.await?) as Self::Io) }.boxed()
    }

    fn tls_accept(
        tls: Arc<rustls::ServerConfig>,
        tcp: Self::Tcp,
    ) -> BoxFuture<'static, std::io::Result<Self::Io>> {
        let accepting = tokio_rustls::TlsAcceptor::from(tls).accept(tcp);
        async move { Ok(Box::new(accepting.await?) as Self::Io) }.boxed()
    }

    fn ws_connect(
        request: ClientRequest,
        io: Self::Io,
        config: WebSocketConfig,
    ) -> BoxFuture<'static, Result<(Self::Ws, ClientResponse), tungstenite::Error>> {
        tokio_tungstenite::client_async_with_config(request, io, Some(config)).boxed()
    }

    fn ws_accept(
        io: Self::Io,
        decide: Decide,
        config: WebSocketConfig,
    ) -> BoxFuture<'static, Result<Self::Ws, tungstenite::Error>> {
        tokio_tungstenite::accept_hdr_async_with_config(io, decide, Some(config)).boxed()
    }

    fn serve_plain<E: Endpoint>(
        server: E,
        tcp: Self::Tcp,
        slot: HandshakeSlot,
    ) -> BoxFuture<'static, ()> {
        Box::pin(serve_direct(server, tcp, Vec::new(), slot))
    }
}

/// One plain TCP connection whose frames the hub writes itself: the handshake within the
/// deadline, holding `slot`, then the session. `read` is read again before the socket.
async fn serve_direct<E: Endpoint>(
    server: E,
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
    let upgraded = runtime::within_deadline::<Tokio, _>(server.handshake_timeout(), handshake)
        .await
        .flatten();
    drop(slot);
    if let Some((session, ws)) = upgraded {
        E::run_direct(session, ws, socket).await;
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
