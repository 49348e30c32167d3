//! Presence and rooms shared by servers (README, "Scaling out over Redis"), sans-IO: each server
//! reports its sessions' changes as events, the test relays them to the other server
//! (`handle_remote_*`), and snapshots, member lists and room sizes become the union.
#![allow(clippy::unwrap_used)]

mod server_util;

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
    for e in from.take_events() {
        match e {
            ServerEvent::PresenceChanged {
                session,
                node_id,
                topic,
                data,
                updated_at,
            } => {
                let remote = RemoteSession {
                    server: name.to_owned(),
                    session: session.as_u64(),
                };
                let now = to.now;
                to.server
                    .handle_remote_presence(now, remote, &node_id, &topic, data, updated_at);
            }
            ServerEvent::RoomChanged {
                session,
                node_id,
                room,
                change,
            } => {
                let remote = RemoteSession {
                    server: name.to_owned(),
                    session: session.as_u64(),
                };
                let now = to.now;
                to.server
                    .handle_remote_room(now, remote, &node_id, &room, change);
            }
            other => from.events.push(other),
        }
    }
    to.drain();
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
    a.send(alice, &room("join", "lobby"));
    relay(&mut a, "A", &mut b);
    b.send(bob, &room("join", "lobby"));
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
    b.send(carol, &room("join", "lobby"));
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
    b.send(carol, &room("join", "lobby"));
    assert_eq!(types(&b.take(carol)), ["room", "ack"]);
}

#[test]
fn a_server_gone_leaves_everything_its_sessions_were_in() {
    let (mut a, mut b) = (Harness::new(shared()), Harness::new(shared()));
    let alice = a.open("alice");
    let bob = b.open("bob");
    a.send(alice, &presence("doc", "1"));
    a.send(alice, &room("join", "lobby"));
    relay(&mut a, "A", &mut b);
    b.send(bob, &presence("doc", "2"));
    b.send(bob, &room("join", "lobby"));
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
    h.send(a, &room("join", "lobby"));
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
    a.send(zed, &room("join", "lobby"));
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
