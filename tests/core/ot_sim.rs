//! The OT simulation: several `OtClient`s edit shared documents concurrently
//! through one `OtServer`, over seeded links in virtual time, while connections are cut
//! (some with ops still in flight, which the server reads after the client came back on a
//! new connection), clients freeze (the server's outbound bound closes them as slow
//! consumers, or its heartbeat terminates them), the rate limit and a short history refuse
//! ops, and garbage frames are injected into connections.
//!
//! After the network heals, every client of a document holds the server's text at the
//! server's revision. Every frame a connection receives for a document is the next
//! revision (no gap, no reordering). Every inserted character is unique, so the final text
//! shows that no op was applied twice, and, where the workload only inserts, that none was
//! lost.
//!
//! `SIM_SEED=n` replays one seed exactly (a failing seed prints that command);
//! `SIM_SEEDS=n` runs seeds `0..n` (default 300).

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use syncmux::ot::{
    OtClient, OtClientConfig, OtClientEvent, OtClientState, OtHandshakeOutcome, OtServer,
    OtServerConfig, OtSessionId, OtTransmit, ResyncReason, ServerMessage, TextOp,
};
use syncmux::Handshake;
use syncmux::Instant;

/// SplitMix64: the test's own seeded generator.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.range(0, 99) < percent
    }
    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }
}

/// The `n`-th character any client inserts: unique, half of them outside the BMP (so
/// surrogate pairs are everywhere).
fn unique_char(n: u32) -> char {
    let code = if n.is_multiple_of(2) {
        0x4E00 + n / 2
    } else {
        0x2_0000 + n / 2
    };
    char::from_u32(code).unwrap()
}

enum Up {
    Frame(Bytes),
    Pong,
}

enum Down {
    Frame(Bytes),
    Ping,
    Closed,
}

struct Conn {
    session: OtSessionId,
    client: usize,
    up: VecDeque<(Instant, Up)>,
    down: VecDeque<(Instant, Down)>,
    /// The client is gone from it (it cut it, or saw it closed).
    cut: bool,
    /// The server was told the socket closed.
    reported: bool,
    /// The last revision seen on it, per document (to check order and gaps).
    seen: HashMap<String, u64>,
}

struct Peer {
    client: OtClient,
    doc: String,
    conn: Option<usize>,
    frozen_until: Instant,
    reconnect_at: Option<Instant>,
    inserted: BTreeSet<char>,
}

crate::sim::coverage_counts!(Coverage {
    cuts,
    late_copies,
    slow_consumer_closes,
    terminations,
    too_old,
    rate_limited,
    gap_resyncs,
    uncertain,
    tampered,
    edits,
});

#[derive(Clone, Copy, Debug)]
enum Action {
    Edit(usize),
    Cut(usize),
    Freeze(usize),
    Tamper(usize),
}

struct World {
    rng: Rng,
    now: Instant,
    server: OtServer,
    peers: Vec<Peer>,
    conns: Vec<Conn>,
    by_session: HashMap<OtSessionId, usize>,
    agenda: BTreeMap<(Instant, u64), Action>,
    seq: u64,
    next_char: u32,
    insert_only: bool,
    cov: Coverage,
    trace: bool,
}

const ACTIVE: Duration = Duration::from_secs(60);

impl World {
    fn new(seed: u64) -> World {
        let mut rng = Rng(seed);
        let mut config = OtServerConfig::default();
        config.seed = seed;
        config.rate_limit_messages = 0;
        if rng.chance(30) {
            config.max_history = rng.range(2, 6) as usize;
        }
        if rng.chance(20) {
            config.rate_limit_messages = 8;
            config.rate_limit_window = Duration::from_secs(10);
        }
        if rng.chance(30) {
            config.max_outbound_bytes = 1500;
        }
        let server = OtServer::new(config).unwrap();
        let insert_only = seed.is_multiple_of(4);
        let n = rng.range(2, 5) as usize;
        let peers = (0..n)
            .map(|i| {
                let doc = if rng.chance(30) { "notes" } else { "doc-1" };
                let mut config = OtClientConfig::new(format!("p{i}"));
                if doc != "doc-1" {
                    config = config.with_doc_id(doc);
                }
                config.retry_delay = Duration::from_millis(200);
                config.max_retry_delay = Duration::from_secs(3);
                Peer {
                    client: OtClient::new(config).unwrap(),
                    doc: doc.to_owned(),
                    conn: None,
                    frozen_until: Instant::ZERO,
                    reconnect_at: Some(Instant::ZERO),
                    inserted: BTreeSet::new(),
                }
            })
            .collect();
        let mut world = World {
            rng,
            now: Instant::ZERO,
            server,
            peers,
            conns: Vec::new(),
            by_session: HashMap::new(),
            agenda: BTreeMap::new(),
            seq: 0,
            next_char: 0,
            insert_only,
            cov: Coverage::default(),
            trace: std::env::var("SIM_TRACE").is_ok(),
        };
        for i in 0..n {
            let at = world.rng.ms(0, 500);
            world.schedule(at, Action::Edit(i));
            let at = world.rng.ms(1000, 20_000);
            world.schedule(at, Action::Cut(i));
            if world.rng.chance(40) {
                let at = world.rng.ms(1000, 40_000);
                world.schedule(at, Action::Freeze(i));
            }
            if world.rng.chance(30) {
                let at = world.rng.ms(1000, 50_000);
                world.schedule(at, Action::Tamper(i));
            }
        }
        world
    }

    fn schedule(&mut self, after: Duration, action: Action) {
        self.seq += 1;
        self.agenda.insert((self.now + after, self.seq), action);
    }

    fn active(&self) -> bool {
        self.now < Instant::ZERO + ACTIVE
    }

    fn latency(&mut self) -> Duration {
        self.rng.ms(1, 40)
    }

    /// When the next thing happens.
    fn next_time(&self) -> Option<Instant> {
        let mut times = Vec::new();
        times.extend(self.agenda.keys().next().map(|(t, _)| *t));
        times.extend(self.server.poll_timeout());
        for p in &self.peers {
            times.extend(p.client.poll_timeout());
            times.extend(p.reconnect_at);
        }
        for c in &self.conns {
            times.extend(c.up.front().map(|(t, _)| *t));
            if !c.cut {
                let frozen = self.peers[c.client].frozen_until;
                times.extend(c.down.front().map(|(t, _)| (*t).max(frozen)));
            }
        }
        times.into_iter().min()
    }

    fn step(&mut self) {
        let now = self.now;
        // The agenda.
        while let Some(entry) = self.agenda.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let action = entry.remove();
            self.act(action);
        }
        for i in 0..self.peers.len() {
            if self.peers[i].reconnect_at.is_some_and(|t| t <= now) {
                self.peers[i].reconnect_at = None;
                self.connect(i);
            }
            self.peers[i].client.handle_timeout(now);
        }
        self.server.handle_timeout(now);
        // The links.
        for ci in 0..self.conns.len() {
            while self.conns[ci].up.front().is_some_and(|(t, _)| *t <= now) {
                let (_, up) = self.conns[ci].up.pop_front().unwrap();
                let session = self.conns[ci].session;
                match up {
                    Up::Frame(bytes) => self.server.handle_message(now, session, bytes),
                    Up::Pong => self.server.handle_pong(now, session),
                }
                self.pump();
            }
            let conn = &mut self.conns[ci];
            if conn.cut && conn.up.is_empty() && !conn.reported {
                conn.reported = true;
                self.server.handle_disconnected(now, conn.session);
            }
            let client = self.conns[ci].client;
            if self.conns[ci].cut || self.peers[client].frozen_until > now {
                continue;
            }
            while self.conns[ci].down.front().is_some_and(|(t, _)| *t <= now) {
                let (_, down) = self.conns[ci].down.pop_front().unwrap();
                match down {
                    Down::Frame(bytes) => {
                        self.check_order(ci, &bytes);
                        self.server
                            .handle_sent(now, self.conns[ci].session, bytes.len());
                        if self.trace {
                            eprintln!("{:?} p{client} <- {}", now, String::from_utf8_lossy(&bytes));
                        }
                        self.peers[client].client.handle_message(now, bytes);
                    }
                    Down::Ping => {
                        let at = now + self.latency();
                        self.conns[ci].up.push_back((at, Up::Pong));
                    }
                    Down::Closed => {
                        self.conns[ci].cut = true;
                        self.drop_conn(client);
                        break;
                    }
                }
                self.pump();
            }
        }
        self.pump();
    }

    fn act(&mut self, action: Action) {
        match action {
            // A frozen client does nothing at all: no edits, no cuts, no pongs.
            Action::Edit(i) => {
                if self.peers[i].frozen_until <= self.now {
                    self.edit(i);
                }
                if self.active() {
                    let at = self.rng.ms(100, 2500);
                    self.schedule(at, Action::Edit(i));
                }
            }
            Action::Cut(i) => {
                let frozen = self.peers[i].frozen_until > self.now;
                if let Some(ci) = self.peers[i].conn.filter(|_| !frozen) {
                    self.cov.cuts += 1;
                    let keep = self.rng.chance(50);
                    let conn = &mut self.conns[ci];
                    conn.cut = true;
                    conn.down.clear();
                    if keep {
                        // The frames in flight still reach the server, after the client
                        // reconnected: late copies.
                        self.cov.late_copies += usize::from(!conn.up.is_empty());
                        let late = self.now + Duration::from_millis(1500);
                        for (t, _) in conn.up.iter_mut() {
                            *t = (*t).max(late);
                        }
                    } else {
                        conn.up.clear();
                    }
                    self.drop_conn(i);
                }
                if self.active() {
                    let at = self.rng.ms(2000, 20_000);
                    self.schedule(at, Action::Cut(i));
                }
            }
            Action::Freeze(i) => {
                // Mostly short; sometimes past two heartbeats, to be terminated.
                let d = if self.rng.chance(25) {
                    self.rng.ms(61_000, 70_000)
                } else {
                    self.rng.ms(500, 8000)
                };
                self.peers[i].frozen_until = self.now + d;
            }
            Action::Tamper(i) => {
                if let Some(ci) = self.peers[i].conn {
                    self.cov.tampered += 1;
                    let garbage = [
                        "garbage{",
                        r#"{"type":"op","op":[{"r":999999}],"revision":0}"#,
                        r#"{"type":"op","op":"no","revision":0}"#,
                        r#"{"type":"nope"}"#,
                    ];
                    let g = garbage[self.rng.range(0, 3) as usize];
                    let at = self.now + self.latency();
                    self.conns[ci].up.push_back((at, Up::Frame(Bytes::from(g))));
                }
                if self.active() {
                    let at = self.rng.ms(1000, 20_000);
                    self.schedule(at, Action::Tamper(i));
                }
            }
        }
    }

    /// The client loses its connection; it will dial again.
    fn drop_conn(&mut self, i: usize) {
        self.peers[i].client.handle_disconnected(self.now);
        self.peers[i].conn = None;
        let delay = self.rng.ms(20, 2000);
        self.peers[i].reconnect_at = Some(self.now + delay);
    }

    fn connect(&mut self, i: usize) {
        let outcome = self
            .server
            .handle_handshake(self.now, &Handshake::new("/ot", ""));
        let OtHandshakeOutcome::Accept { session } = outcome else {
            panic!("{outcome:?}")
        };
        let ci = self.conns.len();
        self.conns.push(Conn {
            session,
            client: i,
            up: VecDeque::new(),
            down: VecDeque::new(),
            cut: false,
            reported: false,
            seen: HashMap::new(),
        });
        self.by_session.insert(session, ci);
        self.peers[i].conn = Some(ci);
        self.peers[i].client.handle_connected(self.now);
        self.pump();
    }

    /// A random edit on the client's text: insert fresh characters, or delete a few.
    fn edit(&mut self, i: usize) {
        let chars: Vec<char> = self.peers[i].client.text().chars().collect();
        let at = self.rng.range(0, chars.len() as u64) as usize;
        let units = |cs: &[char]| cs.iter().map(|c| c.len_utf16() as u64).sum::<u64>();
        let mut op = TextOp::new().retain(units(&chars[..at]));
        let k = self.rng.range(1, 3) as usize;
        let mut after = at;
        if self.insert_only || chars.len() == at || self.rng.chance(65) {
            let text: String = (0..k)
                .map(|_| {
                    self.next_char += 1;
                    unique_char(self.next_char)
                })
                .collect();
            self.peers[i].inserted.extend(text.chars());
            op = op.insert(text);
        } else {
            after = (at + k).min(chars.len());
            op = op.delete(units(&chars[at..after]));
        }
        // Half the ops retain to the end; the others stop early and keep the rest.
        if self.rng.chance(50) {
            op = op.retain(units(&chars[after..]));
        }
        self.cov.edits += 1;
        self.peers[i].client.edit(self.now, op).unwrap();
        self.pump();
    }

    /// Every revision a connection receives for a document is the next one (the ack of an
    /// op sent twice names the first copy's revision, which is behind).
    fn check_order(&mut self, ci: usize, bytes: &[u8]) {
        let Ok(message) = ServerMessage::decode(bytes) else {
            return;
        };
        let conn = &mut self.conns[ci];
        let doc_of = |d: &Option<String>| d.clone().unwrap_or_else(|| "doc-1".to_owned());
        match message {
            ServerMessage::Op {
                revision, doc_id, ..
            } => {
                let doc = doc_of(&doc_id);
                if let Some(last) = conn.seen.get(&doc) {
                    assert_eq!(revision, last + 1, "op out of order on {doc}");
                }
                conn.seen.insert(doc, revision);
            }
            ServerMessage::Ack { revision, doc_id } => {
                let doc = doc_of(&doc_id);
                // The ack of an op sent twice names the first copy's revision, which may be
                // behind: it neither starts the count nor breaks it.
                if let Some(last) = conn.seen.get_mut(&doc) {
                    if revision > *last {
                        assert_eq!(revision, *last + 1, "ack out of order on {doc}");
                        *last = revision;
                    }
                }
            }
            ServerMessage::Snapshot {
                revision, doc_id, ..
            } => {
                let doc = doc_of(&doc_id);
                if let Some(last) = conn.seen.get(&doc) {
                    assert_eq!(revision, *last, "snapshot behind or ahead on {doc}");
                }
                conn.seen.insert(doc, revision);
            }
            ServerMessage::Error { message, .. } => {
                if message.contains("older than the history") {
                    self.cov.too_old += 1;
                }
                if message == "Rate limit exceeded" {
                    self.cov.rate_limited += 1;
                }
            }
            _ => {}
        }
    }

    /// Drains every output: client frames onto their links, server output onto theirs.
    fn pump(&mut self) {
        for i in 0..self.peers.len() {
            while let Some(frame) = self.peers[i].client.poll_transmit() {
                let ci = self.peers[i]
                    .conn
                    .expect("a client sends only when connected");
                if self.trace {
                    eprintln!("{:?} p{i} -> {}", self.now, String::from_utf8_lossy(&frame));
                }
                let at = self.now + self.latency();
                let at = self.conns[ci].up.back().map_or(at, |(t, _)| at.max(*t));
                self.conns[ci].up.push_back((at, Up::Frame(frame)));
            }
            while let Some(event) = self.peers[i].client.poll_event() {
                match event {
                    OtClientEvent::Resyncing {
                        reason: ResyncReason::RevisionGap { .. },
                    } => self.cov.gap_resyncs += 1,
                    OtClientEvent::Resynced {
                        uncertain: true, ..
                    } => self.cov.uncertain += 1,
                    _ => {}
                }
            }
        }
        while let Some(t) = self.server.poll_transmit() {
            let session = match &t {
                OtTransmit::Frame { session, .. }
                | OtTransmit::Ping { session }
                | OtTransmit::Close { session, .. }
                | OtTransmit::Terminate { session } => *session,
            };
            let ci = self.by_session[&session];
            if self.conns[ci].cut {
                continue;
            }
            let at = self.now + self.latency();
            let conn = &mut self.conns[ci];
            let at = conn.down.back().map_or(at, |(t, _)| at.max(*t));
            match t {
                OtTransmit::Frame { bytes, .. } => conn.down.push_back((at, Down::Frame(bytes))),
                OtTransmit::Ping { .. } => conn.down.push_back((at, Down::Ping)),
                OtTransmit::Close { code, .. } => {
                    assert_eq!(code.0, 4503, "only slow consumers are closed here");
                    self.cov.slow_consumer_closes += 1;
                    conn.down.push_back((at, Down::Closed));
                    conn.reported = true; // the server forgot the session already
                }
                OtTransmit::Terminate { .. } => {
                    self.cov.terminations += 1;
                    conn.down.clear();
                    conn.down.push_back((at, Down::Closed));
                    conn.reported = true;
                }
            }
        }
        while self.server.poll_event().is_some() {}
    }

    /// Healed: every client connected, synchronized, nothing in flight.
    fn settled(&self) -> bool {
        !self.active()
            && self.agenda.is_empty()
            && self.peers.iter().all(|p| {
                p.conn.is_some_and(|ci| {
                    let c = &self.conns[ci];
                    c.up.is_empty() && c.down.is_empty()
                }) && p.client.state() == OtClientState::Synchronized
                    && !p.client.has_unacked()
                    && p.frozen_until <= self.now
            })
            && self.conns.iter().all(|c| c.up.is_empty())
    }
}

fn simulate(seed: u64) -> Coverage {
    let mut w = World::new(seed);
    let deadline = Instant::ZERO + ACTIVE + Duration::from_secs(600);
    let mut steps = 0u64;
    loop {
        w.step();
        if w.settled() {
            break;
        }
        steps += 1;
        let next = w
            .next_time()
            .expect("something is always pending before settling");
        assert!(
            steps < 1_000_000 && next <= deadline,
            "seed {seed}: no convergence by {next:?} after {steps} steps (livelock?)"
        );
        w.now = w.now.max(next);
    }

    // Every client of a document holds the server's text and revision.
    let mut docs: BTreeMap<&str, Vec<&Peer>> = BTreeMap::new();
    for p in &w.peers {
        docs.entry(p.doc.as_str()).or_default().push(p);
    }
    for (doc, peers) in &docs {
        let d = w.server.document(doc).unwrap();
        for p in peers {
            assert_eq!(p.client.text(), d.text(), "seed {seed}: text of {doc}");
            assert_eq!(
                p.client.revision(),
                d.revision(),
                "seed {seed}: revision of {doc}"
            );
        }
        // No op applied twice: every inserted character is unique.
        let text = d.text();
        let chars: Vec<char> = text.chars().collect();
        let unique: BTreeSet<char> = chars.iter().copied().collect();
        if w.cov.uncertain == 0 {
            assert_eq!(
                unique.len(),
                chars.len(),
                "seed {seed}: a character twice in {doc}"
            );
        }
        // Insert-only: none lost either.
        if w.insert_only && w.cov.uncertain == 0 {
            let inserted: BTreeSet<char> = peers
                .iter()
                .flat_map(|p| p.inserted.iter().copied())
                .collect();
            assert_eq!(unique, inserted, "seed {seed}: characters lost in {doc}");
        }
    }
    // No session is left behind: one per client.
    assert_eq!(
        w.server.session_count(),
        w.peers.len(),
        "seed {seed}: sessions"
    );
    w.cov
}

#[test]
fn clients_converge_on_the_servers_text() {
    let replay = "ot_sim (SIM_TRACE=1 traces every frame)";
    let Some((seeds, total)) = crate::sim::run_seeds("ot_sim", replay, 300, simulate) else {
        return;
    };
    eprintln!("{seeds} seeds: {total:?}");
    // The workload must keep reaching the paths it exists for.
    assert!(
        seeds < 50
            || (total.late_copies > 0
                && total.slow_consumer_closes > 0
                && total.terminations > 0
                && total.too_old > 0
                && total.rate_limited > 0
                && total.tampered > 0),
        "the workload no longer reaches every recovery path: {total:?}"
    );
}
