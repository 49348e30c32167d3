//! Grove's selective sync: a pull or a subscribe's replay with `filter: {pk_filter,
//! field_filter}` returns only the records it matches (docs/protocol.md sections 6.1 and 6.5).

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use serde_json::{json, Value};
use syncmux::payload::{ChangeRecord, Hlc};
use syncmux::Driver;
use syncmux::{Handshake, HandshakeOutcome, ServerTransmit, SessionId};
use syncmux::{Instant, Server, ServerConfig};
use syncmux::{MemoryStore, StoreConfig};

/// A store holding rows 1 to 3 of `docs`, each with a `title` and a `body`, and row 3 also
/// as a whole-row record (no field).
fn driver() -> Driver {
    let mut config = ServerConfig::default();
    config.rate_limit_burst = 0;
    let mut driver = Driver::new(
        Server::new(config).unwrap(),
        MemoryStore::new(StoreConfig::default()),
    );
    let mut changes = Vec::new();
    let mut ts = 0;
    for pk in ["1", "2", "3"] {
        for field in ["title", "body"] {
            ts += 1;
            changes.push(ChangeRecord::new(
                "docs",
                pk,
                field,
                "lww",
                Hlc::new(ts, 0, "a"),
                "a",
            ));
        }
    }
    changes.push(ChangeRecord::new(
        "docs",
        "3",
        "",
        "lww",
        Hlc::new(ts + 1, 0, "a"),
        "a",
    ));
    assert_eq!(driver.store_mut().unwrap().push(changes).accepted.len(), 7);
    driver
}

/// Sends `frame` on a new session and gives the records of every frame it got back.
fn ask(driver: &mut Driver, frame: Value) -> Vec<(String, String)> {
    let now = Instant::ZERO;
    let HandshakeOutcome::Accept { session, .. } =
        driver.handle_handshake(now, &Handshake::new("/sync", "node_id=n"))
    else {
        panic!("refused")
    };
    driver.handle_message(now, session, Bytes::from(frame.to_string()));
    records(driver, session)
}

fn records(driver: &mut Driver, session: SessionId) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while let Some(t) = driver.poll_transmit() {
        let ServerTransmit::Frame { session: s, bytes } = t else {
            continue;
        };
        assert_eq!(s, session);
        let frame: Value = serde_json::from_slice(&bytes).unwrap();
        assert_ne!(frame["type"], "error", "{frame}");
        let changes = match frame["type"].as_str().unwrap() {
            "pull_response" => frame["payload"]["changes"].clone(),
            "changes" => frame["payload"].clone(),
            "change" => json!([frame["payload"]]),
            _ => continue,
        };
        for c in changes.as_array().unwrap() {
            out.push((
                c["pk"].as_str().unwrap().to_owned(),
                c["field"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out.sort();
    out
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<_> = list
        .iter()
        .map(|(p, f)| (p.to_string(), f.to_string()))
        .collect();
    v.sort();
    v
}

#[test]
fn a_pull_returns_only_the_records_its_filter_matches() {
    let mut d = driver();
    let pull = |filter: Value| json!({"type":"pull_request","id":"p","payload":{"tables":["docs"],"node_id":"n","filter":filter}});
    let got = ask(&mut d, pull(json!({"pk_filter":["1","3"]})));
    assert_eq!(
        got,
        pairs(&[
            ("1", "title"),
            ("1", "body"),
            ("3", "title"),
            ("3", "body"),
            ("3", "")
        ])
    );
    let got = ask(&mut d, pull(json!({"field_filter":["title"]})));
    assert_eq!(
        got,
        pairs(&[("1", "title"), ("2", "title"), ("3", "title"), ("3", "")]),
        "a whole row passes"
    );
    let got = ask(
        &mut d,
        pull(json!({"pk_filter":["2"],"field_filter":["body"]})),
    );
    assert_eq!(got, pairs(&[("2", "body")]));
    assert_eq!(
        ask(&mut d, pull(json!({}))).len(),
        7,
        "an empty filter restricts nothing"
    );
}

#[test]
fn a_subscribe_replays_only_the_records_its_filter_matches() {
    let mut d = driver();
    let subscribe = json!({"type":"subscribe","id":"s","payload":{
        "tables":["docs"],"since":"0:0:","filter":{"pk_filter":["2"],"field_filter":["title"]}}});
    assert_eq!(ask(&mut d, subscribe), pairs(&[("2", "title")]));
    let after_cursor = json!({"type":"subscribe","id":"s","payload":{
        "tables":["docs"],"cursor":"","filter":{"pk_filter":["3"]}}});
    assert_eq!(
        ask(&mut d, after_cursor),
        pairs(&[("3", "title"), ("3", "body"), ("3", "")])
    );
}
