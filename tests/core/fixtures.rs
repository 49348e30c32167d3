//! Golden wire fixtures: every file in `tests/fixtures/wire/` is one case, so adding a file
//! adds a test. See `tests/fixtures/wire/README.md` for the format.
//!
//! With `SYNCMUX_WRITE_FUZZ_CORPUS=1` the test also writes every fixture's input into
//! `fuzz/corpus/decode_frame/` (git-ignored) as the fuzzer's seed corpus; `fuzz/seed-corpus.sh`
//! does just that.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use syncmux::payload::{
    ChangeRecord, ErrorPayload, PresenceEvent, PresenceGet, PresenceSnapshot, PresenceUpdate,
    PullRequest, PullResponse, PushRequest, PushResponse, RawJson, ResumeAck, RoomEvent,
    RoomRequest, Subscribe, Unsubscribe,
};
use syncmux::wire::{DecodeError, DecodeErrorKind, DecodeLimits, Frame, IdKey, MessageType};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    /// What the case is about (for people; not checked).
    #[allow(dead_code)]
    about: String,
    /// The frame as text.
    input: Option<String>,
    /// The frame as hex, for bytes that are not UTF-8.
    input_hex: Option<String>,
    /// Deliver as a binary WebSocket frame.
    #[serde(default)]
    binary: bool,
    limits: Option<Limits>,
    expect: Option<Expect>,
    expect_error: Option<ExpectError>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Limits {
    max_frame_len: Option<usize>,
    max_depth: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    #[serde(rename = "type")]
    kind: String,
    id: Option<String>,
    id_key: Option<String>,
    cursor: Option<String>,
    /// The payload's exact text as sliced out of the frame.
    raw_payload: Option<String>,
    /// The typed payload to parse into (see `typed`).
    payload_type: Option<String>,
    /// The payload after the typed parse and re-serialisation (compared as minified text, so
    /// every number and key order counts).
    payload: Option<Box<RawValue>>,
    /// The typed parse fails with an `INVALID_PAYLOAD` whose message contains this.
    payload_error_contains: Option<String>,
    /// The exact bytes we emit when re-encoding the typed payload under the frame's id (or
    /// with its cursor, for `change` / `changes`).
    encoded: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectError {
    code: String,
    /// The `DecodeErrorKind` variant.
    kind: String,
    /// The id the error still carries (absent: none).
    id: Option<String>,
    id_key: Option<String>,
    message_contains: Option<String>,
    /// The exact `error` frame a server answers with: the code, the id under its key, and the
    /// error's message.
    error_frame: Option<String>,
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wire")
}

fn fixture_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixture_dir())
        .expect("tests/fixtures/wire exists")
        .map(|entry| entry.expect("readable directory").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_wire_fixture_holds() {
    let files = fixture_files();
    assert!(
        !files.is_empty(),
        "no fixtures in {}",
        fixture_dir().display()
    );
    let corpus = std::env::var_os("SYNCMUX_WRITE_FUZZ_CORPUS").map(|_| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode_frame");
        std::fs::create_dir_all(&dir).expect("corpus directory can be created");
        dir
    });
    let mut failures = String::new();
    for path in &files {
        let name = path.file_name().expect("a file").to_string_lossy();
        let outcome = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_str::<Fixture>(&text).map_err(|e| e.to_string()))
            .and_then(|fixture| {
                let input = input_bytes(&fixture)?;
                if let Some(dir) = &corpus {
                    std::fs::write(dir.join(name.trim_end_matches(".json")), &input)
                        .map_err(|e| e.to_string())?;
                }
                check(&fixture, input)
            });
        if let Err(why) = outcome {
            writeln!(failures, "{name}: {why}").expect("writing to a String");
        }
    }
    assert!(
        failures.is_empty(),
        "failing fixtures:\n{failures}({} fixtures in all)",
        files.len()
    );
}

fn input_bytes(fixture: &Fixture) -> Result<Vec<u8>, String> {
    match (&fixture.input, &fixture.input_hex) {
        (Some(text), None) => Ok(text.clone().into_bytes()),
        (None, Some(hex)) => unhex(hex),
        _ => Err("give exactly one of input and input_hex".into()),
    }
}

fn unhex(hex: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = hex.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    digits
        .chunks(2)
        .map(|pair| {
            u8::from_str_radix(std::str::from_utf8(pair).map_err(|e| e.to_string())?, 16)
                .map_err(|e| e.to_string())
        })
        .collect()
}

macro_rules! ensure {
    ($cond:expr, $($why:tt)*) => {
        if !$cond {
            return Err(format!($($why)*));
        }
    };
}

fn check(fixture: &Fixture, input: Vec<u8>) -> Result<(), String> {
    let mut limits = DecodeLimits::default();
    if let Some(l) = &fixture.limits {
        limits.max_frame_len = l.max_frame_len.unwrap_or(limits.max_frame_len);
        limits.max_depth = l.max_depth.unwrap_or(limits.max_depth);
    }
    let decoded = if fixture.binary {
        Err(DecodeError::binary())
    } else {
        Frame::decode(Bytes::from(input), &limits)
    };
    match (decoded, &fixture.expect, &fixture.expect_error) {
        (Ok(frame), Some(expect), None) => check_frame(&frame, expect),
        (Err(err), None, Some(expect)) => check_error(&err, expect),
        (Ok(frame), None, Some(_)) => Err(format!("decoded, expected an error: {frame:?}")),
        (Err(err), Some(_), None) => Err(format!("expected a frame, got {err:?}")),
        _ => Err("give exactly one of expect and expect_error".into()),
    }
}

fn key_name(key: IdKey) -> &'static str {
    key.as_str()
}

fn check_frame(frame: &Frame, expect: &Expect) -> Result<(), String> {
    ensure!(
        frame.kind().as_str() == expect.kind,
        "type {} != {}",
        frame.kind(),
        expect.kind
    );
    ensure!(
        frame.id().map(|id| id.as_str()) == expect.id.as_deref(),
        "id {:?} != {:?}",
        frame.id(),
        expect.id
    );
    if let Some(key) = &expect.id_key {
        let got = frame.id().map(|id| key_name(id.key()));
        ensure!(got == Some(key.as_str()), "id key {got:?} != {key}");
    }
    ensure!(
        frame.cursor() == expect.cursor.as_deref(),
        "cursor {:?} != {:?}",
        frame.cursor(),
        expect.cursor
    );
    if let Some(raw) = &expect.raw_payload {
        ensure!(
            frame.raw_payload() == raw.as_bytes(),
            "raw payload {:?} != {raw:?}",
            String::from_utf8_lossy(frame.raw_payload())
        );
    }
    let Some(payload_type) = &expect.payload_type else {
        ensure!(
            expect.payload.is_none()
                && expect.encoded.is_none()
                && expect.payload_error_contains.is_none(),
            "payload, encoded and payload_error_contains need a payload_type"
        );
        return Ok(());
    };
    match (typed(payload_type, frame)?, &expect.payload_error_contains) {
        (Ok((payload, encoded)), None) => {
            if let Some(want) = &expect.payload {
                let want = minify(want.get());
                ensure!(payload == want, "payload\n  got  {payload}\n  want {want}");
            }
            if let Some(want) = &expect.encoded {
                let got = String::from_utf8_lossy(&encoded);
                ensure!(*got == **want, "encoded\n  got  {got}\n  want {want}");
                // What we emit decodes back to the same envelope.
                let again = Frame::decode(encoded.clone(), &DecodeLimits::default())
                    .map_err(|e| format!("our own encoding does not decode: {e}"))?;
                ensure!(again.kind() == frame.kind(), "re-decoded type differs");
                ensure!(again.id() == frame.id(), "re-decoded id differs");
            }
            Ok(())
        }
        (Err(err), Some(want)) => {
            ensure!(
                err.code().as_str() == "INVALID_PAYLOAD",
                "payload error code {}",
                err.code()
            );
            ensure!(
                err.message().contains(want.as_str()),
                "payload error {:?} lacks {want:?}",
                err.message()
            );
            Ok(())
        }
        (Ok((payload, _)), Some(want)) => Err(format!(
            "payload parsed ({payload}), expected an error with {want:?}"
        )),
        (Err(err), None) => Err(format!("payload does not parse: {err}")),
    }
}

type Typed = Result<(String, Bytes), syncmux::wire::PayloadError>;

/// Parses the payload as `name`, and gives its re-serialisation and the frame re-encoded.
fn typed(name: &str, frame: &Frame) -> Result<Typed, String> {
    fn go<T: DeserializeOwned + Serialize>(frame: &Frame) -> Typed {
        let value: T = frame.payload()?;
        let json = serde_json::to_string(&value).expect("payload types serialise");
        let encoded = match frame.cursor() {
            Some(cursor) => Frame::encode_with_cursor(frame.kind(), Some(cursor), &value),
            None => Frame::encode(frame.kind(), frame.id(), &value),
        }
        .expect("payload types encode");
        Ok((json, encoded))
    }
    Ok(match name {
        "PullRequest" => go::<PullRequest>(frame),
        "PullResponse" => go::<PullResponse>(frame),
        "PushRequest" => go::<PushRequest>(frame),
        "PushResponse" => go::<PushResponse>(frame),
        "Subscribe" => go::<Subscribe>(frame),
        "Unsubscribe" => go::<Unsubscribe>(frame),
        "ChangeRecord" => go::<ChangeRecord>(frame),
        "Changes" => go::<Vec<ChangeRecord>>(frame),
        "PresenceUpdate" => go::<PresenceUpdate>(frame),
        "PresenceEvent" => go::<PresenceEvent>(frame),
        "PresenceGet" => go::<PresenceGet>(frame),
        "PresenceSnapshot" => go::<PresenceSnapshot>(frame),
        "RoomRequest" => go::<RoomRequest>(frame),
        "RoomEvent" => go::<RoomEvent>(frame),
        "ErrorPayload" => go::<ErrorPayload>(frame),
        "ResumeAck" => go::<ResumeAck>(frame),
        "RawJson" => go::<RawJson>(frame),
        "null" => go::<()>(frame),
        other => return Err(format!("unknown payload_type {other:?}")),
    })
}

fn kind_name(kind: &DecodeErrorKind) -> &'static str {
    match kind {
        DecodeErrorKind::TooLarge { .. } => "TooLarge",
        DecodeErrorKind::Binary => "Binary",
        DecodeErrorKind::NotUtf8 => "NotUtf8",
        DecodeErrorKind::NotJson(_) => "NotJson",
        DecodeErrorKind::NotObject => "NotObject",
        DecodeErrorKind::TooDeep { .. } => "TooDeep",
        DecodeErrorKind::MissingType => "MissingType",
        DecodeErrorKind::TypeNotString => "TypeNotString",
        DecodeErrorKind::IdNotString(_) => "IdNotString",
        DecodeErrorKind::IdConflict => "IdConflict",
        DecodeErrorKind::CursorNotString => "CursorNotString",
        DecodeErrorKind::UnknownType(_) => "UnknownType",
        _ => "a kind this test does not know",
    }
}

fn check_error(err: &DecodeError, expect: &ExpectError) -> Result<(), String> {
    ensure!(
        err.code().as_str() == expect.code,
        "code {} != {} ({err})",
        err.code(),
        expect.code
    );
    ensure!(
        kind_name(err.kind()) == expect.kind,
        "kind {:?} != {}",
        err.kind(),
        expect.kind
    );
    ensure!(
        err.id().map(|id| id.as_str()) == expect.id.as_deref(),
        "id {:?} != {:?}",
        err.id(),
        expect.id
    );
    if let Some(key) = &expect.id_key {
        let got = err.id().map(|id| key_name(id.key()));
        ensure!(got == Some(key.as_str()), "id key {got:?} != {key}");
    }
    if let Some(want) = &expect.message_contains {
        ensure!(
            err.to_string().contains(want.as_str()),
            "message {:?} lacks {want:?}",
            err.to_string()
        );
    }
    if let Some(want) = &expect.error_frame {
        let payload = ErrorPayload {
            code: err.code(),
            message: err.to_string(),
        };
        let frame = Frame::encode(MessageType::Error, err.id(), &payload).expect("errors encode");
        let got = String::from_utf8_lossy(&frame);
        ensure!(*got == **want, "error frame\n  got  {got}\n  want {want}");
    }
    Ok(())
}

/// JSON text without the whitespace between tokens (strings untouched).
fn minify(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for ch in json.chars() {
        if in_string {
            out.push(ch);
            match (escaped, ch) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if !ch.is_ascii_whitespace() {
            in_string = ch == '"';
            out.push(ch);
        }
    }
    out
}
