//! Runtime adapters (the crate docs (layers)): features `tokio`, `smol` and `wasm`
//! (the browser, compiled for wasm32 only: a JavaScript `SyncClient`).
//!
//! The adapters own sockets, timers and tasks, and nothing else: every protocol decision
//! (when to dial, what to send, when to close, with which code) comes out of the state
//! machines' `poll_*` outputs. One task owns a [`Client`](crate::Client); the application
//! reaches it through bounded channels with a cloneable `SyncClient` handle (requests are
//! futures) and reads its events from a `ClientEvents` stream.
//!
//! The OT profile's endpoint ([`crate::ot`]) is served the same way: `tokio::start_ot` (or
//! `smol::start_ot`) runs an [`OtServer`](crate::ot::OtServer) behind an `OtServerHandle`,
//! and `serve_ot` or `accept_ot` take its connections; `tokio::connect_ot` (or
//! `smol::connect_ot`) runs an [`OtClient`](crate::ot::OtClient) over a WebSocket to it.
//!
//! Native clients dial `ws://` and `wss://`; TLS is rustls with the `ring` provider and the
//! webpki roots (nothing to build with cmake, no system certificate store needed), or a
//! `rustls::ClientConfig` of your own in `ClientOptions::tls`.
//!
//! ```no_run
//! # #[cfg(feature = "tokio")]
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use syncmux::adapters::tokio::connect;
//! use syncmux::payload::{PullRequest, Subscribe};
//! use syncmux::ClientConfig;
//!
//! let (client, mut events) = connect(ClientConfig::new("ws://127.0.0.1:8787/sync/ws", "node-1"))?;
//! let pulled = client.pull(PullRequest::new(["documents"])).await?;
//! println!("{} changes, cursor {:?}", pulled.changes.len(), pulled.cursor);
//! client.subscribe(Subscribe::new(["documents"])).await?;
//! while let Some(event) = events.recv().await {
//!     println!("{event:?}");
//! }
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "adapters")]
mod backend;
#[cfg(feature = "adapters")]
mod client;
#[cfg(feature = "adapters")]
mod clock;
#[cfg(feature = "adapters")]
mod common;
// Only tokio's sockets are written directly (smol's go through the tasks' queues).
#[cfg(feature = "adapters")]
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
mod direct;
#[cfg(feature = "adapters")]
pub mod metrics;
#[cfg(feature = "adapters")]
mod ot;
#[cfg(feature = "adapters")]
mod ot_client;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "adapters")]
mod server;
#[cfg(feature = "smol")]
pub mod smol;
#[cfg(all(feature = "sqlite", feature = "adapters"))]
pub mod sqlite;
#[cfg(feature = "tokio")]
pub mod tokio;
// The one module with `unsafe`: io_uring's submission queue takes raw buffers.
#[cfg(all(feature = "tokio", target_os = "linux"))]
#[allow(unsafe_code)]
mod uring;

#[cfg(all(feature = "wasm", target_arch = "wasm32"))]
pub mod wasm;

#[cfg(feature = "adapters")]
pub use backend::{Admit, Backend, BackendFuture, LogSink, Push, Read};
#[cfg(feature = "adapters")]
pub use client::{ClientEvents, ClientOptions, SyncClient};
#[cfg(feature = "adapters")]
pub use clock::Clock;
#[cfg(feature = "adapters")]
pub use common::{client_tls_trusting, server_tls};
#[cfg(feature = "adapters")]
pub use ot::{AcceptedOtSession, OtServerHandle};
#[cfg(feature = "adapters")]
pub use ot_client::{OtClientEvents, OtClientHandle, OtCommandError, OtConnectOptions, OtStatus};
#[cfg(feature = "adapters")]
pub use server::{AcceptedSession, Rejection, ServerOptions, SyncServer};
