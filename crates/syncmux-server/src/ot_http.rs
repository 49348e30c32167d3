//! The OT profile over HTTP + SSE, under `/ot`: the wire of open-ot's `HttpSseTransport`
//! and `HybridTransport`, for the clients whose network blocks the WebSocket.
//!
//! - `GET /ot/events[?docId=ID]`: a session of the OT server, opened on its document
//!   ([`OtServer::handle_init`](syncmux::ot::OtServer::handle_init)): an `init` event first,
//!   then every frame the session would get on a WebSocket (`ack`, `op`, `error`,
//!   `snapshot`), each an unnamed `data:` event (the transports read `onmessage` only);
//!   `: keepalive` comments; a server's close as a last named `event: close`. The cookie
//!   [`STREAM_COOKIE`] names the stream to the client's POSTs; so does a named `event:
//!   session` after `init`, for clients that name it themselves.
//! - `POST /ot/messages`: one frame for the stream the cookie names (neither transport sends
//!   an id of its own: a browser ties the two requests through the cookie), handled by its
//!   session exactly as if its WebSocket had read it; answered once the session answered it
//!   on the stream: `202 {"success":true,"revision":V}`, or the error frame's message as a
//!   4xx `{"error"}`. A POST for another server's stream goes there through the Redis relay.
//! - `GET /ot/poll?docId=&since=R`: the ops after revision `R` and the head, read on a
//!   session of the request's own (so the handshake's auth applies, and under a shared
//!   history the document is loaded first).
//!
//! No OT rule is written here: ops are checked, transformed, applied, rate-limited and
//! answered by the state machine, as on the WebSocket.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use syncmux::wire::CloseCode;
use syncmux_runtime::{self as adapters, Events, OtServerHandle};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

use crate::http::{self, Failure, Routes};
use crate::sse::{self, Connection, Registration, Registry, Running};

/// The stream.
pub(crate) const EVENTS_PATH: &str = "/ot/events";
/// A client's frames, for its stream.
pub(crate) const MESSAGES_PATH: &str = "/ot/messages";
/// The ops after a revision.
pub(crate) const POLL_PATH: &str = "/ot/poll";
/// The cookie that names a stream to its client's POSTs.
pub(crate) const STREAM_COOKIE: &str = "syncmux_ot";

/// How long a POST waits for its frame's answer. The session answers every frame at once
/// but for an op committed to a shared history (a Redis round trip, and `WAIT` with
/// `--redis-min-replicas`); a stream whose consumer stopped reading is closed long before.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// The open streams of this server, by id (128 random bits: only the stream's consumer can
/// name it). With a relay, ids start with this server's node id, and a POST that reaches
/// another server sharing the Redis is forwarded here.
#[derive(Clone, Default)]
pub(crate) struct OtStreams(Registry<Arc<Stream>>);

/// An open stream: where its frames go in, and who waits for their answers.
struct Stream {
    /// Locked by a POST while it queues its answer's waiter and hands its frame over, so
    /// that the waiters are in the frames' order.
    inbox: tokio::sync::Mutex<async_channel::Sender<Bytes>>,
    events: Arc<OtEvents>,
}

impl OtStreams {
    /// Stream ids start with `node` from now on, and frames for another server's streams go
    /// through `forward`.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // only Redis relays
    pub(crate) fn relay_through(&self, node: String, forward: sse::Forward) {
        self.0.relay_through(node, forward);
    }

    /// Whether stream `id` is this server's.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // only Redis relays
    pub(crate) fn holds(&self, id: &str) -> bool {
        self.0.get(id).is_some()
    }

    /// Hands `frame` to stream `id` and waits for the session's answer to it: the answer
    /// frame (`None`: no such stream, here or on the server its id names), or why there is
    /// none.
    async fn post(&self, id: &str, frame: Bytes) -> Result<Option<Bytes>, String> {
        if let Some(answer) = self.hand(id, frame.clone()).await {
            return answered(answer).await.map(Some);
        }
        let Some(relay) = self.0.relay() else {
            return Ok(None);
        };
        let Some(node) = relay.elsewhere(id) else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&frame).into_owned();
        match (relay.forward)(node.to_owned(), id.to_owned(), text).await? {
            // The holder found the stream, which closed before answering.
            Some(answer) if answer.is_empty() => Err(closed()),
            answer => Ok(answer.map(Bytes::from)),
        }
    }

    /// [`post`](Self::post) of a frame another server forwarded, on this server: the future
    /// of its answer (empty if the stream closed first), once the frame is handed over.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // only Redis relays
    pub(crate) async fn hand_forwarded(
        &self,
        id: &str,
        text: String,
    ) -> Option<futures_util::future::BoxFuture<'static, String>> {
        let answer = self.hand(id, Bytes::from(text)).await?;
        Some(Box::pin(async move {
            let answer = answered(answer).await.unwrap_or_default();
            String::from_utf8_lossy(&answer).into_owned()
        }))
    }

    /// Hands `frame` to this server's stream `id`: where its answer will come (`None`: no
    /// such stream here, or it ended).
    async fn hand(&self, id: &str, frame: Bytes) -> Option<oneshot::Receiver<Bytes>> {
        let stream = self.0.get(id)?;
        let inbox = stream.inbox.lock().await;
        let (answer, answered) = oneshot::channel();
        // Queued before the frame goes in: the session may answer it at once, on another
        // thread. Taken out again if the POST is given up before the frame is in (its
        // client went away while the inbox was full), so that answers keep matching frames.
        stream.events.lock().push_back(answer);
        let mut queued = Queued {
            events: &stream.events,
            handed: false,
        };
        inbox.send(frame).await.ok()?;
        queued.handed = true;
        Some(answered)
    }

    /// Registers a stream under `id`, until the registration is dropped.
    fn register(
        &self,
        id: String,
        inbox: async_channel::Sender<Bytes>,
        events: Arc<OtEvents>,
    ) -> Registration<Arc<Stream>> {
        let inbox = tokio::sync::Mutex::new(inbox);
        self.0.register(id, Arc::new(Stream { inbox, events }))
    }
}

/// A POST's waiter at the back of its stream's queue while its frame is handed over
/// (the inbox's lock is held: nobody queues behind it).
struct Queued<'a> {
    events: &'a OtEvents,
    handed: bool,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if !self.handed {
            self.events.lock().pop_back();
        }
    }
}

/// The answer on its way, within [`ANSWER_TIMEOUT`].
async fn answered(answer: oneshot::Receiver<Bytes>) -> Result<Bytes, String> {
    match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(_)) => Err(closed()),
        Err(_) => Err("the stream's session did not answer in time".to_owned()),
    }
}

fn closed() -> String {
    "the stream closed before its session answered".to_owned()
}

/// How a stream's frames are written, and where the answers to its POSTs go: each frame the
/// session sends in answer to one of its client's (`ack`, `error`, `snapshot`) goes to the
/// oldest POST waiting, as a session answers its frames in order, each once.
struct OtEvents {
    waiting: Mutex<VecDeque<oneshot::Sender<Bytes>>>,
    keep_alive: Duration,
}

impl OtEvents {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<oneshot::Sender<Bytes>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether a frame of the OT server answers a frame of its client's (the server writes
/// `type` first).
fn is_answer(frame: &[u8]) -> bool {
    [
        &br#"{"type":"ack""#[..],
        br#"{"type":"error""#,
        br#"{"type":"snapshot""#,
    ]
    .iter()
    .any(|kind| frame.starts_with(kind))
}

impl Events for OtEvents {
    fn frame(&self, frame: &Bytes, _: &async_channel::Sender<Bytes>) -> Option<Bytes> {
        if is_answer(frame) {
            if let Some(waiting) = self.lock().pop_front() {
                let _ = waiting.send(frame.clone());
            }
        }
        Some(event(frame))
    }

    fn close(&self, code: CloseCode, reason: &str) -> Bytes {
        let data = serde_json::json!({"code": code.0, "reason": reason});
        Bytes::from(format!("event: close\ndata: {data}\n\n"))
    }

    fn keep_alive(&self) -> (Duration, Bytes) {
        (self.keep_alive, Bytes::from_static(b": keepalive\n\n"))
    }
}

/// A frame as an unnamed event. A broadcast reaches every member with the same buffer: its
/// event is made once per thread (see [`sse::Encoded`]).
fn event(frame: &Bytes) -> Bytes {
    sse::Encoded::get_or_make(sse::Encoded::OT, frame, || {
        let mut out = Vec::with_capacity(frame.len() + 8);
        sse::data(frame, &mut out);
        out.push(b'\n');
        Bytes::from(out)
    })
}

/// Serves `GET /ot/events` on `connection`, whose request head is `head` (read already).
pub(crate) async fn serve_events<S>(
    routes: &Routes,
    head: &[u8],
    connection: Connection<S>,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    serve_events_with(routes, head, connection, sse::TIMING).await
}

async fn serve_events_with<S>(
    routes: &Routes,
    head: &[u8],
    connection: Connection<S>,
    timing: sse::Timing,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (session, id, head) = match open(routes, head).await {
        Ok(opened) => opened,
        Err(answer) => return connection.refuse(&answer).await,
    };
    let events = Arc::new(OtEvents {
        waiting: Mutex::default(),
        keep_alive: timing.keep_alive,
    });
    let (frames, running) = match connection {
        Connection::Tcp(tcp) => {
            let (frames, stream) =
                adapters::Tokio::events_tcp(session, tcp, head.into(), events.clone());
            (frames, Running::Direct(stream))
        }
        Connection::Io(io) => (adapters::Tokio::frames(session), Running::Io(io, head)),
    };
    // Registered before the first event can leave (with the stream's first poll).
    let _registration = routes
        .ot_streams
        .register(id, frames.inbox(), events.clone());
    sse::pump(frames, running, &*events, timing).await
}

/// A stream's session on its document, its id and the answer up to its `init` event; or
/// the whole answer of a refused request.
async fn open(
    routes: &Routes,
    head: &[u8],
) -> Result<(adapters::AcceptedOtSession, String, Vec<u8>), Vec<u8>> {
    let (request, cors) = sse::admit(&routes.origins, head)?;
    let refused = |failure| sse::refused(failure, &cors);
    if request.method != "GET" {
        let message = format!("{} takes GET", request.path);
        let status = StatusCode::METHOD_NOT_ALLOWED;
        return Err(refused(Failure::new(status, "METHOD_NOT_ALLOWED", message)));
    }
    let headers = request.headers.iter();
    let headers = headers.map(|(name, value)| (name.as_str(), value.as_str()));
    let handshake = http::handshake_of(&request.query, headers, "sse");
    let doc = handshake.query_param("docId");
    let (session, init) = opened_on(&routes.ot, &handshake, doc.as_deref())
        .await
        .map_err(refused)?;
    let id = routes.ot_streams.0.new_id().map_err(refused)?;
    let cookie = format!("Set-Cookie: {STREAM_COOKIE}={id}; Path=/ot; HttpOnly; SameSite=Lax\r\n");
    let mut head = sse::stream_head(&cors, &cookie).into_bytes();
    head.extend_from_slice(&event(&init));
    // For clients that name their stream themselves (`X-Syncmux-Session`, `?session=`) rather
    // than by the cookie, which is one per browser: a named event, which open-ot's
    // transports do not see (they read unnamed events only).
    head.extend_from_slice(
        format!("event: session\ndata: {{\"session\":\"{id}\"}}\n\n").as_bytes(),
    );
    Ok((session, id, head))
}

/// A session of `ot` opened on document `doc` (`None`: `doc-1`), and its `init` frame: the
/// document's text and revision (under a shared history, once its copy loaded).
async fn opened_on(
    ot: &OtServerHandle,
    handshake: &syncmux::Handshake,
    doc: Option<&str>,
) -> Result<(adapters::AcceptedOtSession, Bytes), Failure> {
    let mut session = ot.handshake(handshake).map_err(Failure::refused)?;
    let id = session.session();
    ot.with_server(|server, now| server.handle_init(now, id, doc));
    let Some(init) = session.next_frame().await else {
        let message = "the server closed the session (it may be shutting down)";
        return Err(Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            message,
        ));
    };
    if init.starts_with(br#"{"type":"init""#) {
        return Ok((session, init));
    }
    // A document a limit refuses (its id too long, too many documents).
    Err(error_of(&init))
}

/// `POST /ot/messages`: the body, one frame, for the stream the cookie names (or the header
/// `X-Syncmux-Session`); `202 {"success":true,"revision":V}` once its session answered it.
pub(crate) async fn post(
    routes: &Routes,
    req: Request<Incoming>,
) -> Result<(StatusCode, Bytes), Failure> {
    let not_found = || {
        let message = "no open stream is this client's: open GET /ot/events first (its cookie \
                       ties the POSTs to it)";
        Failure::new(StatusCode::NOT_FOUND, "NOT_FOUND", message)
    };
    let Some(id) = http::named_stream(&req, STREAM_COOKIE) else {
        return Err(not_found());
    };
    let limit = routes
        .ot
        .with_server(|server, _| server.config().max_frame_len);
    let frame = http::body_within(req, limit).await?;
    let answer = match routes.ot_streams.post(&id, frame).await {
        Ok(Some(answer)) => answer,
        Ok(None) => return Err(not_found()),
        Err(why) => {
            let status = StatusCode::SERVICE_UNAVAILABLE;
            return Err(Failure::new(status, "UNAVAILABLE", why));
        }
    };
    if answer.starts_with(br#"{"type":"error""#) {
        return Err(error_of(&answer));
    }
    // An ack, or a snapshot: the revision the document is at for the client.
    #[derive(serde::Deserialize)]
    struct Answer {
        revision: u64,
    }
    let revision = serde_json::from_slice::<Answer>(&answer).map_err(|e| {
        let status = StatusCode::INTERNAL_SERVER_ERROR;
        Failure::new(status, "INTERNAL", e.to_string())
    })?;
    let body = serde_json::json!({"success": true, "revision": revision.revision});
    Ok((StatusCode::ACCEPTED, Bytes::from(body.to_string())))
}

/// `GET /ot/poll?docId=&since=R`: `{"type":"poll","hasUpdates","operations":[{"op",
/// "revision"}..],"revision":HEAD}`, the ops after `R` (each with the revision it made);
/// `410` when the history kept no longer holds them.
pub(crate) async fn poll(
    routes: &Routes,
    req: Request<Incoming>,
) -> Result<(StatusCode, Bytes), Failure> {
    let handshake = http::handshake(&req);
    let since = handshake.query_param("since").unwrap_or_default();
    let since: u64 = since.parse().map_err(|_| {
        let message = format!("since must be a revision (a whole number), not {since:?}");
        sse::bad_request(&message)
    })?;
    let doc = handshake.query_param("docId").filter(|d| !d.is_empty());
    // Read on a session of the poll's own, dropped (closed) when answered.
    let (_session, _) = opened_on(&routes.ot, &handshake, doc.as_deref()).await?;
    let name = doc
        .as_deref()
        .unwrap_or(syncmux::ot::OtServer::DEFAULT_DOC_ID);
    let answer = routes.ot.with_server(|server, _| {
        let doc = server.document(name)?;
        let ops = doc.ops_since(since).map(|ops| {
            let ops = ops.map(|(revision, op)| serde_json::json!({"op": op, "revision": revision}));
            ops.collect::<Vec<_>>()
        });
        Some((doc.revision(), ops))
    });
    let Some((head, ops)) = answer else {
        let message = "the document is not on this server any more: poll again";
        return Err(Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            message,
        ));
    };
    let Some(operations) = ops else {
        let message = format!(
            "the ops after revision {since} are no longer kept: open the stream again for the \
             document's text"
        );
        return Err(Failure::new(StatusCode::GONE, "GONE", message));
    };
    let body = serde_json::json!({
        "type": "poll",
        "hasUpdates": !operations.is_empty(),
        "operations": operations,
        "revision": head,
    });
    Ok((StatusCode::OK, Bytes::from(body.to_string())))
}

/// An OT error frame as a failure: `429` for the rate limit, `413` for a frame too large,
/// `400` for the rest (the frame, the op or the document was refused).
fn error_of(frame: &[u8]) -> Failure {
    #[derive(serde::Deserialize)]
    struct Error {
        message: String,
    }
    let message = serde_json::from_slice::<Error>(frame)
        .map(|e| e.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(frame).into_owned());
    let (status, code) = if message == "Rate limit exceeded" {
        (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED")
    } else if message.starts_with("Message too large") {
        (StatusCode::PAYLOAD_TOO_LARGE, "FRAME_TOO_LARGE")
    } else {
        (StatusCode::BAD_REQUEST, "INVALID")
    };
    Failure::new(status, code, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncmux::ot::{OtServer, OtServerConfig};
    use syncmux_runtime::ServerOptions;
    use tokio::io::AsyncReadExt;

    /// A POST given up while its frame waits for room in the stream's inbox takes its
    /// waiter back: the next answer still goes to the POST of the frame it answers.
    #[tokio::test]
    async fn a_post_given_up_before_its_frame_is_in_leaves_no_waiter() {
        let streams = OtStreams::default();
        let (inbox, _session) = async_channel::bounded(1);
        let events = Arc::new(OtEvents {
            waiting: Mutex::default(),
            keep_alive: Duration::from_secs(15),
        });
        let _registration = streams.register("s".to_owned(), inbox.clone(), events.clone());
        let first = streams.hand("s", Bytes::from_static(b"1")).await.unwrap();
        let second = streams.hand("s", Bytes::from_static(b"2"));
        let given_up = tokio::time::timeout(Duration::from_millis(50), second).await;
        assert!(
            given_up.is_err(),
            "the inbox is full: the second POST waits"
        );
        assert_eq!(events.lock().len(), 1, "the first POST's waiter alone");
        let ack = Bytes::from_static(br#"{"type":"ack","revision":1}"#);
        events.frame(&ack, &inbox);
        assert_eq!(first.await.unwrap(), ack);
    }

    /// A quiet stream gets `: keepalive` comments (a proxy that drops idle connections
    /// keeps it), after its `init`.
    #[tokio::test]
    async fn a_quiet_stream_gets_keepalive_comments() {
        let server = OtServer::new(OtServerConfig::default()).unwrap();
        let routes = Routes::new(adapters::Tokio::start_ot(server, ServerOptions::default()));
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        let timing = sse::Timing {
            keep_alive: Duration::from_millis(50),
            write_timeout: Duration::from_secs(5),
        };
        let head = b"GET /ot/events HTTP/1.1\r\nHost: x\r\n\r\n";
        let serving = tokio::spawn(async move {
            serve_events_with(&routes, head, Connection::Io(ours), timing).await
        });
        let mut read = Vec::new();
        let keep_alive = b"\n\n: keepalive\n\n";
        while !read.windows(keep_alive.len()).any(|w| w == keep_alive) {
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(10), theirs.read(&mut chunk))
                .await
                .unwrap_or_else(|_| {
                    panic!("no keep-alive in time: {}", String::from_utf8_lossy(&read))
                })
                .unwrap();
            assert!(
                n > 0,
                "the stream ended: {}",
                String::from_utf8_lossy(&read)
            );
            read.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&read);
        let init = text.find("data: {\"type\":\"init\"").expect("init first");
        assert!(init < text.find(": keepalive").unwrap(), "{text}");
        drop(theirs);
        serving.abort();
    }
}
