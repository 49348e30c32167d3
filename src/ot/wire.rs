//! The frames of the OT endpoint, and the two extensions (see the `ot` module docs, "Wire").

use std::borrow::Cow;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};
use thiserror::Error;

use super::text::{OpError, TextOp};

/// The document a frame without `docId` is about ([`OtServer::DEFAULT_DOC_ID`]).
///
/// [`OtServer::DEFAULT_DOC_ID`]: super::OtServer::DEFAULT_DOC_ID
pub(crate) const DEFAULT_DOC_ID: &str = "doc-1";

/// The longest `opId` accepted, in bytes.
pub(crate) const MAX_OP_ID_LEN: usize = 64;

/// A frame from a client.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub(crate) enum ClientMessage {
    /// Apply `op`, made on the document at `revision`.
    Op {
        /// The document; `None` is `doc-1`.
        doc_id: Option<String>,
        /// The operation.
        op: TextOp,
        /// The revision of the document the op was made on.
        revision: u64,
        /// The idempotency key (extension).
        op_id: Option<String>,
    },
    /// Send the document's text and revision (extension).
    Snapshot {
        /// The document; `None` is `doc-1`.
        doc_id: Option<String>,
        /// An op whose fate the client wants to know.
        op_id: Option<String>,
        /// The revision that op was made on.
        revision: Option<u64>,
    },
}

/// A frame from the server.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum ServerMessage {
    /// The sender's op was applied as revision `revision`.
    Ack {
        /// The document's new head revision.
        revision: u64,
        /// The request's `docId`.
        doc_id: Option<String>,
    },
    /// Another client's op, transformed, became revision `revision`.
    Op {
        /// The op as applied.
        op: TextOp,
        /// The revision it produced.
        revision: u64,
        /// The document; `None` is `doc-1`.
        doc_id: Option<String>,
    },
    /// The request failed; the connection stays open.
    Error {
        /// What went wrong.
        message: String,
        /// The request's `docId`, when it could be read.
        doc_id: Option<String>,
    },
    /// A document's text at `revision` (extension).
    Snapshot {
        /// The head revision.
        revision: u64,
        /// The text at that revision.
        text: String,
        /// The request's `docId`.
        doc_id: Option<String>,
        /// The fate of the op the request asked about, if it named one.
        op: Option<OpStatus>,
    },
}

/// Whether the op a snapshot request named was applied.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum OpStatus {
    /// It was, as this revision.
    Applied {
        /// The revision it produced.
        revision: u64,
    },
    /// It was not: the history since the revision it was made on is kept, and does not
    /// hold it.
    Absent,
    /// The server no longer keeps the history since the revision it was made on.
    Unknown,
}

/// A frame that could not be read. The `Display` text is the error frame's message.
#[derive(Clone, PartialEq, Eq, Debug, Error)]
#[non_exhaustive]
pub enum WireError {
    /// Not UTF-8 JSON.
    #[error("Invalid JSON: {0}")]
    Json(String),
    /// JSON, but not an object with a string `type`.
    #[error("Message must be a JSON object with a string type")]
    NotAMessage,
    /// A `type` this endpoint does not know.
    #[error("Unknown message type: {0}")]
    UnknownType(String),
    /// A field has the wrong type or value.
    #[error("Invalid {field}: {expected}")]
    Field {
        /// The field.
        field: &'static str,
        /// What it must be.
        expected: &'static str,
    },
    /// The op is not a text op (open-ot's messages).
    #[error(transparent)]
    Op(#[from] OpError),
}

impl ClientMessage {
    /// Reads a client's frame (the server reads with [`decode_client`], which also keeps the
    /// `docId` of a frame it refuses).
    #[cfg(test)]
    pub(super) fn decode(bytes: &[u8]) -> Result<ClientMessage, WireError> {
        decode_client(bytes).map_err(|(error, _)| error)
    }

    /// The frame's bytes.
    pub(super) fn encode(&self) -> Bytes {
        match self {
            ClientMessage::Op {
                doc_id,
                op,
                revision,
                op_id,
            } => to_bytes(&OpOut {
                kind: "op",
                op,
                revision: *revision,
                doc_id: doc_id.as_deref(),
                op_id: op_id.as_deref(),
            }),
            ClientMessage::Snapshot {
                doc_id,
                op_id,
                revision,
            } => to_bytes(&SnapshotRequestOut {
                kind: "snapshot",
                doc_id: doc_id.as_deref(),
                op_id: op_id.as_deref(),
                revision: *revision,
            }),
        }
    }
}

impl ServerMessage {
    /// Reads a server's frame (straight into its fields: a client never builds a `Value`
    /// tree, which also keeps `Value`'s code out of the browser's OT client).
    pub fn decode(bytes: &[u8]) -> Result<ServerMessage, WireError> {
        /// Every field any server frame has; which ones it must have depends on its type.
        #[derive(serde::Deserialize)]
        struct Fields<'a> {
            #[serde(rename = "type", borrow)]
            kind: Option<Cow<'a, str>>,
            revision: Option<u64>,
            op: Option<TextOp>,
            message: Option<String>,
            text: Option<String>,
            #[serde(rename = "docId")]
            doc_id: Option<String>,
            #[serde(rename = "opStatus", borrow)]
            op_status: Option<Cow<'a, str>>,
            #[serde(rename = "opRevision")]
            op_revision: Option<u64>,
        }
        let fields: Fields<'_> =
            serde_json::from_slice(bytes).map_err(|e| WireError::Json(e.to_string()))?;
        let missing = |field, expected| WireError::Field { field, expected };
        let revision = fields
            .revision
            .ok_or(missing("revision", "must be a non-negative integer"));
        // `docId`: null and "" mean `doc-1`.
        let doc_id = fields.doc_id.filter(|d| !d.is_empty());
        match fields.kind.as_deref().ok_or(WireError::NotAMessage)? {
            "ack" => Ok(ServerMessage::Ack {
                revision: revision?,
                doc_id,
            }),
            "op" => Ok(ServerMessage::Op {
                revision: revision?,
                op: fields.op.ok_or(OpError::NotAnArray)?,
                doc_id,
            }),
            "error" => Ok(ServerMessage::Error {
                message: fields
                    .message
                    .ok_or(missing("message", "must be a string"))?,
                doc_id,
            }),
            "snapshot" => {
                let revision = revision?;
                let op = match fields.op_status.as_deref() {
                    None => None,
                    Some("applied") => Some(OpStatus::Applied {
                        revision: fields
                            .op_revision
                            .ok_or(missing("opRevision", "must be a non-negative integer"))?,
                    }),
                    Some("absent") => Some(OpStatus::Absent),
                    Some(_) => Some(OpStatus::Unknown),
                };
                Ok(ServerMessage::Snapshot {
                    revision,
                    text: fields.text.ok_or(missing("text", "must be a string"))?,
                    doc_id,
                    op,
                })
            }
            other => Err(WireError::UnknownType(other.chars().take(32).collect())),
        }
    }

    /// The frame's bytes.
    pub fn encode(&self) -> Bytes {
        match self {
            ServerMessage::Ack { revision, doc_id } => encode_ack(*revision, doc_id.as_deref()),
            ServerMessage::Op {
                op,
                revision,
                doc_id,
            } => encode_op(op, *revision, doc_id.as_deref()),
            ServerMessage::Error { message, doc_id } => encode_error(message, doc_id.as_deref()),
            ServerMessage::Snapshot {
                revision,
                text,
                doc_id,
                op,
            } => encode_snapshot(*revision, text, doc_id.as_deref(), *op),
        }
    }
}

/// Reads a client's frame; on failure, with the `docId` it named when that could be read,
/// for the error frame to echo.
pub(crate) fn decode_client(bytes: &[u8]) -> Result<ClientMessage, (WireError, Option<String>)> {
    match fast::decode_op(bytes) {
        Some(message) => Ok(message),
        None => decode_any_client(bytes),
    }
}

/// [`decode_client`] for any frame, through a `Value` tree.
fn decode_any_client(bytes: &[u8]) -> Result<ClientMessage, (WireError, Option<String>)> {
    let (kind, mut map) = object(bytes).map_err(|e| (e, None))?;
    let doc_id = doc_id(&map).map_err(|e| (e, None))?;
    let read = |map: &mut Map<String, Value>| match kind.as_str() {
        "op" => {
            let revision = map
                .get("revision")
                .and_then(Value::as_u64)
                .ok_or(WireError::Field {
                    field: "revision",
                    expected: "must be a non-negative integer",
                })?;
            let op_id = op_id(map)?;
            let op = TextOp::from_json(map.remove("op").unwrap_or(Value::Null))?;
            Ok(ClientMessage::Op {
                doc_id: None,
                op,
                revision,
                op_id,
            })
        }
        "snapshot" => {
            let revision = match map.get("revision") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_u64().ok_or(WireError::Field {
                    field: "revision",
                    expected: "must be a non-negative integer",
                })?),
            };
            Ok(ClientMessage::Snapshot {
                doc_id: None,
                op_id: op_id(map)?,
                revision,
            })
        }
        // The type is the peer's text: quote a bounded part of it.
        _ => Err(WireError::UnknownType(kind.chars().take(32).collect())),
    };
    match read(&mut map) {
        Err(error) => Err((error, doc_id)),
        Ok(mut message) => {
            match &mut message {
                ClientMessage::Op { doc_id: d, .. } | ClientMessage::Snapshot { doc_id: d, .. } => {
                    *d = doc_id;
                }
            }
            Ok(message)
        }
    }
}

/// `{"type":"ack","revision":V}`, with the request's `docId`.
pub(crate) fn encode_ack(revision: u64, doc_id: Option<&str>) -> Bytes {
    to_bytes(&AckOut {
        kind: "ack",
        revision,
        doc_id,
    })
}

/// `{"type":"op","op":[...],"revision":V}`: encoded once per op, shared by every recipient.
pub(crate) fn encode_op(op: &TextOp, revision: u64, doc_id: Option<&str>) -> Bytes {
    to_bytes(&OpOut {
        kind: "op",
        op,
        revision,
        doc_id,
        op_id: None,
    })
}

/// `{"type":"error","message":"..."}`.
pub(crate) fn encode_error(message: &str, doc_id: Option<&str>) -> Bytes {
    to_bytes(&ErrorOut {
        kind: "error",
        message,
        doc_id,
    })
}

/// `{"type":"snapshot","revision":V,"text":"..."}` and the extension fields.
pub(crate) fn encode_snapshot(
    revision: u64,
    text: &str,
    doc_id: Option<&str>,
    op: Option<OpStatus>,
) -> Bytes {
    let (op_status, op_revision) = match op {
        None => (None, None),
        Some(OpStatus::Applied { revision }) => (Some("applied"), Some(revision)),
        Some(OpStatus::Absent) => (Some("absent"), None),
        Some(OpStatus::Unknown) => (Some("unknown"), None),
    };
    to_bytes(&SnapshotOut {
        kind: "snapshot",
        revision,
        text,
        doc_id,
        op_status,
        op_revision,
    })
}

/// `{"type":"init","snapshot":"...","revision":V}` (and `docId` when the stream named
/// one): an HTTP stream's first event, the document as it opens.
pub(crate) fn encode_init(revision: u64, text: &str, doc_id: Option<&str>) -> Bytes {
    to_bytes(&InitOut {
        kind: "init",
        snapshot: text,
        revision,
        doc_id,
    })
}

/// Parses a frame into its `type` and fields.
fn object(bytes: &[u8]) -> Result<(String, Map<String, Value>), WireError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| WireError::Json(e.to_string()))?;
    let Value::Object(mut map) = value else {
        return Err(WireError::NotAMessage);
    };
    match map.remove("type") {
        Some(Value::String(kind)) => Ok((kind, map)),
        _ => Err(WireError::NotAMessage),
    }
}

/// `docId`: absent, `null` and `""` all mean `doc-1` (the seed reads `msg.docId || "doc-1"`).
fn doc_id(map: &Map<String, Value>) -> Result<Option<String>, WireError> {
    match map.get("docId") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(WireError::Field {
            field: "docId",
            expected: "must be a string",
        }),
    }
}

fn op_id(map: &Map<String, Value>) -> Result<Option<String>, WireError> {
    match map.get("opId") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_OP_ID_LEN => Ok(Some(s.clone())),
        Some(_) => Err(WireError::Field {
            field: "opId",
            expected: "must be a non-empty string of at most 64 bytes",
        }),
    }
}

fn to_bytes(value: &impl Serialize) -> Bytes {
    // Every frame is a struct of strings, numbers and a TextOp: serialising cannot fail.
    Bytes::from(serde_json::to_vec(value).expect("invariant: OT frames serialise to JSON"))
}

#[derive(Serialize)]
struct AckOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    revision: u64,
    #[serde(rename = "docId", skip_serializing_if = "Option::is_none")]
    doc_id: Option<&'a str>,
}

#[derive(Serialize)]
struct OpOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    op: &'a TextOp,
    revision: u64,
    #[serde(rename = "docId", skip_serializing_if = "Option::is_none")]
    doc_id: Option<&'a str>,
    #[serde(rename = "opId", skip_serializing_if = "Option::is_none")]
    op_id: Option<&'a str>,
}

#[derive(Serialize)]
struct ErrorOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
    #[serde(rename = "docId", skip_serializing_if = "Option::is_none")]
    doc_id: Option<&'a str>,
}

#[derive(Serialize)]
struct SnapshotRequestOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "docId", skip_serializing_if = "Option::is_none")]
    doc_id: Option<&'a str>,
    #[serde(rename = "opId", skip_serializing_if = "Option::is_none")]
    op_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    revision: Option<u64>,
}

#[derive(Serialize)]
struct InitOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    snapshot: &'a str,
    revision: u64,
    #[serde(rename = "docId", skip_serializing_if = "Option::is_none")]
    doc_id: Option<&'a str>,
}

#[derive(Serialize)]
struct SnapshotOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    revision: u64,
    text: &'a str,
    #[serde(rename = "docId", skip_serializing_if = "Option::is_none")]
    doc_id: Option<&'a str>,
    #[serde(rename = "opStatus", skip_serializing_if = "Option::is_none")]
    op_status: Option<&'static str>,
    #[serde(rename = "opRevision", skip_serializing_if = "Option::is_none")]
    op_revision: Option<u64>,
}

/// The frame nearly every client sends, a well-formed `op`, read straight into its fields:
/// no `Value` tree, no map of owned keys, strings borrowed from the frame. Anything this
/// reader does not accept — another type, a field of the wrong type or out of range, a
/// repeated key, a component that is not exactly one of `i`, `r`, `d` — makes it answer
/// `None`, and the frame is read again by [`decode_any_client`], which finds the
/// error and words it. So it only ever accepts what the general reader would accept, and
/// reads it the same way (`ot::wire::tests::the_fast_reader_agrees_with_the_general_one`).
mod fast {
    use std::borrow::Cow;

    use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess};

    use super::{ClientMessage, MAX_OP_ID_LEN};
    use crate::ot::text::{Component, TextOp};

    pub(super) fn decode_op(bytes: &[u8]) -> Option<ClientMessage> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let message = de.deserialize_map(OpFrame).ok()?;
        de.end().ok()?;
        Some(message)
    }

    /// A string of the frame: borrowed unless it holds an escape. (`Cow`'s own
    /// `Deserialize` always copies; the derive's `borrow` does not.)
    #[derive(serde::Deserialize)]
    struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

    struct OpFrame;

    impl<'de> de::Visitor<'de> for OpFrame {
        type Value = ClientMessage;

        fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str("an op frame")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ClientMessage, A::Error> {
            fn once<T, E: de::Error>(slot: &mut Option<T>, value: T) -> Result<(), E> {
                match slot.replace(value) {
                    None => Ok(()),
                    Some(_) => Err(E::custom("repeated key")),
                }
            }
            let (mut kind, mut op, mut revision) = (None, None, None);
            let (mut doc_id, mut op_id) = (None::<Option<Text<'de>>>, None::<Option<Text<'de>>>);
            while let Some(Text(key)) = map.next_key()? {
                match key.as_ref() {
                    "type" => once(&mut kind, map.next_value::<Text<'de>>()?.0)?,
                    "op" => once(&mut op, map.next_value_seed(Op)?)?,
                    "revision" => once(&mut revision, map.next_value::<u64>()?)?,
                    "docId" => once(&mut doc_id, map.next_value()?)?,
                    "opId" => once(&mut op_id, map.next_value()?)?,
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            let (Some(kind), Some(op), Some(revision)) = (kind, op, revision) else {
                return Err(de::Error::custom("not a whole op frame"));
            };
            if kind != "op" {
                return Err(de::Error::custom("not an op frame"));
            }
            // `docId`: null and "" mean `doc-1`; `opId`: null, or 1..=64 bytes.
            let doc_id = doc_id.flatten().map(|d| d.0).filter(|d| !d.is_empty());
            let op_id = match op_id.flatten().map(|id| id.0) {
                Some(id) if id.is_empty() || id.len() > MAX_OP_ID_LEN => {
                    return Err(de::Error::custom("opId out of range"))
                }
                id => id,
            };
            Ok(ClientMessage::Op {
                doc_id: doc_id.map(Cow::into_owned),
                op,
                revision,
                op_id: op_id.map(Cow::into_owned),
            })
        }
    }

    /// The op: an array of components.
    struct Op;

    impl<'de> DeserializeSeed<'de> for Op {
        type Value = TextOp;

        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<TextOp, D::Error> {
            deserializer.deserialize_seq(self)
        }
    }

    impl<'de> de::Visitor<'de> for Op {
        type Value = TextOp;

        fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str("an array of components")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TextOp, A::Error> {
            let mut op = TextOp::new();
            while let Some(component) = seq.next_element_seed(OneComponent)? {
                op.push(component);
            }
            Ok(op)
        }
    }

    /// `{"i": string}`, `{"r": n}` or `{"d": n}`, and no other key.
    struct OneComponent;

    impl<'de> DeserializeSeed<'de> for OneComponent {
        type Value = Component;

        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Component, D::Error> {
            deserializer.deserialize_map(self)
        }
    }

    impl<'de> de::Visitor<'de> for OneComponent {
        type Value = Component;

        fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str("a component")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Component, A::Error> {
            let component = match map.next_key::<Text<'de>>()? {
                Some(Text(key)) => match key.as_ref() {
                    "i" => Component::Insert(map.next_value()?),
                    "r" => Component::Retain(map.next_value()?),
                    "d" => Component::Delete(map.next_value()?),
                    _ => return Err(de::Error::custom("not a component")),
                },
                None => return Err(de::Error::custom("not a component")),
            };
            match map.next_key::<IgnoredAny>()? {
                None => Ok(component),
                Some(_) => Err(de::Error::custom("not a component")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_of_the_seed() {
        let op = TextOp::new().insert("Hello");
        assert_eq!(&encode_ack(1, None)[..], br#"{"type":"ack","revision":1}"#);
        assert_eq!(
            &encode_op(&op, 6, Some("d"))[..],
            br#"{"type":"op","op":[{"i":"Hello"}],"revision":6,"docId":"d"}"#
        );
        assert_eq!(
            &encode_error("Rate limit exceeded", None)[..],
            br#"{"type":"error","message":"Rate limit exceeded"}"#
        );
        assert_eq!(
            ClientMessage::decode(br#"{"type":"op","op":[{"i":"Hello"}],"revision":5}"#),
            Ok(ClientMessage::Op {
                doc_id: None,
                op,
                revision: 5,
                op_id: None
            })
        );
    }

    #[test]
    fn round_trips() {
        let messages = [
            ServerMessage::Ack {
                revision: 3,
                doc_id: Some("a".into()),
            },
            ServerMessage::Op {
                op: TextOp::new().retain(1).delete(2),
                revision: 9,
                doc_id: None,
            },
            ServerMessage::Error {
                message: "nope".into(),
                doc_id: None,
            },
            ServerMessage::Snapshot {
                revision: 4,
                text: "hi 😀".into(),
                doc_id: Some("x".into()),
                op: Some(OpStatus::Applied { revision: 2 }),
            },
            ServerMessage::Snapshot {
                revision: 0,
                text: String::new(),
                doc_id: None,
                op: Some(OpStatus::Unknown),
            },
        ];
        for m in messages {
            assert_eq!(ServerMessage::decode(&m.encode()), Ok(m));
        }
        let request = ClientMessage::Snapshot {
            doc_id: Some("x".into()),
            op_id: Some("c-1".into()),
            revision: Some(7),
        };
        assert_eq!(ClientMessage::decode(&request.encode()), Ok(request));
    }

    /// What the fast reader reads is what the general one reads; what it does not accept,
    /// the general one reads (and words its error).
    fn agrees(frame: &str) -> bool {
        let fast = fast::decode_op(frame.as_bytes());
        if let Some(message) = &fast {
            assert_eq!(
                decode_any_client(frame.as_bytes()).as_ref(),
                Ok(message),
                "{frame}"
            );
        }
        assert_eq!(
            decode_client(frame.as_bytes()),
            decode_any_client(frame.as_bytes()),
            "{frame}"
        );
        fast.is_some()
    }

    #[test]
    fn the_fast_reader_agrees_with_the_general_one() {
        // The frames clients send: read without the general reader.
        for frame in [
            r#"{"type":"op","op":[{"i":"Hello"}],"revision":5}"#,
            r#"{"type":"op","op":[{"r":3},{"d":2},{"i":"x"}],"revision":0,"docId":"d"}"#,
            r#" { "revision" : 7 , "op" : [ ] , "type" : "op" , "opId" : "c-1" } "#,
            r#"{"type":"op","op":[{"r":1},{"r":2},{"i":""},{"d":0}],"revision":1}"#,
            r#"{"type":"op","op":[{"i":"\u00e9\ud83d\ude00\n"}],"revision":1,"docId":"\u0064"}"#,
            r#"{"type":"op","op":[],"revision":1,"docId":null,"opId":null,"extra":{"a":[1]}}"#,
            r#"{"type":"op","op":[],"revision":1,"docId":""}"#,
            r#"{"type":"o\u0070","op":[{"d":1}],"revision":2}"#,
        ] {
            assert!(agrees(frame), "the fast reader refused {frame}");
        }
        // Everything else goes to the general reader, which accepts some of it.
        for frame in [
            r#"{"type":"snapshot"}"#,
            r#"{"type":"op","op":[{"i":"a"}],"revision":1,"revision":2}"#,
            r#"{"type":"op","op":[{"i":"a","r":1}],"revision":1}"#,
            r#"{"type":"op","op":[{"i":"a","x":1}],"revision":1}"#,
            r#"{"type":"op","op":[{"i":"a","i":"b"}],"revision":1}"#,
            r#"{"type":"op","op":[{}],"revision":1}"#,
            r#"{"type":"op","op":[{"r":1.0}],"revision":1}"#,
            r#"{"type":"op","op":[{"r":-1}],"revision":1}"#,
            r#"{"type":"op","op":[null],"revision":1}"#,
            r#"{"type":"op","op":[[]],"revision":1}"#,
            r#"{"type":"op","op":[5],"revision":1}"#,
            r#"{"type":"op","op":{},"revision":1}"#,
            r#"{"type":"op","revision":1}"#,
            r#"{"type":"op","op":[],"revision":1.0}"#,
            r#"{"type":"op","op":[],"revision":18446744073709551616}"#,
            r#"{"type":"op","op":[],"revision":"1"}"#,
            r#"{"type":"op","op":[],"revision":1,"docId":5}"#,
            r#"{"type":"op","op":[],"revision":1,"opId":""}"#,
            r#"{"type":"op","op":[],"revision":1,"opId":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
            r#"{"type":5,"op":[],"revision":1}"#,
            r#"["op",[],1]"#,
            r#"{"type":"op","op":[],"revision":1} x"#,
            r#"{"type":"op","op":[],"revision":1"#,
            "not json",
        ] {
            assert!(!agrees(frame), "the fast reader took {frame}");
        }
    }

    proptest::proptest! {
        /// Frames put together from the pieces that matter, valid or not, in any order and
        /// with repeats.
        #[test]
        fn the_fast_reader_never_reads_a_frame_otherwise(
            fields in proptest::collection::vec((0..6usize, 0..9usize), 0..6),
            components in proptest::collection::vec(
                proptest::collection::vec((0..4usize, 0..9usize), 0..3), 0..4),
        ) {
            const KEYS: [&str; 6] = ["type", "op", "revision", "docId", "opId", "x"];
            const VALUES: [&str; 9] = [r#""op""#, "1", "-1", "-0", "1.5", "null", r#""""#, r#""a\"b""#, "[]"];
            const PARTS: [&str; 4] = ["i", "r", "d", "x"];
            let op = components
                .iter()
                .map(|c| {
                    let entries: Vec<String> =
                        c.iter().map(|&(k, v)| format!(r#""{}":{}"#, PARTS[k], VALUES[v])).collect();
                    format!("{{{}}}", entries.join(","))
                })
                .collect::<Vec<_>>()
                .join(",");
            let entries: Vec<String> = fields
                .iter()
                .map(|&(k, v)| match KEYS[k] {
                    "op" if v % 2 == 0 => format!(r#""op":[{op}]"#),
                    key => format!(r#""{key}":{}"#, VALUES[v]),
                })
                .collect();
            agrees(&format!("{{{}}}", entries.join(",")));
        }
    }
}
