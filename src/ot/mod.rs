//! The OT profile (DESIGN.md section 7): operational transformation of plain text over the
//! wire of the npm `@open-ot/transport-websocket` client, sans-IO.
//!
//! - [`TextOp`]: open-ot's `text` type — apply, transform, compose — with UTF-16 lengths.
//! - [`wire`]: the frames, and the two extensions (`snapshot` requests, `opId`).

mod text;
pub mod wire;

pub use text::{utf16_len, Component, CountKind, OpError, Side, TextOp};
pub use wire::{ClientMessage, OpStatus, ServerMessage, WireError, DEFAULT_DOC_ID};
