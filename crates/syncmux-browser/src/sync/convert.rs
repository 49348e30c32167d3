//! Values across the JavaScript boundary. Everything goes through JSON text: the payload types
//! already have exact serde forms, and `JSON.stringify` / `JSON.parse` are the browser's fastest
//! way in and out, so no second mapping (and no `serde-wasm-bindgen`) is needed.
//!
//! One exception: HLC timestamps are 64-bit nanoseconds, which a JavaScript number cannot hold
//! exactly, so HLCs handed to JavaScript take their string form `"<ts>:<c>:<node>"`
//! (docs/protocol.md section 5 accepts it on input).

use core::time::Duration;

use js_sys::{Array, Error, Reflect, JSON};
use serde::de::DeserializeOwned;
use serde::Serialize;
use wasm_bindgen::prelude::*;

use syncmux::payload::{ChangeRecord, Cursor, Hlc, RawJson};
use syncmux::wire::ErrorCode;
use syncmux::{ClientConfig, CloseReason, RequestError, Response};

use super::driver::Transports;

/// The options object of `new SyncClient(url, options)`, in milliseconds like the seed's
/// TypeScript client. Unknown keys (the seed's `headers`, which browsers cannot send) are
/// ignored. Read with `Reflect` rather than serde: it keeps the `.wasm` smaller.
#[derive(Default)]
pub(super) struct Options {
    node_id: Option<String>,
    access_token: Option<String>,
    /// `accessToken` as a function, called before each connect.
    pub(super) token_fn: Option<js_sys::Function>,
    millis: [Option<f64>; 5],
    max_reconnect_attempts: Option<u32>,
    pub(super) protocols: Vec<String>,
    pub(super) transports: Transports,
}

/// The message of a bad `transports` option.
const TRANSPORTS: &str = "transports must list \"websocket\" and/or \"sse\"";

/// The duration options, in the order of `Options::millis`.
const DURATIONS: [&str; 5] = [
    "reconnectDelay",
    "maxReconnectDelay",
    "pingInterval",
    "pongTimeout",
    "requestTimeout",
];

impl Options {
    /// Reads the options object (`undefined` and `null` mean all defaults).
    pub(super) fn from_js(value: &JsValue) -> Result<Options, JsValue> {
        let mut options = Options::default();
        if value.is_undefined() || value.is_null() {
            return Ok(options);
        }
        let get = |key: &str| {
            let v = Reflect::get(value, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED);
            (!v.is_undefined() && !v.is_null()).then_some(v)
        };
        let string = |key: &str| match get(key) {
            None => Ok(None),
            Some(v) => v
                .as_string()
                .map(Some)
                .ok_or_else(|| type_error(&format!("{key} must be a string"))),
        };
        let number = |key: &str| match get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| type_error(&format!("{key} must be a number"))),
        };
        options.node_id = match string("nodeId")? {
            Some(id) => Some(id),
            None => string("nodeID")?,
        };
        match get("accessToken") {
            Some(f) if f.is_function() => options.token_fn = Some(f.unchecked_into()),
            _ => options.access_token = string("accessToken")?,
        }
        for (slot, key) in options.millis.iter_mut().zip(DURATIONS) {
            *slot = number(key)?;
        }
        options.max_reconnect_attempts = match number("maxReconnectAttempts")? {
            Some(n) if n >= 0.0 && n.fract() == 0.0 && n <= f64::from(u32::MAX) => Some(n as u32),
            Some(_) => return Err(type_error("maxReconnectAttempts must be a whole number")),
            None => None,
        };
        if let Some(transports) = get("transports") {
            let names = tables(&transports).map_err(|_| type_error(TRANSPORTS))?;
            let (websocket, sse) = (
                names.iter().position(|n| n == "websocket"),
                names.iter().position(|n| n == "sse"),
            );
            if names.iter().any(|n| n != "websocket" && n != "sse")
                || (websocket.is_none() && sse.is_none())
            {
                return Err(type_error(TRANSPORTS));
            }
            // SSE is a fallback for a WebSocket that could not open: it comes after it.
            options.transports = Transports {
                websocket: websocket.is_some(),
                sse: sse.is_some(),
            };
        }
        if let Some(protocols) = get("protocols") {
            options.protocols = tables(&protocols)
                .map_err(|_| type_error("protocols must be a string or string[]"))?;
        }
        Ok(options)
    }

    /// The client configuration; `random` seeds the jitter and names an anonymous node.
    pub(super) fn config(&self, url: String, random: u64) -> Result<ClientConfig, JsValue> {
        let node_id = match &self.node_id {
            Some(id) => id.clone(),
            None => format!("browser-{random:016x}"),
        };
        let mut config = ClientConfig::new(url, node_id);
        config.token = self.access_token.clone();
        config.seed = random;
        config.max_reconnect_attempts = self.max_reconnect_attempts;
        let fields = [
            &mut config.reconnect_delay,
            &mut config.max_reconnect_delay,
            &mut config.ping_interval,
            &mut config.pong_timeout,
            &mut config.request_timeout,
        ];
        for ((field, millis), name) in fields.into_iter().zip(self.millis).zip(DURATIONS) {
            if let Some(millis) = millis {
                *field = Duration::try_from_secs_f64(millis / 1000.0).map_err(|_| {
                    type_error(&format!("{name} must be a non-negative number of ms"))
                })?;
            }
        }
        // As in the core's defaults, a connection is healthy after one reconnect delay.
        config.healthy_after = config.reconnect_delay;
        config.validate().map_err(|e| type_error(&e.to_string()))?;
        Ok(config)
    }
}

/// A JavaScript value as JSON text; `undefined` (and functions) become `null`.
pub(super) fn json_text(value: &JsValue) -> Result<String, JsValue> {
    if value.is_undefined() {
        return Ok("null".to_owned());
    }
    let text: JsValue = JSON::stringify(value)?.into();
    Ok(text.as_string().unwrap_or_else(|| "null".to_owned()))
}

/// A JavaScript value read as `T` through its JSON form.
pub(super) fn from_js<T: DeserializeOwned>(value: &JsValue) -> Result<T, String> {
    let text = json_text(value).map_err(|_| "not JSON-serialisable".to_owned())?;
    // The core's payload parser: its error names the path, and the types share its code.
    syncmux::wire::Frame::parse_payload(text.as_bytes()).map_err(|e| e.to_string())
}

/// A JavaScript value as raw JSON (presence data, room data).
pub(super) fn raw_json(value: &JsValue) -> Result<RawJson, String> {
    let text = json_text(value).map_err(|_| "not JSON-serialisable".to_owned())?;
    RawJson::from_string(text).map_err(|e| e.to_string())
}

/// `undefined` and `null` as `None`, anything else as raw JSON.
pub(super) fn optional_json(value: &JsValue) -> Result<Option<RawJson>, String> {
    if value.is_undefined() || value.is_null() {
        Ok(None)
    } else {
        raw_json(value).map(Some)
    }
}

/// A table list: one string or an array of strings.
pub(super) fn tables(value: &JsValue) -> Result<Vec<String>, String> {
    if let Some(one) = value.as_string() {
        return Ok(vec![one]);
    }
    let not_strings = || "tables must be a string or string[]".to_owned();
    if !Array::is_array(value) {
        return Err(not_strings());
    }
    let array = Array::from(value);
    let items = array.iter().map(|v| v.as_string());
    items
        .collect::<Option<Vec<String>>>()
        .ok_or_else(not_strings)
}

/// An optional `since`: an HLC string `"<ts>:<c>:<node>"` or object.
pub(super) fn since(value: &JsValue) -> Result<Option<Hlc>, String> {
    if value.is_undefined() || value.is_null() {
        return Ok(None);
    }
    from_js(value).map(Some).map_err(|e| format!("since: {e}"))
}

/// An optional server position (`cursor`): a string, or `undefined` / `null` for none.
fn cursor(value: &JsValue) -> Result<Option<Cursor>, String> {
    if value.is_undefined() || value.is_null() {
        return Ok(None);
    }
    let text = value
        .as_string()
        .ok_or_else(|| "cursor: expected a string".to_owned())?;
    text.parse().map(Some).map_err(|e| format!("cursor: {e}"))
}

/// The tables of a pull or subscribe and where it starts.
pub(super) type Start = (Vec<String>, Option<Hlc>, Option<Cursor>);

/// Reads the arguments of `pull` and `subscribe`: the tables, then where to start:
/// `undefined` (a pull of everything, a subscribe from now), `{ since?: Hlc, cursor?: string }`,
/// or an HLC alone (as `since`).
pub(super) fn start(tables: &JsValue, from: &JsValue) -> Result<Start, String> {
    let tables = self::tables(tables)?;
    if from.is_undefined() || from.is_null() || from.is_string() {
        return Ok((tables, since(from)?, None));
    }
    let field = |name: &str| Reflect::get(from, &JsValue::from_str(name)).unwrap_or_default();
    let (since_field, cursor_field) = (field("since"), field("cursor"));
    if since_field.is_undefined() && cursor_field.is_undefined() && !field("ts").is_undefined() {
        return Ok((tables, since(from)?, None)); // an HLC object
    }
    Ok((tables, since(&since_field)?, cursor(&cursor_field)?))
}

/// A Rust value as a JavaScript one.
pub(super) fn to_js<T: Serialize + ?Sized>(value: &T) -> JsValue {
    let text = serde_json::to_string(value).expect("invariant: payload types always serialise");
    parse(&text)
}

fn parse(text: &str) -> JsValue {
    JSON::parse(text).expect("invariant: serde_json writes valid JSON")
}

fn set(target: &JsValue, key: &str, value: &JsValue) {
    // Reflect.set only fails on non-objects, and every target here is a parsed object.
    let _ = Reflect::set(target, &JsValue::from_str(key), value);
}

fn set_hlc(target: &JsValue, key: &str, hlc: &Hlc) {
    set(target, key, &JsValue::from_str(&hlc.to_string()));
}

/// Change records as an array of objects, each `hlc` in string form.
pub(super) fn changes(records: &[ChangeRecord]) -> JsValue {
    let array = to_js(records);
    for (i, record) in records.iter().enumerate() {
        let index = u32::try_from(i).unwrap_or(u32::MAX);
        set_hlc(&Array::from(&array).get(index), "hlc", &record.hlc);
    }
    array
}

/// A response as the value its promise resolves with.
pub(super) fn response(response: Response) -> JsValue {
    match response {
        Response::Pull(pull) => {
            let value = to_js(&pull);
            set(&value, "changes", &changes(&pull.changes));
            set_hlc(&value, "latest_hlc", &pull.latest_hlc);
            value
        }
        Response::Push(push) => {
            let value = to_js(&push);
            set_hlc(&value, "latest_hlc", &push.latest_hlc);
            value
        }
        Response::Ack(ack) => ack.map_or(JsValue::NULL, |ack| to_js(&ack)),
        Response::PresenceSnapshot(snapshot) => to_js(&snapshot),
        Response::Pong(payload) => parse(payload.get()),
        // A response kind this build does not map resolves with `null`.
        _ => JsValue::NULL,
    }
}

/// A `SyncError`: an `Error` with the wire `code` (docs/protocol.md section 4) and the message.
pub(super) fn sync_error(code: &ErrorCode, message: &str) -> JsValue {
    let error = Error::new(message);
    error.set_name("SyncError");
    let value: JsValue = error.into();
    set(&value, "code", &JsValue::from_str(code.as_str()));
    value
}

/// A failed request as a `SyncError`: the server's own code and message for an error frame.
pub(super) fn request_error(error: &RequestError) -> JsValue {
    match error {
        RequestError::Server { code, message } => sync_error(code, message),
        other => sync_error(&other.code(), &other.to_string()),
    }
}

/// A bad argument, as a `SyncError` with `INVALID_PAYLOAD`.
pub(super) fn invalid_argument(message: &str) -> JsValue {
    sync_error(&ErrorCode::InvalidPayload, message)
}

fn type_error(message: &str) -> JsValue {
    js_sys::TypeError::new(message).into()
}

/// The argument of a `closed` event: why, with the close code when the server gave one.
pub(super) fn close_reason(reason: &CloseReason) -> JsValue {
    let value: JsValue = js_sys::Object::new().into();
    let (kind, code, message) = match reason {
        CloseReason::Local => ("local", None, "closed by the application".to_owned()),
        CloseReason::Server { code, reason } => ("server", Some(code.0), reason.clone()),
        CloseReason::ProtocolMismatch { selected } => (
            "protocol_mismatch",
            None,
            format!("server selected subprotocol {selected:?}"),
        ),
        CloseReason::MaxAttempts { attempts } => (
            "max_attempts",
            None,
            format!("gave up after {attempts} reconnect attempts"),
        ),
        other => ("other", None, format!("{other:?}")),
    };
    set(&value, "reason", &JsValue::from_str(kind));
    set(&value, "code", &code.map_or(JsValue::NULL, JsValue::from));
    set(&value, "message", &JsValue::from_str(&message));
    value
}

/// The argument of a `disconnected` event.
pub(super) fn disconnected(code: Option<u16>, reason: &str) -> JsValue {
    let value: JsValue = js_sys::Object::new().into();
    set(&value, "code", &code.map_or(JsValue::NULL, JsValue::from));
    set(&value, "reason", &JsValue::from_str(reason));
    value
}

/// An object with one key.
pub(super) fn object(key: &str, value: &JsValue) -> JsValue {
    let object: JsValue = js_sys::Object::new().into();
    set(&object, key, value);
    object
}
