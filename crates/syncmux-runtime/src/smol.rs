//! The smol binding (feature `smol`): async-tungstenite over smol's sockets, futures-rustls
//! for `wss://`. Tasks run on smol's global executor.

use core::time::Duration;
use std::net::SocketAddr;
use std::sync::Arc;

use async_tungstenite::WebSocketStream;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use smol::io::{AsyncRead, AsyncWrite};
use tungstenite::handshake::client::{Request as ClientRequest, Response as ClientResponse};
use tungstenite::protocol::WebSocketConfig;

use crate::runtime::{self, Decide, Runtime};
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

/// Starts a client task on smol's global executor and connects.
pub fn connect(config: ClientConfig) -> Result<(SyncClient, ClientEvents), ConfigError> {
    connect_with(config, ClientOptions::default())
}

/// [`connect`] with adapter options (TLS roots, channel capacities, jitter seed).
pub fn connect_with(
    config: ClientConfig,
    options: ClientOptions,
) -> Result<(SyncClient, ClientEvents), ConfigError> {
    crate::client::start::<Smol>(config, options)
}

/// Starts an OT client task (an [`OtClient`](syncmux::ot::OtClient) over a WebSocket to the
/// OT endpoint, see [`OtConnectOptions`](crate::OtConnectOptions)) on this runtime; it
/// connects at once and redials when the connection is lost.
pub fn connect_ot(
    config: syncmux::ot::OtClientConfig,
    options: crate::OtConnectOptions,
) -> Result<(crate::OtClientHandle, crate::OtClientEvents), syncmux::ot::OtConfigError> {
    crate::ot_client::start::<Smol>(config, options)
}

/// Starts a server around `driver` on smol's global executor (its timer task); accept
/// connections with [`serve`] or [`accept`], or drive upgraded sockets with
/// [`SyncServer::handshake`] and [`AcceptedSession::run`](crate::AcceptedSession::run).
pub fn start(driver: Driver, options: ServerOptions) -> SyncServer {
    SyncServer::start::<Smol>(driver, options)
}

/// Starts a server whose pulls, pushes and replays `backend` answers, asynchronously (see
/// [`Backend`](crate::Backend)), on smol's global executor: its timer task, one task per
/// request, and the backend's log follower if it has one. Serve it like one from [`start`].
pub fn start_with_backend(
    server: syncmux::Server,
    backend: Arc<dyn crate::Backend>,
    options: ServerOptions,
) -> SyncServer {
    SyncServer::start_with_backend::<Smol>(server, backend, options)
}

/// Accepts connections until [`SyncServer::shutdown`], each in its own task; with `tls`,
/// serves `wss://`.
///
/// Each connection's whole handshake (TLS, then the upgrade) must end within
/// [`ServerOptions::handshake_timeout`]; at most [`ServerOptions::max_handshakes`] are under
/// way at once (at the bound, no connection is accepted until one ends).
pub async fn serve(
    server: SyncServer,
    listener: smol::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    runtime::serve::<Smol, _>(server, listener, tls).await;
}

/// Runs the WebSocket handshake on `io` through the state machine, then the session. The
/// handshake takes one of the [`ServerOptions::max_handshakes`] slots (waiting for one) and
/// must end within [`ServerOptions::handshake_timeout`].
pub async fn accept<S: Io>(server: &SyncServer, io: S) {
    runtime::accept::<Smol, _>(server, Box::new(io)).await;
}

/// Starts the OT endpoint's server on smol's global executor (its timer task); accept
/// connections with [`serve_ot`] or [`accept_ot`].
pub fn start_ot(server: OtServer, options: ServerOptions) -> OtServerHandle {
    OtServerHandle::start::<Smol>(server, options)
}

/// [`serve`] for the OT endpoint: accepts connections until [`OtServerHandle::shutdown`],
/// each in its own task, with the same handshake deadline and bound
/// ([`ServerOptions`]); with `tls`, serves `wss://`. Every path is accepted.
pub async fn serve_ot(
    server: OtServerHandle,
    listener: smol::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    runtime::serve::<Smol, _>(server, listener, tls).await;
}

/// [`accept`] for the OT endpoint: the WebSocket handshake on `io` (decided by the state
/// machine, within the handshake deadline, holding a handshake slot), then the session.
pub async fn accept_ot<S: Io>(server: &OtServerHandle, io: S) {
    runtime::accept::<Smol, _>(server, Box::new(io)).await;
}

/// The runtime.
pub(crate) struct Smol;

impl Runtime for Smol {
    type Tcp = smol::net::TcpStream;
    type Listener = smol::net::TcpListener;
    type Io = Box<dyn Io>;
    type Ws = ClientSocket;

    fn spawn(task: BoxFuture<'static, ()>) {
        smol::spawn(task).detach();
    }

    fn sleep_until(at: std::time::Instant) -> BoxFuture<'static, ()> {
        async move {
            smol::Timer::at(at).await;
        }
        .boxed()
    }

    fn sleep(duration: Duration) -> BoxFuture<'static, ()> {
        async move {
            smol::Timer::after(duration).await;
        }
        .boxed()
    }

    fn connect(host: &str, port: u16) -> BoxFuture<'_, std::io::Result<Self::Tcp>> {
        async move {
            let tcp = smol::net::TcpStream::connect((host, port)).await?;
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
        let connecting = futures_rustls::TlsConnector::from(tls).connect(name, tcp);
        async move { Ok(Box::new(connecting.await?) as Self::Io) }.boxed()
    }

    fn tls_accept(
        tls: Arc<rustls::ServerConfig>,
        tcp: Self::Tcp,
    ) -> BoxFuture<'static, std::io::Result<Self::Io>> {
        let accepting = futures_rustls::TlsAcceptor::from(tls).accept(tcp);
        async move { Ok(Box::new(accepting.await?) as Self::Io) }.boxed()
    }

    fn ws_connect(
        request: ClientRequest,
        io: Self::Io,
        config: WebSocketConfig,
    ) -> BoxFuture<'static, Result<(Self::Ws, ClientResponse), tungstenite::Error>> {
        async_tungstenite::client_async_with_config(request, io, Some(config)).boxed()
    }

    fn ws_accept(
        io: Self::Io,
        decide: Decide,
        config: WebSocketConfig,
    ) -> BoxFuture<'static, Result<Self::Ws, tungstenite::Error>> {
        async_tungstenite::accept_hdr_async_with_config(io, decide, Some(config)).boxed()
    }
}
