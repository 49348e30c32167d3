//! The one seam between the glue and an async runtime, and what is written once over it.
//!
//! A runtime binding (the `tokio` and `smol` modules) implements [`Binding`]: spawn, timers,
//! TCP, TLS and tungstenite's handshakes on its own sockets, about a hundred lines each.
//! Everything else — dialing (TCP, then TLS, then the upgrade), the accept loop with its
//! handshake slots and deadline, the timer tasks, the client tasks — is here or in the
//! modules that use it, and none of it knows which runtime runs it. [`Runtime`] is the public
//! face: what an application starts, serves and connects with, written once for both.

use core::future::Future;
use core::marker::PhantomData;
use core::task::Poll;
use core::time::Duration;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::future::{self, BoxFuture, Either};
use futures_util::{Sink, Stream, StreamExt};
use tungstenite::handshake::client::{Request as ClientRequest, Response as ClientResponse};
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::Message;

use crate::client::Dialer;
use crate::common::{self, WebSocket};
use crate::fallback::{self, Connection, HttpIo, TransportKind};
use crate::hub::{Accepted, Hub, Machine};
use crate::server::HandshakeSlot;
use crate::{
    Backend, ClientEvents, ClientOptions, OtClientEvents, OtClientHandle, OtConnectOptions,
    OtServerHandle, ServerOptions, SyncClient, SyncServer,
};
use syncmux::ot::{OtClientConfig, OtServer};
use syncmux::{ClientConfig, ConfigError, DialRequest, Driver, Server};

/// An async runtime the glue runs on: [`Tokio`](crate::Tokio) (feature `tokio`) or
/// [`Smol`](crate::Smol) (feature `smol`). Every server and client of this crate starts
/// through it; the methods are the same on both.
///
/// ```no_run
/// # #[cfg(feature = "tokio")]
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use syncmux::{Driver, MemoryStore, Server, ServerConfig, StoreConfig};
/// use syncmux_runtime::{ServerOptions, Tokio};
///
/// let driver = Driver::new(Server::new(ServerConfig::default())?, MemoryStore::new(StoreConfig::default()));
/// let server = Tokio::start(driver, ServerOptions::default());
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8787").await?;
/// Tokio::serve(server, listener, None).await;
/// # Ok(())
/// # }
/// ```
///
/// The runtimes are this crate's: `B` is one of its bindings.
#[derive(Clone, Copy, Debug, Default)]
pub struct Runtime<B>(PhantomData<B>);

impl<B: Binding> Runtime<B> {
    /// Starts a client task and connects (the client reconnects by itself from then on).
    /// Must be called inside the runtime (for tokio, within a runtime's context).
    pub fn connect(config: ClientConfig) -> Result<(SyncClient, ClientEvents), ConfigError> {
        Self::connect_with(config, ClientOptions::default())
    }

    /// [`connect`](Runtime::connect) with the adapter's options (TLS roots, channel
    /// capacities, jitter seed).
    pub fn connect_with(
        config: ClientConfig,
        options: ClientOptions,
    ) -> Result<(SyncClient, ClientEvents), ConfigError> {
        crate::client::start::<B>(config, options)
    }

    /// Starts an OT client task (an [`OtClient`](syncmux::ot::OtClient) over a WebSocket to
    /// the OT endpoint, see [`OtConnectOptions`]); it connects at once and redials when the
    /// connection is lost.
    pub fn connect_ot(
        config: OtClientConfig,
        options: OtConnectOptions,
    ) -> Result<(OtClientHandle, OtClientEvents), ConfigError> {
        crate::ot_client::start::<B>(config, options)
    }

    /// Starts a server around `driver` (its timer task); accept connections with
    /// [`serve`](Runtime::serve) or [`accept`](Runtime::accept), or mount it in an HTTP
    /// server with [`SyncServer::handshake`] and
    /// [`AcceptedSession::run`](crate::AcceptedSession::run).
    pub fn start(driver: Driver, options: ServerOptions) -> SyncServer {
        SyncServer::start::<B>(driver, options)
    }

    /// Starts a server whose pulls, pushes and replays `backend` answers, asynchronously
    /// (see [`Backend`]): its timer task, one task per request, and the backend's log
    /// follower if it has one. Serve it like one from [`start`](Runtime::start).
    pub fn start_with_backend(
        server: Server,
        backend: Arc<dyn Backend>,
        options: ServerOptions,
    ) -> SyncServer {
        SyncServer::start_with_backend::<B>(server, backend, options)
    }

    /// Starts the OT endpoint's server (its timer task); accept connections with
    /// [`serve`](Runtime::serve) or [`accept`](Runtime::accept).
    ///
    /// Its state machine is one lock, so its connections gain nothing from being spread over
    /// a multi-thread runtime's workers but contention and cross-thread wake-ups:
    /// `syncmux-server` starts it, and runs its plain-TCP connections, on a current-thread
    /// runtime of its own.
    pub fn start_ot(server: OtServer, options: ServerOptions) -> OtServerHandle {
        OtServerHandle::start::<B>(server, options)
    }

    /// Accepts connections for `server` (a [`SyncServer`] or an [`OtServerHandle`]) until it
    /// shuts down, each in its own task; with `tls`, serves `wss://`.
    ///
    /// Each connection's whole handshake (TLS, then the upgrade) must end within
    /// [`ServerOptions::handshake_timeout`]; at most [`ServerOptions::max_handshakes`] are
    /// under way at once (at the bound, no connection is accepted until one ends). On tokio,
    /// the hub writes the frames of plain-TCP sessions to their sockets itself.
    pub fn serve<M: Machine>(
        server: Hub<M>,
        listener: B::Listener,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> impl Future<Output = ()> + Send {
        serve::<B, M>(server, listener, tls)
    }

    /// Runs an accepted session over channels, for a transport that is not a WebSocket (an
    /// SSE stream and the POSTs that feed it): its task is spawned here; feed it through
    /// [`Frames::inbox`](crate::Frames::inbox) and read its frames from the [`Frames`](crate::Frames).
    pub fn frames<M: Machine>(session: Accepted<M>) -> crate::Frames {
        let (frames, task) = session.over_channels();
        B::spawn(Box::pin(task));
        frames
    }

    /// Runs the WebSocket handshake on `io` (any stream of the runtime, boxed: a TLS stream
    /// a router accepted, say) through `server`'s state machine, then the session. The
    /// handshake takes one of the [`ServerOptions::max_handshakes`] slots (waiting for one)
    /// and must end within [`ServerOptions::handshake_timeout`].
    pub fn accept<M: Machine>(server: &Hub<M>, io: B::Io) -> impl Future<Output = ()> + Send + '_ {
        accept::<B, M>(server, io)
    }
}

/// What a runtime binding supplies. Implemented by a zero-sized type per runtime (the
/// parameters of [`Tokio`](crate::Tokio) and [`Smol`](crate::Smol)); public only as
/// [`Runtime`]'s seal.
pub trait Binding: Sized + Send + Sync + 'static {
    /// A connected TCP socket.
    type Tcp: Send + 'static;
    /// A listening TCP socket: the runtime's own `TcpListener`.
    type Listener: Send + Sync + 'static;
    /// A byte stream a WebSocket runs over (plain TCP or TLS), boxed: `Box<dyn Io>` with the
    /// runtime module's `Io`.
    type Io: Send + Unpin + 'static;
    /// A WebSocket over [`Io`](Binding::Io).
    type Ws: Stream<Item = Result<Message, tungstenite::Error>>
        + Sink<Message, Error = tungstenite::Error>
        + Unpin
        + Send
        + 'static;

    /// Runs `task` in the background.
    fn spawn(task: BoxFuture<'static, ()>);

    /// Completes at `at`.
    fn sleep_until(at: std::time::Instant) -> BoxFuture<'static, ()>;

    /// Completes after `duration`.
    fn sleep(duration: Duration) -> BoxFuture<'static, ()>;

    /// Opens a TCP connection (with `TCP_NODELAY`: frames are small and latency matters
    /// more than packet count).
    fn tcp_connect(host: &str, port: u16) -> BoxFuture<'_, std::io::Result<Self::Tcp>>;

    /// The next connection of `listener` (with `TCP_NODELAY`).
    fn tcp_accept(
        listener: &Self::Listener,
    ) -> BoxFuture<'_, std::io::Result<(Self::Tcp, std::net::SocketAddr)>>;

    /// A plain TCP socket as a WebSocket's stream.
    fn plain(tcp: Self::Tcp) -> Self::Io;

    /// TLS as the client, to `name`.
    fn tls_connect(
        tls: Arc<rustls::ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
        tcp: Self::Tcp,
    ) -> BoxFuture<'static, std::io::Result<Self::Io>>;

    /// TLS as the server.
    fn tls_accept(
        tls: Arc<rustls::ServerConfig>,
        tcp: Self::Tcp,
    ) -> BoxFuture<'static, std::io::Result<Self::Io>>;

    /// The client's WebSocket handshake on `io`.
    fn ws_connect(
        request: ClientRequest,
        io: Self::Io,
        config: WebSocketConfig,
    ) -> BoxFuture<'static, Result<(Self::Ws, ClientResponse), tungstenite::Error>>;

    /// A stream as hyper's I/O, for the clients' HTTP fallback.
    fn http_io(io: Self::Io) -> Box<dyn HttpIo>;

    /// The server's WebSocket handshake on `io`, `decide` choosing the answer.
    fn ws_accept(
        io: Self::Io,
        decide: Decide,
        config: WebSocketConfig,
    ) -> BoxFuture<'static, Result<Self::Ws, tungstenite::Error>>;

    /// Runs one plain-TCP connection that [`serve`] accepted to its end: the handshake within
    /// the deadline, holding `slot`, then the session. By default as any other stream; a
    /// runtime whose hub writes sockets itself takes it over here.
    fn serve_plain<M: Machine>(
        server: Hub<M>,
        tcp: Self::Tcp,
        slot: HandshakeSlot,
    ) -> BoxFuture<'static, ()> {
        Box::pin(connection::<Self, M>(
            server,
            future::ready(Some(Self::plain(tcp))),
            slot,
        ))
    }
}

/// The [`Binding`] items that are the same on every runtime but for the crates named:
/// `$net` (its `TcpStream` and `TcpListener`), `$tls` (rustls for its sockets) and `$ws`
/// (tungstenite for its sockets). Expands inside a binding's `impl Binding`, in a module
/// whose `Io` is its byte-stream trait and whose `ClientSocket` its client WebSocket.
#[cfg(any(feature = "tokio", feature = "smol"))]
macro_rules! sockets {
    ($net:ident, $tls:ident, $ws:ident) => {
        type Tcp = $net::net::TcpStream;
        type Listener = $net::net::TcpListener;
        type Io = Box<dyn Io>;
        type Ws = ClientSocket;

        fn tcp_connect(host: &str, port: u16) -> BoxFuture<'_, std::io::Result<Self::Tcp>> {
            async move {
                let tcp = $net::net::TcpStream::connect((host, port)).await?;
                let _ = tcp.set_nodelay(true);
                Ok(tcp)
            }
            .boxed()
        }

        fn tcp_accept(
            listener: &Self::Listener,
        ) -> BoxFuture<'_, std::io::Result<(Self::Tcp, std::net::SocketAddr)>> {
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
            let connecting = $tls::TlsConnector::from(tls).connect(name, tcp);
            async move { Ok(Box::new(connecting.await?) as Self::Io) }.boxed()
        }

        fn tls_accept(
            tls: Arc<rustls::ServerConfig>,
            tcp: Self::Tcp,
        ) -> BoxFuture<'static, std::io::Result<Self::Io>> {
            let accepting = $tls::TlsAcceptor::from(tls).accept(tcp);
            async move { Ok(Box::new(accepting.await?) as Self::Io) }.boxed()
        }

        fn ws_connect(
            request: ClientRequest,
            io: Self::Io,
            config: WebSocketConfig,
        ) -> BoxFuture<'static, Result<(Self::Ws, ClientResponse), tungstenite::Error>> {
            $ws::client_async_with_config(request, io, Some(config)).boxed()
        }

        fn ws_accept(
            io: Self::Io,
            decide: Decide,
            config: WebSocketConfig,
        ) -> BoxFuture<'static, Result<Self::Ws, tungstenite::Error>> {
            $ws::accept_hdr_async_with_config(io, decide, Some(config)).boxed()
        }
    };
}
#[cfg(any(feature = "tokio", feature = "smol"))]
pub(crate) use sockets;

/// Opens a connection for `dial` over the first of the dialer's transports that works: a
/// WebSocket (TCP, then TLS for `wss://`, then the upgrade), or the SSE fallback when the
/// upgrade fails or is refused (a proxy that blocks WebSockets). Gives it with the
/// subprotocol the server selected, or why it failed (each transport's reason, in order); a
/// server that cannot be reached is not tried again over another transport.
pub(crate) async fn dial<R: Binding>(
    dial: DialRequest,
    dialer: Arc<Dialer>,
) -> Result<(Connection<R::Ws>, Option<String>), String> {
    let (request, target) = common::client_request(&dial, &dialer.protocols)?;
    let mut failed = Vec::new();
    for transport in &dialer.transports {
        match transport {
            TransportKind::WebSocket => {
                let io = connect::<R>(&target, &dialer).await?;
                let config = common::ws_config(dialer.max_frame_len);
                match R::ws_connect(request.clone(), io, config).await {
                    Ok((ws, response)) => {
                        let protocol = common::selected_protocol(&response);
                        return Ok((Connection::WebSocket(ws), protocol));
                    }
                    Err(e) => failed.push(format!("handshake: {e}")),
                }
            }
            TransportKind::Sse => {
                let uri = request.uri();
                // hyper's requests take the origin form: path and query.
                let origin_form = |url: String| match url.parse::<tungstenite::http::Uri>() {
                    Ok(uri) => uri
                        .path_and_query()
                        .map_or("/".to_owned(), |p| p.to_string()),
                    Err(_) => url,
                };
                let (stream, send) = DialRequest::fallback_urls(&dial.url);
                let (stream, send) = (origin_form(stream), origin_form(send));
                let (target, dialer) = (target.clone(), dialer.clone());
                let host = match uri.port_u16() {
                    Some(port) => format!("{}:{port}", target.host),
                    None => target.host.clone(),
                };
                let sse = fallback::Target {
                    connect: Arc::new(move || {
                        let (target, dialer) = (target.clone(), dialer.clone());
                        Box::pin(
                            async move { Ok(R::http_io(connect::<R>(&target, &dialer).await?)) },
                        )
                    }),
                    host,
                    stream,
                    send,
                    headers: dial.headers.clone(),
                };
                match fallback::open(sse, R::spawn).await {
                    Ok(socket) => return Ok((Connection::Sse(Box::new(socket)), None)),
                    Err(e) => failed.push(e),
                }
            }
        }
    }
    if failed.is_empty() {
        return Err("no transport to dial".to_owned());
    }
    Err(failed.join("; then "))
}

/// A stream to `target`: TCP, then TLS when it asks for it.
async fn connect<R: Binding>(target: &common::Target, dialer: &Dialer) -> Result<R::Io, String> {
    let tcp = R::tcp_connect(&target.host, target.port)
        .await
        .map_err(|e| format!("connect {}:{}: {e}", target.host, target.port))?;
    if !target.tls {
        return Ok(R::plain(tcp));
    }
    let name = common::server_name(&target.host)?;
    R::tls_connect(dialer.tls.clone(), name, tcp)
        .await
        .map_err(|e| format!("TLS with {}: {e}", target.host))
}

/// Accepts connections until the server shuts down, each in its own task; with `tls`,
/// serves `wss://`. Each connection takes a handshake slot before it is accepted (at the
/// bound, none is accepted until one ends) and gives it back once its handshake, TLS
/// included, is over or its deadline passed.
pub(crate) async fn serve<R: Binding, M: Machine>(
    server: Hub<M>,
    listener: R::Listener,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    loop {
        let Some(slot) = unless_shut_down(&server, server.gate().slot()).await else {
            return;
        };
        let (tcp, peer) = match unless_shut_down(&server, R::tcp_accept(&listener)).await {
            None => return,
            Some(Ok(pair)) => pair,
            Some(Err(e)) => {
                // Out of file descriptors and the like: the listener itself is fine.
                tracing::warn!(error = %e, "accept failed");
                yield_now().await;
                continue;
            }
        };
        tracing::debug!(%peer, "connection");
        let server = server.clone();
        let task = match &tls {
            None => R::serve_plain(server, tcp, slot),
            Some(tls) => {
                let handshake = R::tls_accept(tls.clone(), tcp);
                let io = async move {
                    handshake
                        .await
                        .inspect_err(|e| tracing::info!(%peer, error = %e, "TLS handshake failed"))
                        .ok()
                };
                Box::pin(connection::<R, M>(server, io, slot))
            }
        };
        R::spawn(task);
    }
}

/// One connection: its stream (`io`, after TLS when there is TLS) and the upgrade within the
/// deadline, then, once the slot is given back, the session.
async fn connection<R: Binding, M: Machine>(
    server: Hub<M>,
    io: impl Future<Output = Option<R::Io>> + Send,
    slot: HandshakeSlot,
) {
    let handshake = async {
        let io = io.await?;
        upgrade(&server, |decide, config| R::ws_accept(io, decide, config)).await
    };
    let deadline = server.gate().options().handshake_timeout;
    // In a block of its own, so that the handshake's result is dead (and takes no room in
    // the task) by the time the session runs.
    let session = {
        let upgraded = within_deadline::<R, _>(deadline, handshake).await.flatten();
        drop(slot);
        match upgraded {
            Some((session, ws)) => session.run_to_end(ws),
            None => return,
        }
    };
    // Only the boxed linger is held across its await, not the socket it took.
    if let Some(lingering) = session.await.map(linger::<R, _>) {
        lingering.await;
    }
}

/// How long a socket the server closed with a close frame is read after the session ended.
const LINGER: Duration = Duration::from_secs(2);

/// After the server closed a session with a close frame: reads, and drops, what the peer
/// still sends until it answers the close (or goes), for [`LINGER`] at most. Closing a socket
/// with unread input resets the connection, and a reset can take the close frame with it
/// (a peer that floods, closed with 4429, would only see the connection drop).
///
/// Boxed: made once per closed session, it would otherwise add its size to every
/// connection's task for as long as the connection lives.
pub(crate) fn linger<R: Binding, W: WebSocket>(mut ws: W) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let drain = async { while let Some(Ok(_)) = ws.next().await {} };
        if let Either::Right(_) = future::select(core::pin::pin!(drain), R::sleep(LINGER)).await {
            tracing::debug!("the peer went on sending after its close");
        }
    })
}

/// The handshake of an accepted stream (a runtime module's `accept`): a slot, then the
/// upgrade within the deadline, then the session.
pub(crate) async fn accept<R: Binding, M: Machine>(server: &Hub<M>, io: R::Io) {
    let slot = server.gate().slot().await;
    connection::<R, M>(server.clone(), future::ready(Some(io)), slot).await;
}

/// `handshake`, given up (`None`) once `deadline` passes (zero: never).
pub(crate) async fn within_deadline<R: Binding, F: Future>(
    deadline: Duration,
    handshake: F,
) -> Option<F::Output> {
    if deadline.is_zero() {
        return Some(handshake.await);
    }
    match future::select(core::pin::pin!(handshake), R::sleep(deadline)).await {
        Either::Left((done, _)) => Some(done),
        Either::Right(((), _)) => {
            tracing::debug!(?deadline, "handshake timed out");
            None
        }
    }
}

/// The state machine's decision inside tungstenite's upgrade callback, as the runtimes'
/// handshakes take it.
pub(crate) type Decide =
    Box<dyn FnOnce(&Request, Response) -> Result<Response, ErrorResponse> + Send>;

/// The WebSocket upgrade, decided by the state machine, with `handshake` (a runtime's
/// tungstenite on its stream): the accepted session and its socket, or `None` (refused, or the
/// peer went away; a session accepted by then is released).
pub(crate) async fn upgrade<M: Machine, W, F>(
    server: &Hub<M>,
    handshake: impl FnOnce(Decide, WebSocketConfig) -> F,
) -> Option<(Accepted<M>, W)>
where
    F: Future<Output = Result<W, tungstenite::Error>>,
{
    // Shared with the callback, which the handshake future owns.
    let accepted = Arc::new(Mutex::new(None));
    // tungstenite's callback signature fixes the error type.
    #[allow(clippy::result_large_err)]
    let decide: Decide = {
        let (server, accepted) = (server.clone(), accepted.clone());
        Box::new(move |req: &Request, resp: Response| {
            server.decide(req, resp, &mut lock(&accepted))
        })
    };
    let upgraded = handshake(decide, common::ws_config(server.gate().ws_frame_limit())).await;
    let session = lock(&accepted).take();
    match upgraded {
        Ok(ws) => session.map(|session| (session, ws)),
        // A refused handshake lands here too, after its HTTP answer went out.
        Err(e) => {
            tracing::debug!(error = %e, "handshake ended");
            None
        }
    }
}

/// The decision's slot. Nothing panics while holding it, but a poisoned one is as good.
fn lock<T>(slot: &Mutex<T>) -> MutexGuard<'_, T> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

/// `future`, or `None` once the server shuts down.
async fn unless_shut_down<M: Machine, T>(
    server: &Hub<M>,
    future: impl Future<Output = T>,
) -> Option<T> {
    let stopped = core::pin::pin!(server.gate().stopped());
    match future::select(core::pin::pin!(future), stopped).await {
        Either::Left((done, _)) => Some(done),
        Either::Right(((), _)) => None,
    }
}

/// Lets the runtime run other tasks once before going on.
async fn yield_now() {
    let mut yielded = false;
    core::future::poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
}
