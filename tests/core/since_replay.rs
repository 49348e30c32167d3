//! A client of the seed protocol resumes by `since` alone, from the newest HLC it has seen
//! (docs/protocol.md section 7.4, "Replay order"): a replay that answers `since` goes out in HLC
//! order, so wherever the connection is cut, between any two frames, the resume gets exactly
//! the changes it had not received.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::{json, Value};
use syncmux::payload::{ChangeRecord, Hlc, RawJson};
use syncmux::Driver;
use syncmux::{Handshake, HandshakeOutcome, ServerTransmit, SessionId};
use syncmux::{Instant, Server, ServerConfig};
use syncmux::{MemoryStore, StoreConfig};

fn change(pk: &str, ts: i64, node: &str) -> ChangeRecord {
    ChangeRecord::new("docs", pk, "title", "lww", Hlc::new(ts, 0, node), node)
        .with_value(RawJson::from_serialize(pk).unwrap())
}

fn driver(per_frame: usize) -> Driver {
    let mut config = ServerConfig::default();
    config.max_changes_per_frame = per_frame;
    config.rate_limit_burst = 0;
    let mut driver = Driver::new(
        Server::new(config).unwrap(),
        MemoryStore::new(StoreConfig::default()),
    );
    // The history, pushed in this order: r3c, r4, r5, then r4s, then r3b. Plus two
    // changes stamped with one HLC, which no frame may separate (`since` is exclusive).
    let pushes = [
        vec![
            change("r3c", 3, "c"),
            change("r4", 4, "a"),
            change("r5", 5, "a"),
        ],
        vec![change("r4s", 4, "s")],
        vec![change("r3b", 3, "b")],
        vec![change("t1", 6, "t"), change("t2", 6, "t")],
        vec![change("r2", 2, "z")],
    ];
    for changes in pushes {
        assert!(!driver
            .store_mut()
            .unwrap()
            .push(changes)
            .accepted
            .is_empty());
    }
    driver
}

/// A seed client's connection: opens a session, subscribes by `since` alone, and collects
/// the frames the server sends it.
fn subscribe(driver: &mut Driver, since: &Hlc) -> (SessionId, Vec<Value>) {
    let now = Instant::ZERO;
    let HandshakeOutcome::Accept { session, .. } =
        driver.handle_handshake(now, &Handshake::new("/sync", "node_id=seed"))
    else {
        panic!("refused")
    };
    let since = format!("{}:{}:{}", since.ts, since.c, since.node);
    let msg = json!({"type":"subscribe","id":"s","payload":{"tables":["docs"],"since":since}});
    driver.handle_message(now, session, Bytes::from(msg.to_string()));
    let mut frames = Vec::new();
    while let Some(t) = driver.poll_transmit() {
        if let ServerTransmit::Frame { session: s, bytes } = t {
            driver.handle_sent(now, s, bytes.len());
            if s == session {
                frames.push(serde_json::from_slice(&bytes).unwrap());
            }
        }
    }
    (session, frames)
}

fn records(frame: &Value) -> Vec<ChangeRecord> {
    match frame["type"].as_str().unwrap() {
        "change" => vec![serde_json::from_value(frame["payload"].clone()).unwrap()],
        "changes" => serde_json::from_value(frame["payload"].clone()).unwrap(),
        _ => Vec::new(),
    }
}

#[test]
fn a_seed_client_cut_at_every_frame_boundary_gets_every_change_once() {
    for per_frame in [1, 2, 3] {
        let mut reference = driver(per_frame);
        let start = Hlc::new(0, 0, "");
        let (_, whole) = subscribe(&mut reference, &start);
        let replay = whole.iter().filter(|f| f["type"] != "ack").count();
        // Cut after k replay frames, resume from the newest HLC received, and so on until
        // an ack arrives: for every k (0 = before the first frame).
        for k in 0..=replay {
            let mut driver = driver(per_frame);
            let mut since = start.clone();
            let mut got: BTreeMap<String, usize> = BTreeMap::new();
            let mut cut_after = Some(k);
            loop {
                let (session, frames) = subscribe(&mut driver, &since);
                let mut delivered = frames.as_slice();
                if let Some(k) = cut_after.take() {
                    delivered = &frames[..k.min(frames.len())];
                }
                for frame in delivered {
                    // Frames of a replay by `since` carry no cursor: they are not resume
                    // points.
                    if frame["type"] != "ack" {
                        assert!(frame.get("cursor").is_none(), "{frame}");
                    }
                    for record in records(frame) {
                        *got.entry(record.pk.clone()).or_default() += 1;
                        since = since.max(record.hlc.clone());
                    }
                }
                driver.handle_disconnected(Instant::ZERO, session);
                if delivered.iter().any(|f| f["type"] == "ack") {
                    break;
                }
            }
            let once: BTreeMap<String, usize> = ["r2", "r3b", "r3c", "r4", "r4s", "r5", "t1", "t2"]
                .iter()
                .map(|pk| (pk.to_string(), 1))
                .collect();
            assert_eq!(got, once, "{per_frame} per frame, cut after {k} frames");
        }
    }
}

/// The replay is in HLC order, and its ack says where the store's history stood.
#[test]
fn the_replay_is_in_hlc_order_and_the_ack_carries_the_head() {
    let mut driver = driver(2);
    let (_, frames) = subscribe(&mut driver, &Hlc::new(3, 0, "b"));
    let pks: Vec<String> = frames.iter().flat_map(records).map(|r| r.pk).collect();
    assert_eq!(pks, ["r3c", "r4", "r4s", "r5", "t1", "t2"]);
    assert_eq!(
        frames.last().unwrap(),
        &json!({"type":"ack","id":"s","payload":{"recovered":true,"cursor":"0.8"}})
    );
}
