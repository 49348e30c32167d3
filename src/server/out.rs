//! Encoding what the server sends, and the one mapping from request errors to wire codes.

use bytes::Bytes;
use serde::ser::{Serialize, SerializeSeq, Serializer};
use thiserror::Error;

use crate::payload::{Cursor, ErrorPayload, Hlc};
use crate::wire::{encode, encode_with_cursor, ErrorCode, FrameId, MessageType, PayloadError};

/// Encodes a server frame. Every payload the server sends is built from payload types whose
/// serialisation cannot fail (string keys, valid raw JSON, a `Vec` writer).
pub(crate) fn frame<P: Serialize + ?Sized>(
    kind: MessageType,
    id: Option<&FrameId>,
    payload: &P,
) -> Bytes {
    encode(kind, id, payload).expect("invariant: server payloads always serialise")
}

/// An `error` frame.
pub(crate) fn error_frame(id: Option<&FrameId>, code: ErrorCode, message: String) -> Bytes {
    frame(MessageType::Error, id, &ErrorPayload { code, message })
}

/// A `change` frame (one record) or a `changes` frame (several), with the top-level cursor
/// of its last position, or none inside a replay by `since` (DESIGN.md section 3).
pub(crate) fn changes_frame<R: Serialize>(records: &[&R], cursor: Option<Cursor>) -> Bytes {
    let cursor = cursor.map(|c| c.to_string());
    let cursor = cursor.as_deref();
    let encoded = match records {
        [one] => encode_with_cursor(MessageType::Change, cursor, one),
        many => encode_with_cursor(MessageType::Changes, cursor, many),
    };
    encoded.expect("invariant: change records always serialise")
}

/// Change records with their positions, serialised as the records alone.
pub(crate) struct Records<'a, R>(pub(crate) &'a [(Cursor, R)]);

impl<R: Serialize> Serialize for Records<'_, R> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for (_, record) in self.0 {
            seq.serialize_element(record)?;
        }
        seq.end()
    }
}

/// `pull_response`, written straight from the answer (the wire shape of
/// [`PullResponse`](crate::payload::PullResponse), without copying the records).
#[derive(serde::Serialize)]
#[serde(bound = "")]
pub(crate) struct PullResponseOut<'a, R: Serialize> {
    pub(crate) changes: Records<'a, R>,
    pub(crate) latest_hlc: &'a Hlc,
    pub(crate) cursor: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) recovered: Option<bool>,
}

/// Why a request was refused. Each maps to one wire code in [`RequestError::code`].
#[derive(Debug, Error)]
pub(crate) enum RequestError {
    #[error("{}", .0.message())]
    Payload(#[from] PayloadError),
    #[error("{0} requires an id")]
    MissingId(MessageType),
    #[error("{0} is sent by servers only")]
    ServerOnly(MessageType),
    #[error("request id {0:?} is still in flight")]
    DuplicateId(String),
    #[error("too many requests in flight")]
    InFlight,
    #[error("too many subscriptions (at most {0})")]
    Subscriptions(usize),
    #[error("too many presence topics (at most {0})")]
    Topics(usize),
    #[error("too many rooms (at most {0})")]
    Rooms(usize),
    #[error("node id {0:?} is not this session's")]
    NodeId(String),
    #[error("not allowed: {0}")]
    Forbidden(String),
    #[error("presence is disabled on this server")]
    PresenceDisabled,
    #[error("room {0:?} is full")]
    RoomFull(String),
    #[error("not a member of room {0:?}")]
    NotAMember(String),
}

impl RequestError {
    /// The wire code. Exhaustive on purpose: a new variant must choose its code here.
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            RequestError::Payload(_) => ErrorCode::InvalidPayload,
            RequestError::MissingId(_) | RequestError::ServerOnly(_) => ErrorCode::InvalidFrame,
            RequestError::DuplicateId(_) => ErrorCode::DuplicateId,
            RequestError::InFlight
            | RequestError::Subscriptions(_)
            | RequestError::Topics(_)
            | RequestError::Rooms(_) => ErrorCode::RateLimited,
            RequestError::NodeId(_) | RequestError::Forbidden(_) => ErrorCode::Forbidden,
            RequestError::PresenceDisabled => ErrorCode::PresenceDisabled,
            RequestError::RoomFull(_) => ErrorCode::RoomFull,
            RequestError::NotAMember(_) => ErrorCode::NotAMember,
        }
    }

    /// Whether the frame counts towards the invalid-frame limit (close 4400).
    pub(crate) fn is_invalid(&self) -> bool {
        matches!(
            self.code(),
            ErrorCode::InvalidFrame | ErrorCode::InvalidPayload
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_pinned() {
        let cases: Vec<(RequestError, &str)> = vec![
            (PayloadError::new("x".into()).into(), "INVALID_PAYLOAD"),
            (
                RequestError::MissingId(MessageType::PullRequest),
                "INVALID_FRAME",
            ),
            (
                RequestError::ServerOnly(MessageType::Change),
                "INVALID_FRAME",
            ),
            (RequestError::DuplicateId("a".into()), "DUPLICATE_ID"),
            (RequestError::InFlight, "RATE_LIMITED"),
            (RequestError::Subscriptions(1), "RATE_LIMITED"),
            (RequestError::Topics(1), "RATE_LIMITED"),
            (RequestError::Rooms(1), "RATE_LIMITED"),
            (RequestError::NodeId("n".into()), "FORBIDDEN"),
            (RequestError::Forbidden("t".into()), "FORBIDDEN"),
            (RequestError::PresenceDisabled, "PRESENCE_DISABLED"),
            (RequestError::RoomFull("r".into()), "ROOM_FULL"),
            (RequestError::NotAMember("r".into()), "NOT_A_MEMBER"),
        ];
        for (err, code) in cases {
            assert_eq!(err.code().as_str(), code, "{err}");
        }
        assert_eq!(
            RequestError::InFlight.to_string(),
            "too many requests in flight"
        );
    }
}
