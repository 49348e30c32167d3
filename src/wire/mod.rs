//! The wire layer: the envelope codec, the stable error and close codes, and the errors of
//! decoding (docs/protocol.md section 4).
//!
//! This is the only place that matches on the `type` string; everything above it dispatches
//! on [`MessageType`].

mod code;
mod error;
mod frame;

pub use code::{CloseCode, ErrorCode};
pub use error::{DecodeError, DecodeErrorKind, PayloadError};
pub use frame::{DecodeLimits, Frame, FrameId, IdKey, MessageType};
