//! The smol adapter (feature `smol`): async-tungstenite over smol's sockets, futures-rustls
//! for `wss://`. Tasks run on smol's global executor.

use std::sync::Arc;

use async_tungstenite::WebSocketStream;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use smol::io::{AsyncRead, AsyncWrite};

use super::client::{self, Dialing, Runtime};
use super::common;
use super::{ClientEvents, ClientOptions, SyncClient};
use crate::client::{ClientConfig, ConfigError, DialRequest};

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

pub(crate) struct Smol;

impl Runtime for Smol {
    type Ws = ClientSocket;

    fn dial(
        dial: DialRequest,
        tls: Arc<rustls::ClientConfig>,
        max_frame_len: usize,
    ) -> Dialing<ClientSocket> {
        async move {
            let (request, target) = common::client_request(&dial)?;
            let tcp = smol::net::TcpStream::connect((target.host.as_str(), target.port))
                .await
                .map_err(|e| format!("connect {}:{}: {e}", target.host, target.port))?;
            // Frames are small and latency matters more than packet count.
            let _ = tcp.set_nodelay(true);
            let io: Box<dyn Io> = if target.tls {
                let name = common::server_name(&target.host)?;
                let stream = futures_rustls::TlsConnector::from(tls)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS with {}: {e}", target.host))?;
                Box::new(stream)
            } else {
                Box::new(tcp)
            };
            let config = Some(common::ws_config(max_frame_len));
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
