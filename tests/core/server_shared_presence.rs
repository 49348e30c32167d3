//! Presence and rooms shared by servers (README, "Scaling out over Redis"), sans-IO: each server
//! reports its sessions' changes as events, the test relays them to the other server
//! (`handle_remote_*`), and snapshots, member lists and room sizes become the union.
#![allow(clippy::unwrap_used)]

use crate::server_util;

use serde_json::{json, Value};
use server_util::*;
use syncmux::{RemoteSession, ServerConfig, ServerEvent};

fn shared() -> ServerConfig {
    let mut config = config();
    config.shared_presence = true;
    config.max_room_size = 2;
    config
}

/// Relays every presence and room change `from` reported to `to`, as a backend would.
fn relay(from: &mut Harness, name: &str, to: &mut Harness) {
    let remote_of = |session: syncmux::SessionId| RemoteSession {
        server: name.to_owned(),
        session: session.as_u64(),
    };
    for e in from.take_events() {
        let now = to.now;
        match e {
            ServerEvent::PresenceChanged {
                session,
                node_id,
                topic,
                data,
                updated_at,
            } => {
                let remote = remote_of(session);
                to.server
                    .handle_remote_presence(now, remote, &node_id, &topic, data, updated_at);
            }
            ServerEvent::RoomChanged {
                session,
                node_id,
                room,
                change,
            } => {
                let remote = remote_of(session);
                to.server
                    .handle_remote_room(now, remote, &node_id, &room, change);
            }
            other => from.events.push(other),
        }
    }
    to.drain();
}

/// Sends a join and answers the place it asks for (`ServerEvent::RoomJoin`) as a backend
/// with room would: admitted.
fn join(h: &mut Harness, session: syncmux::SessionId, name: &str) {
    h.send(session, &room("join", name));
    admit(h, true);
}

/// Answers every room join `h` asks the backend for with `admitted`; other events stay.
fn admit(h: &mut Harness, admitted: bool) {
    for e in h.take_events() {
        match e {
            ServerEvent::RoomJoin { request, .. } => {
                let now = h.now;
                h.server.answer_room_join(now, request, Ok(admitted));
            }
            other => h.events.push(other),
        }
    }
    h.drain();
}

fn presence(topic: &str, data: &str) -> String {
    format!(r#"{{"type":"presence_update","payload":{{"topic":"{topic}","data":{data}}}}}"#)
}

fn room(action: &str, name: &str) -> String {
    format!(
        r#"{{"type":"room","id":"r","payload":{{"action":"{action}","room":"{name}","data":1}}}}"#
    )
}

fn snapshot(h: &mut Harness, session: syncmux::SessionId, topic: &str) -> Vec<String> {
    h.send(
        session,
        &format!(r#"{{"type":"presence_get","id":"g","payload":{{"topic":"{topic}"}}}}"#),
    );
    let frames = h.take(session);
    let snap = frames
        .iter()
        .find(|f| f["type"] == "presence_snapshot")
        .unwrap();
    snap["payload"]["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["node_id"].as_str().unwrap().to_owned())
        .collect()
}

fn events_of<'a>(frames: &'a [Value], kind: &str) -> Vec<&'a Value> {
    frames.iter().filter(|f| f["type"] == kind).collect()
}

#[test]
fn presence_on_one_server_is_seen_on_the_other_and_snapshots_are_the_union() {
    let (mut a, mut b) = (Harness::new(shared()), Harness::new(shared()));
    let alice = a.open("alice");
    let bob = b.open("bob");
    b.send(bob, &presence("doc", "1"));
    relay(&mut b, "B", &mut a);
    let _ = b.take(bob);
    a.send(alice, &presence("doc", r#"{"x":2}"#));
    relay(&mut a, "A", &mut b);
    let to_bob = events_of(&b.take(bob), "presence_event")
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(
        to_bob,
        [
            json!({"type":"presence_event","payload":{"type":"join","node_id":"alice","topic":"doc","data":{"x":2}}})
        ]
    );
    assert_eq!(snapshot(&mut a, alice, "doc"), ["alice", "bob"]);
    assert_eq!(snapshot(&mut b, bob, "doc"), ["bob", "alice"]);
    // Members are this server's sessions only.
    assert_eq!(a.server.presence_members("doc"), [alice]);

    a.send(alice, &presence("doc", r#"{"x":3}"#));
    relay(&mut a, "A", &mut b);
    assert_eq!(
        events_of(&b.take(bob), "presence_event")[0]["payload"]["type"],
        "update"
    );
    // Alice's session ends: her leave is reported and bob hears it.
    a.server.handle_disconnected(a.now, alice);
    a.drain();
    relay(&mut a, "A", &mut b);
    let to_bob = b.take(bob);
    assert_eq!(
        events_of(&to_bob, "presence_event")[0]["payload"]["type"],
        "leave"
    );
    assert_eq!(snapshot(&mut b, bob, "doc"), ["bob"]);
}

#[test]
fn rooms_are_the_union_and_full_across_servers() {
    let (mut a, mut b) = (Harness::new(shared()), Harness::new(shared()));
    let alice = a.open("alice");
    let bob = b.open("bob");
    let carol = b.open("carol");
    join(&mut a, alice, "lobby");
    relay(&mut a, "A", &mut b);
    join(&mut b, bob, "lobby");
    let members = events_of(&b.take(bob), "room")[0]["payload"]["members"].clone();
    assert_eq!(
        members,
        json!([{"node_id":"bob","data":1},{"node_id":"alice","data":1}])
    );
    relay(&mut b, "B", &mut a);
    assert_eq!(
        events_of(&a.take(alice), "room").last().unwrap()["payload"]["event"],
        "join"
    );
    // Two members, one per server: the room is full for a third on either.
    join(&mut b, carol, "lobby");
    assert_eq!(error_code(&b.take(carol)[0]), "ROOM_FULL");
    // A broadcast crosses; the sender does not get it back.
    a.send(alice, &room("broadcast", "lobby"));
    relay(&mut a, "A", &mut b);
    let to_bob = b.take(bob);
    assert_eq!(events_of(&to_bob, "room")[0]["payload"]["event"], "message");
    assert!(events_of(&a.take(alice), "room").is_empty());
    // Alice leaves: there is room again.
    a.send(alice, &room("leave", "lobby"));
    relay(&mut a, "A", &mut b);
    assert_eq!(
        events_of(&b.take(bob), "room")[0]["payload"]["event"],
        "leave"
    );
    join(&mut b, carol, "lobby");
    assert_eq!(types(&b.take(carol)), ["room", "ack"]);
}

#[test]
fn a_server_gone_leaves_everything_its_sessions_were_in() {
    let (mut a, mut b) = (Harness::new(shared()), Harness::new(shared()));
    let alice = a.open("alice");
    let bob = b.open("bob");
    a.send(alice, &presence("doc", "1"));
    join(&mut a, alice, "lobby");
    relay(&mut a, "A", &mut b);
    b.send(bob, &presence("doc", "2"));
    join(&mut b, bob, "lobby");
    let _ = b.take(bob);
    b.server.handle_remote_gone(b.now, "A");
    b.drain();
    let to_bob = b.take(bob);
    assert_eq!(
        events_of(&to_bob, "presence_event")[0]["payload"]["type"],
        "leave"
    );
    assert_eq!(
        events_of(&to_bob, "presence_event")[0]["payload"]["node_id"],
        "alice"
    );
    assert_eq!(events_of(&to_bob, "room")[0]["payload"]["event"], "leave");
    assert_eq!(snapshot(&mut b, bob, "doc"), ["bob"]);
    // Gone twice, or a server never heard of: nothing.
    b.server.handle_remote_gone(b.now, "A");
    b.server.handle_remote_gone(b.now, "nobody");
    b.drain();
    assert!(b.take(bob).is_empty());
}

#[test]
fn without_sharing_nothing_is_reported() {
    let mut h = Harness::new(config());
    let a = h.open("a");
    h.send(a, &presence("doc", "1"));
    join(&mut h, a, "lobby");
    assert!(h.take_events().is_empty());
}

#[test]
fn remote_input_never_panics_on_odd_values() {
    let mut h = Harness::new(shared());
    let a = h.open("a");
    h.send(a, &presence("", "1"));
    let remote = |s| RemoteSession {
        server: String::new(),
        session: s,
    };
    let now = h.now;
    h.server
        .handle_remote_presence(now, remote(u64::MAX), "", "", None, 0);
    h.server.handle_remote_presence(
        now,
        remote(0),
        "\u{0}",
        "",
        Some(syncmux::payload::RawJson::from_serialize(&()).unwrap()),
        u64::MAX,
    );
    h.server
        .handle_remote_room(now, remote(1), "x", "", syncmux::RoomChange::Left);
    h.server.handle_remote_gone(now, "");
    h.drain();
}

#[test]
fn shared_state_lists_this_servers_members_only_in_name_order() {
    let (mut a, mut b) = (Harness::new(shared()), Harness::new(shared()));
    let alice = a.open("alice");
    let zed = a.open("zed");
    let bob = b.open("bob");
    a.send(zed, &presence("t2", "1"));
    a.send(alice, &presence("t2", "2"));
    a.send(alice, &presence("t1", "3"));
    join(&mut a, zed, "lobby");
    b.send(bob, &presence("t1", "4"));
    relay(&mut b, "B", &mut a);
    let _ = a.take_events();
    let listed: Vec<String> = a
        .server
        .shared_state()
        .into_iter()
        .map(|e| match e {
            ServerEvent::PresenceChanged { node_id, topic, .. } => format!("p {topic} {node_id}"),
            ServerEvent::RoomChanged { node_id, room, .. } => format!("r {room} {node_id}"),
            other => panic!("{other:?}"),
        })
        .collect();
    // By topic, then session (alice opened first).
    assert_eq!(
        listed,
        ["p t1 alice", "p t2 alice", "p t2 zed", "r lobby zed"]
    );
}

/// The room joins `h` asks the backend to admit, by room; other events stay.
fn asked(h: &mut Harness) -> Vec<(syncmux::RoomJoinId, String, usize)> {
    let mut out = Vec::new();
    for e in h.take_events() {
        match e {
            ServerEvent::RoomJoin {
                request,
                room,
                max_size,
                ..
            } => out.push((request, room, max_size)),
            other => h.events.push(other),
        }
    }
    out
}

#[test]
fn a_join_that_may_take_a_place_waits_for_the_shared_place_to_admit_it() {
    let mut h = Harness::new(shared());
    let (alice, bob, carol) = (h.open("alice"), h.open("bob"), h.open("carol"));
    h.send(alice, &room("join", "lobby"));
    h.send(bob, &room("join", "lobby"));
    // Nothing is decided before the backend answers; both places may be taken.
    assert!(h.take(alice).is_empty() && h.take(bob).is_empty());
    let joins = asked(&mut h);
    assert_eq!(joins.len(), 2);
    assert!(joins.iter().all(|(_, r, max)| r == "lobby" && *max == 2));
    // Joins in flight count against the room here: a third is refused at once.
    h.send(carol, &room("join", "lobby"));
    assert_eq!(error_code(&h.take(carol)[0]), "ROOM_FULL");
    assert!(asked(&mut h).is_empty());
    // Admitted: the member list and the ack. Refused there: ROOM_FULL.
    let now = h.now;
    h.server.answer_room_join(now, joins[0].0, Ok(true));
    h.server.answer_room_join(now, joins[1].0, Ok(false));
    h.drain();
    assert_eq!(types(&h.take(alice)), ["room", "ack"]);
    assert_eq!(error_code(&h.take(bob)[0]), "ROOM_FULL");
    // The admitted join is shared as any other; an answer given twice is a no-op.
    let changed: Vec<_> = h.take_events();
    assert!(changed
        .iter()
        .any(|e| matches!(e, ServerEvent::RoomChanged { room, .. } if room == "lobby")));
    h.server.answer_room_join(now, joins[0].0, Ok(true));
    h.drain();
    assert!(h.take(alice).is_empty());
    // A member joining again (new data) asks nothing.
    h.send(alice, &room("join", "lobby"));
    assert!(asked(&mut h).is_empty());
    assert_eq!(types(&h.take(alice)), ["room", "ack"]);
}

#[test]
fn an_admitted_join_of_a_session_gone_meanwhile_is_given_back() {
    let mut h = Harness::new(shared());
    let alice = h.open("alice");
    h.send(alice, &room("join", "lobby"));
    let joins = asked(&mut h);
    h.server.handle_disconnected(h.now, alice);
    h.drain();
    let _ = h.take_events();
    let now = h.now;
    h.server.answer_room_join(now, joins[0].0, Ok(true));
    h.drain();
    let events = h.take_events();
    assert!(
        events.iter().any(|e| matches!(
            e,
            ServerEvent::RoomChanged { room, change: syncmux::RoomChange::Left, .. } if room == "lobby"
        )),
        "{events:?}"
    );
    // A refused or failed one has nothing to give back.
    let bob = h.open("bob");
    h.send(bob, &room("join", "side"));
    let joins = asked(&mut h);
    h.server.handle_disconnected(h.now, bob);
    h.drain();
    let _ = h.take_events();
    h.server.answer_room_join(now, joins[0].0, Ok(false));
    h.drain();
    assert!(h
        .take_events()
        .iter()
        .all(|e| !matches!(e, ServerEvent::RoomChanged { .. })));
}

#[test]
fn a_backend_that_cannot_admit_answers_with_an_error_frame() {
    let mut h = Harness::new(shared());
    let alice = h.open("alice");
    h.send(alice, &room("join", "lobby"));
    let joins = asked(&mut h);
    let now = h.now;
    h.server
        .answer_room_join(now, joins[0].0, Err(syncmux::AppError::unavailable("down")));
    h.drain();
    assert_eq!(error_code(&h.take(alice)[0]), "UNAVAILABLE");
    // Not a member: a broadcast is refused.
    h.send(alice, &room("broadcast", "lobby"));
    assert_eq!(error_code(&h.take(alice)[0]), "NOT_A_MEMBER");
}
