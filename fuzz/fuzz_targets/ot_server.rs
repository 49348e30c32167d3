//! The OT document server fed arbitrary input sequences: handshakes (with and without the
//! right token), ops and snapshot requests built from fuzz bytes (naming few documents, so
//! they collide), free-form and garbage frames, pongs, stalled writes, socket closes,
//! application closes, shutdown, and time jumps (backwards too); ops sent on at once or held
//! for a broadcast delay.
//!
//! Invariants: no panic; every bound holds (sessions, documents, joins per session, history,
//! document length, outbound bytes per session, the outbound queue, events); every frame
//! decodes as a `ServerMessage`; no output for a session after its close or termination;
//! each connection receives a document's revisions in order; every applied op, replayed on
//! a shadow copy, applies to the text before it (nothing invalid is logged) and the shadow
//! equals the server's text; the next timer is after `now` once `handle_timeout(now)` ran.
//!
//! With `shared` the server runs in shared-history mode against a model of the shared store
//! (what Redis holds for the example server): its commits are answered late, out of order,
//! refused or appended after other servers' ops (transformed against them); other servers'
//! ops reach it late, twice, or never (found again by a head poll and a fetch); loads are
//! answered with the store's snapshot. Invariants there: every commit's op applies to the
//! store's text at its base and makes the text it names; the server's copy of a document is
//! always the store's text at the copy's revision; a connection's revisions of a document
//! only grow.
#![no_main]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use bytes::Bytes;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use serde_json::json;
use syncmux::ot::{
    OtCommitId, OtHandshakeOutcome, OtServer, OtServerConfig, OtServerEvent,
    OtSessionId, OtTransmit, ServerMessage, Side, TextOp,
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
    /// Shared history: answer a pending commit (appended, or refused).
    Commit { k: u8, ok: bool },
    /// Shared history: another server appends an op to a document; delivered or lost.
    Remote { doc: u8, edit: Edit, deliver: bool },
    /// Shared history: an op of the store delivered (again, or late).
    Redeliver { doc: u8, back: u8 },
    /// Shared history: the head poll.
    Head { doc: u8 },
    /// Shared history: answer a pending fetch or load.
    Answer { k: u8 },
}

/// An edit another server makes (always one that fits the text).
#[derive(Arbitrary, Debug)]
enum Edit {
    Prepend(u8),
    Append(u8),
    Clear,
}

#[derive(Arbitrary, Debug)]
struct Input {
    rate_limit: u8,
    shared: bool,
    actions: Vec<Action>,
}

/// One document of the shared store: its text at every revision, and the op that made each.
#[derive(Default)]
struct Stored {
    texts: Vec<String>,
    ops: Vec<TextOp>,
}

impl Stored {
    fn head(&self) -> u64 {
        self.ops.len() as u64
    }

    fn text(&self, revision: u64) -> &str {
        match revision {
            0 => "",
            r => &self.texts[r as usize - 1],
        }
    }

    fn append(&mut self, op: TextOp) -> u64 {
        let text = op
            .apply(self.text(self.head()))
            .expect("an op appended fits the store's text");
        self.texts.push(text);
        self.ops.push(op);
        self.head()
    }
}

/// What the shared store was asked and has not answered yet.
enum Ask {
    Fetch { doc: String, from: u64, to: u64 },
    Load { doc: String },
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
    /// Every document's text and revision, rebuilt from the `Applied` events alone (without
    /// a shared history).
    shadow: HashMap<String, (String, u64)>,
    /// The shared store, with `shared`.
    store: HashMap<String, Stored>,
    commits: Vec<(OtCommitId, String, u64, TextOp)>,
    asks: Vec<Ask>,
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
    // The rate limit's byte's top bits: ops sent on at once, or held for 1 ms, 20 ms, 1 s.
    c.broadcast_delay = [0, 1, 20, 1000].map(Duration::from_millis)[usize::from(input.rate_limit >> 6)];
    c.shared_history = input.shared;
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
            Action::Commit { k, ok } => {
                if self.commits.is_empty() {
                    return;
                }
                let (commit, doc, base, op) =
                    self.commits.remove(usize::from(k) % self.commits.len());
                if !ok {
                    self.server
                        .handle_committed(now, commit, Err("refused".to_owned()));
                    return;
                }
                // Appended at the head: transformed against what others appended since
                // its base (it on the right).
                let stored = self.store.entry(doc).or_default();
                let mut op = op;
                for theirs in &stored.ops[base as usize..] {
                    op = op.transform(theirs, Side::Right);
                }
                let revision = stored.append(op.clone());
                self.server
                    .handle_committed(now, commit, Ok((revision, op)));
            }
            Action::Remote { doc, edit, deliver } => {
                let Some(name) = DOCS[usize::from(doc) % DOCS.len()] else {
                    return;
                };
                let stored = self.store.entry(name.to_owned()).or_default();
                let len = TextOp::utf16_len(stored.text(stored.head()));
                let op = match edit {
                    Edit::Prepend(n) => TextOp::new().insert("ab".repeat(usize::from(n % 4) + 1)),
                    Edit::Append(n) => TextOp::new()
                        .retain(len)
                        .insert("xy".repeat(usize::from(n % 4) + 1)),
                    Edit::Clear => TextOp::new().delete(len),
                };
                if len > 120 && !matches!(edit, Edit::Clear) {
                    return;
                }
                let revision = stored.append(op.clone());
                if deliver {
                    self.server.handle_remote_op(now, name, revision, op);
                }
            }
            Action::Redeliver { doc, back } => {
                let Some(name) = DOCS[usize::from(doc) % DOCS.len()] else {
                    return;
                };
                let Some(stored) = self.store.get(name) else {
                    return;
                };
                let head = stored.head();
                if head == 0 {
                    return;
                }
                let revision = head - u64::from(back) % head;
                let op = stored.ops[revision as usize - 1].clone();
                self.server.handle_remote_op(now, name, revision, op);
            }
            Action::Head { doc } => {
                let Some(name) = DOCS[usize::from(doc) % DOCS.len()] else {
                    return;
                };
                let head = self.store.get(name).map_or(0, Stored::head);
                self.server.handle_remote_head(now, name, head);
            }
            Action::Answer { k } => {
                if self.asks.is_empty() {
                    return;
                }
                match self.asks.remove(usize::from(k) % self.asks.len()) {
                    Ask::Fetch { doc, from, to } => {
                        let Some(stored) = self.store.get(&doc) else {
                            return;
                        };
                        for revision in from..=to.min(stored.head()) {
                            let op = stored.ops[revision as usize - 1].clone();
                            self.server.handle_remote_op(now, &doc, revision, op);
                        }
                    }
                    Ask::Load { doc } => {
                        let stored = self.store.entry(doc.clone()).or_default();
                        let head = stored.head();
                        let text = stored.text(head).to_owned();
                        self.server.handle_remote_snapshot(now, &doc, head, text);
                    }
                }
            }
        }
    }

    fn drain(&mut self) {
        let shared = self.server.config().shared_history;
        while let Some(t) = self.server.poll_transmit() {
            let id = match &t {
                OtTransmit::Frame { session, .. }
                | OtTransmit::Ping { session }
                | OtTransmit::Close { session, .. }
                | OtTransmit::Terminate { session } => *session,
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
                                // With a shared history a copy that starts again from a
                                // snapshot tells its members nothing of the ops between.
                                let next = if shared {
                                    revision > *last
                                } else {
                                    revision == *last + 1
                                };
                                assert!(
                                    next || (ack && revision <= *last),
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
            match event {
                OtServerEvent::Applied {
                    doc, revision, op, ..
                } if !shared => {
                    let (text, rev) = self.shadow.entry(doc.to_string()).or_default();
                    assert_eq!(revision, *rev + 1, "revisions of {doc} skip");
                    *text = op
                        .apply(text)
                        .expect("a logged op applies to the text before it");
                    *rev = revision;
                }
                OtServerEvent::Commit {
                    commit,
                    doc,
                    base,
                    op,
                    text,
                } => {
                    let stored = self.store.entry(doc.to_string()).or_default();
                    assert!(base <= stored.head(), "a commit on {base}, past the store's head");
                    let made = op
                        .apply(stored.text(base))
                        .expect("a commit's op fits the store's text at its base");
                    assert_eq!(made, text, "the text a commit names");
                    self.commits.push((commit, doc.to_string(), base, (*op).clone()));
                }
                OtServerEvent::Fetch { doc, from, to } => {
                    assert!(from <= to, "fetch {from}..={to}");
                    self.asks.push(Ask::Fetch {
                        doc: doc.to_string(),
                        from,
                        to,
                    });
                }
                OtServerEvent::Load { doc } | OtServerEvent::DocumentCreated { doc } if shared => {
                    self.asks.push(Ask::Load {
                        doc: doc.to_string(),
                    });
                }
                _ => {}
            }
        }
        // Commits and asks of the server's past are bounded by its own bounds; the model's
        // lists by the run's length.
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
        if c.shared_history {
            // The copy is the store's text at the copy's revision.
            for (doc, stored) in &self.store {
                let Some(d) = self.server.document(doc) else {
                    continue;
                };
                assert!(d.revision() <= stored.head(), "{doc}'s copy is ahead of the store");
                assert_eq!(d.text(), stored.text(d.revision()), "{doc}'s copy differs");
            }
        }
        for (doc, (text, revision)) in &self.shadow {
            let d = self
                .server
                .document(doc)
                .expect("a document with ops exists");
            assert_eq!(d.text(), text, "the shadow of {doc} differs");
            assert_eq!(d.revision(), *revision);
            assert!(TextOp::utf16_len(d.text()) <= c.max_document_len);
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
        store: HashMap::new(),
        commits: Vec::new(),
        asks: Vec::new(),
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
