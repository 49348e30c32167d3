//! The smol binding (feature `smol`): async-tungstenite over smol's sockets, futures-rustls
//! for `wss://`. Tasks run on smol's global executor.

use core::time::Duration;
use std::sync::Arc;

use async_tungstenite::WebSocketStream;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use smol::io::{AsyncRead, AsyncWrite};
use tungstenite::handshake::client::{Request as ClientRequest, Response as ClientResponse};
use tungstenite::protocol::WebSocketConfig;

use crate::runtime::{self, Binding, Decide};

/// Any byte stream a WebSocket runs over (plain TCP or TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// A client WebSocket of this binding.
type ClientSocket = WebSocketStream<Box<dyn Io>>;

/// The binding behind [`Smol`](crate::Smol).
#[derive(Clone, Copy, Debug, Default)]
pub struct SmolBinding;

impl Binding for SmolBinding {
    runtime::sockets!(smol, futures_rustls, async_tungstenite);

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

    fn http_io(io: Self::Io) -> Box<dyn crate::fallback::HttpIo> {
        Box::new(smol_hyper::rt::FuturesIo::new(io))
    }
}
