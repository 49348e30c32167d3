//! The server fed arbitrary multi-session inputs: handshakes (right, wrong version, wrong
//! path, taken node ids), frames (valid ones built from fuzz bytes, and garbage), socket
//! closes, server-initiated closes, stalled writes, time jumps, and the application's answers
//! (from a `MemoryStore`, or errors) in any order.
//!
//! Invariants: no panic; every session's outbound bytes stay within `max_outbound_bytes`;
//! presence and room membership never name a session that is not open; requests pending
//! with the application stay within `max_in_flight` per session; no frame goes out for a
//! session after its close, nor for a session the server never opened; the next timer is
//! after `now` once `handle_timeout(now)` ran; after shutdown and every socket closed,
//! nothing is left.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use syncmux::payload::{ChangeRecord, Hlc};
use syncmux::wire::{CloseCode, DecodeLimits, Frame, MessageType};
use syncmux::{AppError, Handshake, HandshakeOutcome, ServerTransmit, SessionId};
use syncmux::{Instant, Server, ServerConfig, ServerEvent};
use syncmux::{MemoryStore, StoreConfig};

const TABLES: [&str; 3] = ["a", "b", "c"];
const NAMES: [&str; 2] = ["x", "y"];

#[derive(Arbitrary, Debug)]
enum Msg {
    Subscribe {
        tables: u8,
        since: Option<u8>,
        cursor: Option<(u8, u8)>,
        id: bool,
    },
    Unsubscribe {
        tables: u8,
    },
    Push {
        tables: u8,
        ts: u8,
        as_other: bool,
    },
    Pull {
        tables: u8,
        since: Option<u8>,
        cursor: Option<(u8, u8)>,
    },
    Presence {
        topic: u8,
        leave: bool,
        id: bool,
    },
    PresenceGet {
        topic: u8,
    },
    Room {
        room: u8,
        action: u8,
        id: bool,
    },
    Ping {
        request_id_key: bool,
    },
    /// An envelope with a fuzz-chosen type, id and payload text.
    Free {
        kind: u8,
        id: Option<String>,
        payload: String,
    },
    Garbage(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Open {
        node: u8,
        version: u8,
        path_ok: bool,
    },
    Send {
        s: u8,
        msg: Msg,
    },
    Binary {
        s: u8,
        len: u16,
    },
    /// The socket closed (the peer left, or the adapter finished a close).
    Closed {
        s: u8,
    },
    /// The application closes a session.
    Kick {
        s: u8,
        code: u16,
    },
    /// Writes to this session stall (or resume, reporting what they wrote).
    Stall {
        s: u8,
        on: bool,
    },
    Answer {
        pick: u8,
        fail: bool,
    },
    Advance {
        ms: u16,
        scale: u8,
    },
    Backwards {
        ms: u16,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    rate_limit_burst: u8,
    retention: u8,
    ops: Vec<Op>,
}

#[derive(Default)]
struct Session {
    node: String,
    stalled: bool,
    /// Bytes handed out and not yet reported written.
    unsent: usize,
    /// The server sent its close: no frame may follow.
    closed: bool,
}

struct Run {
    server: Server,
    store: MemoryStore,
    now: Instant,
    sessions: BTreeMap<SessionId, Session>,
    order: Vec<SessionId>,
    /// Application events not answered yet.
    pending: Vec<ServerEvent>,
    closed_events: BTreeSet<SessionId>,
    next: u64,
}

fn config(input: &Input) -> ServerConfig {
    let mut c = ServerConfig::default();
    c.reports_writes = true; // stalled sessions report nothing
    c.path = Some("/sync".to_owned());
    c.max_sessions = 6;
    c.max_frame_len = 4096;
    c.max_in_flight = 3;
    c.max_subscriptions = 2;
    c.max_topics = 1;
    c.max_rooms = 1;
    c.max_room_size = 3;
    c.max_outbound_bytes = 1500;
    c.max_changes_per_frame = 3;
    c.max_invalid_frames = 3;
    c.rate_limit_burst = u32::from(input.rate_limit_burst % 40);
    c.rate_limit_window = Duration::from_secs(10);
    c.idle_timeout = Duration::from_secs(90);
    c.presence_ttl = Duration::from_secs(20);
    c.ping_interval = Duration::from_secs(15);
    c
}

fn tables(mask: u8) -> Vec<&'static str> {
    let mut out: Vec<&str> = (0..3)
        .filter(|i| mask & (1 << i) != 0)
        .map(|i| TABLES[i])
        .collect();
    if mask & 8 != 0 {
        out.push("a"); // a table named twice
    }
    out
}

impl Run {
    fn session(&self, s: u8) -> Option<SessionId> {
        if self.order.is_empty() {
            return None;
        }
        Some(self.order[usize::from(s) % self.order.len()])
    }

    fn id(&mut self, with: bool) -> Option<String> {
        self.next += 1;
        with.then(|| format!("r{}", self.next))
    }

    fn message(&mut self, node: &str, msg: Msg) -> Bytes {
        let frame = match msg {
            Msg::Subscribe {
                tables: t,
                since,
                cursor,
                id,
            } => {
                let mut p = json!({"tables": tables(t)});
                if let Some(ts) = since {
                    p["since"] = json!(format!("{ts}:0:n"));
                }
                if let Some((e, seq)) = cursor {
                    p["cursor"] = json!(cursor_text(e, seq));
                }
                json!({"type": "subscribe", "id": self.id(id), "payload": p})
            }
            Msg::Unsubscribe { tables: t } => {
                json!({"type": "unsubscribe", "payload": {"tables": tables(t)}})
            }
            Msg::Push {
                tables: t,
                ts,
                as_other,
            } => {
                let changes: Vec<ChangeRecord> = tables(t)
                    .into_iter()
                    .map(|t| {
                        self.next += 1;
                        ChangeRecord::new(
                            t,
                            format!("k{}", self.next % 7),
                            "f",
                            "lww",
                            Hlc::new(i64::from(ts), 0, node),
                            node,
                        )
                    })
                    .collect();
                let pusher = if as_other { "someone-else" } else { node };
                json!({"type": "push_request", "id": self.id(true),
                       "payload": {"node_id": pusher, "changes": changes}})
            }
            Msg::Pull {
                tables: t,
                since,
                cursor,
            } => {
                let mut p = json!({"tables": tables(t)});
                if let Some(ts) = since {
                    p["since"] = json!({"ts": ts, "c": 0, "node": "n"});
                }
                if let Some((e, seq)) = cursor {
                    p["cursor"] = json!(cursor_text(e, seq));
                }
                json!({"type": "pull_request", "id": self.id(true), "payload": p})
            }
            Msg::Presence { topic, leave, id } => {
                let data = if leave {
                    Value::Null
                } else {
                    json!({"at": topic})
                };
                let topic = NAMES[usize::from(topic % 2)];
                json!({"type": "presence_update", "id": self.id(id),
                       "payload": {"topic": topic, "data": data}})
            }
            Msg::PresenceGet { topic } => {
                let topic = NAMES[usize::from(topic % 2)];
                json!({"type": "presence_get", "id": self.id(true), "payload": {"topic": topic}})
            }
            Msg::Room { room, action, id } => {
                let action = ["join", "leave", "broadcast"][usize::from(action % 3)];
                let room = NAMES[usize::from(room % 2)];
                json!({"type": "room", "id": self.id(id),
                       "payload": {"action": action, "room": room, "data": [1]}})
            }
            Msg::Ping { request_id_key } => {
                let id = self.id(true);
                if request_id_key {
                    json!({"type": "ping", "request_id": id, "payload": 1})
                } else {
                    json!({"type": "ping", "id": id})
                }
            }
            Msg::Free { kind, id, payload } => {
                const TYPES: [&str; 12] = [
                    "pull_request",
                    "push_request",
                    "subscribe",
                    "unsubscribe",
                    "presence_update",
                    "presence_get",
                    "room",
                    "ping",
                    "pong",
                    "change",
                    "ack",
                    "nonsense",
                ];
                let ty = TYPES[usize::from(kind) % TYPES.len()];
                let id = id.map(|i| serde_json::to_string(&i).expect("a string encodes"));
                let id = id.map(|i| format!(",\"id\":{i}")).unwrap_or_default();
                return Bytes::from(format!(r#"{{"type":"{ty}"{id},"payload":{payload}}}"#));
            }
            Msg::Garbage(bytes) => return Bytes::from(bytes),
        };
        Bytes::from(frame.to_string())
    }

    fn apply(&mut self, op: Op) {
        let now = self.now;
        match op {
            Op::Open {
                node,
                version,
                path_ok,
            } => {
                let path = if path_ok { "/sync" } else { "/other" };
                let query = if node % 4 == 0 {
                    String::new()
                } else {
                    format!("node_id=n{}", node % 5)
                };
                let mut hs = Handshake::new(path, query);
                hs = match version % 4 {
                    0 => hs.protocol("syncmux.v1"),
                    1 => hs,
                    2 => hs.protocol("syncmux.v2"),
                    _ => hs.protocol("syncmux.v2").protocol("syncmux.v1"),
                };
                match self.server.handle_handshake(now, &hs) {
                    HandshakeOutcome::Accept {
                        session, node_id, ..
                    } => {
                        assert!(path_ok, "a wrong path is refused");
                        let fresh = self.sessions.insert(
                            session,
                            Session {
                                node: node_id,
                                ..Session::default()
                            },
                        );
                        assert!(fresh.is_none(), "session ids are not reused");
                        self.order.push(session);
                    }
                    HandshakeOutcome::Reject { status, .. } => {
                        assert!(matches!(status, 403 | 404 | 503), "status {status}");
                    }
                }
            }
            Op::Send { s, msg } => {
                let Some(id) = self.session(s) else { return };
                let node = self.sessions[&id].node.clone();
                let bytes = self.message(&node, msg);
                self.server.handle_message(now, id, bytes);
            }
            Op::Binary { s, len } => {
                let Some(id) = self.session(s) else { return };
                self.server.handle_binary(now, id, usize::from(len));
            }
            Op::Closed { s } => {
                let Some(id) = self.session(s) else { return };
                self.server.handle_disconnected(now, id);
                self.forget(id);
            }
            Op::Kick { s, code } => {
                let Some(id) = self.session(s) else { return };
                self.server
                    .close_session(now, id, CloseCode(4000 + code % 1000), "kick");
            }
            Op::Stall { s, on } => {
                let Some(id) = self.session(s) else { return };
                let session = self
                    .sessions
                    .get_mut(&id)
                    .expect("listed sessions are known");
                session.stalled = on;
                if !on && session.unsent > 0 {
                    let bytes = std::mem::take(&mut session.unsent);
                    self.server.handle_sent(now, id, bytes);
                }
            }
            Op::Answer { pick, fail } => {
                if self.pending.is_empty() {
                    return;
                }
                let event = self.pending.remove(usize::from(pick) % self.pending.len());
                self.answer(event, fail);
            }
            Op::Advance { ms, scale } => {
                let target = now + Duration::from_millis(u64::from(ms) * u64::from(scale % 16 + 1));
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
            Op::Backwards { ms } => {
                self.server
                    .handle_timeout(now - Duration::from_millis(u64::from(ms)));
            }
        }
    }

    fn answer(&mut self, event: ServerEvent, fail: bool) {
        let now = self.now;
        if !fail {
            let _ = self.store.answer(&mut self.server, now, event);
            return;
        }
        let err = || AppError::new("the application failed");
        match event {
            ServerEvent::Pull { request, .. } => self.server.answer_pull(now, request, Err(err())),
            ServerEvent::Replay { request, .. } => {
                self.server.answer_replay(now, request, Err(err()))
            }
            ServerEvent::Push { request, .. } => self.server.answer_push(now, request, Err(err())),
            _ => {}
        }
    }

    fn forget(&mut self, id: SessionId) {
        self.sessions.remove(&id);
        self.order.retain(|s| *s != id);
    }

    fn drain(&mut self) {
        while let Some(t) = self.server.poll_transmit() {
            let id = t.session();
            let session = self
                .sessions
                .get_mut(&id)
                .unwrap_or_else(|| panic!("a transmit for unknown session {id:?}"));
            assert!(!session.closed, "a transmit after the close of {id:?}");
            match t {
                ServerTransmit::Frame { bytes, .. } => {
                    // A frame any syncmux peer decodes. Not `serde_json::Value`: it refuses
                    // numbers beyond f64 (`1E999`), which are JSON and which a pong or a relay
                    // must pass on byte for byte.
                    let frame = match Frame::decode(bytes.clone(), &unlimited()) {
                        Ok(frame) => frame,
                        Err(e) => panic!("server frame does not decode ({e}): {bytes:?}"),
                    };
                    // A cursor is opaque: any string the store cannot serve falls back, it is
                    // never refused (docs/protocol.md section 5).
                    if frame.kind() == MessageType::Error {
                        let text = String::from_utf8_lossy(frame.raw_payload());
                        assert!(!text.contains("cursor"), "a cursor was refused: {text}");
                    }
                    if session.stalled {
                        session.unsent += bytes.len();
                    } else {
                        self.server.handle_sent(self.now, id, bytes.len());
                    }
                }
                ServerTransmit::Close { .. } => session.closed = true,
            }
        }
        while let Some(event) = self.server.poll_event() {
            match event {
                ServerEvent::SessionClosed { session, .. } => {
                    assert!(
                        self.closed_events.insert(session),
                        "{session:?} closed twice"
                    );
                }
                ServerEvent::Pull { .. }
                | ServerEvent::Push { .. }
                | ServerEvent::Replay { .. } => self.pending.push(event),
                _ => {}
            }
        }
    }

    fn check(&self) {
        let c = self.server.config();
        for id in self.sessions.keys() {
            if let Some(bytes) = self.server.outbound_bytes(*id) {
                assert!(
                    bytes <= c.max_outbound_bytes,
                    "{id:?}: {bytes} outbound bytes"
                );
            }
        }
        assert!(self.server.session_count() <= c.max_sessions);
        assert!(
            self.server.pending_requests() <= self.server.session_count() * c.max_in_flight,
            "{} requests pending for {} sessions",
            self.server.pending_requests(),
            self.server.session_count()
        );
        for name in NAMES {
            let members = self.server.presence_members(name);
            assert!(members.len() <= self.server.session_count());
            for m in members {
                assert!(
                    self.server.is_open(m),
                    "presence {name} names {m:?}, not open"
                );
            }
            let members = self.server.room_members(name);
            assert!(
                members.len() <= c.max_room_size,
                "room {name} over its size"
            );
            for m in members {
                assert!(self.server.is_open(m), "room {name} names {m:?}, not open");
            }
        }
        for id in &self.order {
            if self.server.is_open(*id) {
                assert!(self.server.subscriptions(*id).len() <= c.max_subscriptions);
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let mut store = StoreConfig::default();
    store.retention = usize::from(input.retention % 4) * 4;
    let mut run = Run {
        server: Server::new(config(&input)).expect("a valid config"),
        store: MemoryStore::new(store),
        now: Instant::from_millis(1_000),
        sessions: BTreeMap::new(),
        order: Vec::new(),
        pending: Vec::new(),
        closed_events: BTreeSet::new(),
        next: 0,
    };
    for op in input.ops.into_iter().take(300) {
        run.apply(op);
        run.drain();
        run.check();
    }
    // Wind down: writes resume, the application answers everything, the server shuts down
    // and every socket closes. Nothing may be left behind.
    let ids: Vec<SessionId> = run.sessions.keys().copied().collect();
    for id in &ids {
        let session = run.sessions.get_mut(id).expect("listed");
        session.stalled = false;
        let bytes = std::mem::take(&mut session.unsent);
        run.server.handle_sent(run.now, *id, bytes);
    }
    while let Some(event) = run.pending.pop() {
        run.answer(event, false);
        run.drain();
        run.check();
    }
    run.server.shutdown(run.now);
    run.drain();
    run.check();
    for id in ids {
        assert!(!run.server.is_open(id), "shutdown closes {id:?}");
        run.server.handle_disconnected(run.now, id);
    }
    run.drain();
    assert_eq!(run.server.session_count(), 0);
    assert_eq!(run.server.pending_requests(), 0);
});

/// Decoding with no size or depth limit: the server's own limits bound what it sends.
fn unlimited() -> DecodeLimits {
    let mut limits = DecodeLimits::DEFAULT;
    limits.max_frame_len = 0;
    limits.max_depth = 0;
    limits
}

/// A cursor of one of two epochs, or (for a third of the values of `e`) a string that is not
/// a cursor of ours at all.
fn cursor_text(e: u8, seq: u8) -> String {
    match e % 3 {
        2 => {
            ["x", "", "1.2.3", "-1.5", "9999999999999999999999.1"][usize::from(seq % 5)].to_owned()
        }
        epoch => format!("{epoch}.{seq}"),
    }
}
