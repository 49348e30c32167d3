//! Frame decoding never panics, and whatever decodes re-encodes to a frame that decodes to the
//! same envelope.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use syncmux::payload::RawJson;
use syncmux::wire::{DecodeLimits, Frame};

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits::default();
    let Ok(frame) = Frame::decode(Bytes::copy_from_slice(data), &limits) else {
        return;
    };
    let raw = String::from_utf8(frame.raw_payload().to_vec()).expect("decoded payload is UTF-8");
    let payload = RawJson::from_string(raw).expect("decoded payload is JSON");
    let again = Frame::encode(frame.kind(), frame.id(), &payload).expect("raw payloads encode");
    let back = Frame::decode(again, &limits).expect("what we encode decodes");
    assert_eq!(back.kind(), frame.kind());
    assert_eq!(back.id(), frame.id());
    assert_eq!(back.raw_payload(), frame.raw_payload());
});
