//! Grove's SSE stream under `/sync` (its `StreamingTransport`): `GET /sync/stream`.
//!
//! No protocol rule is written here: the stream is a session of the sync server run over
//! channels ([`adapters::Tokio::frames`]), decided by the WebSocket's handshake on the
//! request's query and headers, and subscribed with the request's `tables`, its
//! `since_ts` / `since_count` / `since_node` (the `since` HLC) and its `Last-Event-ID` (the
//! cursor). The session's frames become events: `change` and `changes` as Grove's events of
//! those names, each with an `id:` line holding its cursor (a reconnect with
//! `Last-Event-ID` resumes exactly after it, late old-HLC changes included), and the
//! subscribe's ack as a bare `id:` line (where the live stream continues from); the server's
//! pings are answered by the stream itself (Grove's clients send nothing on it), and
//! `: keep-alive` comments go out every [`KEEP_ALIVE`]. An error before the stream starts is
//! a status and `{"error","code"}` as on Grove's POSTs; one after it is an `event: error`,
//! and a close by the server a last `event: close` with its code and reason.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use hyper::StatusCode;
use syncmux::wire::{DecodeLimits, ErrorCode, Frame, MessageType};
use syncmux_runtime::{self as adapters, Frames, SyncServer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::http::{self, Failure};

/// Grove's stream.
pub(crate) const STREAM_PATH: &str = "/sync/stream";

/// How a stream keeps its connection alive.
#[derive(Clone, Copy, Debug)]
struct Timing {
    /// How often a quiet stream gets a `: keep-alive` comment (15 s, Grove's server's
    /// interval). A proxy that drops idle connections keeps it; a consumer that went away is
    /// found by the write.
    keep_alive: Duration,
    /// How long one write may wait for the consumer to read (30 s). A consumer that reads
    /// nothing for this long is dropped (the frames waiting meanwhile are bounded by the
    /// session's outbound bound, past which the server closes it as a slow consumer).
    write_timeout: Duration,
}

const TIMING: Timing = Timing {
    keep_alive: Duration::from_secs(15),
    write_timeout: Duration::from_secs(30),
};

/// The id of the stream's subscribe, which its ack and its error echo.
const ID: &str = "stream";

/// Serves `GET /sync/stream` on `io`, whose request head is `head` (read already).
pub(crate) async fn serve<S>(server: &SyncServer, head: &[u8], io: S) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    serve_with(server, head, io, TIMING).await
}

async fn serve_with<S>(
    server: &SyncServer,
    head: &[u8],
    mut io: S,
    timing: Timing,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut opened = match open(server, head).await {
        Ok(opened) => opened,
        Err(failure) => {
            let header = failure.header("GET");
            let extra = header.map_or(String::new(), |(name, value)| {
                format!("{name}: {value}\r\n")
            });
            let body = failure.body();
            let answer = format!(
                "HTTP/1.1 {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 {extra}Connection: close\r\n\r\n{body}",
                failure.status,
                body.len()
            );
            return io.write_all(answer.as_bytes()).await;
        }
    };
    // Read until the first frame is out: an error then is still a status (see `open`).
    let first = opened.first.take();
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
                X-Accel-Buffering: no\r\nConnection: close\r\n\r\n";
    let mut out = Vec::from(head);
    if let Some(frame) = first {
        event(&frame, &mut out);
    }
    write(&mut io, &out, timing.write_timeout).await?;
    let every = timing.keep_alive;
    let mut keep_alive = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut scratch = [0u8; 512];
    loop {
        out.clear();
        tokio::select! {
            frame = opened.frames.next() => match frame {
                Some(bytes) => {
                    let Ok(frame) = syncmux::wire::decode(bytes, &DecodeLimits::default()) else {
                        continue;
                    };
                    if frame.kind() == MessageType::Ping {
                        // Grove's clients never answer: the stream does, so the session is
                        // not idle while its consumer reads.
                        if let Some(id) = frame.id() {
                            let pong = serde_json::json!({"type": "pong", "id": id.as_str()});
                            let _ = opened.frames.inbox().send(Bytes::from(pong.to_string())).await;
                        }
                        continue;
                    }
                    event(&frame, &mut out);
                }
                None => {
                    if let Some((code, reason)) = opened.frames.closed_with() {
                        let data = serde_json::json!({"code": code.0, "reason": reason});
                        out.extend_from_slice(format!("event: close\ndata: {data}\n\n").as_bytes());
                        write(&mut io, &out, timing.write_timeout).await?;
                    }
                    return io.shutdown().await;
                }
            },
            _ = keep_alive.tick() => out.extend_from_slice(b": keep-alive\n\n"),
            read = io.read(&mut scratch) => match read {
                // The consumer closed its side: it is gone.
                Ok(0) | Err(_) => return Ok(()),
                // A consumer sends nothing after its request; whatever it sends is dropped.
                Ok(_) => continue,
            },
        }
        if !out.is_empty() {
            write(&mut io, &out, timing.write_timeout).await?;
            keep_alive.reset();
        }
    }
}

/// A stream whose session was accepted and subscribed: its frames, and the first one.
struct Opened {
    frames: Frames,
    /// The first frame, which showed the subscribe succeeded (a replayed change or its ack).
    first: Option<Frame>,
}

/// The request as a session subscribed as it asks; a failure before any event.
async fn open(server: &SyncServer, head: &[u8]) -> Result<Opened, Failure> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    if !matches!(request.parse(head), Ok(httparse::Status::Complete(_))) {
        return Err(bad_request("the request head does not parse"));
    }
    if request.method != Some("GET") {
        let message = format!("{STREAM_PATH} takes GET");
        return Err(Failure::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            message,
        ));
    }
    let target = request.path.unwrap_or_default();
    let query = target.split_once('?').map_or("", |(_, query)| query);
    let headers = request
        .headers
        .iter()
        .filter_map(|h| Some((h.name, std::str::from_utf8(h.value).ok()?)));
    let last_event_id = request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("last-event-id"))
        .and_then(|h| std::str::from_utf8(h.value).ok());
    let subscribe = subscribe(query, last_event_id)?;
    let handshake = http::handshake_of(query, headers);
    let session = server.handshake(&handshake).map_err(|rejection| {
        let status =
            StatusCode::from_u16(rejection.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Failure::new(status, http::code_of(status), rejection.reason)
    })?;
    let mut frames = adapters::Tokio::frames(session);
    let unavailable = || {
        Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "the server closed the stream's session (it may be shutting down)",
        )
    };
    frames
        .inbox()
        .send(subscribe)
        .await
        .map_err(|_| unavailable())?;
    // The subscribe's first answer: its error, or the first frame of the stream.
    let first = loop {
        let bytes = frames.next().await.ok_or_else(unavailable)?;
        let Ok(frame) = syncmux::wire::decode(bytes, &DecodeLimits::default()) else {
            continue;
        };
        let ours = frame.id().is_some_and(|id| id.as_str() == ID);
        match frame.kind() {
            MessageType::Error if ours => return Err(error_of(&frame)),
            MessageType::Ack if ours => break frame,
            MessageType::Change | MessageType::Changes => break frame,
            _ => continue,
        }
    };
    Ok(Opened {
        frames,
        first: Some(first),
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

/// The event of one frame, appended to `out` (nothing for a frame the stream does not
/// carry: presence, rooms, pongs).
fn event(frame: &Frame, out: &mut Vec<u8>) {
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
            out.extend_from_slice(format!("event: {name}\ndata: ").as_bytes());
            out.extend_from_slice(frame.raw_payload());
            out.extend_from_slice(b"\n\n");
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
            let failure = error_of(frame);
            out.extend_from_slice(format!("event: error\ndata: {}\n\n", failure.body()).as_bytes());
        }
        _ => {}
    }
}

/// An error frame as a failure (its status of its code).
fn error_of(frame: &Frame) -> Failure {
    #[derive(serde::Deserialize)]
    struct Error {
        code: String,
        message: String,
    }
    match frame.payload::<Error>() {
        Ok(error) => Failure {
            status: http::status_of(&error.code),
            code: error.code,
            message: error.message,
        },
        Err(e) => Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", e.to_string()),
    }
}

fn bad_request(message: &str) -> Failure {
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

    /// The stream served on one end of a pipe of `capacity` bytes; the other end.
    fn open(
        server: &SyncServer,
        capacity: usize,
    ) -> (DuplexStream, tokio::task::JoinHandle<std::io::Result<()>>) {
        let (ours, theirs) = tokio::io::duplex(capacity);
        let server = server.clone();
        let task = tokio::spawn(async move { serve_with(&server, HEAD, ours, FAST).await });
        (theirs, task)
    }

    /// Reads until `text` has come (or the stream ended): everything read.
    async fn read_until(consumer: &mut DuplexStream, text: &str) -> String {
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

    /// A quiet stream gets a `: keep-alive` comment at its interval.
    #[tokio::test]
    async fn a_quiet_stream_gets_a_keep_alive_comment() {
        let server = server(ServerConfig::default());
        let (mut consumer, _task) = open(&server, 64 * 1024);
        read_until(&mut consumer, "id: ").await;
        let start = tokio::time::Instant::now();
        let read = read_until(&mut consumer, ": keep-alive\n\n").await;
        assert!(read.ends_with(": keep-alive\n\n"), "{read:?}");
        assert!(start.elapsed() >= FAST.keep_alive);
        let read = read_until(&mut consumer, ": keep-alive\n\n").await;
        assert_eq!(read, ": keep-alive\n\n", "and again");
    }

    /// The stream answers the server's pings: a session whose consumer only reads is not
    /// closed as idle.
    #[tokio::test]
    async fn the_stream_answers_the_servers_pings() {
        let mut config = ServerConfig::default();
        config.ping_interval = Duration::from_millis(50);
        config.idle_timeout = Duration::from_millis(200);
        let server = server(config);
        let (mut consumer, task) = open(&server, 64 * 1024);
        read_until(&mut consumer, "id: ").await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(!task.is_finished(), "the stream ended");
        assert_eq!(server.session_count(), 1);
        drop(consumer);
        let ended = tokio::time::timeout(Duration::from_secs(10), task).await;
        assert!(ended.is_ok(), "a consumer that went away ends the stream");
    }

    /// A consumer that stops reading is dropped once a write waits longer than its
    /// timeout, and its session ends.
    #[tokio::test]
    async fn a_consumer_that_stops_reading_is_dropped() {
        let server = server(ServerConfig::default());
        let (mut consumer, task) = open(&server, 160);
        read_until(&mut consumer, "id: ").await;
        // The pipe fills with keep-alives, then a write waits.
        let ended = tokio::time::timeout(Duration::from_secs(20), task).await;
        let served = ended.expect("the stream ended").unwrap();
        assert_eq!(served.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
        let gone = tokio::time::timeout(Duration::from_secs(10), async {
            while server.session_count() > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        assert!(gone.await.is_ok(), "its session ended");
    }

    /// The example of `docs/protocol.md` (section 2.2) is what the stream writes for the
    /// frames it shows: the subscribe's ack, then a live change.
    #[test]
    fn the_protocol_documents_the_events_the_stream_writes() {
        let doc = include_str!("../../../docs/protocol.md");
        let section = doc.split("### 2.2 SSE").nth(1).unwrap();
        let example = section.split("```text\n").nth(1).unwrap();
        let example = example.split("```").next().unwrap();
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
            let frame = syncmux::wire::decode(Bytes::from(frame), &DecodeLimits::default());
            event(&frame.unwrap(), &mut out);
        }
        out.extend_from_slice(b": keep-alive\n\n");
        assert_eq!(String::from_utf8(out).unwrap(), example);
    }
}
