//! `Client`: the client state machine, its transmits and its events.

use bytes::Bytes;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use syncmux::payload::{ChangeRecord, Cursor, Hlc, PullRequest, RawJson, Subscribe};
use syncmux::wire::{CloseCode, DecodeLimits};
use syncmux::{ClientConfig, ClientEvent, ClientState, ClientTransmit, CloseReason, Response};
use syncmux::{Instant, RequestId};

use crate::convert::{
    config_error, frame_bytes, hlc, instant, object, py_text, raw_json, request_error, seconds,
    set, set_secs, to_py, to_py_or_none,
};
use crate::record::{record, text_frame};

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Client>()?;
    m.add_class::<Connect>()?;
    m.add_class::<Frame>()?;
    m.add_class::<Close>()?;
    m.add_class::<Connected>()?;
    m.add_class::<Disconnected>()?;
    m.add_class::<Reconnecting>()?;
    m.add_class::<Closed>()?;
    m.add_class::<Error>()?;
    m.add_class::<ResponseEvent>()?;
    m.add_class::<Changes>()?;
    m.add_class::<Presence>()?;
    m.add_class::<Room>()?;
    m.add_class::<ResyncNeeded>()?;
    Ok(())
}

/// The syncmux client state machine: no sockets, no clock. After every input or command,
/// drain `poll_transmit()` (dial, send a frame, close) and `poll_event()`, then call
/// `handle_timeout()` at `poll_timeout()`.
///
/// Configuration is keyword arguments; `None` (the default) keeps the Rust default
/// (`ClientConfig::default()`: reconnect 5 s up to 30 s, ping every 30 s, pong timeout 10 s,
/// request timeout 30 s, ...). Durations are float seconds. `max_frame_len` bounds frames
/// from the server (default 16 MiB). The effective values are in `config`.
#[pyclass(module = "syncmux._syncmux")]
pub(crate) struct Client {
    inner: syncmux::Client,
}

/// Where a pull or subscribe starts: its time, then its optional `since` HLC and `cursor`.
fn start(
    py: Python<'_>,
    now: f64,
    since: Option<&Bound<'_, PyAny>>,
    cursor: Option<&str>,
) -> PyResult<(Instant, Option<Hlc>, Option<Cursor>)> {
    let now = instant(now)?;
    let after = cursor.map(|c| crate::convert::cursor(py, c)).transpose()?;
    let since = since.filter(|s| !s.is_none()).map(hlc).transpose()?;
    Ok((now, since, after))
}

/// A command's request id, or its refusal as a `RequestError`.
fn requested(py: Python<'_>, id: Result<RequestId, syncmux::RequestError>) -> PyResult<u64> {
    id.map(|id| id.get()).map_err(|e| request_error(py, &e))
}

#[pymethods]
impl Client {
    #[new]
    #[pyo3(signature = (
        url, node_id, *, token=None, reconnect_delay=None, max_reconnect_delay=None,
        max_reconnect_attempts=None, terminal_close_codes=None, healthy_after=None,
        ping_interval=None, pong_timeout=None, request_timeout=None, resend_idempotent=None,
        resume_with_cursor=None, max_in_flight=None, max_offline_queue=None,
        max_queued_events=None, max_queued_transmits=None, max_subscriptions=None,
        max_presence_topics=None, max_rooms=None, max_frame_len=None, seed=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        url: String,
        node_id: String,
        token: Option<String>,
        reconnect_delay: Option<f64>,
        max_reconnect_delay: Option<f64>,
        max_reconnect_attempts: Option<u32>,
        terminal_close_codes: Option<Vec<u16>>,
        healthy_after: Option<f64>,
        ping_interval: Option<f64>,
        pong_timeout: Option<f64>,
        request_timeout: Option<f64>,
        resend_idempotent: Option<bool>,
        resume_with_cursor: Option<bool>,
        max_in_flight: Option<usize>,
        max_offline_queue: Option<usize>,
        max_queued_events: Option<usize>,
        max_queued_transmits: Option<usize>,
        max_subscriptions: Option<usize>,
        max_presence_topics: Option<usize>,
        max_rooms: Option<usize>,
        max_frame_len: Option<usize>,
        seed: Option<u64>,
    ) -> PyResult<Self> {
        let mut c = ClientConfig::new(url, node_id);
        c.token = token;
        set_secs("reconnect_delay", &mut c.reconnect_delay, reconnect_delay)?;
        // The Rust default of `healthy_after` is the reconnect delay.
        c.healthy_after = c.reconnect_delay;
        set_secs(
            "max_reconnect_delay",
            &mut c.max_reconnect_delay,
            max_reconnect_delay,
        )?;
        c.max_reconnect_attempts = max_reconnect_attempts;
        if let Some(codes) = terminal_close_codes {
            c.terminal_close_codes = codes.into_iter().map(CloseCode).collect();
        }
        set_secs("healthy_after", &mut c.healthy_after, healthy_after)?;
        set_secs("ping_interval", &mut c.ping_interval, ping_interval)?;
        set_secs("pong_timeout", &mut c.pong_timeout, pong_timeout)?;
        set_secs("request_timeout", &mut c.request_timeout, request_timeout)?;
        set(&mut c.resend_idempotent, resend_idempotent);
        set(&mut c.resume_with_cursor, resume_with_cursor);
        set(&mut c.max_in_flight, max_in_flight);
        set(&mut c.max_offline_queue, max_offline_queue);
        set(&mut c.max_queued_events, max_queued_events);
        set(&mut c.max_queued_transmits, max_queued_transmits);
        set(&mut c.max_subscriptions, max_subscriptions);
        set(&mut c.max_presence_topics, max_presence_topics);
        set(&mut c.max_rooms, max_rooms);
        if let Some(len) = max_frame_len {
            c.decode_limits = DecodeLimits::with_max_frame_len(len);
        }
        set(&mut c.seed, seed);
        let inner = syncmux::Client::new(c).map_err(|e| config_error(py, &e))?;
        Ok(Client { inner })
    }

    /// The effective configuration, durations in seconds.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.inner.config();
        let d = PyDict::new(py);
        d.set_item("url", &c.url)?;
        d.set_item("node_id", &c.node_id)?;
        d.set_item("token", &c.token)?;
        d.set_item("reconnect_delay", c.reconnect_delay.as_secs_f64())?;
        d.set_item("max_reconnect_delay", c.max_reconnect_delay.as_secs_f64())?;
        d.set_item("max_reconnect_attempts", c.max_reconnect_attempts)?;
        let codes: Vec<u16> = c.terminal_close_codes.iter().map(|c| c.0).collect();
        d.set_item("terminal_close_codes", codes)?;
        d.set_item("healthy_after", c.healthy_after.as_secs_f64())?;
        d.set_item("ping_interval", c.ping_interval.as_secs_f64())?;
        d.set_item("pong_timeout", c.pong_timeout.as_secs_f64())?;
        d.set_item("request_timeout", c.request_timeout.as_secs_f64())?;
        d.set_item("resend_idempotent", c.resend_idempotent)?;
        d.set_item("resume_with_cursor", c.resume_with_cursor)?;
        d.set_item("max_in_flight", c.max_in_flight)?;
        d.set_item("max_offline_queue", c.max_offline_queue)?;
        d.set_item("max_queued_events", c.max_queued_events)?;
        d.set_item("max_queued_transmits", c.max_queued_transmits)?;
        d.set_item("max_subscriptions", c.max_subscriptions)?;
        d.set_item("max_presence_topics", c.max_presence_topics)?;
        d.set_item("max_rooms", c.max_rooms)?;
        d.set_item("max_frame_len", c.decode_limits.max_frame_len)?;
        d.set_item("seed", c.seed)?;
        Ok(d)
    }

    /// `"idle"`, `"connecting"`, `"open"`, `"waiting_to_reconnect"` or `"closed"`.
    #[getter]
    fn state(&self) -> &'static str {
        match self.inner.state() {
            ClientState::Idle => "idle",
            ClientState::Connecting => "connecting",
            ClientState::Open => "open",
            ClientState::WaitingToReconnect => "waiting_to_reconnect",
            ClientState::Closed => "closed",
        }
    }

    /// The reconnect attempt under way (0 when healthy).
    #[getter]
    fn reconnect_attempt(&self) -> u32 {
        self.inner.reconnect_attempt()
    }

    /// The newest server cursor seen (`"epoch.seq"`), if any.
    #[getter]
    fn cursor(&self) -> Option<String> {
        self.inner.cursor().map(|c| c.to_string())
    }

    /// The newest HLC seen for `table`, as a dict.
    fn newest_hlc(&self, py: Python<'_>, table: &str) -> PyResult<Option<Py<PyAny>>> {
        self.inner
            .newest_hlc(table)
            .map(|h| to_py(py, h))
            .transpose()
    }

    /// Counts of what the client holds (requests, queues, subscriptions, ...).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.stats();
        let d = PyDict::new(py);
        d.set_item("requests", s.requests)?;
        d.set_item("all_requests", s.all_requests)?;
        d.set_item("offline_queue", s.offline_queue)?;
        d.set_item("events", s.events)?;
        d.set_item("transmits", s.transmits)?;
        d.set_item("subscriptions", s.subscriptions)?;
        d.set_item("presence_topics", s.presence_topics)?;
        d.set_item("rooms", s.rooms)?;
        Ok(d)
    }

    /// Replaces the token used by the next dial.
    fn set_token(&mut self, token: Option<String>) {
        self.inner.set_token(token);
    }

    // ----- outputs ---------------------------------------------------------------------

    /// The next transport action: `Connect`, `Frame` or `Close`; `None` when there is none.
    fn poll_transmit(&mut self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let Some(t) = self.inner.poll_transmit() else {
            return Ok(None);
        };
        let obj = match t {
            ClientTransmit::Connect(dial) => {
                let headers: Vec<(String, String)> = dial
                    .headers
                    .iter()
                    .map(|(n, v)| ((*n).to_owned(), v.clone()))
                    .collect();
                object(
                    py,
                    Connect {
                        url_with_token: dial.url_with_token(),
                        url: dial.url,
                        protocols: dial.protocols.iter().map(|p| (*p).to_owned()).collect(),
                        headers,
                        token: dial.token,
                    },
                )?
            }
            ClientTransmit::Frame(bytes) => object(py, Frame { bytes })?,
            ClientTransmit::Close { code, reason } => object(
                py,
                Close {
                    code: code.0,
                    reason,
                },
            )?,
        };
        Ok(Some(obj.unbind()))
    }

    /// The next event (`Connected`, `Response`, `Changes`, ...); `None` when there is none.
    fn poll_event(&mut self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        match self.inner.poll_event() {
            Some(event) => event_to_py(py, event).map(Some),
            None => Ok(None),
        }
    }

    /// When to call `handle_timeout` next (seconds, as `time.monotonic()`), or `None`.
    fn poll_timeout(&self) -> Option<f64> {
        self.inner.poll_timeout().map(seconds)
    }

    // ----- inputs ----------------------------------------------------------------------

    /// The WebSocket opened; `protocol` is the subprotocol the server selected.
    #[pyo3(signature = (now, protocol=None))]
    fn handle_connected(&mut self, now: f64, protocol: Option<&str>) -> PyResult<()> {
        self.inner.handle_connected(instant(now)?, protocol);
        Ok(())
    }

    /// A text frame arrived (`str` or `bytes`).
    fn handle_message(&mut self, now: f64, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let bytes = frame_bytes(data)?;
        self.inner.handle_message(instant(now)?, bytes);
        Ok(())
    }

    /// A binary frame of `length` bytes arrived (the protocol has none: an error event).
    fn handle_binary(&mut self, now: f64, length: usize) -> PyResult<()> {
        self.inner.handle_binary(instant(now)?, length);
        Ok(())
    }

    /// The WebSocket closed (with `code` when a close frame came) or a dial failed.
    #[pyo3(signature = (now, code=None, reason=""))]
    fn handle_disconnected(&mut self, now: f64, code: Option<u16>, reason: &str) -> PyResult<()> {
        self.inner
            .handle_disconnected(instant(now)?, code.map(CloseCode), reason);
        Ok(())
    }

    /// Time passed; a call with nothing due does nothing.
    fn handle_timeout(&mut self, now: f64) -> PyResult<()> {
        self.inner.handle_timeout(instant(now)?);
        Ok(())
    }

    // ----- commands --------------------------------------------------------------------

    /// Starts connecting (a command issued while idle does it too).
    fn connect(&mut self, now: f64) -> PyResult<()> {
        self.inner.connect(instant(now)?);
        Ok(())
    }

    /// Closes for good (1000); pending requests fail with `DISCONNECTED`.
    fn close(&mut self, now: f64) -> PyResult<()> {
        self.inner.close(instant(now)?);
        Ok(())
    }

    /// Pulls the changes of `tables` (after `cursor`, else after `since`, else all).
    /// Returns the request id; the outcome is a `Response` event.
    #[pyo3(signature = (now, tables, *, since=None, cursor=None))]
    fn pull(
        &mut self,
        py: Python<'_>,
        now: f64,
        tables: Vec<String>,
        since: Option<&Bound<'_, PyAny>>,
        cursor: Option<&str>,
    ) -> PyResult<u64> {
        let (now, since, after) = start(py, now, since, cursor)?;
        let pull = PullRequest::new(tables).since(since).after(after);
        requested(py, self.inner.pull(now, pull))
    }

    /// Pushes change records (dicts; unknown fields are kept) as this node.
    fn push(&mut self, py: Python<'_>, now: f64, changes: &Bound<'_, PyAny>) -> PyResult<u64> {
        let now = instant(now)?;
        let changes: Vec<ChangeRecord> = crate::convert::from_py(changes, "change records")?;
        requested(py, self.inner.push(now, changes))
    }

    /// Subscribes to the live changes of `tables`, replaying first what came after `cursor`
    /// (else `since`).
    #[pyo3(signature = (now, tables, *, since=None, cursor=None))]
    fn subscribe(
        &mut self,
        py: Python<'_>,
        now: f64,
        tables: Vec<String>,
        since: Option<&Bound<'_, PyAny>>,
        cursor: Option<&str>,
    ) -> PyResult<u64> {
        let (now, since, after) = start(py, now, since, cursor)?;
        let subscribe = Subscribe::new(tables).since(since).after(after);
        requested(py, self.inner.subscribe(now, subscribe))
    }

    /// Unsubscribes from `tables`.
    fn unsubscribe(&mut self, py: Python<'_>, now: f64, tables: Vec<String>) -> PyResult<u64> {
        requested(py, self.inner.unsubscribe(instant(now)?, tables))
    }

    /// Joins `topic` with `data` or updates it; `None` data leaves.
    fn update_presence(
        &mut self,
        py: Python<'_>,
        now: f64,
        topic: String,
        data: &Bound<'_, PyAny>,
    ) -> PyResult<u64> {
        let id = self
            .inner
            .update_presence(instant(now)?, topic, raw_json(data)?);
        requested(py, id)
    }

    /// Leaves `topic`.
    fn leave_presence(&mut self, py: Python<'_>, now: f64, topic: String) -> PyResult<u64> {
        requested(py, self.inner.leave_presence(instant(now)?, topic))
    }

    /// Asks for the members of `topic` (a `presence_snapshot` response).
    fn get_presence(&mut self, py: Python<'_>, now: f64, topic: String) -> PyResult<u64> {
        requested(py, self.inner.get_presence(instant(now)?, topic))
    }

    /// Joins `room` with optional member `data`.
    #[pyo3(signature = (now, room, data=None))]
    fn join_room(
        &mut self,
        py: Python<'_>,
        now: f64,
        room: String,
        data: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<u64> {
        let now = instant(now)?;
        let data = data.filter(|d| !d.is_none()).map(raw_json).transpose()?;
        requested(py, self.inner.join_room(now, room, data))
    }

    /// Leaves `room`.
    fn leave_room(&mut self, py: Python<'_>, now: f64, room: String) -> PyResult<u64> {
        requested(py, self.inner.leave_room(instant(now)?, room))
    }

    /// Sends `data` to the other members of `room`.
    fn broadcast(
        &mut self,
        py: Python<'_>,
        now: f64,
        room: String,
        data: &Bound<'_, PyAny>,
    ) -> PyResult<u64> {
        let id = self.inner.broadcast(instant(now)?, room, raw_json(data)?);
        requested(py, id)
    }

    /// Pings the server; the response's value is the echoed payload.
    #[pyo3(signature = (now, payload=None))]
    fn ping(
        &mut self,
        py: Python<'_>,
        now: f64,
        payload: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<u64> {
        let now = instant(now)?;
        let payload = match payload {
            Some(p) => raw_json(p)?,
            None => RawJson::null(),
        };
        requested(py, self.inner.ping(now, payload))
    }

    fn __repr__(&self) -> String {
        format!(
            "Client(url={:?}, node_id={:?}, state={:?})",
            self.inner.config().url,
            self.inner.config().node_id,
            self.state()
        )
    }
}

fn event_to_py(py: Python<'_>, event: ClientEvent) -> PyResult<Py<PyAny>> {
    let obj = match event {
        ClientEvent::Connected => object(py, Connected {})?,
        ClientEvent::Disconnected { code, reason } => object(
            py,
            Disconnected {
                code: code.map(|c| c.0),
                reason,
            },
        )?,
        ClientEvent::Reconnecting { attempt, delay } => object(
            py,
            Reconnecting {
                attempt,
                delay: delay.as_secs_f64(),
            },
        )?,
        ClientEvent::Closed { reason } => {
            let (kind, code, message) = match &reason {
                CloseReason::Local => ("local", None, format!("{reason:?}")),
                CloseReason::Server { code, reason } => ("server", Some(code.0), reason.clone()),
                CloseReason::ProtocolMismatch { selected } => (
                    "protocol_mismatch",
                    None,
                    format!("the server selected {selected:?}"),
                ),
                CloseReason::MaxAttempts { attempts } => {
                    ("max_attempts", None, format!("{attempts} attempts failed"))
                }
                other => ("other", None, format!("{other:?}")),
            };
            object(
                py,
                Closed {
                    reason: kind.to_owned(),
                    code,
                    message,
                },
            )?
        }
        ClientEvent::Error { code, message } => object(
            py,
            Error {
                code: code.as_str().to_owned(),
                message,
            },
        )?,
        ClientEvent::Response { id, outcome } => {
            let (kind, value, error) = match outcome {
                Ok(response) => {
                    let (kind, value) = match response {
                        Response::Pull(p) => ("pull", to_py(py, &p)?),
                        Response::Push(p) => ("push", to_py(py, &p)?),
                        Response::Ack(a) => ("ack", to_py(py, &a)?),
                        Response::PresenceSnapshot(s) => ("presence_snapshot", to_py(py, &s)?),
                        Response::Pong(p) => ("pong", to_py(py, &p)?),
                        other => ("other", to_py(py, &format!("{other:?}"))?),
                    };
                    (Some(kind.to_owned()), value, None)
                }
                Err(e) => {
                    let err = request_error(py, &e);
                    (None, py.None(), Some(err.into_value(py).into_any()))
                }
            };
            object(
                py,
                ResponseEvent {
                    id: id.get(),
                    kind,
                    value,
                    error,
                },
            )?
        }
        ClientEvent::Changes {
            subscriptions,
            changes,
            cursor,
        } => object(
            py,
            Changes {
                subscriptions: subscriptions.iter().map(|s| s.get()).collect(),
                changes: to_py(py, &changes)?,
                cursor: cursor.map(|c| c.to_string()),
            },
        )?,
        ClientEvent::Presence(p) => {
            let value = to_py(py, &p)?;
            let value = value.bind(py);
            object(
                py,
                Presence {
                    kind: value.get_item("type")?.extract()?,
                    node_id: p.node_id,
                    topic: p.topic,
                    data: to_py_or_none(py, p.data.as_ref())?,
                },
            )?
        }
        ClientEvent::Room(r) => {
            let value = to_py(py, &r)?;
            let value = value.bind(py);
            object(
                py,
                Room {
                    event: value.get_item("event")?.extract()?,
                    room: r.room,
                    node_id: r.node_id,
                    data: to_py_or_none(py, r.data.as_ref())?,
                    members: to_py_or_none(py, r.members.as_ref())?,
                },
            )?
        }
        ClientEvent::ResyncNeeded { tables } => object(py, ResyncNeeded { tables })?,
        other => object(
            py,
            Error {
                code: "INTERNAL".to_owned(),
                message: format!("unknown event {other:?}"),
            },
        )?,
    };
    Ok(obj.unbind())
}

// ----- transmits ----------------------------------------------------------------------

record! {
    /// Open a WebSocket to `url` offering `protocols` with `headers` (native clients), then
    /// report `handle_connected` or `handle_disconnected`. `url_with_token` carries the token
    /// as the `access_token` query parameter, for transports that cannot set headers.
    Connect {
        url: String,
        url_with_token: String,
        protocols: Vec<String>,
        headers: Vec<(String, String)>,
        token: Option<String>,
    }
    |c| format!("Connect(url={:?})", c.url)
}

text_frame! {
    /// Send this text frame: `text` (str) or `data` (UTF-8 bytes).
    Frame {}
    |f| format!("Frame({})", py_text(&f.bytes))
}

record! {
    /// Close the WebSocket with `code` and `reason` (the client already counts it as gone).
    Close { code: u16, reason: String }
    |c| format!("Close(code={}, reason={:?})", c.code, c.reason)
}

// ----- events -------------------------------------------------------------------------

record! {
    /// The transport opened; subscriptions, presence and rooms are being restored.
    Connected {}
    |_| "Connected()".to_owned()
}

record! {
    /// The transport closed or a dial failed (`code`: the close code, when there was one).
    Disconnected { code: Option<u16>, reason: String }
    |d| format!("Disconnected(code={:?}, reason={:?})", d.code, d.reason)
}

record! {
    /// The client dials again after `delay` seconds (`attempt` counts from 1).
    Reconnecting { attempt: u32, delay: f64 }
    |r| format!("Reconnecting(attempt={}, delay={})", r.attempt, r.delay)
}

record! {
    /// The client stopped for good: `reason` is `"local"`, `"server"` (with the close `code`),
    /// `"protocol_mismatch"` or `"max_attempts"`.
    Closed { reason: String, code: Option<u16>, message: String }
    |c| format!("Closed(reason={:?}, code={:?}, message={:?})", c.reason, c.code, c.message)
}

record! {
    /// An `error` frame that answers no request, or a frame the client could not read.
    Error { code: String, message: String }
    |e| format!("Error(code={:?}, message={:?})", e.code, e.message)
}

/// The one outcome of request `id`: `kind` (`"pull"`, `"push"`, `"ack"`,
/// `"presence_snapshot"`, `"pong"`) and `value` (the response payload as Python objects), or
/// `error` (a `RequestError`). `result()` gives the value or raises the error.
#[pyclass(module = "syncmux._syncmux", frozen, get_all, name = "Response")]
pub(crate) struct ResponseEvent {
    id: u64,
    kind: Option<String>,
    value: Py<PyAny>,
    error: Option<Py<PyAny>>,
}

#[pymethods]
impl ResponseEvent {
    /// The value, or raises the `RequestError`.
    fn result(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match &self.error {
            Some(error) => Err(PyErr::from_value(error.bind(py).clone())),
            None => Ok(self.value.clone_ref(py)),
        }
    }

    #[getter]
    fn ok(&self) -> bool {
        self.error.is_none()
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        match &self.error {
            Some(e) => format!("Response(id={}, error={})", self.id, e.bind(py)),
            None => format!(
                "Response(id={}, kind={:?}, value={})",
                self.id,
                self.kind.as_deref().unwrap_or(""),
                self.value.bind(py)
            ),
        }
    }
}

/// Live changes: `changes` (dicts, unknown fields kept), the `subscriptions` (request ids)
/// that asked for them, and the frame's `cursor`.
#[pyclass(module = "syncmux._syncmux", frozen, get_all)]
pub(crate) struct Changes {
    subscriptions: Vec<u64>,
    changes: Py<PyAny>,
    cursor: Option<String>,
}

#[pymethods]
impl Changes {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "Changes(cursor={}, changes={})",
            self.cursor.as_deref().unwrap_or("None"),
            self.changes.bind(py)
        )
    }
}

record! {
    /// A presence member joined, updated or left (`kind`: `"join"`, `"update"`, `"leave"`).
    Presence { kind: String, node_id: String, topic: String, data: Py<PyAny> }
    |p| format!("Presence(kind={:?}, node_id={:?}, topic={:?})", p.kind, p.node_id, p.topic)
}

record! {
    /// A room event (`event`: `"members"`, `"join"`, `"leave"`, `"message"`).
    Room { event: String, room: String, node_id: Option<String>, data: Py<PyAny>, members: Py<PyAny> }
    |r| format!("Room(event={:?}, room={:?}, node_id={:?})", r.event, r.room, r.node_id)
}

record! {
    /// Restored subscriptions could not resume without a gap: resynchronise these tables.
    ResyncNeeded { tables: Vec<String> }
    |r| format!("ResyncNeeded(tables={:?})", r.tables)
}
