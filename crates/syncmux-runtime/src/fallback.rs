//! The clients' fallback when the WebSocket upgrade fails or is blocked (a proxy, a
//! corporate network): the same protocol over an SSE stream (`GET /sync/sse`) and POSTs
//! (`POST /sync/send`), as `syncmux-server` serves them (docs/protocol.md section 2.3).
//!
//! An [`SseSocket`] is a `Stream + Sink` of WebSocket messages like the WebSocket it stands
//! in for, so the client task and its state machine cannot tell them apart: each unnamed
//! event is a text message, the server's `event: close` a close message; frames written are
//! POSTed as they are flushed, those of one flush in one request, one request at a time (so
//! the server handles them in order), over one kept-alive connection. HTTP is hyper's.

use core::pin::Pin;
use core::task::{Context, Poll};
use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, Sink, Stream};
use http_body_util::Full;
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1::SendRequest;
use tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::Message;

/// A transport a client may connect over, in the order of
/// [`ClientOptions::transports`](crate::ClientOptions::transports).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportKind {
    /// One WebSocket (`ws://`, `wss://`).
    WebSocket,
    /// An SSE stream for the server's frames and POSTs for the client's, on the same host:
    /// the WebSocket URL's path with its last segment `ws` as `sse` and `send`
    /// (`/sync/ws` → `/sync/sse`, `/sync/send`).
    Sse,
}

/// Frames queued for the next POST before a write waits for it.
const MAX_QUEUED: usize = 256;

/// Largest event the stream may send before the client gives up on it (a frame, as the
/// WebSocket's read limit).
const MAX_EVENT: usize = 64 << 20;

/// Any byte stream hyper can run HTTP over (plain TCP or TLS, of either runtime).
pub trait HttpIo: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static {}
impl<T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static> HttpIo for T {}

/// Opens a new connection to the server, as HTTP (TCP, then TLS for `https`).
pub(crate) type Connect =
    Arc<dyn Fn() -> BoxFuture<'static, Result<Box<dyn HttpIo>, String>> + Send + Sync>;

/// Where the stream and the POSTs go, and what they carry of the dial.
pub(crate) struct Target {
    pub(crate) connect: Connect,
    /// `Host` of every request.
    pub(crate) host: String,
    /// `/sync/sse?node_id=..`, the WebSocket's query.
    pub(crate) stream: String,
    /// `/sync/send`.
    pub(crate) send: String,
    /// The dial's headers (auth, node id).
    pub(crate) headers: Vec<(&'static str, String)>,
}

/// Spawns a connection's task on the client's runtime.
pub(crate) type Spawn = fn(BoxFuture<'static, ()>);

/// An HTTP/1.1 connection on `io`, its task spawned: where requests are sent.
async fn handshake(io: Box<dyn HttpIo>, spawn: Spawn) -> Result<SendRequest<Full<Bytes>>, String> {
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    spawn(Box::pin(connection.map(|_| ())));
    Ok(sender)
}

fn request(
    target: &Target,
    method: &str,
    path: &str,
    body: Bytes,
) -> Result<hyper::Request<Full<Bytes>>, String> {
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("Host", &target.host);
    for (name, value) in &target.headers {
        request = request.header(*name, value);
    }
    request.body(Full::new(body)).map_err(|e| e.to_string())
}

/// Opens the stream: the session, ready to carry frames both ways.
pub(crate) async fn open(target: Target, spawn: Spawn) -> Result<SseSocket, String> {
    let io = (target.connect)().await?;
    let mut sender = handshake(io, spawn).await?;
    let mut get = request(&target, "GET", &target.stream, Bytes::new())?;
    let accept = hyper::header::HeaderValue::from_static("text/event-stream");
    get.headers_mut().insert(hyper::header::ACCEPT, accept);
    let response = sender
        .send_request(get)
        .await
        .map_err(|e| format!("SSE: {e}"))?;
    if response.status() != hyper::StatusCode::OK {
        return Err(format!("SSE: HTTP {}", response.status()));
    }
    let mut socket = SseSocket {
        body: response.into_body(),
        buf: BytesMut::new(),
        event: Event::default(),
        read: VecDeque::new(),
        ended: false,
        session: String::new(),
        target: Arc::new(target),
        spawn,
        queued: Vec::new(),
        idle: None,
        posting: None,
    };
    // The first event names the session.
    let first = futures_util::future::poll_fn(|cx| socket.poll_event(cx)).await;
    match first {
        Some(Ok(Parsed::Session(session))) => socket.session = session,
        Some(Err(e)) => return Err(e),
        _ => return Err("SSE: the stream did not name its session".to_owned()),
    }
    Ok(socket)
}

/// What one event of the stream was.
enum Parsed {
    Session(String),
    Message(Message),
}

/// The fields of the event being read.
#[derive(Default)]
struct Event {
    name: Option<String>,
    data: Vec<u8>,
    /// Lines of data so far (a second one is joined with a line break).
    lines: usize,
}

/// The client's side of an own-protocol SSE session; see the module.
pub(crate) struct SseSocket {
    body: Incoming,
    /// Bytes of the stream not yet split into lines.
    buf: BytesMut,
    event: Event,
    /// Events parsed, not yet read.
    read: VecDeque<Parsed>,
    ended: bool,
    session: String,
    target: Arc<Target>,
    spawn: Spawn,
    /// Frames written since the last POST.
    queued: Vec<Bytes>,
    /// The POSTs' kept-alive connection, between POSTs.
    idle: Option<SendRequest<Full<Bytes>>>,
    /// The POST under way; it gives the connection back.
    posting: Option<BoxFuture<'static, Result<SendRequest<Full<Bytes>>, String>>>,
}

impl SseSocket {
    /// The next event of the stream (`None` at its end).
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Parsed, String>>> {
        loop {
            if let Some(parsed) = self.read.pop_front() {
                return Poll::Ready(Some(Ok(parsed)));
            }
            if self.ended {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => self.ended = true,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(format!("SSE: {e}")))),
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                        self.parse()?;
                    }
                }
            }
        }
    }

    /// Splits the bytes read into lines, and complete events into [`read`](Self::read).
    fn parse(&mut self) -> Result<(), String> {
        while let Some(end) = self.buf.iter().position(|&b| b == b'\n' || b == b'\r') {
            let line = self.buf.split_to(end);
            // One line break (`\r\n` as one).
            let crlf = self.buf.starts_with(b"\r\n");
            let _ = self.buf.split_to(if crlf { 2 } else { 1 });
            self.line(&line);
        }
        if self.buf.len() + self.event.data.len() > MAX_EVENT {
            return Err("SSE: an event over the frame limit".to_owned());
        }
        Ok(())
    }

    fn line(&mut self, line: &[u8]) {
        if line.is_empty() {
            let event = core::mem::take(&mut self.event);
            if event.lines > 0 {
                self.dispatch(event);
            }
            return;
        }
        if line.starts_with(b":") {
            return; // a comment: keep-alive
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(at) => {
                let value = &line[at + 1..];
                (&line[..at], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.event.lines > 0 {
                    self.event.data.push(b'\n');
                }
                self.event.data.extend_from_slice(value);
                self.event.lines += 1;
            }
            b"event" => self.event.name = Some(String::from_utf8_lossy(value).into_owned()),
            // `id` (the client keeps cursors from the frames themselves), `retry`: unused.
            _ => {}
        }
    }

    fn dispatch(&mut self, event: Event) {
        let data = Bytes::from(event.data);
        let parsed = match event.name.as_deref() {
            None | Some("message") => match tungstenite::Utf8Bytes::try_from(data) {
                Ok(text) => Parsed::Message(Message::Text(text)),
                Err(_) => return,
            },
            Some("session") => {
                #[derive(serde::Deserialize)]
                struct Session {
                    session: String,
                }
                match serde_json::from_slice::<Session>(&data) {
                    Ok(s) => Parsed::Session(s.session),
                    Err(_) => return,
                }
            }
            Some("close") => {
                #[derive(serde::Deserialize)]
                struct Close {
                    code: u16,
                    #[serde(default)]
                    reason: String,
                }
                let Ok(close) = serde_json::from_slice::<Close>(&data) else {
                    return;
                };
                Parsed::Message(Message::Close(Some(CloseFrame {
                    code: WsCloseCode::from(close.code),
                    reason: close.reason.into(),
                })))
            }
            Some(_) => return,
        };
        self.read.push_back(parsed);
    }

    /// Starts a POST of the queued frames, one per line.
    fn post(&mut self) {
        let mut body = BytesMut::new();
        for frame in self.queued.drain(..) {
            body.extend_from_slice(&frame);
            body.extend_from_slice(b"\n");
        }
        let (target, spawn, idle) = (self.target.clone(), self.spawn, self.idle.take());
        let session = self.session.clone();
        self.posting = Some(Box::pin(async move {
            // The kept-alive connection, unless the server closed it meanwhile.
            let idle = match idle {
                Some(mut sender) => sender.ready().await.is_ok().then_some(sender),
                None => None,
            };
            let mut sender = match idle {
                Some(sender) => sender,
                None => handshake((target.connect)().await?, spawn).await?,
            };
            let mut post = request(&target, "POST", &target.send, body.freeze())?;
            let headers = post.headers_mut();
            let session =
                hyper::header::HeaderValue::from_str(&session).map_err(|e| e.to_string())?;
            headers.insert("X-Syncmux-Session", session);
            let ndjson = hyper::header::HeaderValue::from_static("application/x-ndjson");
            headers.insert(hyper::header::CONTENT_TYPE, ndjson);
            let response = sender
                .send_request(post)
                .await
                .map_err(|e| format!("POST: {e}"))?;
            match response.status() {
                hyper::StatusCode::ACCEPTED => Ok(sender),
                status => Err(format!("POST: HTTP {status}")),
            }
        }));
    }
}

fn io_error(why: String) -> tungstenite::Error {
    tungstenite::Error::Io(std::io::Error::other(why))
}

impl Stream for SseSocket {
    type Item = Result<Message, tungstenite::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            return match self.poll_event(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(io_error(e)))),
                Poll::Ready(Some(Ok(Parsed::Message(message)))) => Poll::Ready(Some(Ok(message))),
                // Named once, at the start.
                Poll::Ready(Some(Ok(Parsed::Session(_)))) => continue,
            };
        }
    }
}

impl Sink<Message> for SseSocket {
    type Error = tungstenite::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.queued.len() < MAX_QUEUED {
            return Poll::Ready(Ok(()));
        }
        self.as_mut().poll_flush(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, message: Message) -> Result<(), Self::Error> {
        match message {
            Message::Text(text) => self.queued.push(Bytes::from(text)),
            // The session ends when the stream does (the server reads its end).
            Message::Close(_) => self.ended = true,
            // The protocol's keepalive is its own frames; nothing else is sent.
            _ => {}
        }
        Ok(())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        loop {
            if let Some(posting) = self.posting.as_mut() {
                match posting.poll_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => {
                        self.posting = None;
                        return Poll::Ready(Err(io_error(e)));
                    }
                    Poll::Ready(Ok(sender)) => {
                        self.posting = None;
                        self.idle = Some(sender);
                    }
                }
            }
            if self.queued.is_empty() {
                return Poll::Ready(Ok(()));
            }
            self.post();
        }
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let flushed = self.as_mut().poll_flush(cx);
        self.ended = true;
        flushed
    }
}

/// The client's connection: a WebSocket, or the SSE fallback in its place.
pub(crate) enum Connection<W> {
    WebSocket(W),
    Sse(Box<SseSocket>),
}

impl<W> Connection<W> {
    /// Which transport it is.
    pub(crate) fn kind(&self) -> TransportKind {
        match self {
            Connection::WebSocket(_) => TransportKind::WebSocket,
            Connection::Sse(_) => TransportKind::Sse,
        }
    }
}

impl<W> Stream for Connection<W>
where
    W: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    type Item = Result<Message, tungstenite::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.get_mut() {
            Connection::WebSocket(ws) => Pin::new(ws).poll_next(cx),
            Connection::Sse(sse) => Pin::new(&mut **sse).poll_next(cx),
        }
    }
}

impl<W> Sink<Message> for Connection<W>
where
    W: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    type Error = tungstenite::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self.get_mut() {
            Connection::WebSocket(ws) => Pin::new(ws).poll_ready(cx),
            Connection::Sse(sse) => Pin::new(&mut **sse).poll_ready(cx),
        }
    }

    fn start_send(self: Pin<&mut Self>, message: Message) -> Result<(), Self::Error> {
        match self.get_mut() {
            Connection::WebSocket(ws) => Pin::new(ws).start_send(message),
            Connection::Sse(sse) => Pin::new(&mut **sse).start_send(message),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self.get_mut() {
            Connection::WebSocket(ws) => Pin::new(ws).poll_flush(cx),
            Connection::Sse(sse) => Pin::new(&mut **sse).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self.get_mut() {
            Connection::WebSocket(ws) => Pin::new(ws).poll_close(cx),
            Connection::Sse(sse) => Pin::new(&mut **sse).poll_close(cx),
        }
    }
}
