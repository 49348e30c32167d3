//! Stable wire codes: the `code` strings of `error` frames and the WebSocket close codes
//! (docs/protocol.md section 4). These are wire values, kept apart from the crate's Rust error
//! types; each layer maps its errors onto them in one function.

use core::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident => $wire:literal,)*) => {
        /// The `code` of an `error` frame.
        ///
        /// Open: a code this version does not know is kept as [`ErrorCode::Other`], so a client
        /// talking to a newer server still reports it faithfully.
        #[derive(Clone, PartialEq, Eq, Hash, Debug)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
            /// A code this version of syncmux does not know, kept verbatim.
            Other(Box<str>),
        }

        impl ErrorCode {
            /// Every code this version knows, in the order of docs/protocol.md section 4.
            pub const KNOWN: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The stable wire string.
            pub fn as_str(&self) -> &str {
                match self {
                    $(ErrorCode::$variant => $wire,)*
                    ErrorCode::Other(code) => code,
                }
            }

            /// Parses a wire string; unknown strings become [`ErrorCode::Other`].
            pub fn from_wire(code: &str) -> ErrorCode {
                match code {
                    $($wire => ErrorCode::$variant,)*
                    other => ErrorCode::Other(other.into()),
                }
            }
        }
    };
}

error_codes! {
    /// The frame is not a JSON object with a string `type` (or is binary, or not UTF-8).
    InvalidFrame => "INVALID_FRAME",
    /// The `type` is not one this protocol version knows.
    UnknownType => "UNKNOWN_TYPE",
    /// The payload does not have the shape the message type requires.
    InvalidPayload => "INVALID_PAYLOAD",
    /// The frame is larger than the configured maximum.
    FrameTooLarge => "FRAME_TOO_LARGE",
    /// The session sent more than its rate limit or in-flight bound allows.
    RateLimited => "RATE_LIMITED",
    /// The session is not authenticated.
    Unauthorized => "UNAUTHORIZED",
    /// The session may not do this (table, topic, room or node id).
    Forbidden => "FORBIDDEN",
    /// The client speaks another protocol version.
    SyncVersionMismatch => "SYNC_VERSION_MISMATCH",
    /// Presence is turned off on this server.
    PresenceDisabled => "PRESENCE_DISABLED",
    /// The room has reached its maximum size.
    RoomFull => "ROOM_FULL",
    /// Only members may broadcast to (or leave) a room.
    NotAMember => "NOT_A_MEMBER",
    /// A request with this id is still in flight on this session.
    DuplicateId => "DUPLICATE_ID",
    /// The application failed to handle the request.
    HandlerError => "HANDLER_ERROR",
    /// The server's backend (a shared store) cannot be reached for now; retry later.
    Unavailable => "UNAVAILABLE",
    /// The session did not drain its outbound queue in time.
    SlowConsumer => "SLOW_CONSUMER",
    /// A bug or an unexpected condition on the server.
    Internal => "INTERNAL",
    /// Client side: the server did not answer within the request timeout.
    Timeout => "TIMEOUT",
    /// Client side: the connection closed before the server answered.
    Disconnected => "DISCONNECTED",
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Ok(ErrorCode::from_wire(&code))
    }
}

/// A WebSocket close code (docs/protocol.md section 4). Open: any `u16` is kept.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: normal closure.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: the endpoint is going away (server shutdown).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1006: abnormal closure (no close frame; never sent, only reported).
    pub const ABNORMAL: CloseCode = CloseCode(1006);
    /// 1009: a frame was too large.
    pub const FRAME_TOO_LARGE: CloseCode = CloseCode(1009);
    /// 4400: too many invalid frames.
    pub const INVALID_FRAMES: CloseCode = CloseCode(4400);
    /// 4401: unauthorized.
    pub const UNAUTHORIZED: CloseCode = CloseCode(4401);
    /// 4403: forbidden.
    pub const FORBIDDEN: CloseCode = CloseCode(4403);
    /// 4408: idle timeout.
    pub const IDLE_TIMEOUT: CloseCode = CloseCode(4408);
    /// 4426: protocol version mismatch.
    pub const VERSION_MISMATCH: CloseCode = CloseCode(4426);
    /// 4429: rate limit abuse.
    pub const RATE_LIMIT_ABUSE: CloseCode = CloseCode(4429);
    /// 4500: internal error.
    pub const INTERNAL: CloseCode = CloseCode(4500);
    /// 4503: slow consumer.
    pub const SLOW_CONSUMER: CloseCode = CloseCode(4503);

    /// Every code this version names, in numeric order (open, as [`ErrorCode::KNOWN`]: a peer
    /// may close with others). `docs/protocol.md` documents each one, which
    /// `tests/protocol_doc.rs` checks through this list: a new constant belongs here too.
    pub const KNOWN: &'static [CloseCode] = &[
        CloseCode::NORMAL,
        CloseCode::GOING_AWAY,
        CloseCode::ABNORMAL,
        CloseCode::FRAME_TOO_LARGE,
        CloseCode::INVALID_FRAMES,
        CloseCode::UNAUTHORIZED,
        CloseCode::FORBIDDEN,
        CloseCode::IDLE_TIMEOUT,
        CloseCode::VERSION_MISMATCH,
        CloseCode::RATE_LIMIT_ABUSE,
        CloseCode::INTERNAL,
        CloseCode::SLOW_CONSUMER,
    ];
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<u16> for CloseCode {
    fn from(code: u16) -> Self {
        CloseCode(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_code_round_trips_and_unknown_is_kept() {
        for code in ErrorCode::KNOWN {
            assert_eq!(&ErrorCode::from_wire(code.as_str()), code);
        }
        assert_eq!(ErrorCode::KNOWN.len(), 18);
        let other = ErrorCode::from_wire("QUOTA_EXCEEDED");
        assert_eq!(other, ErrorCode::Other("QUOTA_EXCEEDED".into()));
        assert_eq!(other.as_str(), "QUOTA_EXCEEDED");
    }
}
