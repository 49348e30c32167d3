//! Encoding what the server sends, and the one mapping from request errors to wire codes.

use bytes::Bytes;
use serde::ser::{Serialize, SerializeSeq, Serializer};
use thiserror::Error;

use crate::payload::{Cursor, ErrorPayload, Hlc};
use crate::wire::{ErrorCode, Frame, FrameId, MessageType, PayloadError};

/// Encodes a server frame. Every payload the server sends is built from payload types whose
/// serialisation cannot fail (string keys, valid raw JSON, a `Vec` writer).
pub(crate) fn frame<P: Serialize + ?Sized>(
    kind: MessageType,
    id: Option<&FrameId>,
    payload: &P,
) -> Bytes {
    Frame::encode(kind, id, payload).expect("invariant: server payloads always serialise")
}

/// An `error` frame.
pub(crate) fn error_frame(id: Option<&FrameId>, code: ErrorCode, message: String) -> Bytes {
    frame(MessageType::Error, id, &ErrorPayload { code, message })
}

/// A `change` frame (one record) or a `changes` frame (several), with the top-level cursor
/// of its last position, or none inside a replay by `since` (docs/protocol.md section 5).
pub(crate) fn changes_frame<R: Serialize>(records: &[&R], cursor: Option<Cursor>) -> Bytes {
    let cursor = cursor.map(|c| c.to_string());
    let cursor = cursor.as_deref();
    let encoded = match records {
        [one] => Frame::encode_with_cursor(MessageType::Change, cursor, one),
        many => Frame::encode_with_cursor(MessageType::Changes, cursor, many),
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

/// Why a request was refused. Each maps to one wire code in [`Refusal::code`].
#[derive(Debug, Error)]
pub(crate) enum Refusal {
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

impl Refusal {
    /// The wire code. Exhaustive on purpose: a new variant must choose its code here.
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            Refusal::Payload(_) => ErrorCode::InvalidPayload,
            Refusal::MissingId(_) | Refusal::ServerOnly(_) => ErrorCode::InvalidFrame,
            Refusal::DuplicateId(_) => ErrorCode::DuplicateId,
            Refusal::InFlight
            | Refusal::Subscriptions(_)
            | Refusal::Topics(_)
            | Refusal::Rooms(_) => ErrorCode::RateLimited,
            Refusal::NodeId(_) | Refusal::Forbidden(_) => ErrorCode::Forbidden,
            Refusal::PresenceDisabled => ErrorCode::PresenceDisabled,
            Refusal::RoomFull(_) => ErrorCode::RoomFull,
            Refusal::NotAMember(_) => ErrorCode::NotAMember,
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
        let cases: Vec<(Refusal, &str)> = vec![
            (PayloadError::new("x".into()).into(), "INVALID_PAYLOAD"),
            (
                Refusal::MissingId(MessageType::PullRequest),
                "INVALID_FRAME",
            ),
            (Refusal::ServerOnly(MessageType::Change), "INVALID_FRAME"),
            (Refusal::DuplicateId("a".into()), "DUPLICATE_ID"),
            (Refusal::InFlight, "RATE_LIMITED"),
            (Refusal::Subscriptions(1), "RATE_LIMITED"),
            (Refusal::Topics(1), "RATE_LIMITED"),
            (Refusal::Rooms(1), "RATE_LIMITED"),
            (Refusal::NodeId("n".into()), "FORBIDDEN"),
            (Refusal::Forbidden("t".into()), "FORBIDDEN"),
            (Refusal::PresenceDisabled, "PRESENCE_DISABLED"),
            (Refusal::RoomFull("r".into()), "ROOM_FULL"),
            (Refusal::NotAMember("r".into()), "NOT_A_MEMBER"),
        ];
        for (err, code) in cases {
            assert_eq!(err.code().as_str(), code, "{err}");
        }
        assert_eq!(Refusal::InFlight.to_string(), "too many requests in flight");
    }
}
