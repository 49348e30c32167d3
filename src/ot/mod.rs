//! The OT profile: operational transformation of plain text over the
//! wire of the npm `@open-ot/transport-websocket` client, sans-IO.
//!
//! - [`TextOp`]: open-ot's `text` type — apply, transform, compose — with UTF-16 lengths.
//! - [`OtServer`]: the document server. It keeps each document's text, revision and recent
//!   history, transforms stale ops, applies every op (nothing that does not fit is ever
//!   logged), acks the sender and sends the op to the document's other clients; with the
//!   seed's rate limit, ping heartbeat and `?token=` auth, and a bound on everything.
//! - [`OtClient`]: a client for one document, which checks every revision and recovers from
//!   errors and reconnects by fetching a snapshot and rebasing its edits.
//! - [`wire`]: the frames, and the two extensions (`snapshot` requests, `opId`).
//!
//! Like the rest of the crate, the state machines do no I/O: an adapter feeds them
//! `handle_*(now, ...)` and drains `poll_transmit`, `poll_event` and `poll_timeout`.
//!
//! # Example
//!
//! A server and two clients, frames carried by hand:
//!
//! ```
//! use syncmux::ot::{OtClient, OtClientConfig, OtHandshakeOutcome, OtServer, OtServerConfig, OtTransmit, TextOp};
//! use syncmux::Handshake;
//! use syncmux::Instant;
//!
//! let mut now = Instant::ZERO;
//! let config = OtServerConfig::default();
//! let delay = config.broadcast_delay;
//! let mut server = OtServer::new(config)?;
//! let mut clients = [OtClient::new(OtClientConfig::new("a"))?, OtClient::new(OtClientConfig::new("b"))?];
//! let mut sessions = Vec::new();
//! for client in &mut clients {
//!     let OtHandshakeOutcome::Accept { session } = server.handle_handshake(now, &Handshake::new("/ot", ""))
//!     else { unreachable!() };
//!     sessions.push(session);
//!     client.handle_connected(now);
//! }
//! clients[0].edit(now, TextOp::new().insert("Hello"))?;
//! clients[1].edit(now, TextOp::new().insert("World"))?;
//!
//! // Pump frames both ways until nothing moves and nothing waits.
//! loop {
//!     let mut moved = false;
//!     for (client, &session) in clients.iter_mut().zip(&sessions) {
//!         while let Some(frame) = client.poll_transmit() {
//!             server.handle_message(now, session, frame);
//!             moved = true;
//!         }
//!     }
//!     while let Some(transmit) = server.poll_transmit() {
//!         if let OtTransmit::Frame { session, bytes } = transmit {
//!             server.handle_sent(now, session, bytes.len());
//!             let i = sessions.iter().position(|s| *s == session).unwrap();
//!             clients[i].handle_message(now, bytes);
//!             moved = true;
//!         }
//!     }
//!     if !moved {
//!         // Ops sent on to a client wait at most the broadcast delay: let it pass.
//!         match server.poll_timeout() {
//!             Some(at) if at <= now + delay => {
//!                 now = at;
//!                 server.handle_timeout(now);
//!             }
//!             _ => break,
//!         }
//!     }
//! }
//! let text = server.document("doc-1").unwrap().text().to_owned();
//! assert!(text == "HelloWorld" || text == "WorldHello");
//! assert!(clients.iter().all(|c| c.text() == text));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod client;
mod config;
mod document;
mod server;
mod session;
mod text;
pub mod wire;

pub use client::{EditError, OtClient, OtClientEvent, OtClientState, ResyncReason};
pub use config::{OtClientConfig, OtConfigError, OtServerConfig};
pub use server::{
    OtCloseReason, OtCommitId, OtDocument, OtHandshakeOutcome, OtServer, OtServerEvent, OtTransmit,
};
pub use session::OtSessionId;
pub use text::{utf16_len, Component, CountKind, OpError, Side, TextOp};
pub use wire::{ClientMessage, OpStatus, ServerMessage, WireError, DEFAULT_DOC_ID};
