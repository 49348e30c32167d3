//! `Server`: the server state machine, with the embedded `MemoryStore` (the core's `Driver`)
//! or with the store's events left to the application.

use std::sync::Arc;

use bytes::Bytes;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use syncmux::payload::{ChangeRecord, Cursor, Hlc};
use syncmux::wire::CloseCode;
use syncmux::{
    AppError, AuthDecision, AuthRequest, Driver, Handshake, HandshakeOutcome, Instant, MemoryStore,
    PullAnswer, PushAnswer, ServerConfig, ServerEvent, ServerTransmit, StoreConfig,
};

use crate::convert::{
    config_error, cursor, frame_bytes, from_py, hlc, instant, invalid, object, py_text, seconds,
    set, set_secs, to_py,
};
use crate::record::{record, text_frame};

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Server>()?;
    m.add_class::<SessionId>()?;
    m.add_class::<PullId>()?;
    m.add_class::<PushId>()?;
    m.add_class::<ReplayId>()?;
    m.add_class::<Accept>()?;
    m.add_class::<Reject>()?;
    m.add_class::<SessionFrame>()?;
    m.add_class::<SessionClose>()?;
    m.add_class::<SessionOpened>()?;
    m.add_class::<SessionClosed>()?;
    m.add_class::<Pull>()?;
    m.add_class::<Push>()?;
    m.add_class::<Replay>()?;
    Ok(())
}

/// The state machine, with or without the embedded store.
enum Inner {
    /// The server and its `MemoryStore`: pulls, pushes and replays answered at once.
    Driver(Box<Driver>),
    /// The server alone: the application answers `Pull`, `Push` and `Replay` events.
    Server(Box<syncmux::Server>),
}

/// The syncmux server state machine: no sockets, no clock.
///
/// With `store=True` (the default) the embedded `MemoryStore` answers pulls, pushes and
/// replays at once, as the Rust `syncmux-server` does. With `store=False` they come out of
/// `poll_event()` as `Pull`, `Push` and `Replay` events, which the application answers with
/// `answer_pull`, `answer_push` and `answer_replay`, in any order and at any time.
///
/// Configuration is keyword arguments; `None` keeps the Rust default
/// (`ServerConfig::default()`: 1 MiB frames, 100 messages per 60 s, idle timeout 90 s, ping
/// interval 30 s, presence TTL 60 s, rooms of 1000, ...); 0 disables a limit or timer.
/// Durations are float seconds. `token` requires that bearer token (header, `access_token`
/// or `token` query parameter) at the handshake and refuses others with HTTP 401, as the Rust
/// `syncmux-server`'s `--token` does. The effective values are in `config`.
#[pyclass(module = "syncmux._syncmux")]
pub(crate) struct Server {
    inner: Inner,
}

/// The same call on the driver or on the bare server, whichever `inner` holds.
macro_rules! either {
    ($inner:expr, $s:ident => $call:expr) => {
        match $inner {
            Inner::Driver($s) => $call,
            Inner::Server($s) => $call,
        }
    };
}

impl Server {
    fn server(&self) -> &syncmux::Server {
        match &self.inner {
            Inner::Driver(d) => d.server(),
            Inner::Server(s) => s,
        }
    }

    /// The server itself, for the answers: only without the embedded store.
    fn bare(&mut self, py: Python<'_>) -> PyResult<&mut syncmux::Server> {
        match &mut self.inner {
            Inner::Server(s) => Ok(s),
            Inner::Driver(_) => Err(invalid(
                py,
                "the embedded store answers this server's requests (store=True)".to_owned(),
            )),
        }
    }
}

/// A change with its position, as an answer lists it: `(cursor, record)`.
fn positioned(item: &Bound<'_, PyAny>) -> PyResult<(Cursor, ChangeRecord)> {
    let (at, record): (String, Bound<'_, PyAny>) = item.extract()?;
    Ok((cursor(item.py(), &at)?, from_py(&record, "change record")?))
}

fn positioned_list(items: &Bound<'_, PyAny>) -> PyResult<Vec<(Cursor, ChangeRecord)>> {
    items.try_iter()?.map(|item| positioned(&item?)).collect()
}

fn app_error(message: Option<String>, unavailable: bool) -> Option<AppError> {
    message.map(|m| {
        if unavailable {
            AppError::unavailable(m)
        } else {
            AppError::new(m)
        }
    })
}

#[pymethods]
impl Server {
    #[new]
    #[pyo3(signature = (
        *, store=true, store_epoch=None, store_retention=None, token=None, path=None,
        allowed_origins=None, presence=None, max_sessions=None, max_frame_len=None,
        max_oversized_frames=None, max_invalid_frames=None, max_in_flight=None,
        max_subscriptions=None, max_topics=None, max_rooms=None, max_room_size=None,
        max_outbound_bytes=None, reports_writes=None, max_changes_per_frame=None,
        rate_limit_burst=None, rate_limit_window=None, idle_timeout=None, presence_ttl=None,
        ping_interval=None, seed=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        store: bool,
        store_epoch: Option<u64>,
        store_retention: Option<usize>,
        token: Option<String>,
        path: Option<String>,
        allowed_origins: Option<Vec<String>>,
        presence: Option<bool>,
        max_sessions: Option<usize>,
        max_frame_len: Option<usize>,
        max_oversized_frames: Option<u32>,
        max_invalid_frames: Option<u32>,
        max_in_flight: Option<usize>,
        max_subscriptions: Option<usize>,
        max_topics: Option<usize>,
        max_rooms: Option<usize>,
        max_room_size: Option<usize>,
        max_outbound_bytes: Option<usize>,
        reports_writes: Option<bool>,
        max_changes_per_frame: Option<usize>,
        rate_limit_burst: Option<u32>,
        rate_limit_window: Option<f64>,
        idle_timeout: Option<f64>,
        presence_ttl: Option<f64>,
        ping_interval: Option<f64>,
        seed: Option<u64>,
    ) -> PyResult<Self> {
        let mut c = ServerConfig::default();
        if let Some(token) = token {
            // The Rust `syncmux-server`'s decision (examples/server.rs, `--token`).
            let auth = Arc::new(move |req: &AuthRequest<'_>| {
                if req.token == Some(token.as_str()) {
                    AuthDecision::allow(None)
                } else {
                    AuthDecision::deny(401, "missing or wrong token")
                }
            });
            c.auth = Some(auth);
        }
        c.path = path;
        c.allowed_origins = allowed_origins;
        set(&mut c.presence, presence);
        set(&mut c.max_sessions, max_sessions);
        set(&mut c.max_frame_len, max_frame_len);
        set(&mut c.max_oversized_frames, max_oversized_frames);
        set(&mut c.max_invalid_frames, max_invalid_frames);
        set(&mut c.max_in_flight, max_in_flight);
        set(&mut c.max_subscriptions, max_subscriptions);
        set(&mut c.max_topics, max_topics);
        set(&mut c.max_rooms, max_rooms);
        set(&mut c.max_room_size, max_room_size);
        set(&mut c.max_outbound_bytes, max_outbound_bytes);
        set(&mut c.reports_writes, reports_writes);
        set(&mut c.max_changes_per_frame, max_changes_per_frame);
        set(&mut c.rate_limit_burst, rate_limit_burst);
        set_secs(
            "rate_limit_window",
            &mut c.rate_limit_window,
            rate_limit_window,
        )?;
        set_secs("idle_timeout", &mut c.idle_timeout, idle_timeout)?;
        set_secs("presence_ttl", &mut c.presence_ttl, presence_ttl)?;
        set_secs("ping_interval", &mut c.ping_interval, ping_interval)?;
        set(&mut c.seed, seed);
        let server = syncmux::Server::new(c).map_err(|e| config_error(py, &e))?;
        let inner = if store {
            let mut config = StoreConfig::default();
            set(&mut config.epoch, store_epoch);
            set(&mut config.retention, store_retention);
            Inner::Driver(Box::new(Driver::new(server, MemoryStore::new(config))))
        } else {
            Inner::Server(Box::new(server))
        };
        Ok(Server { inner })
    }

    /// The effective configuration, durations in seconds.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.server().config();
        let d = PyDict::new(py);
        d.set_item("path", &c.path)?;
        d.set_item("allowed_origins", &c.allowed_origins)?;
        d.set_item("auth", c.auth.is_some())?;
        d.set_item("presence", c.presence)?;
        d.set_item("max_sessions", c.max_sessions)?;
        d.set_item("max_frame_len", c.max_frame_len)?;
        d.set_item("max_oversized_frames", c.max_oversized_frames)?;
        d.set_item("max_invalid_frames", c.max_invalid_frames)?;
        d.set_item("max_in_flight", c.max_in_flight)?;
        d.set_item("max_subscriptions", c.max_subscriptions)?;
        d.set_item("max_topics", c.max_topics)?;
        d.set_item("max_rooms", c.max_rooms)?;
        d.set_item("max_room_size", c.max_room_size)?;
        d.set_item("max_outbound_bytes", c.max_outbound_bytes)?;
        d.set_item("reports_writes", c.reports_writes)?;
        d.set_item("max_changes_per_frame", c.max_changes_per_frame)?;
        d.set_item("rate_limit_burst", c.rate_limit_burst)?;
        d.set_item("rate_limit_window", c.rate_limit_window.as_secs_f64())?;
        d.set_item("idle_timeout", c.idle_timeout.as_secs_f64())?;
        d.set_item("presence_ttl", c.presence_ttl.as_secs_f64())?;
        d.set_item("ping_interval", c.ping_interval.as_secs_f64())?;
        d.set_item("seed", c.seed)?;
        d.set_item("store", matches!(self.inner, Inner::Driver(_)))?;
        Ok(d)
    }

    /// Open sessions.
    #[getter]
    fn session_count(&self) -> usize {
        self.server().session_count()
    }

    /// Whether `session` is open.
    fn is_open(&self, session: &SessionId) -> bool {
        self.server().is_open(session.0)
    }

    /// The node id of `session`.
    fn node_id(&self, session: &SessionId) -> Option<String> {
        self.server().node_id(session.0).map(str::to_owned)
    }

    /// The tables `session` is subscribed to.
    fn subscriptions(&self, session: &SessionId) -> Vec<String> {
        self.server()
            .subscriptions(session.0)
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    /// The embedded store's head cursor (`None` without the store).
    #[getter]
    fn store_head(&self) -> Option<String> {
        match &self.inner {
            Inner::Driver(d) => d.store().map(|s| s.head().to_string()),
            Inner::Server(_) => None,
        }
    }

    /// How many changes the embedded store holds (`None` without the store).
    #[getter]
    fn store_len(&self) -> Option<usize> {
        match &self.inner {
            Inner::Driver(d) => d.store().map(|s| s.len()),
            Inner::Server(_) => None,
        }
    }

    // ----- inputs ----------------------------------------------------------------------

    /// Decides a WebSocket upgrade: `Accept(session, node_id, protocol)` (answer with
    /// `protocol` as `Sec-WebSocket-Protocol` when set, then drain `poll_transmit`) or
    /// `Reject(status, reason)` (answer with that HTTP status). `headers` are `(name, value)`
    /// pairs; `protocols` the offered subprotocols (comma-separated entries are split).
    #[pyo3(signature = (now, path, query="", headers=None, protocols=None, origin=None))]
    #[allow(clippy::too_many_arguments)]
    fn handle_handshake(
        &mut self,
        py: Python<'_>,
        now: f64,
        path: String,
        query: &str,
        headers: Option<Vec<(String, String)>>,
        protocols: Option<Vec<String>>,
        origin: Option<String>,
    ) -> PyResult<Py<PyAny>> {
        let now = instant(now)?;
        let mut handshake = Handshake::new(path, query);
        handshake.headers = headers.unwrap_or_default();
        handshake.protocols = protocols
            .unwrap_or_default()
            .iter()
            .flat_map(|p| p.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        handshake.origin = origin;
        let outcome = either!(&mut self.inner, s => s.handle_handshake(now, &handshake));
        let obj = match outcome {
            HandshakeOutcome::Accept {
                session,
                node_id,
                protocol,
            } => object(
                py,
                Accept {
                    session: SessionId(session),
                    node_id,
                    protocol,
                },
            )?,
            HandshakeOutcome::Reject { status, reason } => object(py, Reject { status, reason })?,
        };
        Ok(obj.unbind())
    }

    /// A text frame from `session` (`str` or `bytes`).
    fn handle_message(
        &mut self,
        now: f64,
        session: &SessionId,
        data: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let bytes: Bytes = frame_bytes(data)?;
        let now = instant(now)?;
        either!(&mut self.inner, s => s.handle_message(now, session.0, bytes));
        Ok(())
    }

    /// A binary frame of `length` bytes from `session` (answered with `INVALID_FRAME`).
    fn handle_binary(&mut self, now: f64, session: &SessionId, length: usize) -> PyResult<()> {
        let now = instant(now)?;
        either!(&mut self.inner, s => s.handle_binary(now, session.0, length));
        Ok(())
    }

    /// The socket of `session` closed.
    fn handle_disconnected(&mut self, now: f64, session: &SessionId) -> PyResult<()> {
        let now = instant(now)?;
        either!(&mut self.inner, s => s.handle_disconnected(now, session.0));
        Ok(())
    }

    /// The socket of `session` wrote `length` bytes (with `reports_writes=True`).
    fn handle_sent(&mut self, now: f64, session: &SessionId, length: usize) -> PyResult<()> {
        let now = instant(now)?;
        either!(&mut self.inner, s => s.handle_sent(now, session.0, length));
        Ok(())
    }

    /// Time passed; a call with nothing due does nothing.
    fn handle_timeout(&mut self, now: f64) -> PyResult<()> {
        let now = instant(now)?;
        either!(&mut self.inner, s => s.handle_timeout(now));
        Ok(())
    }

    /// Closes `session` with `code` and `reason`.
    #[pyo3(signature = (now, session, code=1000, reason=""))]
    fn close_session(
        &mut self,
        now: f64,
        session: &SessionId,
        code: u16,
        reason: &str,
    ) -> PyResult<()> {
        let now = instant(now)?;
        either!(&mut self.inner, s => s.close_session(now, session.0, CloseCode(code), reason));
        Ok(())
    }

    /// Closes every session with 1001 and refuses new handshakes (503).
    fn shutdown(&mut self, now: f64) -> PyResult<()> {
        let now = instant(now)?;
        either!(&mut self.inner, s => s.shutdown(now));
        Ok(())
    }

    // ----- answers (store=False) -------------------------------------------------------

    /// Answers a `Pull` event: `changes` as `(cursor, record)` pairs, the newest HLC of the
    /// tables, the store's head and whether the answer is complete; or `error` (a message:
    /// `HANDLER_ERROR`, or `UNAVAILABLE` with `unavailable=True`).
    #[pyo3(signature = (now, request, changes=None, *, latest_hlc=None, head="0.0", complete=true, error=None, unavailable=false))]
    #[allow(clippy::too_many_arguments)]
    fn answer_pull(
        &mut self,
        py: Python<'_>,
        now: f64,
        request: &PullId,
        changes: Option<&Bound<'_, PyAny>>,
        latest_hlc: Option<&Bound<'_, PyAny>>,
        head: &str,
        complete: bool,
        error: Option<String>,
        unavailable: bool,
    ) -> PyResult<()> {
        let now = instant(now)?;
        let answer = pull_answer(py, changes, latest_hlc, head, complete, error, unavailable)?;
        self.bare(py)?.answer_pull(now, request.0, answer);
        Ok(())
    }

    /// Answers a `Replay` event, as `answer_pull`.
    #[pyo3(signature = (now, request, changes=None, *, latest_hlc=None, head="0.0", complete=true, error=None, unavailable=false))]
    #[allow(clippy::too_many_arguments)]
    fn answer_replay(
        &mut self,
        py: Python<'_>,
        now: f64,
        request: &ReplayId,
        changes: Option<&Bound<'_, PyAny>>,
        latest_hlc: Option<&Bound<'_, PyAny>>,
        head: &str,
        complete: bool,
        error: Option<String>,
        unavailable: bool,
    ) -> PyResult<()> {
        let now = instant(now)?;
        let answer = pull_answer(py, changes, latest_hlc, head, complete, error, unavailable)?;
        self.bare(py)?.answer_replay(now, request.0, answer);
        Ok(())
    }

    /// Answers a `Push` event: `accepted` as `(cursor, record)` pairs (the new changes, in
    /// position order; only they are routed to the subscribers), the newest HLC and the
    /// head after the merge; or `error`.
    #[pyo3(signature = (now, request, accepted=None, *, latest_hlc=None, head="0.0", error=None, unavailable=false))]
    #[allow(clippy::too_many_arguments)]
    fn answer_push(
        &mut self,
        py: Python<'_>,
        now: f64,
        request: &PushId,
        accepted: Option<&Bound<'_, PyAny>>,
        latest_hlc: Option<&Bound<'_, PyAny>>,
        head: &str,
        error: Option<String>,
        unavailable: bool,
    ) -> PyResult<()> {
        let now = instant(now)?;
        let answer = match app_error(error, unavailable) {
            Some(e) => Err(e),
            None => Ok(PushAnswer {
                accepted: accepted
                    .map(positioned_list)
                    .transpose()?
                    .unwrap_or_default(),
                latest_hlc: latest_hlc.map(hlc).transpose()?.unwrap_or_default(),
                head: cursor(py, head)?,
            }),
        };
        self.bare(py)?.answer_push(now, request.0, answer);
        Ok(())
    }

    // ----- outputs ---------------------------------------------------------------------

    /// The next socket action: `SessionFrame` or `SessionClose`; `None` when there is none.
    fn poll_transmit(&mut self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let t = either!(&mut self.inner, s => s.poll_transmit());
        let obj = match t {
            None => return Ok(None),
            Some(ServerTransmit::Frame { session, bytes }) => object(
                py,
                SessionFrame {
                    session: SessionId(session),
                    bytes,
                },
            )?,
            Some(ServerTransmit::Close {
                session,
                code,
                reason,
            }) => object(
                py,
                SessionClose {
                    session: SessionId(session),
                    code: code.0,
                    reason,
                },
            )?,
        };
        Ok(Some(obj.unbind()))
    }

    /// The next event: `SessionOpened`, `SessionClosed`, and (with `store=False`) `Pull`,
    /// `Push`, `Replay`; `None` when there is none.
    fn poll_event(&mut self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        loop {
            let event = either!(&mut self.inner, s => s.poll_event());
            let Some(event) = event else {
                return Ok(None);
            };
            if let Some(obj) = server_event(py, event)? {
                return Ok(Some(obj));
            }
        }
    }

    /// When to call `handle_timeout` next (seconds, as `time.monotonic()`), or `None`.
    fn poll_timeout(&self) -> Option<f64> {
        let at: Option<Instant> = either!(&self.inner, s => s.poll_timeout());
        at.map(seconds)
    }

    fn __repr__(&self) -> String {
        format!(
            "Server(sessions={}, store={})",
            self.session_count(),
            matches!(self.inner, Inner::Driver(_))
        )
    }
}

fn pull_answer(
    py: Python<'_>,
    changes: Option<&Bound<'_, PyAny>>,
    latest_hlc: Option<&Bound<'_, PyAny>>,
    head: &str,
    complete: bool,
    error: Option<String>,
    unavailable: bool,
) -> PyResult<Result<PullAnswer, AppError>> {
    if let Some(e) = app_error(error, unavailable) {
        return Ok(Err(e));
    }
    let latest: Hlc = latest_hlc.map(hlc).transpose()?.unwrap_or_default();
    Ok(Ok(PullAnswer {
        changes: changes
            .map(positioned_list)
            .transpose()?
            .unwrap_or_default(),
        latest_hlc: latest,
        head: cursor(py, head)?,
        complete,
    }))
}

/// The events the bindings expose; shared presence and rooms (a server among several) are
/// not exposed, and are off by default.
fn server_event(py: Python<'_>, event: ServerEvent) -> PyResult<Option<Py<PyAny>>> {
    let obj = match event {
        ServerEvent::SessionOpened { session, node_id } => object(
            py,
            SessionOpened {
                session: SessionId(session),
                node_id,
            },
        )?,
        ServerEvent::SessionClosed {
            session,
            node_id,
            code,
        } => object(
            py,
            SessionClosed {
                session: SessionId(session),
                node_id,
                code: code.map(|c| c.0),
            },
        )?,
        ServerEvent::Pull {
            request,
            session,
            node_id,
            tables,
            since,
            cursor,
        } => object(
            py,
            Pull {
                request: PullId(request),
                session: SessionId(session),
                node_id,
                tables,
                since: since.as_ref().map(|h| to_py(py, h)).transpose()?,
                cursor: cursor.map(|c| c.to_string()),
            },
        )?,
        ServerEvent::Push {
            request,
            session,
            node_id,
            changes,
        } => object(
            py,
            Push {
                request: PushId(request),
                session: SessionId(session),
                node_id,
                changes: to_py(py, &changes)?,
            },
        )?,
        ServerEvent::Replay {
            request,
            session,
            tables,
            since,
            cursor,
            head_only,
        } => object(
            py,
            Replay {
                request: ReplayId(request),
                session: SessionId(session),
                tables,
                since: since.as_ref().map(|h| to_py(py, h)).transpose()?,
                cursor: cursor.map(|c| c.to_string()),
                head_only,
            },
        )?,
        _ => return Ok(None),
    };
    Ok(Some(obj.unbind()))
}

macro_rules! handle {
    ($(#[$doc:meta])* $name:ident($inner:ty), $int:expr) => {
        $(#[$doc])*
        #[pyclass(module = "syncmux._syncmux", frozen, eq, hash)]
        #[derive(Clone, PartialEq, Eq, Hash)]
        pub(crate) struct $name($inner);

        #[pymethods]
        impl $name {
            fn __repr__(&self) -> String {
                format!("{}({})", stringify!($name), self.0)
            }

            fn __int__(&self) -> u64 {
                let int = $int;
                int(self.0)
            }
        }
    };
}

handle! {
    /// A session (one WebSocket connection), hashable; `int(session)` is its number.
    SessionId(syncmux::SessionId), syncmux::SessionId::as_u64
}
/// A request handle's number, as the core displays it (the handles keep it private).
fn number(display: impl std::fmt::Display) -> u64 {
    display.to_string().parse().unwrap_or(0)
}

handle! {
    /// A pull to answer with `Server.answer_pull`.
    PullId(syncmux::PullId), number
}
handle! {
    /// A push to answer with `Server.answer_push`.
    PushId(syncmux::PushId), number
}
handle! {
    /// A replay to answer with `Server.answer_replay`.
    ReplayId(syncmux::ReplayId), number
}

record! {
    /// Upgrade: answer with `protocol` as `Sec-WebSocket-Protocol` when set, then drain
    /// `poll_transmit` (a version mismatch already has its error frame and 4426 close queued).
    Accept { session: SessionId, node_id: String, protocol: Option<String> }
    |a| format!("Accept(session={}, node_id={:?}, protocol={:?})", a.session.0, a.node_id, a.protocol)
}

record! {
    /// Refuse the upgrade with this HTTP status (401, 403, 404, 503).
    Reject { status: u16, reason: String }
    |r| format!("Reject(status={}, reason={:?})", r.status, r.reason)
}

text_frame! {
    /// Send this text frame to `session` (`text` or `data`).
    SessionFrame {
        /// The session.
        #[pyo3(get)]
        session: SessionId,
    }
    |f| format!("SessionFrame({}, {})", f.session.0, py_text(&f.bytes))
}

record! {
    /// Close the socket of `session` with `code` and `reason`; the session is gone.
    SessionClose { session: SessionId, code: u16, reason: String }
    |c| format!("SessionClose({}, code={}, reason={:?})", c.session.0, c.code, c.reason)
}

record! {
    /// A handshake was accepted and the session is open.
    SessionOpened { session: SessionId, node_id: String }
    |o| format!("SessionOpened({}, node_id={:?})", o.session.0, o.node_id)
}

record! {
    /// A session ended (`code`: the close code the server sent, if it closed it).
    SessionClosed { session: SessionId, node_id: String, code: Option<u16> }
    |c| format!("SessionClosed({}, node_id={:?}, code={:?})", c.session.0, c.node_id, c.code)
}

record! {
    /// Answer with `Server.answer_pull`: the changes of `tables` after `cursor` (else `since`).
    Pull {
        request: PullId,
        session: SessionId,
        node_id: String,
        tables: Vec<String>,
        since: Option<Py<PyAny>>,
        cursor: Option<String>,
    }
    |p| format!("Pull({}, session={}, tables={:?})", p.request.0, p.session.0, p.tables)
}

record! {
    /// Merge `changes` (dicts) and answer with `Server.answer_push`.
    Push { request: PushId, session: SessionId, node_id: String, changes: Py<PyAny> }
    |p| format!("Push({}, session={})", p.request.0, p.session.0)
}

record! {
    /// A subscribe took effect: answer with `Server.answer_replay` (no changes when
    /// `head_only`, only the head).
    Replay {
        request: ReplayId,
        session: SessionId,
        tables: Vec<String>,
        since: Option<Py<PyAny>>,
        cursor: Option<String>,
        head_only: bool,
    }
    |r| format!("Replay({}, session={}, tables={:?})", r.request.0, r.session.0, r.tables)
}
