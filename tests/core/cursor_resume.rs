//! Gapless resume with server cursors (docs/protocol.md section 7, "Cursors, resume and
//! replay order") over the in-memory simulation: a subscriber cut off while a node pushes changes
//! with old HLCs and new ones gets every change exactly once after resuming; resuming by `since`
//! alone (as a client of the seed protocol does) loses the old-HLC ones; a store restart or a
//! retention cut is never a silent gap.

#![allow(clippy::unwrap_used)]

use crate::sim;

use std::collections::BTreeMap;
use std::time::Duration;

use sim::{Net, NetConfig};
use syncmux::payload::{ChangeRecord, Cursor, Hlc, PullRequest, ResumeAck, Subscribe};
use syncmux::ServerConfig;
use syncmux::{ClientEvent, Response};
use syncmux::{MemoryStore, StoreConfig};

fn change(pk: u64, node: &str, ts: i64) -> ChangeRecord {
    sim::change("docs", pk, node, ts)
}

/// How many times each pk reached node `i`'s application.
fn received(net: &Net, i: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for c in &net.nodes[i].received {
        *seen.entry(c.pk.clone()).or_insert(0) += 1;
    }
    seen
}

fn once(pks: &[u64]) -> BTreeMap<String, usize> {
    pks.iter().map(|pk| (pk.to_string(), 1)).collect()
}

fn resyncs(net: &Net, i: usize) -> usize {
    let events = &net.nodes[i].events;
    events
        .iter()
        .filter(|e| matches!(e, ClientEvent::ResyncNeeded { .. }))
        .count()
}

fn net() -> Net {
    let mut config = ServerConfig::default();
    config.rate_limit_burst = 0;
    Net::new(
        9,
        config,
        NetConfig {
            latency_ms: (1, 20),
            answer_ms: (0, 10),
            ..NetConfig::default()
        },
    )
}

/// A subscriber that stays away long after a cut (its first reconnect waits 5 to 10 s), so
/// the test decides what happens while it is gone.
fn add_subscriber(net: &mut Net, node: &str, with_cursor: bool) -> usize {
    net.add_client(node, |c| {
        c.reconnect_delay = Duration::from_secs(10);
        c.max_reconnect_delay = Duration::from_secs(10);
        c.resume_with_cursor = with_cursor;
    })
}

fn push(net: &mut Net, writer: usize, changes: Vec<ChangeRecord>) {
    let now = net.now;
    net.nodes[writer].client.push(now, changes).unwrap();
}

/// Subscribes each of `subscribers` to `docs` and lets the subscriptions settle.
fn subscribe_docs(net: &mut Net, subscribers: &[usize]) {
    let now = net.now;
    for &i in subscribers {
        net.nodes[i]
            .client
            .subscribe(now, Subscribe::new(["docs"]))
            .unwrap();
    }
    net.run_for(Duration::from_millis(200), 1_000);
}

/// The scenario. Returns the net, the cut subscriber and the live one.
fn late_old_hlcs(with_cursor: bool) -> (Net, usize, usize) {
    let mut net = net();
    let writer = net.add_client("writer", |_| {});
    let cut = add_subscriber(&mut net, "cut", with_cursor);
    let live = add_subscriber(&mut net, "live", with_cursor);
    subscribe_docs(&mut net, &[cut, live]);

    push(
        &mut net,
        writer,
        vec![change(1, "writer", 1_000), change(2, "writer", 2_000)],
    );
    net.drive_bounded(Duration::from_secs(5), 1_000, |net| {
        net.nodes[cut].received.len() == 2 && net.nodes[live].received.len() == 2
    });

    net.cut(cut);
    // While it is away, a node that was offline for long pushes its edits with old HLCs (older
    // than everything the subscriber has seen), among new ones.
    push(
        &mut net,
        writer,
        vec![
            change(3, "offline", 500),
            change(4, "writer", 3_000),
            change(5, "offline", 1_500),
        ],
    );
    net.drive_bounded(Duration::from_secs(2), 1_000, |net| {
        net.nodes[live].received.len() == 5
    });
    assert!(
        !net.nodes[cut].is_connected(),
        "setup: the pushes must land while the subscriber is away"
    );
    // It comes back and resumes.
    net.run_for(Duration::from_secs(30), 10_000);
    assert!(net.nodes[cut].is_connected());
    assert_eq!(net.nodes[cut].connects, 2);
    assert_eq!(received(&net, live), once(&[1, 2, 3, 4, 5]), "live saw all");
    (net, cut, live)
}

#[test]
fn resume_after_cursor_gets_late_old_hlc_changes_exactly_once() {
    let (net, cut, _) = late_old_hlcs(true);
    assert_eq!(received(&net, cut), once(&[1, 2, 3, 4, 5]));
    assert_eq!(resyncs(&net, cut), 0);
    // In cursor order: what it missed arrives as the store accepted it.
    let pks: Vec<&str> = net.nodes[cut]
        .received
        .iter()
        .map(|c| c.pk.as_str())
        .collect();
    assert_eq!(pks, ["1", "2", "3", "4", "5"]);
}

/// The control: the same run resuming by `since` alone loses the changes whose HLCs are older
/// than the newest the subscriber had seen, silently (no resync event), while the live
/// subscriber has them: the replicas diverge. This is what the cursor fixes.
#[test]
fn resume_by_since_alone_loses_late_old_hlc_changes() {
    let (net, cut, _) = late_old_hlcs(false);
    assert_eq!(received(&net, cut), once(&[1, 2, 4]));
    assert_eq!(resyncs(&net, cut), 0, "the loss is silent");
}

/// The application resumes itself from a cursor it kept (for example across a process
/// restart): `pull_after` and `subscribe_after` give exactly what came after it; `since`
/// alone would miss the late old-HLC changes.
#[test]
fn app_pulls_and_subscribes_after_a_cursor() {
    let (mut net, _, live) = late_old_hlcs(true);
    // The cursor the live subscriber had after the first batch.
    let kept = net.nodes[live]
        .events
        .iter()
        .find_map(|e| match e {
            ClientEvent::Changes {
                changes, cursor, ..
            } if changes.last().unwrap().pk == "2" => *cursor,
            _ => None,
        })
        .unwrap();
    assert_eq!(kept, Cursor::new(0, 2));
    let app = net.add_client("app", |_| {});
    let now = net.now;
    let client = &mut net.nodes[app].client;
    let newest = Some(Hlc::new(2_000, 0, "writer"));
    let by_cursor = client
        .pull(
            now,
            PullRequest::new(["docs"]).since(newest.clone()).after(kept),
        )
        .unwrap();
    let by_since = client
        .pull(now, PullRequest::new(["docs"]).since(newest.clone()))
        .unwrap();
    let sub = client
        .subscribe(now, Subscribe::new(["docs"]).since(newest).after(kept))
        .unwrap();
    net.run_for(Duration::from_secs(1), 1_000);

    let mut pulls = BTreeMap::new();
    let mut ack = None;
    for e in &net.nodes[app].events {
        match e {
            ClientEvent::Response {
                id,
                outcome: Ok(Response::Pull(p)),
            } => {
                let pks: Vec<String> = p.changes.iter().map(|c| c.pk.clone()).collect();
                pulls.insert(*id, (pks, p.cursor));
            }
            ClientEvent::Response {
                id,
                outcome: Ok(Response::Ack(a)),
            } if *id == sub => ack = a.clone(),
            _ => {}
        }
    }
    assert_eq!(pulls[&by_cursor].0, ["3", "4", "5"]);
    assert_eq!(pulls[&by_cursor].1, Some(Cursor::new(0, 5)));
    assert_eq!(pulls[&by_since].0, ["4"], "since alone misses the old HLCs");
    assert_eq!(
        ack,
        Some(ResumeAck {
            recovered: true,
            cursor: Cursor::new(0, 5)
        })
    );
    assert_eq!(received(&net, app), once(&[3, 4, 5]), "the replay");
}

/// The first two changes of the restart scenario.
fn first_two() -> Vec<ChangeRecord> {
    vec![change(1, "writer", 1_000), change(2, "writer", 2_000)]
}

/// A writer and a subscriber (resuming by cursor or not) that received the first two
/// changes. Returns the net, the writer and the subscriber.
fn subscribed_to_two_changes(with_cursor: bool) -> (Net, usize, usize) {
    let mut net = net();
    let writer = net.add_client("writer", |_| {});
    let sub = add_subscriber(&mut net, "sub", with_cursor);
    subscribe_docs(&mut net, &[sub]);
    push(&mut net, writer, first_two());
    net.drive_bounded(Duration::from_secs(5), 1_000, |net| {
        net.nodes[sub].received.len() == 2
    });
    (net, writer, sub)
}

/// The store restarts with a new epoch while the subscriber is away; it is reloaded (say,
/// from a backup) with the old changes and a late old-HLC one the subscriber never saw.
fn restart_store_while_away(net: &mut Net, sub: usize) {
    net.cut(sub);
    let mut config = StoreConfig::default();
    config.epoch = 1;
    net.store = MemoryStore::new(config);
    let mut reloaded = first_two();
    reloaded.push(change(3, "offline", 500));
    assert_eq!(net.store.push(reloaded).accepted.len(), 3);
}

/// A subscriber with a cursor of the old history and a store restarted with a new epoch: the
/// resume says `recovered: false`, the client raises `ResyncNeeded`, and from then on it
/// resumes from positions of the new epoch without gap.
#[test]
fn store_restart_gives_resync_needed_never_a_silent_gap() {
    let (mut net, writer, sub) = subscribed_to_two_changes(true);
    assert_eq!(net.nodes[sub].client.cursor(), Some(Cursor::new(0, 2)));
    restart_store_while_away(&mut net, sub);
    net.run_for(Duration::from_secs(30), 10_000);

    assert!(net.nodes[sub].is_connected());
    let resync: Vec<&Vec<String>> = net.nodes[sub]
        .events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::ResyncNeeded { tables } => Some(tables),
            _ => None,
        })
        .collect();
    assert_eq!(resync, [&vec!["docs".to_owned()]], "the gap is announced");
    assert!(!received(&net, sub).contains_key("3"));
    assert_eq!(
        net.nodes[sub].client.cursor(),
        Some(Cursor::new(1, 3)),
        "new epoch"
    );

    // The application resynchronised (not modelled); later resumes are in the new epoch and
    // complete again: a late old-HLC change pushed while it is away arrives.
    net.cut(sub);
    push(&mut net, writer, vec![change(4, "offline", 100)]);
    net.run_for(Duration::from_secs(30), 10_000);
    assert!(net.nodes[sub].is_connected());
    assert_eq!(received(&net, sub), once(&[1, 2, 4]));
    assert_eq!(resyncs(&net, sub), 1, "no second resync");
}

/// The control of the restart: resuming by `since` alone, the same restart loses the late
/// old-HLC change without any event.
#[test]
fn store_restart_with_since_alone_is_a_silent_gap() {
    let (mut net, _, sub) = subscribed_to_two_changes(false);
    restart_store_while_away(&mut net, sub);
    net.run_for(Duration::from_secs(30), 10_000);
    assert!(net.nodes[sub].is_connected());
    assert_eq!(received(&net, sub), once(&[1, 2]));
    assert_eq!(resyncs(&net, sub), 0);
}

/// Retention evicts the subscriber's position while it is away: `recovered: false`, and the
/// client raises `ResyncNeeded` rather than resuming past a hole.
#[test]
fn cursor_cut_by_retention_gives_resync_needed() {
    let mut net = net();
    let mut config = StoreConfig::default();
    config.retention = 3;
    net.store = MemoryStore::new(config);
    let writer = net.add_client("writer", |_| {});
    let sub = add_subscriber(&mut net, "sub", true);
    subscribe_docs(&mut net, &[sub]);
    push(&mut net, writer, vec![change(1, "writer", 1_000)]);
    net.drive_bounded(Duration::from_secs(5), 1_000, |net| {
        net.nodes[sub].received.len() == 1
    });
    net.cut(sub);
    let away: Vec<ChangeRecord> = (2..=6)
        .map(|pk| change(pk, "offline", 10 * pk as i64))
        .collect();
    push(&mut net, writer, away);
    net.run_for(Duration::from_secs(30), 10_000);
    assert!(net.nodes[sub].is_connected());
    assert_eq!(resyncs(&net, sub), 1);
    // No duplicate of what it had; what the store still holds after its position it got.
    let seen = received(&net, sub);
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
}

/// The application's own `subscribe_after` with a cursor of a history the store no longer
/// has: the ack says `recovered: false`.
#[test]
fn subscribe_after_a_stale_cursor_is_not_recovered() {
    let mut net = net();
    let writer = net.add_client("writer", |_| {});
    push(&mut net, writer, vec![change(1, "writer", 1_000)]);
    net.run_for(Duration::from_secs(1), 1_000);
    let app = net.add_client("app", |_| {});
    let now = net.now;
    let id = net.nodes[app]
        .client
        .subscribe(now, Subscribe::new(["docs"]).after(Cursor::new(41, 7)))
        .unwrap();
    net.run_for(Duration::from_secs(1), 1_000);
    let ack = net.nodes[app].events.iter().find_map(|e| match e {
        ClientEvent::Response {
            id: got,
            outcome: Ok(Response::Ack(a)),
        } if *got == id => Some(a.clone()),
        _ => None,
    });
    assert_eq!(
        ack,
        Some(Some(ResumeAck {
            recovered: false,
            cursor: Cursor::new(0, 1)
        }))
    );
    assert_eq!(received(&net, app), once(&[1]), "fell back to everything");
}

/// A `subscribe_after` cut off before its ack resumes from the application's cursor, not from
/// the start of the history.
#[test]
fn subscribe_after_cut_before_its_ack_resumes_from_its_cursor() {
    let (mut net, _, _) = late_old_hlcs(true);
    let app = add_subscriber(&mut net, "app", true);
    net.hold_answers = true;
    let now = net.now;
    net.nodes[app]
        .client
        .subscribe(now, Subscribe::new(["docs"]).after(Cursor::new(0, 2)))
        .unwrap();
    net.drive_bounded(Duration::from_secs(1), 1_000, |net| {
        net.pending_answers() == 1
    });
    net.cut(app);
    // The replay answer for the dead session goes nowhere.
    net.answer_all();
    net.hold_answers = false;
    net.run_for(Duration::from_secs(30), 10_000);
    assert!(net.nodes[app].is_connected());
    assert_eq!(received(&net, app), once(&[3, 4, 5]));
}

/// One client and one server passing frames by hand, so that a test decides exactly which
/// frames arrive before a connection drops.
mod by_hand {
    use std::collections::VecDeque;

    use bytes::Bytes;
    use syncmux::payload::ChangeRecord;
    use syncmux::wire::CloseCode;
    use syncmux::MemoryStore;
    use syncmux::{Client, Instant, Server, ServerEvent};
    use syncmux::{ClientEvent, ClientTransmit};
    use syncmux::{Handshake, HandshakeOutcome, ServerTransmit, SessionId};

    pub(super) struct Link {
        pub(super) now: Instant,
        pub(super) client: Client,
        pub(super) server: Server,
        pub(super) store: MemoryStore,
        session: Option<SessionId>,
        /// Frames from the server not yet delivered to the client.
        pub(super) down: VecDeque<Bytes>,
        pub(super) received: Vec<ChangeRecord>,
        pub(super) events: Vec<ClientEvent>,
        /// Every frame the client sent, as text.
        pub(super) sent: Vec<String>,
    }

    impl Link {
        pub(super) fn new(client: Client, server: Server, store: MemoryStore) -> Link {
            Link {
                now: Instant::from_millis(1_000),
                client,
                server,
                store,
                session: None,
                down: VecDeque::new(),
                received: Vec::new(),
                events: Vec::new(),
                sent: Vec::new(),
            }
        }

        /// Runs everything except the delivery of `down` frames until nothing moves: client
        /// transmits reach the server at once, the store answers the server's events.
        pub(super) fn settle(&mut self) {
            loop {
                let mut moved = false;
                while let Some(t) = self.client.poll_transmit() {
                    moved = true;
                    match t {
                        ClientTransmit::Connect(dial) => self.accept(&dial.url, &dial.protocols),
                        ClientTransmit::Frame(bytes) => {
                            let session = self.session.expect("frame while connected");
                            self.sent.push(String::from_utf8(bytes.to_vec()).unwrap());
                            self.server.handle_message(self.now, session, bytes);
                        }
                        ClientTransmit::Close { .. } => self.drop_session(),
                    }
                }
                while let Some(ev) = self.client.poll_event() {
                    moved = true;
                    if let ClientEvent::Changes { changes, .. } = &ev {
                        self.received.extend(changes.iter().cloned());
                    }
                    self.events.push(ev);
                }
                while let Some(t) = self.server.poll_transmit() {
                    moved = true;
                    match t {
                        ServerTransmit::Frame { session, bytes }
                            if Some(session) == self.session =>
                        {
                            self.down.push_back(bytes)
                        }
                        _ => {}
                    }
                }
                while let Some(ev) = self.server.poll_event() {
                    moved = true;
                    self.answer(ev);
                }
                if !moved {
                    return;
                }
            }
        }

        fn accept(&mut self, url: &str, protocols: &[&'static str]) {
            let query = url.split_once('?').map_or("", |(_, q)| q);
            let mut hs = Handshake::new("/sync", query);
            for p in protocols {
                hs = hs.protocol(*p);
            }
            match self.server.handle_handshake(self.now, &hs) {
                HandshakeOutcome::Accept {
                    session, protocol, ..
                } => {
                    self.session = Some(session);
                    self.client.handle_connected(self.now, protocol.as_deref());
                }
                other => panic!("refused: {other:?}"),
            }
        }

        fn answer(&mut self, ev: ServerEvent) {
            let _ = self.store.answer(&mut self.server, self.now, ev);
        }

        /// Delivers the next `n` frames from the server.
        pub(super) fn deliver(&mut self, n: usize) {
            for _ in 0..n {
                let bytes = self.down.pop_front().expect("a frame to deliver");
                self.client.handle_message(self.now, bytes);
                self.settle();
            }
        }

        pub(super) fn deliver_all(&mut self) {
            self.settle();
            while !self.down.is_empty() {
                self.deliver(1);
            }
        }

        fn drop_session(&mut self) {
            self.down.clear();
            if let Some(session) = self.session.take() {
                self.server.handle_disconnected(self.now, session);
            }
        }

        /// The connection drops: undelivered frames are lost.
        pub(super) fn cut(&mut self) {
            self.drop_session();
            self.client
                .handle_disconnected(self.now, Some(CloseCode::ABNORMAL), "cut");
            self.settle();
        }

        /// Lets the reconnect timer fire.
        pub(super) fn reconnect(&mut self) {
            let at = self.client.poll_timeout().expect("a reconnect timer");
            self.now = self.now.max(at);
            self.client.handle_timeout(self.now);
            self.settle();
        }
    }
}

/// A client without keepalive and a server that sends one change per frame, by hand.
fn one_change_per_frame() -> by_hand::Link {
    let mut server = ServerConfig::default();
    server.max_changes_per_frame = 1;
    let mut config = syncmux::ClientConfig::new("ws://sim.test/sync", "sub");
    config.ping_interval = Duration::ZERO;
    by_hand::Link::new(
        syncmux::Client::new(config).unwrap(),
        syncmux::Server::new(server).unwrap(),
        MemoryStore::new(StoreConfig::default()),
    )
}

/// A subscriber that received nothing yet still has a position: its subscribe's ack said
/// where its stream starts (docs/protocol.md section 6.7, `ack`). Changes are positioned while it
/// is away, in an HLC order unlike their position order, and the connection drops half-way
/// through the replay after the reconnect, while a late old-HLC change is positioned after
/// it. The resume is by cursor each time, the replay in cursor order with a cursor per frame,
/// so the position of the last frame received is where the next resume starts: no gap, no
/// duplicate.
#[test]
fn replay_by_since_cut_half_way_resumes_from_its_last_position() {
    let mut link = one_change_per_frame();
    let now = link.now;
    link.client
        .subscribe(now, Subscribe::new(["docs"]))
        .unwrap();
    link.deliver_all();
    link.cut();

    // Positioned 1, 2, 3, while the HLC order is 2, 3, 1.
    let away = vec![
        change(1, "a", 3_000),
        change(2, "b", 1_000),
        change(3, "c", 2_000),
    ];
    assert_eq!(link.store.push(away).accepted.len(), 3);
    link.reconnect();
    assert_eq!(link.down.len(), 4, "three replay frames and the ack");
    // After the replay was read, a late change with the oldest HLC of all.
    assert_eq!(link.store.push(vec![change(4, "d", 500)]).accepted.len(), 1);
    link.deliver(2);
    link.cut();

    link.reconnect();
    link.deliver_all();
    let pks: Vec<&str> = link.received.iter().map(|c| c.pk.as_str()).collect();
    assert_eq!(pks, ["1", "2", "3", "4"]);
    assert!(!link
        .events
        .iter()
        .any(|e| matches!(e, ClientEvent::ResyncNeeded { .. })));
}

/// The crate's own client with a replay by `since` alone (docs/protocol.md section 5, "Replay
/// order"): the frames carry no cursor, so cut off before the ack it resumes from the newest
/// HLC it received (the replay is in HLC order: everything below it arrived), and once
/// acknowledged it keeps the ack's head as the table's position and resumes from there.
#[test]
fn a_replay_by_since_resumes_from_its_newest_hlc_until_acked_then_from_the_ack() {
    let mut link = one_change_per_frame();
    // Positioned 1..4, in HLC order 2, 4, 3, 1.
    let history = vec![
        change(1, "a", 4_000),
        change(2, "b", 1_000),
        change(3, "c", 3_000),
        change(4, "d", 2_000),
    ];
    assert_eq!(link.store.push(history).accepted.len(), 4);
    let now = link.now;
    link.client
        .subscribe(now, Subscribe::new(["docs"]).since(Hlc::new(0, 0, "")))
        .unwrap();
    link.settle();
    assert_eq!(link.down.len(), 5, "four replay frames and the ack");
    link.deliver(2);
    let pks: Vec<&str> = link.received.iter().map(|c| c.pk.as_str()).collect();
    assert_eq!(pks, ["2", "4"], "HLC order");
    link.cut();

    // Resumed from the newest HLC received, without a cursor (it has none for this table).
    link.reconnect();
    let sent = link.sent.split_off(0);
    assert_eq!(
        sent.last().map(String::as_str),
        Some(
            r#"{"type":"subscribe","id":"2","payload":{"tables":["docs"],"since":{"ts":2000,"c":0,"node":"d"}}}"#
        )
    );
    link.deliver_all();
    let pks: Vec<&str> = link.received.iter().map(|c| c.pk.as_str()).collect();
    assert_eq!(pks, ["2", "4", "3", "1"], "every change once");
    // The restore answered the application's subscribe, in flight at the cut.
    assert!(link.events.iter().any(|e| matches!(
        e,
        ClientEvent::Response { outcome: Ok(Response::Ack(Some(ResumeAck { recovered: true, cursor }))), .. }
            if *cursor == Cursor::new(0, 4)
    )));

    // Acknowledged: the table's position is the ack's head, so the next resume is by cursor
    // and gets a late old-HLC change that `since` could not see.
    link.cut();
    assert_eq!(link.store.push(vec![change(5, "e", 10)]).accepted.len(), 1);
    link.reconnect();
    let sent = link.sent.split_off(0);
    assert!(
        sent.last().unwrap().contains(r#""cursor":"0.4""#),
        "{sent:?}"
    );
    link.deliver_all();
    let pks: Vec<&str> = link.received.iter().map(|c| c.pk.as_str()).collect();
    assert_eq!(pks, ["2", "4", "3", "1", "5"]);
}
