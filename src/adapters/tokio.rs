//! The tokio adapter (feature `tokio`): tokio-tungstenite over tokio's sockets, tokio-rustls
//! for `wss://`.

use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll};
use core::time::Duration;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;

use super::client::{self, Dialer, Dialing, Runtime};
use super::common::{self, Endpoint};
use super::direct::{Direct, RawSocket};
use super::OtServerHandle;
use super::{ClientEvents, ClientOptions, ServerOptions, SyncClient, SyncServer};
use crate::client::{ClientConfig, DialRequest};
use crate::config::ConfigError;
use crate::driver::Driver;
use crate::ot::OtServer;
use tungstenite::handshake::server::{Request, Response};

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
    client::start::<Tokio>(config, options)
}

/// Starts an OT client task (an [`OtClient`](crate::ot::OtClient) over a WebSocket to the
/// OT endpoint, see [`OtConnectOptions`](super::OtConnectOptions)) on this runtime; it
/// connects at once and redials when the connection is lost.
pub fn connect_ot(
    config: crate::ot::OtClientConfig,
    options: super::OtConnectOptions,
) -> Result<(super::OtClientHandle, super::OtClientEvents), crate::ot::OtConfigError> {
    super::ot_client::start::<Tokio>(config, options)
}

pub(crate) struct Tokio;

impl Runtime for Tokio {
    type Ws = ClientSocket;

    fn dial(dial: DialRequest, dialer: Arc<Dialer>) -> Dialing<ClientSocket> {
        async move {
            let (request, target) = common::client_request(&dial, &dialer.protocols)?;
            let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
                .await
                .map_err(|e| format!("connect {}:{}: {e}", target.host, target.port))?;
            // Frames are small and latency matters more than packet count.
            let _ = tcp.set_nodelay(true);
            let io: Box<dyn Io> = if target.tls {
                let name = common::server_name(&target.host)?;
                let stream = tokio_rustls::TlsConnector::from(dialer.tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS with {}: {e}", target.host))?;
                Box::new(stream)
            } else {
                Box::new(tcp)
            };
            let config = Some(common::ws_config(dialer.max_frame_len));
            let (ws, response) = tokio_tungstenite::client_async_with_config(request, io, config)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            Ok((ws, common::selected_protocol(&response)))
        }
        .boxed()
    }

    fn sleep_until(at: std::time::Instant) -> BoxFuture<'static, ()> {
        tokio::time::sleep_until(at.into()).boxed()
    }

    fn spawn(task: BoxFuture<'static, ()>) {
        drop(tokio::spawn(task));
    }
}

/// Starts a server around `driver` on the current tokio runtime (its timer task); accept
/// connections with [`serve`] or [`accept`], or mount it in an HTTP server with
/// [`SyncServer::handshake`] and [`AcceptedSession::run`](super::AcceptedSession::run).
pub fn start(driver: Driver, options: ServerOptions) -> SyncServer {
    let (server, timer) = SyncServer::new(driver, options);
    tokio::spawn(timer.run(|at| Box::pin(tokio::time::sleep_until(at.into()))));
    server
}

/// Starts a server whose pulls, pushes and replays `backend` answers, asynchronously (for
/// example [`RedisBackend`](super::redis::RedisBackend), feature `redis`), on the current
/// tokio runtime: its timer task, one task per request, and the backend's log follower.
/// Serve it like one from [`start`].
pub fn start_with_backend(
    server: crate::Server,
    backend: Arc<dyn super::Backend>,
    options: ServerOptions,
) -> SyncServer {
    let spawn = |task| drop(tokio::spawn(task));
    let (server, timer) = SyncServer::with_backend(server, backend, spawn, options);
    tokio::spawn(timer.run(|at| Box::pin(tokio::time::sleep_until(at.into()))));
    server
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
    serve_endpoint(
        server,
        listener,
        tls,
        |session, ws| Box::pin(session.run(ws)),
        Some(|session, ws, direct| Box::pin(session.run_direct(ws, direct))),
    )
    .await;
}

/// Runs the WebSocket handshake on `io` through the state machine, then the session. The
/// handshake takes one of the [`ServerOptions::max_handshakes`] slots (waiting for one) and
/// must end within [`ServerOptions::handshake_timeout`].
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(server: &SyncServer, io: S) {
    if let Some((session, ws)) = handshake(server, io).await {
        session.run(ws).await;
    }
}

/// [`accept`] on a plain TCP connection, with the fast write path of [`serve`]: the hub
/// writes the session's frames to the socket itself, each broadcast framed once, and the
/// session's task only reads (and writes what the socket could not take at once). `read` is
/// what a router already read from the connection (its request head, say); it is read again
/// first.
pub async fn accept_tcp(server: &SyncServer, tcp: tokio::net::TcpStream, read: Vec<u8>) {
    accept_direct(server, tcp, read, |session, ws, direct| {
        Box::pin(session.run_direct(ws, direct))
    })
    .await;
}

/// The handshake on a plain TCP connection whose frames the hub writes itself, then the
/// session.
async fn accept_direct<E: Endpoint>(
    server: &E,
    tcp: tokio::net::TcpStream,
    read: Vec<u8>,
    run_direct: RunDirect<E::Session>,
) {
    let socket = Arc::new(Direct::new(tcp));
    let io = DirectIo {
        socket: socket.clone(),
        read: read.into(),
    };
    // Boxed, so the session's task does not keep the handshake's size.
    if let Some((session, ws)) = Box::pin(handshake(server, io)).await {
        run_direct(session, ws, socket).await;
    }
}

// ---- the OT endpoint (`adapters::ot`) -------------------------------------------------------

/// Starts the OT endpoint's server on the current tokio runtime (its timer task); accept
/// connections with [`serve_ot`], [`accept_ot_tcp`] or [`accept_ot`].
///
/// Its state machine is one lock, so its connections gain nothing from being spread over a
/// multi-thread runtime's workers but contention and cross-thread wake-ups: the example
/// server starts it, and runs its plain-TCP connections, on a current-thread runtime of its
/// own (~16 µs of CPU per acked op instead of ~23 on two workers, `benches/ot_e2e.rs`).
pub fn start_ot(server: OtServer, options: ServerOptions) -> OtServerHandle {
    let (server, timer) = OtServerHandle::new(server, options);
    tokio::spawn(timer.run(|at| Box::pin(tokio::time::sleep_until(at.into()))));
    server
}

/// [`serve`] for the OT endpoint: accepts connections until [`OtServerHandle::shutdown`],
/// each in its own task, with the same handshake deadline and bound
/// ([`ServerOptions`]); with `tls`, serves `wss://`. Every path is accepted.
pub async fn serve_ot(
    server: OtServerHandle,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    serve_endpoint(
        server,
        listener,
        tls,
        |session, ws| Box::pin(session.run(ws)),
        Some(|session, ws, direct| Box::pin(session.run_direct(ws, direct))),
    )
    .await;
}

/// [`accept`] for the OT endpoint: the WebSocket handshake on `io` (decided by the state
/// machine, within the handshake deadline, holding a handshake slot), then the session.
pub async fn accept_ot<S: AsyncRead + AsyncWrite + Unpin>(server: &OtServerHandle, io: S) {
    if let Some((session, ws)) = handshake(server, io).await {
        session.run(ws).await;
    }
}

/// [`accept_ot`] on a plain TCP connection, with the write path of [`serve_ot`]: the hub
/// writes the frames to the socket itself, those of the ops read together in one write per
/// socket, and the connection's task only reads (and writes what the socket could not take
/// at once). `read` is what a router already read from the connection; it is read again
/// first.
pub async fn accept_ot_tcp(server: &OtServerHandle, tcp: tokio::net::TcpStream, read: Vec<u8>) {
    accept_direct(server, tcp, read, |session, ws, direct| {
        Box::pin(session.run_direct(ws, direct))
    })
    .await;
}

// ---- accepting connections, for either endpoint ----------------------------------------------

/// Runs an accepted session on its socket (the session's own `run`, boxed).
type RunSession<S> = fn(S, WebSocketStream<Box<dyn Io>>) -> BoxFuture<'static, ()>;

/// Runs an accepted session on a plain TCP socket the hub writes to itself
/// ([`direct`](super::direct)).
type RunDirect<S> =
    fn(S, WebSocketStream<DirectIo>, Arc<Direct<tokio::net::TcpStream>>) -> BoxFuture<'static, ()>;

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

/// The accept loop of [`serve`] and [`serve_ot`]: one task per connection, which takes a
/// handshake slot, runs TLS and the upgrade within the deadline, gives the slot back, and
/// then runs the session with `run`.
async fn serve_endpoint<E: Endpoint>(
    server: E,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    run: RunSession<E::Session>,
    direct: Option<RunDirect<E::Session>>,
) {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let slot = tokio::select! {
            slot = server.slot() => slot,
            () = server.shut_down() => return,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = server.shut_down() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: the listener itself is fine.
                tracing::warn!(error = %e, "accept failed");
                tokio::task::yield_now().await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let server = server.clone();
        let tls = tls.clone();
        if let (None, Some(run_direct)) = (&tls, direct) {
            // Plain TCP: the hub writes the session's frames itself.
            tokio::spawn(async move {
                tracing::debug!(%peer, "connection");
                let socket = Arc::new(Direct::new(tcp));
                let io = DirectIo {
                    socket: socket.clone(),
                    read: bytes::Bytes::new(),
                };
                // Boxed, so the session's task does not keep the handshake's size.
                let handshake = Box::pin(upgrade(&server, io));
                let upgraded = within_deadline(server.handshake_timeout(), handshake)
                    .await
                    .flatten();
                drop(slot);
                if let Some((session, ws)) = upgraded {
                    run_direct(session, ws, socket).await;
                }
            });
            continue;
        }
        tokio::spawn(async move {
            tracing::debug!(%peer, "connection");
            let handshake = async {
                let io: Box<dyn Io> = match tls {
                    Some(tls) => match tls.accept(tcp).await {
                        Ok(stream) => Box::new(stream),
                        Err(e) => {
                            tracing::info!(%peer, error = %e, "TLS handshake failed");
                            return None;
                        }
                    },
                    None => Box::new(tcp),
                };
                upgrade(&server, io).await
            };
            let upgraded = within_deadline(server.handshake_timeout(), handshake)
                .await
                .flatten();
            drop(slot);
            if let Some((session, ws)) = upgraded {
                run(session, ws).await;
            }
        });
    }
}

/// The handshake of [`accept`] and [`accept_ot`]: a slot, then the upgrade within the
/// deadline.
async fn handshake<E: Endpoint, S: AsyncRead + AsyncWrite + Unpin>(
    server: &E,
    io: S,
) -> Option<(E::Session, WebSocketStream<S>)> {
    let slot = server.slot().await;
    let upgraded = within_deadline(server.handshake_timeout(), upgrade(server, io)).await;
    drop(slot);
    upgraded.flatten()
}

/// `handshake`, given up (`None`) once `deadline` passes (zero: never).
async fn within_deadline<F: Future>(deadline: Duration, handshake: F) -> Option<F::Output> {
    if deadline.is_zero() {
        return Some(handshake.await);
    }
    let outcome = tokio::time::timeout(deadline, handshake).await.ok();
    if outcome.is_none() {
        tracing::debug!(?deadline, "handshake timed out");
    }
    outcome
}

/// The WebSocket upgrade, decided by the state machine: the accepted session and its socket,
/// or `None` (refused, or the peer went away; a session accepted by then is released).
#[allow(clippy::result_large_err)] // tungstenite's callback signature fixes the error type
async fn upgrade<E: Endpoint, S: AsyncRead + AsyncWrite + Unpin>(
    server: &E,
    io: S,
) -> Option<(E::Session, WebSocketStream<S>)> {
    let mut accepted = None;
    let callback = |req: &Request, resp: Response| server.accept_upgrade(req, resp, &mut accepted);
    let config = Some(common::ws_config(server.max_message()));
    match tokio_tungstenite::accept_hdr_async_with_config(io, callback, config).await {
        Ok(ws) => accepted.map(|session| (session, ws)),
        // A refused handshake lands here too, after its HTTP answer went out.
        Err(e) => {
            tracing::debug!(error = %e, "handshake ended");
            None
        }
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
