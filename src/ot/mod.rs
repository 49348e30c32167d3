//! The OT profile (DESIGN.md section 7): operational transformation of plain text over the
//! wire of the npm `@open-ot/transport-websocket` client, sans-IO.
//!
//! - [`TextOp`]: open-ot's `text` type — apply, transform, compose — with UTF-16 lengths.
//! - [`OtServer`]: the document server. It keeps each document's text, revision and recent
//!   history, transforms stale ops, applies every op (nothing that does not fit is ever
//!   logged), acks the sender and sends the op to the document's other clients; with the
//!   seed's rate limit, ping heartbeat and `?token=` auth, and a bound on everything.
//! - [`wire`]: the frames, and the two extensions (`snapshot` requests, `opId`).
//!
//! Like the rest of the crate, the state machines do no I/O: an adapter feeds them
//! `handle_*(now, ...)` and drains `poll_transmit`, `poll_event` and `poll_timeout`.

mod config;
mod document;
mod server;
mod session;
mod text;
pub mod wire;

pub use config::{OtClientConfig, OtConfigError, OtServerConfig};
pub use server::{
    OtCloseReason, OtDocument, OtHandshakeOutcome, OtServer, OtServerEvent, OtTransmit,
};
pub use session::OtSessionId;
pub use text::{utf16_len, Component, CountKind, OpError, Side, TextOp};
pub use wire::{ClientMessage, OpStatus, ServerMessage, WireError, DEFAULT_DOC_ID};
