//! The OT profile over HTTP + SSE of `syncmux-server`, over real sockets: `GET /ot/events`
//! opens a stream with the document's `init`, then the session's frames (the sender's ack,
//! the others' ops, WebSocket clients' included); `POST /ot/messages` feeds the stream its
//! cookie names and answers with the op's revision; `GET /ot/poll` reads the ops after a
//! revision. A POST with no stream of its own, or with an op that does not apply, changes
//! nothing. `--token` may come as the cookie `syncmux_token`.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use crate::example_util;
use crate::sse::{start, Stream, PATIENCE};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// A stream of document `doc` (`None`: doc-1) and the cookie that ties POSTs to it.
pub(crate) async fn open(addr: &str, doc: Option<&str>, headers: &[&str]) -> (Stream, String) {
    let target = match doc {
        Some(doc) => format!("/ot/events?docId={doc}"),
        None => "/ot/events".to_owned(),
    };
    let (stream, head) = Stream::open_with_head(addr, &target, headers)
        .await
        .unwrap_or_else(|(status, body)| panic!("{status}: {body}"));
    let cookie = head
        .lines()
        .find_map(|line| line.strip_prefix("set-cookie: "))
        .expect("the stream sets its cookie");
    assert!(cookie.starts_with("syncmux_ot="), "{cookie}");
    assert!(
        cookie.contains("; path=/ot; httponly; samesite=lax"),
        "{cookie}"
    );
    assert!(head.contains("x-accel-buffering: no"), "{head}");
    let pair = cookie.split(';').next().unwrap();
    // The head was lower-cased; the id is hex, the name lower-case already.
    (stream, pair.to_owned())
}

/// The next event's data as JSON (unnamed events only: the transports read no others).
pub(crate) async fn next(stream: &mut Stream) -> Value {
    let event = stream.event().await.expect("the stream ended");
    assert_eq!(event.name, None, "{event:?}");
    serde_json::from_str(&event.data).unwrap()
}

/// `POST /ot/messages` with `body` and `headers`: (status, answer).
pub(crate) async fn post(addr: &str, body: &Value, headers: &[&str]) -> (u16, Value) {
    let body = body.to_string();
    let mut request = format!(
        "POST /ot/messages HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request.push_str(&body);
    let (status, _, answer) = example_util::exchange(addr, &request).await;
    (status, serde_json::from_str(&answer).unwrap())
}

/// `GET /ot/poll?docId=&since=`: (status, answer).
pub(crate) async fn poll(addr: &str, doc: &str, since: u64) -> (u16, Value) {
    let request =
        format!("GET /ot/poll?docId={doc}&since={since} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let (status, _, answer) = example_util::exchange(addr, &request).await;
    (status, serde_json::from_str(&answer).unwrap())
}

fn cookie(pair: &str) -> String {
    format!("Cookie: {pair}")
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client of `/ot`, a member of `doc` (by a snapshot request, answered).
pub(crate) async fn websocket(addr: &str, doc: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ot"))
        .await
        .unwrap();
    let ask = json!({"type": "snapshot", "docId": doc}).to_string();
    ws.send(Message::text(ask)).await.unwrap();
    let answer = ws_next(&mut ws).await;
    assert_eq!(answer["type"], "snapshot", "{answer}");
    ws
}

pub(crate) async fn ws_next(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .unwrap();
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

/// Two streams and a WebSocket on one document: an op POSTed for the first is acked on it
/// alone (and its POST answered with its revision), and reaches the others as an op; the
/// WebSocket's op reaches both streams; a late stream starts from the text. On both of the
/// router's paths (the plain one, and the one beside static files).
#[tokio::test]
async fn a_stream_carries_its_acks_and_the_others_ops() {
    for args in [&[][..], &["--static", "."][..]] {
        let (_server, addr) = start(args);
        let (mut alice, alice_cookie) = open(&addr, Some("d1"), &[]).await;
        let init = json!({"type": "init", "snapshot": "", "revision": 0, "docId": "d1"});
        assert_eq!(next(&mut alice).await, init);
        let (mut bob, _) = open(&addr, Some("d1"), &[]).await;
        assert_eq!(next(&mut bob).await, init);
        let mut carol = websocket(&addr, "d1").await;

        let op = json!({"type": "op", "op": [{"i": "hello"}], "revision": 0, "docId": "d1"});
        let (status, answer) = post(&addr, &op, &[&cookie(&alice_cookie)]).await;
        assert_eq!(
            (status, answer),
            (202, json!({"success": true, "revision": 1}))
        );
        let ack = json!({"type": "ack", "revision": 1, "docId": "d1"});
        assert_eq!(next(&mut alice).await, ack);
        let broadcast = json!({"type": "op", "op": [{"i": "hello"}], "revision": 1, "docId": "d1"});
        assert_eq!(next(&mut bob).await, broadcast);
        assert_eq!(ws_next(&mut carol).await, broadcast);

        // Carol's op, made on revision 0 too: transformed after alice's.
        let stale = json!({"type": "op", "op": [{"i": ">"}], "revision": 0, "docId": "d1"});
        carol.send(Message::text(stale.to_string())).await.unwrap();
        assert_eq!(ws_next(&mut carol).await["type"], "ack");
        let transformed =
            json!({"type": "op", "op": [{"r": 5}, {"i": ">"}], "revision": 2, "docId": "d1"});
        assert_eq!(next(&mut alice).await, transformed);
        assert_eq!(next(&mut bob).await, transformed);

        let (mut late, _) = open(&addr, Some("d1"), &[]).await;
        let init = json!({"type": "init", "snapshot": "hello>", "revision": 2, "docId": "d1"});
        assert_eq!(next(&mut late).await, init);
        // A stream of doc-1 (no docId) carries nothing of d1.
        let (mut other, _) = open(&addr, None, &[]).await;
        let init = json!({"type": "init", "snapshot": "", "revision": 0});
        assert_eq!(next(&mut other).await, init);
    }
}

/// A POST with no stream of its own, with a stream id nobody holds, with an op that does not
/// apply, or past the rate limit is refused with a 4xx `{"error"}`, and the document stays
/// as it was; the invalid op's error also reaches its stream, as on a WebSocket.
#[tokio::test]
async fn a_refused_post_changes_nothing() {
    let (_server, addr) = start(&["--rate-limit", "3/60"]);
    let (mut alice, alice_cookie) = open(&addr, Some("d2"), &[]).await;
    next(&mut alice).await;
    let op = json!({"type": "op", "op": [{"i": "a"}], "revision": 0, "docId": "d2"});
    let (status, answer) = post(&addr, &op, &[]).await;
    assert_eq!(status, 404, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("/ot/events"));
    let nobody = cookie("syncmux_ot=0123456789abcdef0123456789abcdef");
    assert_eq!(post(&addr, &op, &[&nobody]).await.0, 404);

    let past_the_end =
        json!({"type": "op", "op": [{"r": 3}, {"i": "x"}], "revision": 0, "docId": "d2"});
    let (status, answer) = post(&addr, &past_the_end, &[&cookie(&alice_cookie)]).await;
    assert_eq!(status, 400, "{answer}");
    let message = answer["error"].as_str().unwrap().to_owned();
    assert!(message.contains("past the end"), "{message}");
    let error = next(&mut alice).await;
    assert_eq!(
        (&error["type"], &error["message"]),
        (&json!("error"), &json!(message))
    );
    let (status, answer) = poll(&addr, "d2", 0).await;
    assert_eq!(status, 200);
    assert_eq!(answer["revision"], 0, "nothing was applied: {answer}");

    // The stream's session keeps the WebSocket's rate limit: 3 messages per window.
    for _ in 0..2 {
        let bad = json!({"type": "op", "op": "not an op", "revision": 0});
        assert_eq!(post(&addr, &bad, &[&cookie(&alice_cookie)]).await.0, 400);
    }
    let (status, answer) = post(&addr, &op, &[&cookie(&alice_cookie)]).await;
    assert_eq!(
        (status, &answer["error"]),
        (429, &json!("Rate limit exceeded"))
    );
    let (_, answer) = poll(&addr, "d2", 0).await;
    assert_eq!(answer["revision"], 0, "nothing was applied: {answer}");
}

/// A poll answers the ops after a revision, each with the revision it made, and the head.
#[tokio::test]
async fn a_poll_reads_the_ops_after_a_revision() {
    let (_server, addr) = start(&[]);
    let (mut writer, writer_cookie) = open(&addr, Some("d3"), &[]).await;
    next(&mut writer).await;
    for (revision, text) in ["ab", "c"].into_iter().enumerate() {
        let at = if revision == 0 { 0 } else { 2 };
        let op = json!({"type": "op", "op": [{"r": at}, {"i": text}], "revision": revision, "docId": "d3"});
        let (status, answer) = post(&addr, &op, &[&cookie(&writer_cookie)]).await;
        assert_eq!((status, &answer["revision"]), (202, &json!(revision + 1)));
    }
    let (status, answer) = poll(&addr, "d3", 1).await;
    assert_eq!(status, 200);
    assert_eq!(
        answer,
        json!({
            "type": "poll",
            "hasUpdates": true,
            "operations": [{"op": [{"r": 2}, {"i": "c"}], "revision": 2}],
            "revision": 2,
        })
    );
    let (_, answer) = poll(&addr, "d3", 2).await;
    assert_eq!(answer["hasUpdates"], false);
    assert_eq!(answer["operations"], json!([]));
    let request = format!("GET /ot/poll?docId=d3&since=x HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    assert_eq!(example_util::exchange(&addr, &request).await.0, 400);
}

/// With `--token`, a stream and a poll are refused without it, and taken with it as the
/// cookie `syncmux_token` (an `EventSource` sends no headers).
#[tokio::test]
async fn the_token_may_come_as_a_cookie() {
    let (_server, addr) = start(&["--token", "sesame"]);
    let refused = Stream::open(&addr, "/ot/events", &[]).await.err();
    assert_eq!(refused.map(|(status, _)| status), Some(401));
    let wrong = Stream::open(&addr, "/ot/events", &["Cookie: syncmux_token=nope"]).await;
    assert_eq!(wrong.err().map(|(status, _)| status), Some(401));
    let (mut stream, pair) = open(&addr, None, &["Cookie: syncmux_token=sesame"]).await;
    assert_eq!(next(&mut stream).await["type"], "init");
    let op = json!({"type": "op", "op": [{"i": "x"}], "revision": 0});
    let both = format!("Cookie: syncmux_token=sesame; {pair}");
    assert_eq!(post(&addr, &op, &[&both]).await.0, 202);
    let request = format!("GET /ot/poll?since=0 HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    assert_eq!(example_util::exchange(&addr, &request).await.0, 401);
    let request = format!(
        "GET /ot/poll?since=0 HTTP/1.1\r\nHost: {addr}\r\nCookie: syncmux_token=sesame\r\n\r\n"
    );
    let (status, _, body) = example_util::exchange(&addr, &request).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""revision":1"#), "{body}");
}
