//! The HTTP requests under `/sync`, for the clients whose network blocks the WebSocket:
//! Grove's `HTTPTransport` (`POST /sync/pull`, `POST /sync/push`), Grove's presence
//! (`/sync/presence`, in [`presence`]), and the frames of syncmux's own protocol for a stream
//! of `/sync/sse` (`POST /sync/send`, in [`sse`]); with `--allowed-origins`, the CORS answers
//! of every route ([`Origins`]).
//!
//! No protocol rule is written here: each request is a session of its own on the same sync
//! server ([`SyncServer::exchange`]): the handshake (auth, origin, node id, capacity) is
//! the WebSocket's, decided on the request's query and headers; the body is the payload of
//! a `pull_request` or `push_request` frame (Grove's `PullRequest` and `PushRequest` are
//! those payloads: `tables`, `since`, `node_id`, `filter`; `changes`, `node_id`); the answer
//! is the payload of the reply (`pull_response`, `push_response`, with `cursor` beyond
//! Grove's fields). A session that names no node id in its query takes the one its body
//! names. An error frame or a refused handshake is a status with `{"error", "code"}`
//! (`docs/protocol.md`, "HTTP"), `Retry-After` on 429 and 503.

use std::convert::Infallible;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{
    HeaderName, HeaderValue, ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS,
    ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE, ALLOW,
    CONTENT_TYPE, ORIGIN, RETRY_AFTER, VARY,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::value::RawValue;
use syncmux::wire::{DecodeLimits, ErrorCode, Frame, MessageType};
use syncmux::Handshake;
use syncmux_runtime::{OtServerHandle, Rejection, SyncServer};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::ot_http::{self, OtStreams, MESSAGES_PATH, POLL_PATH};
use crate::presence::{self, Holders, PRESENCE_PATH};
use crate::sse::{self, Streams};

/// Grove's pull.
pub(crate) const PULL_PATH: &str = "/sync/pull";
/// Grove's push.
pub(crate) const PUSH_PATH: &str = "/sync/push";

/// syncmux's own protocol's inbound frames, for a stream of `/sync/sse`.
pub(crate) const SEND_PATH: &str = "/sync/send";

/// Whether a request for `path` is this module's.
pub(crate) fn handles(path: &[u8]) -> bool {
    [
        PULL_PATH,
        PUSH_PATH,
        SEND_PATH,
        PRESENCE_PATH,
        MESSAGES_PATH,
        POLL_PATH,
    ]
    .iter()
    .any(|p| path == p.as_bytes())
}

/// What the HTTP routes share beside the sync server: the OT endpoint, the streams of
/// syncmux's own protocol over SSE that `POST /sync/send` feeds, and the presence sessions
/// of Grove's `POST /sync/presence`.
#[derive(Clone)]
pub(crate) struct Routes {
    pub(crate) ot: OtServerHandle,
    pub(crate) streams: Streams,
    /// The OT profile's streams, which `POST /ot/messages` feeds.
    pub(crate) ot_streams: OtStreams,
    pub(crate) holders: Holders,
    pub(crate) origins: Origins,
    pub(crate) limiter: Limiter,
    /// The reverse proxies whose `X-Forwarded-For` names the client.
    pub(crate) proxies: Arc<[ipnet::IpNet]>,
}

impl Routes {
    pub(crate) fn new(ot: OtServerHandle) -> Routes {
        Routes {
            ot,
            streams: Streams::default(),
            ot_streams: OtStreams::default(),
            holders: Holders::default(),
            origins: Origins::default(),
            limiter: Limiter::default(),
            proxies: Arc::new([]),
        }
    }

    /// Requests from `proxies` are counted as the client their `X-Forwarded-For` names.
    pub(crate) fn trusting(mut self, proxies: Vec<ipnet::IpNet>) -> Routes {
        self.proxies = proxies.into();
        self
    }

    /// The client of a request from `peer`: `peer`, or, from a trusted proxy, the last
    /// address of `X-Forwarded-For` that is not one (each proxy appends the address it got
    /// the request from; those before a proxy the server does not trust may be forged).
    pub(crate) fn client(
        &self,
        peer: Option<IpAddr>,
        headers: &hyper::HeaderMap,
    ) -> Option<IpAddr> {
        let trusted = |address: &IpAddr| self.proxies.iter().any(|net| net.contains(address));
        let peer = peer?;
        if !trusted(&peer) {
            return Some(peer);
        }
        let forwarded = headers.get_all("x-forwarded-for").iter();
        let hops: Vec<&str> = forwarded
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .collect();
        let mut client = peer;
        for hop in hops.into_iter().rev() {
            // A hop that is no address ends the walk: nothing before it can be placed.
            let Ok(hop) = hop.trim().parse::<IpAddr>() else {
                break;
            };
            client = hop;
            if !trusted(&hop) {
                break;
            }
        }
        Some(client)
    }

    /// Each client address may send `burst` requests of a session each per `window` (the
    /// sync server's rate limit: see [`Limiter`]); a zero `burst`, any number.
    pub(crate) fn limiting(mut self, burst: u32, window: Duration) -> Routes {
        self.limiter = Limiter::new(burst, window);
        self
    }

    /// Only `origins` may use the routes, with CORS answers.
    pub(crate) fn allowing(mut self, origins: Option<Vec<String>>) -> Routes {
        self.origins = Origins(origins.map(Arc::from));
        self
    }
}

/// The rate limit of the requests that are a session each (Grove's pull, push and
/// presence): per client address, as a WebSocket's is per session, with the same burst per
/// window (`--rate-limit`), answered 429 with `Retry-After` (the seconds until a request is
/// let through again). `governor`'s keyed limiter; addresses whose bucket refilled are
/// forgotten as the map grows, so a flood from many addresses holds no memory for long.
#[derive(Clone, Default)]
pub(crate) struct Limiter(Option<Arc<Keyed>>);

/// The limiter, and how many addresses it may hold before the next pruning.
struct Keyed {
    limiter: KeyedLimiter,
    /// At least [`LIMITER_KEYS`], twice what a pruning left: while more addresses than that
    /// are all recent, a request does not pay for a walk over them each time.
    prune_at: std::sync::atomic::AtomicUsize,
}

type KeyedLimiter = governor::DefaultKeyedRateLimiter<IpAddr>;

/// Addresses kept before those whose bucket refilled are forgotten.
const LIMITER_KEYS: usize = 4096;

impl Limiter {
    fn new(burst: u32, window: Duration) -> Limiter {
        let quota = NonZeroU32::new(burst).and_then(|burst| {
            let quota = governor::Quota::with_period(window / burst.get())?;
            Some(quota.allow_burst(burst))
        });
        Limiter(quota.map(|quota| {
            Arc::new(Keyed {
                limiter: governor::RateLimiter::keyed(quota),
                prune_at: LIMITER_KEYS.into(),
            })
        }))
    }

    /// Lets a request from `peer` through, or the 429 to answer it with.
    pub(crate) fn check(&self, peer: Option<IpAddr>) -> Result<(), Failure> {
        let (Some(limiter), Some(peer)) = (&self.0, peer) else {
            return Ok(());
        };
        use std::sync::atomic::Ordering::Relaxed;
        let Keyed { limiter, prune_at } = &**limiter;
        if limiter.len() > prune_at.load(Relaxed) {
            limiter.retain_recent();
            prune_at.store(LIMITER_KEYS.max(2 * limiter.len()), Relaxed);
        }
        limiter.check_key(&peer).map_err(|not_until| {
            let clock = governor::clock::DefaultClock::default();
            let wait = not_until.wait_time_from(governor::clock::Clock::now(&clock));
            let mut failure = Failure::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited.as_str(),
                "rate limit exceeded",
            );
            failure.retry_after = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            failure
        })
    }
}

/// `--allowed-origins`: the only origins whose browsers may use the HTTP routes, and which
/// get CORS answers (`*`: every origin, each answered as itself); `None`, any origin, and no
/// CORS answers (a browser then allows only same-origin pages).
#[derive(Clone, Default)]
pub(crate) struct Origins(Option<Arc<[String]>>);

impl Origins {
    /// Whether a request from `origin` is answered: a request with no `Origin` is not a
    /// browser's, and without a list every origin is.
    pub(crate) fn allows(&self, origin: Option<&str>) -> bool {
        match (&self.0, origin) {
            (Some(allowed), Some(origin)) => allowed.iter().any(|a| a == "*" || a == origin),
            _ => true,
        }
    }

    /// The CORS headers of an answer to a request from `origin`: for a listed origin, that
    /// it may read the answer, cookies included (the own protocol's session cookie).
    pub(crate) fn cors(&self, origin: Option<&str>) -> Vec<(HeaderName, String)> {
        match (&self.0, origin) {
            (Some(_), Some(origin)) if self.allows(Some(origin)) => vec![
                (ACCESS_CONTROL_ALLOW_ORIGIN, origin.to_owned()),
                (ACCESS_CONTROL_ALLOW_CREDENTIALS, "true".to_owned()),
                (VARY, "Origin".to_owned()),
            ],
            _ => Vec::new(),
        }
    }

    /// The answer to a CORS preflight (`OPTIONS`) from `origin`: `204` with what a listed
    /// origin may send, else `403`.
    pub(crate) fn preflight(
        &self,
        origin: Option<&str>,
    ) -> Result<Vec<(HeaderName, String)>, Failure> {
        let mut headers = self.cors(origin);
        if headers.is_empty() {
            let message = "cross-origin requests are not allowed here (see --allowed-origins)";
            return Err(Failure::new(StatusCode::FORBIDDEN, "FORBIDDEN", message));
        }
        headers.extend([
            (ACCESS_CONTROL_ALLOW_METHODS, "GET, POST".to_owned()),
            (ACCESS_CONTROL_ALLOW_HEADERS, PREFLIGHT_HEADERS.to_owned()),
            (ACCESS_CONTROL_MAX_AGE, "600".to_owned()),
        ]);
        Ok(headers)
    }

    /// `403` for a request from an origin that is not allowed.
    pub(crate) fn check(&self, origin: Option<&str>) -> Result<(), Failure> {
        if self.allows(origin) {
            return Ok(());
        }
        let status = StatusCode::FORBIDDEN;
        Err(Failure::new(status, "FORBIDDEN", "origin not allowed"))
    }
}

/// The headers a browser may send cross-origin: auth, the body's type, the own protocol's
/// session, an SSE resume, the node id.
const PREFLIGHT_HEADERS: &str =
    "Authorization, Content-Type, X-Syncmux-Session, Last-Event-ID, X-Node-Id";

/// The id the request's frame carries, which its reply echoes.
const ID: &str = "http";

/// Serves one request on `io` (no keep-alive: Grove's client opens a connection per request
/// through `http.DefaultClient`, which pools; one per connection keeps the router simple).
/// `peer` is the client's address, for the rate limit.
pub(crate) async fn serve<S>(
    server: SyncServer,
    routes: Routes,
    io: S,
    peer: Option<IpAddr>,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let (server, routes) = (server.clone(), routes.clone());
        async move { Ok::<_, Infallible>(answer(&server, &routes, req, peer).await) }
    });
    hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(TokioIo::new(io), service)
        .await
        .map_err(std::io::Error::other)
}

/// Why a request failed: its status, code and message.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) status: StatusCode,
    pub(crate) code: String,
    pub(crate) message: String,
    /// The seconds of its `Retry-After` (on 429 and 503; at least 1).
    pub(crate) retry_after: u64,
}

impl Failure {
    pub(crate) fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Failure {
        Failure {
            status,
            code: code.to_owned(),
            message: message.into(),
            retry_after: 1,
        }
    }

    /// A refused handshake: its status, and the code of that status.
    pub(crate) fn refused(rejection: Rejection) -> Failure {
        let status =
            StatusCode::from_u16(rejection.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Failure::new(status, code_of(status), rejection.reason)
    }

    /// An error frame: its code, and the status of that code.
    pub(crate) fn of_error(frame: &Frame) -> Failure {
        #[derive(serde::Deserialize)]
        struct Error {
            code: String,
            message: String,
        }
        match frame.payload::<Error>() {
            Ok(error) => Failure::new(status_of(&error.code), &error.code, error.message),
            Err(e) => Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", e.to_string()),
        }
    }

    /// The body: `{"error": message, "code": code}`.
    pub(crate) fn body(&self) -> String {
        serde_json::json!({"error": self.message, "code": self.code}).to_string()
    }

    /// The header its status calls for: `Allow` (the method the path takes, `allow`) on 405,
    /// `Retry-After` on 429 and 503.
    pub(crate) fn header(&self, allow: &'static str) -> Option<(HeaderName, String)> {
        match self.status {
            StatusCode::METHOD_NOT_ALLOWED => Some((ALLOW, allow.to_owned())),
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                Some((RETRY_AFTER, self.retry_after.max(1).to_string()))
            }
            _ => None,
        }
    }
}

async fn answer(
    server: &SyncServer,
    routes: &Routes,
    req: Request<Incoming>,
    peer: Option<IpAddr>,
) -> Response<Full<Bytes>> {
    let origin = req.headers().get(ORIGIN).and_then(|o| o.to_str().ok());
    let origin = origin.map(str::to_owned);
    let mut response = answer_allowed(server, routes, origin.as_deref(), req, peer).await;
    insert(&mut response, routes.origins.cors(origin.as_deref()));
    response
}

fn insert(response: &mut Response<Full<Bytes>>, headers: Vec<(HeaderName, String)>) {
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
}

/// [`answer`] without its CORS headers.
async fn answer_allowed(
    server: &SyncServer,
    routes: &Routes,
    origin: Option<&str>,
    req: Request<Incoming>,
    peer: Option<IpAddr>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let presence = path == PRESENCE_PATH;
    // A POST for a stream feeds its session, whose own rate limit applies.
    let limited = || match path == SEND_PATH || path == MESSAGES_PATH {
        true => Ok(()),
        false => routes.limiter.check(routes.client(peer, req.headers())),
    };
    // The method each path takes (in `Allow` on 405).
    let allow = match path {
        PRESENCE_PATH => "GET, POST",
        POLL_PATH => "GET",
        _ => "POST",
    };
    let answered = if let Err(failure) = routes.origins.check(origin) {
        Err(failure)
    } else if req.method() == Method::OPTIONS {
        routes.origins.preflight(origin).map(|headers| {
            let mut response = respond(StatusCode::NO_CONTENT, Bytes::new());
            insert(&mut response, headers);
            response
        })
    } else if let Err(failure) = limited() {
        Err(failure)
    } else if presence {
        presence::answer(server, &routes.holders, req)
            .await
            .map(|(status, body)| respond(status, body))
    } else if req.method().as_str() != allow {
        let message = format!("{} takes {allow}", req.uri().path());
        Err(Failure::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            message,
        ))
    } else if req.uri().path() == SEND_PATH {
        send(server, &routes.streams, req)
            .await
            .map(|(status, body)| respond(status, body))
    } else if req.uri().path() == MESSAGES_PATH {
        ot_http::post(routes, req)
            .await
            .map(|(status, body)| respond(status, body))
    } else if req.uri().path() == POLL_PATH {
        ot_http::poll(routes, req)
            .await
            .map(|(status, body)| respond(status, body))
    } else {
        exchange(server, req)
            .await
            .map(|payload| respond(StatusCode::OK, payload))
    };
    match answered {
        Ok(response) => response,
        Err(failure) => {
            let mut response = respond(failure.status, Bytes::from(failure.body()));
            if let Some((name, value)) = failure.header(allow) {
                insert(&mut response, vec![(name, value)]);
            }
            response
        }
    }
}

fn respond(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The request as a frame through the sync server; the reply's payload.
async fn exchange(server: &SyncServer, req: Request<Incoming>) -> Result<Bytes, Failure> {
    let kind = match req.uri().path() {
        PULL_PATH => MessageType::PullRequest,
        _ => MessageType::PushRequest,
    };
    let handshake = handshake(&req);
    let body = body(server, req).await?;
    let payload: &RawValue = serde_json::from_slice(&body).map_err(|e| {
        let message = format!("the body is not JSON: {e}");
        Failure::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidPayload.as_str(),
            message,
        )
    })?;
    exchange_frame(server, &handshake, kind, payload.get()).await
}

/// One frame of `kind` with `payload` on a session of its own ([`SyncServer::exchange`]):
/// the reply's payload, or the failure an error frame or a refusal is.
pub(crate) async fn exchange_frame(
    server: &SyncServer,
    handshake: &Handshake,
    kind: MessageType,
    payload: &str,
) -> Result<Bytes, Failure> {
    let frame = format!(
        r#"{{"type":"{}","id":"{ID}","payload":{payload}}}"#,
        kind.as_str()
    );
    let limits = DecodeLimits::default();
    let is_reply = move |bytes: &Bytes| {
        syncmux::wire::Frame::decode(bytes.clone(), &limits)
            .is_ok_and(|f| f.id().is_some_and(|id| id.as_str() == ID))
    };
    let reply = server
        .exchange(handshake, Bytes::from(frame), is_reply)
        .await
        .map_err(Failure::refused)?
        .ok_or_else(|| {
            let message = "the server closed the request's session (it may be shutting down)";
            Failure::new(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", message)
        })?;
    let reply = syncmux::wire::Frame::decode(reply, &DecodeLimits::default())
        .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", e.to_string()))?;
    match reply.kind() {
        MessageType::Error => Err(Failure::of_error(&reply)),
        _ => Ok(Bytes::copy_from_slice(reply.raw_payload())),
    }
}

/// `POST /sync/send`: the body's frames (one JSON frame per line) into the inbox of the
/// stream the request names, in order, the frames of one request together; `202
/// {"accepted": n}`. Their replies come on the stream. A body with a line that is not JSON
/// sends nothing.
async fn send(
    server: &SyncServer,
    streams: &Streams,
    req: Request<Incoming>,
) -> Result<(StatusCode, Bytes), Failure> {
    let not_found = || {
        let message = "no open stream has this session: open GET /sync/sse";
        Failure::new(StatusCode::NOT_FOUND, "NOT_FOUND", message)
    };
    let Some(id) = named_stream(&req, sse::SESSION_COOKIE) else {
        return Err(not_found());
    };
    let body = body(server, req).await?;
    let mut frames = Vec::new();
    for (n, line) in body.split(|&b| b == b'\n').enumerate() {
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        if let Err(e) = serde_json::from_slice::<&RawValue>(line) {
            let message = format!("line {} is not a JSON frame: {e}", n + 1);
            let code = ErrorCode::InvalidFrame.as_str();
            return Err(Failure::new(StatusCode::BAD_REQUEST, code, message));
        }
        frames.push(body.slice_ref(line));
    }
    let accepted = frames.len();
    // Every line is JSON, so the body is text.
    let text = std::str::from_utf8(&body).unwrap_or_default();
    match streams.deliver(&id, frames, text).await {
        Ok(true) => {}
        Ok(false) => return Err(not_found()),
        Err(why) => {
            let message = format!("the server holding the session: {why}");
            return Err(Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                message,
            ));
        }
    }
    let answer = serde_json::json!({ "accepted": accepted });
    Ok((StatusCode::ACCEPTED, Bytes::from(answer.to_string())))
}

/// The stream a POST names: the header `X-Syncmux-Session`, the query's `session`, or the
/// cookie `cookie` (which the stream sets).
pub(crate) fn named_stream(req: &Request<Incoming>, cookie: &str) -> Option<String> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    if let Some(id) = header("x-syncmux-session") {
        return Some(id.trim().to_owned());
    }
    let query = req.uri().query().unwrap_or("").as_bytes();
    if let Some((_, id)) = form_urlencoded::parse(query).find(|(name, _)| name == "session") {
        return Some(id.into_owned());
    }
    let cookies = req.headers().get_all("cookie").into_iter();
    cookies
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == cookie).then(|| value.to_owned())
        })
}

/// The request's body, at most a frame long.
pub(crate) async fn body(server: &SyncServer, req: Request<Incoming>) -> Result<Bytes, Failure> {
    let limit = server.with_driver(|d, _| d.server().config().max_frame_len);
    body_within(req, limit).await
}

/// The request's body, at most `limit` bytes (0: any length).
pub(crate) async fn body_within(req: Request<Incoming>, limit: usize) -> Result<Bytes, Failure> {
    let body = match limit {
        0 => req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| e.into()),
        n => Limited::new(req.into_body(), n)
            .collect()
            .await
            .map(|b| b.to_bytes()),
    };
    let body = body.map_err(
        |e| match e.downcast_ref::<http_body_util::LengthLimitError>() {
            Some(_) => Failure::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::FrameTooLarge.as_str(),
                format!("the body is over {limit} bytes"),
            ),
            None => Failure::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", e.to_string()),
        },
    )?;
    Ok(body)
}

/// The state machine's view of the request: its query and headers, on the WebSocket's path
/// (so that the same handshake rules decide it), on the transport `http`.
pub(crate) fn handshake(req: &Request<Incoming>) -> Handshake {
    let headers = req.headers().iter();
    let headers = headers.filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)));
    handshake_of(req.uri().query().unwrap_or(""), headers, HTTP)
}

/// The transport label of a session of one request.
pub(crate) const HTTP: &str = "http";

/// A handshake on the WebSocket's path with `query` and `headers`, on `transport` (the
/// label of its metrics): an HTTP request names no subprotocol, so it speaks the seed's
/// version 1, as a WebSocket that names none.
pub(crate) fn handshake_of<'a>(
    query: &str,
    headers: impl Iterator<Item = (&'a str, &'a str)>,
    transport: &'static str,
) -> Handshake {
    let mut handshake = Handshake::new(super::WS_PATH, query);
    handshake.transport = transport;
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("origin") {
            handshake.origin = Some(value.to_owned());
        }
        handshake.headers.push((name.to_owned(), value.to_owned()));
    }
    handshake
}

/// The HTTP status of an error frame's code.
fn status_of(code: &str) -> StatusCode {
    match code {
        "INVALID_FRAME" | "INVALID_PAYLOAD" | "UNKNOWN_TYPE" | "DUPLICATE_ID" => {
            StatusCode::BAD_REQUEST
        }
        "UNAUTHORIZED" => StatusCode::UNAUTHORIZED,
        "FORBIDDEN" => StatusCode::FORBIDDEN,
        "FRAME_TOO_LARGE" => StatusCode::PAYLOAD_TOO_LARGE,
        "RATE_LIMITED" => StatusCode::TOO_MANY_REQUESTS,
        "UNAVAILABLE" | "TIMEOUT" | "DISCONNECTED" | "SLOW_CONSUMER" => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The code of a refused handshake's status.
fn code_of(status: StatusCode) -> &'static str {
    match status {
        StatusCode::UNAUTHORIZED => "UNAUTHORIZED",
        StatusCode::FORBIDDEN => "FORBIDDEN",
        StatusCode::SERVICE_UNAVAILABLE => "UNAVAILABLE",
        StatusCode::BAD_REQUEST => "BAD_REQUEST",
        _ => "REFUSED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(proxies: &[&str]) -> Routes {
        let ot = syncmux::ot::OtServer::new(syncmux::ot::OtServerConfig::default()).unwrap();
        let ot = syncmux_runtime::Tokio::start_ot(ot, syncmux_runtime::ServerOptions::default());
        let proxies = proxies.iter().map(|p| p.parse().unwrap()).collect();
        Routes::new(ot).trusting(proxies)
    }

    fn forwarded(values: &[&str]) -> hyper::HeaderMap {
        let mut headers = hyper::HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    /// The client is the peer, unless the peer is a trusted proxy: then the last forwarded
    /// address that is not one, across the header's lines; a hop that is no address ends
    /// the walk.
    #[tokio::test]
    async fn a_trusted_proxys_forwarded_address_is_the_client() {
        let untrusting = routes(&[]);
        let headers = forwarded(&["203.0.113.9"]);
        assert_eq!(untrusting.client(ip("10.0.0.1"), &headers), ip("10.0.0.1"));

        let trusting = routes(&["10.0.0.0/8", "192.0.2.7/32"]);
        assert_eq!(trusting.client(ip("10.0.0.1"), &headers), ip("203.0.113.9"));
        assert_eq!(
            trusting.client(ip("198.51.100.1"), &headers),
            ip("198.51.100.1"),
            "not a proxy: its header is ignored"
        );
        let chain = forwarded(&["1.1.1.1, 203.0.113.9", "192.0.2.7"]);
        assert_eq!(
            trusting.client(ip("10.0.0.1"), &chain),
            ip("203.0.113.9"),
            "the forged first hop is not believed"
        );
        let garbled = forwarded(&["203.0.113.9, unknown"]);
        assert_eq!(trusting.client(ip("10.0.0.1"), &garbled), ip("10.0.0.1"));
        assert_eq!(
            trusting.client(ip("10.0.0.1"), &hyper::HeaderMap::new()),
            ip("10.0.0.1")
        );
    }
}
