//! Payload types (docs/protocol.md section 5): HLC, change records, and the payload of every
//! message.
//!
//! Parse a frame's payload with [`Frame::payload`](crate::wire::Frame::payload); serialise one
//! with [`Frame::encode`](crate::wire::Frame::encode).

mod change;
mod cursor;
mod hlc;
mod json;
mod messages;

pub use change::ChangeRecord;
pub(crate) use change::HasHlc;
pub use cursor::Cursor;
pub use hlc::Hlc;
pub use json::RawJson;
pub use messages::{
    ErrorPayload, PresenceEvent, PresenceEventKind, PresenceGet, PresenceSnapshot, PresenceState,
    PresenceUpdate, PullRequest, PullResponse, PushRequest, PushResponse, ResumeAck, RoomAction,
    RoomEvent, RoomEventKind, RoomMember, RoomRequest, Subscribe, SyncFilter, Unsubscribe,
};
