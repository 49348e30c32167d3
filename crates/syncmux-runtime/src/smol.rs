//! The smol adapter (feature `smol`): async-tungstenite over smol's sockets, futures-rustls
//! for `wss://`. Tasks run on smol's global executor.

use core::future::Future;
use core::time::Duration;
use std::sync::Arc;

use async_tungstenite::WebSocketStream;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use smol::io::{AsyncRead, AsyncWrite};

use crate::client::{self, Dialer, Dialing, Runtime};
use crate::common::{self, Endpoint};
use crate::OtServerHandle;
use crate::{ClientEvents, ClientOptions, ServerOptions, SyncClient, SyncServer};
use syncmux::ot::OtServer;
use syncmux::ConfigError;
use syncmux::Driver;
use syncmux::{ClientConfig, DialRequest};
use tungstenite::handshake::server::{Request, Response};

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
    client::start::<Smol>(config, options)
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

pub(crate) struct Smol;

impl Runtime for Smol {
    type Ws = ClientSocket;

    fn dial(dial: DialRequest, dialer: Arc<Dialer>) -> Dialing<ClientSocket> {
        async move {
            let (request, target) = common::client_request(&dial, &dialer.protocols)?;
            let tcp = smol::net::TcpStream::connect((target.host.as_str(), target.port))
                .await
                .map_err(|e| format!("connect {}:{}: {e}", target.host, target.port))?;
            // Frames are small and latency matters more than packet count.
            let _ = tcp.set_nodelay(true);
            let io: Box<dyn Io> = if target.tls {
                let name = common::server_name(&target.host)?;
                let stream = futures_rustls::TlsConnector::from(dialer.tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS with {}: {e}", target.host))?;
                Box::new(stream)
            } else {
                Box::new(tcp)
            };
            let config = Some(common::ws_config(dialer.max_frame_len));
            let (ws, response) = async_tungstenite::client_async_with_config(request, io, config)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            Ok((ws, common::selected_protocol(&response)))
        }
        .boxed()
    }

    fn sleep_until(at: std::time::Instant) -> BoxFuture<'static, ()> {
        async move {
            smol::Timer::at(at).await;
        }
        .boxed()
    }

    fn spawn(task: BoxFuture<'static, ()>) {
        smol::spawn(task).detach();
    }
}

/// Starts a server around `driver` on smol's global executor (its timer task); accept
/// connections with [`serve`] or [`accept`], or drive upgraded sockets with
/// [`SyncServer::handshake`] and [`AcceptedSession::run`](crate::AcceptedSession::run).
pub fn start(driver: Driver, options: ServerOptions) -> SyncServer {
    let (server, timer) = SyncServer::new(driver, options);
    let sleep = |at: std::time::Instant| {
        Box::pin(async move {
            smol::Timer::at(at).await;
        })
    };
    smol::spawn(timer.run(sleep)).detach();
    server
}

/// Starts a server whose pulls, pushes and replays `backend` answers, asynchronously (see
/// [`Backend`](crate::Backend)), on smol's global executor: its timer task, one task per
/// request, and the backend's log follower if it has one. Serve it like one from [`start`].
pub fn start_with_backend(
    server: syncmux::Server,
    backend: Arc<dyn crate::Backend>,
    options: ServerOptions,
) -> SyncServer {
    let spawn = |task| smol::spawn(task).detach();
    let (server, timer) = SyncServer::with_backend(server, backend, spawn, options);
    let sleep = |at: std::time::Instant| {
        Box::pin(async move {
            smol::Timer::at(at).await;
        })
    };
    smol::spawn(timer.run(sleep)).detach();
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
    listener: smol::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    serve_endpoint(server, listener, tls, |session, ws| {
        Box::pin(session.run(ws))
    })
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

// ---- the OT endpoint (`ot`) -------------------------------------------------------

/// Starts the OT endpoint's server on smol's global executor (its timer task); accept
/// connections with [`serve_ot`] or [`accept_ot`].
pub fn start_ot(server: OtServer, options: ServerOptions) -> OtServerHandle {
    let (server, timer) = OtServerHandle::new(server, options);
    let sleep = |at: std::time::Instant| {
        Box::pin(async move {
            smol::Timer::at(at).await;
        })
    };
    smol::spawn(timer.run(sleep)).detach();
    server
}

/// [`serve`] for the OT endpoint: accepts connections until [`OtServerHandle::shutdown`],
/// each in its own task, with the same handshake deadline and bound
/// ([`ServerOptions`]); with `tls`, serves `wss://`. Every path is accepted.
pub async fn serve_ot(
    server: OtServerHandle,
    listener: smol::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    serve_endpoint(server, listener, tls, |session, ws| {
        Box::pin(session.run(ws))
    })
    .await;
}

/// [`accept`] for the OT endpoint: the WebSocket handshake on `io` (decided by the state
/// machine, within the handshake deadline, holding a handshake slot), then the session.
pub async fn accept_ot<S: AsyncRead + AsyncWrite + Unpin>(server: &OtServerHandle, io: S) {
    if let Some((session, ws)) = handshake(server, io).await {
        session.run(ws).await;
    }
}

// ---- accepting connections, for either endpoint ----------------------------------------------

/// `future`, or `None` once the server shuts down.
async fn unless_shut_down<E: Endpoint, T>(
    server: &E,
    future: impl Future<Output = T>,
) -> Option<T> {
    let stopped = async {
        server.shut_down().await;
        None
    };
    smol::future::or(async { Some(future.await) }, stopped).await
}

/// Runs an accepted session on its socket (the session's own `run`, boxed).
type RunSession<S> = fn(S, WebSocketStream<Box<dyn Io>>) -> BoxFuture<'static, ()>;

/// The accept loop of [`serve`] and [`serve_ot`]: one task per connection, which takes a
/// handshake slot, runs TLS and the upgrade within the deadline, gives the slot back, and
/// then runs the session with `run`.
async fn serve_endpoint<E: Endpoint>(
    server: E,
    listener: smol::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    run: RunSession<E::Session>,
) {
    let tls = tls.map(futures_rustls::TlsAcceptor::from);
    loop {
        let Some(slot) = unless_shut_down(&server, server.slot()).await else {
            return;
        };
        let (tcp, peer) = match unless_shut_down(&server, listener.accept()).await {
            None => return,
            Some(Ok(pair)) => pair,
            Some(Err(e)) => {
                // Out of file descriptors and the like: the listener itself is fine.
                tracing::warn!(error = %e, "accept failed");
                smol::future::yield_now().await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let server = server.clone();
        let tls = tls.clone();
        smol::spawn(async move {
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
        })
        .detach();
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
    let expired = async {
        smol::Timer::after(deadline).await;
        tracing::debug!(?deadline, "handshake timed out");
        None
    };
    smol::future::or(async { Some(handshake.await) }, expired).await
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
    match async_tungstenite::accept_hdr_async_with_config(io, callback, config).await {
        Ok(ws) => accepted.map(|session| (session, ws)),
        // A refused handshake lands here too, after its HTTP answer went out.
        Err(e) => {
            tracing::debug!(error = %e, "handshake ended");
            None
        }
    }
}
