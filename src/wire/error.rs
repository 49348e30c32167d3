//! The wire layer's errors.

use thiserror::Error;

use super::code::ErrorCode;
use super::frame::FrameId;

/// Why a frame could not be decoded, with the request id when it could still be read.
///
/// Every decode failure maps to one wire [`ErrorCode`] through [`DecodeError::code`], so a
/// server can answer it with an `error` frame that echoes the id.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{kind}")]
pub struct DecodeError {
    kind: DecodeErrorKind,
    id: Option<FrameId>,
}

impl DecodeError {
    pub(crate) fn new(kind: DecodeErrorKind, id: Option<FrameId>) -> Self {
        DecodeError { kind, id }
    }

    /// The error for a binary WebSocket frame (the protocol carries JSON text only).
    pub fn binary() -> Self {
        DecodeError::new(DecodeErrorKind::Binary, None)
    }

    /// What went wrong.
    pub fn kind(&self) -> &DecodeErrorKind {
        &self.kind
    }

    /// The request id of the frame, when it could be read in spite of the error.
    pub fn id(&self) -> Option<&FrameId> {
        self.id.as_ref()
    }

    /// The wire code an `error` frame reports for this failure.
    pub fn code(&self) -> ErrorCode {
        self.kind.code()
    }
}

/// What was wrong with a frame.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// Longer than the configured maximum; refused before parsing.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Length of the frame.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A binary WebSocket frame.
    #[error("binary frames are not supported: send one JSON object per text frame")]
    Binary,
    /// Not valid UTF-8.
    #[error("frame is not valid UTF-8")]
    NotUtf8,
    /// Not valid JSON.
    #[error("frame is not valid JSON: {0}")]
    NotJson(String),
    /// Valid JSON, but not an object.
    #[error("frame is not a JSON object")]
    NotObject,
    /// Nested deeper than the configured maximum.
    #[error("frame nests deeper than {max} levels")]
    TooDeep {
        /// The configured maximum depth.
        max: usize,
    },
    /// No `type` field.
    #[error("frame has no \"type\" field")]
    MissingType,
    /// A `type` that is not a string.
    #[error("\"type\" must be a string")]
    TypeNotString,
    /// An `id` or `request_id` that is not a string.
    #[error("\"{0}\" must be a string")]
    IdNotString(&'static str),
    /// Both `id` and `request_id`, with different values.
    #[error("\"id\" and \"request_id\" are both present and differ")]
    IdConflict,
    /// A top-level `cursor` that is not a string.
    #[error("\"cursor\" must be a string")]
    CursorNotString,
    /// A `type` this protocol version does not know (the name as sent; the message quotes
    /// at most its first 64 characters, since a server echoes it to the peer).
    #[error("unknown message type {:?}", shortened(.0))]
    UnknownType(String),
}

/// At most the first 64 characters of `name`, with "..." when cut: a peer's text that ends up
/// in an error message must not make the answer as large as the offending frame.
fn shortened(name: &str) -> String {
    const MAX_CHARS: usize = 64;
    match name.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}...", &name[..cut]),
        None => name.to_owned(),
    }
}

impl DecodeErrorKind {
    /// The wire code for this failure (docs/protocol.md section 4). Exhaustive on purpose: a new
    /// variant must choose its code here.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeErrorKind::TooLarge { .. } => ErrorCode::FrameTooLarge,
            DecodeErrorKind::UnknownType(_) => ErrorCode::UnknownType,
            DecodeErrorKind::Binary
            | DecodeErrorKind::NotUtf8
            | DecodeErrorKind::NotJson(_)
            | DecodeErrorKind::NotObject
            | DecodeErrorKind::TooDeep { .. }
            | DecodeErrorKind::MissingType
            | DecodeErrorKind::TypeNotString
            | DecodeErrorKind::IdNotString(_)
            | DecodeErrorKind::IdConflict
            | DecodeErrorKind::CursorNotString => ErrorCode::InvalidFrame,
        }
    }
}

/// A payload that does not have the shape its message type requires, one that could not be
/// serialised (only a caller-supplied `Serialize` impl can fail), or the string form of a
/// payload value (an [`Hlc`](crate::payload::Hlc), a [`Cursor`](crate::payload::Cursor))
/// that does not parse.
///
/// The message names the offending field by its path (`changes[3].hlc`), so the peer can tell
/// what to fix. Maps to [`ErrorCode::InvalidPayload`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid payload: {message}")]
pub struct PayloadError {
    message: String,
}

impl PayloadError {
    pub(crate) fn new(message: String) -> Self {
        PayloadError { message }
    }

    /// A description naming the offending field.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Always [`ErrorCode::InvalidPayload`].
    pub fn code(&self) -> ErrorCode {
        ErrorCode::InvalidPayload
    }
}
