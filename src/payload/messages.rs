//! The payloads of every message type (docs/protocol.md sections 4 to 7).
//!
//! Requests ignore fields they do not know (a newer peer may add some); relayed data (presence
//! `data`, room `data`, change records) is kept as raw JSON.

use serde::{Deserialize, Serialize};

use super::change::ChangeRecord;
use super::cursor::Cursor;
use super::hlc::Hlc;
use super::json::RawJson;
use crate::wire::ErrorCode;

/// `new`, `since` and `after` of the two requests that read tables from a starting point,
/// [`PullRequest`] and [`Subscribe`]: written once, documented for each.
macro_rules! read_builders {
    ($ty:ident {
        $(#[$new:meta])* new;
        $(#[$since:meta])* since;
        $(#[$after:meta])* after;
    }) => {
        impl $ty {
            $(#[$new])*
            pub fn new<I: IntoIterator<Item = T>, T: Into<String>>(tables: I) -> $ty {
                $ty {
                    tables: tables.into_iter().map(Into::into).collect(),
                    ..$ty::default()
                }
            }

            $(#[$since])*
            pub fn since(mut self, since: impl Into<Option<Hlc>>) -> $ty {
                self.since = since.into();
                self
            }

            $(#[$after])*
            pub fn after(mut self, cursor: impl Into<Option<Cursor>>) -> $ty {
                self.cursor = cursor.into().map(|c| c.to_string());
                self
            }
        }
    };
}

/// `pull_request`: the changes of `tables` after `since` (exclusive) or after `cursor`.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct PullRequest {
    /// Tables to pull.
    pub tables: Vec<String>,
    /// Only changes with an HLC greater than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Hlc>,
    /// Only changes after this server position (docs/protocol.md section 7, "Cursors, resume and
    /// replay order").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// The pulling node; when present it must be the session's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Only the records it matches (Grove's selective sync).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<SyncFilter>,
}

/// Selective sync (Grove's `SyncFilter`): of the changes a pull or a subscribe's replay
/// returns, only those whose `pk` is one of `pk_filter` and whose `field` is one of
/// `field_filter` (a record with no field, a whole row, passes the field filter). An empty
/// list does not restrict.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct SyncFilter {
    /// The primary keys wanted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pk_filter: Vec<String>,
    /// The fields wanted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub field_filter: Vec<String>,
}

impl SyncFilter {
    /// Whether the record with `pk` and `field` passes.
    pub fn matches(&self, pk: &str, field: &str) -> bool {
        (self.pk_filter.is_empty() || self.pk_filter.iter().any(|p| p == pk))
            && (self.field_filter.is_empty()
                || field.is_empty()
                || self.field_filter.iter().any(|f| f == field))
    }
}

read_builders!(PullRequest {
    /// A pull of everything `tables` hold; narrow it with [`since`](PullRequest::since) and
    /// [`after`](PullRequest::after).
    ///
    /// ```
    /// use syncmux::payload::{Cursor, Hlc, PullRequest};
    ///
    /// let pull = PullRequest::new(["docs"]).after(Cursor::new(7, 41)).since(Hlc::new(5, 0, "a"));
    /// assert_eq!(pull.cursor.as_deref(), Some("7.41"));
    /// ```
    new;
    /// Only changes with an HLC greater than `since` (or, with a cursor, the fallback for a
    /// server that cannot serve it).
    since;
    /// Exactly the changes after the server position `cursor` (docs/protocol.md section 5,
    /// "Cursors"), late changes with old HLCs included.
    after;
});

/// `pull_response`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PullResponse {
    /// The changes: in position order after a cursor the server could serve, in HLC order
    /// otherwise.
    pub changes: Vec<ChangeRecord>,
    /// The newest HLC the store holds for the tables (or the request's `since`).
    pub latest_hlc: Hlc,
    /// The store's head when it read: pull after it next time (absent from servers without
    /// cursors, and from servers whose cursors are not syncmux positions).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_cursor"
    )]
    pub cursor: Option<Cursor>,
    /// Present when the pull named a `cursor`: whether the server could serve it. `false`
    /// means it fell back to `since` (or to everything), and the client should resynchronise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
}

/// `push_request`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PushRequest {
    /// The changes to merge.
    pub changes: Vec<ChangeRecord>,
    /// The pushing node: must be the session's own.
    pub node_id: String,
}

/// `push_response`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PushResponse {
    /// How many of the pushed changes were new.
    pub merged: u64,
    /// The newest HLC the store holds for the pushed tables after the merge.
    pub latest_hlc: Hlc,
    /// The store's position after the merge (absent from servers without cursors, and from
    /// servers whose cursors are not syncmux positions).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_cursor"
    )]
    pub cursor: Option<Cursor>,
}

/// `subscribe`: add tables to the session's live set, replaying first when `since` or
/// `cursor` is given.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Subscribe {
    /// Tables to add.
    pub tables: Vec<String>,
    /// Replay changes with an HLC greater than this first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Hlc>,
    /// Replay changes after this server position first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Replay only the records it matches (live changes are not filtered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<SyncFilter>,
}

read_builders!(Subscribe {
    /// A subscription to the live changes of `tables` from now on; replay first with
    /// [`since`](Subscribe::since) or [`after`](Subscribe::after).
    ///
    /// ```
    /// use syncmux::payload::{Cursor, Subscribe};
    ///
    /// let subscribe = Subscribe::new(["docs", "notes"]).after(Cursor::new(7, 41));
    /// assert_eq!(subscribe.tables, ["docs", "notes"]);
    /// ```
    new;
    /// Replay the changes with an HLC greater than `since` first (in HLC order), or, with a
    /// cursor, fall back to them when the server cannot serve it.
    since;
    /// Replay exactly the changes after the server position `cursor` first (in cursor
    /// order), late changes with old HLCs included.
    after;
});

/// `unsubscribe`.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Unsubscribe {
    /// Tables to remove.
    pub tables: Vec<String>,
}

/// `presence_update`: join or update a topic; `data: null` leaves it. `data` is required: an
/// update that lacks it is refused rather than read as a leave, which would drop a member whose
/// client only forgot a field.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PresenceUpdate {
    /// The topic.
    pub topic: String,
    /// The member's state; `None` (written `null`) leaves the topic.
    #[serde(deserialize_with = "required_nullable")]
    pub data: Option<RawJson>,
}

/// An `Option` field that must be present and may be `null` (serde lets a plain `Option` field
/// be absent; a `deserialize_with` field may not).
fn required_nullable<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<RawJson>, D::Error> {
    Option::deserialize(d)
}

/// What happened in a [`PresenceEvent`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceEventKind {
    /// A node entered the topic.
    Join,
    /// A member changed its state.
    Update,
    /// A member left (or disconnected, or expired).
    Leave,
}

/// `presence_event`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PresenceEvent {
    /// Join, update or leave.
    #[serde(rename = "type")]
    pub kind: PresenceEventKind,
    /// The member.
    pub node_id: String,
    /// The topic.
    pub topic: String,
    /// The member's state (absent on leave).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<RawJson>,
}

/// `presence_get`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PresenceGet {
    /// The topic.
    pub topic: String,
}

/// One member in a [`PresenceSnapshot`].
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PresenceState {
    /// The member.
    pub node_id: String,
    /// The topic.
    pub topic: String,
    /// Its state.
    pub data: RawJson,
    /// When it last updated. syncmux servers send milliseconds of their clock; other servers
    /// may send another form (the seed's Go server sends an RFC 3339 string), kept verbatim.
    pub updated_at: RawJson,
}

/// `presence_snapshot`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PresenceSnapshot {
    /// The topic.
    pub topic: String,
    /// Its members.
    pub states: Vec<PresenceState>,
}

/// What a client asks of a room.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoomAction {
    /// Enter the room.
    Join,
    /// Leave the room.
    Leave,
    /// Send `data` to the other members.
    Broadcast,
}

/// `room`, client → server.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RoomRequest {
    /// Join, leave or broadcast.
    pub action: RoomAction,
    /// The room.
    pub room: String,
    /// The member's state on join, the message on broadcast.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<RawJson>,
}

/// What a [`RoomEvent`] reports.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoomEventKind {
    /// To a joiner: every member, itself included.
    Members,
    /// To the others: a node joined.
    Join,
    /// To the rest: a node left or disconnected.
    Leave,
    /// To the others: a member broadcast `data`.
    Message,
}

/// One member of a room.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RoomMember {
    /// The member.
    pub node_id: String,
    /// The state it joined with.
    #[serde(default)]
    pub data: Option<RawJson>,
}

/// `room`, server → client.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RoomEvent {
    /// What happened.
    pub event: RoomEventKind,
    /// The room.
    pub room: String,
    /// The node it concerns (join, leave, message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// The joiner's state, or the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<RawJson>,
    /// Every member (members).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<RoomMember>>,
}

/// `error`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ErrorPayload {
    /// The stable code.
    pub code: ErrorCode,
    /// A human-readable explanation.
    #[serde(default)]
    pub message: String,
}

/// The payload of the `ack` of every `subscribe`: where the session's stream stands once the
/// subscription took effect (docs/protocol.md section 5).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ResumeAck {
    /// Whether the replay is complete; `false` tells the client to resynchronise. `true` for a
    /// subscribe that asked for no replay.
    pub recovered: bool,
    /// The position the session's live stream continues from.
    pub cursor: Cursor,
}

/// A cursor in a server's answer, or none when it is not one of ours: cursors are opaque to
/// clients, so a server with another format must not make its answers unreadable.
fn lenient_cursor<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Cursor>, D::Error> {
    let text = <Option<std::borrow::Cow<'de, str>>>::deserialize(d)?;
    Ok(text.and_then(|t| t.parse().ok()))
}
