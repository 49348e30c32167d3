//! The OT document server fed arbitrary input sequences: handshakes (with and without the
//! right token), ops and snapshot requests built from fuzz bytes (naming few documents, so
//! they collide), free-form and garbage frames, pongs, stalled writes, socket closes,
//! application closes, shutdown, and time jumps (backwards too).
//!
//! Invariants: no panic; every bound holds (sessions, documents, joins per session, history,
//! document length, outbound bytes per session, the outbound queue, events); every frame
//! decodes as a `ServerMessage`; no output for a session after its close or termination;
//! each connection receives a document's revisions in order; every applied op, replayed on
//! a shadow copy, applies to the text before it (nothing invalid is logged) and the shadow
//! equals the server's text; the next timer is after `now` once `handle_timeout(now)` ran.
#![no_main]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use bytes::Bytes;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use serde_json::json;
use syncmux::ot::{
    utf16_len, OtHandshakeOutcome, OtServer, OtServerConfig, OtServerEvent, OtSessionId,
    OtTransmit, ServerMessage,
};
use syncmux::{AuthDecision, Handshake};
use syncmux::wire::CloseCode;
use syncmux::Instant;

const DOCS: [Option<&str>; 5] = [None, Some("doc-1"), Some("a"), Some("b"), Some("c")];

#[derive(Arbitrary, Debug)]
enum Comp {
    Retain(u8),
    Delete(u8),
    Insert(String),
    /// A component no client should send.
    Odd(u8),
}

#[derive(Arbitrary, Debug)]
enum Msg {
    Op {
        doc: u8,
        comps: Vec<Comp>,
        revision: u8,
        op_id: Option<u8>,
    },
    Snapshot {
        doc: u8,
        op_id: Option<u8>,
        revision: Option<u8>,
    },
    Free(String),
    Garbage(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Action {
    Open { good_token: bool },
    Send { s: u8, msg: Msg },
    Pong { s: u8 },
    Stall { s: u8, on: bool },
    Closed { s: u8 },
    Kick { s: u8 },
    Shutdown,
    Advance { ms: u16, scale: u8 },
    Backwards { ms: u16 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    rate_limit: u8,
    actions: Vec<Action>,
}

#[derive(Default)]
struct Session {
    stalled: bool,
    unsent: usize,
    closed: bool,
    seen: HashMap<String, u64>,
}

struct Run {
    server: OtServer,
    now: Instant,
    sessions: BTreeMap<OtSessionId, Session>,
    order: Vec<OtSessionId>,
    /// Every document's text and revision, rebuilt from the `Applied` events alone.
    shadow: HashMap<String, (String, u64)>,
}

fn config(input: &Input) -> OtServerConfig {
    let mut c = OtServerConfig::default().with_auth(|req| match req.token {
        Some("ok") => AuthDecision::allow(None),
        _ => AuthDecision::deny(401, "bad token"),
    });
    c.max_sessions = 6;
    c.max_documents = 4;
    c.max_documents_per_session = 3;
    c.max_history = 4;
    c.max_history_bytes = 2000;
    c.max_document_len = 200;
    c.max_op_components = 8;
    c.max_frame_len = 2048;
    c.max_doc_id_len = 16;
    c.max_outbound_bytes = 1500;
    c.max_events = 32;
    c.rate_limit_messages = u32::from(input.rate_limit % 30);
    c.rate_limit_window = Duration::from_secs(10);
    c.ping_interval = Duration::from_secs(15);
    c
}

impl Run {
    fn session(&self, s: u8) -> Option<OtSessionId> {
        (!self.order.is_empty()).then(|| self.order[usize::from(s) % self.order.len()])
    }

    fn frame(msg: Msg) -> Bytes {
        let value = match msg {
            Msg::Op {
                doc,
                comps,
                revision,
                op_id,
            } => {
                let op: Vec<_> = comps
                    .into_iter()
                    .map(|c| match c {
                        Comp::Retain(n) => json!({"r": n}),
                        Comp::Delete(n) => json!({"d": n}),
                        Comp::Insert(s) => json!({"i": s}),
                        Comp::Odd(n) => [json!({"r": -1}), json!({"x": 1}), json!(n), json!(null)]
                            [usize::from(n % 4)]
                        .clone(),
                    })
                    .collect();
                let mut v = json!({"type": "op", "op": op, "revision": revision});
                if let Some(d) = DOCS[usize::from(doc) % DOCS.len()] {
                    v["docId"] = json!(d);
                }
                if let Some(id) = op_id {
                    v["opId"] = json!(format!("c-{}", id % 8));
                }
                v
            }
            Msg::Snapshot {
                doc,
                op_id,
                revision,
            } => {
                let mut v = json!({"type": "snapshot"});
                if let Some(d) = DOCS[usize::from(doc) % DOCS.len()] {
                    v["docId"] = json!(d);
                }
                if let Some(id) = op_id {
                    v["opId"] = json!(format!("c-{}", id % 8));
                }
                if let Some(r) = revision {
                    v["revision"] = json!(r);
                }
                v
            }
            Msg::Free(text) => return Bytes::from(text),
            Msg::Garbage(bytes) => return Bytes::from(bytes),
        };
        Bytes::from(value.to_string())
    }

    fn apply(&mut self, action: Action) {
        let now = self.now;
        match action {
            Action::Open { good_token } => {
                let query = if good_token { "token=ok" } else { "token=no" };
                match self
                    .server
                    .handle_handshake(now, &Handshake::new("/", query))
                {
                    OtHandshakeOutcome::Accept { session } => {
                        assert!(good_token, "a bad token is refused");
                        assert!(self.sessions.insert(session, Session::default()).is_none());
                        self.order.push(session);
                    }
                    OtHandshakeOutcome::Reject { status, .. } => {
                        assert!(matches!(status, 401 | 503), "status {status}");
                    }
                    other => panic!("{other:?}"),
                }
            }
            Action::Send { s, msg } => {
                let Some(id) = self.session(s) else { return };
                self.server.handle_message(now, id, Self::frame(msg));
            }
            Action::Pong { s } => {
                let Some(id) = self.session(s) else { return };
                self.server.handle_pong(now, id);
            }
            Action::Stall { s, on } => {
                let Some(id) = self.session(s) else { return };
                let session = self
                    .sessions
                    .get_mut(&id)
                    .expect("listed sessions are known");
                session.stalled = on;
                if !on {
                    let bytes = std::mem::take(&mut session.unsent);
                    self.server.handle_sent(now, id, bytes);
                }
            }
            Action::Closed { s } => {
                let Some(id) = self.session(s) else { return };
                self.server.handle_disconnected(now, id);
                self.sessions.remove(&id);
                self.order.retain(|x| *x != id);
            }
            Action::Kick { s } => {
                let Some(id) = self.session(s) else { return };
                self.server
                    .close_session(now, id, CloseCode::NORMAL, "kick");
            }
            Action::Shutdown => self.server.shutdown(now),
            Action::Advance { ms, scale } => {
                let target = now + Duration::from_millis(u64::from(ms) * u64::from(scale % 64 + 1));
                while let Some(at) = self.server.poll_timeout().filter(|at| *at <= target) {
                    self.now = self.now.max(at);
                    self.server.handle_timeout(self.now);
                    self.drain();
                }
                self.now = target;
                self.server.handle_timeout(self.now);
                if let Some(at) = self.server.poll_timeout() {
                    assert!(at > self.now, "timer {at:?} not after now {:?}", self.now);
                }
            }
            Action::Backwards { ms } => {
                self.server
                    .handle_timeout(now - Duration::from_millis(u64::from(ms)));
            }
        }
    }

    fn drain(&mut self) {
        while let Some(t) = self.server.poll_transmit() {
            let id = match &t {
                OtTransmit::Frame { session, .. }
                | OtTransmit::Ping { session }
                | OtTransmit::Close { session, .. }
                | OtTransmit::Terminate { session } => *session,
                other => panic!("{other:?}"),
            };
            let session = self
                .sessions
                .get_mut(&id)
                .unwrap_or_else(|| panic!("a transmit for unknown session {id:?}"));
            assert!(!session.closed, "a transmit after the close of {id:?}");
            match t {
                OtTransmit::Frame { bytes, .. } => {
                    let message = ServerMessage::decode(&bytes).unwrap_or_else(|e| {
                        panic!("server frame does not decode ({e}): {bytes:?}")
                    });
                    let revision = match &message {
                        ServerMessage::Op {
                            revision, doc_id, ..
                        } => Some((doc_id, *revision, false)),
                        ServerMessage::Ack { revision, doc_id } => Some((doc_id, *revision, true)),
                        _ => None,
                    };
                    if let Some((doc_id, revision, ack)) = revision {
                        let doc = doc_id.clone().unwrap_or_else(|| "doc-1".into());
                        match session.seen.get_mut(&doc) {
                            // The ack of an op sent twice names the first copy's revision,
                            // which may be behind; it cannot start the count (a session that
                            // joins a document with such an op saw none of its ops).
                            None if ack => {}
                            None => {
                                session.seen.insert(doc, revision);
                            }
                            Some(last) => {
                                assert!(
                                    revision == *last + 1 || (ack && revision <= *last),
                                    "revision {revision} after {last}"
                                );
                                *last = (*last).max(revision);
                            }
                        }
                    }
                    if session.stalled {
                        session.unsent += bytes.len();
                    } else {
                        self.server.handle_sent(self.now, id, bytes.len());
                    }
                }
                OtTransmit::Close { .. } | OtTransmit::Terminate { .. } => session.closed = true,
                _ => {}
            }
        }
        while let Some(event) = self.server.poll_event() {
            if let OtServerEvent::Applied {
                doc, revision, op, ..
            } = event
            {
                let (text, rev) = self.shadow.entry(doc.to_string()).or_default();
                assert_eq!(revision, *rev + 1, "revisions of {doc} skip");
                *text = op
                    .apply(text)
                    .expect("a logged op applies to the text before it");
                *rev = revision;
            }
        }
    }

    fn check(&self) {
        let c = self.server.config();
        assert!(self.server.session_count() <= c.max_sessions);
        assert!(self.server.document_count() <= c.max_documents);
        // Frames are at least 20 bytes; each session holds at most its bound of them, a
        // ping and a close.
        assert!(self.server.queued_transmits() <= c.max_sessions * (c.max_outbound_bytes / 20 + 2));
        for id in self.sessions.keys() {
            if let Some(bytes) = self.server.outbound_bytes(*id) {
                assert!(bytes <= c.max_outbound_bytes, "{bytes} outbound bytes");
            }
            assert!(self.server.joined(*id).len() <= c.max_documents_per_session);
        }
        for (doc, (text, revision)) in &self.shadow {
            let d = self
                .server
                .document(doc)
                .expect("a document with ops exists");
            assert_eq!(d.text(), text, "the shadow of {doc} differs");
            assert_eq!(d.revision(), *revision);
            assert!(utf16_len(d.text()) <= c.max_document_len);
            assert!(d.history_len() <= c.max_history);
            let members: BTreeSet<_> = d.members().into_iter().collect();
            for m in members {
                assert!(self.server.is_open(m), "{m} in {doc} is not open");
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let server = OtServer::new(config(&input)).expect("valid config");
    let mut run = Run {
        server,
        now: Instant::ZERO,
        sessions: BTreeMap::new(),
        order: Vec::new(),
        shadow: HashMap::new(),
    };
    for action in input.actions {
        run.apply(action);
        run.drain();
        run.check();
    }
    // Everything ends: shut down, close every socket, and nothing is left.
    run.server.shutdown(run.now);
    run.drain();
    for id in run.order.clone() {
        run.server.handle_disconnected(run.now, id);
    }
    run.drain();
    assert_eq!(run.server.session_count(), 0);
    assert_eq!(run.server.queued_transmits(), 0);
});
