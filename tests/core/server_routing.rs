//! Pull, push and replay answers; routing accepted changes with encode-once fan-out; the
//! replay hold-back (no gap, no duplicate).
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use crate::server_util;

use bytes::Bytes;
use serde_json::{json, Value};
use server_util::*;
use syncmux::payload::{Cursor, Hlc};
use syncmux::ServerEvent;
use syncmux::{AppError, PullAnswer, PushAnswer, ServerTransmit};

fn cursors(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .filter(|f| f["type"] == "change" || f["type"] == "changes")
        .filter_map(|f| Some(f.get("cursor")?.as_str().unwrap().to_owned()))
        .collect()
}

/// The pks of every change record in the frames, in order.
fn pks(frames: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    for f in frames {
        match f["type"].as_str().unwrap() {
            "change" => out.push(f["payload"]["pk"].as_str().unwrap().to_owned()),
            "changes" => out.extend(
                f["payload"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["pk"].as_str().unwrap().to_owned()),
            ),
            _ => {}
        }
    }
    out
}

#[test]
fn an_accepted_push_reaches_the_other_subscribers_once_encoded() {
    let mut h = Harness::new(config());
    let pusher = h.open("p");
    let subs: Vec<_> = (0..3).map(|i| h.open(&format!("s{i}"))).collect();
    let other = h.open("other");
    h.subscribe(pusher, &["docs"]);
    for s in &subs {
        h.subscribe(*s, &["docs"]);
    }
    h.subscribe(other, &["notes"]);
    h.server.handle_message(
        h.now,
        pusher,
        Bytes::from(push_json("p1", "p", &[record_json("docs", "1", 5, "p")])),
    );
    let ServerEvent::Push {
        request, changes, ..
    } = h.server.poll_event().unwrap()
    else {
        panic!()
    };
    let answer = PushAnswer {
        accepted: vec![(Cursor::new(1, 7), changes[0].clone())],
        latest_hlc: Hlc::new(5, 0, "p"),
        head: Cursor::new(1, 7),
    };
    h.server.answer_push(h.now, request, Ok(answer));
    let mut shared = Vec::new();
    while let Some(t) = h.server.poll_transmit() {
        let ServerTransmit::Frame { session, bytes } = t else {
            panic!()
        };
        if session == pusher {
            let v: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(
                v,
                json!({"type":"push_response","id":"p1","payload":{"merged":1,
                    "latest_hlc":{"ts":5,"c":0,"node":"p"},"cursor":"1.7"}})
            );
        } else {
            assert!(subs.contains(&session), "{session} is not subscribed");
            shared.push(bytes);
        }
    }
    assert_eq!(shared.len(), 3);
    // Encoded once: every recipient holds the same buffer.
    assert!(shared.iter().all(|b| b.as_ptr() == shared[0].as_ptr()));
    let v: Value = serde_json::from_slice(&shared[0]).unwrap();
    assert_eq!(v["type"], "change");
    assert_eq!(v["cursor"], "1.7");
    assert_eq!(v["payload"]["pk"], "1");
}

#[test]
fn a_batch_is_one_changes_frame_and_multi_table_batches_keep_cursor_order() {
    let mut h = Harness::new(config());
    let pusher = h.open("p");
    let both = h.open("both");
    let docs = h.open("docs");
    h.subscribe(both, &["docs", "notes"]);
    h.subscribe(docs, &["docs"]);
    let records = [
        record_json("docs", "d1", 1, "p"),
        record_json("notes", "n1", 2, "p"),
        record_json("docs", "d2", 3, "p"),
    ];
    h.send(pusher, &push_json("p1", "p", &records));
    let mut next = 0;
    h.accept_pushes(&mut next);
    let got = h.take(both);
    assert_eq!(types(&got), ["changes"]);
    assert_eq!(got[0]["cursor"], "1.3");
    assert_eq!(pks(&got), ["d1", "n1", "d2"]);
    let got = h.take(docs);
    assert_eq!(pks(&got), ["d1", "d2"]);
    assert_eq!(cursors(&got), ["1.1", "1.3"]);
}

#[test]
fn only_new_changes_are_routed() {
    let mut h = Harness::new(config());
    let (pusher, sub) = h.pusher_and_subscriber(&["docs"]);
    h.push(pusher, "p1", "p", &[record_json("docs", "1", 1, "p")]);
    let Some(ServerEvent::Push { request, .. }) = h.take_events().pop() else {
        panic!()
    };
    let answer = PushAnswer {
        accepted: vec![],
        latest_hlc: Hlc::new(1, 0, "p"),
        head: Cursor::new(1, 4),
    };
    h.server.answer_push(h.now, request, Ok(answer));
    h.drain();
    assert_eq!(h.take(pusher)[0]["payload"]["merged"], 0);
    assert!(h.take(sub).is_empty());
}

#[test]
fn handler_errors_are_reported_and_nothing_is_routed() {
    let mut h = Harness::new(config());
    let (pusher, sub) = h.pusher_and_subscriber(&["docs"]);
    h.push(pusher, "p1", "p", &[record_json("docs", "1", 1, "p")]);
    h.send(
        pusher,
        r#"{"type":"pull_request","request_id":"q1","payload":{"tables":["docs"]}}"#,
    );
    let events = h.take_events();
    let ServerEvent::Push { request: push, .. } = events[0].clone() else {
        panic!()
    };
    let ServerEvent::Pull { request: pull, .. } = events[1].clone() else {
        panic!()
    };
    h.server
        .answer_pull(h.now, pull, Err(AppError::new("store offline")));
    h.server
        .answer_push(h.now, push, Err(AppError::new("disk full")));
    h.drain();
    let frames = h.take(pusher);
    assert_eq!(
        frames[0],
        json!({"type":"error","request_id":"q1","payload":{"code":"HANDLER_ERROR","message":"store offline"}})
    );
    assert_eq!(error_code(&frames[1]), "HANDLER_ERROR");
    assert_eq!(frames[1]["id"], "p1");
    assert!(h.take(sub).is_empty());
}

#[test]
fn pulls_are_events_answered_out_of_order() {
    let mut h = Harness::new(config());
    let a = h.open("a");
    h.send(
        a,
        r#"{"type":"pull_request","id":"1","payload":{"tables":["docs"],"since":"5:0:x","cursor":"1.3","node_id":"a"}}"#,
    );
    h.send(
        a,
        r#"{"type":"pull_request","request_id":"2","payload":{"tables":["notes"]}}"#,
    );
    let events = h.take_events();
    let ServerEvent::Pull {
        request: first,
        tables,
        since,
        cursor,
        node_id,
        ..
    } = events[0].clone()
    else {
        panic!()
    };
    assert_eq!(tables, ["docs"]);
    assert_eq!(since, Some(Hlc::new(5, 0, "x")));
    assert_eq!(cursor, Some(Cursor::new(1, 3)));
    assert_eq!(node_id, "a");
    let ServerEvent::Pull {
        request: second, ..
    } = events[1].clone()
    else {
        panic!()
    };
    h.server
        .answer_pull(h.now, second, Ok(PullAnswer::default()));
    let answer = PullAnswer {
        changes: vec![(Cursor::new(1, 4), record("docs", "k", 6, "b"))],
        latest_hlc: Hlc::new(6, 0, "b"),
        head: Cursor::new(1, 9),
        complete: true,
    };
    h.server.answer_pull(h.now, first, Ok(answer));
    // Answering twice, or after the fact, does nothing.
    h.server
        .answer_pull(h.now, first, Ok(PullAnswer::default()));
    h.drain();
    let frames = h.take(a);
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0]["request_id"], "2");
    assert_eq!(frames[1]["id"], "1");
    assert_eq!(frames[1]["payload"]["cursor"], "1.9");
    assert_eq!(frames[1]["payload"]["latest_hlc"]["ts"], 6);
    assert_eq!(frames[1]["payload"]["changes"][0]["pk"], "k");
    let parsed: syncmux::payload::PullResponse =
        serde_json::from_value(frames[1]["payload"].clone()).unwrap();
    assert_eq!(parsed.changes.len(), 1);
}

/// A cursor is opaque to clients (docs/protocol.md section 5): any string the store cannot serve
/// (another store's format, garbage) is a fallback with `recovered: false`, never an error.
#[test]
fn a_cursor_that_is_not_ours_falls_back_and_says_so() {
    let mut h = Harness::new(config());
    let a = h.open("a");
    for garbage in ["x", "no-such-epoch.3", "1.2.3", ""] {
        let pull = json!({"type":"pull_request","id":"1",
            "payload":{"tables":["docs"],"cursor":garbage,"since":"4:0:n"}});
        h.send(a, &pull.to_string());
        let Some(ServerEvent::Pull {
            request,
            cursor,
            since,
            ..
        }) = h.take_events().pop()
        else {
            panic!("{garbage:?}: no pull event")
        };
        // The application sees a pull by `since` alone ...
        assert_eq!((cursor, since), (None, Some(Hlc::new(4, 0, "n"))));
        let answer = PullAnswer {
            head: Cursor::new(1, 9),
            complete: true,
            ..PullAnswer::default()
        };
        h.server.answer_pull(h.now, request, Ok(answer));
        h.drain();
        // ... and the client learns that its cursor was not served.
        let f = &h.take(a)[0];
        assert_eq!(f["type"], "pull_response", "{garbage:?}");
        assert_eq!(f["payload"]["recovered"], false, "{garbage:?}");
        assert_eq!(f["payload"]["cursor"], "1.9");

        let sub =
            json!({"type":"subscribe","id":"s","payload":{"tables":["docs"],"cursor":garbage}});
        h.send(a, &sub.to_string());
        let Some(ServerEvent::Replay {
            request,
            cursor,
            head_only,
            ..
        }) = h.take_events().pop()
        else {
            panic!("{garbage:?}: no replay event")
        };
        assert_eq!((cursor, head_only), (None, false));
        let answer = PullAnswer {
            head: Cursor::new(1, 9),
            complete: true,
            ..PullAnswer::default()
        };
        h.server.answer_replay(h.now, request, Ok(answer));
        h.drain();
        assert_eq!(
            h.take(a),
            [json!({"type":"ack","id":"s","payload":{"recovered":false,"cursor":"1.9"}})],
            "{garbage:?}"
        );
    }
}

/// Only a cursor that is not a string is refused, naming the field.
#[test]
fn a_cursor_that_is_not_a_string_is_an_invalid_payload() {
    let mut h = Harness::new(config());
    let a = h.open("a");
    for msg in [
        r#"{"type":"pull_request","id":"1","payload":{"tables":["docs"],"cursor":7}}"#,
        r#"{"type":"subscribe","id":"2","payload":{"tables":["docs"],"cursor":{"seq":1}}}"#,
    ] {
        h.send(a, msg);
        let f = &h.take(a)[0];
        assert_eq!(error_code(f), "INVALID_PAYLOAD", "{msg}");
        assert!(f["payload"]["message"].as_str().unwrap().contains("cursor"));
    }
    assert_eq!(h.server.subscriptions(a), Vec::<String>::new());
}

/// A pull that named a cursor the store served says `recovered: true`; one without a cursor
/// carries no `recovered` at all (the seed's clients know nothing of it).
#[test]
fn only_a_pull_that_named_a_cursor_says_whether_it_recovered() {
    let mut h = Harness::new(config());
    let a = h.open("a");
    let cases = [
        (r#"{"tables":["docs"],"cursor":"1.2"}"#, true, Some(true)),
        (r#"{"tables":["docs"],"cursor":"1.2"}"#, false, Some(false)),
        (r#"{"tables":["docs"],"since":"1:0:x"}"#, true, None),
        (r#"{"tables":["docs"]}"#, true, None),
    ];
    for (payload, complete, recovered) in cases {
        h.send(
            a,
            &format!(r#"{{"type":"pull_request","id":"p","payload":{payload}}}"#),
        );
        let Some(ServerEvent::Pull { request, .. }) = h.take_events().pop() else {
            panic!()
        };
        let answer = PullAnswer {
            head: Cursor::new(1, 2),
            complete,
            ..PullAnswer::default()
        };
        h.server.answer_pull(h.now, request, Ok(answer));
        h.drain();
        let f = &h.take(a)[0];
        assert_eq!(
            f["payload"].get("recovered").and_then(Value::as_bool),
            recovered,
            "{payload}"
        );
    }
}

/// A replay that answers `since` alone goes out in the store's HLC order with no per-frame
/// cursor (its frames are not resume points), a frame never ends inside a run of equal HLCs,
/// and the ack carries the head the replay was cut at (docs/protocol.md section 7.4, "Replay
/// order").
#[test]
fn a_replay_by_since_is_in_hlc_order_without_frame_cursors() {
    let mut c = config();
    c.max_changes_per_frame = 2;
    let mut h = Harness::new(c);
    let a = h.open("a");
    h.send(
        a,
        r#"{"type":"subscribe","id":"r","payload":{"tables":["docs"],"since":"1:0:x"}}"#,
    );
    let Some(ServerEvent::Replay {
        request, head_only, ..
    }) = h.take_events().pop()
    else {
        panic!()
    };
    assert!(!head_only);
    // Positions out of HLC order (late pushes with old HLCs), and three changes at HLC 5.
    let at = |seq, pk: &str, ts| (Cursor::new(1, seq), record("docs", pk, ts, "p"));
    let answer = PullAnswer {
        changes: vec![
            at(7, "r3", 3),
            at(2, "r4", 4),
            at(5, "e1", 5),
            at(3, "e2", 5),
            at(9, "e3", 5),
            at(1, "r6", 6),
        ],
        latest_hlc: Hlc::new(6, 0, "p"),
        head: Cursor::new(1, 9),
        complete: true,
    };
    h.server.answer_replay(h.now, request, Ok(answer));
    h.drain();
    let frames = h.take(a);
    assert_eq!(types(&frames), ["changes", "changes", "change", "ack"]);
    assert_eq!(pks(&frames), ["r3", "r4", "e1", "e2", "e3", "r6"]);
    assert!(
        frames.iter().all(|f| f.get("cursor").is_none()),
        "{frames:?}"
    );
    assert_eq!(
        frames[3],
        json!({"type":"ack","id":"r","payload":{"recovered":true,"cursor":"1.9"}})
    );
}

/// A replay after a cursor the store served stays in cursor order, each frame with the
/// cursor of its last change.
#[test]
fn a_replay_after_a_served_cursor_is_in_cursor_order_with_frame_cursors() {
    let mut c = config();
    c.max_changes_per_frame = 2;
    let mut h = Harness::new(c);
    let a = h.open("a");
    h.send(
        a,
        r#"{"type":"subscribe","id":"r","payload":{"tables":["docs"],"cursor":"1.1"}}"#,
    );
    let Some(ServerEvent::Replay { request, .. }) = h.take_events().pop() else {
        panic!()
    };
    let at = |seq, pk: &str, ts| (Cursor::new(1, seq), record("docs", pk, ts, "p"));
    let answer = PullAnswer {
        changes: vec![at(2, "b", 9), at(3, "c", 1), at(4, "d", 5)],
        latest_hlc: Hlc::new(9, 0, "p"),
        head: Cursor::new(1, 4),
        complete: true,
    };
    h.server.answer_replay(h.now, request, Ok(answer));
    h.drain();
    let frames = h.take(a);
    assert_eq!(pks(&frames), ["b", "c", "d"]);
    assert_eq!(cursors(&frames), ["1.3", "1.4"]);
}

/// The interleaving that matters: a push accepted between a subscribe-with-since and its
/// replay answer is delivered once, after the replay, whether or not the replay holds it.
#[test]
fn live_changes_wait_behind_a_replay_with_no_gap_and_no_duplicate() {
    let mut h = Harness::new(config());
    let pusher = h.open("p");
    let late = h.open("late");
    h.send(
        late,
        r#"{"type":"subscribe","id":"r","payload":{"tables":["docs"],"cursor":"1.2"}}"#,
    );
    let Some(ServerEvent::Replay {
        request,
        tables,
        cursor,
        ..
    }) = h.take_events().pop()
    else {
        panic!()
    };
    assert_eq!(tables, ["docs"]);
    assert_eq!(cursor, Some(Cursor::new(1, 2)));
    // Two pushes accepted before the replay is answered: cursors 3 and 4.
    let mut next = 2;
    h.push(pusher, "a", "p", &[record_json("docs", "c3", 3, "p")]);
    h.accept_pushes(&mut next);
    h.push(pusher, "b", "p", &[record_json("docs", "c4", 4, "p")]);
    h.accept_pushes(&mut next);
    assert!(h.take(late).is_empty(), "held until the replay");
    // The store read happened between them: the replay holds 3 (head 3), not 4.
    let answer = PullAnswer {
        changes: vec![(Cursor::new(1, 3), record("docs", "c3", 3, "p"))],
        latest_hlc: Hlc::new(3, 0, "p"),
        head: Cursor::new(1, 3),
        complete: true,
    };
    h.server.answer_replay(h.now, request, Ok(answer));
    h.drain();
    let frames = h.take(late);
    assert_eq!(types(&frames), ["change", "ack", "change"]);
    assert_eq!(pks(&frames), ["c3", "c4"]);
    assert_eq!(
        frames[1],
        json!({"type":"ack","id":"r","payload":{"recovered":true,"cursor":"1.3"}})
    );
    // And live from now on.
    h.push(pusher, "c", "p", &[record_json("docs", "c5", 5, "p")]);
    h.accept_pushes(&mut next);
    assert_eq!(pks(&h.take(late)), ["c5"]);
}

/// A session subscribes with a cursor, unsubscribes before the replay is answered, and
/// subscribes again with the same cursor: the first replay's answer brings nothing of the
/// table it left (only its ack), the second brings each change once. Before, both replays
/// delivered the same changes (found by `server_prop`).
#[test]
fn a_replay_for_a_table_left_before_its_answer_sends_none_of_it() {
    let mut h = Harness::new(config());
    let a = h.open("a");
    let subscribe = |id: &str| {
        format!(
            r#"{{"type":"subscribe","id":"{id}","payload":{{"tables":["docs"],"cursor":"1.0"}}}}"#
        )
    };
    h.send(a, &subscribe("first"));
    let Some(ServerEvent::Replay { request: first, .. }) = h.take_events().pop() else {
        panic!()
    };
    h.send(a, r#"{"type":"unsubscribe","payload":{"tables":["docs"]}}"#);
    h.send(a, &subscribe("again"));
    let Some(ServerEvent::Replay { request: again, .. }) = h.take_events().pop() else {
        panic!()
    };
    h.take(a);
    let answer = || PullAnswer {
        changes: vec![(Cursor::new(1, 1), record("docs", "d1", 1, "p"))],
        latest_hlc: Hlc::new(1, 0, "p"),
        head: Cursor::new(1, 1),
        complete: true,
    };
    h.server.answer_replay(h.now, first, Ok(answer()));
    h.drain();
    let frames = h.take(a);
    assert_eq!(
        types(&frames),
        ["ack"],
        "the first subscribe's ack, no change"
    );
    h.server.answer_replay(h.now, again, Ok(answer()));
    h.drain();
    let frames = h.take(a);
    assert_eq!(pks(&frames), ["d1"]);
    assert_eq!(types(&frames), ["change", "ack"]);
}

#[test]
fn held_batches_straddling_the_replay_head_are_trimmed() {
    let mut h = Harness::new(config());
    let pusher = h.open("p");
    let late = h.open("late");
    h.send(
        late,
        r#"{"type":"subscribe","payload":{"tables":["docs"],"since":"0:0:x"}}"#,
    );
    let Some(ServerEvent::Replay { request, .. }) = h.take_events().pop() else {
        panic!()
    };
    let mut next = 0;
    let records = [
        record_json("docs", "a", 1, "p"),
        record_json("docs", "b", 2, "p"),
    ];
    h.send(pusher, &push_json("x", "p", &records));
    h.accept_pushes(&mut next);
    let answer = PullAnswer {
        changes: vec![(Cursor::new(1, 1), record("docs", "a", 1, "p"))],
        latest_hlc: Hlc::new(1, 0, "p"),
        head: Cursor::new(1, 1),
        complete: false,
    };
    h.server.answer_replay(h.now, request, Ok(answer));
    h.drain();
    let frames = h.take(late);
    // No id on the subscribe: no ack. The replay by `since` has no frame cursor; the live
    // change after its head has its own.
    assert_eq!(types(&frames), ["change", "change"]);
    assert_eq!(pks(&frames), ["a", "b"]);
    assert_eq!(cursors(&frames), ["1.2"]);
}

#[test]
fn a_resume_the_store_cannot_serve_is_acked_unrecovered() {
    let mut h = Harness::new(config());
    let a = h.open("a");
    h.send(
        a,
        r#"{"type":"subscribe","id":"r","payload":{"tables":["docs"],"cursor":"0.5"}}"#,
    );
    let Some(ServerEvent::Replay { request, .. }) = h.take_events().pop() else {
        panic!()
    };
    let answer = PullAnswer {
        head: Cursor::new(2, 10),
        complete: false,
        ..PullAnswer::default()
    };
    h.server.answer_replay(h.now, request, Ok(answer));
    h.drain();
    assert_eq!(
        h.take(a),
        vec![json!({"type":"ack","id":"r","payload":{"recovered":false,"cursor":"2.10"}})]
    );
}

#[test]
fn a_failed_replay_undoes_the_subscribe() {
    let mut h = Harness::new(config());
    let a = h.open("a");
    h.subscribe(a, &["notes"]);
    h.send(
        a,
        r#"{"type":"subscribe","id":"r","payload":{"tables":["docs","notes"],"since":"1:0:x"}}"#,
    );
    assert_eq!(h.server.subscriptions(a), ["docs", "notes"]);
    let Some(ServerEvent::Replay { request, .. }) = h.take_events().pop() else {
        panic!()
    };
    h.server
        .answer_replay(h.now, request, Err(AppError::new("nope")));
    h.drain();
    assert_eq!(error_code(&h.take(a)[0]), "HANDLER_ERROR");
    assert_eq!(h.server.subscriptions(a), ["notes"]);
}

#[test]
fn answers_for_closed_sessions_are_dropped_but_accepted_changes_still_route() {
    let mut h = Harness::new(config());
    let (pusher, sub) = h.pusher_and_subscriber(&["docs"]);
    h.push(pusher, "p1", "p", &[record_json("docs", "1", 1, "p")]);
    h.send(
        pusher,
        r#"{"type":"pull_request","id":"q","payload":{"tables":["docs"]}}"#,
    );
    h.server.handle_disconnected(h.now, pusher);
    h.drain();
    assert_eq!(h.server.pending_requests(), 0);
    let mut next = 0;
    let events = h.take_events();
    let pull = events.iter().find_map(|e| match e {
        ServerEvent::Pull { request, .. } => Some(*request),
        _ => None,
    });
    h.events = events;
    h.accept_pushes(&mut next);
    h.server
        .answer_pull(h.now, pull.unwrap(), Ok(PullAnswer::default()));
    h.drain();
    assert!(h.take(pusher).is_empty());
    assert_eq!(pks(&h.take(sub)), ["1"]);
}

#[test]
fn unsubscribe_stops_delivery_and_acks() {
    let mut h = Harness::new(config());
    let (pusher, sub) = h.pusher_and_subscriber(&["docs"]);
    h.send(
        sub,
        r#"{"type":"unsubscribe","id":"u","payload":{"tables":["docs"]}}"#,
    );
    assert_eq!(h.take(sub), vec![json!({"type":"ack","id":"u"})]);
    h.push(pusher, "p1", "p", &[record_json("docs", "1", 1, "p")]);
    let mut next = 0;
    h.accept_pushes(&mut next);
    assert!(h.take(sub).is_empty());
    // A subscribe without an id takes effect silently.
    h.send(sub, r#"{"type":"subscribe","payload":{"tables":["docs"]}}"#);
    assert!(h.take(sub).is_empty());
    assert_eq!(h.server.subscriptions(sub), ["docs"]);
}

#[test]
fn sessions_receive_changes_in_cursor_order() {
    let mut h = Harness::new(config());
    let pushers: Vec<_> = (0..3).map(|i| h.open(&format!("p{i}"))).collect();
    let sub = h.open("s");
    h.subscribe(sub, &["a", "b"]);
    let mut next = 0;
    for round in 0..5 {
        for (i, p) in pushers.iter().enumerate() {
            let table = if (round + i) % 2 == 0 { "a" } else { "b" };
            let recs = [
                record_json(table, "x", round as i64, "p"),
                record_json("a", "y", round as i64, "p"),
            ];
            h.send(*p, &push_json(&format!("{round}"), &format!("p{i}"), &recs));
        }
        h.accept_pushes(&mut next);
    }
    let seen: Vec<u64> = cursors(&h.take(sub))
        .iter()
        .map(|c| c.parse::<Cursor>().unwrap().seq)
        .collect();
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    assert_eq!(*seen.last().unwrap(), next);
}

/// Takes the next push event (the harness collects events as it drains).
fn next_push(h: &mut Harness) -> (syncmux::PushId, Vec<syncmux::payload::ChangeRecord>) {
    let mut events = h.take_events();
    let at = events
        .iter()
        .position(|e| matches!(e, ServerEvent::Push { .. }))
        .expect("a push event");
    let ServerEvent::Push {
        request, changes, ..
    } = events.remove(at)
    else {
        unreachable!()
    };
    for e in events {
        h.events.push(e);
    }
    (request, changes)
}

fn accept(
    changes: Vec<syncmux::payload::ChangeRecord>,
    first_seq: u64,
) -> Result<PushAnswer, AppError> {
    let accepted: Vec<(Cursor, _)> = changes
        .into_iter()
        .enumerate()
        .map(|(i, c)| (Cursor::new(1, first_seq + i as u64), c))
        .collect();
    let head = accepted.last().map(|(c, _)| *c).unwrap_or_default();
    Ok(PushAnswer {
        accepted,
        latest_hlc: Hlc::default(),
        head,
    })
}

#[test]
fn pushes_answered_out_of_order_still_reach_subscribers_in_cursor_order() {
    let mut h = Harness::new(config());
    let (pusher, sub) = h.pusher_and_subscriber(&["docs"]);
    let push = |h: &mut Harness, id: &str, pk: &str| {
        h.push(pusher, id, "p", &[record_json("docs", pk, 5, "p")]);
        next_push(h)
    };
    let (zeroth, z) = push(&mut h, "0", "z");
    h.server.answer_push(h.now, zeroth, accept(z, 1));
    h.drain();
    assert_eq!(cursors(&h.take(sub)), ["1.1"]);
    let (first, a) = push(&mut h, "1", "a");
    let (second, b) = push(&mut h, "2", "b");

    // The store took `a` at 2 and `b` at 3, but the application answers `b` first: it waits.
    h.server.answer_push(h.now, second, accept(b, 3));
    h.drain();
    assert!(
        cursors(&h.take(sub)).is_empty(),
        "position 3 must wait for 2"
    );
    h.server.answer_push(h.now, first, accept(a, 2));
    h.drain();
    assert_eq!(cursors(&h.take(sub)), ["1.2", "1.3"]);
}

#[test]
fn a_gap_no_answer_can_fill_is_not_waited_for() {
    let mut h = Harness::new(config());
    let (pusher, sub) = h.pusher_and_subscriber(&["docs"]);
    h.push(pusher, "1", "p", &[record_json("docs", "a", 5, "p")]);
    let (first, a) = next_push(&mut h);
    h.server.answer_push(h.now, first, accept(a, 1));
    h.drain();
    assert_eq!(cursors(&h.take(sub)), ["1.1"]);
    // Positions 2..=9 went to another writer of the store; with no push left unanswered,
    // position 10 goes out at once.
    h.push(pusher, "2", "p", &[record_json("docs", "b", 6, "p")]);
    let (second, b) = next_push(&mut h);
    h.server.answer_push(h.now, second, accept(b, 10));
    h.drain();
    assert_eq!(cursors(&h.take(sub)), ["1.10"]);
}

#[test]
fn a_change_routed_after_a_replay_that_held_it_is_not_sent_twice() {
    let mut h = Harness::new(config());
    let pusher = h.open("p");
    let sub = h.open("s");
    h.push(pusher, "1", "p", &[record_json("docs", "a", 5, "p")]);
    let (late, a) = next_push(&mut h);
    // The store has taken `a` at 1, but its answer is slow. Meanwhile the subscriber resumes
    // and its replay (read from the store) already holds `a`.
    let msg = json!({"type":"subscribe","id":"r","payload":{"tables":["docs"],"cursor":"1.0"}});
    h.send(sub, &msg.to_string());
    let replay = h
        .take_events()
        .into_iter()
        .find_map(|e| match e {
            ServerEvent::Replay { request, .. } => Some(request),
            _ => None,
        })
        .expect("a replay event");
    let answer = PullAnswer {
        changes: vec![(Cursor::new(1, 1), a.clone()[0].clone())],
        latest_hlc: Hlc::default(),
        head: Cursor::new(1, 1),
        complete: true,
    };
    h.server.answer_replay(h.now, replay, Ok(answer));
    h.drain();
    assert_eq!(pks(&h.take(sub)), ["a"]);
    h.server.answer_push(h.now, late, accept(a, 1));
    h.drain();
    assert!(
        pks(&h.take(sub)).is_empty(),
        "`a` came with the replay already"
    );
}

#[test]
fn the_very_first_pushes_answered_out_of_order_still_go_out_in_cursor_order() {
    let mut h = Harness::new(config());
    let (pusher, sub) = h.pusher_and_subscriber(&["docs"]);
    let push = |h: &mut Harness, id: &str, pk: &str| {
        h.push(pusher, id, "p", &[record_json("docs", pk, 5, "p")]);
        next_push(h)
    };
    let (first, a) = push(&mut h, "1", "a");
    let (second, b) = push(&mut h, "2", "b");
    // Nothing was routed yet, and position 2 is answered first: it waits for position 1.
    h.server.answer_push(h.now, second, accept(b, 2));
    h.drain();
    assert!(cursors(&h.take(sub)).is_empty(), "position 2 before 1");
    h.server.answer_push(h.now, first, accept(a, 1));
    h.drain();
    assert_eq!(cursors(&h.take(sub)), ["1.1", "1.2"]);
}
