//! The OT profile (DESIGN.md section 7): operational transformation of plain text over the
//! wire of the npm `@open-ot/transport-websocket` client, sans-IO.
//!
//! - [`TextOp`]: open-ot's `text` type — apply, transform, compose — with UTF-16 lengths.

mod text;

pub use text::{utf16_len, Component, CountKind, OpError, Side, TextOp};
