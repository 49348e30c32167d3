//! The envelope codec (docs/protocol.md section 4).
//!
//! Decoding reads only the envelope — `type`, `id` / `request_id`, the top-level `cursor` —
//! and keeps the payload as a zero-copy slice of the frame's bytes; the payload is parsed into
//! a typed value only when someone asks for it ([`Frame::payload`]). Encoding writes the
//! envelope and serialises the payload straight into one buffer, never through a
//! `serde_json::Value`.

use core::fmt;
use std::borrow::Cow;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::error::{DecodeError, DecodeErrorKind, PayloadError};

macro_rules! message_types {
    ($($(#[$doc:meta])* $variant:ident => $wire:literal,)*) => {
        /// The `type` of a frame: every message of docs/protocol.md section 4.
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
        pub enum MessageType {
            $($(#[$doc])* $variant,)*
        }

        impl MessageType {
            /// Every message type, in the order of the table in docs/protocol.md section 4.
            pub const ALL: &'static [MessageType] = &[$(MessageType::$variant,)*];

            /// The wire name.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(MessageType::$variant => $wire,)*
                }
            }

            /// Parses a wire name; `None` for a name this version does not know.
            pub fn from_wire(name: &str) -> Option<MessageType> {
                match name {
                    $($wire => Some(MessageType::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

message_types! {
    /// Client → server: changes of some tables since an HLC or cursor.
    PullRequest => "pull_request",
    /// Server → client: the answer to a `pull_request`.
    PullResponse => "pull_response",
    /// Client → server: changes to merge.
    PushRequest => "push_request",
    /// Server → client: the answer to a `push_request`.
    PushResponse => "push_response",
    /// Client → server: add tables to the session's live set.
    Subscribe => "subscribe",
    /// Client → server: remove tables from the session's live set.
    Unsubscribe => "unsubscribe",
    /// Server → client: one live change.
    Change => "change",
    /// Server → client: a batch of live changes.
    Changes => "changes",
    /// Client → server: join, update or leave (`data: null`) a presence topic.
    PresenceUpdate => "presence_update",
    /// Server → client: a member of a topic joined, updated or left.
    PresenceEvent => "presence_event",
    /// Client → server: ask for a topic's members.
    PresenceGet => "presence_get",
    /// Server → client: the answer to a `presence_get`.
    PresenceSnapshot => "presence_snapshot",
    /// Both ways: room actions (client) and room events (server).
    Room => "room",
    /// Server → client: a typed error.
    Error => "error",
    /// Server → client: a request without a response payload took effect.
    Ack => "ack",
    /// Both ways: keepalive probe.
    Ping => "ping",
    /// Both ways: keepalive answer.
    Pong => "pong",
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which envelope key carried a request id. A reply echoes the id under the same key
/// (the seed's Go peers say `request_id`, everyone else `id`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub enum IdKey {
    /// `"id"`.
    #[default]
    Id,
    /// `"request_id"`.
    RequestId,
}

impl IdKey {
    /// The key as written on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            IdKey::Id => "id",
            IdKey::RequestId => "request_id",
        }
    }
}

/// A request id as it travels: its value and the key it came under.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct FrameId {
    key: IdKey,
    value: Box<str>,
}

impl FrameId {
    /// An id sent under the `id` key.
    pub fn new(value: impl Into<Box<str>>) -> Self {
        FrameId {
            key: IdKey::Id,
            value: value.into(),
        }
    }

    /// An id sent under the given key.
    pub fn with_key(key: IdKey, value: impl Into<Box<str>>) -> Self {
        FrameId {
            key,
            value: value.into(),
        }
    }

    /// The key it came under.
    pub fn key(&self) -> IdKey {
        self.key
    }

    /// The id itself.
    pub fn as_str(&self) -> &str {
        &self.value
    }
}

impl fmt::Display for FrameId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}

/// Limits applied while decoding, before any payload is parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DecodeLimits {
    /// Longest frame accepted, in bytes; longer frames are refused before parsing with
    /// `FRAME_TOO_LARGE`. Default 1 MiB (docs/protocol.md section 10); 0 disables the check.
    pub max_frame_len: usize,
    /// Deepest nesting of arrays and objects accepted (the envelope object counts as 1).
    /// Default 64. 0 turns the check off: decoding stays stack-safe at any depth (it never
    /// recurses into the payload), and parsing a payload into a typed value then stops at
    /// serde_json's own limit of 128.
    pub max_depth: usize,
}

impl DecodeLimits {
    /// The defaults: 1 MiB frames, depth 64.
    pub const DEFAULT: DecodeLimits = DecodeLimits {
        max_frame_len: 1 << 20,
        max_depth: 64,
    };

    /// Limits with the given maximum frame length and the default depth.
    pub const fn with_max_frame_len(max_frame_len: usize) -> Self {
        DecodeLimits {
            max_frame_len,
            max_depth: DecodeLimits::DEFAULT.max_depth,
        }
    }
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits::DEFAULT
    }
}

/// A decoded frame: the envelope, with the payload still raw JSON.
///
/// Two frames are equal when they have the same type, id (and id key), cursor and payload
/// text; an absent payload equals `null`, as on the wire (docs/protocol.md section 4).
#[derive(Clone, Debug)]
pub struct Frame {
    kind: MessageType,
    id: Option<FrameId>,
    cursor: Option<Box<str>>,
    /// The payload's JSON text, sliced out of the frame without copying; empty when absent.
    payload: Bytes,
}

impl PartialEq for Frame {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
            && self.id == other.id
            && self.cursor == other.cursor
            && self.raw_payload() == other.raw_payload()
    }
}

impl Eq for Frame {}

impl Frame {
    /// The message type.
    pub fn kind(&self) -> MessageType {
        self.kind
    }

    /// The request id, with the key it came under.
    pub fn id(&self) -> Option<&FrameId> {
        self.id.as_ref()
    }

    /// Takes the id out of the frame.
    pub fn take_id(&mut self) -> Option<FrameId> {
        self.id.take()
    }

    /// The top-level `cursor` (set by the server on `change` / `changes`).
    pub fn cursor(&self) -> Option<&str> {
        self.cursor.as_deref()
    }

    /// The payload's raw JSON text; `null` when the frame had none.
    pub fn raw_payload(&self) -> &[u8] {
        if self.payload.is_empty() {
            b"null"
        } else {
            &self.payload
        }
    }

    /// Whether the payload is absent or `null`.
    pub fn payload_is_null(&self) -> bool {
        self.raw_payload() == b"null"
    }

    /// Parses the payload into `T`. The error names the offending field by its path.
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T, PayloadError> {
        Frame::parse_payload(self.raw_payload())
    }
}

/// The codec: text frames in and out.
impl Frame {
    /// The WebSocket subprotocol these frames travel under, the name of this protocol
    /// version (docs/protocol.md section 4): clients offer it, servers select it.
    pub const SUBPROTOCOL: &'static str = "syncmux.v1";

    /// Parses JSON text into `T`, naming the offending field by its path on failure: the
    /// parser behind [`Frame::payload`] and [`RawJson::parse`](crate::payload::RawJson::parse),
    /// for JSON that did not come in a frame.
    ///
    /// Tracking the path costs about as much as the parse itself, so it is paid only on the
    /// error path: a payload that fails is parsed a second time, with the path tracked.
    ///
    /// Parsing from `&str` rather than bytes spares serde_json a UTF-8 check per string (a
    /// change record has seven): one check of the whole text is cheaper, and a payload sliced
    /// out of a decoded frame always passes it.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn parse_payload<T: DeserializeOwned>(json: &[u8]) -> Result<T, PayloadError> {
        let text = payload_text(json)?;
        let plain = match serde_json::from_str(text) {
            Ok(value) => return Ok(value),
            Err(e) => e,
        };
        let mut de = serde_json::Deserializer::from_str(text);
        match serde_path_to_error::deserialize::<_, T>(&mut de) {
            Err(e) => Err(payload_error(e)),
            // The value parsed, so what failed is what follows it.
            Ok(_) => Err(PayloadError::new(format!("payload: {plain}"))),
        }
    }

    /// Parses JSON text into `T`. On wasm32 without the field path: tracking it puts a second
    /// copy of every payload's deserializer in the browser client's `.wasm` (some 20 KiB).
    /// serde_json's own message still names a missing or unknown field, and otherwise gives
    /// the column.
    #[cfg(target_arch = "wasm32")]
    pub fn parse_payload<T: DeserializeOwned>(json: &[u8]) -> Result<T, PayloadError> {
        serde_json::from_str(payload_text(json)?)
            .map_err(|e| PayloadError::new(format!("payload: {e}")))
    }

    /// Decodes one text frame.
    ///
    /// Checks, in order: size (before any parsing), UTF-8, JSON object, nesting depth, the id
    /// (`id` / `request_id`), `type`, `cursor`. Failures after the id was read carry it.
    ///
    /// ```
    /// use syncmux::wire::{DecodeLimits, Frame, IdKey, MessageType};
    ///
    /// let frame = Frame::decode(
    ///     br#"{"type":"pull_request","request_id":"7","payload":{"tables":["docs"]}}"#[..].into(),
    ///     &DecodeLimits::default(),
    /// )
    /// .unwrap();
    /// assert_eq!(frame.kind(), MessageType::PullRequest);
    /// assert_eq!(frame.id().unwrap().key(), IdKey::RequestId);
    /// assert_eq!(frame.raw_payload(), br#"{"tables":["docs"]}"#);
    /// ```
    pub fn decode(bytes: Bytes, limits: &DecodeLimits) -> Result<Frame, DecodeError> {
        let fail = |kind| DecodeError::new(kind, None);
        if limits.max_frame_len != 0 && bytes.len() > limits.max_frame_len {
            return Err(fail(DecodeErrorKind::TooLarge {
                len: bytes.len(),
                max: limits.max_frame_len,
            }));
        }
        let text = match core::str::from_utf8(&bytes) {
            Ok(text) => text,
            Err(_) => {
                // Report the id if it can be read once the bad bytes are replaced.
                let id = salvage_id(&String::from_utf8_lossy(&bytes));
                return Err(DecodeError::new(DecodeErrorKind::NotUtf8, id));
            }
        };
        if text.trim_start().as_bytes().first() != Some(&b'{') {
            return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                Ok(_) => fail(DecodeErrorKind::NotObject),
                Err(e) => fail(not_json(&e, limits)),
            });
        }
        let env: RawEnvelope<'_> = match serde_json::from_str(text) {
            Ok(env) => env,
            Err(e) => {
                return Err(DecodeError::new(not_json(&e, limits), salvage_id(text)));
            }
        };
        let id = read_id(&env).map_err(fail)?;
        let fail = |kind| DecodeError::new(kind, id.clone());
        if limits.max_depth != 0 && exceeds_depth(text.as_bytes(), limits.max_depth) {
            return Err(fail(DecodeErrorKind::TooDeep {
                max: limits.max_depth,
            }));
        }
        let kind = match env.kind {
            None => return Err(fail(DecodeErrorKind::MissingType)),
            Some(raw) => match json_str(raw) {
                Some(name) => match MessageType::from_wire(&name) {
                    Some(kind) => kind,
                    None => return Err(fail(DecodeErrorKind::UnknownType(name.into_owned()))),
                },
                None => return Err(fail(DecodeErrorKind::TypeNotString)),
            },
        };
        // `cursor` is part of the envelope of `change` / `changes` only (docs/protocol.md section 5);
        // on any other type it is an unknown top-level field, and those are ignored (section 2).
        let cursor = match env.cursor.map(json_str) {
            None => None,
            Some(Some(cursor)) => Some(cursor.into()),
            Some(None) if matches!(kind, MessageType::Change | MessageType::Changes) => {
                return Err(fail(DecodeErrorKind::CursorNotString));
            }
            Some(None) => None,
        };
        let payload = match env.payload {
            Some(raw) => bytes.slice_ref(raw.get().as_bytes()),
            None => Bytes::new(),
        };
        Ok(Frame {
            kind,
            id,
            cursor,
            payload,
        })
    }

    /// Encodes a frame: `{"type":…,"id":…,"payload":…}`, with the id under the key it came with.
    ///
    /// A payload that serialises to `null` is left out (absent means `null`).
    ///
    /// ```
    /// use syncmux::wire::{Frame, FrameId, IdKey, MessageType};
    ///
    /// let id = FrameId::with_key(IdKey::RequestId, "7");
    /// let bytes = Frame::encode(MessageType::Ack, Some(&id), &()).unwrap();
    /// assert_eq!(&bytes[..], br#"{"type":"ack","request_id":"7"}"#);
    /// ```
    pub fn encode<P: Serialize + ?Sized>(
        kind: MessageType,
        id: Option<&FrameId>,
        payload: &P,
    ) -> Result<Bytes, PayloadError> {
        encode_frame(kind, id, None, payload)
    }

    /// Encodes a `change` or `changes` frame with its top-level `cursor` (docs/protocol.md section 5).
    ///
    /// ```
    /// use syncmux::wire::{Frame, MessageType};
    ///
    /// let bytes = Frame::encode_with_cursor(MessageType::Changes, Some("3.17"), &[0u8; 0]).unwrap();
    /// assert_eq!(&bytes[..], br#"{"type":"changes","cursor":"3.17","payload":[]}"#);
    /// ```
    pub fn encode_with_cursor<P: Serialize + ?Sized>(
        kind: MessageType,
        cursor: Option<&str>,
        payload: &P,
    ) -> Result<Bytes, PayloadError> {
        encode_frame(kind, None, cursor, payload)
    }
}

/// The payload as text (always, when it was sliced out of a decoded frame).
fn payload_text(json: &[u8]) -> Result<&str, PayloadError> {
    core::str::from_utf8(json).map_err(|e| PayloadError::new(format!("payload: not UTF-8: {e}")))
}

#[cfg(not(target_arch = "wasm32"))]
fn payload_error(e: serde_path_to_error::Error<serde_json::Error>) -> PayloadError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    // serde_json appends " at line L column C"; the field path says more to a peer.
    let mut message = inner.to_string();
    if let Some(at) = message.rfind(" at line ") {
        message.truncate(at);
    }
    if path == "." {
        PayloadError::new(format!("payload: {message}"))
    } else {
        PayloadError::new(format!("payload.{path}: {message}"))
    }
}

/// The envelope as serde sees it: every known key as borrowed raw JSON, so that reading it
/// allocates nothing and a wrongly typed field can be reported precisely.
#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    request_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    cursor: Option<&'a RawValue>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

fn not_json(e: &serde_json::Error, limits: &DecodeLimits) -> DecodeErrorKind {
    let mut message = e.to_string();
    // serde_json has no error category for its own nesting limit (128), only this message.
    if message.starts_with("recursion limit exceeded") {
        let max = match limits.max_depth {
            0 => SERDE_JSON_MAX_DEPTH,
            max => max.min(SERDE_JSON_MAX_DEPTH),
        };
        return DecodeErrorKind::TooDeep { max };
    }
    if let Some(at) = message.rfind(" at line ") {
        message.truncate(at);
    }
    DecodeErrorKind::NotJson(message)
}

/// serde_json's fixed recursion limit.
const SERDE_JSON_MAX_DEPTH: usize = 128;

/// Reads `id` / `request_id` from a frame that failed to parse as a whole (truncated, trailing
/// garbage, a duplicate key, ...), so that the `INVALID_FRAME` answer can still echo the id
/// (docs/protocol.md section 4): the object's keys are read in order until the parse fails, and the
/// ids seen before that point count, under the same rules as in a valid frame.
fn salvage_id(text: &str) -> Option<FrameId> {
    let mut env = RawEnvelope {
        kind: None,
        id: None,
        request_id: None,
        cursor: None,
        payload: None,
    };
    let mut de = serde_json::Deserializer::from_str(text);
    // The parse is expected to fail; only what it read before failing matters.
    let _ = serde::de::DeserializeSeed::deserialize(SalvageIds(&mut env), &mut de);
    read_id(&env).ok().flatten()
}

/// Records `id` and `request_id` into an envelope as they are read (see [`salvage_id`]).
struct SalvageIds<'s, 'a>(&'s mut RawEnvelope<'a>);

impl<'de> serde::de::DeserializeSeed<'de> for SalvageIds<'_, 'de> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for SalvageIds<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a frame object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match &*key {
                "id" => self.0.id = map.next_value()?,
                "request_id" => self.0.request_id = map.next_value()?,
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// Reads `id` / `request_id` (a JSON `null` counts as absent).
fn read_id(env: &RawEnvelope<'_>) -> Result<Option<FrameId>, DecodeErrorKind> {
    let read = |raw: Option<&RawValue>, key: IdKey| match raw {
        None => Ok(None),
        Some(raw) => match json_str(raw) {
            Some(value) => Ok(Some(FrameId::with_key(key, value))),
            None => Err(DecodeErrorKind::IdNotString(key.as_str())),
        },
    };
    let id = read(env.id, IdKey::Id)?;
    let request_id = read(env.request_id, IdKey::RequestId)?;
    match (id, request_id) {
        (Some(id), Some(request_id)) if id.value != request_id.value => {
            Err(DecodeErrorKind::IdConflict)
        }
        (Some(id), _) => Ok(Some(id)),
        (None, request_id) => Ok(request_id),
    }
}

/// The string a raw JSON value holds, unescaped; `None` if it is not a string.
fn json_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    if !text.starts_with('"') {
        return None;
    }
    serde_json::from_str::<Cow<'_, str>>(text).ok()
}

/// Whether JSON text nests arrays and objects deeper than `max`.
///
/// Written by hand because serde_json's recursion limit is a fixed 128 and cannot be
/// configured (and its skipping of raw values, which decoding uses, does not count depth).
/// It is one linear pass with no recursion, so no input can exhaust the stack. The input is
/// already known to be valid JSON, so the only question per byte is whether it is a bracket
/// outside a string.
///
/// It runs on every frame after serde_json's validating pass, so it is kept cheap: it reads
/// eight bytes at a time and finds quotes, backslashes and brackets with word arithmetic
/// (no `unsafe`, no SIMD intrinsics); string contents are masked out with a prefix XOR of the
/// unescaped quotes, and only the brackets left over, which are sparse, are visited one by one.
/// A change batch is mostly quotes and string bytes, too dense for `memchr` to pay off.
fn exceeds_depth(json: &[u8], max: usize) -> bool {
    let mut scan = DepthScan {
        depth: 0,
        max,
        in_string: false,
        escape_next: false,
    };
    let mut words = json.chunks_exact(8);
    for word in &mut words {
        let word = u64::from_le_bytes(word.try_into().expect("invariant: chunks of 8"));
        if scan.word(word) {
            return true;
        }
    }
    let tail = words.remainder();
    if tail.is_empty() {
        return false;
    }
    // Pad with spaces: outside a string they mean nothing, inside one they are plain bytes.
    let mut last = [b' '; 8];
    last[..tail.len()].copy_from_slice(tail);
    scan.word(u64::from_le_bytes(last))
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of every byte of `word` that equals `byte` (exact: no carries between bytes).
#[inline(always)]
fn bytes_equal(word: u64, byte: u8) -> u64 {
    let x = word ^ (ONES * u64::from(byte));
    !(((x & !HIGHS) + !HIGHS) | x) & HIGHS
}

/// The state of [`exceeds_depth`] between eight-byte words.
struct DepthScan {
    depth: usize,
    max: usize,
    /// The previous word ended inside a string.
    in_string: bool,
    /// The previous word ended with a backslash that escapes this word's first byte.
    escape_next: bool,
}

impl DepthScan {
    /// Feeds one word (bytes in little-endian order); true once the depth exceeds the maximum.
    #[inline(always)]
    fn word(&mut self, word: u64) -> bool {
        let quotes = bytes_equal(word, b'"');
        let backslashes = bytes_equal(word, b'\\');
        // '[' | 0x20 == '{' and ']' | 0x20 == '}', and no other bytes map onto those.
        let folded = word | (ONES * 0x20);
        let opens = bytes_equal(folded, b'{');
        let closes = bytes_equal(folded, b'}');
        if quotes | backslashes | opens | closes == 0 && !self.escape_next {
            // Nothing here changes the state: string bytes, digits, punctuation.
            return false;
        }
        // Escaped bytes: walk the backslashes in order (they are rare); an escaped backslash
        // escapes nothing.
        let mut escaped = if self.escape_next { 0x80 } else { 0 };
        self.escape_next = false;
        let mut pending = backslashes & !escaped;
        while pending != 0 {
            let bit = pending & pending.wrapping_neg();
            let next = bit << 8;
            if next == 0 {
                self.escape_next = true;
            }
            escaped |= next;
            pending &= !(bit | next);
        }
        // Inside-string mask: bit of byte k set when an odd number of unescaped quotes sits at
        // bytes 0..=k (prefix XOR over the bytes' high bits), flipped if we entered inside one.
        let mut inside = quotes & !escaped;
        inside ^= inside << 8;
        inside ^= inside << 16;
        inside ^= inside << 32;
        if self.in_string {
            inside = !inside & HIGHS;
        }
        self.in_string = inside >> 63 == 1;
        let mut brackets = (opens | closes) & !inside;
        while brackets != 0 {
            let bit = brackets & brackets.wrapping_neg();
            if opens & bit != 0 {
                self.depth += 1;
                if self.depth > self.max {
                    return true;
                }
            } else {
                self.depth = self.depth.saturating_sub(1);
            }
            brackets &= !bit;
        }
        false
    }
}

fn encode_frame<P: Serialize + ?Sized>(
    kind: MessageType,
    id: Option<&FrameId>,
    cursor: Option<&str>,
    payload: &P,
) -> Result<Bytes, PayloadError> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"{\"type\":\"");
    // Type names are plain ASCII identifiers: nothing to escape.
    out.extend_from_slice(kind.as_str().as_bytes());
    out.push(b'"');
    if let Some(id) = id {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(id.key.as_str().as_bytes());
        out.extend_from_slice(b"\":");
        serde_json::to_writer(&mut out, id.as_str()).map_err(unencodable)?;
    }
    if let Some(cursor) = cursor {
        out.extend_from_slice(b",\"cursor\":");
        serde_json::to_writer(&mut out, cursor).map_err(unencodable)?;
    }
    let before_payload = out.len();
    out.extend_from_slice(b",\"payload\":");
    let payload_start = out.len();
    serde_json::to_writer(&mut out, payload).map_err(unencodable)?;
    if &out[payload_start..] == b"null" {
        out.truncate(before_payload);
    }
    out.push(b'}');
    Ok(Bytes::from(out))
}

/// Only a caller's `Serialize` impl can fail: writing into a `Vec` cannot.
fn unencodable(e: serde_json::Error) -> PayloadError {
    PayloadError::new(format!("cannot encode: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ErrorCode;

    fn dec(s: &str) -> Result<Frame, DecodeError> {
        Frame::decode(
            Bytes::copy_from_slice(s.as_bytes()),
            &DecodeLimits::default(),
        )
    }

    #[test]
    fn payload_is_a_zero_copy_slice() {
        let bytes = Bytes::from_static(br#"{"type":"ping","payload":{"a":[1,2]}}"#);
        let frame = Frame::decode(bytes.clone(), &DecodeLimits::default()).unwrap();
        assert_eq!(frame.raw_payload(), br#"{"a":[1,2]}"#);
        let start = frame.payload.as_ptr() as usize - bytes.as_ptr() as usize;
        assert_eq!(start, 25);
    }

    #[test]
    fn escaped_type_and_id_are_unescaped() {
        let frame = dec(r#"{"type":"pull\u005frequest","id":"a\"b"}"#).unwrap();
        assert_eq!(frame.kind(), MessageType::PullRequest);
        assert_eq!(frame.id().unwrap().as_str(), "a\"b");
        let out = Frame::encode(MessageType::Ack, frame.id(), &()).unwrap();
        assert_eq!(&out[..], br#"{"type":"ack","id":"a\"b"}"#);
    }

    #[test]
    fn errors_keep_the_id_when_readable() {
        let err = dec(r#"{"id":"9","payload":1}"#).unwrap_err();
        assert_eq!(err.kind(), &DecodeErrorKind::MissingType);
        assert_eq!(err.id().unwrap().as_str(), "9");
        let err = dec(r#"{"type":"nope","request_id":"x"}"#).unwrap_err();
        assert_eq!(err.code(), ErrorCode::UnknownType);
        assert_eq!(err.id().unwrap().key(), IdKey::RequestId);
        let err = Frame::decode(
            Bytes::from_static(b"{\"type\":\"ping\",\"id\":\"5\",\"payload\":\"\xff\"}"),
            &DecodeLimits::default(),
        )
        .unwrap_err();
        assert_eq!(err.kind(), &DecodeErrorKind::NotUtf8);
        assert_eq!(err.id().unwrap().as_str(), "5");
    }

    #[test]
    fn broken_frames_still_report_an_id_read_before_the_break() {
        let err = dec(r#"{"type":"push_request","id":"7","payload":{"changes":["#).unwrap_err();
        assert!(matches!(err.kind(), DecodeErrorKind::NotJson(_)));
        assert_eq!(err.id(), Some(&FrameId::new("7")));
        let err = dec(r#"{"request_id":"8","type":"ping","type":"pong"}"#).unwrap_err();
        assert_eq!(err.id(), Some(&FrameId::with_key(IdKey::RequestId, "8")));
        // Under the rules of a valid frame: conflicting ids report none.
        let err = dec(r#"{"id":"1","request_id":"2","type":"#).unwrap_err();
        assert_eq!(err.id(), None);
    }

    #[test]
    fn cursor_is_envelope_only_on_change_frames() {
        assert_eq!(dec(r#"{"type":"ping","cursor":5}"#).unwrap().cursor(), None);
        let err = dec(r#"{"type":"change","cursor":5,"payload":{}}"#).unwrap_err();
        assert_eq!(err.kind(), &DecodeErrorKind::CursorNotString);
    }

    #[test]
    fn absent_and_null_payloads_are_equal() {
        let absent = dec(r#"{"type":"ack","id":"1"}"#).unwrap();
        let null = dec(r#"{"type":"ack","id":"1","payload":null}"#).unwrap();
        assert_eq!(absent, null);
        assert_ne!(
            absent,
            dec(r#"{"type":"ack","id":"1","payload":0}"#).unwrap()
        );
    }

    #[test]
    fn depth_is_limited_without_recursion() {
        let deep = format!(
            r#"{{"type":"ping","payload":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let err = dec(&deep).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidFrame);
        assert!(matches!(err.kind(), DecodeErrorKind::TooDeep { .. }));
        let ok = format!(
            r#"{{"type":"ping","payload":"[[[[","x":{}{}}}"#,
            "[".repeat(63),
            "]".repeat(63)
        );
        dec(&ok).unwrap();
        let too_deep = format!(
            r#"{{"type":"ping","id":"d","x":{}{}}}"#,
            "[".repeat(64),
            "]".repeat(64)
        );
        let err = dec(&too_deep).unwrap_err();
        assert_eq!(err.kind(), &DecodeErrorKind::TooDeep { max: 64 });
        assert_eq!(err.id().unwrap().as_str(), "d");
    }

    /// The obvious byte-at-a-time scan, as the oracle for the word-at-a-time one.
    fn exceeds_depth_reference(json: &[u8], max: usize) -> bool {
        let (mut depth, mut i) = (0usize, 0);
        while i < json.len() {
            match json[i] {
                b'"' => {
                    i += 1;
                    while i < json.len() && json[i] != b'"' {
                        i += if json[i] == b'\\' { 2 } else { 1 };
                    }
                }
                b'{' | b'[' => {
                    depth += 1;
                    if depth > max {
                        return true;
                    }
                }
                b'}' | b']' => depth = depth.saturating_sub(1),
                _ => {}
            }
            i += 1;
        }
        false
    }

    /// Text made of brackets, commas and complete strings full of escapes, so that quotes,
    /// backslashes and brackets land on every offset within a word. (Backslashes appear only
    /// inside strings, as in any valid JSON; brackets need not balance.)
    fn depth_text() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let piece = prop_oneof![
            Just(&b"["[..]),
            Just(&b"]"[..]),
            Just(&b"{"[..]),
            Just(&b"}"[..]),
            Just(&b","[..]),
            Just(&b"\"\""[..]),
            Just(&b"\"\\\\\""[..]),
            Just(&b"\"a\\\"b\""[..]),
            Just(&b"\"\\\\\\\\\\\"\""[..]),
            Just(&b"\"[{\\\"}]\""[..]),
            Just(&b"\"\\u00e9\\n]\""[..]),
            Just("\"\u{e9} ab\"".as_bytes()),
        ];
        proptest::collection::vec(piece, 0..80).prop_map(|p| p.concat())
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(512))]
        #[test]
        fn word_depth_scan_agrees_with_the_byte_scan(text in depth_text(), max in 0usize..12) {
            proptest::prop_assert_eq!(
                exceeds_depth(&text, max),
                exceeds_depth_reference(&text, max)
            );
        }

        #[test]
        fn word_depth_scan_agrees_on_valid_json(value in arbitrary_json(), max in 0usize..8) {
            let text = serde_json::to_vec(&value).unwrap();
            proptest::prop_assert_eq!(
                exceeds_depth(&text, max),
                exceeds_depth_reference(&text, max)
            );
        }
    }

    fn arbitrary_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            "[\\\\\"\\[\\]{}a-z\u{e9}]{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(10, 64, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                proptest::collection::btree_map("[\\\\\"{}a-z]{0,6}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    #[test]
    fn too_large_is_refused_before_parsing() {
        let limits = DecodeLimits::with_max_frame_len(10);
        let err = Frame::decode(Bytes::from_static(b"not even json at all"), &limits).unwrap_err();
        assert_eq!(err.kind(), &DecodeErrorKind::TooLarge { len: 20, max: 10 });
        assert_eq!(err.code(), ErrorCode::FrameTooLarge);
    }

    #[test]
    fn payload_errors_name_the_field() {
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct P {
            tables: Vec<String>,
        }
        let frame =
            dec(r#"{"type":"pull_request","id":"1","payload":{"tables":["a",2]}}"#).unwrap();
        let err = frame.payload::<P>().unwrap_err();
        assert!(err.message().starts_with("payload.tables[1]: "), "{err}");
        let frame = dec(r#"{"type":"pull_request","id":"1"}"#).unwrap();
        let err = frame.payload::<P>().unwrap_err();
        assert!(
            err.message().starts_with("payload: invalid type: null"),
            "{err}"
        );
    }
}
