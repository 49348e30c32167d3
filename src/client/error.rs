//! The client's request errors and their wire codes.

use thiserror::Error;

use crate::wire::ErrorCode;

/// Why a request failed: at once (a local refusal, returned by the command) or later (in its
/// [`ClientEvent::Response`](super::ClientEvent::Response) outcome).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The server answered with an `error` frame.
    #[error("server error {code}: {message}")]
    Server {
        /// The stable code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// The server did not answer within the request timeout.
    #[error("request timed out")]
    Timeout,
    /// The connection closed before the server answered, and the request cannot be re-sent.
    #[error("disconnected before the server answered")]
    Disconnected,
    /// The server answered with a frame of the wrong type or shape.
    #[error("invalid response: {message}")]
    InvalidResponse {
        /// What was wrong.
        message: String,
    },
    /// Refused at once: `max_in_flight` requests are already pending.
    #[error("too many requests in flight (max {max})")]
    TooManyInFlight {
        /// The configured bound.
        max: usize,
    },
    /// Refused at once: the offline queue or the transmit queue is full.
    #[error("queue full (max {max})")]
    QueueFull {
        /// The bound that was hit.
        max: usize,
    },
    /// Refused at once: the client is not open and is configured to fail fast
    /// (`max_offline_queue == 0`).
    #[error("not connected")]
    NotConnected,
    /// Refused at once: the client is closed for good.
    #[error("client is closed")]
    Closed,
    /// Refused at once: `max_subscriptions` tables are already subscribed.
    #[error("too many subscriptions (max {max})")]
    TooManySubscriptions {
        /// The configured bound.
        max: usize,
    },
    /// Refused at once: `max_presence_topics` topics are already joined.
    #[error("too many presence topics (max {max})")]
    TooManyPresenceTopics {
        /// The configured bound.
        max: usize,
    },
    /// Refused at once: `max_rooms` rooms are already joined.
    #[error("too many rooms (max {max})")]
    TooManyRooms {
        /// The configured bound.
        max: usize,
    },
}

impl RequestError {
    /// The wire code that names this error (docs/protocol.md section 4): the server's own code for
    /// [`RequestError::Server`], `TIMEOUT` and `DISCONNECTED` for requests the server never
    /// answered. Exhaustive on purpose: a new variant must choose its code here.
    pub fn code(&self) -> ErrorCode {
        match self {
            RequestError::Server { code, .. } => code.clone(),
            RequestError::Timeout => ErrorCode::Timeout,
            RequestError::Disconnected | RequestError::NotConnected | RequestError::Closed => {
                ErrorCode::Disconnected
            }
            RequestError::InvalidResponse { .. } => ErrorCode::InvalidPayload,
            RequestError::TooManyInFlight { .. }
            | RequestError::QueueFull { .. }
            | RequestError::TooManySubscriptions { .. }
            | RequestError::TooManyPresenceTopics { .. }
            | RequestError::TooManyRooms { .. } => ErrorCode::RateLimited,
        }
    }
}
