//! Handshake: version, auth, origin, identity, path, capacity, shutdown, authorization hook.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use crate::server_util;

use server_util::*;
use syncmux::ServerEvent;
use syncmux::{AuthDecision, Handshake, HandshakeOutcome, Resource};

fn accept(outcome: HandshakeOutcome) -> (syncmux::SessionId, String, Option<String>) {
    match outcome {
        HandshakeOutcome::Accept {
            session,
            node_id,
            protocol,
        } => (session, node_id, protocol),
        other => panic!("refused: {other:?}"),
    }
}

fn status(outcome: HandshakeOutcome) -> u16 {
    match outcome {
        HandshakeOutcome::Reject { status, .. } => status,
        other => panic!("accepted: {other:?}"),
    }
}

#[test]
fn v1_is_selected_and_opens_the_session() {
    let mut h = Harness::new(config());
    let hs = Handshake::new("/", "node_id=a")
        .protocol("syncmux.v2")
        .protocol("syncmux.v1");
    let (session, node, protocol) = accept(h.handshake(&hs));
    assert_eq!(protocol.as_deref(), Some("syncmux.v1"));
    assert_eq!(node, "a");
    assert_eq!(
        h.take_events(),
        vec![ServerEvent::SessionOpened {
            session,
            node_id: "a".into()
        }]
    );
    assert!(h.server.is_open(session));
}

#[test]
fn no_subprotocol_is_version_1() {
    let mut h = Harness::new(config());
    let (session, _, protocol) = accept(h.handshake(&Handshake::new("/", "")));
    assert_eq!(protocol, None);
    h.send(session, r#"{"type":"ping","id":"p"}"#);
    assert_eq!(types(&h.take(session)), ["pong"]);
}

#[test]
fn other_version_completes_then_errors_and_closes_4426() {
    let mut h = Harness::new(config());
    let hs = Handshake::new("/", "").protocol("syncmux.v3, syncmux.v2");
    let (session, _, protocol) = accept(h.handshake(&hs));
    assert_eq!(protocol.as_deref(), Some("syncmux.v3"));
    let frames = h.take(session);
    assert_eq!(frames.len(), 1);
    assert_eq!(error_code(&frames[0]), "SYNC_VERSION_MISMATCH");
    assert_eq!(
        frames[0]["payload"]["message"],
        "protocol version 1 required, got 3"
    );
    assert_eq!(h.closes[&session].0, 4426);
    assert!(h.take_events().is_empty(), "a refused version never opens");
    assert_eq!(h.server.session_count(), 0);
}

fn with_auth() -> syncmux::ServerConfig {
    config().with_auth(|req| match req.token {
        Some("tok-alice") => AuthDecision::allow(Some("alice".into())),
        Some("tok+any") => AuthDecision::allow(None),
        _ => AuthDecision::deny(401, "bad token"),
    })
}

#[test]
fn auth_takes_the_token_from_header_or_query() {
    let mut h = Harness::new(with_auth());
    assert_eq!(status(h.handshake(&Handshake::new("/", ""))), 401);
    assert_eq!(
        status(h.handshake(&Handshake::new("/", "").header("Authorization", "Bearer nope"))),
        401
    );
    let by_header = Handshake::new("/", "").header("authorization", "bearer tok-alice");
    assert_eq!(accept(h.handshake(&by_header)).1, "alice");
    let by_query = Handshake::new("/", "access_token=tok-alice");
    assert_eq!(accept(h.handshake(&by_query)).1, "alice");
    let by_token = Handshake::new("/", "token=tok-alice");
    assert_eq!(accept(h.handshake(&by_token)).1, "alice");
    // Grove's browser client: its headers in the query, lower-cased.
    let grove = Handshake::new("/", "authorization=Bearer%20tok-alice");
    assert_eq!(accept(h.handshake(&grove)).1, "alice");
    let not_bearer = Handshake::new("/", "authorization=Basic%20tok-alice");
    assert_eq!(status(h.handshake(&not_bearer)), 401);
    // Percent-decoded, and an identity-less allow keeps the requested node id.
    let encoded = Handshake::new("/", "token=tok%2Bany&node_id=bob");
    assert_eq!(accept(h.handshake(&encoded)).1, "bob");
    // A browser's EventSource sends no headers: the cookie `syncmux_token`, last.
    let cookie = Handshake::new("/", "").header("Cookie", "a=b; syncmux_token=tok-alice; c=d");
    assert_eq!(accept(h.handshake(&cookie)).1, "alice");
    let other_cookie = Handshake::new("/", "").header("Cookie", "xsyncmux_token=tok-alice");
    assert_eq!(status(h.handshake(&other_cookie)), 401);
}

#[test]
fn auth_identity_must_match_the_requested_node_id() {
    let mut h = Harness::new(with_auth());
    let hs = Handshake::new("/", "access_token=tok-alice&node_id=mallory");
    assert_eq!(status(h.handshake(&hs)), 403);
    let hs = Handshake::new("/", "access_token=tok-alice&node_id=alice");
    assert_eq!(accept(h.handshake(&hs)).1, "alice");
}

#[test]
fn origins_are_checked() {
    let mut c = config();
    c.allowed_origins = Some(vec!["https://app.example".into()]);
    let mut h = Harness::new(c);
    let evil = Handshake::new("/", "").origin("https://evil.example");
    assert_eq!(status(h.handshake(&evil)), 403);
    accept(h.handshake(&Handshake::new("/", "").origin("https://app.example")));
    accept(h.handshake(&Handshake::new("/", "")));
}

#[test]
fn node_id_from_query_header_or_assigned() {
    let mut h = Harness::new(config());
    let hs = Handshake::new("/", "").header("X-Node-Id", "hdr");
    assert_eq!(accept(h.handshake(&hs)).1, "hdr");
    let hs = Handshake::new("/", "node_id=q%20x").header("X-Node-Id", "hdr");
    assert_eq!(accept(h.handshake(&hs)).1, "q x");
    let a = accept(h.handshake(&Handshake::new("/", ""))).1;
    let b = accept(h.handshake(&Handshake::new("/", ""))).1;
    assert_ne!(a, b);
    // Deterministic: the same seed assigns the same ids.
    let mut again = Harness::new(config());
    again.handshake(&Handshake::new("/", "node_id=x"));
    again.handshake(&Handshake::new("/", "node_id=y"));
    assert_eq!(accept(again.handshake(&Handshake::new("/", ""))).1, a);
    let long = "n".repeat(200);
    assert_eq!(
        status(h.handshake(&Handshake::new("/", format!("node_id={long}")))),
        400
    );
}

/// A node id that is named but empty is not a valid one (400), not a request for an assigned
/// one: a client that meant to name itself learns at once that it did not.
#[test]
fn an_empty_node_id_is_refused_with_400() {
    let mut h = Harness::new(config());
    for hs in [
        Handshake::new("/", "node_id="),
        Handshake::new("/", "node_id"),
        Handshake::new("/", "a=1&node_id=&b=2"),
        Handshake::new("/", "").header("X-Node-Id", ""),
    ] {
        assert_eq!(status(h.handshake(&hs)), 400, "{hs:?}");
    }
    // Absent, it is still assigned.
    accept(h.handshake(&Handshake::new("/", "a=1")));
}

#[test]
fn path_and_capacity() {
    let mut c = config();
    c.path = Some("/sync".into());
    c.max_sessions = 1;
    let mut h = Harness::new(c);
    assert_eq!(status(h.handshake(&Handshake::new("/other", ""))), 404);
    let (first, _, _) = accept(h.handshake(&Handshake::new("/sync", "")));
    assert_eq!(status(h.handshake(&Handshake::new("/sync", ""))), 503);
    h.server.handle_disconnected(h.now, first);
    accept(h.handshake(&Handshake::new("/sync", "")));
}

#[test]
fn shutdown_closes_everyone_with_1001() {
    let mut h = Harness::new(config());
    let a = h.open("a");
    let b = h.open("b");
    h.server.shutdown(h.now);
    h.drain();
    assert_eq!(h.closes[&a].0, 1001);
    assert_eq!(h.closes[&b].0, 1001);
    assert_eq!(status(h.handshake(&Handshake::new("/", ""))), 503);
    let closed = h
        .take_events()
        .into_iter()
        .filter(|e| matches!(e, ServerEvent::SessionClosed { .. }))
        .count();
    assert_eq!(closed, 2);
}

#[test]
fn authorization_hook_refuses_with_forbidden() {
    let c = config().with_authorize(|access| match access.resource {
        Resource::ReadTable(t) | Resource::WriteTable(t) => t != "secret",
        Resource::Topic(t) | Resource::Room(t) => t != "vip",
        _ => true,
    });
    let mut h = Harness::new(c);
    let a = h.open("a");
    h.send(
        a,
        r#"{"type":"subscribe","id":"1","payload":{"tables":["docs","secret"]}}"#,
    );
    h.send(
        a,
        r#"{"type":"pull_request","id":"2","payload":{"tables":["secret"]}}"#,
    );
    h.send(
        a,
        &push_json("3", "a", &[record_json("secret", "1", 1, "a")]),
    );
    h.send(
        a,
        r#"{"type":"presence_update","id":"4","payload":{"topic":"vip","data":1}}"#,
    );
    h.send(
        a,
        r#"{"type":"room","id":"5","payload":{"action":"join","room":"vip"}}"#,
    );
    let frames = h.take(a);
    assert_eq!(frames.len(), 5);
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(error_code(f), "FORBIDDEN");
        assert_eq!(f["id"], (i + 1).to_string());
    }
    assert!(h.server.subscriptions(a).is_empty(), "refused as a whole");
    assert!(h.take_events().is_empty());
}

#[test]
fn a_payload_node_id_that_is_not_the_sessions_is_forbidden() {
    let mut h = Harness::new(config());
    let a = h.open("a");
    h.send(a, &push_json("1", "b", &[record_json("docs", "1", 1, "a")]));
    h.send(
        a,
        r#"{"type":"pull_request","id":"2","payload":{"tables":["docs"],"node_id":"b"}}"#,
    );
    let frames = h.take(a);
    assert_eq!(error_code(&frames[0]), "FORBIDDEN");
    assert_eq!(error_code(&frames[1]), "FORBIDDEN");
    assert!(h.take_events().is_empty());
    // A record made by another node, relayed by this one, is fine.
    h.send(a, &push_json("3", "a", &[record_json("docs", "1", 1, "b")]));
    assert!(h.take(a).is_empty());
    assert!(matches!(h.take_events()[..], [ServerEvent::Push { .. }]));
}

/// A session that named no node id (Grove's clients dial `/sync/ws` with no query, and name
/// their node only in their requests) takes the one its first request names, and keeps it:
/// another is still refused. An id no node may have leaves it unbound; a session already
/// seen under its assigned id (in a presence topic, say) keeps that one.
#[test]
fn a_session_that_named_no_node_id_takes_the_first_one_a_request_names() {
    let mut h = Harness::new(config());
    let pull = |id: &str, node: &str| {
        format!(
            r#"{{"type":"pull_request","id":"{id}","payload":{{"tables":["docs"],"node_id":"{node}"}}}}"#
        )
    };
    let (s, assigned, _) = accept(h.handshake(&Handshake::new("/", "")));
    h.take_events();
    let long = "n".repeat(200);
    h.send(s, &pull("0", &long));
    assert_eq!(error_code(&h.take(s)[0]), "FORBIDDEN", "not a node id");
    assert_eq!(h.server.node_id(s), Some(assigned.as_str()));
    h.send(
        s,
        &push_json("1", "grove", &[record_json("docs", "1", 1, "grove")]),
    );
    assert!(h.take(s).is_empty());
    let events = h.take_events();
    assert!(
        matches!(&events[..], [ServerEvent::Push { node_id, .. }] if node_id == "grove"),
        "{events:?}"
    );
    assert_eq!(h.server.node_id(s), Some("grove"));
    h.send(s, &pull("2", "other"));
    assert_eq!(error_code(&h.take(s)[0]), "FORBIDDEN", "bound once");
    h.send(s, &pull("3", "grove"));
    assert!(h.take(s).is_empty(), "its own node");

    let (p, assigned, _) = accept(h.handshake(&Handshake::new("/", "")));
    h.send(
        p,
        r#"{"type":"presence_update","id":"1","payload":{"topic":"doc","data":1}}"#,
    );
    h.take(p);
    h.send(p, &pull("2", "grove-2"));
    assert_eq!(error_code(&h.take(p)[0]), "FORBIDDEN", "seen in presence");
    assert_eq!(h.server.node_id(p), Some(assigned.as_str()));
}
