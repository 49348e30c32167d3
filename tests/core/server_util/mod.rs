//! A virtual-time harness for driving a `Server` with hand-made frames.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use syncmux::payload::{ChangeRecord, Cursor, Hlc};
use syncmux::{
    Handshake, HandshakeOutcome, Instant, PullAnswer, PushAnswer, PushId, Server, ServerConfig,
    ServerEvent, ServerTransmit, SessionId,
};

pub struct Harness {
    pub server: Server,
    pub now: Instant,
    frames: BTreeMap<SessionId, Vec<Value>>,
    pub closes: BTreeMap<SessionId, (u16, String)>,
    pub events: Vec<ServerEvent>,
    /// Whether drained frames are reported written at once.
    pub auto_sent: bool,
    /// The store head that subscribes without a replay are answered with, at once, when
    /// drained (`None`: left in `events` for the test to answer).
    pub head: Option<Cursor>,
}

impl Harness {
    pub fn new(config: ServerConfig) -> Self {
        Harness {
            server: Server::new(config).unwrap(),
            now: Instant::ZERO,
            frames: BTreeMap::new(),
            closes: BTreeMap::new(),
            events: Vec::new(),
            auto_sent: true,
            head: Some(Cursor::new(1, 0)),
        }
    }

    pub fn handshake(&mut self, handshake: &Handshake) -> HandshakeOutcome {
        let outcome = self.server.handle_handshake(self.now, handshake);
        self.drain();
        outcome
    }

    /// Opens a session for `node` (protocol syncmux.v1) and clears its SessionOpened event.
    pub fn open(&mut self, node: &str) -> SessionId {
        let hs = Handshake::new("/", format!("node_id={node}")).protocol("syncmux.v1");
        match self.handshake(&hs) {
            HandshakeOutcome::Accept { session, .. } => {
                self.events
                    .retain(|e| !matches!(e, ServerEvent::SessionOpened { .. }));
                session
            }
            other => panic!("handshake refused: {other:?}"),
        }
    }

    pub fn send(&mut self, session: SessionId, json: &str) {
        self.server
            .handle_message(self.now, session, Bytes::copy_from_slice(json.as_bytes()));
        self.drain();
    }

    pub fn drain(&mut self) {
        while let Some(t) = self.server.poll_transmit() {
            match t {
                ServerTransmit::Frame { session, bytes } => {
                    if self.auto_sent {
                        self.server.handle_sent(self.now, session, bytes.len());
                    }
                    let value: Value = serde_json::from_slice(&bytes).expect("server sent JSON");
                    self.frames.entry(session).or_default().push(value);
                }
                ServerTransmit::Close {
                    session,
                    code,
                    reason,
                } => {
                    assert!(
                        self.closes.insert(session, (code.0, reason)).is_none(),
                        "closed twice"
                    );
                }
            }
        }
        let mut answered = false;
        while let Some(e) = self.server.poll_event() {
            match (e, self.head) {
                (
                    ServerEvent::Replay {
                        request,
                        head_only: true,
                        ..
                    },
                    Some(head),
                ) => {
                    let answer = PullAnswer {
                        head,
                        complete: true,
                        ..PullAnswer::default()
                    };
                    self.server.answer_replay(self.now, request, Ok(answer));
                    answered = true;
                }
                (e, _) => self.events.push(e),
            }
        }
        if answered {
            self.drain();
        }
    }

    /// `node`'s push of `records` (see [`record_json`]) with request id `id`.
    pub fn push(&mut self, session: SessionId, id: &str, node: &str, records: &[String]) {
        self.send(session, &push_json(id, node, records));
    }

    /// Subscribes `session` to `tables` (request id `sub`) and checks the ack: every
    /// subscribe's ack says where the stream stands (docs/protocol.md section 4).
    pub fn subscribe(&mut self, session: SessionId, tables: &[&str]) {
        let msg = serde_json::json!({"type":"subscribe","id":"sub","payload":{"tables":tables}});
        self.send(session, &msg.to_string());
        let head = self
            .head
            .expect("subscribes answered by the harness")
            .to_string();
        let ack = serde_json::json!(
            {"type":"ack","id":"sub","payload":{"recovered":true,"cursor":head}}
        );
        assert_eq!(self.take(session), vec![ack]);
    }

    /// A pusher (node `p`) and a subscriber (node `s`) of `tables`.
    pub fn pusher_and_subscriber(&mut self, tables: &[&str]) -> (SessionId, SessionId) {
        let pusher = self.open("p");
        let sub = self.open("s");
        self.subscribe(sub, tables);
        (pusher, sub)
    }

    /// The push requests handed to the application (other events stay).
    pub fn take_pushes(&mut self) -> Vec<(PushId, Vec<ChangeRecord>)> {
        let mut pushes = Vec::new();
        self.events.retain(|e| match e {
            ServerEvent::Push {
                request, changes, ..
            } => {
                pushes.push((*request, changes.clone()));
                false
            }
            _ => true,
        });
        pushes
    }

    /// Frames received by `session` since the last call.
    pub fn take(&mut self, session: SessionId) -> Vec<Value> {
        self.frames.remove(&session).unwrap_or_default()
    }

    pub fn take_events(&mut self) -> Vec<ServerEvent> {
        std::mem::take(&mut self.events)
    }

    /// Jumps virtual time forward by `by`, firing every timer on the way.
    pub fn advance(&mut self, by: Duration) {
        let target = self.now + by;
        let mut guard = 0;
        while let Some(at) = self.server.poll_timeout() {
            if at > target {
                break;
            }
            self.now = self.now.max(at);
            self.server.handle_timeout(self.now);
            self.drain();
            guard += 1;
            assert!(guard < 100_000, "timer livelock");
        }
        self.now = target;
        self.server.handle_timeout(self.now);
        self.drain();
    }

    /// Answers every pending push event by accepting all its changes at consecutive
    /// cursors from `next`.
    pub fn accept_pushes(&mut self, next: &mut u64) {
        for e in self.take_events() {
            if let ServerEvent::Push {
                request, changes, ..
            } = e
            {
                let accepted: Vec<(Cursor, ChangeRecord)> = changes
                    .into_iter()
                    .map(|c| {
                        *next += 1;
                        (Cursor::new(1, *next), c)
                    })
                    .collect();
                let latest_hlc = accepted
                    .iter()
                    .map(|(_, c)| c.hlc.clone())
                    .max()
                    .unwrap_or_default();
                let answer = PushAnswer {
                    accepted,
                    latest_hlc,
                    head: Cursor::new(1, *next),
                };
                if self.head.is_some() {
                    self.head = Some(Cursor::new(1, *next));
                }
                self.server.answer_push(self.now, request, Ok(answer));
                self.drain();
            } else {
                self.events.push(e);
            }
        }
    }
}

pub fn config() -> ServerConfig {
    let mut config = ServerConfig::default();
    // The harness reports writes (`auto_sent`), or stalls them to make slow consumers.
    config.reports_writes = true;
    config
}

pub fn record(table: &str, pk: &str, ts: i64, node: &str) -> ChangeRecord {
    ChangeRecord::new(table, pk, "f", "lww", Hlc::new(ts, 0, node), node)
}

pub fn record_json(table: &str, pk: &str, ts: i64, node: &str) -> String {
    serde_json::to_string(&record(table, pk, ts, node)).unwrap()
}

pub fn push_json(id: &str, node: &str, records: &[String]) -> String {
    format!(
        r#"{{"type":"push_request","id":"{id}","payload":{{"node_id":"{node}","changes":[{}]}}}}"#,
        records.join(",")
    )
}

/// The error code of an error frame.
pub fn error_code(frame: &Value) -> &str {
    assert_eq!(frame["type"], "error", "not an error frame: {frame}");
    frame["payload"]["code"].as_str().unwrap()
}

pub fn types(frames: &[Value]) -> Vec<&str> {
    frames.iter().map(|f| f["type"].as_str().unwrap()).collect()
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}
