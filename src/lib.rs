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
//! - [`adapters`]: bindings to runtimes, one cargo feature each (`wasm`: a JavaScript
//!   `SyncClient` over the browser WebSocket).
//!
//! # Example
//!
//! Decode a request, read its typed payload, and answer it under the same id key:
//!
//! ```
//! use syncmux::payload::{Hlc, PullRequest, PullResponse};
//! use syncmux::wire::{decode, encode, DecodeLimits, MessageType};
//!
//! let request = br#"{"type":"pull_request","request_id":"r1",
//!                    "payload":{"tables":["documents"],"since":"1706000000000000000:0:node-1"}}"#;
//! let frame = decode(request[..].into(), &DecodeLimits::default())?;
//! assert_eq!(frame.kind(), MessageType::PullRequest);
//! let pull: PullRequest = frame.payload()?;
//! assert_eq!(pull.since, Some(Hlc::new(1706000000000000000, 0, "node-1")));
//!
//! let answer = PullResponse { changes: vec![], latest_hlc: pull.since.unwrap(), cursor: None };
//! let reply = encode(MessageType::PullResponse, frame.id(), &answer)?;
//! assert!(reply.starts_with(br#"{"type":"pull_response","request_id":"r1","payload":"#));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(unreachable_pub)]

#[cfg(any(feature = "adapters", all(feature = "wasm", target_arch = "wasm32")))]
pub mod adapters;
pub mod client;
pub mod driver;
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
