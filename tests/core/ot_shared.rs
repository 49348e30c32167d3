//! The OT server's shared-history mode, sans-IO: ops become `Commit` events answered later,
//! ops of other servers come in by revision, and every connection still gets a document's
//! frames in revision order; a gap asks for the missing revisions (`Fetch`) and holds the
//! ops after it until they come.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use syncmux::ot::{
    OtCommitId, OtHandshakeOutcome, OtServer, OtServerConfig, OtServerEvent, OtSessionId,
    OtTransmit, TextOp,
};
use syncmux::{Handshake, Instant};

/// The default configuration, every op sent on at once: these tests read the frames an
/// input makes right after it (the broadcast delay has tests of its own).
fn config() -> OtServerConfig {
    let mut config = OtServerConfig::default();
    config.broadcast_delay = Duration::ZERO;
    config
}

fn shared() -> OtServer {
    let mut config = config();
    config.shared_history = true;
    OtServer::new(config).unwrap()
}

fn open(server: &mut OtServer) -> OtSessionId {
    match server.handle_handshake(Instant::ZERO, &Handshake::new("/ot", "")) {
        OtHandshakeOutcome::Accept { session } => session,
        other => panic!("{other:?}"),
    }
}

fn frames(server: &mut OtServer) -> Vec<(syncmux::ot::OtSessionId, String)> {
    let mut out = Vec::new();
    while let Some(t) = server.poll_transmit() {
        if let OtTransmit::Frame { session, bytes } = t {
            server.handle_sent(Instant::ZERO, session, bytes.len());
            out.push((session, String::from_utf8(bytes.to_vec()).unwrap()));
        }
    }
    out
}

fn events(server: &mut OtServer) -> Vec<OtServerEvent> {
    core::iter::from_fn(|| server.poll_event()).collect()
}

/// The commit the last op asked for.
fn next_commit(server: &mut OtServer) -> OtCommitId {
    let commit = events(server).into_iter().find_map(|e| match e {
        OtServerEvent::Commit { commit, .. } => Some(commit),
        _ => None,
    });
    commit.expect("a commit")
}

/// A loaded, empty `doc-1` with two members, the first of whom sent `{"i":"a"}` made on
/// revision 0 (its commit asked for, not answered): the server and the two sessions.
fn alice_sends_an_op() -> (OtServer, OtSessionId, OtSessionId) {
    let now = Instant::ZERO;
    let mut server = shared();
    server.handle_remote_snapshot(now, "doc-1", 0, String::new());
    let (alice, bob) = (open(&mut server), open(&mut server));
    server.handle_message(
        now,
        alice,
        Bytes::from(r#"{"type":"op","op":[{"i":"a"}],"revision":0}"#),
    );
    (server, alice, bob)
}

/// An op is not applied nor acked until its commit is answered; the ack and the others' op
/// then go out in revision order, after a remote op that came first.
#[test]
fn an_op_waits_for_its_commit_and_goes_out_in_revision_order() {
    let now = Instant::ZERO;
    let (mut server, alice, bob) = alice_sends_an_op();
    assert!(frames(&mut server).is_empty(), "nothing before the commit");
    let commit = events(&mut server)
        .into_iter()
        .find_map(|e| match e {
            OtServerEvent::Commit {
                commit, base, text, ..
            } => {
                assert_eq!((base, text.as_str()), (0, "a"));
                Some(commit)
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(server.document("doc-1").unwrap().revision(), 0);
    // Another server's op was revision 1; ours, transformed, is 2.
    server.handle_committed(now, commit, Ok((2, TextOp::new().retain(1).insert("a"))));
    assert!(frames(&mut server).is_empty(), "revision 1 is missing");
    let fetch = events(&mut server);
    assert!(
        fetch
            .iter()
            .any(|e| matches!(e, OtServerEvent::Fetch { from: 1, to: 1, .. })),
        "{fetch:?}"
    );
    server.handle_remote_op(now, "doc-1", 1, TextOp::new().insert("b"));
    assert_eq!(
        frames(&mut server),
        [
            (
                alice,
                r#"{"type":"op","op":[{"i":"b"}],"revision":1}"#.to_owned()
            ),
            (
                bob,
                r#"{"type":"op","op":[{"i":"b"}],"revision":1}"#.to_owned()
            ),
            (alice, r#"{"type":"ack","revision":2}"#.to_owned()),
            (
                bob,
                r#"{"type":"op","op":[{"r":1},{"i":"a"}],"revision":2}"#.to_owned()
            ),
        ]
    );
    assert_eq!(server.document("doc-1").unwrap().text(), "ba");
}

/// A local op read back from the shared history before its commit is answered (another
/// server's next op showed a gap, and the fetch found ours there) is still the sender's: it
/// waits for the commit, and its sender gets the ack, never its own op; the ops after it
/// follow in order.
#[test]
fn an_op_read_back_before_its_commit_is_answered_is_acked_to_its_sender() {
    let now = Instant::ZERO;
    let (mut server, alice, bob) = alice_sends_an_op();
    let commit = next_commit(&mut server);
    // Another server's revision 2 comes first, then the fetch reads revision 1: ours.
    server.handle_remote_op(now, "doc-1", 2, TextOp::new().retain(1).insert("b"));
    server.handle_remote_op(now, "doc-1", 1, TextOp::new().insert("a"));
    assert!(
        frames(&mut server).is_empty(),
        "held for the commit in flight"
    );
    server.handle_committed(now, commit, Ok((1, TextOp::new().insert("a"))));
    assert_eq!(
        frames(&mut server),
        [
            (alice, r#"{"type":"ack","revision":1}"#.to_owned()),
            (
                bob,
                r#"{"type":"op","op":[{"i":"a"}],"revision":1}"#.to_owned()
            ),
            (
                alice,
                r#"{"type":"op","op":[{"r":1},{"i":"b"}],"revision":2}"#.to_owned()
            ),
            (
                bob,
                r#"{"type":"op","op":[{"r":1},{"i":"b"}],"revision":2}"#.to_owned()
            ),
        ]
    );
    assert_eq!(server.document("doc-1").unwrap().text(), "ab");

    // A refused commit lets what waited behind it go.
    server.handle_message(
        now,
        bob,
        Bytes::from(r#"{"type":"op","op":[{"i":"x"}],"revision":2}"#),
    );
    let commit = next_commit(&mut server);
    server.handle_remote_op(now, "doc-1", 3, TextOp::new().retain(2).insert("c"));
    assert!(
        frames(&mut server).is_empty(),
        "held for the commit in flight"
    );
    server.handle_committed(now, commit, Err("the store failed".to_owned()));
    let sent = frames(&mut server);
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert_eq!(server.document("doc-1").unwrap().text(), "abc");
}

/// A refused commit is an error frame to the sender, and nothing is applied.
#[test]
fn a_refused_commit_is_an_error_frame() {
    let now = Instant::ZERO;
    let mut server = shared();
    let alice = open(&mut server);
    server.handle_message(
        now,
        alice,
        Bytes::from(r#"{"type":"op","op":[{"i":"a"}],"revision":0}"#),
    );
    let commit = next_commit(&mut server);
    server.handle_committed(now, commit, Err("store down".to_owned()));
    assert_eq!(
        frames(&mut server),
        [(
            alice,
            r#"{"type":"error","message":"store down"}"#.to_owned()
        )]
    );
    assert_eq!(server.document("doc-1").unwrap().revision(), 0);
}

/// Without a shared history the server's own history is the truth: another server's op, a
/// head and a snapshot handed to it change nothing and send nothing (found by the fuzz
/// target: a remote op was applied, and the next local op's revision skipped one).
#[test]
fn without_a_shared_history_remote_inputs_are_ignored() {
    let now = Instant::ZERO;
    let mut server = OtServer::new(config()).unwrap();
    let (alice, _bob) = (open(&mut server), open(&mut server));
    server.handle_remote_op(now, "doc-1", 1, TextOp::new().insert("remote"));
    server.handle_remote_head(now, "doc-1", 5);
    server.handle_remote_snapshot(now, "doc-1", 7, "snapshot".to_owned());
    assert!(frames(&mut server).is_empty());
    assert!(events(&mut server).is_empty());
    let doc = server.document("doc-1").unwrap();
    assert_eq!((doc.revision(), doc.text()), (0, ""));
    server.handle_message(
        now,
        alice,
        Bytes::from(r#"{"type":"op","op":[{"i":"a"}],"revision":0}"#),
    );
    let sent = frames(&mut server);
    assert!(
        sent.contains(&(alice, r#"{"type":"ack","revision":1}"#.to_owned())),
        "{sent:?}"
    );
}

/// A snapshot asked for while the document's copy waits for its first snapshot is not
/// answered with the empty copy: it waits, and is answered with the shared text — before
/// the ops that came after that snapshot, so the requester gets the text, then every op
/// after it, in order. Answered at once (with the empty copy) it would tell the client
/// revision 0 of a document Redis holds at 2.
#[test]
fn a_snapshot_asked_for_while_loading_is_answered_with_the_shared_text() {
    let now = Instant::ZERO;
    let mut server = shared();
    let (alice, bob) = (open(&mut server), open(&mut server));
    server.handle_message(now, alice, Bytes::from(r#"{"type":"snapshot"}"#));
    server.handle_message(
        now,
        bob,
        Bytes::from(r#"{"type":"snapshot","docId":"doc-1","opId":"x","revision":1}"#),
    );
    assert!(frames(&mut server).is_empty(), "nothing while loading");
    // Revision 3 comes on the channel before the snapshot (at 2) is read.
    server.handle_remote_op(now, "doc-1", 3, TextOp::new().retain(2).insert("!"));
    assert!(frames(&mut server).is_empty(), "nothing while loading");
    server.handle_remote_snapshot(now, "doc-1", 2, "hi".to_owned());
    assert_eq!(
        frames(&mut server),
        [
            (alice, r#"{"type":"snapshot","revision":2,"text":"hi"}"#.to_owned()),
            (
                bob,
                r#"{"type":"snapshot","revision":2,"text":"hi","docId":"doc-1","opStatus":"unknown"}"#
                    .to_owned()
            ),
            (alice, r#"{"type":"op","op":[{"r":2},{"i":"!"}],"revision":3}"#.to_owned()),
            (bob, r#"{"type":"op","op":[{"r":2},{"i":"!"}],"revision":3}"#.to_owned()),
        ]
    );
    // Loaded: answered at once.
    server.handle_message(now, alice, Bytes::from(r#"{"type":"snapshot"}"#));
    assert_eq!(
        frames(&mut server),
        [(
            alice,
            r#"{"type":"snapshot","revision":3,"text":"hi!"}"#.to_owned()
        )]
    );
}

/// A head polled while the document waits for its first snapshot asks for nothing then
/// (the snapshot may hold it all); once the snapshot comes, the ops it lacks up to that head
/// are fetched, and only those. Fetched at once it would ask for the whole history, which
/// the snapshot makes useless; dropped, the ops between the snapshot and the head would
/// wait for the next poll.
#[test]
fn a_head_seen_while_loading_is_fetched_after_the_snapshot() {
    let now = Instant::ZERO;
    let mut server = shared();
    let _ = events(&mut server);
    server.handle_remote_head(now, "doc-1", 5);
    assert!(events(&mut server).is_empty(), "nothing while loading");
    server.handle_remote_snapshot(now, "doc-1", 3, "abc".to_owned());
    let fetches: Vec<(u64, u64)> = events(&mut server)
        .into_iter()
        .filter_map(|e| match e {
            OtServerEvent::Fetch { from, to, .. } => Some((from, to)),
            _ => None,
        })
        .collect();
    assert_eq!(fetches, [(4, 5)]);
    // A snapshot at the head leaves nothing to fetch.
    let mut server = shared();
    server.handle_remote_head(now, "doc-1", 5);
    server.handle_remote_snapshot(now, "doc-1", 5, "abcde".to_owned());
    assert!(!events(&mut server)
        .iter()
        .any(|e| matches!(e, OtServerEvent::Fetch { .. })));
}

/// With a shared history a copy is a cache: at `max_documents`, a new document takes the
/// place of the copy whose last member left longest ago (`DocumentDropped`), never of one
/// with members; without one free, or without a shared history (where the server's copy is
/// the only one), the new document is refused as before. Without dropping, a server
/// refuses every new document once it has served `max_documents`.
#[test]
fn at_the_document_limit_an_idle_copy_makes_room() {
    let now = Instant::ZERO;
    for shared_history in [true, false] {
        let mut config = config();
        config.shared_history = shared_history;
        config.max_documents = 3;
        let mut server = OtServer::new(config).unwrap();
        let ask = |doc: &str| Bytes::from(format!(r#"{{"type":"snapshot","docId":"{doc}"}}"#));
        let keep = open(&mut server);
        for doc in ["x", "y"] {
            let visitor = open(&mut server);
            server.handle_message(now, visitor, ask(doc));
            server.handle_disconnected(now, visitor);
        }
        let _ = (frames(&mut server), events(&mut server));
        server.handle_message(now, keep, ask("z"));
        let dropped: Vec<String> = events(&mut server)
            .into_iter()
            .filter_map(|e| match e {
                OtServerEvent::DocumentDropped { doc } => Some(doc.to_string()),
                _ => None,
            })
            .collect();
        if shared_history {
            // x was left first; doc-1 has a member.
            assert_eq!(dropped, ["x"]);
            assert!(server.document("x").is_none() && server.document("z").is_some());
            assert_eq!(server.document_count(), 3);
            // Now every copy has a member or is y: y goes, then nothing can.
            server.handle_message(now, keep, ask("w"));
            assert!(server.document("y").is_none());
            server.handle_message(now, keep, ask("v"));
        } else {
            assert!(dropped.is_empty());
            assert!(server.document("x").is_some() && server.document("z").is_none());
        }
        let refused = frames(&mut server);
        assert!(
            refused
                .iter()
                .any(|(_, f)| f.contains("Too many documents (max 3)")),
            "{refused:?}"
        );
    }
}

/// A stream's `init` on a document still loading waits for its first snapshot, like a
/// snapshot request, and comes before the ops after it.
#[test]
fn an_init_while_loading_waits_for_the_shared_text() {
    let now = Instant::ZERO;
    let mut server = shared();
    let stream = open(&mut server);
    server.handle_init(now, stream, Some("d2"));
    assert!(frames(&mut server).is_empty(), "nothing while loading");
    server.handle_remote_op(now, "d2", 3, TextOp::new().retain(2).insert("!"));
    server.handle_remote_snapshot(now, "d2", 2, "hi".to_owned());
    assert_eq!(
        frames(&mut server),
        [
            (
                stream,
                r#"{"type":"init","snapshot":"hi","revision":2,"docId":"d2"}"#.to_owned()
            ),
            (
                stream,
                r#"{"type":"op","op":[{"r":2},{"i":"!"}],"revision":3,"docId":"d2"}"#.to_owned()
            ),
        ]
    );
}

/// The shared history lost revisions the copy holds (a failover to a replica without
/// them): the members are closed with 4503 to load the document again, and the copy is
/// dropped, so that the next member loads it from the shared history rather than from a
/// copy ahead of it.
#[test]
fn a_history_that_lost_revisions_drops_the_copy_and_closes_its_members() {
    let now = Instant::ZERO;
    let (mut server, alice, bob) = alice_sends_an_op();
    let commit = next_commit(&mut server);
    server.handle_committed(now, commit, Ok((1, TextOp::new().insert("a"))));
    let _ = frames(&mut server);
    assert_eq!(server.document("doc-1").unwrap().revision(), 1);
    assert_eq!(server.handle_history_lost(now, "doc-1"), 2);
    let mut closed = Vec::new();
    while let Some(t) = server.poll_transmit() {
        if let OtTransmit::Close { session, code, .. } = t {
            closed.push((session, code));
        }
    }
    closed.sort();
    let slow = syncmux::CloseCode::SLOW_CONSUMER;
    assert_eq!(closed, [(alice, slow), (bob, slow)]);
    assert!(server.document("doc-1").is_none());
    assert!(events(&mut server)
        .iter()
        .any(|e| matches!(e, OtServerEvent::DocumentDropped { doc } if &**doc == "doc-1")));
    // A new member loads the document afresh.
    let carol = open(&mut server);
    server.handle_message(now, carol, Bytes::from(r#"{"type":"snapshot"}"#));
    assert!(events(&mut server)
        .iter()
        .any(|e| matches!(e, OtServerEvent::DocumentCreated { doc } if &**doc == "doc-1")));
    // Nothing to do for a document this server does not hold.
    assert_eq!(server.handle_history_lost(now, "other"), 0);
}
