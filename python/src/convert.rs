//! Conversions at the boundary: time, durations, JSON values and errors.

use core::time::Duration;

use bytes::Bytes;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::pyclass_init::PyClassInitializer;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use pyo3::PyClass;
use serde::de::DeserializeOwned;
use serde::Serialize;
use syncmux::payload::{Cursor, Hlc, RawJson};
use syncmux::Instant;

create_exception!(
    syncmux,
    SyncmuxError,
    PyException,
    "Base of every syncmux error. `code` is the wire error code (`INVALID_PAYLOAD`, ...)."
);
create_exception!(
    syncmux,
    RequestError,
    SyncmuxError,
    "A request failed: refused at once by the client, answered by an `error` frame, timed \
     out or lost to a disconnect. `code` is the wire code (`RATE_LIMITED`, `TIMEOUT`, \
     `DISCONNECTED`, the server's own code, ...), `message` the explanation (the server's own \
     for an error frame; `str()` of the exception says more) and `kind` the Rust variant (`Server`, `Timeout`, `Disconnected`, `TooManyInFlight`, ...)."
);
create_exception!(
    syncmux,
    ConfigError,
    SyncmuxError,
    "A configuration that cannot work (`code` is `INVALID_CONFIG`)."
);

/// An exception instance of type `T` with `code`, `message` and `kind` attributes.
/// `str()` of the exception is `display`.
fn with_code<T: pyo3::PyTypeInfo>(
    py: Python<'_>,
    code: &str,
    message: &str,
    kind: &str,
    display: String,
) -> PyErr {
    let err = PyErr::new::<T, _>((display,));
    let value = err.value(py);
    // Setting attributes on a fresh exception instance cannot fail in practice; if it did,
    // the exception still carries its message.
    let _ = value.setattr("code", code);
    let _ = value.setattr("message", message);
    let _ = value.setattr("kind", kind);
    err
}

/// A client request error as a `RequestError` exception carrying its wire code.
pub(crate) fn request_error(py: Python<'_>, e: &syncmux::RequestError) -> PyErr {
    let kind = format!("{e:?}");
    let kind = kind
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("")
        .to_owned();
    let message = match e {
        syncmux::RequestError::Server { message, .. } => message.clone(),
        other => other.to_string(),
    };
    with_code::<RequestError>(py, e.code().as_str(), &message, &kind, e.to_string())
}

/// A configuration error.
pub(crate) fn config_error(py: Python<'_>, e: &syncmux::ConfigError) -> PyErr {
    let message = e.to_string();
    with_code::<ConfigError>(py, "INVALID_CONFIG", &message, "Config", message.clone())
}

/// Bad input from Python (a value that is not JSON, a malformed HLC or cursor).
pub(crate) fn invalid(py: Python<'_>, message: String) -> PyErr {
    with_code::<SyncmuxError>(py, "INVALID_PAYLOAD", &message, "Input", message.clone())
}

/// `time.monotonic()` seconds as the core's instant. NaN, infinities and negative times are
/// refused: they are no point in time.
pub(crate) fn instant(now: f64) -> PyResult<Instant> {
    if !now.is_finite() || now < 0.0 {
        return Err(PyValueError::new_err(format!(
            "now must be finite seconds >= 0 (time.monotonic()), got {now}"
        )));
    }
    // Saturates at about 584 years, far beyond any monotonic clock.
    Ok(Instant::from_nanos((now * 1e9) as u64))
}

/// An instant as float seconds.
pub(crate) fn seconds(at: Instant) -> f64 {
    at.as_nanos() as f64 / 1e9
}

/// A configured duration in float seconds.
pub(crate) fn duration(name: &str, secs: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(secs)
        .map_err(|_| PyValueError::new_err(format!("{name} must be finite seconds >= 0")))
}

/// Any serialisable value (a payload type, a record) as a Python object. Through
/// `serde_json::Value`, so that raw JSON values (kept unparsed by the core) come out parsed.
///
/// Through JSON text and Python's own `json.loads` (C): measured faster than building the
/// objects from a `serde_json::Value` with `pythonize` (python/bench/roundtrip.py).
/// A new instance of the class `T` holding `value`.
pub(crate) fn object<T: PyClass>(py: Python<'_>, value: T) -> PyResult<Bound<'_, PyAny>>
where
    PyClassInitializer<T>: From<T>,
{
    Ok(Bound::new(py, value)?.into_any())
}

/// [`to_py`] of an optional value; `None` when there is none.
pub(crate) fn to_py_or_none<T: Serialize>(
    py: Python<'_>,
    value: Option<&T>,
) -> PyResult<Py<PyAny>> {
    Ok(match value {
        Some(value) => to_py(py, value)?,
        None => py.None(),
    })
}

pub(crate) fn to_py<T: Serialize + ?Sized>(py: Python<'_>, value: &T) -> PyResult<Py<PyAny>> {
    static LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let text = serde_json::to_string(value).map_err(|e| invalid(py, e.to_string()))?;
    let loads = LOADS.get_or_try_init(py, || {
        Ok::<_, PyErr>(py.import("json")?.getattr("loads")?.unbind())
    })?;
    Ok(loads.bind(py).call1((text,))?.unbind())
}

/// Deepest nesting of lists and dicts taken from Python: serde_json's own limit when it
/// parses, so anything deeper could not be sent anyway.
const MAX_DEPTH: usize = 128;

/// A Python object as a JSON value.
fn json_value(obj: &Bound<'_, PyAny>) -> PyResult<serde_json::Value> {
    check_depth(obj)?;
    pythonize::depythonize(obj).map_err(|e| invalid(obj.py(), format!("not JSON: {e}")))
}

/// Refuses nesting deeper than [`MAX_DEPTH`] before `pythonize` recurses into it: a deep
/// enough list would overflow the native stack and kill the interpreter. Iterative, so the
/// check itself cannot overflow; a self-containing list is caught by the same bound.
fn check_depth(obj: &Bound<'_, PyAny>) -> PyResult<()> {
    let mut stack = vec![(obj.clone(), 1usize)];
    while let Some((item, depth)) = stack.pop() {
        let children: Vec<Bound<'_, PyAny>> = if let Ok(list) = item.cast::<PyList>() {
            list.iter().collect()
        } else if let Ok(tuple) = item.cast::<PyTuple>() {
            tuple.iter().collect()
        } else if let Ok(dict) = item.cast::<PyDict>() {
            dict.values().iter().collect()
        } else {
            continue;
        };
        if depth > MAX_DEPTH {
            return Err(invalid(
                obj.py(),
                format!("not JSON: nested deeper than {MAX_DEPTH}"),
            ));
        }
        stack.extend(children.into_iter().map(|c| (c, depth + 1)));
    }
    Ok(())
}

/// A Python object (dict, list, str, number, bool, None) as raw JSON.
pub(crate) fn raw_json(obj: &Bound<'_, PyAny>) -> PyResult<RawJson> {
    let value = json_value(obj)?;
    RawJson::from_serialize(&value).map_err(|e| invalid(obj.py(), e.to_string()))
}

/// A Python object as a payload type, with the core's own decoding rules (unknown fields
/// kept, HLCs as strings or objects). Through JSON text: raw values only deserialise from
/// serde_json's own reader.
pub(crate) fn from_py<T: DeserializeOwned>(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<T> {
    let py = obj.py();
    let value = json_value(obj)?;
    let text = serde_json::to_string(&value).map_err(|e| invalid(py, e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| invalid(py, format!("invalid {what}: {e}")))
}

/// An HLC from a string `"ts:c:node"` or a dict `{"ts", "c", "node"}`.
pub(crate) fn hlc(obj: &Bound<'_, PyAny>) -> PyResult<Hlc> {
    from_py(obj, "HLC")
}

/// A cursor from its string form `"epoch.seq"`.
pub(crate) fn cursor(py: Python<'_>, text: &str) -> PyResult<Cursor> {
    text.parse()
        .map_err(|e| invalid(py, format!("invalid cursor {text:?}: {e}")))
}

/// A frame handed in as `str` or `bytes`.
pub(crate) fn frame_bytes(obj: &Bound<'_, PyAny>) -> PyResult<Bytes> {
    if let Ok(text) = obj.cast::<PyString>() {
        return Ok(Bytes::copy_from_slice(text.to_cow()?.as_bytes()));
    }
    if let Ok(bytes) = obj.cast::<PyBytes>() {
        return Ok(Bytes::copy_from_slice(bytes.as_bytes()));
    }
    Err(PyTypeError::new_err(format!(
        "a frame is str or bytes, not {}",
        obj.get_type().name()?
    )))
}

/// A frame's bytes as `bytes`.
pub(crate) fn py_bytes(py: Python<'_>, bytes: &Bytes) -> Py<PyAny> {
    PyBytes::new(py, bytes).into_any().unbind()
}

/// A frame's bytes as `str` (the core only encodes UTF-8 JSON; anything else is replaced).
pub(crate) fn py_text(bytes: &Bytes) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Sets `field` to `value` when there is one (a keyword argument left `None` keeps the Rust
/// default).
pub(crate) fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *field = value;
    }
}

/// [`set`] for a duration given in float seconds (`name` is the keyword, for the error).
pub(crate) fn set_secs(name: &str, field: &mut Duration, value: Option<f64>) -> PyResult<()> {
    if let Some(secs) = value {
        *field = duration(name, secs)?;
    }
    Ok(())
}
