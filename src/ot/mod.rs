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
//! - [Wire](#wire): the frames, and the two extensions (`snapshot` requests, `opId`).
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
//!
//! # Wire
//!
//! The frames are those of `@open-ot/transport-websocket` 0.3.0: one JSON text frame per
//! message, with no envelope id.
//!
//! | frame | direction | fields |
//! |---|---|---|
//! | `op` | client → server | `op`, `revision`, `docId`?, `opId`? |
//! | `snapshot` | client → server | `docId`?, `opId`?, `revision`? (extension) |
//! | `ack` | server → sender | `revision`, `docId`? |
//! | `op` | server → the document's other clients | `op`, `revision`, `docId`? |
//! | `error` | server → sender | `message`, `docId`? |
//! | `snapshot` | server → sender | `revision`, `text`, `docId`?, `opStatus`?, `opRevision`? (extension) |
//!
//! A frame without `docId` concerns the document `doc-1`. Replies (`ack`, `error`,
//! `snapshot`) carry the `docId` of the request, when it named one; broadcast ops carry the
//! document's id unless it is `doc-1`, so the seed's single-document clients see exactly
//! the frames of the original server.
//!
//! ## Extensions
//!
//! Clients of the seed never send these, so they cannot confuse them; every added field is
//! one such clients ignore.
//!
//! - `{"type":"snapshot","docId"?}` asks for a document's text and head revision, answered
//!   by `{"type":"snapshot","revision":V,"text":"...","docId"?}`. It joins the connection
//!   to the document, like an op, so the document's ops after `V` follow without a gap.
//! - `opId`, a string of at most 64 bytes that the client makes unique, makes an op
//!   idempotent: an op whose `opId` matches an op logged after its `revision` is not applied
//!   again, only acked with the revision that op got. A snapshot request naming an `opId`
//!   (and the revision the op was made at) is answered with `opStatus`: `"applied"` (with
//!   `opRevision`), `"absent"` (the history since that revision does not hold it) or
//!   `"unknown"` (that history is no longer kept). With both, a client that lost its
//!   connection while an op was unacknowledged learns whether to send it again, and a copy
//!   still in flight on the old connection cannot be applied twice.

mod client;
mod config;
mod document;
mod server;
mod session;
mod text;
mod wire;

pub use client::{OtClient, OtClientEvent, OtClientState, ResyncReason};
pub use config::{OtClientConfig, OtServerConfig};
pub use server::{
    OtCloseReason, OtCommitId, OtDocument, OtHandshakeOutcome, OtServer, OtServerEvent, OtTransmit,
};
pub use session::OtSessionId;
pub use text::{Component, CountKind, OpError, Side, TextOp};
pub use wire::{OpStatus, ServerMessage, WireError};
