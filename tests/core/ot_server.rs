//! The OT document server: the frames of the seed's wire, documents and
//! membership, stale ops, refusals with open-ot's messages, the rate limit, the heartbeat,
//! auth at the handshake, the snapshot and opId extensions, and every limit's outcome.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use syncmux::ot::{
    OtCloseReason, OtHandshakeOutcome, OtServer, OtServerConfig, OtServerEvent, OtSessionId,
    OtTransmit,
};
use syncmux::wire::CloseCode;
use syncmux::Instant;
use syncmux::{AuthDecision, Handshake};

/// The default configuration, every op sent on at once: these tests read the frames an
/// input makes right after it (the broadcast delay has tests of its own).
fn config() -> OtServerConfig {
    let mut config = OtServerConfig::default();
    config.broadcast_delay = Duration::ZERO;
    config
}

struct Harness {
    server: OtServer,
    now: Instant,
}

impl Harness {
    fn new(config: OtServerConfig) -> Self {
        Harness {
            server: OtServer::new(config).unwrap(),
            now: Instant::ZERO,
        }
    }

    fn open(&mut self) -> OtSessionId {
        match self
            .server
            .handle_handshake(self.now, &Handshake::new("/ot", ""))
        {
            OtHandshakeOutcome::Accept { session } => session,
            other => panic!("{other:?}"),
        }
    }

    fn send(&mut self, session: OtSessionId, frame: &str) {
        self.server
            .handle_message(self.now, session, Bytes::from(frame.to_owned()));
    }

    /// Every transmit, frames reported written.
    fn transmits(&mut self) -> Vec<OtTransmit> {
        let mut all = Vec::new();
        while let Some(t) = self.server.poll_transmit() {
            if let OtTransmit::Frame { session, bytes } = &t {
                self.server.handle_sent(self.now, *session, bytes.len());
            }
            all.push(t);
        }
        all
    }

    /// Every frame, as text, with its session.
    fn frames(&mut self) -> Vec<(OtSessionId, String)> {
        self.transmits()
            .into_iter()
            .filter_map(|t| match t {
                OtTransmit::Frame { session, bytes } => {
                    Some((session, String::from_utf8(bytes.to_vec()).unwrap()))
                }
                _ => None,
            })
            .collect()
    }

    /// The one frame that went out, to `to`.
    fn reply(&mut self, to: OtSessionId) -> String {
        let frames = self.frames();
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(frames[0].0, to);
        frames[0].1.clone()
    }

    fn events(&mut self) -> Vec<OtServerEvent> {
        std::iter::from_fn(|| self.server.poll_event()).collect()
    }

    fn text(&self, doc: &str) -> String {
        self.server.document(doc).unwrap().text().to_owned()
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.server.handle_timeout(self.now);
    }
}

fn error(message: &str) -> String {
    format!(
        r#"{{"type":"error","message":{}}}"#,
        serde_json::to_string(message).unwrap()
    )
}

#[test]
fn the_sender_gets_an_ack_and_every_other_client_the_op() {
    let mut h = Harness::new(config());
    let (a, b, c) = (h.open(), h.open(), h.open());
    h.send(a, r#"{"type":"op","op":[{"i":"Hello"}],"revision":0}"#);
    let frames = h.frames();
    assert_eq!(
        frames,
        [
            (a, r#"{"type":"ack","revision":1}"#.to_owned()),
            (
                b,
                r#"{"type":"op","op":[{"i":"Hello"}],"revision":1}"#.to_owned()
            ),
            (
                c,
                r#"{"type":"op","op":[{"i":"Hello"}],"revision":1}"#.to_owned()
            ),
        ]
    );
    assert_eq!(h.text("doc-1"), "Hello");
    let events = h.events();
    assert!(matches!(
        &events[..],
        [OtServerEvent::Applied { session, revision: 1, .. }] if *session == a
    ));
}

/// With the default broadcast delay, an op sent on waits for its member's next frame: an
/// editor gets it ahead of its own ack, a reader once the delay is over, every op of the
/// delay together and in revision order.
#[test]
fn ops_sent_on_wait_for_the_members_next_frame_or_the_delay() {
    let mut h = Harness::new(OtServerConfig::default());
    let delay = OtServerConfig::default().broadcast_delay;
    assert_eq!(delay, Duration::from_millis(1));
    let (a, b, c) = (h.open(), h.open(), h.open());
    let start = h.now;
    h.send(a, r#"{"type":"op","op":[{"i":"a"}],"revision":0}"#);
    assert_eq!(
        h.frames(),
        [(a, r#"{"type":"ack","revision":1}"#.to_owned())]
    );
    assert_eq!(h.server.poll_timeout(), Some(start + delay));
    let held = h.server.outbound_bytes(c).unwrap();
    assert!(held > 0, "held frames count against the outbound bound");

    // b edits (made before it saw a's op): a's op first, then its ack, at once.
    h.advance(delay / 2);
    h.send(b, r#"{"type":"op","op":[{"i":"b"}],"revision":0}"#);
    assert_eq!(
        h.frames(),
        [
            (
                b,
                r#"{"type":"op","op":[{"i":"a"}],"revision":1}"#.to_owned()
            ),
            (b, r#"{"type":"ack","revision":2}"#.to_owned()),
        ]
    );
    // The delay runs from the first op held.
    assert_eq!(h.server.poll_timeout(), Some(start + delay));
    h.advance(delay / 2 - Duration::from_micros(1));
    assert_eq!(h.frames(), []);
    h.advance(Duration::from_micros(1));
    assert_eq!(
        h.frames(),
        [
            (
                c,
                r#"{"type":"op","op":[{"i":"a"}],"revision":1}"#.to_owned()
            ),
            (
                c,
                r#"{"type":"op","op":[{"r":1},{"i":"b"}],"revision":2}"#.to_owned()
            ),
            (
                a,
                r#"{"type":"op","op":[{"r":1},{"i":"b"}],"revision":2}"#.to_owned()
            ),
        ]
    );
    assert_eq!(h.server.outbound_bytes(c), Some(0));
    assert_eq!(
        h.server.poll_timeout(),
        Some(start + Duration::from_secs(30)),
        "the heartbeat"
    );
}

/// A timer that comes late does not hold an op longer: the next op sent on after the delay
/// is over takes what waited out first.
#[test]
fn an_op_held_past_its_delay_goes_with_the_next_input() {
    let mut h = Harness::new(OtServerConfig::default());
    let (a, b) = (h.open(), h.open());
    h.send(a, r#"{"type":"op","op":[{"i":"a"}],"revision":0}"#);
    assert_eq!(h.frames().len(), 1, "the ack");
    // Time passes with no `handle_timeout`.
    h.now += Duration::from_millis(5);
    h.send(a, r#"{"type":"op","op":[{"i":"b"}],"revision":1}"#);
    assert_eq!(
        h.frames(),
        [
            (a, r#"{"type":"ack","revision":2}"#.to_owned()),
            (
                b,
                r#"{"type":"op","op":[{"i":"a"}],"revision":1}"#.to_owned()
            ),
        ]
    );
    assert_eq!(
        h.server.poll_timeout(),
        Some(h.now + Duration::from_millis(1)),
        "the second op waits a delay of its own"
    );
}

/// Whatever else goes to a member takes the ops held for it first: a ping, a close.
#[test]
fn held_ops_go_out_before_a_ping_or_a_close() {
    let mut config = OtServerConfig::default();
    config.broadcast_delay = Duration::from_secs(3600);
    let mut h = Harness::new(config);
    let (a, b, c) = (h.open(), h.open(), h.open());
    h.send(a, r#"{"type":"op","op":[{"i":"a"}],"revision":0}"#);
    assert_eq!(h.frames().len(), 1, "the ack");
    h.advance(Duration::from_secs(30));
    let op = Bytes::from_static(br#"{"type":"op","op":[{"i":"a"}],"revision":1}"#);
    let transmits = h.transmits();
    for member in [b, c] {
        let mine: Vec<_> = transmits
            .iter()
            .filter(|t| match t {
                OtTransmit::Frame { session, .. } | OtTransmit::Ping { session } => {
                    *session == member
                }
                _ => false,
            })
            .collect();
        assert_eq!(
            mine,
            [
                &OtTransmit::Frame {
                    session: member,
                    bytes: op.clone(),
                },
                &OtTransmit::Ping { session: member },
            ]
        );
    }
    h.send(a, r#"{"type":"op","op":[{"i":"b"}],"revision":1}"#);
    assert_eq!(h.frames().len(), 1, "the ack");
    h.server.close_session(h.now, b, CloseCode::NORMAL, "bye");
    let transmits = h.transmits();
    assert!(
        matches!(
            &transmits[..],
            [OtTransmit::Frame { session, bytes }, OtTransmit::Close { session: closed, .. }]
                if *session == b && *closed == b && bytes.starts_with(br#"{"type":"op""#)
        ),
        "{transmits:?}"
    );
}

/// Ops held back count against the member's outbound bound: a member held past it is closed
/// as a slow consumer like one that does not read.
#[test]
fn held_ops_are_bounded_by_the_outbound_budget() {
    let mut config = OtServerConfig::default();
    config.broadcast_delay = Duration::from_secs(3600);
    config.max_outbound_bytes = 400;
    config.rate_limit_messages = 0;
    let mut h = Harness::new(config);
    let (a, b) = (h.open(), h.open());
    let mut closed = None;
    for revision in 0..20 {
        h.send(
            a,
            &format!(r#"{{"type":"op","op":[{{"i":"0123456789"}}],"revision":{revision}}}"#),
        );
        for t in h.transmits() {
            if let OtTransmit::Close { session, code, .. } = t {
                closed = Some((session, code, revision));
            }
        }
        if closed.is_some() {
            break;
        }
        assert!(h.server.outbound_bytes(b).unwrap() <= 400);
    }
    let (session, code, revision) = closed.expect("b closed");
    assert_eq!((session, code), (b, CloseCode::SLOW_CONSUMER));
    assert!(revision > 3, "after several ops: {revision}");
}

#[test]
fn a_stale_op_is_transformed_with_the_logged_insert_first() {
    let mut h = Harness::new(config());
    let (a, b) = (h.open(), h.open());
    h.send(a, r#"{"type":"op","op":[{"i":"ab"}],"revision":0}"#);
    h.frames();
    // b made its op at revision 0 too, inserting at the same place: it goes after "ab".
    h.send(b, r#"{"type":"op","op":[{"i":"X"}],"revision":0}"#);
    assert_eq!(
        h.frames(),
        [
            (b, r#"{"type":"ack","revision":2}"#.to_owned()),
            (
                a,
                r#"{"type":"op","op":[{"r":2},{"i":"X"}],"revision":2}"#.to_owned()
            ),
        ]
    );
    assert_eq!(h.text("doc-1"), "abX");
}

#[test]
fn every_connection_gets_each_documents_ops_in_revision_order() {
    let mut h = Harness::new(config());
    let sessions: Vec<_> = (0..4).map(|_| h.open()).collect();
    let mut revisions = vec![0u64; sessions.len()];
    for round in 0..20u64 {
        let sender = sessions[(round as usize * 7) % sessions.len()];
        // Everyone edits at revision `round / 2`: often stale, always transformed.
        h.send(
            sender,
            &format!(
                r#"{{"type":"op","op":[{{"i":"{round}."}}],"revision":{}}}"#,
                round / 2
            ),
        );
        for (session, frame) in h.frames() {
            let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
            let i = sessions.iter().position(|s| *s == session).unwrap();
            assert_eq!(v["revision"].as_u64(), Some(revisions[i] + 1), "{frame}");
            revisions[i] += 1;
            assert_eq!(v["type"] == "ack", session == sender, "{frame}");
        }
    }
    assert!(revisions.iter().all(|r| *r == 20));
}

#[test]
fn documents_are_joined_by_naming_them() {
    let mut h = Harness::new(config());
    let (a, b, c) = (h.open(), h.open(), h.open());
    // The first op on a new document is acked with revision 1, with the docId.
    h.send(
        a,
        r#"{"type":"op","op":[{"i":"x"}],"revision":0,"docId":"notes"}"#,
    );
    assert_eq!(h.reply(a), r#"{"type":"ack","revision":1,"docId":"notes"}"#);
    assert!(matches!(
        &h.events()[..],
        [OtServerEvent::DocumentCreated { doc }, OtServerEvent::Applied { .. }] if &**doc == "notes"
    ));
    // b joins by asking for a snapshot; c never joins and never hears of "notes".
    h.send(b, r#"{"type":"snapshot","docId":"notes"}"#);
    assert_eq!(
        h.reply(b),
        r#"{"type":"snapshot","revision":1,"text":"x","docId":"notes"}"#
    );
    h.send(
        a,
        r#"{"type":"op","op":[{"r":1},{"i":"y"}],"revision":1,"docId":"notes"}"#,
    );
    assert_eq!(
        h.frames(),
        [
            (
                a,
                r#"{"type":"ack","revision":2,"docId":"notes"}"#.to_owned()
            ),
            (
                b,
                r#"{"type":"op","op":[{"r":1},{"i":"y"}],"revision":2,"docId":"notes"}"#.to_owned()
            ),
        ]
    );
    assert_eq!(h.server.joined(a), ["doc-1", "notes"]);
    assert_eq!(h.server.joined(c), ["doc-1"]);
    // doc-1 stays doc-1 for all: an explicit "doc-1" is echoed, broadcasts name none.
    h.send(
        c,
        r#"{"type":"op","op":[{"i":"1"}],"revision":0,"docId":"doc-1"}"#,
    );
    let frames = h.frames();
    assert_eq!(
        frames[0],
        (
            c,
            r#"{"type":"ack","revision":1,"docId":"doc-1"}"#.to_owned()
        )
    );
    assert_eq!(
        frames[1].1,
        r#"{"type":"op","op":[{"i":"1"}],"revision":1}"#
    );
    assert_eq!(frames.len(), 3);
}

#[test]
fn bad_ops_get_open_ots_messages_and_the_connection_stays_open() {
    let mut h = Harness::new(config());
    let (a, b) = (h.open(), h.open());
    h.send(a, r#"{"type":"op","op":[{"i":"abc"}],"revision":0}"#);
    h.frames();
    // Ops on doc-1 (the op and its revision), then frames of other shapes.
    let op =
        |op: &str, revision: i64| format!(r#"{{"type":"op","op":{op},"revision":{revision}}}"#);
    let cases: [(String, &str); 10] = [
        (op(r#"[{"i":"x"}]"#, 5), "Invalid revision: 5 > 1"),
        (op(r#"{"i":"x"}"#, 1), "Operation must be an array"),
        (op("[1]", 1), "Operation component must be an object"),
        (
            op(r#"[{"x":1}]"#, 1),
            "Operation component must be Insert, Retain, or Delete",
        ),
        (
            op(r#"[{"r":2},{"r":2}]"#, 1),
            "Operation goes past the end of the string. Index: 0, Retain: 4, Snapshot Length: 3",
        ),
        (
            op(r#"[{"r":1},{"d":3}]"#, 1),
            "Operation goes past the end of the string. Index: 1, Delete: 3, Snapshot Length: 3",
        ),
        (
            op("[]", -1),
            "Invalid revision: must be a non-negative integer",
        ),
        (
            r#"{"type":"op","op":[],"revision":0,"docId":7}"#.into(),
            "Invalid docId: must be a string",
        ),
        (r#"{"type":"hello"}"#.into(), "Unknown message type: hello"),
        (
            "[1,2]".into(),
            "Message must be a JSON object with a string type",
        ),
    ];
    for (frame, message) in cases {
        h.send(a, &frame);
        assert_eq!(h.reply(a), error(message), "{frame}");
    }
    // Not JSON at all (the seed's own server crashes here).
    h.send(a, "not json");
    let reply = h.reply(a);
    assert!(
        reply.starts_with(r#"{"type":"error","message":"Invalid JSON: "#),
        "{reply}"
    );
    // Refused ops were not logged, and the connection still works.
    assert_eq!(h.server.document("doc-1").unwrap().revision(), 1);
    h.send(a, r#"{"type":"op","op":[{"r":3},{"i":"!"}],"revision":1}"#);
    assert_eq!(h.frames().len(), 2);
    assert_eq!(h.text("doc-1"), "abc!");
    assert!(h.server.is_open(a) && h.server.is_open(b));
}

#[test]
fn an_error_for_a_named_document_carries_its_id() {
    let mut h = Harness::new(config());
    let a = h.open();
    h.send(
        a,
        r#"{"type":"op","op":[{"d":1}],"revision":0,"docId":"d"}"#,
    );
    assert_eq!(
        h.reply(a),
        r#"{"type":"error","message":"Operation goes past the end of the string. Index: 0, Delete: 1, Snapshot Length: 0","docId":"d"}"#
    );
    h.send(a, r#"{"type":"op","op":7,"revision":0,"docId":"d"}"#);
    assert_eq!(
        h.reply(a),
        r#"{"type":"error","message":"Operation must be an array","docId":"d"}"#
    );
}

#[test]
fn an_op_that_would_split_a_surrogate_pair_is_refused() {
    let mut h = Harness::new(config());
    let a = h.open();
    h.send(a, r#"{"type":"op","op":[{"i":"😀é"}],"revision":0}"#);
    h.frames();
    // "😀é" is 3 UTF-16 units long; 1 is inside the pair.
    h.send(a, r#"{"type":"op","op":[{"r":1},{"i":"x"}],"revision":1}"#);
    assert_eq!(
        h.reply(a),
        error("Operation splits a surrogate pair. Index: 1")
    );
    h.send(a, r#"{"type":"op","op":[{"r":2},{"d":1}],"revision":1}"#);
    assert_eq!(h.reply(a), r#"{"type":"ack","revision":2}"#);
    assert_eq!(h.text("doc-1"), "😀");
}

#[test]
fn the_seeds_rate_limit() {
    let mut config = config();
    config.rate_limit_messages = 3;
    config.rate_limit_window = Duration::from_secs(60);
    let mut h = Harness::new(config);
    let a = h.open();
    for i in 0..3 {
        h.send(
            a,
            &format!(r#"{{"type":"op","op":[{{"i":"x"}}],"revision":{i}}}"#),
        );
        assert_eq!(
            h.reply(a),
            format!(r#"{{"type":"ack","revision":{}}}"#, i + 1)
        );
    }
    // Past the limit: answered, not applied, whatever the message.
    for frame in [r#"{"type":"op","op":[{"i":"y"}],"revision":3}"#, "junk"] {
        h.send(a, frame);
        assert_eq!(h.reply(a), error("Rate limit exceeded"));
    }
    assert_eq!(h.text("doc-1"), "xxx");
    // The window ends 60 s after the connection; the next message starts a new one.
    h.advance(Duration::from_secs(61));
    h.transmits();
    h.send(a, r#"{"type":"op","op":[{"i":"y"}],"revision":3}"#);
    assert_eq!(h.reply(a), r#"{"type":"ack","revision":4}"#);
}

#[test]
fn zero_disables_the_rate_limit_and_the_heartbeat() {
    let mut config = config();
    config.rate_limit_messages = 0;
    config.ping_interval = Duration::ZERO;
    let mut h = Harness::new(config);
    let a = h.open();
    for i in 0..500 {
        h.send(a, &format!(r#"{{"type":"op","op":[],"revision":{i}}}"#));
    }
    assert_eq!(h.frames().len(), 500);
    assert_eq!(h.server.poll_timeout(), None);
}

#[test]
fn pings_every_30_s_and_terminates_a_connection_that_did_not_answer() {
    let mut h = Harness::new(config());
    let (a, b) = (h.open(), h.open());
    assert_eq!(
        h.server.poll_timeout(),
        Some(Instant::ZERO + Duration::from_secs(30))
    );
    h.advance(Duration::from_secs(29));
    assert!(h.transmits().is_empty());
    h.advance(Duration::from_secs(1));
    assert_eq!(
        h.transmits(),
        [
            OtTransmit::Ping { session: a },
            OtTransmit::Ping { session: b }
        ]
    );
    // a answers, b does not: at the next ping, b is terminated (no closing handshake).
    h.server.handle_pong(h.now, a);
    h.advance(Duration::from_secs(30));
    assert_eq!(
        h.transmits(),
        [
            OtTransmit::Ping { session: a },
            OtTransmit::Terminate { session: b }
        ]
    );
    assert!(matches!(
        &h.events()[..],
        [OtServerEvent::SessionClosed { session, reason: OtCloseReason::Unresponsive }] if *session == b
    ));
    assert_eq!(h.server.session_count(), 1);
    assert_eq!(h.server.document("doc-1").unwrap().members(), [a]);
    // Other frames do not count as an answer: only the pong does.
    h.send(a, r#"{"type":"snapshot"}"#);
    h.transmits();
    h.advance(Duration::from_secs(30));
    assert_eq!(h.transmits(), [OtTransmit::Terminate { session: a }]);
}

#[test]
fn a_token_is_checked_at_the_handshake() {
    let config = config().with_auth(|req| match req.token {
        Some("valid-token") => AuthDecision::allow(None),
        _ => AuthDecision::deny(401, "bad token"),
    });
    let mut server = OtServer::new(config).unwrap();
    let outcome = |server: &mut OtServer, query: &str| {
        server.handle_handshake(Instant::ZERO, &Handshake::new("/ot", query))
    };
    assert_eq!(
        outcome(&mut server, ""),
        OtHandshakeOutcome::Reject {
            status: 401,
            reason: "missing token".into()
        }
    );
    assert_eq!(
        outcome(&mut server, "token=nope"),
        OtHandshakeOutcome::Reject {
            status: 401,
            reason: "bad token".into()
        }
    );
    assert!(matches!(
        outcome(&mut server, "token=valid-token"),
        OtHandshakeOutcome::Accept { .. }
    ));
    assert_eq!(server.session_count(), 1);
}

/// `allowed_origins`: a browser's handshake from another origin is refused with 403; a
/// listed origin, or no `Origin` (not a browser), is accepted.
#[test]
fn an_origin_not_allowed_is_refused_at_the_handshake() {
    let mut config = config();
    config.allowed_origins = Some(vec!["https://app.example".to_owned()]);
    let mut server = OtServer::new(config).unwrap();
    let mut from = |origin: Option<&str>| {
        let mut handshake = Handshake::new("/ot", "");
        handshake.origin = origin.map(str::to_owned);
        server.handle_handshake(Instant::ZERO, &handshake)
    };
    assert_eq!(
        from(Some("https://evil.example")),
        OtHandshakeOutcome::Reject {
            status: 403,
            reason: "origin not allowed".into()
        }
    );
    assert!(matches!(
        from(Some("https://app.example")),
        OtHandshakeOutcome::Accept { .. }
    ));
    assert!(matches!(from(None), OtHandshakeOutcome::Accept { .. }));
}

#[test]
fn a_snapshot_says_whether_an_op_was_applied() {
    let mut config = config();
    config.max_history = 2;
    let mut h = Harness::new(config);
    let (a, b) = (h.open(), h.open());
    h.send(
        a,
        r#"{"type":"op","op":[{"i":"a"}],"revision":0,"opId":"c1-1"}"#,
    );
    h.frames();
    h.send(b, r#"{"type":"snapshot","opId":"c1-1","revision":0}"#);
    assert_eq!(
        h.reply(b),
        r#"{"type":"snapshot","revision":1,"text":"a","opStatus":"applied","opRevision":1}"#
    );
    h.send(b, r#"{"type":"snapshot","opId":"c1-2","revision":1}"#);
    assert_eq!(
        h.reply(b),
        r#"{"type":"snapshot","revision":1,"text":"a","opStatus":"absent"}"#
    );
    for r in 1..3 {
        h.send(a, &format!(r#"{{"type":"op","op":[],"revision":{r}}}"#));
    }
    h.frames();
    // The history holds revisions 2 and 3 only: what happened after revision 0 is unknown.
    h.send(b, r#"{"type":"snapshot","opId":"c1-2","revision":0}"#);
    assert_eq!(
        h.reply(b),
        r#"{"type":"snapshot","revision":3,"text":"a","opStatus":"unknown"}"#
    );
}

#[test]
fn an_op_sent_twice_is_applied_once() {
    let mut h = Harness::new(config());
    let (a, b, other) = (h.open(), h.open(), h.open());
    let op = r#"{"type":"op","op":[{"i":"x"}],"revision":0,"opId":"c-1"}"#;
    h.send(a, op);
    assert_eq!(h.frames().len(), 3);
    h.send(other, r#"{"type":"op","op":[{"i":"y"}],"revision":1}"#);
    h.frames();
    // The same op again (from the client's next connection): acked with the revision the
    // first copy got, not applied, not broadcast.
    h.send(b, op);
    assert_eq!(h.reply(b), r#"{"type":"ack","revision":1}"#);
    assert_eq!(h.text("doc-1"), "yx");
}

#[test]
fn an_op_older_than_the_history_is_refused_with_a_hint() {
    let mut config = config();
    config.max_history = 3;
    let mut h = Harness::new(config);
    let a = h.open();
    for r in 0..5 {
        h.send(
            a,
            &format!(r#"{{"type":"op","op":[{{"i":"x"}}],"revision":{r}}}"#),
        );
    }
    h.frames();
    assert_eq!(h.server.document("doc-1").unwrap().history_len(), 3);
    h.send(a, r#"{"type":"op","op":[{"i":"y"}],"revision":2}"#);
    assert_eq!(h.reply(a), r#"{"type":"ack","revision":6}"#);
    h.send(a, r#"{"type":"op","op":[{"i":"y"}],"revision":2}"#);
    assert_eq!(
        h.reply(a),
        error(
            "Revision 2 is older than the history kept (it starts at revision 3): fetch a snapshot"
        )
    );
}

#[test]
fn limits_on_documents() {
    let mut config = config();
    config.max_documents = 3;
    config.max_documents_per_session = 2;
    config.max_doc_id_len = 8;
    let mut h = Harness::new(config);
    let (a, b) = (h.open(), h.open());
    h.send(a, r#"{"type":"snapshot","docId":"one"}"#);
    h.frames();
    // a is in doc-1 and "one": a third is one too many for it.
    h.send(a, r#"{"type":"snapshot","docId":"two"}"#);
    assert_eq!(
        h.reply(a),
        r#"{"type":"error","message":"Too many documents joined on this connection (max 2)","docId":"two"}"#
    );
    h.send(b, r#"{"type":"snapshot","docId":"two"}"#);
    h.frames();
    assert_eq!(h.server.document_count(), 3);
    h.send(b, r#"{"type":"op","op":[],"revision":0,"docId":"three"}"#);
    h.send(b, r#"{"type":"snapshot","docId":"a-long-name"}"#);
    let frames: Vec<_> = h.frames().into_iter().map(|(_, f)| f).collect();
    assert_eq!(
        frames,
        [
            r#"{"type":"error","message":"Too many documents joined on this connection (max 2)","docId":"three"}"#,
            r#"{"type":"error","message":"docId too long: 11 bytes (max 8)","docId":"a-long-name"}"#,
        ]
    );
    // A third session can still join existing documents, not create a fourth.
    let c = h.open();
    h.send(c, r#"{"type":"snapshot","docId":"four"}"#);
    assert_eq!(
        h.reply(c),
        r#"{"type":"error","message":"Too many documents (max 3)","docId":"four"}"#
    );
    assert_eq!(h.server.document_count(), 3);
}

#[test]
fn limits_on_ops_frames_and_documents_length() {
    let mut config = config();
    config.max_op_components = 3;
    config.max_frame_len = 100;
    config.max_document_len = 5;
    let mut h = Harness::new(config);
    let a = h.open();
    h.send(
        a,
        r#"{"type":"op","op":[{"i":"a"},{"r":0},{"d":0},{"i":"b"}],"revision":0}"#,
    );
    assert_eq!(h.reply(a), r#"{"type":"ack","revision":1}"#); // normalized: one insert
    h.send(
        a,
        r#"{"type":"op","op":[{"r":1},{"i":"x"},{"r":1},{"i":"y"}],"revision":1}"#,
    );
    assert_eq!(
        h.reply(a),
        error("Operation too large: 4 components (max 3)")
    );
    let long = format!(
        r#"{{"type":"op","op":[{{"i":"{}"}}],"revision":1}}"#,
        "z".repeat(80)
    );
    h.send(a, &long);
    assert_eq!(
        h.reply(a),
        error(&format!(
            "Message too large: {} bytes (max 100)",
            long.len()
        ))
    );
    h.send(a, r#"{"type":"op","op":[{"i":"1234"}],"revision":1}"#);
    assert_eq!(
        h.reply(a),
        error("Document too large: 6 UTF-16 code units (max 5)")
    );
    assert_eq!(h.text("doc-1"), "ab");
    assert!(h.server.is_open(a));
}

#[test]
fn a_slow_consumer_is_closed_and_loses_its_queue() {
    let mut config = config();
    config.max_outbound_bytes = 200;
    let mut h = Harness::new(config);
    let (a, slow) = (h.open(), h.open());
    for r in 0..10u64 {
        h.send(
            a,
            &format!(r#"{{"type":"op","op":[{{"i":"0123456789"}}],"revision":{r}}}"#),
        );
        // a's frames are written at once; slow's never are.
        while let Some(t) = h.server.poll_transmit() {
            match t {
                OtTransmit::Frame { session, bytes } if session == a => {
                    h.server.handle_sent(h.now, session, bytes.len())
                }
                OtTransmit::Close { session, code, .. } => {
                    assert_eq!((session, code), (slow, CloseCode::SLOW_CONSUMER));
                    assert!(r >= 3, "closed at {r}");
                }
                _ => {}
            }
        }
        assert!(h.server.outbound_bytes(slow).unwrap_or(0) <= 200);
    }
    assert!(!h.server.is_open(slow));
    assert_eq!(h.server.session_count(), 1);
    assert!(h.events().iter().any(|e| matches!(
        e,
        OtServerEvent::SessionClosed {
            reason: OtCloseReason::SlowConsumer,
            ..
        }
    )));
    // A single frame larger than the bound still goes out (a big snapshot).
    h.send(
        a,
        &format!(
            r#"{{"type":"op","op":[{{"r":100}},{{"i":"{}"}}],"revision":10}}"#,
            "y".repeat(300)
        ),
    );
    assert_eq!(h.reply(a), r#"{"type":"ack","revision":11}"#);
    h.send(a, r#"{"type":"snapshot"}"#);
    let snapshot = h.reply(a);
    assert!(snapshot.len() > 400, "{snapshot}");
}

#[test]
fn limits_on_sessions_events_and_shutdown() {
    let mut config = config();
    config.max_sessions = 2;
    config.max_events = 3;
    let mut h = Harness::new(config);
    let (a, b) = (h.open(), h.open());
    assert_eq!(
        h.server.handle_handshake(h.now, &Handshake::new("/ot", "")),
        OtHandshakeOutcome::Reject {
            status: 503,
            reason: "too many sessions".into()
        }
    );
    for r in 0..5 {
        h.send(a, &format!(r#"{{"type":"op","op":[],"revision":{r}}}"#));
    }
    h.transmits();
    assert_eq!(h.server.dropped_events(), 2);
    assert!(matches!(
        &h.events()[..],
        [
            OtServerEvent::Applied { revision: 3, .. },
            _,
            OtServerEvent::Applied { revision: 5, .. }
        ]
    ));
    // A closed socket frees its place.
    h.server.handle_disconnected(h.now, b);
    assert!(h.server.document("doc-1").unwrap().members() == [a]);
    let c = h.open();
    h.server.shutdown(h.now);
    assert_eq!(
        h.transmits(),
        [
            OtTransmit::Close {
                session: a,
                code: CloseCode::GOING_AWAY,
                reason: "server shutting down".into()
            },
            OtTransmit::Close {
                session: c,
                code: CloseCode::GOING_AWAY,
                reason: "server shutting down".into()
            },
        ]
    );
    assert_eq!(h.server.session_count(), 0);
    assert!(matches!(
        h.server.handle_handshake(h.now, &Handshake::new("/ot", "")),
        OtHandshakeOutcome::Reject { status: 503, .. }
    ));
}

#[test]
fn a_closed_session_gets_nothing_more() {
    let mut h = Harness::new(config());
    let (a, b) = (h.open(), h.open());
    h.send(a, r#"{"type":"op","op":[{"i":"x"}],"revision":0}"#);
    // b's socket closes before its frame was polled: the frame is dropped.
    h.server.handle_disconnected(h.now, b);
    assert_eq!(
        h.frames(),
        [(a, r#"{"type":"ack","revision":1}"#.to_owned())]
    );
    h.send(b, r#"{"type":"op","op":[{"i":"y"}],"revision":1}"#);
    assert!(h.frames().is_empty());
    h.server.close_session(h.now, a, CloseCode::NORMAL, "bye");
    h.send(a, r#"{"type":"op","op":[{"i":"y"}],"revision":1}"#);
    assert_eq!(
        h.transmits(),
        [OtTransmit::Close {
            session: a,
            code: CloseCode::NORMAL,
            reason: "bye".into()
        }]
    );
    assert_eq!(h.text("doc-1"), "x");
    assert_eq!(h.server.session_count(), 0);
}

#[test]
fn the_history_is_bounded_in_bytes_too() {
    let mut config = config();
    config.max_history = 0;
    config.max_history_bytes = 1000;
    let mut h = Harness::new(config);
    let a = h.open();
    for r in 0..20 {
        let text = "x".repeat(100);
        h.send(
            a,
            &format!(r#"{{"type":"op","op":[{{"i":"{text}"}}],"revision":{r}}}"#),
        );
    }
    h.frames();
    // Each op is 100 bytes of text plus its component: at most 9 fit in 1000 bytes.
    let kept = h.server.document("doc-1").unwrap().history_len();
    assert!((1..10).contains(&kept), "{kept}");
    h.send(a, r#"{"type":"op","op":[],"revision":5}"#);
    let reply = h.reply(a);
    assert!(reply.contains("older than the history kept"), "{reply}");
}

#[test]
fn configurations_that_cannot_work_are_refused() {
    let mut config = OtServerConfig::default();
    config.rate_limit_window = Duration::ZERO;
    assert_eq!(
        OtServer::new(config).unwrap_err(),
        syncmux::ConfigError::RateLimitWindow
    );
    let mut config = OtServerConfig::default();
    config.rate_limit_messages = 0;
    config.rate_limit_window = Duration::ZERO;
    assert!(OtServer::new(config).is_ok());
}

/// A stream's `init`: the document's text and revision, then the document's ops as to any
/// member. A stream of another document leaves `doc-1` (its client would apply doc-1's ops
/// to its own document); one of `doc-1` stays in it.
#[test]
fn init_opens_a_session_on_one_document() {
    let mut h = Harness::new(config());
    let writer = h.open();
    h.send(writer, r#"{"type":"op","op":[{"i":"ab"}],"revision":0}"#);
    h.send(
        writer,
        r#"{"type":"op","op":[{"i":"x"}],"revision":0,"docId":"d2"}"#,
    );
    h.frames();

    let (on_one, on_two) = (h.open(), h.open());
    h.server.handle_init(h.now, on_one, None);
    assert_eq!(
        h.reply(on_one),
        r#"{"type":"init","snapshot":"ab","revision":1}"#
    );
    h.server.handle_init(h.now, on_two, Some("d2"));
    assert_eq!(
        h.reply(on_two),
        r#"{"type":"init","snapshot":"x","revision":1,"docId":"d2"}"#
    );
    assert_eq!(h.server.joined(on_two), ["d2"]);

    h.send(
        writer,
        r#"{"type":"op","op":[{"r":2},{"i":"c"}],"revision":1}"#,
    );
    let others: Vec<_> = h
        .frames()
        .into_iter()
        .filter(|(s, _)| *s != writer)
        .collect();
    assert_eq!(
        others,
        [(
            on_one,
            r#"{"type":"op","op":[{"r":2},{"i":"c"}],"revision":2}"#.to_owned()
        )],
        "doc-1's op reaches its stream, not d2's"
    );
}

/// A `docId` a limit refuses is an error frame, as for a snapshot request.
#[test]
fn init_of_a_refused_document_is_an_error() {
    let mut c = config();
    c.max_doc_id_len = 4;
    let mut h = Harness::new(c);
    let s = h.open();
    h.server.handle_init(h.now, s, Some("too-long"));
    assert_eq!(
        h.reply(s),
        r#"{"type":"error","message":"docId too long: 8 bytes (max 4)","docId":"too-long"}"#
    );
}

/// What a poll answers: the ops after a revision, each with the revision it made; nothing
/// at the head; `None` once the history no longer holds them.
#[test]
fn ops_since_lists_the_ops_after_a_revision() {
    let mut c = config();
    c.max_history = 2;
    let mut h = Harness::new(c);
    let s = h.open();
    for (revision, letter) in ["a", "b", "c"].into_iter().enumerate() {
        let op = format!(
            r#"{{"type":"op","op":[{{"r":{revision}}},{{"i":"{letter}"}}],"revision":{revision}}}"#
        );
        h.send(s, &op);
    }
    h.frames();
    let doc = h.server.document("doc-1").unwrap();
    let since = |r| {
        doc.ops_since(r).map(|ops| {
            ops.map(|(v, op)| (v, serde_json::to_string(op).unwrap()))
                .collect::<Vec<_>>()
        })
    };
    assert_eq!(
        since(1),
        Some(vec![
            (2, r#"[{"r":1},{"i":"b"}]"#.to_owned()),
            (3, r#"[{"r":2},{"i":"c"}]"#.to_owned())
        ])
    );
    assert_eq!(since(3), Some(vec![]));
    assert_eq!(since(9), Some(vec![]));
    assert_eq!(since(0), None, "revision 1's op is no longer kept");
}
