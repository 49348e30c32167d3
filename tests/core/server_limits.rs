//! Error frames and every limit with its outcome, in virtual time.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use crate::server_util;

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use server_util::*;
use syncmux::payload::Cursor;
use syncmux::{ConfigError, Instant, PullAnswer, Server, ServerConfig, ServerEvent, SessionId};

fn pull(id: &str) -> String {
    format!(r#"{{"type":"pull_request","id":"{id}","payload":{{"tables":["docs"]}}}}"#)
}

#[test]
fn ping_is_answered_with_a_pong_echoing_id_and_payload() {
    let mut h = Harness::new(config());
    let a = h.open("a");
    h.send(
        a,
        r#"{"type":"ping","request_id":"7","payload":{"t":[1,2.50]}}"#,
    );
    h.send(a, r#"{"type":"ping"}"#);
    let frames = h.take(a);
    assert_eq!(
        frames[0],
        json!({"type":"pong","request_id":"7","payload":{"t":[1,2.50]}})
    );
    assert_eq!(frames[1], json!({"type":"pong"}));
}

#[test]
fn malformed_frames_get_typed_errors() {
    let mut h = Harness::new(config());
    let a = h.open("a");
    h.send(a, r#"{"type":"teleport","id":"u"}"#);
    h.send(a, r#"{"type":7,"id":"t"}"#);
    h.send(a, "not json");
    h.send(
        a,
        r#"{"type":"subscribe","id":"p","payload":{"tables":[1]}}"#,
    );
    h.send(a, r#"{"type":"pull_request","payload":{"tables":[]}}"#);
    h.send(a, r#"{"type":"change","payload":{}}"#);
    h.server.handle_binary(h.now, a, 10);
    h.drain();
    let frames = h.take(a);
    assert_eq!(error_code(&frames[0]), "UNKNOWN_TYPE");
    assert_eq!(frames[0]["id"], "u");
    assert_eq!(error_code(&frames[1]), "INVALID_FRAME");
    assert_eq!(frames[1]["id"], "t");
    assert_eq!(error_code(&frames[2]), "INVALID_FRAME");
    assert!(frames[2].get("id").is_none());
    assert_eq!(error_code(&frames[3]), "INVALID_PAYLOAD");
    assert!(frames[3]["payload"]["message"]
        .as_str()
        .unwrap()
        .starts_with("payload.tables[0]"));
    assert_eq!(error_code(&frames[4]), "INVALID_FRAME", "pull needs an id");
    assert_eq!(error_code(&frames[5]), "INVALID_FRAME", "server-only type");
    assert_eq!(error_code(&frames[6]), "INVALID_FRAME", "binary");
    assert!(h.server.is_open(a));
}

#[test]
fn an_oversized_frame_is_refused_and_a_repeat_closes_1009() {
    let mut c = config();
    c.max_frame_len = 64;
    let mut h = Harness::new(c);
    let a = h.open("a");
    let big = format!(r#"{{"type":"ping","payload":"{}"}}"#, "x".repeat(100));
    h.send(a, &big);
    assert_eq!(error_code(&h.take(a)[0]), "FRAME_TOO_LARGE");
    assert!(h.server.is_open(a));
    h.send(a, r#"{"type":"ping"}"#);
    assert_eq!(types(&h.take(a)), ["pong"]);
    h.send(a, &big);
    assert_eq!(error_code(&h.take(a)[0]), "FRAME_TOO_LARGE");
    assert_eq!(h.closes[&a].0, 1009);
}

#[test]
fn too_many_invalid_frames_close_4400() {
    let mut c = config();
    c.max_invalid_frames = 3;
    let mut h = Harness::new(c);
    let a = h.open("a");
    for _ in 0..3 {
        h.send(a, "{");
        h.send(a, r#"{"type":"nope"}"#); // unknown types are not punished
    }
    assert!(h.server.is_open(a));
    h.send(a, r#"{"type":"room","payload":{"action":"dance"}}"#);
    assert_eq!(h.closes[&a].0, 4400);
    assert_eq!(h.take(a).len(), 7, "every frame was answered first");
}

#[test]
fn in_flight_requests_are_bounded_and_ids_unique() {
    let mut c = config();
    c.max_in_flight = 2;
    let mut h = Harness::new(c);
    let a = h.open("a");
    h.send(a, &pull("1"));
    h.send(a, &pull("1"));
    h.send(a, &pull("2"));
    h.send(a, &pull("3"));
    let frames = h.take(a);
    assert_eq!(error_code(&frames[0]), "DUPLICATE_ID");
    assert_eq!(frames[0]["id"], "1");
    assert_eq!(error_code(&frames[1]), "RATE_LIMITED");
    assert_eq!(
        frames[1]["payload"]["message"],
        "too many requests in flight"
    );
    assert_eq!(frames[1]["id"], "3");
    // Once answered, the id and the slot are free again.
    let ServerEvent::Pull { request, .. } = h.take_events()[0].clone() else {
        panic!()
    };
    h.server.answer_pull(h.now, request, Ok(Default::default()));
    h.send(a, &pull("1"));
    assert_eq!(types(&h.take(a)), ["pull_response"]);
    assert_eq!(h.take_events().len(), 1);
}

#[test]
fn subscriptions_topics_and_rooms_per_session_are_bounded() {
    let mut c = config();
    c.max_subscriptions = 2;
    c.max_topics = 1;
    c.max_rooms = 1;
    let mut h = Harness::new(c);
    let a = h.open("a");
    h.send(
        a,
        r#"{"type":"subscribe","id":"1","payload":{"tables":["x","y","z"]}}"#,
    );
    h.send(
        a,
        r#"{"type":"subscribe","id":"2","payload":{"tables":["x","y","x"]}}"#,
    );
    h.send(
        a,
        r#"{"type":"presence_update","id":"3","payload":{"topic":"t1","data":1}}"#,
    );
    h.send(
        a,
        r#"{"type":"presence_update","id":"4","payload":{"topic":"t2","data":1}}"#,
    );
    h.send(
        a,
        r#"{"type":"room","id":"5","payload":{"action":"join","room":"r1"}}"#,
    );
    h.send(
        a,
        r#"{"type":"room","id":"6","payload":{"action":"join","room":"r2"}}"#,
    );
    let frames: Vec<_> = h
        .take(a)
        .into_iter()
        .filter(|f| f["type"] == "error" || f["type"] == "ack")
        .collect();
    let outcome: Vec<String> = frames
        .iter()
        .map(|f| match f["type"].as_str().unwrap() {
            "ack" => format!("ack {}", f["id"].as_str().unwrap()),
            _ => format!("{} {}", error_code(f), f["id"].as_str().unwrap()),
        })
        .collect();
    assert_eq!(
        outcome,
        [
            "RATE_LIMITED 1",
            "ack 2",
            "ack 3",
            "RATE_LIMITED 4",
            "ack 5",
            "RATE_LIMITED 6"
        ]
    );
    assert_eq!(h.server.subscriptions(a), ["x", "y"]);
}

#[test]
fn a_consumer_that_does_not_drain_is_closed_4503() {
    let mut c = config();
    c.max_outbound_bytes = 200;
    let mut h = Harness::new(c);
    h.auto_sent = false;
    let slow = h.open("slow");
    h.send(
        slow,
        r#"{"type":"subscribe","payload":{"tables":["docs"]}}"#,
    );
    let pusher = h.open("p");
    h.send(
        slow,
        r#"{"type":"presence_update","payload":{"topic":"t","data":1}}"#,
    );
    let mut next = 0;
    let mut pushed = 0;
    while !h.closes.contains_key(&slow) {
        pushed += 1;
        assert!(pushed < 10, "never closed");
        h.send(
            pusher,
            &push_json(
                &format!("{pushed}"),
                "p",
                &[record_json("docs", "k", 1, "p")],
            ),
        );
        h.accept_pushes(&mut next);
        assert!(h.server.outbound_bytes(slow).unwrap_or(0) <= 200);
    }
    assert_eq!(h.closes[&slow].0, 4503);
    // Detached at once: no longer present anywhere.
    assert!(h.server.presence_members("t").is_empty());
    assert!(h
        .take_events()
        .iter()
        .any(|e| matches!(e, ServerEvent::SessionClosed { code: Some(c), .. } if c.0 == 4503)));
}

#[test]
fn reporting_frames_written_frees_the_bound() {
    let mut c = config();
    c.max_outbound_bytes = 200;
    let mut h = Harness::new(c);
    let fast = h.open("fast");
    for i in 0..50 {
        h.send(fast, &format!(r#"{{"type":"ping","id":"{i}"}}"#));
    }
    assert!(h.server.is_open(fast), "auto_sent keeps the bound free");
}

#[test]
fn the_token_bucket_limits_and_refills_and_pongs_to_our_pings_are_free() {
    let mut c = config();
    c.rate_limit_burst = 3;
    c.rate_limit_window = Duration::from_secs(3);
    c.ping_interval = Duration::from_secs(10);
    c.idle_timeout = Duration::from_secs(60);
    let mut h = Harness::new(c);
    let a = h.open("a");
    for i in 0..4 {
        h.send(a, &format!(r#"{{"type":"ping","id":"{i}"}}"#));
    }
    let frames = h.take(a);
    assert_eq!(types(&frames), ["pong", "pong", "pong", "error"]);
    assert_eq!(error_code(&frames[3]), "RATE_LIMITED");
    assert_eq!(frames[3]["id"], "3");
    // One token per second comes back.
    h.advance(Duration::from_secs(1));
    h.send(a, r#"{"type":"ping","id":"4"}"#);
    h.send(a, r#"{"type":"ping","id":"5"}"#);
    assert_eq!(types(&h.take(a)), ["pong", "error"]);
    // The server pings after 10 s of silence; its pong costs nothing.
    h.advance(Duration::from_secs(11));
    let ping = h.take(a);
    assert_eq!(types(&ping), ["ping"]);
    let id = ping[0]["id"].as_str().unwrap().to_owned();
    for i in 0..3 {
        h.send(a, &format!(r#"{{"type":"ping","id":"x{i}"}}"#));
    }
    h.send(a, &format!(r#"{{"type":"pong","id":"{id}"}}"#));
    h.send(a, r#"{"type":"ping","id":"y"}"#);
    assert_eq!(types(&h.take(a)), ["pong", "pong", "pong", "error"]);
    // A second pong with the same id is no longer exempt.
    h.send(a, &format!(r#"{{"type":"pong","id":"{id}"}}"#));
    assert_eq!(error_code(&h.take(a)[0]), "RATE_LIMITED");
}

#[test]
fn sustained_abuse_closes_4429() {
    let mut c = config();
    c.rate_limit_burst = 2;
    c.rate_limit_window = Duration::from_secs(60);
    let mut h = Harness::new(c);
    let a = h.open("a");
    for i in 0..12 {
        h.send(a, &format!(r#"{{"type":"ping","id":"{i}"}}"#));
    }
    assert!(h.server.is_open(a), "2 served, 10 = 5 x N refused");
    h.send(a, r#"{"type":"ping"}"#);
    assert_eq!(h.closes[&a].0, 4429);
}

#[test]
fn idle_sessions_are_closed_4408_and_any_frame_keeps_them_alive() {
    let mut c = config();
    c.idle_timeout = Duration::from_secs(90);
    c.ping_interval = Duration::ZERO;
    let mut h = Harness::new(c);
    let a = h.open("a");
    let b = h.open("b");
    h.advance(Duration::from_secs(60));
    h.send(a, "garbage counts too");
    h.advance(Duration::from_secs(31));
    assert_eq!(h.closes[&b].0, 4408);
    assert!(h.server.is_open(a));
    h.advance(Duration::from_secs(60));
    assert_eq!(h.closes[&a].0, 4408);
    assert_eq!(h.server.poll_timeout(), None);
}

#[test]
fn the_server_pings_silent_sessions() {
    let mut c = config();
    c.ping_interval = Duration::from_secs(30);
    let mut h = Harness::new(c);
    let a = h.open("a");
    assert_eq!(h.server.poll_timeout(), Some(Instant::ZERO + secs(30)));
    h.advance(Duration::from_secs(29));
    assert!(h.take(a).is_empty());
    h.advance(Duration::from_secs(1));
    assert_eq!(types(&h.take(a)), ["ping"]);
    // Answering keeps the session alive past the idle timeout.
    for _ in 0..5 {
        h.advance(Duration::from_secs(30));
        for f in h.take(a) {
            let id = f["id"].as_str().unwrap().to_owned();
            h.send(a, &format!(r#"{{"type":"pong","id":"{id}"}}"#));
        }
    }
    assert!(h.server.is_open(a));
}

#[test]
fn time_going_backwards_is_clamped_and_early_timeouts_are_no_ops() {
    let mut h = Harness::new(config());
    let a = h.open("a");
    h.advance(Duration::from_secs(50));
    let deadline = h.server.poll_timeout().unwrap();
    h.server.handle_timeout(Instant::ZERO);
    h.server.handle_timeout(Instant::ZERO + secs(51));
    h.drain();
    assert!(h.server.is_open(a));
    assert_eq!(h.server.poll_timeout(), Some(deadline));
    // A frame stamped in the past counts as now: the idle timer is not pulled earlier.
    h.server
        .handle_message(Instant::ZERO, a, Bytes::from_static(b"{\"type\":\"ping\"}"));
    h.drain();
    h.advance(Duration::from_secs(89));
    assert!(h.server.is_open(a));
}

#[test]
fn zero_disables_limits() {
    let mut c = config();
    c.rate_limit_burst = 0;
    c.max_in_flight = 0;
    c.idle_timeout = Duration::ZERO;
    c.ping_interval = Duration::ZERO;
    c.presence_ttl = Duration::ZERO;
    let mut h = Harness::new(c);
    let a = h.open("a");
    for i in 0..500 {
        h.send(a, &pull(&i.to_string()));
    }
    assert!(h.take(a).is_empty());
    assert_eq!(h.server.pending_requests(), 500);
    assert_eq!(h.server.poll_timeout(), None);
}

#[test]
fn configs_are_validated() {
    let mut c = ServerConfig::default();
    c.rate_limit_window = Duration::ZERO;
    assert_eq!(Server::new(c).unwrap_err(), ConfigError::RateLimitWindow);
    let mut c = ServerConfig::default();
    c.ping_interval = c.idle_timeout;
    assert!(matches!(
        Server::new(c).unwrap_err(),
        ConfigError::PingAfterIdle { .. }
    ));
}

#[test]
fn input_for_unknown_sessions_is_ignored() {
    let mut h = Harness::new(config());
    let a = h.open("a");
    h.server.handle_disconnected(h.now, a);
    h.drain();
    h.send(a, r#"{"type":"ping"}"#);
    h.server.handle_sent(h.now, a, 10);
    h.server.handle_disconnected(h.now, a);
    h.drain();
    assert!(h.take(a).is_empty());
    let b: SessionId = h.open("b");
    assert_ne!(a, b, "slots are reused with a new generation");
}

/// A number beyond f64 is still JSON: a pong passes it on byte for byte (found by the server
/// fuzz target, whose check parsed frames into `serde_json::Value`, which refuses it).
#[test]
fn a_pong_echoes_numbers_beyond_f64_byte_for_byte() {
    let mut server = Server::new(config()).unwrap();
    let hs = syncmux::Handshake::new("/", "node_id=a").protocol("syncmux.v1");
    let syncmux::HandshakeOutcome::Accept { session, .. } =
        server.handle_handshake(Instant::ZERO, &hs)
    else {
        panic!("refused")
    };
    while server.poll_transmit().is_some() {}
    let ping = r#"{"type":"ping","id":"n","payload":[9999999999999999.9999E999999,-1e-999999]}"#;
    server.handle_message(Instant::ZERO, session, Bytes::from_static(ping.as_bytes()));
    let Some(syncmux::ServerTransmit::Frame { bytes, .. }) = server.poll_transmit() else {
        panic!("no pong")
    };
    assert_eq!(
        &bytes[..],
        br#"{"type":"pong","id":"n","payload":[9999999999999999.9999E999999,-1e-999999]}"#
    );
}

/// The safe default: an embedder that does not report writes (`reports_writes` off) is never
/// closed for not calling `handle_sent`; a frame counts as written once polled, and a replay
/// paced by the outbound bound still goes out whole.
#[test]
fn an_embedder_that_never_reports_writes_is_never_a_slow_consumer() {
    let mut c = config();
    c.reports_writes = false;
    c.max_outbound_bytes = 400;
    c.max_changes_per_frame = 1;
    let mut h = Harness::new(c);
    h.auto_sent = false;
    let sub = h.open("sub");
    let pusher = h.open("p");
    h.send(sub, r#"{"type":"subscribe","payload":{"tables":["docs"]}}"#);
    let mut next = 0;
    for i in 0..50 {
        let push = push_json(&format!("{i}"), "p", &[record_json("docs", "k", i, "p")]);
        h.send(pusher, &push);
        h.accept_pushes(&mut next);
    }
    assert!(h.closes.is_empty(), "{:?}", h.closes);
    assert_eq!(pks_of(&h.take(sub)).len(), 50);
    // A replay of 50 one-change frames, ten times the bound.
    h.send(
        sub,
        r#"{"type":"subscribe","id":"r","payload":{"tables":["docs"],"since":"0:0:x"}}"#,
    );
    let Some(ServerEvent::Replay { request, .. }) = h.take_events().pop() else {
        panic!("no replay")
    };
    let changes = (0..50)
        .map(|i| {
            (
                Cursor::new(1, i + 1),
                record("docs", &format!("r{i}"), i as i64, "p"),
            )
        })
        .collect();
    let answer = PullAnswer {
        changes,
        head: Cursor::new(1, 50),
        complete: true,
        ..PullAnswer::default()
    };
    h.server.answer_replay(h.now, request, Ok(answer));
    h.drain();
    assert!(h.closes.is_empty(), "{:?}", h.closes);
    let frames = h.take(sub);
    assert_eq!(pks_of(&frames).len(), 50);
    assert_eq!(frames.last().unwrap()["type"], "ack");
}

/// The pk of every change record in `frames`.
fn pks_of(frames: &[serde_json::Value]) -> Vec<String> {
    frames
        .iter()
        .flat_map(|f| match f["type"].as_str() {
            Some("change") => vec![f["payload"].clone()],
            Some("changes") => f["payload"].as_array().unwrap().clone(),
            _ => vec![],
        })
        .map(|r| r["pk"].as_str().unwrap().to_owned())
        .collect()
}
