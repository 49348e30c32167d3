//! Grove's HTTP transport under `/sync` (its `HTTPTransport`): `POST /sync/pull` and
//! `POST /sync/push`, for the clients whose network blocks the WebSocket.
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

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::value::RawValue;
use syncmux::wire::{DecodeLimits, ErrorCode, MessageType};
use syncmux::Handshake;
use syncmux_runtime::SyncServer;
use tokio::io::{AsyncRead, AsyncWrite};

/// Grove's pull.
pub(crate) const PULL_PATH: &str = "/sync/pull";
/// Grove's push.
pub(crate) const PUSH_PATH: &str = "/sync/push";

/// Whether a request for `path` is this module's.
pub(crate) fn handles(path: &[u8]) -> bool {
    path == PULL_PATH.as_bytes() || path == PUSH_PATH.as_bytes()
}

/// The id the request's frame carries, which its reply echoes.
const ID: &str = "http";

/// Serves one request on `io` (no keep-alive: Grove's client opens a connection per request
/// through `http.DefaultClient`, which pools; one per connection keeps the router simple).
pub(crate) async fn serve<S>(server: SyncServer, io: S) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let server = server.clone();
        async move { Ok::<_, Infallible>(answer(&server, req).await) }
    });
    hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(TokioIo::new(io), service)
        .await
        .map_err(std::io::Error::other)
}

/// Why a request failed: its status, code and message.
struct Failure {
    status: StatusCode,
    code: String,
    message: String,
}

impl Failure {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Failure {
        Failure {
            status,
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

async fn answer(server: &SyncServer, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match exchange(server, req).await {
        Ok(payload) => respond(StatusCode::OK, payload),
        Err(failure) => {
            let body = serde_json::json!({"error": failure.message, "code": failure.code});
            let mut response = respond(failure.status, Bytes::from(body.to_string()));
            let headers = response.headers_mut();
            match failure.status {
                StatusCode::METHOD_NOT_ALLOWED => {
                    headers.insert(ALLOW, HeaderValue::from_static("POST"));
                }
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                    headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
                }
                _ => {}
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
    if req.method() != Method::POST {
        let message = format!("{} takes POST", req.uri().path());
        return Err(Failure::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            message,
        ));
    }
    let handshake = handshake(&req);
    let limit = server.with_driver(|d, _| d.server().config().max_frame_len);
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
    let payload: &RawValue = serde_json::from_slice(&body).map_err(|e| {
        let message = format!("the body is not JSON: {e}");
        Failure::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidPayload.as_str(),
            message,
        )
    })?;
    let frame = format!(
        r#"{{"type":"{}","id":"{ID}","payload":{}}}"#,
        kind.as_str(),
        payload.get()
    );
    let limits = DecodeLimits::default();
    let is_reply = move |bytes: &Bytes| {
        syncmux::wire::Frame::decode(bytes.clone(), &limits)
            .is_ok_and(|f| f.id().is_some_and(|id| id.as_str() == ID))
    };
    let reply = server
        .exchange(&handshake, Bytes::from(frame), is_reply)
        .await
        .map_err(|rejection| {
            let status =
                StatusCode::from_u16(rejection.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Failure::new(status, code_of(status), rejection.reason)
        })?
        .ok_or_else(|| {
            let message = "the server closed the request's session (it may be shutting down)";
            Failure::new(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", message)
        })?;
    let reply = syncmux::wire::Frame::decode(reply, &DecodeLimits::default())
        .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", e.to_string()))?;
    if reply.kind() != MessageType::Error {
        return Ok(Bytes::copy_from_slice(reply.raw_payload()));
    }
    #[derive(serde::Deserialize)]
    struct Error {
        code: String,
        message: String,
    }
    let error: Error = reply
        .payload()
        .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", e.to_string()))?;
    Err(Failure {
        status: status_of(&error.code),
        code: error.code,
        message: error.message,
    })
}

/// The state machine's view of the request: its query and headers, on the WebSocket's path
/// (so that the same handshake rules decide it).
fn handshake(req: &Request<Incoming>) -> Handshake {
    let mut handshake = Handshake::new(super::WS_PATH, req.uri().query().unwrap_or(""));
    for (name, value) in req.headers() {
        let Ok(value) = value.to_str() else { continue };
        if name == "origin" {
            handshake.origin = Some(value.to_owned());
        }
        handshake
            .headers
            .push((name.as_str().to_owned(), value.to_owned()));
    }
    // A request names no subprotocol: the seed's version 1, as a WebSocket that names none.
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
