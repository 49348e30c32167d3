//! Property tests of the client under random commands, server frames (valid, garbage,
//! duplicated, for unknown ids), disconnects and time jumps.
//!
//! Invariants: no panic; every request gets exactly one outcome; memory stays within the
//! configured bounds; `poll_timeout() >= now` after `handle_timeout(now)`; the same seed and
//! inputs give identical outputs.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use syncmux::payload::{Hlc, PullRequest, RawJson, Subscribe};
use syncmux::wire::CloseCode;
use syncmux::Instant;
use syncmux::{Client, ClientConfig, ClientEvent, ClientTransmit};

#[derive(Clone, Debug)]
enum Op {
    Command(u8, u8),
    Connect,
    Close,
    Connected(bool),
    Disconnected(Option<u16>),
    /// Answer the n-th request seen on the wire, in one of several ways.
    Reply(usize, u8),
    /// Send a server-initiated frame.
    Server(u8, u8),
    Advance(u64),
    FireNext,
    Backwards(u64),
    Drain,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<u8>(), 0u8..4).prop_map(|(k, t)| Op::Command(k, t)),
        1 => Just(Op::Connect),
        1 => Just(Op::Close),
        3 => any::<bool>().prop_map(Op::Connected),
        2 => prop_oneof![Just(None), Just(Some(1006)), Just(Some(1000)), Just(Some(4500)), Just(Some(4401)), Just(Some(4426))]
            .prop_map(Op::Disconnected),
        6 => (any::<usize>(), any::<u8>()).prop_map(|(n, how)| Op::Reply(n, how)),
        3 => (any::<u8>(), 0u8..4).prop_map(|(k, t)| Op::Server(k, t)),
        2 => (0u64..40_000).prop_map(Op::Advance),
        3 => Just(Op::FireNext),
        1 => (0u64..10_000).prop_map(Op::Backwards),
        4 => Just(Op::Drain),
    ]
}

fn config(seed: u64) -> ClientConfig {
    let mut config = ClientConfig::new("ws://h/s", "n1");
    config.seed = seed;
    config.max_in_flight = 6;
    config.max_offline_queue = 4;
    config.max_queued_events = 8;
    config.max_queued_transmits = 8;
    config.max_subscriptions = 3;
    config.max_presence_topics = 2;
    config.max_rooms = 2;
    config.max_reconnect_attempts = Some(4);
    config
}

const TABLES: [&str; 4] = ["a", "b", "c", "d"];

fn change(table: &str, ts: u8) -> String {
    format!(
        r#"{{"table":"{table}","pk":"1","field":"f","crdt_type":"lww","hlc":{{"ts":{ts},"c":0,"node":"s"}},"node_id":"s"}}"#
    )
}

struct Run {
    client: Client,
    config: ClientConfig,
    now: Instant,
    /// Requests seen on the wire: (id, type).
    wire: Vec<(String, String)>,
    last_reply: Option<String>,
    /// Outcomes per request id returned by a command.
    outcomes: BTreeMap<u64, u32>,
    log: Vec<String>,
}

impl Run {
    fn new(seed: u64) -> Run {
        let config = config(seed);
        Run {
            client: Client::new(config.clone()).expect("valid config"),
            config,
            now: Instant::ZERO,
            wire: Vec::new(),
            last_reply: None,
            outcomes: BTreeMap::new(),
            log: Vec::new(),
        }
    }

    fn recv(&mut self, json: String) {
        self.client
            .handle_message(self.now, Bytes::from(json.clone()));
        self.last_reply = Some(json);
    }

    fn command(&mut self, kind: u8, table: u8) {
        let (c, now) = (&mut self.client, self.now);
        let t = TABLES[usize::from(table)];
        let data = RawJson::from_string(format!("{kind}")).expect("a number");
        let result = match kind % 12 {
            0 => c.pull(now, PullRequest::new([t])),
            1 => c.push(now, vec![]),
            2 => c.subscribe(
                now,
                Subscribe::new([t]).since(Hlc::new(i64::from(kind), 0, "x")),
            ),
            3 => c.unsubscribe(now, [t]),
            4 => c.update_presence(now, t, data),
            5 => c.leave_presence(now, t),
            6 => c.get_presence(now, t),
            7 => c.join_room(now, t, Some(data)),
            8 => c.leave_room(now, t),
            9 => c.broadcast(now, t, data),
            10 => c.ping(now, data),
            _ => c.subscribe(now, Subscribe::new(TABLES)),
        };
        if let Ok(id) = &result {
            assert!(
                self.outcomes.insert(id.get(), 0).is_none(),
                "ids are unique"
            );
        }
        self.log.push(format!("cmd {result:?}"));
    }

    fn reply(&mut self, n: usize, how: u8) {
        if self.wire.is_empty() {
            return;
        }
        let (id, ty) = self.wire[n % self.wire.len()].clone();
        let answer = match how % 8 {
            0 | 1 => match ty.as_str() {
                "pull_request" => format!(
                    r#"{{"type":"pull_response","id":"{id}","payload":{{"changes":[{}],"latest_hlc":"1:0:s","cursor":"1.{how}"}}}}"#,
                    change("a", how)
                ),
                "push_request" => format!(
                    r#"{{"type":"push_response","id":"{id}","payload":{{"merged":0,"latest_hlc":"1:0:s"}}}}"#
                ),
                "presence_get" => format!(
                    r#"{{"type":"presence_snapshot","id":"{id}","payload":{{"topic":"a","states":[]}}}}"#
                ),
                "ping" => format!(r#"{{"type":"pong","id":"{id}"}}"#),
                _ if how.is_multiple_of(2) => format!(r#"{{"type":"ack","id":"{id}"}}"#),
                _ => format!(
                    r#"{{"type":"ack","id":"{id}","payload":{{"recovered":false,"cursor":"2.{how}"}}}}"#
                ),
            },
            2 => format!(
                r#"{{"type":"error","id":"{id}","payload":{{"code":"FORBIDDEN","message":"no"}}}}"#
            ),
            3 => format!(r#"{{"type":"ack","request_id":"{id}"}}"#),
            4 => format!(r#"{{"type":"pull_response","id":"{id}","payload":"#),
            5 => format!(r#"{{"type":"pong","id":"x{id}"}}"#),
            6 => match self.last_reply.clone() {
                Some(again) => again,
                None => return,
            },
            _ => format!(r#"{{"type":"pull_response","id":"{id}","payload":{{"changes":"no"}}}}"#),
        };
        self.recv(answer);
    }

    fn server(&mut self, kind: u8, table: u8) {
        let t = TABLES[usize::from(table)];
        let frame = match kind % 9 {
            0 => format!(
                r#"{{"type":"change","cursor":"1.{kind}","payload":{}}}"#,
                change(t, kind)
            ),
            1 => format!(
                r#"{{"type":"changes","cursor":"3.{kind}","payload":[{},{}]}}"#,
                change(t, kind),
                change("b", kind)
            ),
            2 => format!(r#"{{"type":"ping","id":"s{kind}","payload":[{kind}]}}"#),
            3 => format!(
                r#"{{"type":"presence_event","payload":{{"type":"join","node_id":"x","topic":"{t}"}}}}"#
            ),
            4 => format!(
                r#"{{"type":"room","payload":{{"event":"message","room":"{t}","data":1}}}}"#
            ),
            5 => r#"{"type":"error","payload":{"code":"INTERNAL","message":"boom"}}"#.to_owned(),
            6 => "\u{0}garbage{".to_owned(),
            7 => {
                self.client.handle_binary(self.now, 1);
                return;
            }
            _ => format!(r#"{{"type":"changes","payload":[{{"table":"{t}"}}]}}"#),
        };
        self.recv(frame);
    }

    fn drain(&mut self) {
        while let Some(t) = self.client.poll_transmit() {
            if let ClientTransmit::Frame(bytes) = &t {
                let v: serde_json::Value =
                    serde_json::from_slice(bytes).expect("the client sends JSON");
                if let (Some(id), Some(ty)) = (v["id"].as_str(), v["type"].as_str()) {
                    self.wire.push((id.to_owned(), ty.to_owned()));
                }
            }
            self.log.push(format!("tx {t:?}"));
        }
        while let Some(event) = self.client.poll_event() {
            if let ClientEvent::Response { id, .. } = &event {
                let count = self
                    .outcomes
                    .get_mut(&id.get())
                    .expect("outcome for an issued id");
                *count += 1;
            }
            self.log.push(format!("ev {event:?}"));
        }
        self.log
            .push(format!("timeout {:?}", self.client.poll_timeout()));
    }

    fn check_bounds(&self) {
        let s = self.client.stats();
        let c = &self.config;
        assert!(s.requests <= c.max_in_flight, "{s:?}");
        assert!(s.offline_queue <= c.max_offline_queue, "{s:?}");
        assert!(s.subscriptions <= c.max_subscriptions, "{s:?}");
        assert!(s.presence_topics <= c.max_presence_topics, "{s:?}");
        assert!(s.rooms <= c.max_rooms, "{s:?}");
        let restore = c.max_subscriptions + c.max_presence_topics + c.max_rooms;
        assert!(s.all_requests <= c.max_in_flight + restore, "{s:?}");
        // Beyond the bounds: restore frames, one dial, one close, one ping per connection.
        assert!(s.transmits <= c.max_queued_transmits + restore + 3, "{s:?}");
        // Beyond the data bound: one outcome per request plus a few lifecycle events per input.
        assert!(
            s.events <= c.max_queued_events + c.max_in_flight + restore + 8,
            "{s:?}"
        );
    }

    fn step(&mut self, op: &Op) {
        match op {
            Op::Command(k, t) => self.command(*k, *t),
            Op::Connect => self.client.connect(self.now),
            Op::Close => self.client.close(self.now),
            Op::Connected(ok) => {
                let proto = if *ok { Some("syncmux.v1") } else { None };
                self.client.handle_connected(self.now, proto);
            }
            Op::Disconnected(code) => {
                self.client
                    .handle_disconnected(self.now, code.map(CloseCode), "x")
            }
            Op::Reply(n, how) => self.reply(*n, *how),
            Op::Server(k, t) => self.server(*k, *t),
            Op::Advance(ms) => {
                self.now += Duration::from_millis(*ms);
                self.client.handle_timeout(self.now);
                self.check_timeout();
            }
            Op::FireNext => {
                if let Some(at) = self.client.poll_timeout() {
                    self.now = self.now.max(at);
                    self.client.handle_timeout(self.now);
                    self.check_timeout();
                }
            }
            Op::Backwards(ms) => {
                let earlier = self.now - Duration::from_millis(*ms);
                self.client.handle_timeout(earlier);
                self.check_timeout();
            }
            Op::Drain => {}
        }
        self.check_bounds();
        if matches!(op, Op::Drain) || self.log.len().is_multiple_of(3) {
            self.drain();
        }
    }

    fn check_timeout(&self) {
        if let Some(at) = self.client.poll_timeout() {
            assert!(
                at > self.now,
                "poll_timeout {at:?} not after now {:?}",
                self.now
            );
        }
    }

    /// Closes the client and checks that every request got exactly one outcome.
    fn finish(mut self) -> Vec<String> {
        self.client.close(self.now);
        self.drain();
        for (id, count) in &self.outcomes {
            assert_eq!(*count, 1, "request {id} got {count} outcomes");
        }
        self.log
    }
}

fn run(seed: u64, ops: &[Op]) -> Vec<String> {
    let mut run = Run::new(seed);
    for op in ops {
        run.step(op);
    }
    run.finish()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn every_request_ends_once_within_bounds_and_replays_identically(
        seed in any::<u64>(),
        ops in prop::collection::vec(op(), 1..120),
    ) {
        let first = run(seed, &ops);
        let second = run(seed, &ops);
        prop_assert_eq!(first, second);
    }
}
