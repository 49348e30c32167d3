//! The OT client: open-ot's three states, and what the seed's client lacks —
//! every revision checked, recovery by snapshot from gaps, error frames and reconnects, its
//! unacknowledged op sent again rebased and never applied twice (against a real
//! `OtServer` too), refusals backed off, and its queues bounded.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use syncmux::ot::{
    OpError, OtClient, OtClientConfig, OtClientEvent, OtClientState, OtHandshakeOutcome, OtServer,
    OtServerConfig, OtSessionId, OtTransmit, ResyncReason, TextOp,
};
use syncmux::Handshake;
use syncmux::Instant;

fn client(config: OtClientConfig) -> OtClient {
    OtClient::new(config).unwrap()
}

fn recv(c: &mut OtClient, frame: &str) {
    c.handle_message(Instant::ZERO, Bytes::from(frame.to_owned()));
}

fn sent(c: &mut OtClient) -> Vec<String> {
    std::iter::from_fn(|| c.poll_transmit())
        .map(|b| String::from_utf8(b.to_vec()).unwrap())
        .collect()
}

fn events(c: &mut OtClient) -> Vec<OtClientEvent> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

/// A client on `doc-1`, connected and synchronized at revision `revision` with `text`.
fn synced(text: &str, revision: u64) -> OtClient {
    let mut c = client(OtClientConfig::new("c1"));
    c.handle_connected(Instant::ZERO);
    assert_eq!(sent(&mut c), [r#"{"type":"snapshot"}"#]);
    recv(
        &mut c,
        &format!(
            r#"{{"type":"snapshot","revision":{revision},"text":{}}}"#,
            serde_json::to_string(text).unwrap()
        ),
    );
    assert_eq!(c.state(), OtClientState::Synchronized);
    events(&mut c);
    c
}

fn edit(c: &mut OtClient, op: TextOp) {
    c.edit(Instant::ZERO, op).unwrap();
}

#[test]
fn one_op_in_flight_and_the_edits_made_meanwhile_composed() {
    let mut c = synced("abc", 3);
    edit(&mut c, TextOp::new().insert("1"));
    assert_eq!(
        sent(&mut c),
        [r#"{"type":"op","op":[{"i":"1"}],"revision":3,"opId":"c1-1"}"#]
    );
    assert_eq!(c.state(), OtClientState::AwaitingAck);
    edit(&mut c, TextOp::new().retain(4).insert("2"));
    edit(&mut c, TextOp::new().retain(5).insert("3"));
    assert!(sent(&mut c).is_empty());
    assert_eq!(c.state(), OtClientState::AwaitingWithBuffer);
    assert_eq!(c.text(), "1abc23");
    recv(&mut c, r#"{"type":"ack","revision":4}"#);
    assert_eq!(
        sent(&mut c),
        [r#"{"type":"op","op":[{"r":4},{"i":"23"}],"revision":4,"opId":"c1-2"}"#]
    );
    recv(&mut c, r#"{"type":"ack","revision":5}"#);
    assert_eq!((c.state(), c.revision()), (OtClientState::Synchronized, 5));
    assert_eq!(
        events(&mut c),
        [
            OtClientEvent::Acked { revision: 4 },
            OtClientEvent::Acked { revision: 5 }
        ]
    );
}

#[test]
fn remote_ops_are_transformed_past_local_edits() {
    let mut c = synced("abc", 1);
    edit(&mut c, TextOp::new().insert("X"));
    sent(&mut c);
    edit(&mut c, TextOp::new().retain(4).delete(0).insert("Z"));
    // Someone else inserted at the same place: the server puts their text first.
    recv(&mut c, r#"{"type":"op","op":[{"i":"Y"}],"revision":2}"#);
    assert_eq!(c.text(), "YXabcZ");
    assert_eq!(
        events(&mut c),
        [OtClientEvent::Changed {
            op: TextOp::new().insert("Y").retain(5)
        }]
    );
    recv(&mut c, r#"{"type":"ack","revision":3}"#);
    // The buffer went out transformed past the remote op.
    assert_eq!(
        sent(&mut c),
        [r#"{"type":"op","op":[{"r":5},{"i":"Z"}],"revision":3,"opId":"c1-2"}"#]
    );
}

#[test]
fn a_gap_in_revisions_means_fetching_again() {
    let mut c = synced("abc", 1);
    recv(&mut c, r#"{"type":"op","op":[{"i":"x"}],"revision":3}"#);
    assert_eq!(c.text(), "abc");
    assert_eq!(c.state(), OtClientState::Fetching);
    assert_eq!(
        events(&mut c),
        [OtClientEvent::Resyncing {
            reason: ResyncReason::RevisionGap {
                expected: 2,
                got: 3
            }
        }]
    );
    assert_eq!(sent(&mut c), [r#"{"type":"snapshot"}"#]);
    // Ops before the snapshot's answer are in it: ignored.
    recv(&mut c, r#"{"type":"op","op":[{"i":"y"}],"revision":4}"#);
    recv(&mut c, r#"{"type":"snapshot","revision":4,"text":"yxabc"}"#);
    assert_eq!((c.text(), c.revision()), ("yxabc", 4));
    assert_eq!(
        events(&mut c),
        [
            OtClientEvent::Changed {
                op: TextOp::new().insert("yx")
            },
            OtClientEvent::Resynced {
                revision: 4,
                uncertain: false
            }
        ]
    );
    recv(&mut c, r#"{"type":"op","op":[{"d":1}],"revision":5}"#);
    assert_eq!(c.text(), "xabc");
}

#[test]
fn an_ack_with_the_wrong_revision_means_fetching_again() {
    let mut c = synced("", 7);
    edit(&mut c, TextOp::new().insert("a"));
    sent(&mut c);
    recv(&mut c, r#"{"type":"ack","revision":9}"#);
    assert_eq!(c.state(), OtClientState::Fetching);
    assert_eq!(
        sent(&mut c),
        [r#"{"type":"snapshot","opId":"c1-1","revision":7}"#]
    );
    // The snapshot says it was applied: nothing is sent again.
    recv(
        &mut c,
        r#"{"type":"snapshot","revision":9,"text":"ba","opStatus":"applied","opRevision":8}"#,
    );
    assert_eq!((c.text(), c.state()), ("ba", OtClientState::Synchronized));
    assert!(sent(&mut c).is_empty());
}

#[test]
fn an_unreadable_frame_or_a_reply_to_nothing_means_fetching_again() {
    for frame in [
        "{",
        r#"{"type":"op","op":[{"r":9}],"revision":2}"#, // does not apply
        r#"{"type":"ack","revision":2}"#,               // nothing was sent
        r#"{"type":"mystery"}"#,
    ] {
        let mut c = synced("abc", 1);
        recv(&mut c, frame);
        assert_eq!(c.state(), OtClientState::Fetching, "{frame}");
        assert_eq!(sent(&mut c), [r#"{"type":"snapshot"}"#], "{frame}");
    }
}

#[test]
fn a_refused_op_is_rebased_and_sent_again_after_a_growing_delay() {
    let mut c = synced("abc", 1);
    let t0 = Instant::ZERO;
    edit(&mut c, TextOp::new().retain(3).insert("!"));
    sent(&mut c);
    recv(
        &mut c,
        r#"{"type":"error","message":"Rate limit exceeded"}"#,
    );
    assert_eq!(c.state(), OtClientState::Fetching);
    assert_eq!(
        events(&mut c),
        [
            OtClientEvent::ServerError {
                message: "Rate limit exceeded".into()
            },
            OtClientEvent::Resyncing {
                reason: ResyncReason::Refused
            }
        ]
    );
    assert!(sent(&mut c).is_empty());
    assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(1)));
    c.handle_timeout(t0 + Duration::from_millis(999));
    assert!(sent(&mut c).is_empty());
    c.handle_timeout(t0 + Duration::from_secs(1));
    assert_eq!(
        sent(&mut c),
        [r#"{"type":"snapshot","opId":"c1-1","revision":1}"#]
    );
    // Meanwhile someone prepended: the op is rebased, and keeps its id.
    recv(
        &mut c,
        r#"{"type":"snapshot","revision":2,"text":">abc","opStatus":"absent"}"#,
    );
    assert_eq!(c.text(), ">abc!");
    assert_eq!(
        sent(&mut c),
        [r#"{"type":"op","op":[{"r":4},{"i":"!"}],"revision":2,"opId":"c1-1"}"#]
    );
    // Refused again: twice the delay.
    recv(
        &mut c,
        r#"{"type":"error","message":"Rate limit exceeded"}"#,
    );
    assert_eq!(
        c.poll_timeout(),
        Some(t0 + Duration::from_secs(1) + Duration::from_secs(2))
    );
}

/// A client at "abc" (revision 1) whose insert of "1" was sent and not acknowledged when
/// its connection dropped, connected again and asking what became of the op.
fn reconnected_with_an_op_unacked() -> OtClient {
    let mut c = synced("abc", 1);
    edit(&mut c, TextOp::new().insert("1"));
    sent(&mut c);
    c.handle_disconnected(Instant::ZERO);
    c.handle_connected(Instant::ZERO);
    assert_eq!(
        sent(&mut c),
        [r#"{"type":"snapshot","opId":"c1-1","revision":1}"#]
    );
    c
}

#[test]
fn after_a_reconnect_the_client_asks_what_became_of_its_op() {
    // Applied: not sent again; the edits made while away go out as a new op.
    let mut c = synced("abc", 1);
    edit(&mut c, TextOp::new().insert("1"));
    sent(&mut c);
    c.handle_disconnected(Instant::ZERO);
    assert_eq!(c.state(), OtClientState::Disconnected);
    edit(&mut c, TextOp::new().retain(4).insert("2"));
    assert!(sent(&mut c).is_empty());
    c.handle_connected(Instant::ZERO);
    assert_eq!(
        sent(&mut c),
        [r#"{"type":"snapshot","opId":"c1-1","revision":1}"#]
    );
    recv(
        &mut c,
        r#"{"type":"snapshot","revision":3,"text":"1abc?","opStatus":"applied","opRevision":2}"#,
    );
    // At a tie the server's text comes first, as the server itself would order it.
    assert_eq!(c.text(), "1abc?2");
    assert_eq!(
        sent(&mut c),
        [r#"{"type":"op","op":[{"r":5},{"i":"2"}],"revision":3,"opId":"c1-2"}"#]
    );

    // Absent: sent again, rebased, with the same id (a copy still in flight on the old
    // connection will be taken for what it is).
    let mut c = reconnected_with_an_op_unacked();
    recv(
        &mut c,
        r#"{"type":"snapshot","revision":2,"text":"abc?","opStatus":"absent"}"#,
    );
    assert_eq!(c.text(), "1abc?");
    assert_eq!(
        sent(&mut c),
        [r#"{"type":"op","op":[{"i":"1"},{"r":4}],"revision":2,"opId":"c1-1"}"#]
    );

    // Unknown: sent again too, and the application is told it may now appear twice.
    let mut c = reconnected_with_an_op_unacked();
    events(&mut c);
    recv(
        &mut c,
        r#"{"type":"snapshot","revision":900,"text":"abc","opStatus":"unknown"}"#,
    );
    assert_eq!(sent(&mut c).len(), 1);
    assert_eq!(
        events(&mut c),
        [OtClientEvent::Resynced {
            revision: 900,
            uncertain: true
        }]
    );
}

#[test]
fn ops_of_other_documents_are_ignored() {
    let mut c = client(OtClientConfig::new("c1").with_doc_id("notes"));
    c.handle_connected(Instant::ZERO);
    assert_eq!(sent(&mut c), [r#"{"type":"snapshot","docId":"notes"}"#]);
    recv(
        &mut c,
        r#"{"type":"snapshot","revision":0,"text":"","docId":"notes"}"#,
    );
    // Every connection is also in doc-1: its ops come without a docId.
    recv(
        &mut c,
        r#"{"type":"op","op":[{"i":"doc-1 text"}],"revision":1}"#,
    );
    recv(
        &mut c,
        r#"{"type":"op","op":[{"i":"other"}],"revision":1,"docId":"other"}"#,
    );
    assert_eq!((c.text(), c.state()), ("", OtClientState::Synchronized));
    recv(
        &mut c,
        r#"{"type":"op","op":[{"i":"mine"}],"revision":1,"docId":"notes"}"#,
    );
    assert_eq!(c.text(), "mine");
    edit(&mut c, TextOp::new().delete(1));
    assert_eq!(
        sent(&mut c),
        [r#"{"type":"op","op":[{"d":1}],"revision":1,"docId":"notes","opId":"c1-1"}"#]
    );
}

#[test]
fn local_edits_that_do_not_fit_are_refused() {
    let mut config = OtClientConfig::new("c1");
    config.max_document_len = 4;
    let mut c = client(config);
    assert_eq!(
        c.edit(Instant::ZERO, TextOp::new().retain(1)),
        Err(OpError::PastEnd {
            index: 0,
            kind: syncmux::ot::CountKind::Retain,
            count: 1,
            len: 0
        })
    );
    assert_eq!(
        c.edit(Instant::ZERO, TextOp::new().insert("12345")),
        Err(OpError::TooLong { len: 5, max: 4 })
    );
    c.edit(Instant::ZERO, TextOp::new().insert("😀")).unwrap();
    assert!(matches!(
        c.edit(Instant::ZERO, TextOp::new().retain(1).insert("x")),
        Err(OpError::SplitsSurrogatePair { index: 1 })
    ));
    assert_eq!(c.text(), "😀");
}

#[test]
fn unpolled_events_collapse_into_a_reset() {
    let mut config = OtClientConfig::new("c1");
    config.max_events = 4;
    let mut c = client(config);
    c.handle_connected(Instant::ZERO);
    recv(&mut c, r#"{"type":"snapshot","revision":0,"text":""}"#);
    for r in 1..=10 {
        recv(
            &mut c,
            &format!(
                r#"{{"type":"op","op":[{{"i":"{}"}}],"revision":{r}}}"#,
                r % 10
            ),
        );
    }
    let events = events(&mut c);
    assert!(events.len() <= 4, "{events:?}");
    // Reset carries the text at its point of the stream; the changes after it apply to it.
    let OtClientEvent::Reset { text } = &events[0] else {
        panic!("{events:?}")
    };
    let mut text = text.clone();
    for e in &events[1..] {
        if let OtClientEvent::Changed { op } = e {
            text = op.apply(&text).unwrap();
        }
    }
    assert_eq!(text, c.text());
}

// ---- against a real server ------------------------------------------------------------

struct Pair {
    server: OtServer,
    now: Instant,
}

impl Pair {
    fn new() -> Self {
        // Every op sent on at once, so that `pump` stops only when nothing is left.
        let mut config = OtServerConfig::default();
        config.broadcast_delay = Duration::ZERO;
        Pair {
            server: OtServer::new(config).unwrap(),
            now: Instant::ZERO,
        }
    }

    fn connect(&mut self, c: &mut OtClient) -> OtSessionId {
        let OtHandshakeOutcome::Accept { session } = self
            .server
            .handle_handshake(self.now, &Handshake::new("/ot", ""))
        else {
            panic!("refused")
        };
        c.handle_connected(self.now);
        session
    }

    /// Carries frames both ways until nothing moves.
    fn pump(&mut self, peers: &mut [(&mut OtClient, OtSessionId)]) {
        loop {
            let mut moved = false;
            for (c, session) in peers.iter_mut() {
                while let Some(frame) = c.poll_transmit() {
                    self.server.handle_message(self.now, *session, frame);
                    moved = true;
                }
            }
            while let Some(t) = self.server.poll_transmit() {
                if let OtTransmit::Frame { session, bytes } = t {
                    self.server.handle_sent(self.now, session, bytes.len());
                    if let Some((c, _)) = peers.iter_mut().find(|(_, s)| *s == session) {
                        c.handle_message(self.now, bytes);
                        moved = true;
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }
}

#[test]
fn a_lost_ack_does_not_apply_an_op_twice() {
    let mut pair = Pair::new();
    let mut c = client(OtClientConfig::new("c1"));
    let s1 = pair.connect(&mut c);
    pair.pump(&mut [(&mut c, s1)]);
    edit(&mut c, TextOp::new().insert("hello"));
    // The op reaches the server, then the connection drops before the ack comes back.
    let frame = c.poll_transmit().unwrap();
    pair.server.handle_message(pair.now, s1, frame);
    pair.server.handle_disconnected(pair.now, s1);
    c.handle_disconnected(pair.now);
    edit(&mut c, TextOp::new().retain(5).insert(" world"));
    let s2 = pair.connect(&mut c);
    pair.pump(&mut [(&mut c, s2)]);
    assert_eq!(pair.server.document("doc-1").unwrap().text(), "hello world");
    assert_eq!(
        (c.text(), c.state()),
        ("hello world", OtClientState::Synchronized)
    );
}

#[test]
fn a_late_copy_from_the_old_connection_is_not_applied_twice() {
    let mut pair = Pair::new();
    let (mut a, mut b) = (
        client(OtClientConfig::new("a")),
        client(OtClientConfig::new("b")),
    );
    let (a1, sb) = (pair.connect(&mut a), pair.connect(&mut b));
    pair.pump(&mut [(&mut a, a1), (&mut b, sb)]);
    edit(&mut a, TextOp::new().insert("A"));
    // The op is stuck in the old connection's socket while `a` reconnects.
    let stuck = a.poll_transmit().unwrap();
    a.handle_disconnected(pair.now);
    edit(&mut b, TextOp::new().insert("B"));
    let a2 = pair.connect(&mut a);
    pair.pump(&mut [(&mut a, a2), (&mut b, sb)]);
    // The server reads the old socket last: the copy is recognised, not applied.
    pair.server.handle_message(pair.now, a1, stuck);
    pair.server.handle_disconnected(pair.now, a1);
    pair.pump(&mut [(&mut a, a2), (&mut b, sb)]);
    let text = pair.server.document("doc-1").unwrap().text().to_owned();
    assert_eq!(text.matches('A').count(), 1, "{text}");
    assert_eq!((a.text(), b.text()), (text.as_str(), text.as_str()));
}

#[test]
fn the_retry_delay_stops_growing_at_its_maximum() {
    let mut config = OtClientConfig::new("c1");
    config.retry_delay = Duration::from_secs(1);
    config.max_retry_delay = Duration::from_secs(5);
    let mut c = client(config);
    let mut now = Instant::ZERO;
    c.handle_connected(now);
    sent(&mut c);
    let mut delays = Vec::new();
    for _ in 0..5 {
        recv(
            &mut c,
            r#"{"type":"error","message":"Too many documents (max 1)"}"#,
        );
        let at = c.poll_timeout().unwrap();
        delays.push((at - now).as_secs());
        now = at;
        c.handle_timeout(now);
        assert_eq!(sent(&mut c), [r#"{"type":"snapshot"}"#]);
    }
    assert_eq!(delays, [1, 2, 4, 5, 5]);
}

#[test]
fn configurations_that_cannot_work_are_refused() {
    use syncmux::ConfigError;
    for id in ["", "a\u{7}b", &"x".repeat(41)] {
        assert_eq!(
            OtClient::new(OtClientConfig::new(id)).unwrap_err(),
            ConfigError::ClientId
        );
    }
    assert_eq!(
        OtClient::new(OtClientConfig::new("c").with_doc_id("")).unwrap_err(),
        ConfigError::EmptyDocId
    );
}
