//! syncmux: a sans-IO client and server for a multiplexed real-time sync protocol.
//!
//! CRDT and OT applications use one WebSocket to pull and push changes, stream live changes to
//! subscribers, share presence and talk in rooms. syncmux implements that protocol (see
//! `DESIGN.md`) as pure state machines: they take in bytes and clock ticks and give back frames,
//! timers and events. They do no networking and read no clock or OS randomness, so they run
//! anywhere — tokio, smol, the browser, or another language's event loop — and every run can be
//! replayed exactly.
//!
//! ```text
//!   application ── commands ──▶ state machine ── poll_transmit ──▶ adapter ──▶ socket
//!               ◀── poll_event ──              ◀── handle_message ──        ◀──
//! ```
//!
//! # Layers
//!
//! - [`wire`]: the envelope codec, error codes and close codes.
//! - [`payload`]: HLCs, change records and the payload of every message type.
//! - [`client`]: the client state machine.
//! - [`server`]: the server state machine: sessions, the routing hub, limits and auth hooks.
//! - [`store`]: `MemoryStore`, the embedded change log with positions.
//! - [`driver`]: pairs a `Server` with a `MemoryStore`.
//! - [`ot`]: the OT profile: open-ot's text type, a document server and a client, over the
//!   wire of `@open-ot/transport-websocket`.
//! - [`adapters`]: bindings to runtimes, one cargo feature each (`wasm`: a JavaScript
//!   `SyncClient` over the browser WebSocket).
//!
//! # Example
//!
//! A client and a server (with the embedded store) in one process, frames carried by hand —
//! exactly what an adapter does with a socket in between. Time is whatever the caller says.
//!
//! ```
//! use syncmux::client::{ClientEvent, Response, Transmit};
//! use syncmux::driver::Driver;
//! use syncmux::payload::{ChangeRecord, Hlc, RawJson};
//! use syncmux::server::{Handshake, HandshakeOutcome, ServerTransmit};
//! use syncmux::store::{MemoryStore, StoreConfig};
//! use syncmux::{Client, ClientConfig, Instant, Server, ServerConfig};
//!
//! let mut server = Driver::new(
//!     Server::new(ServerConfig::default())?,
//!     MemoryStore::new(StoreConfig::default()),
//! );
//! let mut client = Client::new(ClientConfig::new("ws://localhost/sync/ws", "alice"))?;
//! let now = Instant::ZERO;
//!
//! // The application asks; the first command makes the client dial.
//! let change = ChangeRecord::new("docs", "1", "title", "lww", Hlc::new(5, 0, "alice"), "alice")
//!     .with_value(RawJson::from_serialize("Hello")?);
//! let push = client.push(now, vec![change])?;
//! let pull = client.pull(now, ["docs"], None)?;
//!
//! // The adapter's part: the dial becomes a handshake, then frames go both ways.
//! let Some(Transmit::Dial(dial)) = client.poll_transmit() else { unreachable!() };
//! let query = dial.url.split_once('?').map_or("", |(_, q)| q);
//! let mut handshake = Handshake::new("/sync/ws", query);
//! for protocol in &dial.protocols {
//!     handshake = handshake.protocol(*protocol);
//! }
//! let HandshakeOutcome::Accept { session, protocol, .. } = server.handle_handshake(now, &handshake)
//! else {
//!     unreachable!()
//! };
//! client.handle_connected(now, protocol.as_deref());
//! while let Some(Transmit::Frame(frame)) = client.poll_transmit() {
//!     server.handle_message(now, session, frame);
//! }
//! while let Some(ServerTransmit::Frame { session, bytes }) = server.poll_transmit() {
//!     server.handle_sent(now, session, bytes.len()); // the socket took it
//!     client.handle_message(now, bytes);
//! }
//!
//! // Every request ends in exactly one outcome, delivered as an event.
//! let mut merged = None;
//! let mut pulled = None;
//! while let Some(event) = client.poll_event() {
//!     match event {
//!         ClientEvent::Response { id, outcome: Ok(Response::Push(p)) } if id == push => {
//!             merged = Some(p.merged)
//!         }
//!         ClientEvent::Response { id, outcome: Ok(Response::Pull(p)) } if id == pull => {
//!             pulled = Some(p.changes.len())
//!         }
//!         _ => {}
//!     }
//! }
//! assert_eq!((merged, pulled), (Some(1), Some(1)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! After each input, drain `poll_transmit` and `poll_event`, then sleep until
//! `poll_timeout` and call `handle_timeout`: that loop is the whole integration.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(unreachable_pub)]

#[cfg(any(feature = "adapters", all(feature = "wasm", target_arch = "wasm32")))]
pub mod adapters;
pub mod client;
pub mod driver;
pub mod ot;
pub mod payload;
pub mod server;
pub mod store;
pub mod wire;

mod rng;
mod time;

pub use client::{Client, ClientConfig, ClientEvent};
pub use server::{Server, ServerConfig, ServerEvent};
pub use store::MemoryStore;
pub use time::Instant;
