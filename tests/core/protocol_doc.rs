//! Keeps `docs/protocol.md`, the protocol reference for client authors, in step with the code:
//! a code, a message type or an example the code no longer agrees with fails here.
//!
//! What is checked:
//!
//! - Every [`ErrorCode::KNOWN`] and [`CloseCode::KNOWN`] value has a row of its own in a table of
//!   the document: a line that starts with ``| `CODE` |``.
//! - Every [`MessageType`] name appears (in backticks) and has at least one example frame, and
//!   the examples together show every form of a message that has several (each room action and
//!   event, each presence event, both kinds of `ack`, `change` / `changes` with and without a
//!   cursor, ...; see [`REQUIRED_FORMS`]).
//! - Fenced blocks, by their info string (the first word stays the language, so renderers still
//!   highlight them):
//!   - ```` ```json ````: exactly one frame. It must decode with the crate's codec
//!     ([`syncmux::wire::Frame::decode`], default limits); its payload must parse as the payload type of
//!     its message type, and that typed payload, written back, must have the same fields with the
//!     same values (so a misspelt or invented field fails too; the only leniency is that a string
//!     HLC may come back as an object). Ids and top-level cursors must be where the protocol puts
//!     them.
//!   - ```` ```json hlc ````: one HLC, either form.
//!   - ```` ```json record ````: one change record, checked like a frame's payload.
//!   - ```` ```json fragment ````: any JSON value; only its syntax is checked.
//!   - ```` ```text transcript ````: a session transcript. Each line is blank, a `#` comment,
//!     `<who> >> <frame>` (sent to the server) or `<who> << <frame>` (received from it); every
//!     frame is checked as a ```` ```json ```` block, and its type must be one that direction
//!     carries.
//!   - Any other fence (```` ```http ````, unlabelled, ...) is not checked. A `json` fence with
//!     another second word fails, so a typo cannot skip the checks silently.

use std::collections::BTreeSet;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use syncmux::payload::{
    ChangeRecord, ErrorPayload, Hlc, PresenceEvent, PresenceEventKind, PresenceGet,
    PresenceSnapshot, PresenceUpdate, PullRequest, PullResponse, PushRequest, PushResponse,
    RawJson, ResumeAck, RoomAction, RoomEvent, RoomEventKind, RoomRequest, Subscribe, Unsubscribe,
};
use syncmux::wire::{CloseCode, DecodeLimits, ErrorCode, Frame, IdKey, MessageType};

const DOC: &str = include_str!("../../docs/protocol.md");
const DOC_PATH: &str = "docs/protocol.md";

/// Payload fields the protocol defines that the crate's payload types do not carry yet, so they do
/// not survive the typed round trip: `(message type, field path)`. They may be absent from the
/// re-encoding; nothing else may. Drop an entry once its type carries the field.
const AHEAD_OF_CODE: &[(MessageType, &str)] = &[];

/// Forms the examples must show between them, besides one frame of every message type (see
/// [`Forms`] for how a frame is labelled).
const REQUIRED_FORMS: &[&str] = &[
    "id_key:request_id",
    "change+cursor",
    "changes+cursor",
    "changes-no-cursor",
    "pull_response:recovered",
    "ack:null",
    "ack:resume",
    "ack:recovered=false",
    "presence_update:join-or-update",
    "presence_update:leave",
    "error:SYNC_VERSION_MISMATCH",
];

#[test]
fn every_error_and_close_code_has_a_row() {
    let mut missing = Vec::new();
    let codes = ErrorCode::KNOWN.iter().map(|c| c.as_str().to_owned());
    let closes = CloseCode::KNOWN.iter().map(|c| c.0.to_string());
    for code in codes.chain(closes) {
        let row = format!("| `{code}` |");
        if !DOC.lines().any(|line| line.trim_start().starts_with(&row)) {
            missing.push(code);
        }
    }
    assert!(
        missing.is_empty(),
        "{DOC_PATH} has no table row (a line starting with \"| `CODE` |\") for: {}",
        missing.join(", ")
    );
}

#[test]
fn every_message_type_is_named_and_shown_in_all_its_forms() {
    let mut problems = Vec::new();
    for kind in MessageType::ALL {
        if !DOC.contains(&format!("`{kind}`")) {
            problems.push(format!("message type `{kind}` is never named"));
        }
    }
    let subprotocol = Frame::SUBPROTOCOL;
    if !DOC.contains(&format!("`{subprotocol}`")) {
        problems.push(format!("the subprotocol `{subprotocol}` is never named"));
    }
    let mut forms = Forms::default();
    check_blocks(&mut forms);
    let mut required: Vec<String> = REQUIRED_FORMS.iter().map(|f| f.to_string()).collect();
    required.extend(MessageType::ALL.iter().map(|k| k.to_string()));
    for action in ALL_ROOM_ACTIONS {
        required.push(format!("room:action:{}", label(&action)));
    }
    for event in ALL_ROOM_EVENTS {
        required.push(format!("room:event:{}", label(&event)));
    }
    for event in ALL_PRESENCE_EVENTS {
        required.push(format!("presence_event:{}", label(&event)));
    }
    for form in required {
        if !forms.seen.contains(&form) {
            problems.push(format!("no example frame shows the form {form:?}"));
        }
    }
    assert!(problems.is_empty(), "{DOC_PATH}:\n{}", problems.join("\n"));
}

#[test]
fn every_example_decodes_with_the_crate_codec() {
    let mut forms = Forms::default();
    let problems = check_blocks(&mut forms);
    assert!(
        problems.is_empty(),
        "{} example(s) in {DOC_PATH} disagree with the code:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

// ----- the variants of the payload enums ---------------------------------------------------

// Exhaustive matches: a new variant does not compile until it is listed below (and then the
// document must show it).
const ALL_ROOM_ACTIONS: [RoomAction; 3] =
    [RoomAction::Join, RoomAction::Leave, RoomAction::Broadcast];
const _: fn(RoomAction) = |a| match a {
    RoomAction::Join | RoomAction::Leave | RoomAction::Broadcast => {}
};
const ALL_ROOM_EVENTS: [RoomEventKind; 4] = [
    RoomEventKind::Members,
    RoomEventKind::Join,
    RoomEventKind::Leave,
    RoomEventKind::Message,
];
const _: fn(RoomEventKind) = |e| match e {
    RoomEventKind::Members
    | RoomEventKind::Join
    | RoomEventKind::Leave
    | RoomEventKind::Message => {}
};
const ALL_PRESENCE_EVENTS: [PresenceEventKind; 3] = [
    PresenceEventKind::Join,
    PresenceEventKind::Update,
    PresenceEventKind::Leave,
];
const _: fn(PresenceEventKind) = |e| match e {
    PresenceEventKind::Join | PresenceEventKind::Update | PresenceEventKind::Leave => {}
};

/// The wire name of a unit variant.
fn label<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => s,
        other => panic!("not a unit variant: {other:?}"),
    }
}

// ----- fenced blocks -------------------------------------------------------------------------

/// Checks every fenced block; returns the problems, each prefixed with its line.
fn check_blocks(forms: &mut Forms) -> Vec<String> {
    let mut problems = Vec::new();
    let mut blocks = 0;
    for block in fenced_blocks(DOC) {
        let at = |line: usize, msg: String| format!("{DOC_PATH}:{line}: {msg}");
        let mut words = block.info.split_whitespace();
        let lang = words.next().unwrap_or("");
        let kind = words.next();
        let result = match (lang, kind) {
            ("json", None) => check_frame(&block.text, Direction::Unknown, forms),
            ("json", Some("hlc")) => check_hlc(&block.text),
            ("json", Some("record")) => check_record(&block.text),
            ("json", Some("fragment")) => serde_json::from_str::<Value>(&block.text)
                .map(drop)
                .map_err(|e| format!("not JSON: {e}")),
            ("json", Some(other)) => Err(format!(
                "unknown json block kind {other:?} (use none, hlc, record or fragment)"
            )),
            _ if block.info.split_whitespace().any(|w| w == "transcript") => {
                for (offset, line) in block.text.lines().enumerate() {
                    if let Err(e) = check_transcript_line(line, forms) {
                        problems.push(at(block.first_line + offset, e));
                    }
                }
                Ok(())
            }
            _ => continue,
        };
        blocks += 1;
        if let Err(e) = result {
            problems.push(at(block.first_line, e));
        }
    }
    // Guards against a parser that finds nothing and so checks nothing.
    assert!(
        blocks > 40,
        "only {blocks} checked blocks found in {DOC_PATH}"
    );
    problems
}

struct Block {
    /// The info string after the opening fence.
    info: String,
    /// The line number (from 1) of the block's first content line.
    first_line: usize,
    text: String,
}

/// The fenced code blocks of a markdown text (```` ``` ```` fences only, as the document uses).
fn fenced_blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in markdown.lines().enumerate() {
        let trimmed = line.trim();
        match &mut open {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    open = Some(Block {
                        info: info.trim().to_owned(),
                        first_line: i + 2,
                        text: String::new(),
                    });
                }
            }
            Some(block) => {
                if trimmed == "```" {
                    blocks.extend(open.take());
                } else {
                    block.text.push_str(line);
                    block.text.push('\n');
                }
            }
        }
    }
    assert!(open.is_none(), "{DOC_PATH}: a fenced block is never closed");
    blocks
}

fn check_transcript_line(line: &str, forms: &mut Forms) -> Result<(), String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(());
    }
    let (who, direction, frame) = if let Some((who, frame)) = line.split_once(" >> ") {
        (who, Direction::ToServer, frame)
    } else if let Some((who, frame)) = line.split_once(" << ") {
        (who, Direction::ToClient, frame)
    } else {
        return Err(
            "a transcript line is `<who> >> <frame>`, `<who> << <frame>` or `# ...`".into(),
        );
    };
    if who.trim().is_empty() || who.trim().contains(char::is_whitespace) {
        return Err(format!("{who:?} is not one name"));
    }
    check_frame(frame, direction, forms)
}

fn check_hlc(text: &str) -> Result<(), String> {
    serde_json::from_str::<Hlc>(text)
        .map(drop)
        .map_err(|e| format!("not an HLC: {e}"))
}

fn check_record(text: &str) -> Result<(), String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let record: ChangeRecord =
        serde_json::from_str(text).map_err(|e| format!("not a change record: {e}"))?;
    let out = serde_json::to_value(&record).map_err(|e| e.to_string())?;
    same_shape(&doc, &out, "record", &|_| false)
}

// ----- frames --------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Direction {
    ToServer,
    ToClient,
    /// A lone example: any direction its type allows.
    Unknown,
}

/// Which sides send a message type: (client, server).
fn senders(kind: MessageType) -> (bool, bool) {
    use MessageType as T;
    match kind {
        T::PullRequest
        | T::PushRequest
        | T::Subscribe
        | T::Unsubscribe
        | T::PresenceUpdate
        | T::PresenceGet => (true, false),
        T::PullResponse
        | T::PushResponse
        | T::Change
        | T::Changes
        | T::PresenceEvent
        | T::PresenceSnapshot
        | T::Error
        | T::Ack => (false, true),
        T::Room | T::Ping | T::Pong => (true, true),
    }
}

#[derive(PartialEq, Eq, Debug)]
enum IdRule {
    /// Requests the server refuses without an id, and the replies that echo one.
    Required,
    Optional,
    /// Messages the server sends on its own.
    Never,
}

fn id_rule(kind: MessageType) -> IdRule {
    use MessageType as T;
    match kind {
        T::PullRequest | T::PushRequest | T::PresenceGet => IdRule::Required,
        T::PullResponse | T::PushResponse | T::PresenceSnapshot | T::Ack => IdRule::Required,
        T::Change | T::Changes | T::PresenceEvent => IdRule::Never,
        T::Subscribe
        | T::Unsubscribe
        | T::PresenceUpdate
        | T::Room
        | T::Ping
        | T::Pong
        | T::Error => IdRule::Optional,
    }
}

/// The forms the examples have shown, as labels such as `room:action:join`.
#[derive(Default)]
struct Forms {
    seen: BTreeSet<String>,
}

impl Forms {
    fn saw(&mut self, form: impl Into<String>) {
        self.seen.insert(form.into());
    }
}

fn check_frame(text: &str, direction: Direction, forms: &mut Forms) -> Result<(), String> {
    let frame = Frame::decode(
        Bytes::copy_from_slice(text.as_bytes()),
        &DecodeLimits::default(),
    )
    .map_err(|e| format!("does not decode: {e} ({})", e.code()))?;
    let kind = frame.kind();
    let envelope: serde_json::Map<String, Value> =
        serde_json::from_str(text).map_err(|e| format!("not a JSON object: {e}"))?;
    let known = ["type", "id", "request_id", "payload", "cursor"];
    if let Some(key) = envelope.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(format!("`{kind}`: unknown top-level field {key:?}"));
    }
    let (by_client, by_server) = senders(kind);
    match direction {
        Direction::ToServer if !by_client => {
            return Err(format!(
                "`{kind}` is sent by servers only, but the line sends it"
            ));
        }
        Direction::ToClient if !by_server => {
            return Err(format!(
                "`{kind}` is sent by clients only, but the line receives it"
            ));
        }
        _ => {}
    }
    match (id_rule(kind), frame.id()) {
        (IdRule::Required, None) => return Err(format!("`{kind}` needs an id")),
        (IdRule::Never, Some(_)) => return Err(format!("`{kind}` never carries an id")),
        _ => {}
    }
    if let Some(id) = frame.id() {
        if id.key() == IdKey::RequestId {
            forms.saw("id_key:request_id");
        }
    }
    if envelope.contains_key("cursor")
        && !matches!(kind, MessageType::Change | MessageType::Changes)
    {
        return Err(format!("`{kind}` has no top-level cursor"));
    }
    let doc_payload = envelope.get("payload").cloned().unwrap_or(Value::Null);
    check_payload(&frame, &doc_payload, direction, forms)
        .map_err(|e| format!("`{kind}` payload: {e}"))?;
    forms.saw(kind.to_string());
    Ok(())
}

fn check_payload(
    frame: &Frame,
    doc: &Value,
    direction: Direction,
    forms: &mut Forms,
) -> Result<(), String> {
    use MessageType as T;
    let kind = frame.kind();
    match kind {
        T::PullRequest => typed::<PullRequest>(frame, doc).map(drop),
        T::PullResponse => {
            typed::<PullResponse>(frame, doc)?;
            match doc.get("recovered") {
                None => {}
                Some(Value::Bool(_)) => forms.saw("pull_response:recovered"),
                Some(other) => return Err(format!("`recovered` must be a bool, not {other}")),
            }
            Ok(())
        }
        T::PushRequest => typed::<PushRequest>(frame, doc).map(drop),
        T::PushResponse => typed::<PushResponse>(frame, doc).map(drop),
        T::Subscribe => typed::<Subscribe>(frame, doc).map(drop),
        T::Unsubscribe => typed::<Unsubscribe>(frame, doc).map(drop),
        T::Change | T::Changes => {
            if kind == T::Change {
                typed::<ChangeRecord>(frame, doc)?;
            } else {
                typed::<Vec<ChangeRecord>>(frame, doc)?;
            }
            match frame.cursor() {
                Some(_) => forms.saw(format!("{kind}+cursor")),
                None => forms.saw(format!("{kind}-no-cursor")),
            }
            Ok(())
        }
        T::PresenceUpdate => {
            let update = typed::<PresenceUpdate>(frame, doc)?;
            match update.data.filter(|d| !d.is_null()) {
                Some(_) => forms.saw("presence_update:join-or-update"),
                None => forms.saw("presence_update:leave"),
            }
            Ok(())
        }
        T::PresenceEvent => {
            let event = typed::<PresenceEvent>(frame, doc)?;
            forms.saw(format!("presence_event:{}", label(&event.kind)));
            Ok(())
        }
        T::PresenceGet => typed::<PresenceGet>(frame, doc).map(drop),
        T::PresenceSnapshot => typed::<PresenceSnapshot>(frame, doc).map(drop),
        T::Room => {
            // A lone example says its direction by its shape: clients send an `action`.
            let to_server = match direction {
                Direction::ToServer => true,
                Direction::ToClient => false,
                Direction::Unknown => doc.get("action").is_some(),
            };
            if to_server {
                let request = typed::<RoomRequest>(frame, doc)?;
                forms.saw(format!("room:action:{}", label(&request.action)));
            } else {
                if frame.id().is_some() {
                    return Err("room events carry no id".into());
                }
                let event = typed::<RoomEvent>(frame, doc)?;
                forms.saw(format!("room:event:{}", label(&event.event)));
            }
            Ok(())
        }
        T::Error => {
            let error = typed::<ErrorPayload>(frame, doc)?;
            if !ErrorCode::KNOWN.contains(&error.code) {
                return Err(format!("unknown error code {:?}", error.code.as_str()));
            }
            forms.saw(format!("error:{}", error.code));
            Ok(())
        }
        T::Ack => {
            if frame.payload_is_null() {
                forms.saw("ack:null");
            } else {
                let ack = typed::<ResumeAck>(frame, doc)?;
                forms.saw("ack:resume");
                if !ack.recovered {
                    forms.saw("ack:recovered=false");
                }
            }
            Ok(())
        }
        T::Ping | T::Pong => typed::<Option<RawJson>>(frame, doc).map(drop),
    }
}

/// Parses the frame's payload as `T` the way a peer does, then checks that writing it back
/// gives the example's fields and values.
fn typed<T: DeserializeOwned + Serialize>(frame: &Frame, doc: &Value) -> Result<T, String> {
    let value: T = frame.payload().map_err(|e| e.to_string())?;
    let out = serde_json::to_value(&value).map_err(|e| e.to_string())?;
    let kind = frame.kind();
    let ahead = |path: &str| AHEAD_OF_CODE.contains(&(kind, path));
    same_shape(doc, &out, "payload", &ahead)?;
    Ok(value)
}

/// Whether `out` (a typed value written back) says what `doc` (the example) says: the same
/// fields, the same array lengths, equal values. A field the code writes as `null` may be
/// absent from the example (it reads as absent), a string HLC may come back as an object, and
/// a field listed in [`AHEAD_OF_CODE`] may be missing from `out`.
fn same_shape(
    doc: &Value,
    out: &Value,
    path: &str,
    ahead: &dyn Fn(&str) -> bool,
) -> Result<(), String> {
    match (doc, out) {
        (Value::Object(d), Value::Object(o)) => {
            for (key, d_value) in d {
                let here = format!("{path}.{key}");
                match o.get(key) {
                    Some(o_value) => same_shape(d_value, o_value, &here, ahead)?,
                    None if ahead(&here) => {}
                    None => {
                        return Err(format!(
                            "{here}: the code does not know this field (misspelt, or not in \
                             the protocol?)"
                        ))
                    }
                }
            }
            for (key, o_value) in o {
                if !d.contains_key(key) && !o_value.is_null() {
                    return Err(format!(
                        "{path}.{key}: the code writes it, the example lacks it"
                    ));
                }
            }
            Ok(())
        }
        (Value::Array(d), Value::Array(o)) if d.len() == o.len() => d
            .iter()
            .zip(o)
            .enumerate()
            .try_for_each(|(i, (d, o))| same_shape(d, o, &format!("{path}[{i}]"), ahead)),
        (Value::String(s), Value::Object(_)) => {
            let from_string: Hlc = s
                .parse()
                .map_err(|e| format!("{path}: a string where the code writes an object: {e}"))?;
            let from_object: Hlc =
                serde_json::from_value(out.clone()).map_err(|e| e.to_string())?;
            if from_string == from_object {
                Ok(())
            } else {
                Err(format!("{path}: {doc} comes back as {out}"))
            }
        }
        _ if doc == out => Ok(()),
        _ => Err(format!("{path}: {doc} comes back as {out}")),
    }
}
