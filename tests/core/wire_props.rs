//! Properties of the envelope codec and the payload types (docs/protocol.md sections 4 to 7).

use std::cmp::Ordering;
use std::fmt::Debug;

use bytes::Bytes;
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use syncmux::payload::{
    ChangeRecord, Cursor, ErrorPayload, Hlc, PresenceEvent, PresenceEventKind, PresenceGet,
    PresenceSnapshot, PresenceState, PresenceUpdate, PullRequest, PullResponse, PushRequest,
    PushResponse, RawJson, ResumeAck, RoomAction, RoomEvent, RoomEventKind, RoomMember,
    RoomRequest, Subscribe, SyncFilter, Unsubscribe,
};
use syncmux::wire::{DecodeLimits, ErrorCode, Frame, FrameId, IdKey, MessageType};

const CASES: u32 = 256;

/// The fields `ChangeRecord` knows; anything else is relayed in `extra`.
const KNOWN_FIELDS: &[&str] = &[
    "table",
    "pk",
    "field",
    "crdt_type",
    "hlc",
    "node_id",
    "value",
    "tombstone",
    "counter_delta",
    "set_op",
    "list_op",
];

// ---------------------------------------------------------------------------------------------
// Strategies.

/// Short strings that exercise escaping: quotes, backslashes, ':' (the HLC separator),
/// control characters and non-ASCII.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9_-]{0,10}",
        "[\"\\\\:/\u{0}-\u{1f}a-zé€😀]{0,8}",
        any::<String>().prop_map(|s| s.chars().take(12).collect()),
    ]
}

fn hlc() -> impl Strategy<Value = Hlc> {
    (any::<i64>(), any::<u32>(), text()).prop_map(|(ts, c, node)| Hlc::new(ts, c, node))
}

/// HLCs drawn from a small space, so that equal parts (and equal clocks) are common.
fn close_hlc() -> impl Strategy<Value = Hlc> {
    (
        -2i64..=2,
        0u32..=2,
        prop::sample::select(vec!["", "a", "b", "a:b"]),
    )
        .prop_map(|(ts, c, node)| Hlc::new(ts, c, node))
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        text().prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(text(), inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// JSON text as peers write it, including what a `Value` would not keep: big integers, long
/// or odd floats, exponents, whitespace.
fn json_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => json_value().prop_map(|v| v.to_string()),
        1 => "-?[1-9][0-9]{19,40}",
        1 => "-?[0-9]\\.[0-9]{17,30}",
        1 => prop::sample::select(vec!["1.50", "-0.0", "1e400", "2E-308", "0.0e+0"])
            .prop_map(String::from),
        1 => json_value().prop_map(|v| format!("[ {v} , {{ \"k\" : {v} }} ]")),
    ]
}

fn raw_json() -> impl Strategy<Value = RawJson> {
    json_text().prop_map(|t| RawJson::from_string(t).expect("generated JSON is valid"))
}

fn unknown_fields() -> impl Strategy<Value = Vec<(String, RawJson)>> {
    prop::collection::vec(
        (
            text().prop_filter("unknown", |k| !KNOWN_FIELDS.contains(&k.as_str())),
            raw_json(),
        ),
        0..4,
    )
}

fn change_record() -> impl Strategy<Value = ChangeRecord> {
    (
        (text(), text(), text(), text(), hlc(), text()),
        (
            prop::option::of(raw_json()),
            prop::option::of(any::<bool>()),
            prop::option::of(raw_json()),
            prop::option::of(raw_json()),
            prop::option::of(raw_json()),
        ),
        unknown_fields(),
    )
        .prop_map(
            |(
                (table, pk, field, crdt_type, hlc, node_id),
                (value, tombstone, counter_delta, set_op, list_op),
                extra,
            )| {
                let mut record = ChangeRecord::new(table, pk, field, crdt_type, hlc, node_id);
                record.value = value;
                record.tombstone = tombstone;
                record.counter_delta = counter_delta;
                record.set_op = set_op;
                record.list_op = list_op;
                record.extra = extra;
                record
            },
        )
}

fn changes() -> impl Strategy<Value = Vec<ChangeRecord>> {
    prop::collection::vec(change_record(), 0..4)
}

fn tables() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(text(), 0..4)
}

fn frame_id() -> impl Strategy<Value = Option<FrameId>> {
    prop::option::of(
        (
            prop::sample::select(vec![IdKey::Id, IdKey::RequestId]),
            text(),
        )
            .prop_map(|(key, value)| FrameId::with_key(key, value)),
    )
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        prop::sample::select(ErrorCode::KNOWN.to_vec()),
        "[A-Z_]{1,12}".prop_map(|c| ErrorCode::from_wire(&c)),
    ]
}

/// A payload of every shape docs/protocol.md section 6 lists, with the message type it travels in.
#[derive(Debug, Clone)]
enum Payload {
    Pull(PullRequest),
    PullResponse(PullResponse),
    Push(PushRequest),
    PushResponse(PushResponse),
    Subscribe(Subscribe),
    Unsubscribe(Unsubscribe),
    Change(ChangeRecord, Option<String>),
    Changes(Vec<ChangeRecord>, Option<String>),
    PresenceUpdate(PresenceUpdate),
    PresenceEvent(PresenceEvent),
    PresenceGet(PresenceGet),
    PresenceSnapshot(PresenceSnapshot),
    RoomRequest(RoomRequest),
    RoomEvent(RoomEvent),
    Error(ErrorPayload),
    Ack(Option<ResumeAck>),
    Ping(RawJson),
    Pong(RawJson),
}

fn payload() -> impl Strategy<Value = Payload> {
    let cursor = || prop::option::of(text());
    // Positions in answers are typed; requests carry any string (cursors are opaque).
    let position = || (any::<u64>(), any::<u64>()).prop_map(|(e, s)| Cursor::new(e, s));
    let data = || prop::option::of(raw_json());
    let filter = || {
        prop::option::of(
            (tables(), tables()).prop_map(|(pk_filter, field_filter)| SyncFilter {
                pk_filter,
                field_filter,
            }),
        )
    };
    prop_oneof![
        (
            tables(),
            prop::option::of(hlc()),
            cursor(),
            cursor(),
            filter()
        )
            .prop_map(|(tables, since, cursor, node_id, filter)| {
                Payload::Pull(PullRequest {
                    tables,
                    since,
                    cursor,
                    node_id,
                    filter,
                })
            }),
        (
            changes(),
            hlc(),
            prop::option::of(position()),
            proptest::option::of(any::<bool>())
        )
            .prop_map(|(changes, latest_hlc, cursor, recovered)| {
                Payload::PullResponse(PullResponse {
                    changes,
                    latest_hlc,
                    cursor,
                    recovered,
                })
            }),
        (changes(), text())
            .prop_map(|(changes, node_id)| Payload::Push(PushRequest { changes, node_id })),
        (any::<u64>(), hlc(), prop::option::of(position())).prop_map(
            |(merged, latest_hlc, cursor)| {
                Payload::PushResponse(PushResponse {
                    merged,
                    latest_hlc,
                    cursor,
                })
            }
        ),
        (tables(), prop::option::of(hlc()), cursor(), filter()).prop_map(
            |(tables, since, cursor, filter)| {
                Payload::Subscribe(Subscribe {
                    tables,
                    since,
                    cursor,
                    filter,
                })
            }
        ),
        tables().prop_map(|tables| Payload::Unsubscribe(Unsubscribe { tables })),
        (change_record(), cursor()).prop_map(|(r, c)| Payload::Change(r, c)),
        (changes(), cursor()).prop_map(|(r, c)| Payload::Changes(r, c)),
        (text(), data()).prop_map(|(topic, data)| {
            // `data: null` means "leave" and reads back as None, like an absent one.
            let data = data.filter(|d| !d.is_null());
            Payload::PresenceUpdate(PresenceUpdate { topic, data })
        }),
        (
            prop::sample::select(vec![
                PresenceEventKind::Join,
                PresenceEventKind::Update,
                PresenceEventKind::Leave
            ]),
            text(),
            text(),
            data()
        )
            .prop_map(|(kind, node_id, topic, data)| {
                Payload::PresenceEvent(PresenceEvent {
                    kind,
                    node_id,
                    topic,
                    data: data.filter(|d| !d.is_null()),
                })
            }),
        text().prop_map(|topic| Payload::PresenceGet(PresenceGet { topic })),
        (
            text(),
            prop::collection::vec((text(), text(), raw_json(), raw_json()), 0..3)
        )
            .prop_map(|(topic, states)| {
                Payload::PresenceSnapshot(PresenceSnapshot {
                    topic,
                    states: states
                        .into_iter()
                        .map(|(node_id, topic, data, updated_at)| PresenceState {
                            node_id,
                            topic,
                            data,
                            updated_at,
                        })
                        .collect(),
                })
            }),
        (
            prop::sample::select(vec![
                RoomAction::Join,
                RoomAction::Leave,
                RoomAction::Broadcast
            ]),
            text(),
            data()
        )
            .prop_map(|(action, room, data)| {
                Payload::RoomRequest(RoomRequest {
                    action,
                    room,
                    data: data.filter(|d| !d.is_null()),
                })
            }),
        (
            prop::sample::select(vec![
                RoomEventKind::Members,
                RoomEventKind::Join,
                RoomEventKind::Leave,
                RoomEventKind::Message
            ]),
            text(),
            prop::option::of(text()),
            data(),
            prop::option::of(prop::collection::vec((text(), data()), 0..3)),
        )
            .prop_map(|(event, room, node_id, data, members)| {
                Payload::RoomEvent(RoomEvent {
                    event,
                    room,
                    node_id,
                    data: data.filter(|d| !d.is_null()),
                    members: members.map(|m| {
                        m.into_iter()
                            .map(|(node_id, data)| RoomMember {
                                node_id,
                                data: data.filter(|d| !d.is_null()),
                            })
                            .collect()
                    }),
                })
            }),
        (error_code(), text())
            .prop_map(|(code, message)| Payload::Error(ErrorPayload { code, message })),
        prop::option::of(
            (any::<bool>(), position())
                .prop_map(|(recovered, cursor)| ResumeAck { recovered, cursor })
        )
        .prop_map(Payload::Ack),
        raw_json().prop_map(Payload::Ping),
        raw_json().prop_map(Payload::Pong),
    ]
}

// ---------------------------------------------------------------------------------------------
// Helpers.

/// Encodes `value` as `kind` (with `cursor` when given, else under `id`), decodes it, and
/// checks the envelope and the typed payload come back unchanged.
fn round_trip<T>(
    kind: MessageType,
    id: Option<&FrameId>,
    cursor: Option<&str>,
    value: &T,
) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let bytes = match cursor {
        Some(cursor) => Frame::encode_with_cursor(kind, Some(cursor), value),
        None => Frame::encode(kind, id, value),
    }
    .expect("payload types encode");
    let frame = Frame::decode(bytes.clone(), &DecodeLimits::default())
        .map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&bytes))))?;
    prop_assert_eq!(frame.kind(), kind);
    prop_assert_eq!(frame.cursor(), cursor);
    prop_assert_eq!(frame.id(), if cursor.is_some() { None } else { id });
    let back: T = frame
        .payload()
        .map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&bytes))))?;
    prop_assert_eq!(&back, value);
    // The frame itself re-encodes to the same bytes: nothing is lost or reordered.
    let again = match cursor {
        Some(cursor) => Frame::encode_with_cursor(kind, Some(cursor), &back),
        None => Frame::encode(kind, frame.id(), &back),
    }
    .expect("payload types encode");
    prop_assert_eq!(again, bytes);
    Ok(())
}

fn check_payload(id: Option<&FrameId>, payload: &Payload) -> Result<(), TestCaseError> {
    use MessageType as M;
    match payload {
        Payload::Pull(p) => round_trip(M::PullRequest, id, None, p),
        Payload::PullResponse(p) => round_trip(M::PullResponse, id, None, p),
        Payload::Push(p) => round_trip(M::PushRequest, id, None, p),
        Payload::PushResponse(p) => round_trip(M::PushResponse, id, None, p),
        Payload::Subscribe(p) => round_trip(M::Subscribe, id, None, p),
        Payload::Unsubscribe(p) => round_trip(M::Unsubscribe, id, None, p),
        Payload::Change(p, cursor) => round_trip(M::Change, id, cursor.as_deref(), p),
        Payload::Changes(p, cursor) => round_trip(M::Changes, id, cursor.as_deref(), p),
        Payload::PresenceUpdate(p) => round_trip(M::PresenceUpdate, id, None, p),
        Payload::PresenceEvent(p) => round_trip(M::PresenceEvent, id, None, p),
        Payload::PresenceGet(p) => round_trip(M::PresenceGet, id, None, p),
        Payload::PresenceSnapshot(p) => round_trip(M::PresenceSnapshot, id, None, p),
        Payload::RoomRequest(p) => round_trip(M::Room, id, None, p),
        Payload::RoomEvent(p) => round_trip(M::Room, id, None, p),
        Payload::Error(p) => round_trip(M::Error, id, None, p),
        Payload::Ack(p) => round_trip(M::Ack, id, None, p),
        Payload::Ping(p) => round_trip(M::Ping, id, None, p),
        Payload::Pong(p) => round_trip(M::Pong, id, None, p),
    }
}

/// Decodes anything; it must give a frame or an error with a known wire code, never panic.
fn decodes_to_something_defined(
    bytes: Vec<u8>,
    limits: &DecodeLimits,
) -> Result<(), TestCaseError> {
    match Frame::decode(Bytes::from(bytes), limits) {
        Ok(frame) => {
            // The raw payload of an accepted frame is one JSON value.
            let raw = std::str::from_utf8(frame.raw_payload()).expect("payloads are UTF-8");
            prop_assert!(RawJson::from_string(raw.to_owned()).is_ok(), "{raw}");
        }
        Err(err) => {
            prop_assert!(
                ErrorCode::KNOWN.contains(&err.code()),
                "unknown code {}",
                err.code()
            );
            prop_assert!(matches!(
                err.code(),
                ErrorCode::InvalidFrame | ErrorCode::UnknownType | ErrorCode::FrameTooLarge
            ));
        }
    }
    Ok(())
}

/// Envelope-shaped JSON: an object with plausible keys holding values of any JSON type.
fn envelope_json() -> impl Strategy<Value = serde_json::Value> {
    let key = prop_oneof![
        prop::sample::select(vec!["type", "id", "request_id", "payload", "cursor"])
            .prop_map(String::from),
        text(),
    ];
    let value = prop_oneof![
        prop::sample::select(MessageType::ALL.to_vec())
            .prop_map(|t| serde_json::Value::from(t.as_str())),
        json_value(),
    ];
    prop::collection::btree_map(key, value, 0..6)
        .prop_map(|m| serde_json::Value::Object(m.into_iter().collect()))
}

// ---------------------------------------------------------------------------------------------
// Properties.

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Frame::decode(Frame::encode(x)) == x, for every message type's payload, with either id key.
    #[test]
    fn envelopes_and_payloads_round_trip(id in frame_id(), payload in payload()) {
        check_payload(id.as_ref(), &payload)?;
    }

    /// Raw frames too: any type, id and raw payload come back as sent, and the decoded frame
    /// equals the one decoded from its own re-encoding.
    #[test]
    fn raw_frames_round_trip(
        kind in prop::sample::select(MessageType::ALL.to_vec()),
        id in frame_id(),
        payload in raw_json(),
    ) {
        let bytes = Frame::encode(kind, id.as_ref(), &payload).expect("raw JSON encodes");
        let frame = Frame::decode(bytes, &DecodeLimits::default()).expect("our frames decode");
        prop_assert_eq!(frame.kind(), kind);
        prop_assert_eq!(frame.id(), id.as_ref());
        prop_assert_eq!(frame.raw_payload(), payload.get().as_bytes());
        let again = Frame::encode(kind, frame.id(), &frame.payload::<RawJson>().expect("JSON"))
            .expect("raw JSON encodes");
        prop_assert_eq!(Frame::decode(again, &DecodeLimits::default()).expect("decodes"), frame);
    }

    /// Arbitrary bytes never panic and give a frame or a defined error.
    #[test]
    fn arbitrary_bytes_decode_to_a_frame_or_a_defined_error(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        max_depth in 0usize..8,
    ) {
        let mut limits = DecodeLimits::with_max_frame_len(200);
        limits.max_depth = max_depth;
        decodes_to_something_defined(bytes, &limits)?;
    }

    /// Arbitrary JSON (envelope-like objects, and any other value) never panics either.
    #[test]
    fn arbitrary_json_decodes_to_a_frame_or_a_defined_error(
        value in prop_oneof![3 => envelope_json(), 1 => json_value()],
        max_depth in 0usize..6,
    ) {
        let mut limits = DecodeLimits::default();
        limits.max_depth = max_depth;
        decodes_to_something_defined(serde_json::to_vec(&value).expect("serialises"), &limits)?;
    }

    /// Valid frames cut short or with a byte changed never panic.
    #[test]
    fn damaged_frames_decode_to_a_frame_or_a_defined_error(
        id in frame_id(),
        payload in payload(),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let bytes = match &payload {
            Payload::Changes(changes, cursor) => {
                Frame::encode_with_cursor(MessageType::Changes, cursor.as_deref(), changes)
            }
            Payload::Push(push) => Frame::encode(MessageType::PushRequest, id.as_ref(), push),
            other => Frame::encode(MessageType::Ping, id.as_ref(), &format!("{other:?}")),
        }
        .expect("encodes")
        .to_vec();
        let mut flipped = bytes.clone();
        let at = flip.index(flipped.len());
        flipped[at] = byte;
        decodes_to_something_defined(flipped, &DecodeLimits::default())?;
        let cut = cut.index(bytes.len());
        decodes_to_something_defined(bytes[..cut].to_vec(), &DecodeLimits::default())?;
    }

    /// Unknown fields of a change record survive byte for byte, in arrival order, wherever
    /// they sit among the known fields.
    #[test]
    fn unknown_change_fields_survive_byte_for_byte(
        record in change_record(),
        unknown in unknown_fields(),
        positions in prop::collection::vec(0usize..8, 4),
    ) {
        // Write the record, then splice the unknown fields in between its known ones.
        let known: std::collections::BTreeMap<String, Box<serde_json::value::RawValue>> = serde_json::from_str(
            &serde_json::to_string(&ChangeRecord { extra: vec![], ..record.clone() }).unwrap(),
        )
        .unwrap();
        let mut entries: Vec<String> = KNOWN_FIELDS
            .iter()
            .filter_map(|k| known.get(*k).map(|v| format!("{}:{v}", serde_json::to_string(k).unwrap())))
            .collect();
        for (i, (key, value)) in unknown.iter().enumerate() {
            let at = (positions[i % positions.len()] + i).min(entries.len());
            // Keep arrival order: never insert before an earlier unknown field.
            let at = at.max(entries.iter().rposition(|e| e.starts_with('\u{1}')).map_or(0, |p| p + 1));
            entries.insert(at, format!("\u{1}{}:{}", serde_json::to_string(key).unwrap(), value.get()));
        }
        let text = format!("{{{}}}", entries.join(",").replace('\u{1}', ""));
        let parsed: ChangeRecord = serde_json::from_str(&text)
            .map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
        let got: Vec<(&str, &str)> = parsed.extra.iter().map(|(k, v)| (k.as_str(), v.get())).collect();
        let want: Vec<(&str, &str)> = unknown.iter().map(|(k, v)| (k.as_str(), v.get())).collect();
        prop_assert_eq!(got, want);
        // Written back, each unknown field appears with its exact text, in order, after the
        // known ones; and the output reads back to the same record.
        let out = serde_json::to_string(&parsed).unwrap();
        let tail: String = unknown
            .iter()
            .map(|(k, v)| format!(",{}:{}", serde_json::to_string(k).unwrap(), v.get()))
            .collect();
        prop_assert!(out.ends_with(&format!("{tail}}}")), "{} lacks {}", out, tail);
        prop_assert_eq!(serde_json::from_str::<ChangeRecord>(&out).unwrap(), parsed);
    }

    /// The string form and the object form of an HLC read to the same clock, and both agree
    /// with what we write.
    #[test]
    fn hlc_string_and_object_forms_agree(h in hlc()) {
        let object = serde_json::to_string(&h).unwrap();
        let string = serde_json::to_string(&h.to_string()).unwrap();
        prop_assert_eq!(&serde_json::from_str::<Hlc>(&object).unwrap(), &h);
        prop_assert_eq!(&serde_json::from_str::<Hlc>(&string).unwrap(), &h);
        prop_assert_eq!(&h.to_string().parse::<Hlc>().unwrap(), &h);
        // The object form is exactly {"ts","c","node"}, ts as an integer (no float).
        prop_assert_eq!(
            object,
            format!(r#"{{"ts":{},"c":{},"node":{}}}"#, h.ts, h.c, serde_json::to_string(&h.node).unwrap())
        );
    }

    /// HLC order is total and consistent: it is the (ts, c, node) tuple order, antisymmetric,
    /// transitive, and agrees with equality.
    #[test]
    fn hlc_order_is_total_and_consistent(a in close_hlc(), b in close_hlc(), c in close_hlc()) {
        let tuple = |h: &Hlc| (h.ts, h.c, h.node.clone());
        prop_assert_eq!(a.cmp(&b), tuple(&a).cmp(&tuple(&b)));
        prop_assert_eq!(a.cmp(&b), b.cmp(&a).reverse());
        prop_assert_eq!(a.partial_cmp(&b), Some(a.cmp(&b)));
        prop_assert_eq!(a.cmp(&b) == Ordering::Equal, a == b);
        if a <= b && b <= c {
            prop_assert!(a <= c);
        }
        // The string form orders the same way once parsed.
        let (pa, pb): (Hlc, Hlc) = (a.to_string().parse().unwrap(), b.to_string().parse().unwrap());
        prop_assert_eq!(pa.cmp(&pb), a.cmp(&b));
    }

    /// Full-range HLCs order like their tuples too (no precision loss at the i64 extremes).
    #[test]
    fn hlc_order_matches_tuples_over_the_full_range(a in hlc(), b in hlc()) {
        prop_assert_eq!(a.cmp(&b), (a.ts, a.c, &a.node).cmp(&(b.ts, b.c, &b.node)));
    }
}
