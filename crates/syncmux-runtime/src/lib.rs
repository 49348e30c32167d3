//! The runtime glue of [syncmux]: the sans-IO state machines bound to sockets, timers
//! and tasks, under tokio (feature `tokio`) or smol (feature `smol`).
//!
//! The adapters own sockets, timers and tasks, and nothing else: every protocol decision
//! (when to dial, what to send, when to close, with which code) comes out of the state
//! machines' `poll_*` outputs. One task owns a [`Client`](syncmux::Client); the application
//! reaches it through bounded channels with a cloneable `SyncClient` handle (requests are
//! futures) and reads its events from a `ClientEvents` stream.
//!
//! Everything starts through a [`Runtime`] (`Tokio` or `Smol`, one feature each): `connect`
//! a client, `start` a server, `serve` its connections. The OT profile's endpoint
//! ([`syncmux::ot`]) is served the same way: `start_ot` runs an
//! [`OtServer`](syncmux::ot::OtServer) behind an `OtServerHandle`, which `serve` and `accept`
//! take like a `SyncServer`; `connect_ot` runs an [`OtClient`](syncmux::ot::OtClient) over a
//! WebSocket to it.
//!
//! Native clients dial `ws://` and `wss://`; TLS is rustls with the `ring` provider and the
//! webpki roots (nothing to build with cmake, no system certificate store needed), or a
//! `rustls::ClientConfig` of your own in `ClientOptions::tls`.
//!
//! ```no_run
//! # #[cfg(feature = "tokio")]
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use syncmux::payload::{PullRequest, Subscribe};
//! use syncmux::ClientConfig;
//! use syncmux_runtime::Tokio;
//!
//! let config = ClientConfig::new("ws://127.0.0.1:8787/sync/ws", "node-1");
//! let (client, mut events) = Tokio::connect(config)?;
//! let pulled = client.pull(PullRequest::new(["documents"])).await?;
//! println!("{} changes, cursor {:?}", pulled.changes.len(), pulled.cursor);
//! client.subscribe(Subscribe::new(["documents"])).await?;
//! while let Some(event) = events.recv().await {
//!     println!("{event:?}");
//! }
//! # Ok(())
//! # }
//! ```

// Lints of its own, not the workspace's: `deny`, not `forbid`, `unsafe_code`, so that the
// io_uring writer (`uring`) may allow it alone.
#![deny(unsafe_code)]
#![deny(missing_docs)]
#![warn(unreachable_pub)]
// Without a runtime feature the crate is the backend seam alone (what a backend crate
// implements); the hub that drives it is built only with a runtime.
#![cfg_attr(not(any(feature = "tokio", feature = "smol")), allow(dead_code))]

mod backend;
mod client;
mod clock;
mod common;
// Only tokio's sockets are written directly (smol's go through the tasks' queues).
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
mod direct;
mod fallback;
mod frames;
mod hub;
pub mod metrics;
mod ot;
mod ot_client;
mod runtime;
mod server;
#[cfg(feature = "smol")]
mod smol;
#[cfg(feature = "tokio")]
mod tokio;
// The one module with `unsafe`: io_uring's submission queue takes raw buffers.
#[cfg(all(feature = "tokio", target_os = "linux"))]
#[allow(unsafe_code)]
mod uring;

pub use backend::{Admit, Backend, BackendFuture, LogSink, Push, Read};
pub use client::{ClientEvents, ClientOptions, SyncClient};
pub use clock::Clock;
pub use common::{client_tls_trusting, server_tls};
pub use fallback::TransportKind;
pub use frames::{Events, Frames};
pub use hub::{Accepted, Hub, Rejection};
pub use ot::{AcceptedOtSession, OtServerHandle};
pub use ot_client::{OtClientEvents, OtClientHandle, OtCommandError, OtConnectOptions, OtStatus};
pub use runtime::Runtime;
pub use server::{AcceptedSession, ServerOptions, SyncServer};
#[cfg(feature = "smol")]
pub use smol::Io as SmolIo;
#[cfg(feature = "tokio")]
pub use tokio::Io as TokioIo;

/// The tokio runtime: tokio-tungstenite over tokio's sockets, tokio-rustls for `wss://`.
/// [`Runtime`]'s methods (`Tokio::connect`, `Tokio::start`, `Tokio::serve`, ...), and
/// [`accept_tcp`](Runtime::accept_tcp) for a router that read the request itself. Its
/// listener is [`tokio::net::TcpListener`](::tokio::net::TcpListener); `accept` takes any
/// stream as `Box<dyn TokioIo>`. Calls that start tasks must run inside a tokio runtime.
#[cfg(feature = "tokio")]
pub type Tokio = Runtime<tokio::TokioBinding>;

/// The smol runtime: async-tungstenite over smol's sockets, futures-rustls for `wss://`;
/// tasks run on smol's global executor. [`Runtime`]'s methods (`Smol::connect`,
/// `Smol::start`, `Smol::serve`, ...). Its listener is
/// [`smol::net::TcpListener`](::smol::net::TcpListener); `accept` takes any stream as
/// `Box<dyn SmolIo>`.
#[cfg(feature = "smol")]
pub type Smol = Runtime<smol::SmolBinding>;
