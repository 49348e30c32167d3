//! The client fed arbitrary sequences of inputs: commands, dials that succeed or fail,
//! disconnects with any code, replies to its requests (right, wrong, malformed, duplicated,
//! for unknown ids), server-initiated frames built from fuzz bytes, garbage, time jumps
//! (forwards and backwards).
//!
//! Invariants (as in `tests/client_props.rs`): no panic; every request the client accepted
//! ends in exactly one outcome, and no outcome names an id it never issued; the client's
//! queues stay within their configured bounds; after `handle_timeout(now)` the next deadline
//! is after `now`.
#![no_main]

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use syncmux::payload::{Hlc, PullRequest, RawJson, Subscribe};
use syncmux::wire::{CloseCode, DecodeLimits, Frame};
use syncmux::Instant;
use syncmux::{Client, ClientConfig, ClientEvent, ClientTransmit};

#[derive(Arbitrary, Debug)]
enum Op {
    Command {
        kind: u8,
        table: u8,
    },
    Connect,
    Close,
    Connected {
        right_protocol: bool,
    },
    Disconnected {
        code: Option<u16>,
    },
    /// Answer the n-th request seen on the wire.
    Reply {
        nth: u16,
        how: u8,
        cursor: u16,
    },
    /// A server-initiated frame.
    Server {
        kind: u8,
        table: u8,
        cursor: u16,
        text: String,
    },
    Garbage(Vec<u8>),
    Binary,
    Advance {
        ms: u16,
        scale: u8,
    },
    FireNext,
    Backwards {
        ms: u16,
    },
    Drain,
}

#[derive(Arbitrary, Debug)]
struct Input {
    seed: u64,
    queue_when_offline: bool,
    ops: Vec<Op>,
}

const TABLES: [&str; 4] = ["a", "b", "c", "d"];

fn config(input: &Input) -> ClientConfig {
    let mut config = ClientConfig::new("ws://h/s", "n1");
    config.seed = input.seed;
    config.max_in_flight = 6;
    config.max_offline_queue = if input.queue_when_offline { 4 } else { 0 };
    config.max_queued_events = 8;
    config.max_queued_transmits = 8;
    config.max_subscriptions = 3;
    config.max_presence_topics = 2;
    config.max_rooms = 2;
    config.max_reconnect_attempts = Some(4);
    config
}

fn change(table: &str, ts: u64, pk: &str) -> Value {
    json!({"table": table, "pk": pk, "field": "f", "crdt_type": "lww",
           "hlc": {"ts": ts, "c": 0, "node": "s"}, "node_id": "s", "value": 1})
}

struct Run {
    client: Client,
    config: ClientConfig,
    now: Instant,
    /// Requests seen on the wire: (id, type).
    wire: Vec<(String, String)>,
    last_reply: Option<Bytes>,
    /// Outcomes counted per request id that a command returned.
    outcomes: BTreeMap<u64, u32>,
}

impl Run {
    fn recv(&mut self, frame: Bytes) {
        self.client.handle_message(self.now, frame.clone());
        self.last_reply = Some(frame);
    }

    fn recv_json(&mut self, value: Value) {
        self.recv(Bytes::from(value.to_string()));
    }

    fn command(&mut self, kind: u8, table: u8) {
        let (c, now) = (&mut self.client, self.now);
        let t = TABLES[usize::from(table % 4)];
        let data = RawJson::from_string(kind.to_string()).expect("a number is JSON");
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
        if let Ok(id) = result {
            assert!(
                self.outcomes.insert(id.get(), 0).is_none(),
                "ids are unique"
            );
        }
    }

    fn reply(&mut self, nth: u16, how: u8, cursor: u16) {
        if self.wire.is_empty() {
            return;
        }
        let (id, ty) = self.wire[usize::from(nth) % self.wire.len()].clone();
        let cursor = format!("1.{cursor}");
        let answer = match how % 8 {
            0 | 1 => match ty.as_str() {
                "pull_request" => json!({"type": "pull_response", "id": id, "payload": {
                    "changes": [change("a", u64::from(how), "1")], "latest_hlc": "1:0:s",
                    "cursor": cursor}}),
                "push_request" => json!({"type": "push_response", "id": id, "payload": {
                    "merged": 0, "latest_hlc": "1:0:s", "cursor": cursor}}),
                "presence_get" => json!({"type": "presence_snapshot", "id": id,
                    "payload": {"topic": "a", "states": []}}),
                "ping" => json!({"type": "pong", "id": id}),
                _ if how % 2 == 0 => json!({"type": "ack", "id": id}),
                _ => json!({"type": "ack", "id": id,
                    "payload": {"recovered": how % 4 == 1, "cursor": cursor}}),
            },
            2 => json!({"type": "error", "id": id,
                "payload": {"code": "FORBIDDEN", "message": "no"}}),
            3 => json!({"type": "ack", "request_id": id}),
            4 => {
                let cut = format!(r#"{{"type":"pull_response","id":"{id}","payload":"#);
                return self.recv(Bytes::from(cut));
            }
            5 => json!({"type": "pong", "id": format!("x{id}")}),
            6 => {
                if let Some(again) = self.last_reply.clone() {
                    self.recv(again);
                }
                return;
            }
            _ => json!({"type": "pull_response", "id": id, "payload": {"changes": "no"}}),
        };
        self.recv_json(answer);
    }

    fn server(&mut self, kind: u8, table: u8, cursor: u16, text: &str) {
        let t = TABLES[usize::from(table % 4)];
        let cursor = format!("1.{cursor}");
        let frame = match kind % 10 {
            0 => json!({"type": "change", "cursor": cursor,
                "payload": change(t, u64::from(kind), text)}),
            1 => json!({"type": "changes", "cursor": cursor,
                "payload": [change(t, u64::from(kind), "1"), change(text, 3, "2")]}),
            2 => json!({"type": "ping", "id": text, "payload": [kind]}),
            3 => json!({"type": "presence_event",
                "payload": {"type": "join", "node_id": text, "topic": t}}),
            4 => json!({"type": "room",
                "payload": {"event": "message", "room": t, "node_id": text, "data": 1}}),
            5 => json!({"type": "error", "payload": {"code": text, "message": "boom"}}),
            6 => json!({"type": "changes", "payload": [{"table": t}]}),
            7 => json!({"type": text, "id": "x"}),
            8 => json!({"type": "change", "cursor": text,
                "payload": change(t, u64::from(kind), "3")}),
            _ => json!({"type": "room", "payload": {"event": "members", "room": t,
                "members": [{"node_id": text, "data": null}]}}),
        };
        self.recv_json(frame);
    }

    fn drain(&mut self) {
        while let Some(t) = self.client.poll_transmit() {
            if let ClientTransmit::Frame(bytes) = &t {
                // Decoded as a peer would: `serde_json::Value` refuses numbers beyond f64,
                // which are JSON and which a pong echoes byte for byte.
                let mut limits = DecodeLimits::DEFAULT;
                limits.max_frame_len = 0;
                limits.max_depth = 0;
                let frame = Frame::decode(bytes.clone(), &limits).expect("the client sends frames");
                if let Some(id) = frame.id() {
                    self.wire
                        .push((id.as_str().to_owned(), frame.kind().as_str().to_owned()));
                }
            }
        }
        while let Some(event) = self.client.poll_event() {
            if let ClientEvent::Response { id, .. } = &event {
                let count = self
                    .outcomes
                    .get_mut(&id.get())
                    .expect("an outcome names an id a command returned");
                *count += 1;
                assert_eq!(*count, 1, "request {} ended twice", id.get());
            }
        }
        // Bound the test's own memory on long inputs.
        if self.wire.len() > 256 {
            self.wire.drain(..128);
        }
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
        assert!(s.transmits <= c.max_queued_transmits + restore + 3, "{s:?}");
        assert!(
            s.events <= c.max_queued_events + c.max_in_flight + restore + 8,
            "{s:?}"
        );
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

    fn step(&mut self, op: Op, n: usize) {
        match op {
            Op::Command { kind, table } => self.command(kind, table),
            Op::Connect => self.client.connect(self.now),
            Op::Close => self.client.close(self.now),
            Op::Connected { right_protocol } => {
                let proto = if right_protocol {
                    Some("syncmux.v1")
                } else {
                    Some("syncmux.v9")
                };
                self.client.handle_connected(self.now, proto);
            }
            Op::Disconnected { code } => {
                self.client
                    .handle_disconnected(self.now, code.map(CloseCode), "x")
            }
            Op::Reply { nth, how, cursor } => self.reply(nth, how, cursor),
            Op::Server {
                kind,
                table,
                cursor,
                text,
            } => self.server(kind, table, cursor, &text),
            Op::Garbage(bytes) => self.recv(Bytes::from(bytes)),
            Op::Binary => self.client.handle_binary(self.now, 4),
            Op::Advance { ms, scale } => {
                self.now += Duration::from_millis(u64::from(ms) * u64::from(scale % 8 + 1));
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
            Op::Backwards { ms } => {
                let earlier = self.now - Duration::from_millis(u64::from(ms));
                self.client.handle_timeout(earlier);
                self.check_timeout();
            }
            Op::Drain => {}
        }
        self.check_bounds();
        if n % 3 == 0 {
            self.drain();
        }
    }
}

fuzz_target!(|input: Input| {
    let config = config(&input);
    let mut run = Run {
        client: Client::new(config.clone()).expect("a valid config"),
        config,
        now: Instant::ZERO,
        wire: Vec::new(),
        last_reply: None,
        outcomes: BTreeMap::new(),
    };
    for (n, op) in input.ops.into_iter().take(400).enumerate() {
        run.step(op, n);
    }
    run.client.close(run.now);
    run.drain();
    for (id, count) in &run.outcomes {
        assert_eq!(*count, 1, "request {id} got {count} outcomes");
    }
});
