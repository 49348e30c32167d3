//! The SSE streams of `syncmux-server` over real sockets.
//!
//! Grove's, `GET /sync/stream`: live changes as Grove's `change` / `changes` events, each
//! with its cursor as the event id; a reconnect with `Last-Event-ID` gets exactly what came
//! after, a late old-HLC change included; one with Grove's `since_*` gets what is newer than
//! the HLC; errors as a status and `{"error","code"}`; auth as on the WebSocket.
//!
//! syncmux's own protocol, `GET /sync/sse` fed by `POST /sync/send`: every frame of a
//! WebSocket session, the session named by a header, the query or the cookie.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use crate::example_util::{self, Killed};

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Long enough never to be reached on a loaded machine; only a hang reaches it.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

pub(crate) fn start(args: &[&str]) -> (Killed, String) {
    let (process, url) = example_util::start_server(args).unwrap();
    let addr = url.strip_prefix("ws://").unwrap();
    let addr = addr.strip_suffix("/sync/ws").unwrap().to_owned();
    (process, addr)
}

/// One SSE event: its `id:`, its `event:` name and its data (empty for a bare id).
#[derive(Debug, PartialEq)]
pub(crate) struct Event {
    pub(crate) id: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) data: String,
}

/// An open stream, read event by event.
pub(crate) struct Stream {
    reader: BufReader<TcpStream>,
}

impl Stream {
    /// Opens `target` with `headers`: the stream, or the status and body of a refusal.
    pub(crate) async fn open(
        addr: &str,
        target: &str,
        headers: &[&str],
    ) -> Result<Stream, (u16, String)> {
        Stream::open_with_head(addr, target, headers)
            .await
            .map(|(stream, _)| stream)
    }

    /// [`open`](Self::open), with the answer's head (lower-cased).
    pub(crate) async fn open_with_head(
        addr: &str,
        target: &str,
        headers: &[&str],
    ) -> Result<(Stream, String), (u16, String)> {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let mut request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n");
        for header in headers {
            request.push_str(header);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut reader = BufReader::new(tcp);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            let read = tokio::time::timeout(PATIENCE, reader.read_line(&mut line)).await;
            assert!(read.unwrap().unwrap() > 0, "closed in the head: {head}");
            if line == "\r\n" {
                break;
            }
            head.push_str(&line.to_ascii_lowercase());
        }
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        if status != 200 {
            let mut body = String::new();
            reader.read_to_string(&mut body).await.unwrap();
            return Err((status, body));
        }
        assert!(head.contains("content-type: text/event-stream"), "{head}");
        assert!(head.contains("cache-control: no-cache"), "{head}");
        Ok((Stream { reader }, head))
    }

    /// The next event (comments skipped); `None` once the stream ended.
    pub(crate) async fn event(&mut self) -> Option<Event> {
        let mut event = Event {
            id: None,
            name: None,
            data: String::new(),
        };
        let mut fields = 0;
        loop {
            let mut line = String::new();
            let read = tokio::time::timeout(PATIENCE, self.reader.read_line(&mut line))
                .await
                .expect("an event in time")
                .unwrap();
            if read == 0 {
                return None;
            }
            let line = line.trim_end_matches('\n');
            if line.is_empty() {
                if fields > 0 {
                    return Some(event);
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            fields += 1;
            let (field, value) = line.split_once(": ").unwrap_or((line, ""));
            match field {
                "id" => event.id = Some(value.to_owned()),
                "event" => event.name = Some(value.to_owned()),
                "data" => event.data.push_str(value),
                other => panic!("unexpected field {other}"),
            }
        }
    }

    /// The records of the next `change` / `changes` events until `n` arrived, each with the
    /// id of its event: (pk, id).
    async fn records(&mut self, n: usize) -> Vec<(String, Option<String>)> {
        let mut records = Vec::new();
        while records.len() < n {
            let event = self.event().await.expect("the stream ended");
            let data: serde_json::Value = match event.name.as_deref() {
                Some("changes") => serde_json::from_str(&event.data).unwrap(),
                Some("change") => {
                    serde_json::Value::Array(vec![serde_json::from_str(&event.data).unwrap()])
                }
                _ => continue,
            };
            for record in data.as_array().unwrap() {
                let pk = record["pk"].as_str().unwrap().to_owned();
                records.push((pk, event.id.clone()));
            }
        }
        records
    }
}

fn record(pk: &str, ts: u64) -> String {
    format!(
        r#"{{"table":"docs","pk":"{pk}","field":"title","crdt_type":"lww","hlc":{{"ts":{ts},"c":0,"node":"grove-a"}},"node_id":"grove-a","value":"v{ts}"}}"#
    )
}

/// Grove's push, answered 200.
async fn push(addr: &str, records: &[String]) {
    let body = format!(
        r#"{{"changes":[{}],"node_id":"grove-a"}}"#,
        records.join(",")
    );
    let request = format!(
        "POST /sync/push HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, _, answer) = example_util::exchange(addr, &request).await;
    assert_eq!(status, 200, "{answer}");
}

/// Changes reach the stream as they are accepted, each event with its cursor as its id; a
/// reconnect with `Last-Event-ID` gets exactly the rest, in cursor order, a late change
/// with an old HLC included; Grove's own reconnect (`since_*`) gets what is newer than its
/// HLC.
#[tokio::test]
async fn a_stream_resumes_exactly_from_its_last_event_id() {
    for args in [&[][..], &["--static", "."][..]] {
        // Both of the router's paths: the plain one, and the one beside static files.
        let (_server, addr) = start(args);
        let target = "/sync/stream?tables=docs&node_id=watcher";
        let mut stream = Stream::open(&addr, target, &[]).await.unwrap();
        // The subscribe's ack: a bare id, where the live stream continues from.
        let ack = stream.event().await.unwrap();
        assert!(ack.id.is_some() && ack.name.is_none(), "{ack:?}");

        push(&addr, &[record("1", 100)]).await;
        push(&addr, &[record("2", 200), record("3", 300)]).await;
        let live = stream.records(3).await;
        let pks: Vec<&str> = live.iter().map(|(pk, _)| pk.as_str()).collect();
        assert_eq!(pks, ["1", "2", "3"]);
        assert!(live.iter().all(|(_, id)| id.is_some()), "{live:?}");
        let after_first = live[0].1.clone().unwrap();
        drop(stream);

        // While it is away: a change with an older HLC than any it has seen.
        push(&addr, &[record("late", 50)]).await;
        let resume = format!("Last-Event-ID: {after_first}");
        let mut stream = Stream::open(&addr, target, &[&resume]).await.unwrap();
        let replayed = stream.records(3).await;
        let pks: Vec<&str> = replayed.iter().map(|(pk, _)| pk.as_str()).collect();
        assert_eq!(
            pks,
            ["2", "3", "late"],
            "exactly what came after, once each"
        );
        push(&addr, &[record("4", 400)]).await;
        assert_eq!(stream.records(1).await[0].0, "4", "then the live stream");
        drop(stream);

        // Grove's client resumes from the newest HLC it saw: what is newer, in HLC order.
        let grove = "/sync/stream?tables=docs&since_ts=200&since_count=0&since_node=grove-a";
        let mut stream = Stream::open(&addr, grove, &[]).await.unwrap();
        let newer = stream.records(2).await;
        let pks: Vec<&str> = newer.iter().map(|(pk, _)| pk.as_str()).collect();
        assert_eq!(pks, ["3", "4"]);
    }
}

/// Refusals before the stream starts are a status and `{"error","code"}`; auth is the
/// WebSocket's (a Bearer header, `?token=`).
#[tokio::test]
async fn a_stream_is_refused_as_grove_expects() {
    let (_server, addr) = start(&["--token", "s3cret"]);
    let code = |body: &str| -> String {
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        body["code"].as_str().unwrap().to_owned()
    };
    let refused = |result: Result<Stream, (u16, String)>| match result {
        Ok(_) => panic!("the stream opened"),
        Err(refusal) => refusal,
    };
    let (status, body) = refused(Stream::open(&addr, "/sync/stream?tables=docs", &[]).await);
    assert_eq!((status, code(&body)), (401, "UNAUTHORIZED".to_owned()));
    let bearer = ["Authorization: Bearer s3cret"];
    let (status, body) = refused(Stream::open(&addr, "/sync/stream", &bearer).await);
    assert_eq!(
        (status, code(&body)),
        (400, "INVALID_PAYLOAD".to_owned()),
        "no tables"
    );
    let (status, body) =
        refused(Stream::open(&addr, "/sync/stream?tables=docs&since_ts=x", &bearer).await);
    assert_eq!(status, 400, "{body}");
    let mut stream = Stream::open(&addr, "/sync/stream?tables=docs&token=s3cret", &[])
        .await
        .unwrap();
    assert!(stream.event().await.unwrap().id.is_some());

    // Another method: 405 with `Allow: GET`.
    let request =
        format!("POST /sync/stream HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n");
    let (status, head, _) = example_util::exchange(&addr, &request).await;
    assert_eq!(status, 405);
    assert!(head.to_ascii_lowercase().contains("allow: get"), "{head}");
}

/// `--max-connections` counts open streams with the WebSockets: a stream past it is
/// refused 503 with `Retry-After`, and a stream that ends frees its place.
#[tokio::test]
async fn open_streams_count_against_max_connections() {
    let (_server, addr) = start(&["--max-connections", "1"]);
    let target = "/sync/stream?tables=docs";
    let mut first = Stream::open(&addr, target, &[]).await.unwrap();
    assert!(first.event().await.unwrap().id.is_some());
    let request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let (status, head, body) = example_util::exchange(&addr, &request).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: "),
        "{head}"
    );
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["code"], "UNAVAILABLE", "{body}");
    drop(first);
    let reopened = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Ok(mut stream) = Stream::open(&addr, target, &[]).await {
                return stream.event().await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    assert!(reopened.await.unwrap().is_some(), "the place was freed");
}

/// `POST /sync/send` with `body` for `session`, named by `how` (a header line, or a query
/// to append): the status and body.
async fn send(addr: &str, how: &str, body: &str) -> (u16, String) {
    let (query, header) = match how.strip_prefix('?') {
        Some(query) => (format!("?{query}"), String::new()),
        None => (String::new(), format!("{how}\r\n")),
    };
    let request = format!(
        "POST /sync/send{query} HTTP/1.1\r\nHost: {addr}\r\n{header}\
         Content-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, _, answer) = example_util::exchange(addr, &request).await;
    (status, answer)
}

impl Stream {
    /// The next unnamed event's frame.
    async fn frame(&mut self) -> (Option<String>, serde_json::Value) {
        let event = self.event().await.expect("the stream ended");
        assert_eq!(event.name, None, "{event:?}");
        (event.id, serde_json::from_str(&event.data).unwrap())
    }
}

/// A session over SSE and POSTs does what a WebSocket session does: subscribe, live changes
/// with their cursors as event ids, pings, presence; the POSTs name it by header, query or
/// cookie, and their frames are handled in order.
#[tokio::test]
async fn a_session_runs_over_sse_and_posts() {
    let (_server, addr) = start(&[]);
    let (mut stream, head) = Stream::open_with_head(&addr, "/sync/sse?node_id=bob", &[])
        .await
        .unwrap();
    let first = stream.event().await.unwrap();
    assert_eq!(first.name.as_deref(), Some("session"), "{first:?}");
    let session: serde_json::Value = serde_json::from_str(&first.data).unwrap();
    let session = session["session"].as_str().unwrap().to_owned();
    assert_eq!(session.len(), 32, "128 random bits");
    assert!(
        head.contains(&format!("set-cookie: syncmux_session={session}")),
        "{head}"
    );
    let header = format!("X-Syncmux-Session: {session}");

    // Two frames in one POST, answered in order on the stream.
    let body = r#"{"type":"subscribe","id":"s","payload":{"tables":["docs"]}}
{"type":"ping","id":"p1"}"#;
    let (status, answer) = send(&addr, &header, body).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer, r#"{"accepted":2}"#);
    let (_, ack) = stream.frame().await;
    assert_eq!(
        (&ack["type"], &ack["id"]),
        (&"ack".into(), &"s".into()),
        "{ack}"
    );
    let (_, pong) = stream.frame().await;
    assert_eq!(
        (&pong["type"], &pong["id"]),
        (&"pong".into(), &"p1".into()),
        "{pong}"
    );

    // A live change from another node, its cursor as the event's id.
    push(&addr, &[record("1", 100)]).await;
    let (id, change) = stream.frame().await;
    assert_eq!(change["type"], "change", "{change}");
    assert_eq!(id.as_deref(), change["cursor"].as_str());

    // The session named by the query, then by the cookie.
    let (status, _) = send(
        &addr,
        &format!("?session={session}"),
        r#"{"type":"ping","id":"p2"}"#,
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(stream.frame().await.1["id"], "p2");
    let cookie = format!("Cookie: theme=dark; syncmux_session={session}");
    let presence =
        r#"{"type":"presence_update","id":"u","payload":{"topic":"doc-1","data":{"x":1}}}"#;
    let (status, _) = send(&addr, &cookie, presence).await;
    assert_eq!(status, 202);
    let mut kinds = Vec::new();
    for _ in 0..2 {
        kinds.push(stream.frame().await.1["type"].as_str().unwrap().to_owned());
    }
    kinds.sort();
    assert_eq!(kinds, ["ack", "presence_event"]);

    // A body with a line that is not JSON is refused whole: nothing of it is handled.
    let bad = "{\"type\":\"ping\",\"id\":\"never\"}\n{not json";
    let (status, answer) = send(&addr, &header, bad).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("INVALID_FRAME"), "{answer}");
    send(&addr, &header, r#"{"type":"ping","id":"p3"}"#).await;
    assert_eq!(
        stream.frame().await.1["id"],
        "p3",
        "the refused ping never came"
    );

    // An unknown session, and one whose stream is gone: 404.
    let (status, answer) = send(&addr, "X-Syncmux-Session: nope", r#"{"type":"ping"}"#).await;
    assert_eq!(status, 404, "{answer}");
    assert!(answer.contains("NOT_FOUND"), "{answer}");
    drop(stream);
    let gone = async {
        loop {
            let (status, _) = send(&addr, &header, r#"{"type":"ping"}"#).await;
            if status == 404 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(PATIENCE, gone)
        .await
        .expect("404 once the stream is gone");
}

/// A raw request with a JSON body: the status and body.
async fn request(
    addr: &str,
    method: &str,
    target: &str,
    headers: &str,
    body: &str,
) -> (u16, String) {
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, _, answer) = example_util::exchange(addr, &request).await;
    (status, answer)
}

/// The node ids in `topic`'s snapshot.
async fn members(addr: &str, topic: &str) -> Vec<String> {
    let (status, body) = request(
        addr,
        "GET",
        &format!("/sync/presence?topic={topic}"),
        "",
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let snapshot: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(snapshot["topic"], topic, "{snapshot}");
    let states = snapshot["states"].as_array().unwrap();
    states
        .iter()
        .map(|s| s["node_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits until `topic`'s members are `want`.
async fn members_become(addr: &str, topic: &str, want: &[&str]) {
    let wait = async {
        while members(addr, topic).await != want {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(PATIENCE, wait)
        .await
        .expect("the members in time");
}

/// Grove's presence over HTTP: a POST joins, updates and leaves, answered with the event it
/// made; a GET gives the snapshot; a node leaves when its stream ends, or when its POSTs stop
/// for the presence TTL.
#[tokio::test]
async fn grove_presence_over_http() {
    let (_server, addr) = start(&["--presence-ttl", "1000"]);
    let post = |data: &str| format!(r#"{{"node_id":"alice","topic":"doc-1","data":{data}}}"#);
    let (status, body) = request(&addr, "POST", "/sync/presence", "", &post(r#"{"x":1}"#)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        r#"{"type":"join","node_id":"alice","topic":"doc-1","data":{"x":1}}"#
    );
    let (_, body) = request(&addr, "POST", "/sync/presence", "", &post(r#"{"x":2}"#)).await;
    assert_eq!(
        body,
        r#"{"type":"update","node_id":"alice","topic":"doc-1","data":{"x":2}}"#
    );
    let (_, snapshot) = request(&addr, "GET", "/sync/presence?topic=doc-1", "", "").await;
    let snapshot: serde_json::Value = serde_json::from_str(&snapshot).unwrap();
    assert_eq!(snapshot["states"][0]["data"]["x"], 2, "{snapshot}");
    let (_, body) = request(&addr, "POST", "/sync/presence", "", &post("null")).await;
    assert_eq!(
        body,
        r#"{"type":"leave","node_id":"alice","topic":"doc-1"}"#
    );
    members_become(&addr, "doc-1", &[]).await;

    // A stream opened with the node's id: when it ends, the node leaves.
    request(&addr, "POST", "/sync/presence", "", &post("{}")).await;
    let stream = Stream::open(&addr, "/sync/stream?tables=docs&node_id=alice", &[]).await;
    members_become(&addr, "doc-1", &["alice"]).await;
    drop(stream);
    members_become(&addr, "doc-1", &[]).await;

    // No POST for the presence TTL: the node leaves.
    request(&addr, "POST", "/sync/presence", "", &post("{}")).await;
    members_become(&addr, "doc-1", &["alice"]).await;
    members_become(&addr, "doc-1", &[]).await;

    // Refusals.
    let (status, _) = request(&addr, "GET", "/sync/presence", "", "").await;
    assert_eq!(status, 400, "no topic");
    let no_node = r#"{"topic":"doc-1","data":{}}"#;
    let (status, _) = request(&addr, "POST", "/sync/presence", "", no_node).await;
    assert_eq!(status, 400, "no node");
    let (status, _) = request(&addr, "POST", "/sync/presence", "", "{not json").await;
    assert_eq!(status, 400);
    let request_head =
        format!("PUT /sync/presence HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n");
    let (status, head, _) = example_util::exchange(&addr, &request_head).await;
    assert_eq!(status, 405);
    assert!(
        head.to_ascii_lowercase().contains("allow: get, post"),
        "{head}"
    );

    let (_secured, addr) = start(&["--token", "s3cret"]);
    let (status, body) = request(&addr, "POST", "/sync/presence", "", &post("{}")).await;
    assert_eq!(status, 401, "{body}");
    let bearer = "Authorization: Bearer s3cret\r\n";
    let (status, body) = request(&addr, "POST", "/sync/presence", bearer, &post("{}")).await;
    assert_eq!(status, 200, "{body}");
}

/// The status of the answer to a raw request, read from its head alone (an upgrade's
/// connection stays open).
async fn status_of(addr: &str, request: &str) -> u16 {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut reader = BufReader::new(tcp);
    let mut line = String::new();
    tokio::time::timeout(PATIENCE, reader.read_line(&mut line))
        .await
        .expect("an answer in time")
        .unwrap();
    line.split(' ').nth(1).unwrap().parse().unwrap()
}

/// The status and head (lower-cased) of a raw request.
async fn head_of(addr: &str, request: &str) -> (u16, String) {
    let (status, head, _) = example_util::exchange(addr, request).await;
    (status, head.to_ascii_lowercase())
}

/// `--allowed-origins`: a listed origin gets CORS answers, preflights included, on every
/// HTTP route and stream; another origin gets 403 there and at the WebSocket upgrade; a
/// request without `Origin` (not a browser) is served as before.
#[tokio::test]
async fn allowed_origins_get_cors_answers_and_others_403() {
    let (_server, addr) = start(&["--allowed-origins", "https://app.example,https://b.example"]);
    let pull = r#"{"tables":["docs"],"node_id":"n"}"#;
    let post = |origin: &str| {
        format!(
            "POST /sync/pull HTTP/1.1\r\nHost: {addr}\r\nOrigin: {origin}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{pull}",
            pull.len()
        )
    };
    let (status, head) = head_of(&addr, &post("https://app.example")).await;
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains("access-control-allow-origin: https://app.example"),
        "{head}"
    );
    assert!(
        head.contains("access-control-allow-credentials: true"),
        "{head}"
    );
    let (status, head) = head_of(&addr, &post("https://evil.example")).await;
    assert_eq!(status, 403, "{head}");
    assert!(!head.contains("access-control-allow-origin"), "{head}");
    let native = format!(
        "POST /sync/pull HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{pull}",
        pull.len()
    );
    let (status, head) = head_of(&addr, &native).await;
    assert_eq!(status, 200);
    assert!(!head.contains("access-control-allow-origin"), "{head}");

    // Preflights, of a POST route and of a stream.
    for path in ["/sync/send", "/sync/stream", "/sync/sse", "/sync/presence"] {
        let preflight = |origin: &str| {
            format!(
                "OPTIONS {path} HTTP/1.1\r\nHost: {addr}\r\nOrigin: {origin}\r\n\
                 Access-Control-Request-Method: POST\r\n\
                 Access-Control-Request-Headers: x-syncmux-session\r\n\r\n"
            )
        };
        let (status, head) = head_of(&addr, &preflight("https://b.example")).await;
        assert_eq!(status, 204, "{path}: {head}");
        assert!(
            head.contains("access-control-allow-origin: https://b.example"),
            "{head}"
        );
        assert!(
            head.contains("access-control-allow-methods: get, post"),
            "{head}"
        );
        assert!(head.contains("x-syncmux-session"), "{head}");
        let (status, _) = head_of(&addr, &preflight("https://evil.example")).await;
        assert_eq!(status, 403, "{path}");
    }

    // Streams.
    let listed = ["Origin: https://app.example"];
    let (_, head) = Stream::open_with_head(&addr, "/sync/stream?tables=docs", &listed)
        .await
        .unwrap();
    assert!(
        head.contains("access-control-allow-origin: https://app.example"),
        "{head}"
    );
    let other = ["Origin: https://evil.example"];
    match Stream::open(&addr, "/sync/sse", &other).await {
        Ok(_) => panic!("a stream for another origin"),
        Err((status, _)) => assert_eq!(status, 403),
    }

    // The WebSocket upgrade.
    let upgrade = |origin: &str| {
        format!(
            "GET /sync/ws HTTP/1.1\r\nHost: {addr}\r\nOrigin: {origin}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
    };
    let (status, _) = head_of(&addr, &upgrade("https://evil.example")).await;
    assert_eq!(status, 403);
    let to_ot = upgrade("https://evil.example").replace("/sync/ws", "/ot");
    assert_eq!(head_of(&addr, &to_ot).await.0, 403, "the OT endpoint's too");
    assert_eq!(status_of(&addr, &upgrade("https://app.example")).await, 101);

    // `*`: every origin, each answered as itself.
    let (_any, any) = start(&["--allowed-origins", "*"]);
    let request = format!(
        "POST /sync/pull HTTP/1.1\r\nHost: {any}\r\nOrigin: https://else.example\r\n\
         Content-Length: {}\r\n\r\n{pull}",
        pull.len()
    );
    let (status, head) = head_of(&any, &request).await;
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains("access-control-allow-origin: https://else.example"),
        "{head}"
    );
    let upgrade_any = upgrade("https://else.example").replace(&addr, &any);
    assert_eq!(status_of(&any, &upgrade_any).await, 101);

    // Without the flag: no CORS answers, and no preflight passes.
    let (_open, addr) = start(&[]);
    let request = format!(
        "POST /sync/pull HTTP/1.1\r\nHost: {addr}\r\nOrigin: https://app.example\r\n\
         Content-Length: {}\r\n\r\n{pull}",
        pull.len()
    );
    let (status, head) = head_of(&addr, &request).await;
    assert_eq!(status, 200, "{head}");
    assert!(!head.contains("access-control-allow-origin"), "{head}");
    let preflight = format!(
        "OPTIONS /sync/pull HTTP/1.1\r\nHost: {addr}\r\nOrigin: https://app.example\r\n\r\n"
    );
    assert_eq!(head_of(&addr, &preflight).await.0, 403);
}

/// No sticky sessions: a stream on one server, its POSTs on another sharing the Redis; the
/// frames cross through Redis, in order, once each; a session no server holds is 404.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_to_another_server_reach_the_stream_through_redis() {
    let Some(redis) = crate::redis_util::RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let args = ["--redis", &url, "--redis-prefix", "relay"];
    let (_a, a) = start(&args);
    let (_b, b) = start(&args);
    let mut stream = Stream::open(&a, "/sync/sse?node_id=bob", &[])
        .await
        .unwrap();
    let first = stream.event().await.unwrap();
    let session: serde_json::Value = serde_json::from_str(&first.data).unwrap();
    let session = session["session"].as_str().unwrap().to_owned();
    let header = format!("X-Syncmux-Session: {session}");
    for n in 0..50 {
        let (status, answer) =
            send(&b, &header, &format!(r#"{{"type":"ping","id":"p{n}"}}"#)).await;
        assert_eq!(status, 202, "{answer}");
    }
    for n in 0..50 {
        let (_, pong) = stream.frame().await;
        assert_eq!(pong["id"], format!("p{n}"), "in order, once each");
    }
    let (status, _) = send(&b, "X-Syncmux-Session: 0123.4567", r#"{"type":"ping"}"#).await;
    assert_eq!(status, 404, "no such server");
    let (node, _) = session.split_once('.').unwrap();
    let unknown = format!("X-Syncmux-Session: {node}.00");
    assert_eq!(
        send(&b, &unknown, r#"{"type":"ping"}"#).await.0,
        404,
        "no such session there"
    );
    drop(stream);
    let gone = async {
        while send(&b, &header, r#"{"type":"ping"}"#).await.0 != 404 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(PATIENCE, gone)
        .await
        .expect("404 once the stream is gone");
}
