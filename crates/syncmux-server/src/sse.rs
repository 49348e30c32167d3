//! The SSE streams under `/sync`: Grove's (`GET /sync/stream`, its `StreamingTransport`)
//! and syncmux's own protocol (`GET /sync/sse`, fed by `POST /sync/send`).
//!
//! No protocol rule is written here: a stream is a session of the sync server run over
//! channels ([`adapters::Tokio::frames`]), decided by the WebSocket's handshake on the
//! request's query and headers; only how its frames are written differs.
//!
//! - **Grove's**: the session subscribes with the request's `tables`, its `since_ts` /
//!   `since_count` / `since_node` (the `since` HLC) and its `Last-Event-ID` (the cursor).
//!   `change` and `changes` frames are Grove's events of those names, each with an `id:`
//!   line holding its cursor (a reconnect with `Last-Event-ID` resumes exactly after it,
//!   late old-HLC changes included), the subscribe's ack a bare `id:` line (where the live
//!   stream continues from); the server's pings are answered by the stream itself (Grove's
//!   clients send nothing on it). An error before the stream starts is a status and
//!   `{"error","code"}` as on Grove's POSTs; one after it an `event: error`.
//! - **syncmux's own**: the first event is `event: session` with the session's id (also set
//!   as the cookie [`SESSION_COOKIE`]), then every frame as one unnamed `data:` event, with
//!   an `id:` line on frames that carry a cursor; `POST /sync/send` with that id feeds the
//!   session ([`Streams`]).
//!
//! Both: `: keep-alive` comments every 15 s, and a close by the server as a last `event:
//! close` with its code and reason.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use hyper::StatusCode;
use syncmux::wire::{DecodeLimits, ErrorCode, Frame, MessageType};
use syncmux_runtime::{self as adapters, Events, Frames, SyncServer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::http::{self, Failure, Origins, Routes};
use crate::presence::{Holders, Leave};

/// Grove's stream.
pub(crate) const STREAM_PATH: &str = "/sync/stream";
/// syncmux's own protocol over SSE.
pub(crate) const SSE_PATH: &str = "/sync/sse";
/// The cookie that names an own-protocol stream's session to `POST /sync/send`.
pub(crate) const SESSION_COOKIE: &str = "syncmux_session";

/// How a stream keeps its connection alive.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    /// How often a quiet stream gets a `: keep-alive` comment (15 s, Grove's server's
    /// interval). A proxy that drops idle connections keeps it; a consumer that went away is
    /// found by the write.
    pub(crate) keep_alive: Duration,
    /// How long one write may wait for the consumer to read (30 s). A consumer that reads
    /// nothing for this long is dropped (the frames waiting meanwhile are bounded by the
    /// session's outbound bound, past which the server closes it as a slow consumer).
    pub(crate) write_timeout: Duration,
}

pub(crate) const TIMING: Timing = Timing {
    keep_alive: Duration::from_secs(15),
    write_timeout: Duration::from_secs(30),
};

/// The id of a Grove stream's subscribe, which its ack and its error echo.
const ID: &str = "stream";

/// Which stream a request asked for.
#[derive(Clone, Copy)]
pub(crate) enum Dialect<'a> {
    /// Grove's `GET /sync/stream`, whose node (if it names one) leaves these presence
    /// sessions when it ends.
    Grove(&'a Holders),
    /// syncmux's own `GET /sync/sse`, registered in these streams.
    Syncmux(&'a Streams),
}

/// The stream a request for `path` asks for, if it is one.
pub(crate) fn dialect<'a>(path: &[u8], routes: &'a Routes) -> Option<Dialect<'a>> {
    if path == STREAM_PATH.as_bytes() {
        Some(Dialect::Grove(&routes.holders))
    } else if path == SSE_PATH.as_bytes() {
        Some(Dialect::Syncmux(&routes.streams))
    } else {
        None
    }
}

/// A stream's inbox, locked by a `POST /sync/send` while it hands over its frames.
pub(crate) type Inbox = Arc<tokio::sync::Mutex<async_channel::Sender<Bytes>>>;

/// The open own-protocol streams of this server, by session id: where `POST /sync/send`
/// finds the inbox of the stream it names. A session id is 128 random bits, so only its
/// stream's consumer can name it; with a relay ([`Streams::relay_through`]) it starts with
/// this server's node id, and a POST that reaches another server sharing the Redis is
/// forwarded here.
#[derive(Clone, Default)]
pub(crate) struct Streams(Arc<StreamsInner>);

#[derive(Default)]
struct StreamsInner {
    inboxes: Mutex<HashMap<String, Inbox>>,
    relay: std::sync::OnceLock<Relay>,
}

/// Forwards a request's body to session `.1`, held by server `.0`: its answer (`None`: no
/// such session there), or why the relay failed.
pub(crate) type Forward = Arc<
    dyn Fn(
            String,
            String,
            String,
        ) -> futures_util::future::BoxFuture<'static, Result<Option<String>, String>>
        + Send
        + Sync,
>;

/// A relay's node id among the servers sharing it, and how to reach the others.
pub(crate) struct Relay {
    pub(crate) node: String,
    pub(crate) forward: Forward,
}

impl Relay {
    /// The node holding session `id` when it is another server (ids start with their node).
    pub(crate) fn elsewhere<'a>(&self, id: &'a str) -> Option<&'a str> {
        id.split_once('.')
            .map(|(node, _)| node)
            .filter(|node| *node != self.node)
    }
}

/// A fresh stream id: 128 random bits in hex, after `node` and a dot when streams are
/// relayed (so that any server knows where the stream is).
pub(crate) fn new_id(relay: Option<&Relay>) -> Result<String, Failure> {
    let mut id = [0u8; 16];
    let random = rustls::crypto::ring::default_provider().secure_random;
    random.fill(&mut id).map_err(|_| {
        let message = "no randomness for a session id";
        Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", message)
    })?;
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    Ok(match relay {
        Some(relay) => format!("{}.{id}", relay.node),
        None => id,
    })
}

impl Streams {
    /// Session ids start with `node` from now on, and frames for another server's sessions
    /// go through `forward`.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // only Redis relays
    pub(crate) fn relay_through(&self, node: String, forward: Forward) {
        let _ = self.0.relay.set(Relay { node, forward });
    }

    /// Hands `frames` (`text`, one per line) to session `id`, in order and together: whether
    /// its stream took them (`false`: no such stream, here or on the server its id names).
    pub(crate) async fn deliver(
        &self,
        id: &str,
        frames: Vec<Bytes>,
        text: &str,
    ) -> Result<bool, String> {
        let local = self.lock().get(id).cloned();
        if let Some(inbox) = local {
            let inbox = inbox.lock().await;
            for frame in frames {
                if inbox.send(frame).await.is_err() {
                    return Ok(false);
                }
            }
            return Ok(true);
        }
        let Some(relay) = self.0.relay.get() else {
            return Ok(false);
        };
        match relay.elsewhere(id) {
            Some(node) => {
                let forwarded = (relay.forward)(node.to_owned(), id.to_owned(), text.to_owned());
                Ok(forwarded.await?.is_some())
            }
            None => Ok(false),
        }
    }

    /// [`deliver`](Self::deliver) of a request another server forwarded: its frames, one per
    /// line, to a session of this server's.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // only Redis relays
    pub(crate) async fn deliver_forwarded(&self, id: &str, text: String) -> bool {
        let text = Bytes::from(text);
        let frames = text
            .split(|&b| b == b'\n')
            .map(<[u8]>::trim_ascii)
            .filter(|line| !line.is_empty())
            .map(|line| text.slice_ref(line))
            .collect();
        let known = self.lock().contains_key(id);
        known && self.deliver(id, frames, "").await.unwrap_or(false)
    }

    /// A fresh session id, for [`register`](Self::register).
    fn new_id(&self) -> Result<String, Failure> {
        new_id(self.0.relay.get())
    }

    /// Registers `inbox` under `id`, until the registration is dropped.
    fn register(&self, id: String, inbox: async_channel::Sender<Bytes>) -> Registration {
        let inbox = Arc::new(tokio::sync::Mutex::new(inbox));
        self.lock().insert(id.clone(), inbox);
        Registration {
            streams: self.clone(),
            id,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Inbox>> {
        self.0.inboxes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An own-protocol stream's entry in [`Streams`], removed when dropped (the stream ended).
struct Registration {
    streams: Streams,
    id: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.streams.lock().remove(&self.id);
    }
}

/// A stream's connection: a plain TCP socket the hub writes itself
/// ([`adapters::Tokio::events_tcp`]), or any other stream (TLS, or behind a router's
/// split), written by the stream's task.
pub(crate) enum Connection<S> {
    Tcp(tokio::net::TcpStream),
    Io(S),
}

/// Serves the stream `dialect` names on `connection`, whose request head is `head` (read
/// already).
pub(crate) async fn serve<S>(
    server: &SyncServer,
    origins: &Origins,
    dialect: Dialect<'_>,
    head: &[u8],
    connection: Connection<S>,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    serve_with(server, origins, dialect, head, connection, TIMING).await
}

async fn serve_with<S>(
    server: &SyncServer,
    origins: &Origins,
    dialect: Dialect<'_>,
    head: &[u8],
    connection: Connection<S>,
    timing: Timing,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (opened, head) = match start(server, origins, dialect, head).await {
        Ok(started) => started,
        Err(answer) => return connection.refuse(&answer).await,
    };
    let Opened {
        session,
        first,
        id,
        _leave,
    } = opened;
    let own = id.is_some();
    let events = Arc::new(StreamEvents { own, timing });
    let mut head = Vec::from(head);
    if let Some(frame) = first {
        grove_event(&frame, &mut head);
    }
    let (frames, running) = match connection {
        Connection::Tcp(tcp) => {
            let (frames, stream) =
                adapters::Tokio::events_tcp(session, tcp, head.into(), events.clone());
            (frames, Running::Direct(stream))
        }
        Connection::Io(io) => (adapters::Tokio::frames(session), Running::Io(io, head)),
    };
    // Registered before the first event can leave (with the stream's first poll).
    let _registration = register(dialect, id, &frames);
    pump(frames, running, &*events, timing).await
}

impl<S: AsyncWrite + Unpin> Connection<S> {
    /// Writes a refused request's whole answer.
    pub(crate) async fn refuse(self, answer: &[u8]) -> std::io::Result<()> {
        match self {
            Connection::Tcp(mut tcp) => tcp.write_all(answer).await,
            Connection::Io(mut io) => io.write_all(answer).await,
        }
    }
}

/// A stream's session running: on a TCP socket the hub writes (the future runs it), or
/// on a connection whose task writes the head, then the frames.
pub(crate) enum Running<S, F> {
    Direct(F),
    Io(S, Vec<u8>),
}

/// Runs a stream until its session or its consumer ends it: `frames` is its session (kept
/// while it runs), `events` how its frames are written.
pub(crate) async fn pump<S, F>(
    mut frames: Frames,
    running: Running<S, F>,
    events: &dyn Events,
    timing: Timing,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: std::future::Future<Output = ()>,
{
    let (mut io, head) = match running {
        Running::Direct(stream) => {
            stream.await;
            return Ok(());
        }
        Running::Io(io, head) => (io, head),
    };
    let inbox = frames.inbox();
    write(&mut io, &head, timing.write_timeout).await?;
    let (every, keep_alive) = events.keep_alive();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut scratch = [0u8; 512];
    loop {
        let event = tokio::select! {
            frame = frames.next() => match frame {
                Some(frame) => events.frame(&frame, &inbox),
                None => {
                    if let Some((code, reason)) = frames.closed_with() {
                        let last = events.close(code, &reason);
                        write(&mut io, &last, timing.write_timeout).await?;
                    }
                    return io.shutdown().await;
                }
            },
            _ = tick.tick() => Some(keep_alive.clone()),
            read = io.read(&mut scratch) => match read {
                // The consumer closed its side: it is gone.
                Ok(0) | Err(_) => return Ok(()),
                // A consumer sends nothing after its request; whatever it sends is dropped.
                Ok(_) => continue,
            },
        };
        if let Some(event) = event {
            write(&mut io, &event, timing.write_timeout).await?;
            tick.reset();
        }
    }
}

/// A stream request's head, parsed, and its CORS header lines; or the whole answer of a
/// request refused for its origin or its head, or of a preflight.
pub(crate) fn admit(origins: &Origins, head: &[u8]) -> Result<(RequestHead, String), Vec<u8>> {
    let request = RequestHead::parse(head);
    let origin = request.as_ref().and_then(|r| r.header("origin"));
    let origin = origin.map(str::to_owned);
    let origin = origin.as_deref();
    let cors = lines(origins.cors(origin));
    if let Err(failure) = origins.check(origin) {
        return Err(refused(failure, &cors));
    }
    match request {
        None => Err(refused(
            bad_request("the request head does not parse"),
            &cors,
        )),
        Some(request) if request.method == "OPTIONS" => Err(match origins.preflight(origin) {
            Ok(headers) => format!(
                "HTTP/1.1 204 No Content\r\n{}Content-Length: 0\r\nConnection: close\r\n\r\n",
                lines(headers)
            )
            .into_bytes(),
            Err(failure) => refused(failure, &cors),
        }),
        Some(request) => Ok((request, cors)),
    }
}

fn lines(headers: Vec<(hyper::header::HeaderName, String)>) -> String {
    headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect()
}

/// The whole answer of a stream request that failed before its first event: its status and
/// `{"error","code"}`.
pub(crate) fn refused(failure: Failure, cors: &str) -> Vec<u8> {
    let header = failure.header("GET");
    let extra = header.map_or(String::new(), |(name, value)| {
        format!("{name}: {value}\r\n")
    });
    let body = failure.body();
    let answer = format!(
        "HTTP/1.1 {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         {extra}{cors}Connection: close\r\n\r\n{body}",
        failure.status,
        body.len()
    );
    answer.into_bytes()
}

/// The head of a stream's answer, up to its first event: `extra` (header lines) after the
/// headers every stream has.
pub(crate) fn stream_head(cors: &str, extra: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
         X-Accel-Buffering: no\r\n{cors}{extra}Connection: close\r\n\r\n"
    )
}

/// The answer to a stream's request up to its first event: the session (subscribed, for
/// Grove's) and the response's head; or the whole answer of a refused request or a
/// preflight.
async fn start(
    server: &SyncServer,
    origins: &Origins,
    dialect: Dialect<'_>,
    head: &[u8],
) -> Result<(Opened, String), Vec<u8>> {
    let (request, cors) = admit(origins, head)?;
    let opened = open(server, dialect, &request)
        .await
        .map_err(|failure| refused(failure, &cors))?;
    let head = match &opened.id {
        Some(id) => {
            let cookie = format!(
                "Set-Cookie: {SESSION_COOKIE}={id}; Path=/sync; HttpOnly; SameSite=Lax\r\n"
            );
            let mut head = stream_head(&cors, &cookie);
            head.push_str(&format!(
                "event: session\ndata: {{\"session\":\"{id}\"}}\n\n"
            ));
            head
        }
        None => stream_head(&cors, ""),
    };
    Ok((opened, head))
}

/// An own-protocol stream's entry in [`Streams`] under `id` (`None` for Grove's).
fn register(dialect: Dialect<'_>, id: Option<String>, frames: &Frames) -> Option<Registration> {
    match (dialect, id) {
        (Dialect::Syncmux(streams), Some(id)) => Some(streams.register(id, frames.inbox())),
        _ => None,
    }
}

/// A stream whose session was accepted (and, for Grove's, subscribed).
struct Opened {
    session: adapters::AcceptedSession,
    /// A Grove stream's first frame, which showed the subscribe succeeded (a replayed
    /// change or its ack).
    first: Option<Frame>,
    /// An own-protocol stream's session id (its frames are events as they are).
    id: Option<String>,
    /// A Grove stream opened with `node_id`: its node leaves its presence when it ends.
    _leave: Option<Leave>,
}

/// How a stream's frames are written: Grove's events, or the own protocol's.
struct StreamEvents {
    own: bool,
    timing: Timing,
}

impl Events for StreamEvents {
    fn frame(&self, bytes: &Bytes, inbox: &async_channel::Sender<Bytes>) -> Option<Bytes> {
        let own = self.own;
        if let Some(event) = Encoded::get(Encoded::slot(own), bytes) {
            return (!event.is_empty()).then_some(event);
        }
        let mut out = Vec::new();
        if own {
            own_event(bytes.clone(), &mut out);
        } else {
            let frame = Frame::decode(bytes.clone(), &DecodeLimits::default()).ok()?;
            if frame.kind() == MessageType::Ping {
                // Grove's clients never answer: the stream does, so the session is not
                // idle while its consumer reads. (Only pongs go in: never full.)
                if let Some(id) = frame.id() {
                    let pong = serde_json::json!({"type": "pong", "id": id.as_str()});
                    let _ = inbox.try_send(Bytes::from(pong.to_string()));
                }
                return None;
            }
            grove_event(&frame, &mut out);
        }
        // A ping was answered above: only what every stream gets alike is kept.
        let event = Bytes::from(out);
        Encoded::put(Encoded::slot(own), bytes.clone(), event.clone());
        (!event.is_empty()).then_some(event)
    }

    fn close(&self, code: syncmux::wire::CloseCode, reason: &str) -> Bytes {
        let data = serde_json::json!({"code": code.0, "reason": reason});
        Bytes::from(format!("event: close\ndata: {data}\n\n"))
    }

    fn keep_alive(&self) -> (Duration, Bytes) {
        let comment = Bytes::from_static(b": keep-alive\n\n");
        (self.timing.keep_alive, comment)
    }
}

/// The last frame made into an event on this thread, for each kind of stream (Grove's, the
/// own protocol's, the OT profile's). A broadcast reaches every stream with the same bytes
/// (one buffer, shared): its event is made once per thread rather than once per stream, as
/// the WebSocket path frames a broadcast once. The frame is held, so its buffer cannot be
/// freed and reused for another frame while it is the key.
pub(crate) struct Encoded;

thread_local! {
    static ENCODED: std::cell::RefCell<[Option<(Bytes, Bytes)>; 3]> =
        const { std::cell::RefCell::new([None, None, None]) };
}

impl Encoded {
    /// The slot of the OT profile's streams.
    pub(crate) const OT: usize = 2;

    fn slot(own: bool) -> usize {
        usize::from(own)
    }

    fn get(slot: usize, frame: &Bytes) -> Option<Bytes> {
        ENCODED.with(|cache| {
            let cache = cache.borrow();
            let (key, event) = cache[slot].as_ref()?;
            let same = key.as_ptr() == frame.as_ptr() && key.len() == frame.len();
            same.then(|| event.clone())
        })
    }

    fn put(slot: usize, frame: Bytes, event: Bytes) {
        ENCODED.with(|cache| cache.borrow_mut()[slot] = Some((frame, event)));
    }

    /// The event of `frame` in `slot`: the one made last if it is the same frame, else
    /// `make`'s.
    pub(crate) fn get_or_make(slot: usize, frame: &Bytes, make: impl FnOnce() -> Bytes) -> Bytes {
        if let Some(event) = Encoded::get(slot, frame) {
            return event;
        }
        let event = make();
        Encoded::put(slot, frame.clone(), event.clone());
        event
    }
}

/// The own-protocol event of one frame, appended to `out`: the frame as it is, with its
/// cursor as the event's id.
fn own_event(bytes: Bytes, out: &mut Vec<u8>) {
    let frame = syncmux::wire::Frame::decode(bytes.clone(), &DecodeLimits::default()).ok();
    if let Some(cursor) = frame.as_ref().and_then(Frame::cursor) {
        out.extend_from_slice(format!("id: {cursor}\n").as_bytes());
    }
    data(&bytes, out);
    out.push(b'\n');
}

/// A stream's request head, parsed once.
pub(crate) struct RequestHead {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) query: String,
    pub(crate) headers: Vec<(String, String)>,
}

impl RequestHead {
    /// `head` parsed (`None` if it is not a whole request head).
    pub(crate) fn parse(head: &[u8]) -> Option<RequestHead> {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        if !matches!(request.parse(head), Ok(httparse::Status::Complete(_))) {
            return None;
        }
        let target = request.path?;
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let headers = request.headers.iter().filter_map(|h| {
            let value = std::str::from_utf8(h.value).ok()?;
            Some((h.name.to_owned(), value.to_owned()))
        });
        Some(RequestHead {
            method: request.method?.to_owned(),
            path: path.to_owned(),
            query: query.to_owned(),
            headers: headers.collect(),
        })
    }

    /// The first header named `name` (in any case).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        let found = self
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name));
        found.map(|(_, value)| value.as_str())
    }
}

/// The request as a session (for Grove's stream, subscribed as it asks); a failure before
/// any event.
async fn open(
    server: &SyncServer,
    dialect: Dialect<'_>,
    request: &RequestHead,
) -> Result<Opened, Failure> {
    if request.method != "GET" {
        let message = format!("{} takes GET", request.path);
        let status = StatusCode::METHOD_NOT_ALLOWED;
        return Err(Failure::new(status, "METHOD_NOT_ALLOWED", message));
    }
    let subscribe = match dialect {
        Dialect::Grove(_) => Some(subscribe(&request.query, request.header("last-event-id"))?),
        Dialect::Syncmux(_) => None,
    };
    let headers = request.headers.iter();
    let headers = headers.map(|(name, value)| (name.as_str(), value.as_str()));
    let handshake = http::handshake_of(&request.query, headers, "sse");
    let mut session = server.handshake(&handshake).map_err(Failure::refused)?;
    let leave = match dialect {
        Dialect::Grove(holders) => handshake
            .requested_node_id()
            .map(|node| holders.leave_on_drop(node.into_owned())),
        Dialect::Syncmux(_) => None,
    };
    let Some(subscribe) = subscribe else {
        let id = match dialect {
            Dialect::Syncmux(streams) => Some(streams.new_id()?),
            Dialect::Grove(_) => None,
        };
        return Ok(Opened {
            session,
            first: None,
            id,
            _leave: leave,
        });
    };
    let unavailable = || {
        let message = "the server closed the stream's session (it may be shutting down)";
        Failure::new(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", message)
    };
    session.message(subscribe);
    // The subscribe's first answer: its error, or the first frame of the stream.
    let first = loop {
        let bytes = session.next_frame().await.ok_or_else(unavailable)?;
        let Ok(frame) = syncmux::wire::Frame::decode(bytes, &DecodeLimits::default()) else {
            continue;
        };
        let ours = frame.id().is_some_and(|id| id.as_str() == ID);
        match frame.kind() {
            MessageType::Error if ours => return Err(Failure::of_error(&frame)),
            MessageType::Ack if ours => break frame,
            MessageType::Change | MessageType::Changes => break frame,
            _ => continue,
        }
    };
    Ok(Opened {
        session,
        first: Some(first),
        id: None,
        _leave: leave,
    })
}

/// The subscribe frame a stream's query asks for: `tables` (comma-separated), the `since`
/// HLC of `since_ts` / `since_count` / `since_node`, the cursor of `Last-Event-ID`.
fn subscribe(query: &str, last_event_id: Option<&str>) -> Result<Bytes, Failure> {
    let mut tables = Vec::new();
    let (mut ts, mut count, mut node) = (None, 0u32, String::new());
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*name {
            "tables" => tables.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned),
            ),
            "since_ts" => {
                ts = Some(
                    value
                        .parse::<i64>()
                        .map_err(|_| bad_request("since_ts is not an integer"))?,
                )
            }
            "since_count" => {
                count = value
                    .parse()
                    .map_err(|_| bad_request("since_count is not an integer"))?
            }
            "since_node" => node = value.into_owned(),
            _ => {}
        }
    }
    if tables.is_empty() {
        // Grove's server streams every table then; a syncmux subscription names its tables.
        return Err(bad_request("name the tables to stream: ?tables=a,b"));
    }
    let mut payload = serde_json::json!({ "tables": tables });
    if let Some(ts) = ts {
        payload["since"] = serde_json::json!({"ts": ts, "c": count, "node": node});
    }
    if let Some(cursor) = last_event_id.filter(|id| !id.is_empty()) {
        payload["cursor"] = serde_json::Value::from(cursor);
    }
    let frame = serde_json::json!({"type": "subscribe", "id": ID, "payload": payload});
    Ok(Bytes::from(frame.to_string()))
}

/// The Grove event of one frame, appended to `out` (nothing for a frame the stream does not
/// carry: presence, rooms, pongs).
fn grove_event(frame: &Frame, out: &mut Vec<u8>) {
    let cursor = |out: &mut Vec<u8>, cursor: Option<String>| {
        if let Some(cursor) = cursor {
            out.extend_from_slice(format!("id: {cursor}\n").as_bytes());
        }
    };
    match frame.kind() {
        kind @ (MessageType::Change | MessageType::Changes) => {
            cursor(out, frame.cursor().map(str::to_owned));
            let name = if kind == MessageType::Change {
                "change"
            } else {
                "changes"
            };
            out.extend_from_slice(format!("event: {name}\n").as_bytes());
            data(frame.raw_payload(), out);
            out.push(b'\n');
        }
        MessageType::Ack => {
            #[derive(serde::Deserialize)]
            struct Ack {
                cursor: Option<String>,
            }
            // Only the last event ID moves: where the live stream continues from.
            if let Ok(Some(Ack { cursor: Some(at) })) = frame.payload::<Option<Ack>>() {
                cursor(out, Some(at));
                out.push(b'\n');
            }
        }
        MessageType::Error => {
            let failure = Failure::of_error(frame);
            out.extend_from_slice(format!("event: error\ndata: {}\n\n", failure.body()).as_bytes());
        }
        _ => {}
    }
}

/// `bytes` as an event's data: a `data:` line per line of it (JSON may hold line breaks
/// between its tokens, never inside a string; SSE would end a line at each).
pub(crate) fn data(bytes: &[u8], out: &mut Vec<u8>) {
    for line in bytes.split(|&b| b == b'\n' || b == b'\r') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.push(b'\n');
    }
}

pub(crate) fn bad_request(message: &str) -> Failure {
    Failure::new(
        StatusCode::BAD_REQUEST,
        ErrorCode::InvalidPayload.as_str(),
        message,
    )
}

/// Writes `bytes`, within `timeout`.
async fn write<S: AsyncWrite + Unpin>(
    io: &mut S,
    bytes: &[u8],
    timeout: Duration,
) -> std::io::Result<()> {
    match tokio::time::timeout(timeout, io.write_all(bytes)).await {
        Ok(written) => written,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the stream's consumer stopped reading",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncmux::{Driver, MemoryStore, Server, ServerConfig, StoreConfig};
    use syncmux_runtime::ServerOptions;
    use tokio::io::DuplexStream;

    const HEAD: &[u8] = b"GET /sync/stream?tables=docs HTTP/1.1\r\nHost: x\r\n\r\n";

    fn server(config: ServerConfig) -> SyncServer {
        let store = MemoryStore::new(StoreConfig::default());
        let driver = Driver::new(Server::new(config).unwrap(), store);
        adapters::Tokio::start(driver, ServerOptions::default())
    }

    const FAST: Timing = Timing {
        keep_alive: Duration::from_millis(100),
        write_timeout: Duration::from_millis(300),
    };

    /// A consumer's end of a stream.
    trait Consumer: AsyncRead + AsyncWrite + Unpin + Send {}
    impl<T: AsyncRead + AsyncWrite + Unpin + Send> Consumer for T {}

    type Served = tokio::task::JoinHandle<std::io::Result<()>>;

    /// The stream served on one end of a pipe of `capacity` bytes (written by the stream's
    /// task); the other end.
    fn piped(server: &SyncServer, capacity: usize) -> (DuplexStream, Served) {
        let (ours, theirs) = tokio::io::duplex(capacity);
        (theirs, serve_on(server, Connection::Io(ours)))
    }

    /// The stream served on a TCP connection (written by the hub); the consumer's end.
    async fn direct(server: &SyncServer) -> (tokio::net::TcpStream, Served) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let consumer = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (consumer, accepted) = tokio::join!(consumer, listener.accept());
        let tcp = Connection::<DuplexStream>::Tcp(accepted.unwrap().0);
        (consumer.unwrap(), serve_on(server, tcp))
    }

    /// A stream on a pipe, or (`tcp`) on a TCP connection; the consumer's end, boxed.
    async fn either(server: &SyncServer, tcp: bool) -> (Box<dyn Consumer>, Served) {
        if tcp {
            let (tcp, served) = direct(server).await;
            return (Box::new(tcp), served);
        }
        let (pipe, served) = piped(server, 64 * 1024);
        (Box::new(pipe), served)
    }

    fn serve_on<S>(server: &SyncServer, connection: Connection<S>) -> Served
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let server = server.clone();
        tokio::spawn(async move {
            let grove = Dialect::Grove(&Holders::default());
            serve_with(&server, &Origins::default(), grove, HEAD, connection, FAST).await
        })
    }

    /// Reads until `text` has come (or the stream ended): everything read.
    async fn read_until(consumer: &mut (impl AsyncRead + Unpin + ?Sized), text: &str) -> String {
        let mut read = Vec::new();
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&read).contains(text) {
            match consumer.read(&mut buf).await.unwrap() {
                0 => break,
                n => read.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8(read).unwrap()
    }

    /// Waits (a while at most) until `server` holds no session.
    async fn no_sessions(server: &SyncServer) {
        let gone = tokio::time::timeout(Duration::from_secs(10), async {
            while server.session_count() > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        assert!(gone.await.is_ok(), "its session ended");
    }

    /// A quiet stream gets a `: keep-alive` comment at its interval, on both connections.
    #[tokio::test]
    async fn a_quiet_stream_gets_a_keep_alive_comment() {
        let server = server(ServerConfig::default());
        for tcp in [false, true] {
            let (mut consumer, _task) = either(&server, tcp).await;
            read_until(&mut consumer, "id: ").await;
            let start = tokio::time::Instant::now();
            let read = read_until(&mut consumer, ": keep-alive\n\n").await;
            assert!(read.ends_with(": keep-alive\n\n"), "{read:?}");
            assert!(start.elapsed() >= FAST.keep_alive);
            let read = read_until(&mut consumer, ": keep-alive\n\n").await;
            assert_eq!(read, ": keep-alive\n\n", "and again");
        }
    }

    /// The stream answers the server's pings: a session whose consumer only reads is not
    /// closed as idle; a consumer that goes away ends it. On both connections.
    #[tokio::test]
    async fn the_stream_answers_the_servers_pings() {
        let mut config = ServerConfig::default();
        config.ping_interval = Duration::from_millis(50);
        config.idle_timeout = Duration::from_millis(200);
        let server = server(config);
        let mut streams = [either(&server, false).await, either(&server, true).await];
        for (consumer, _) in &mut streams {
            read_until(consumer, "id: ").await;
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
        for (consumer, task) in streams {
            assert!(!task.is_finished(), "the stream ended");
            drop(consumer);
            let ended = tokio::time::timeout(Duration::from_secs(10), task).await;
            assert!(ended.is_ok(), "a consumer that went away ends the stream");
        }
        no_sessions(&server).await;
    }

    /// A consumer that stops reading a piped stream is dropped once a write waits longer
    /// than its timeout, and its session ends.
    #[tokio::test]
    async fn a_consumer_that_stops_reading_is_dropped() {
        let server = server(ServerConfig::default());
        let (mut consumer, task) = piped(&server, 160);
        read_until(&mut consumer, "id: ").await;
        // The pipe fills with keep-alives, then a write waits.
        let ended = tokio::time::timeout(Duration::from_secs(20), task).await;
        let served = ended.expect("the stream ended").unwrap();
        assert_eq!(served.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
        no_sessions(&server).await;
    }

    /// A consumer that stops reading a direct stream is closed as a slow consumer once the
    /// changes waiting for it pass the server's outbound bound, as on a WebSocket.
    #[tokio::test]
    async fn a_direct_consumer_that_stops_reading_is_closed_as_slow() {
        let mut config = ServerConfig::default();
        config.max_outbound_bytes = 64 * 1024;
        let server = server(config);
        let (mut consumer, task) = direct(&server).await;
        read_until(&mut consumer, "id: ").await;
        let value = "x".repeat(4096);
        let handshake = http::handshake_of("node_id=pusher", std::iter::empty(), http::HTTP);
        for i in 0..4000 {
            if task.is_finished() {
                break;
            }
            let change = format!(
                r#"{{"changes":[{{"table":"docs","pk":"{i}","field":"f","crdt_type":"lww","hlc":{{"ts":{},"c":0,"node":"pusher"}},"node_id":"pusher","value":"{value}"}}],"node_id":"pusher"}}"#,
                i + 1
            );
            let kind = MessageType::PushRequest;
            http::exchange_frame(&server, &handshake, kind, &change)
                .await
                .unwrap();
        }
        let ended = tokio::time::timeout(Duration::from_secs(10), task).await;
        assert!(ended.is_ok(), "the stream did not end");
        assert_eq!(server.session_count(), 0);
    }

    /// The `text` example of `docs/protocol.md` in the section `heading`.
    fn example(heading: &str) -> &'static str {
        let doc = include_str!("../../../docs/protocol.md");
        let section = doc.split(heading).nth(1).unwrap();
        let example = section.split("```text\n").nth(1).unwrap();
        example.split("```").next().unwrap()
    }

    /// The example of `docs/protocol.md` (section 2.2) is what Grove's stream writes for
    /// the frames it shows: the subscribe's ack, then a live change.
    #[test]
    fn the_protocol_documents_the_events_the_stream_writes() {
        let example = example("### 2.2 SSE");
        let data = example
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap();
        let frames = [
            r#"{"type":"ack","id":"stream","payload":{"recovered":true,"cursor":"7.41"}}"#
                .to_owned(),
            format!(r#"{{"type":"change","cursor":"7.42","payload":{data}}}"#),
        ];
        let mut out = Vec::new();
        for frame in frames {
            let frame = syncmux::wire::Frame::decode(Bytes::from(frame), &DecodeLimits::default());
            grove_event(&frame.unwrap(), &mut out);
        }
        out.extend_from_slice(b": keep-alive\n\n");
        assert_eq!(String::from_utf8(out).unwrap(), example);
    }

    /// The example of section 2.3 is what an own-protocol stream writes: the session event,
    /// then each frame as it is, a change with its cursor as the event's id.
    #[test]
    fn the_protocol_documents_the_own_protocols_events() {
        let example = example("### 2.3 SSE and POST");
        let mut lines = example
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .skip(1);
        let mut out = Vec::from(
            "event: session\ndata: {\"session\":\"4f1c0d5e9a2b7c6d8e0f1a2b3c4d5e6f\"}\n\n",
        );
        for frame in lines.by_ref() {
            own_event(Bytes::from(frame.to_owned()), &mut out);
        }
        assert_eq!(String::from_utf8(out).unwrap(), example);
    }

    /// JSON with line breaks between its tokens (a raw value a client sent as it wrote it)
    /// is one data line per line: SSE would end the event's field at each break.
    #[test]
    fn a_frame_with_line_breaks_is_one_data_line_per_line() {
        let mut out = Vec::new();
        data(b"{\"value\": [1,\r\n2]}", &mut out);
        assert_eq!(out, b"data: {\"value\": [1,\ndata: \ndata: 2]}\n");
    }

    /// A frame's event is reused only for the same buffer (a broadcast's), per dialect: an
    /// equal frame in another buffer is made again.
    #[test]
    fn an_event_is_reused_for_the_same_broadcast_only() {
        let frame = Bytes::from_static(b"{\"type\":\"ping\"}");
        Encoded::put(0, frame.clone(), Bytes::from_static(b"event"));
        assert_eq!(
            Encoded::get(0, &frame.clone()).as_deref(),
            Some(&b"event"[..])
        );
        assert_eq!(Encoded::get(1, &frame), None, "the other dialect's");
        assert_eq!(Encoded::get(Encoded::OT, &frame), None, "the OT profile's");
        let equal = Bytes::from(frame.to_vec());
        assert_eq!(Encoded::get(0, &equal), None, "another buffer");
        let made = Encoded::get_or_make(0, &equal, || Bytes::from_static(b"again"));
        assert_eq!(&made[..], b"again");
    }
}
