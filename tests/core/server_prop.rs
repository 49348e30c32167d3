//! Random multi-session interleavings: the test plays the application (answering pushes,
//! replays and pulls out of order from its own log) and the clients (subscribes, pushes,
//! garbage, presence, rooms, disconnects, stalls, time jumps), and checks the invariants:
//! no panic; each subscriber receives each accepted change of its tables exactly once while
//! connected; outbound bytes stay within the bound; presence and room membership never
//! name a closed session.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::Value;
use syncmux::payload::{ChangeRecord, Cursor, Hlc};
use syncmux::{
    AppError, Handshake, HandshakeOutcome, PullAnswer, PullId, PushAnswer, PushId, ReplayId,
    ServerTransmit, SessionId,
};
use syncmux::{Instant, Server, ServerConfig, ServerEvent};

const TABLES: [&str; 3] = ["a", "b", "c"];
const MAX_OUTBOUND: usize = 3000;

#[derive(Debug, Clone)]
enum Op {
    Subscribe {
        s: usize,
        table: usize,
        replay: bool,
    },
    Unsubscribe {
        s: usize,
        table: usize,
    },
    Push {
        s: usize,
        tables: Vec<usize>,
        resend: Option<usize>,
    },
    AnswerPush {
        pick: usize,
        fail: bool,
    },
    AnswerReplay {
        pick: usize,
        read_back: usize,
    },
    Pull {
        s: usize,
    },
    AnswerPull {
        pick: usize,
        fail: bool,
    },
    Garbage {
        s: usize,
        bytes: Vec<u8>,
    },
    Invalid {
        s: usize,
        which: usize,
    },
    Presence {
        s: usize,
        topic: usize,
        leave: bool,
    },
    Room {
        s: usize,
        room: usize,
        action: usize,
    },
    Close {
        s: usize,
    },
    Open,
    Stall {
        s: usize,
        on: bool,
    },
    Advance {
        ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let s = 0..8usize;
    prop_oneof![
        4 => (s.clone(), 0..3usize, any::<bool>())
            .prop_map(|(s, table, replay)| Op::Subscribe { s, table, replay }),
        1 => (s.clone(), 0..3usize).prop_map(|(s, table)| Op::Unsubscribe { s, table }),
        5 => (s.clone(), prop::collection::vec(0..3usize, 1..4), prop::option::of(0..50usize))
            .prop_map(|(s, tables, resend)| Op::Push { s, tables, resend }),
        5 => (any::<usize>(), prop::bool::weighted(0.1))
            .prop_map(|(pick, fail)| Op::AnswerPush { pick, fail }),
        3 => (any::<usize>(), any::<usize>())
            .prop_map(|(pick, read_back)| Op::AnswerReplay { pick, read_back }),
        1 => s.clone().prop_map(|s| Op::Pull { s }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(pick, fail)| Op::AnswerPull { pick, fail }),
        1 => (s.clone(), prop::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(s, bytes)| Op::Garbage { s, bytes }),
        1 => (s.clone(), 0..INVALID.len()).prop_map(|(s, which)| Op::Invalid { s, which }),
        2 => (s.clone(), 0..2usize, prop::bool::weighted(0.3))
            .prop_map(|(s, topic, leave)| Op::Presence { s, topic, leave }),
        2 => (s.clone(), 0..2usize, 0..3usize)
            .prop_map(|(s, room, action)| Op::Room { s, room, action }),
        1 => s.clone().prop_map(|s| Op::Close { s }),
        1 => Just(Op::Open),
        1 => (s, any::<bool>()).prop_map(|(s, on)| Op::Stall { s, on }),
        2 => (0..40_000u64).prop_map(|ms| Op::Advance { ms }),
    ]
}

/// Frames that are wrong in ways a decoder accepts but the server must refuse.
const INVALID: &[&str] = &[
    r#"{"type":"subscribe","id":"x","payload":{"tables":"a"}}"#,
    r#"{"type":"room","payload":{"action":"join"}}"#,
    r#"{"type":"push_request","id":"x","payload":{"node_id":"nobody","changes":[]}}"#,
    r#"{"type":"pull_request","payload":{"tables":["a"]}}"#,
    r#"{"type":"changes","payload":[]}"#,
    r#"{"type":"warp","id":"w"}"#,
    r#"{"type":"ping","id":1}"#,
    r#"{"id":"a","request_id":"b","type":"ping"}"#,
];

struct Client {
    id: SessionId,
    node: String,
    stalled: bool,
    /// Table -> log length when the current subscription started.
    subscribed: BTreeMap<usize, usize>,
    ever: BTreeSet<String>,
    replaying: BTreeSet<usize>,
    received: Vec<String>,
}

struct Sim {
    server: Server,
    now: Instant,
    clients: Vec<Client>,
    by_id: BTreeMap<SessionId, usize>,
    /// Accepted changes: (record, pusher client index).
    log: Vec<(ChangeRecord, usize)>,
    keys: BTreeSet<(String, String)>,
    pushes: Vec<(PushId, Vec<ChangeRecord>, usize)>,
    replays: Vec<(ReplayId, Vec<usize>, usize)>,
    pulls: Vec<PullId>,
    next_pk: usize,
    next_node: usize,
}

impl Sim {
    fn new() -> Self {
        let mut config = ServerConfig::default();
        config.reports_writes = true;
        config.max_outbound_bytes = MAX_OUTBOUND;
        config.rate_limit_burst = 1000;
        config.max_invalid_frames = 5;
        // The in-flight bound has its own test; here it would refuse subscribes the model
        // believes in.
        config.max_in_flight = 1000;
        let mut sim = Sim {
            server: Server::new(config).unwrap(),
            now: Instant::ZERO,
            clients: Vec::new(),
            by_id: BTreeMap::new(),
            log: Vec::new(),
            keys: BTreeSet::new(),
            pushes: Vec::new(),
            replays: Vec::new(),
            pulls: Vec::new(),
            next_pk: 0,
            next_node: 0,
        };
        for _ in 0..4 {
            sim.open();
        }
        sim
    }

    fn open(&mut self) {
        if self.clients.len() >= 8 {
            return;
        }
        self.next_node += 1;
        let node = format!("n{}", self.next_node);
        let hs = Handshake::new("/", format!("node_id={node}"));
        let HandshakeOutcome::Accept { session, .. } = self.server.handle_handshake(self.now, &hs)
        else {
            panic!("refused")
        };
        self.by_id.insert(session, self.clients.len());
        self.clients.push(Client {
            id: session,
            node,
            stalled: false,
            subscribed: BTreeMap::new(),
            ever: BTreeSet::new(),
            replaying: BTreeSet::new(),
            received: Vec::new(),
        });
    }

    fn client(&self, s: usize) -> Option<usize> {
        let i = s % self.clients.len();
        self.server.is_open(self.clients[i].id).then_some(i)
    }

    fn send(&mut self, i: usize, text: String) {
        let id = self.clients[i].id;
        self.server.handle_message(self.now, id, Bytes::from(text));
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Subscribe { s, table, replay } => {
                let Some(i) = self.client(s) else { return };
                let c = &self.clients[i];
                if c.subscribed.contains_key(&table) || c.replaying.contains(&table) {
                    return;
                }
                let name = TABLES[table];
                self.next_pk += 1;
                let text = if replay {
                    let head = format!("1.{}", self.log.len());
                    let id = self.next_pk;
                    format!(
                        r#"{{"type":"subscribe","id":"s{id}","payload":{{"tables":["{name}"],"cursor":"{head}"}}}}"#
                    )
                } else {
                    format!(r#"{{"type":"subscribe","payload":{{"tables":["{name}"]}}}}"#)
                };
                let start = self.log.len();
                let c = &mut self.clients[i];
                c.subscribed.insert(table, start);
                c.ever.insert(name.to_owned());
                if replay {
                    c.replaying.insert(table);
                }
                self.send(i, text);
            }
            Op::Unsubscribe { s, table } => {
                let Some(i) = self.client(s) else { return };
                self.clients[i].subscribed.remove(&table);
                let name = TABLES[table];
                self.send(
                    i,
                    format!(r#"{{"type":"unsubscribe","payload":{{"tables":["{name}"]}}}}"#),
                );
            }
            Op::Push { s, tables, resend } => {
                let Some(i) = self.client(s) else { return };
                let node = self.clients[i].node.clone();
                let mut records: Vec<ChangeRecord> = tables
                    .iter()
                    .map(|t| {
                        self.next_pk += 1;
                        let hlc = Hlc::new(self.next_pk as i64, 0, node.as_str());
                        ChangeRecord::new(
                            TABLES[*t],
                            format!("k{}", self.next_pk),
                            "f",
                            "lww",
                            hlc,
                            node.as_str(),
                        )
                    })
                    .collect();
                if let Some(r) = resend.filter(|_| !self.log.is_empty()) {
                    records.push(self.log[r % self.log.len()].0.clone());
                }
                let body = serde_json::json!({"type":"push_request","id":format!("p{}", self.next_pk),
                    "payload":{"node_id":node,"changes":records}});
                self.send(i, body.to_string());
            }
            Op::AnswerPush { pick, fail } => {
                if self.pushes.is_empty() {
                    return;
                }
                let (request, changes, pusher) = self.pushes.remove(pick % self.pushes.len());
                if fail {
                    self.server
                        .answer_push(self.now, request, Err(AppError::new("no")));
                    return;
                }
                let mut accepted = Vec::new();
                for change in changes {
                    if self.keys.insert((change.table.clone(), change.pk.clone())) {
                        self.log.push((change.clone(), pusher));
                        accepted.push((Cursor::new(1, self.log.len() as u64), change));
                    }
                }
                let answer = PushAnswer {
                    accepted,
                    latest_hlc: Hlc::default(),
                    head: Cursor::new(1, self.log.len() as u64),
                };
                self.server.answer_push(self.now, request, Ok(answer));
            }
            Op::AnswerReplay { pick, read_back } => {
                if self.replays.is_empty() {
                    return;
                }
                let (request, tables, start) = self.replays.remove(pick % self.replays.len());
                // The store read happened some time between the subscribe and now.
                let read = start + read_back % (self.log.len() - start + 1);
                let changes = self.log[..read]
                    .iter()
                    .enumerate()
                    .skip(start)
                    .filter(|(_, (r, _))| tables.iter().any(|t| TABLES[*t] == r.table))
                    .map(|(i, (r, _))| (Cursor::new(1, i as u64 + 1), r.clone()))
                    .collect();
                let answer = PullAnswer {
                    changes,
                    latest_hlc: Hlc::default(),
                    head: Cursor::new(1, read as u64),
                    complete: true,
                };
                self.server.answer_replay(self.now, request, Ok(answer));
            }
            Op::Pull { s } => {
                let Some(i) = self.client(s) else { return };
                self.next_pk += 1;
                let text = format!(
                    r#"{{"type":"pull_request","id":"q{}","payload":{{"tables":["a"]}}}}"#,
                    self.next_pk
                );
                self.send(i, text);
            }
            Op::AnswerPull { pick, fail } => {
                if self.pulls.is_empty() {
                    return;
                }
                let request = self.pulls.remove(pick % self.pulls.len());
                let answer = if fail {
                    Err(AppError::new("x"))
                } else {
                    Ok(PullAnswer::default())
                };
                self.server.answer_pull(self.now, request, answer);
            }
            Op::Garbage { s, bytes } => {
                let Some(i) = self.client(s) else { return };
                let id = self.clients[i].id;
                self.server.handle_message(self.now, id, Bytes::from(bytes));
            }
            Op::Invalid { s, which } => {
                let Some(i) = self.client(s) else { return };
                self.send(i, INVALID[which].to_owned());
            }
            Op::Presence { s, topic, leave } => {
                let Some(i) = self.client(s) else { return };
                let data = if leave { "null" } else { "{\"x\":1}" };
                self.send(
                    i,
                    format!(r#"{{"type":"presence_update","payload":{{"topic":"t{topic}","data":{data}}}}}"#),
                );
            }
            Op::Room { s, room, action } => {
                let Some(i) = self.client(s) else { return };
                let action = ["join", "leave", "broadcast"][action];
                self.send(
                    i,
                    format!(r#"{{"type":"room","payload":{{"action":"{action}","room":"r{room}","data":1}}}}"#),
                );
            }
            Op::Close { s } => {
                let i = s % self.clients.len();
                self.server
                    .handle_disconnected(self.now, self.clients[i].id);
            }
            Op::Open => self.open(),
            Op::Stall { s, on } => {
                let i = s % self.clients.len();
                self.clients[i].stalled = on;
            }
            Op::Advance { ms } => {
                let target = self.now + Duration::from_millis(ms);
                while let Some(at) = self.server.poll_timeout().filter(|at| *at <= target) {
                    self.now = self.now.max(at);
                    self.server.handle_timeout(self.now);
                    self.drain();
                }
                self.now = target;
                self.server.handle_timeout(self.now);
            }
        }
    }

    /// Drains every output, playing the clients: record changes, answer server pings
    /// (unless stalled), report frames written (unless stalled).
    fn drain(&mut self) {
        let mut pongs = Vec::new();
        while let Some(t) = self.server.poll_transmit() {
            let ServerTransmit::Frame { session, bytes } = t else {
                continue;
            };
            let i = self.by_id[&session];
            let v: Value = serde_json::from_slice(&bytes).expect("server frames are JSON");
            match v["type"].as_str().unwrap() {
                "change" => self.clients[i]
                    .received
                    .push(v["payload"]["pk"].as_str().unwrap().to_owned()),
                "changes" => {
                    for r in v["payload"].as_array().unwrap() {
                        self.clients[i]
                            .received
                            .push(r["pk"].as_str().unwrap().to_owned());
                    }
                }
                "ping" if !self.clients[i].stalled => {
                    pongs.push((session, v["id"].as_str().unwrap().to_owned()));
                }
                _ => {}
            }
            if !self.clients[i].stalled {
                self.server.handle_sent(self.now, session, bytes.len());
            }
        }
        while let Some(e) = self.server.poll_event() {
            match e {
                ServerEvent::Push {
                    request,
                    session,
                    changes,
                    ..
                } => self.pushes.push((request, changes, self.by_id[&session])),
                ServerEvent::Replay {
                    request,
                    session,
                    tables,
                    cursor,
                    ..
                } => {
                    let tables: Vec<usize> = tables
                        .iter()
                        .map(|t| TABLES.iter().position(|n| n == t).unwrap())
                        .collect();
                    let start = cursor.unwrap().seq as usize;
                    let i = self.by_id[&session];
                    for t in &tables {
                        self.clients[i].replaying.remove(t);
                    }
                    self.replays.push((request, tables, start));
                }
                ServerEvent::Pull { request, .. } => self.pulls.push(request),
                _ => {}
            }
        }
        for (session, id) in pongs {
            let pong = format!(r#"{{"type":"pong","id":"{id}"}}"#);
            self.server
                .handle_message(self.now, session, Bytes::from(pong));
            self.drain();
        }
    }

    fn check_step(&self) {
        for c in &self.clients {
            if let Some(bytes) = self.server.outbound_bytes(c.id) {
                assert!(bytes <= MAX_OUTBOUND, "outbound {bytes} over the bound");
            }
        }
        for name in ["t0", "t1"] {
            for m in self.server.presence_members(name) {
                assert!(self.server.is_open(m), "presence names closed {m}");
            }
        }
        for name in ["r0", "r1"] {
            for m in self.server.room_members(name) {
                assert!(self.server.is_open(m), "room names closed {m}");
            }
        }
    }

    /// Answers everything still pending, then checks delivery.
    fn finish(&mut self) {
        for c in &mut self.clients {
            c.stalled = false;
        }
        while !(self.pushes.is_empty() && self.replays.is_empty()) {
            if !self.pushes.is_empty() {
                self.apply(Op::AnswerPush {
                    pick: 0,
                    fail: false,
                });
            } else {
                self.apply(Op::AnswerReplay {
                    pick: 0,
                    read_back: 0,
                });
            }
            self.drain();
        }
        for (i, c) in self.clients.iter().enumerate() {
            let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
            for pk in &c.received {
                *counts.entry(pk).or_default() += 1;
            }
            let log_tables: BTreeMap<&str, &str> = self
                .log
                .iter()
                .map(|(r, _)| (r.pk.as_str(), r.table.as_str()))
                .collect();
            for (pk, n) in &counts {
                assert_eq!(*n, 1, "session {i} got {pk} {n} times");
                let table = log_tables
                    .get(pk)
                    .expect("only accepted changes are delivered");
                assert!(c.ever.contains(*table), "session {i} got {pk} of {table}");
            }
            if !self.server.is_open(c.id) {
                continue;
            }
            for (table, start) in &c.subscribed {
                for (record, pusher) in &self.log[*start..] {
                    if record.table == TABLES[*table] && *pusher != i {
                        assert_eq!(
                            counts.get(record.pk.as_str()),
                            Some(&1),
                            "session {i} missed {} of {}",
                            record.pk,
                            record.table
                        );
                    }
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_interleavings_keep_every_invariant(ops in prop::collection::vec(op(), 1..80)) {
        let mut sim = Sim::new();
        sim.drain();
        for op in ops {
            sim.apply(op);
            sim.drain();
            sim.check_step();
        }
        sim.finish();
        sim.check_step();
    }
}
