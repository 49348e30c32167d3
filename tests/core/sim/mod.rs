//! A deterministic, seeded simulation of many `Client`s and one `Server` + `MemoryStore`, or
//! several `Server`s sharing one log (a cluster on Redis, simulated).
//!
//! Virtual time jumps to the earliest deadline (a client or server timer, a frame due on a
//! link, an application answer due). Each connection is a pair of FIFO links with seeded
//! latency, so frames on one connection stay in order while connections race each other, as
//! over TCP. The application (the test) answers pull, push and replay events after seeded
//! delays, so answers come back out of order. `drive_bounded` turns a livelock into a failure.
//!
//! With [`NetConfig::servers`] above one, every connection goes to a server drawn at random
//! and the servers share the store as the Redis backend shares its log: a push is answered
//! to its server unrouted (`Server::answer_push_unrouted`), its accepted changes are appended
//! to the log, and every server follows the log with its own seeded lag, routing each entry
//! (its own included) through `Server::handle_accepted`. A subscribe without replay starts
//! where its server has followed the log to, as the adapters' backend link answers it.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use syncmux::payload::{ChangeRecord, Cursor, Hlc, RawJson};
use syncmux::wire::CloseCode;
use syncmux::{Client, ClientConfig, Instant, PullAnswer, Server, ServerConfig, ServerEvent};
use syncmux::{ClientEvent, ClientTransmit};
use syncmux::{Handshake, HandshakeOutcome, ServerTransmit, SessionId};
use syncmux::{MemoryStore, StoreConfig};

/// SplitMix64: the test's own seeded generator.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo + 1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.range(0, 99) < percent
    }
}

/// How the simulated network and application behave.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// One-way latency of a frame, milliseconds, drawn per frame.
    pub latency_ms: (u64, u64),
    /// How long the application takes to answer a pull, push or replay, milliseconds.
    pub answer_ms: (u64, u64),
    /// How many servers share the log (1: one server that routes its own pushes).
    pub servers: usize,
    /// How long a server takes to read an entry of the shared log, milliseconds.
    pub follow_ms: (u64, u64),
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            latency_ms: (1, 40),
            answer_ms: (0, 30),
            servers: 1,
            follow_ms: (0, 50),
        }
    }
}

enum Down {
    Frame(Bytes),
    Close(CloseCode, String),
}

struct Conn {
    /// The server this connection reached.
    server: usize,
    session: SessionId,
    up: VecDeque<(Instant, Bytes)>,
    down: VecDeque<(Instant, Down)>,
    /// The client reads nothing before this moment (a slow consumer): frames wait on the
    /// link, so the server hears late that they were written (`handle_sent`).
    stalled_until: Option<Instant>,
}

/// One simulated client and what it has seen.
pub struct Node {
    pub client: Client,
    conn: Option<Conn>,
    pub events: Vec<ClientEvent>,
    /// Every change delivered to the application by `Changes` events, in order.
    pub received: Vec<ChangeRecord>,
    pub connects: u32,
}

impl Node {
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }
    /// How many acks and pull responses reached the application (every subscribe is
    /// acknowledged, so this counts settled subscriptions and pulls).
    pub fn acks(&self) -> usize {
        self.events
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    ClientEvent::Response {
                        outcome: Ok(syncmux::Response::Ack(_) | syncmux::Response::Pull(_)),
                        ..
                    }
                )
            })
            .count()
    }
    pub fn session(&self) -> Option<SessionId> {
        self.conn.as_ref().map(|c| c.session)
    }
    /// The server and session of the node's connection.
    pub fn at(&self) -> Option<(usize, SessionId)> {
        self.conn.as_ref().map(|c| (c.server, c.session))
    }
}

/// An entry of the shared log: a change, its position, and the server and session that
/// pushed it.
type Entry = (Cursor, ChangeRecord, (usize, SessionId));

/// How far one server has read the shared log.
struct Follower {
    /// Log entries before this index were handed to the server.
    next: usize,
    /// Moments at which the server will have read the log up to an index, in order.
    reads: VecDeque<(Instant, usize)>,
    /// Where it stands: the position a subscribe without replay starts after.
    at: Cursor,
}

/// The whole simulated world.
pub struct Net {
    pub now: Instant,
    pub servers: Vec<Server>,
    pub store: MemoryStore,
    pub nodes: Vec<Node>,
    pub rng: Rng,
    pub config: NetConfig,
    answers: Vec<(Instant, u64, usize, ServerEvent)>,
    answer_seq: u64,
    /// Whether answers are held back (to stage interleavings by hand).
    pub hold_answers: bool,
    sessions: BTreeMap<(usize, SessionId), usize>,
    /// The shared log (with several servers) and each server's follower.
    log: Vec<Entry>,
    followers: Vec<Follower>,
    pub steps: u64,
}

pub const URL: &str = "ws://sim.test/sync/ws";

impl Net {
    pub fn new(seed: u64, server: ServerConfig, config: NetConfig) -> Net {
        let count = config.servers.max(1);
        let servers = (0..count)
            .map(|k| {
                let mut server = server.clone();
                server.seed = seed.wrapping_add(k as u64);
                Server::new(server).unwrap()
            })
            .collect();
        let store = MemoryStore::new(StoreConfig::default());
        let followers = (0..count)
            .map(|_| Follower {
                next: 0,
                reads: VecDeque::new(),
                at: store.head(),
            })
            .collect();
        Net {
            now: Instant::from_millis(1_000),
            servers,
            store,
            nodes: Vec::new(),
            rng: Rng::new(seed),
            config,
            answers: Vec::new(),
            answer_seq: 0,
            hold_answers: false,
            sessions: BTreeMap::new(),
            log: Vec::new(),
            followers,
            steps: 0,
        }
    }

    /// The first (with one server, the only) server.
    pub fn server(&self) -> &Server {
        &self.servers[0]
    }

    /// Whether the servers share a log.
    fn shared(&self) -> bool {
        self.servers.len() > 1
    }

    /// Adds a client with a config based on `ClientConfig::new(URL, node_id)`.
    pub fn add_client(&mut self, node_id: &str, tweak: impl FnOnce(&mut ClientConfig)) -> usize {
        let mut config = ClientConfig::new(URL, node_id);
        config.seed = self.rng.next_u64();
        tweak(&mut config);
        self.nodes.push(Node {
            client: Client::new(config).unwrap(),
            conn: None,
            events: Vec::new(),
            received: Vec::new(),
            connects: 0,
        });
        self.nodes.len() - 1
    }

    fn latency(&mut self) -> Duration {
        let (lo, hi) = self.config.latency_ms;
        Duration::from_millis(self.rng.range(lo, hi))
    }

    /// Drains every output of every machine until nothing moves.
    pub fn pump(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                while let Some(t) = self.nodes[i].client.poll_transmit() {
                    moved = true;
                    self.client_transmit(i, t);
                }
                while let Some(ev) = self.nodes[i].client.poll_event() {
                    moved = true;
                    if let ClientEvent::Changes { changes, .. } = &ev {
                        self.nodes[i].received.extend(changes.iter().cloned());
                    }
                    self.nodes[i].events.push(ev);
                }
            }
            for k in 0..self.servers.len() {
                while let Some(t) = self.servers[k].poll_transmit() {
                    moved = true;
                    self.server_transmit(k, t);
                }
                while let Some(ev) = self.servers[k].poll_event() {
                    moved = true;
                    match ev {
                        ServerEvent::Pull { .. }
                        | ServerEvent::Push { .. }
                        | ServerEvent::Replay { .. } => {
                            let (lo, hi) = self.config.answer_ms;
                            let due = self.now + Duration::from_millis(self.rng.range(lo, hi));
                            self.answer_seq += 1;
                            self.answers.push((due, self.answer_seq, k, ev));
                        }
                        _ => {}
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn client_transmit(&mut self, i: usize, t: ClientTransmit) {
        match t {
            ClientTransmit::Connect(dial) => {
                let rest = dial.url.strip_prefix("ws://sim.test").unwrap_or(&dial.url);
                let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
                let mut hs = Handshake::new(path, query);
                for (name, value) in &dial.headers {
                    hs = hs.header(*name, value.clone());
                }
                for p in &dial.protocols {
                    hs = hs.protocol(*p);
                }
                let k = self.rng.range(0, self.servers.len() as u64 - 1) as usize;
                match self.servers[k].handle_handshake(self.now, &hs) {
                    HandshakeOutcome::Accept {
                        session, protocol, ..
                    } => {
                        self.sessions.insert((k, session), i);
                        self.nodes[i].conn = Some(Conn {
                            server: k,
                            session,
                            up: VecDeque::new(),
                            down: VecDeque::new(),
                            stalled_until: None,
                        });
                        self.nodes[i].connects += 1;
                        let now = self.now;
                        self.nodes[i]
                            .client
                            .handle_connected(now, protocol.as_deref());
                    }
                    HandshakeOutcome::Reject { status, reason } => {
                        let now = self.now;
                        self.nodes[i].client.handle_disconnected(
                            now,
                            None,
                            &format!("HTTP {status}: {reason}"),
                        );
                    }
                }
            }
            ClientTransmit::Frame(bytes) => {
                let lat = self.latency();
                let now = self.now;
                if let Some(conn) = self.nodes[i].conn.as_mut() {
                    let at = fifo_time(conn.up.back().map(|x| x.0), now + lat);
                    conn.up.push_back((at, bytes));
                }
            }
            ClientTransmit::Close { .. } => {
                if let Some(conn) = self.nodes[i].conn.take() {
                    self.sessions.remove(&(conn.server, conn.session));
                    self.servers[conn.server].handle_disconnected(self.now, conn.session);
                }
            }
        }
    }

    fn server_transmit(&mut self, k: usize, t: ServerTransmit) {
        let session = t.session();
        let Some(&i) = self.sessions.get(&(k, session)) else {
            return; // the connection is gone: the bytes are lost with it
        };
        let lat = self.latency();
        let now = self.now;
        let Some(conn) = self.nodes[i].conn.as_mut() else {
            return;
        };
        let at = fifo_time(conn.down.back().map(|x| x.0), now + lat);
        match t {
            ServerTransmit::Frame { bytes, .. } => conn.down.push_back((at, Down::Frame(bytes))),
            ServerTransmit::Close { code, reason, .. } => {
                conn.down.push_back((at, Down::Close(code, reason)))
            }
        }
    }

    /// Cuts node `i`'s connection abruptly: frames in flight are lost both ways.
    pub fn cut(&mut self, i: usize) {
        if let Some(conn) = self.nodes[i].conn.take() {
            self.sessions.remove(&(conn.server, conn.session));
            self.servers[conn.server].handle_disconnected(self.now, conn.session);
            let now = self.now;
            self.nodes[i]
                .client
                .handle_disconnected(now, Some(CloseCode::ABNORMAL), "cut");
        }
        self.pump();
    }

    /// Node `i` stops reading for `span`: the server's frames pile up on the link and their
    /// bytes stay counted against the session's outbound bound until delivered.
    pub fn stall(&mut self, i: usize, span: Duration) {
        let now = self.now;
        if let Some(conn) = self.nodes[i].conn.as_mut() {
            conn.stalled_until = Some(now + span);
        }
    }

    /// The application closes node `i`'s session (`Server::close_session`): its queued
    /// frames go out, then the close.
    pub fn kick(&mut self, i: usize, code: CloseCode, reason: &str) {
        if let Some((k, session)) = self.nodes[i].at() {
            let now = self.now;
            self.servers[k].close_session(now, session, code, reason);
        }
        self.pump();
    }

    /// Every clock jumps forward by `span` at once (a suspended machine, a stalled process):
    /// everything that fell due in between runs at the same moment.
    pub fn jump(&mut self, span: Duration) {
        self.now += span;
        let now = self.now;
        self.step(now);
    }

    /// The earliest moment anything is due.
    fn next_deadline(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut take = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for node in &self.nodes {
            if let Some(t) = node.client.poll_timeout() {
                take(t);
            }
            if let Some(conn) = &node.conn {
                if let Some((t, _)) = conn.up.front() {
                    take(*t);
                }
                if let Some((t, _)) = conn.down.front() {
                    take(conn.stalled_until.map_or(*t, |s| s.max(*t)));
                }
            }
        }
        for server in &self.servers {
            if let Some(t) = server.poll_timeout() {
                take(t);
            }
        }
        for follower in &self.followers {
            if let Some((t, _)) = follower.reads.front() {
                take(*t);
            }
        }
        if !self.hold_answers {
            for (t, _, _, _) in &self.answers {
                take(*t);
            }
        }
        next
    }

    /// Advances to the next deadline (never past `limit`) and runs everything due then.
    /// Returns false when nothing is due before `limit`.
    pub fn step(&mut self, limit: Instant) -> bool {
        self.pump();
        let Some(next) = self.next_deadline() else {
            return false;
        };
        if next > limit {
            return false;
        }
        self.now = self.now.max(next);
        self.steps += 1;
        let now = self.now;
        for i in 0..self.nodes.len() {
            self.deliver(i, now);
        }
        if !self.hold_answers {
            self.answer_due(now);
        }
        self.follow(now);
        for server in &mut self.servers {
            if server.poll_timeout().is_some_and(|t| t <= now) {
                server.handle_timeout(now);
            }
        }
        for node in &mut self.nodes {
            if node.client.poll_timeout().is_some_and(|t| t <= now) {
                node.client.handle_timeout(now);
            }
        }
        self.pump();
        true
    }

    /// Hands every server the log entries it has read by `now`, in log order, one call per
    /// push, naming its own sessions' pushes (they are not echoed to their pusher).
    fn follow(&mut self, now: Instant) {
        for k in 0..self.followers.len() {
            let follower = &mut self.followers[k];
            let mut upto = follower.next;
            while follower.reads.front().is_some_and(|(t, _)| *t <= now) {
                upto = upto.max(follower.reads.pop_front().unwrap().1);
            }
            while follower.next < upto {
                let pusher = self.log[follower.next].2;
                let mut batch = Vec::new();
                while follower.next < upto && self.log[follower.next].2 == pusher {
                    let (cursor, record, _) = &self.log[follower.next];
                    batch.push((*cursor, record.clone()));
                    follower.next += 1;
                }
                follower.at = batch.last().unwrap().0;
                let own = (pusher.0 == k).then_some(pusher.1);
                self.servers[k].handle_accepted(now, batch, own);
            }
        }
    }

    fn deliver(&mut self, i: usize, now: Instant) {
        while let Some(conn) = self.nodes[i].conn.as_mut() {
            let (k, session) = (conn.server, conn.session);
            if conn.up.front().is_some_and(|(t, _)| *t <= now) {
                let (_, bytes) = conn.up.pop_front().unwrap();
                trace(now, i, "->", &bytes);
                self.servers[k].handle_message(now, session, bytes);
                continue;
            }
            let readable = conn.stalled_until.is_none_or(|s| s <= now);
            if readable && conn.down.front().is_some_and(|(t, _)| *t <= now) {
                let (_, down) = conn.down.pop_front().unwrap();
                match down {
                    Down::Frame(bytes) => {
                        trace(now, i, "<-", &bytes);
                        self.servers[k].handle_sent(now, session, bytes.len());
                        self.nodes[i].client.handle_message(now, bytes);
                    }
                    Down::Close(code, reason) => {
                        self.nodes[i].conn = None;
                        self.sessions.remove(&(k, session));
                        // The adapter finishes the close and reports the socket gone.
                        self.servers[k].handle_disconnected(now, session);
                        self.nodes[i]
                            .client
                            .handle_disconnected(now, Some(code), &reason);
                    }
                }
                continue;
            }
            break;
        }
    }

    /// Answers every application event that is due, in due order.
    pub fn answer_due(&mut self, now: Instant) {
        self.answers.sort_by_key(|(t, seq, _, _)| (*t, *seq));
        let due = self.answers.partition_point(|(t, _, _, _)| *t <= now);
        let ready: Vec<_> = self.answers.drain(..due).collect();
        for (_, _, k, ev) in ready {
            self.answer(k, ev);
        }
    }

    /// Answers every held application event now, in the given order of their kinds.
    pub fn answer_all(&mut self) {
        let ready: Vec<_> = self.answers.drain(..).collect();
        for (_, _, k, ev) in ready {
            self.answer(k, ev);
        }
        self.pump();
    }

    /// Answers held events that match `pick`, leaving the rest held.
    pub fn answer_where(&mut self, pick: impl Fn(&ServerEvent) -> bool) {
        let (ready, rest): (Vec<_>, Vec<_>) =
            self.answers.drain(..).partition(|(_, _, _, e)| pick(e));
        self.answers = rest;
        for (_, _, k, ev) in ready {
            self.answer(k, ev);
        }
        self.pump();
    }

    pub fn pending_answers(&self) -> usize {
        self.answers.len()
    }

    fn answer(&mut self, k: usize, ev: ServerEvent) {
        let now = self.now;
        if !self.shared() {
            let _ = self.store.answer(&mut self.servers[k], now, ev);
            return;
        }
        match ev {
            ServerEvent::Push {
                request,
                session,
                changes,
                ..
            } => {
                let out = self.store.push(changes);
                let start = self.log.len();
                self.log.extend(
                    out.accepted
                        .iter()
                        .map(|(cursor, record)| (*cursor, record.clone(), (k, session))),
                );
                if self.log.len() > start {
                    let (lo, hi) = self.config.follow_ms;
                    for f in &mut self.followers {
                        let lag = Duration::from_millis(self.rng.range(lo, hi));
                        let at = fifo_time(f.reads.back().map(|x| x.0), now + lag);
                        f.reads.push_back((at, self.log.len()));
                    }
                }
                self.servers[k].answer_push_unrouted(now, request, Ok(out));
            }
            ServerEvent::Replay {
                request,
                head_only: true,
                ..
            } => {
                // Where the server's follower stands: everything after it reaches the
                // session live.
                let answer = PullAnswer {
                    head: self.followers[k].at,
                    complete: true,
                    ..PullAnswer::default()
                };
                self.servers[k].answer_replay(now, request, Ok(answer));
            }
            other => {
                let _ = self.store.answer(&mut self.servers[k], now, other);
            }
        }
    }

    /// Runs until `now + span`, failing if it takes more than `max_steps` steps (a livelock).
    pub fn run_for(&mut self, span: Duration, max_steps: u64) {
        let limit = self.now + span;
        let start = self.steps;
        while self.step(limit) {
            assert!(
                self.steps - start <= max_steps,
                "livelock: more than {max_steps} steps within {span:?}"
            );
        }
        self.now = self.now.max(limit);
        self.pump();
    }

    /// Runs until `done` holds, failing after `span` of virtual time or `max_steps` steps.
    pub fn drive_bounded(
        &mut self,
        span: Duration,
        max_steps: u64,
        mut done: impl FnMut(&Net) -> bool,
    ) {
        let limit = self.now + span;
        let start = self.steps;
        self.pump();
        while !done(self) {
            assert!(
                self.step(limit),
                "condition not reached within {span:?} of virtual time"
            );
            assert!(
                self.steps - start <= max_steps,
                "livelock: {max_steps} steps"
            );
        }
    }
}

fn trace(now: Instant, node: usize, dir: &str, bytes: &[u8]) {
    if std::env::var_os("SIM_TRACE").is_some() {
        let text = String::from_utf8_lossy(bytes);
        let cut: String = text.chars().take(300).collect();
        eprintln!("{:>8}ms node {node} {dir} {cut}", now.as_millis());
    }
}

fn fifo_time(last: Option<Instant>, at: Instant) -> Instant {
    last.map_or(at, |l| l.max(at))
}

/// An `lww` change of `table`'s field `title` at `pk`, made by `node` at `ts`, whose value
/// names them (`"node@ts"`).
pub fn change(table: &str, pk: u64, node: &str, ts: i64) -> ChangeRecord {
    ChangeRecord::new(
        table,
        pk.to_string(),
        "title",
        "lww",
        Hlc::new(ts, 0, node),
        node,
    )
    .with_value(RawJson::from_serialize(&format!("{node}@{ts}")).expect("a string serialises"))
}

/// The seeds a simulation test runs: the one `SIM_SEED` (its coverage printed; then `None`),
/// or else `0..SIM_SEEDS` (default `default`): their number and their coverage summed. A
/// failing seed is named (`name`), with the command that replays it (`replay`: the test
/// filter and any hints).
pub fn run_seeds<C: std::fmt::Debug + Default + std::ops::AddAssign>(
    name: &str,
    replay: &str,
    default: u64,
    run: impl Fn(u64) -> C,
) -> Option<(u64, C)> {
    use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
    let run_one = |seed: u64| match catch_unwind(AssertUnwindSafe(|| run(seed))) {
        Ok(cov) => cov,
        Err(panic) => {
            eprintln!(
                "{name} failed at seed {seed}; replay it with: \
                 SIM_SEED={seed} cargo test --test core {replay}"
            );
            resume_unwind(panic)
        }
    };
    if let Some(seed) = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        let cov = run_one(seed);
        eprintln!("seed {seed}: {cov:?}");
        return None;
    }
    let seeds: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    let mut total = C::default();
    for seed in 0..seeds {
        total += run_one(seed);
    }
    Some((seeds, total))
}

/// A simulation's coverage: how often each path it exists for was reached, in one run and
/// (`+=`) over a run of seeds.
macro_rules! coverage_counts {
    ($(#[$meta:meta])* $name:ident { $($field:ident),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Default, Clone, Copy)]
        struct $name {
            $($field: usize,)*
        }

        impl std::ops::AddAssign for $name {
            fn add_assign(&mut self, other: $name) {
                $(self.$field += other.$field;)*
            }
        }
    };
}
pub(crate) use coverage_counts;
