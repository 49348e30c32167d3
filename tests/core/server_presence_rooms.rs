//! Presence (per topic, TTL, snapshot, leave) and rooms (members, join, leave, message,
//! maximum size, members only).
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use crate::server_util;

use std::time::Duration;

use serde_json::json;
use server_util::*;
use syncmux::Instant;

fn presence(topic: &str, data: &str) -> String {
    format!(
        r#"{{"type":"presence_update","id":"u","payload":{{"topic":"{topic}","data":{data}}}}}"#
    )
}

fn room(action: &str, name: &str, data: Option<&str>) -> String {
    match data {
        Some(d) => format!(
            r#"{{"type":"room","id":"r","payload":{{"action":"{action}","room":"{name}","data":{d}}}}}"#
        ),
        None => format!(
            r#"{{"type":"room","id":"r","payload":{{"action":"{action}","room":"{name}"}}}}"#
        ),
    }
}

#[test]
fn presence_events_reach_every_member_including_the_sender() {
    let mut h = Harness::new(config());
    let a = h.open("a");
    let b = h.open("b");
    let outsider = h.open("c");
    h.send(a, &presence("doc", r#"{"cursor":1}"#));
    assert_eq!(
        h.take(a),
        vec![
            json!({"type":"presence_event","payload":{"type":"join","node_id":"a","topic":"doc","data":{"cursor":1}}}),
            json!({"type":"ack","id":"u"}),
        ]
    );
    h.send(b, &presence("doc", "true"));
    assert_eq!(h.take(a)[0]["payload"]["node_id"], "b");
    assert_eq!(types(&h.take(b)), ["presence_event", "ack"]);
    h.send(a, &presence("doc", r#"{"cursor":2}"#));
    let to_b = h.take(b);
    assert_eq!(to_b[0]["payload"]["type"], "update");
    assert_eq!(to_b[0]["payload"]["data"]["cursor"], 2);
    assert_eq!(h.take(a)[0]["payload"]["type"], "update");
    assert!(h.take(outsider).is_empty());
}

/// `data` is required: an update that forgot it is an `INVALID_PAYLOAD`, not a leave (only an
/// explicit `null` leaves), and the member stays.
#[test]
fn an_update_without_data_is_invalid_not_a_leave() {
    let mut h = Harness::new(config());
    let a = h.open("a");
    let b = h.open("b");
    h.send(a, &presence("doc", "1"));
    h.send(b, &presence("doc", "2"));
    h.take(a);
    h.take(b);
    h.send(
        a,
        r#"{"type":"presence_update","id":"x","payload":{"topic":"doc"}}"#,
    );
    let answer = h.take(a);
    assert_eq!(answer.len(), 1, "{answer:?}");
    assert_eq!(answer[0]["type"], "error", "{answer:?}");
    assert_eq!(
        answer[0]["payload"]["code"], "INVALID_PAYLOAD",
        "{answer:?}"
    );
    assert!(
        answer[0]["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("data"),
        "{answer:?}"
    );
    assert!(h.take(b).is_empty(), "b heard a leave");
}

#[test]
fn data_null_leaves_and_everyone_hears_it() {
    let mut h = Harness::new(config());
    let a = h.open("a");
    let b = h.open("b");
    h.send(a, &presence("doc", "1"));
    h.send(b, &presence("doc", "1"));
    h.take(a);
    h.take(b);
    h.send(a, &presence("doc", "null"));
    let leave =
        json!({"type":"presence_event","payload":{"type":"leave","node_id":"a","topic":"doc"}});
    assert_eq!(h.take(b), vec![leave.clone()]);
    assert_eq!(h.take(a), vec![leave, json!({"type":"ack","id":"u"})]);
    assert_eq!(h.server.presence_members("doc"), vec![b]);
    // Leaving a topic one is not in is a quiet success.
    h.send(a, &presence("doc", "null"));
    assert_eq!(types(&h.take(a)), ["ack"]);
}

#[test]
fn snapshot_lists_members_with_millisecond_timestamps() {
    let mut h = Harness::new(config());
    let a = h.open("a");
    let b = h.open("b");
    h.advance(Duration::from_millis(1500));
    h.send(a, &presence("doc", r#""hi""#));
    h.advance(Duration::from_millis(500));
    h.send(b, &presence("doc", "2"));
    h.take(a);
    h.send(
        a,
        r#"{"type":"presence_get","id":"g","payload":{"topic":"doc"}}"#,
    );
    assert_eq!(
        h.take(a),
        vec![
            json!({"type":"presence_snapshot","id":"g","payload":{"topic":"doc","states":[
                {"node_id":"a","topic":"doc","data":"hi","updated_at":1500},
                {"node_id":"b","topic":"doc","data":2,"updated_at":2000}
            ]}})
        ]
    );
    h.send(
        a,
        r#"{"type":"presence_get","id":"e","payload":{"topic":"none"}}"#,
    );
    assert_eq!(h.take(a)[0]["payload"]["states"], json!([]));
}

/// `updated_at` is wall time when the embedder gives it: the core's instants are monotonic
/// and say nothing of the calendar.
#[test]
fn updated_at_is_wall_time_once_the_server_has_it() {
    let mut h = Harness::new(config());
    let a = h.open("a");
    h.advance(Duration::from_millis(700));
    h.server.set_wall_clock(h.now, 1_700_000_000_000);
    h.advance(Duration::from_millis(1500));
    h.send(a, &presence("doc", "1"));
    h.send(
        a,
        r#"{"type":"presence_get","id":"g","payload":{"topic":"doc"}}"#,
    );
    let frames = h.take(a);
    let snapshot = frames.last().unwrap();
    assert_eq!(
        snapshot["payload"]["states"][0]["updated_at"],
        1_700_000_001_500_u64
    );
}

#[test]
fn disconnect_and_expiry_leave() {
    let mut c = config();
    c.presence_ttl = Duration::from_secs(60);
    c.ping_interval = Duration::ZERO;
    let mut h = Harness::new(c);
    let a = h.open("a");
    let b = h.open("b");
    let quiet = h.open("quiet");
    for s in [a, b, quiet] {
        h.send(s, &presence("doc", "1"));
    }
    h.take(a);
    h.server.handle_disconnected(h.now, b);
    h.drain();
    assert_eq!(h.take(a)[0]["payload"]["type"], "leave");
    // `a` keeps talking, `quiet` does not: only `quiet` expires.
    h.advance(Duration::from_secs(40));
    h.send(a, r#"{"type":"ping"}"#);
    h.advance(Duration::from_secs(21));
    let frames = h.take(a);
    assert_eq!(
        frames.last().unwrap(),
        &json!({"type":"presence_event","payload":{"type":"leave","node_id":"quiet","topic":"doc"}})
    );
    assert_eq!(h.server.presence_members("doc"), vec![a]);
    assert!(
        h.server.is_open(quiet),
        "expiry leaves presence, not the session"
    );
    assert_eq!(h.take(quiet).last().unwrap()["payload"]["type"], "leave");
    assert!(h.now > Instant::ZERO);
}

#[test]
fn presence_can_be_disabled() {
    let mut c = config();
    c.presence = false;
    let mut h = Harness::new(c);
    let a = h.open("a");
    h.send(a, &presence("doc", "1"));
    h.send(
        a,
        r#"{"type":"presence_get","id":"g","payload":{"topic":"doc"}}"#,
    );
    let frames = h.take(a);
    assert_eq!(error_code(&frames[0]), "PRESENCE_DISABLED");
    assert_eq!(error_code(&frames[1]), "PRESENCE_DISABLED");
    assert_eq!(frames[1]["id"], "g");
}

#[test]
fn joining_a_room_sends_members_to_the_joiner_and_join_to_the_others() {
    let mut h = Harness::new(config());
    let a = h.open("a");
    let b = h.open("b");
    h.send(a, &room("join", "lobby", Some(r#"{"name":"A"}"#)));
    assert_eq!(
        h.take(a),
        vec![
            json!({"type":"room","payload":{"event":"members","room":"lobby","members":[{"node_id":"a","data":{"name":"A"}}]}}),
            json!({"type":"ack","id":"r"}),
        ]
    );
    h.send(b, &room("join", "lobby", None));
    let to_b = h.take(b);
    assert_eq!(
        to_b[0]["payload"]["members"],
        json!([{"node_id":"a","data":{"name":"A"}},{"node_id":"b","data":null}])
    );
    assert_eq!(
        h.take(a),
        vec![json!({"type":"room","payload":{"event":"join","room":"lobby","node_id":"b"}})]
    );
}

#[test]
fn broadcasts_reach_the_other_members_only_from_members() {
    let mut h = Harness::new(config());
    let a = h.open("a");
    let b = h.open("b");
    let c = h.open("c");
    h.send(a, &room("join", "lobby", None));
    h.send(b, &room("join", "lobby", None));
    h.take(a);
    h.take(b);
    h.send(a, &room("broadcast", "lobby", Some(r#"{"msg":"hi"}"#)));
    assert_eq!(
        h.take(b),
        vec![
            json!({"type":"room","payload":{"event":"message","room":"lobby","node_id":"a","data":{"msg":"hi"}}})
        ]
    );
    assert_eq!(types(&h.take(a)), ["ack"]);
    h.send(c, &room("broadcast", "lobby", Some("1")));
    h.send(c, &room("leave", "lobby", None));
    let frames = h.take(c);
    assert_eq!(error_code(&frames[0]), "NOT_A_MEMBER");
    assert_eq!(error_code(&frames[1]), "NOT_A_MEMBER");
    assert!(h.take(b).is_empty());
}

#[test]
fn leave_and_disconnect_tell_the_rest() {
    let mut h = Harness::new(config());
    let a = h.open("a");
    let b = h.open("b");
    let c = h.open("c");
    for s in [a, b, c] {
        h.send(s, &room("join", "lobby", None));
    }
    h.take(a);
    h.send(b, &room("leave", "lobby", None));
    assert_eq!(
        h.take(a),
        vec![json!({"type":"room","payload":{"event":"leave","room":"lobby","node_id":"b"}})]
    );
    assert_eq!(types(&h.take(b)), ["room", "ack", "room", "ack"]);
    h.server.handle_disconnected(h.now, c);
    h.drain();
    assert_eq!(h.take(a)[0]["payload"]["event"], "leave");
    assert_eq!(h.server.room_members("lobby"), vec![a]);
}

#[test]
fn rooms_have_a_maximum_size() {
    let mut c = config();
    c.max_room_size = 2;
    let mut h = Harness::new(c);
    let a = h.open("a");
    let b = h.open("b");
    let c = h.open("c");
    h.send(a, &room("join", "small", None));
    h.send(b, &room("join", "small", None));
    h.send(c, &room("join", "small", None));
    let frames = h.take(c);
    assert_eq!(error_code(&frames[0]), "ROOM_FULL");
    assert_eq!(frames[0]["id"], "r");
    // Re-joining as a member is not refused.
    h.send(a, &room("join", "small", Some("2")));
    assert_eq!(types(&h.take(a)).last(), Some(&"ack"));
    assert_eq!(h.server.room_members("small").len(), 2);
}
