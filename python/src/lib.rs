//! Python bindings of syncmux: the client and server state machines as Python
//! objects in the style of h11 and wsproto. Inputs are `handle_*` methods taking the time
//! first (float seconds from `time.monotonic()`), commands return request ids, and outputs are
//! drained with `poll_transmit`, `poll_event` and `poll_timeout`. The asyncio client and
//! server (`syncmux.aio`) are pure Python on top.
//!
//! JSON payloads cross the boundary as Python objects (dicts, lists, ...) through
//! `serde_json::Value` and `pythonize`: change records become dicts that keep every field,
//! unknown ones included.

#![forbid(unsafe_code)]

mod client;
mod convert;
mod record;
mod server;

use pyo3::prelude::*;

/// The native module `syncmux._syncmux`; `syncmux` re-exports everything.
#[pymodule]
fn _syncmux(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("SyncmuxError", py.get_type::<convert::SyncmuxError>())?;
    m.add("RequestError", py.get_type::<convert::RequestError>())?;
    m.add("ConfigError", py.get_type::<convert::ConfigError>())?;
    m.add("PROTOCOL", syncmux::wire::Frame::SUBPROTOCOL)?;
    client::register(m)?;
    server::register(m)?;
    Ok(())
}
