//! Payload decoding never panics, and decode∘encode is the identity on whatever decodes: every
//! payload type, change records, HLCs (object and `"<ts>:<c>:<node>"` string form) and cursors.
//!
//! The input is a whole frame (so the frame corpus seeds this target); when it does not decode
//! as a frame, the bytes themselves are taken as a payload. Every payload type is tried on every
//! payload, not only the one its `type` names, so each type sees every shape.
//!
//! Documented normalisations (docs/protocol.md sections 4 to 7): an HLC is always written in object
//! form; a `null` tombstone or presence `data` reads as absent; a string HLC's numbers lose a
//! leading `+` or zeros. So the check is on values: `decode(encode(v)) == v`, and encoding is
//! a fixed point (`encode(decode(encode(v))) == encode(v)`).
#![no_main]

use std::fmt::Debug;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use syncmux::payload::{
    ChangeRecord, Cursor, ErrorPayload, Hlc, PresenceEvent, PresenceGet, PresenceSnapshot,
    PresenceUpdate, PullRequest, PullResponse, PushRequest, PushResponse, ResumeAck, RoomEvent,
    RoomRequest, Subscribe, Unsubscribe,
};
use syncmux::wire::{DecodeLimits, Frame};

/// Decodes `json` as a `T`; when it decodes, checks the round trip.
fn round_trip<T>(json: &[u8])
where
    T: DeserializeOwned + Serialize + PartialEq + Debug,
{
    let Ok(value) = serde_json::from_slice::<T>(json) else {
        return;
    };
    let text = serde_json::to_string(&value).expect("a decoded payload encodes");
    let again: T = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("our own encoding {text} does not decode: {e}"));
    assert_eq!(again, value, "decode∘encode changed the value of {text}");
    let text2 = serde_json::to_string(&again).expect("encodes");
    assert_eq!(text2, text, "encoding is not a fixed point");
}

fn all_payloads(json: &[u8]) {
    round_trip::<PullRequest>(json);
    round_trip::<PullResponse>(json);
    round_trip::<PushRequest>(json);
    round_trip::<PushResponse>(json);
    round_trip::<Subscribe>(json);
    round_trip::<Unsubscribe>(json);
    round_trip::<ChangeRecord>(json);
    round_trip::<Vec<ChangeRecord>>(json);
    round_trip::<PresenceUpdate>(json);
    round_trip::<PresenceEvent>(json);
    round_trip::<PresenceGet>(json);
    round_trip::<PresenceSnapshot>(json);
    round_trip::<RoomRequest>(json);
    round_trip::<RoomEvent>(json);
    round_trip::<ErrorPayload>(json);
    round_trip::<ResumeAck>(json);
    round_trip::<Hlc>(json);
}

/// The string forms: an HLC `"<ts>:<c>:<node>"` and a cursor `"<epoch>.<seq>"` read back as
/// the same value from their display form.
fn string_forms(text: &str) {
    if let Ok(hlc) = text.parse::<Hlc>() {
        let shown = hlc.to_string();
        assert_eq!(shown.parse::<Hlc>().as_ref(), Ok(&hlc), "HLC {shown}");
        // The string form inside JSON reads as the same HLC, and is written as an object.
        let quoted = serde_json::to_string(&shown).expect("a string encodes");
        let from_json: Hlc = serde_json::from_str(&quoted).expect("the string form decodes");
        assert_eq!(from_json, hlc);
        let object = serde_json::to_string(&hlc).expect("encodes");
        assert!(
            object.starts_with("{\"ts\":"),
            "HLCs are written as objects"
        );
    }
    if let Ok(cursor) = text.parse::<Cursor>() {
        assert_eq!(cursor.to_string().parse::<Cursor>(), Ok(cursor));
    }
}

fuzz_target!(|data: &[u8]| {
    match Frame::decode(Bytes::copy_from_slice(data), &DecodeLimits::default()) {
        Ok(frame) => {
            all_payloads(frame.raw_payload());
            if let Some(cursor) = frame.cursor() {
                string_forms(cursor);
            }
        }
        Err(_) => all_payloads(data),
    }
    if let Ok(text) = std::str::from_utf8(data) {
        string_forms(text);
    }
});
