//! In-memory simulation: several `Client`s and one `Server` + `MemoryStore` exchanging frames
//! over seeded links, with pushes, subscriptions, presence, rooms, cut connections and
//! out-of-order application answers. Everyone converges to the store.

#![allow(clippy::unwrap_used)]

use crate::sim;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use sim::{change, Net, NetConfig};
use syncmux::payload::{ChangeRecord, Hlc, PullRequest, RawJson, Subscribe};
use syncmux::SessionId;
use syncmux::{ServerConfig, ServerEvent};

const TABLES: [&str; 3] = ["docs", "tasks", "notes"];

fn key(c: &ChangeRecord) -> (String, String, String, Hlc) {
    (
        c.table.clone(),
        c.pk.clone(),
        c.field.clone(),
        c.hlc.clone(),
    )
}

/// Every accepted change of the store, per table.
fn store_log(net: &Net, tables: &[String]) -> Vec<ChangeRecord> {
    let out = net.store.pull(tables, None, None);
    assert!(out.complete);
    out.changes.into_iter().map(|(_, c)| c).collect()
}

fn config() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.rate_limit_burst = 0; // the workload is bursty on purpose
    config
}

/// The scenario of subscribers, pushers, presence and rooms, with cuts; afterwards
/// every subscriber has seen every change of its tables exactly once (its own pushes it may
/// see once, through a replay, or not at all), and membership matches the live sessions.
fn converge(seed: u64) {
    let mut net = Net::new(seed, config(), NetConfig::default());
    let n = 5;
    for i in 0..n {
        net.add_client(&format!("node-{i}"), |c| {
            c.reconnect_delay = Duration::from_millis(200);
            c.max_reconnect_delay = Duration::from_secs(2);
        });
    }
    // Each client subscribes to two of the three tables, joins presence and a room.
    let mut subscribed: Vec<Vec<String>> = Vec::new();
    for i in 0..n {
        let tables: Vec<String> = (0..2).map(|k| TABLES[(i + k) % 3].to_owned()).collect();
        let now = net.now;
        let client = &mut net.nodes[i].client;
        client
            .subscribe(now, Subscribe::new(tables.clone()))
            .unwrap();
        client
            .update_presence(now, "doc:1", RawJson::from_serialize(&i).unwrap())
            .unwrap();
        client.join_room(now, "lobby", None).unwrap();
        // The usual start: subscribe, then pull the current state. The pull's cursor gives
        // the client a stream position before any change reaches it (see the client docs:
        // a subscriber with no position at all replays from `since` alone).
        client.pull(now, PullRequest::new(tables.clone())).unwrap();
        subscribed.push(tables);
    }
    // Wait for every subscription to be acknowledged.
    net.drive_bounded(Duration::from_secs(10), 10_000, |net| {
        net.nodes.iter().all(|node| node.acks() >= 4)
    });

    // Workload: random pushes from random nodes, random cuts, time passing.
    let mut pushed: Vec<Vec<ChangeRecord>> = vec![Vec::new(); n];
    for round in 0..60u64 {
        let who = net.rng.range(0, n as u64 - 1) as usize;
        let table = TABLES[net.rng.range(0, 2) as usize];
        // Some pushes carry old HLCs (an offline node catching up).
        let ts = if net.rng.chance(20) {
            net.rng.range(1, 1000) as i64
        } else {
            1_000_000 + round as i64 * 10
        };
        let c = change(table, net.rng.range(0, 20), &format!("node-{who}"), ts);
        let now = net.now;
        if net.nodes[who].client.push(now, vec![c.clone()]).is_ok() {
            pushed[who].push(c);
        }
        if net.rng.chance(10) {
            let victim = net.rng.range(0, n as u64 - 1) as usize;
            net.cut(victim);
        }
        let span = Duration::from_millis(net.rng.range(0, 120));
        net.run_for(span, 50_000);
    }
    // Heal: let every reconnect, replay and answer finish.
    net.run_for(Duration::from_secs(60), 500_000);

    for i in 0..n {
        let node = &net.nodes[i];
        assert!(node.is_connected(), "seed {seed}: node {i} not reconnected");
        let log = store_log(&net, &subscribed[i]);
        let own: BTreeSet<_> = pushed[i].iter().map(key).collect();
        let mut seen = BTreeMap::new();
        for c in &node.received {
            assert!(
                subscribed[i].contains(&c.table),
                "seed {seed}: node {i} got a change of unsubscribed {}",
                c.table
            );
            *seen.entry(key(c)).or_insert(0) += 1;
        }
        for (k, count) in &seen {
            assert_eq!(*count, 1, "seed {seed}: node {i} got {k:?} {count} times");
        }
        for c in &log {
            let k = key(c);
            if !(seen.contains_key(&k) || own.contains(&k)) && std::env::var("SIM_DEBUG").is_ok() {
                for e in &node.events {
                    eprintln!("{e:?}");
                }
                let out = net.store.pull(&subscribed[i], None, None);
                for (cur, c) in &out.changes {
                    eprintln!("store {cur} {} {} {:?}", c.table, c.pk, c.hlc);
                }
            }
            assert!(
                seen.contains_key(&k) || own.contains(&k),
                "seed {seed}: node {i} never saw {k:?}"
            );
        }
        assert_eq!(
            seen.len()
                + own
                    .iter()
                    .filter(|k| !seen.contains_key(*k) && log.iter().any(|c| &key(c) == *k))
                    .count(),
            log.len(),
            "seed {seed}: node {i} saw changes the store does not hold"
        );
    }
    // Membership names exactly the live sessions.
    let live: BTreeSet<SessionId> = net.nodes.iter().filter_map(|n| n.session()).collect();
    let presence: BTreeSet<SessionId> =
        net.server().presence_members("doc:1").into_iter().collect();
    assert_eq!(presence, live, "seed {seed}: presence");
    let room: BTreeSet<SessionId> = net.server().room_members("lobby").into_iter().collect();
    assert_eq!(room, live, "seed {seed}: room");
    // Every client converges to the store: the newest value per key it knows equals the store's.
    for i in 0..n {
        let mut mine: BTreeMap<(String, String, String), Hlc> = BTreeMap::new();
        for c in net.nodes[i].received.iter().chain(pushed[i].iter()) {
            if subscribed[i].contains(&c.table) {
                let e = mine
                    .entry((c.table.clone(), c.pk.clone(), c.field.clone()))
                    .or_default();
                *e = e.clone().max(c.hlc.clone());
            }
        }
        let mut store: BTreeMap<(String, String, String), Hlc> = BTreeMap::new();
        for c in store_log(&net, &subscribed[i]) {
            let e = store
                .entry((c.table.clone(), c.pk.clone(), c.field.clone()))
                .or_default();
            *e = e.clone().max(c.hlc.clone());
        }
        assert_eq!(mine, store, "seed {seed}: node {i} diverged from the store");
    }
}

#[test]
fn clients_converge_to_the_store() {
    let seeds: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    if let Some(seed) = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        return converge(seed);
    }
    for seed in 0..seeds {
        converge(seed);
    }
}

/// A push lands between a subscribe-with-since and its replay answer: the subscriber gets the
/// replay, then the live change, each exactly once and in cursor order.
#[test]
fn push_between_subscribe_since_and_its_replay() {
    let mut net = Net::new(
        7,
        config(),
        NetConfig {
            latency_ms: (5, 5),
            answer_ms: (0, 0),
            ..NetConfig::default()
        },
    );
    let writer = net.add_client("writer", |_| {});
    let reader = net.add_client("reader", |_| {});
    // History before the reader subscribes.
    let now = net.now;
    net.nodes[writer]
        .client
        .push(
            now,
            vec![
                change("docs", 1, "writer", 10),
                change("docs", 2, "writer", 20),
            ],
        )
        .unwrap();
    net.drive_bounded(Duration::from_secs(5), 1_000, |net| net.store.len() == 2);

    // The reader subscribes with since = 10; hold the application's answers.
    net.hold_answers = true;
    let now = net.now;
    net.nodes[reader]
        .client
        .subscribe(
            now,
            Subscribe::new(["docs"]).since(Hlc::new(10, 0, "writer")),
        )
        .unwrap();
    net.drive_bounded(Duration::from_secs(5), 1_000, |net| {
        net.pending_answers() == 1
    });
    // The writer's push arrives while the replay is still unanswered; answer the push first.
    let now = net.now;
    net.nodes[writer]
        .client
        .push(now, vec![change("docs", 3, "writer", 30)])
        .unwrap();
    net.drive_bounded(Duration::from_secs(5), 1_000, |net| {
        net.pending_answers() == 2
    });
    net.answer_where(|e| matches!(e, ServerEvent::Push { .. }));
    net.run_for(Duration::from_millis(50), 1_000);
    assert!(
        net.nodes[reader].received.is_empty(),
        "the live change must wait for the replay"
    );
    net.answer_all();
    net.hold_answers = false;
    net.run_for(Duration::from_millis(100), 1_000);

    let got: Vec<String> = net.nodes[reader]
        .received
        .iter()
        .map(|c| c.pk.clone())
        .collect();
    assert_eq!(got, ["2", "3"], "replay (pk 2) then live (pk 3), once each");
}
