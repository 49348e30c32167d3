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

use crate::runtime::{Binding, Decide};

/// Any byte stream a WebSocket runs over (plain TCP or TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// A client WebSocket of this binding.
type ClientSocket = WebSocketStream<Box<dyn Io>>;

/// The binding behind [`Smol`](crate::Smol).
#[derive(Clone, Copy, Debug, Default)]
pub struct SmolBinding;

impl Binding for SmolBinding {
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

    fn tcp_connect(host: &str, port: u16) -> BoxFuture<'_, std::io::Result<Self::Tcp>> {
        async move {
            let tcp = smol::net::TcpStream::connect((host, port)).await?;
            let _ = tcp.set_nodelay(true);
            Ok(tcp)
        }
        .boxed()
    }

    fn tcp_accept(
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
