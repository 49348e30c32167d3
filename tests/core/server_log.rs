//! Servers that share one change log (scale-out; README, "Scaling out over Redis"): pushes answered
//! with `answer_push_unrouted`, every server fed the log in order with `handle_accepted`. Each
//! subscriber on each server gets every change exactly once, in log order, with its cursor;
//! the pusher never gets its own change back. Sans-IO: the "log" is a `MemoryStore` the test
//! writes and reads by hand, as a Redis backend would.
#![allow(clippy::unwrap_used, clippy::needless_range_loop)]

use crate::server_util;

use serde_json::{json, Value};
use server_util::*;
use syncmux::payload::{ChangeRecord, Cursor};
use syncmux::{AppError, MemoryStore, PullAnswer, ReplayId, ServerEvent, SessionId, StoreConfig};

/// Entries of the log pushed by one session (or by another server).
type Run = (Option<SessionId>, Vec<(Cursor, ChangeRecord)>);

/// One server of the cluster and how far it has followed the log.
struct Node {
    h: Harness,
    followed: u64,
}

/// The shared log and the servers following it. Entries remember which (node, session)
/// pushed them, as a log entry's origin does.
struct Cluster {
    log: MemoryStore,
    origins: Vec<Option<(usize, SessionId)>>,
    nodes: Vec<Node>,
}

impl Cluster {
    fn new(nodes: usize) -> Cluster {
        let mut store = StoreConfig::default();
        store.epoch = 1;
        Cluster {
            log: MemoryStore::new(store),
            origins: Vec::new(),
            nodes: (0..nodes)
                .map(|_| {
                    let mut h = Harness::new(config());
                    // Subscribes without a replay are answered by the test (`answer_heads`).
                    h.head = None;
                    Node { h, followed: 0 }
                })
                .collect(),
        }
    }

    /// Answers the head-only subscribes of node `n` with where it has followed the log to:
    /// everything after that position will reach the session live.
    fn answer_heads(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        for e in node.h.take_events() {
            match e {
                ServerEvent::Replay {
                    request,
                    head_only: true,
                    ..
                } => {
                    let head = Cursor::new(1, node.followed);
                    let answer = PullAnswer {
                        head,
                        complete: true,
                        ..PullAnswer::default()
                    };
                    node.h.server.answer_replay(node.h.now, request, Ok(answer));
                }
                other => node.h.events.push(other),
            }
        }
        node.h.drain();
    }

    fn subscribe(&mut self, n: usize, session: SessionId, tables: &[&str]) {
        let msg = json!({"type":"subscribe","id":"sub","payload":{"tables":tables}});
        self.nodes[n].h.send(session, &msg.to_string());
        self.answer_heads(n);
        let ack = self.nodes[n].h.take(session);
        assert_eq!(ack[0]["type"], "ack", "{ack:?}");
    }

    /// Merges node `n`'s pending pushes into the log and answers them without routing.
    fn accept_pushes(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        for e in node.h.take_events() {
            let ServerEvent::Push {
                request,
                session,
                changes,
                ..
            } = e
            else {
                node.h.events.push(e);
                continue;
            };
            let out = self.log.push(changes);
            let head = out.head.seq as usize;
            self.origins.resize(head, None);
            for (cursor, _) in &out.accepted {
                self.origins[cursor.seq as usize - 1] = Some((n, session));
            }
            let answer = syncmux::PushAnswer {
                accepted: out.accepted,
                latest_hlc: out.latest_hlc,
                head: out.head,
            };
            node.h
                .server
                .answer_push_unrouted(node.h.now, request, Ok(answer));
            node.h.drain();
        }
    }

    /// Node `n` reads the log after where it stopped and routes each entry, in order, in
    /// runs of one origin.
    fn follow(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        let tables = all_tables(&self.log);
        let read = self
            .log
            .pull(&tables, None, Some(&Cursor::new(1, node.followed)));
        assert!(read.complete);
        let mut runs: Vec<Run> = Vec::new();
        for (cursor, record) in read.changes {
            let origin = self.origins[cursor.seq as usize - 1];
            let pushed_by = origin.filter(|(node, _)| *node == n).map(|(_, s)| s);
            match runs.last_mut() {
                Some((by, run)) if *by == pushed_by => run.push((cursor, record)),
                _ => runs.push((pushed_by, vec![(cursor, record)])),
            }
            node.followed = cursor.seq;
        }
        for (pushed_by, run) in runs {
            node.h.server.handle_accepted(node.h.now, run, pushed_by);
        }
        node.h.drain();
    }

    fn follow_all(&mut self) {
        for n in 0..self.nodes.len() {
            self.follow(n);
        }
    }
}

fn all_tables(_log: &MemoryStore) -> Vec<String> {
    ["docs", "notes"].map(String::from).to_vec()
}

/// `(cursor, pk)` of every change in the frames, in order. A `changes` frame carries the
/// cursor of its last record; the records before it are shown with `-`.
fn received(frames: &[Value]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for f in frames {
        let records = match f["type"].as_str().unwrap() {
            "change" => vec![f["payload"].clone()],
            "changes" => f["payload"].as_array().unwrap().clone(),
            _ => continue,
        };
        let cursor = f["cursor"].as_str().unwrap().to_owned();
        let last = records.len() - 1;
        for (i, r) in records.into_iter().enumerate() {
            let at = if i == last {
                cursor.clone()
            } else {
                "-".into()
            };
            out.push((at, r["pk"].as_str().unwrap().to_owned()));
        }
    }
    out
}

/// The pks alone.
fn pks(got: &[(String, String)]) -> Vec<&str> {
    got.iter().map(|(_, pk)| pk.as_str()).collect()
}

fn push(c: &mut Cluster, n: usize, session: SessionId, id: &str, node: &str, pks: &[&str]) {
    let records: Vec<String> = pks
        .iter()
        .enumerate()
        .map(|(i, pk)| record_json("docs", pk, 10 + i as i64, node))
        .collect();
    c.nodes[n].h.push(session, id, node, &records);
}

#[test]
fn a_change_pushed_on_one_server_reaches_subscribers_on_every_server_once() {
    let mut c = Cluster::new(2);
    let pusher = c.nodes[0].h.open("p");
    let here = c.nodes[0].h.open("here");
    let there = c.nodes[1].h.open("there");
    c.subscribe(0, pusher, &["docs"]);
    c.subscribe(0, here, &["docs"]);
    c.subscribe(1, there, &["docs"]);

    push(&mut c, 0, pusher, "p1", "p", &["a"]);
    c.accept_pushes(0);
    // Answered, not routed: only the pusher's response so far.
    let response = c.nodes[0].h.take(pusher);
    assert_eq!(response[0]["type"], "push_response");
    assert_eq!(response[0]["payload"]["cursor"], "1.1");
    assert!(c.nodes[0].h.take(here).is_empty(), "routed before the log");

    c.follow_all();
    assert_eq!(
        received(&c.nodes[0].h.take(here)),
        [("1.1".into(), "a".into())]
    );
    assert_eq!(
        received(&c.nodes[1].h.take(there)),
        [("1.1".into(), "a".into())]
    );
    assert!(c.nodes[0].h.take(pusher).is_empty(), "echoed to the pusher");

    // Following again finds nothing new: nothing twice.
    c.follow_all();
    assert!(c.nodes[0].h.take(here).is_empty());
    assert!(c.nodes[1].h.take(there).is_empty());
}

#[test]
fn concurrent_pushers_on_three_servers_give_every_subscriber_one_log_order() {
    let mut c = Cluster::new(3);
    let mut pushers = Vec::new();
    let mut subs = Vec::new();
    for n in 0..3 {
        let p = c.nodes[n].h.open(&format!("p{n}"));
        c.subscribe(n, p, &["docs"]);
        pushers.push(p);
        let s = c.nodes[n].h.open(&format!("s{n}"));
        c.subscribe(n, s, &["docs"]);
        subs.push(s);
    }
    // Interleaved: each server's pushes reach the log in turns, and servers follow at
    // different times.
    for round in 0..4 {
        for n in 0..3 {
            let pk = format!("{n}-{round}");
            push(&mut c, n, pushers[n], &pk, &format!("p{n}"), &[&pk]);
        }
        for n in [2, 0, 1] {
            c.accept_pushes(n);
            if round % 2 == 0 {
                c.follow(n);
            }
        }
    }
    c.follow_all();
    let expected: Vec<String> = c
        .log
        .pull(&["docs".into()], None, Some(&Cursor::new(1, 0)))
        .changes
        .iter()
        .map(|(_, r)| r.pk.clone())
        .collect();
    assert_eq!(expected.len(), 12);
    for n in 0..3 {
        let got = received(&c.nodes[n].h.take(subs[n]));
        assert_eq!(pks(&got), expected, "node {n}");
        assert_eq!(got.last().unwrap().0, "1.12");
        // A pusher gets everything except its own changes.
        let own = |pk: &String| pk.starts_with(&format!("{n}-"));
        let others: Vec<&str> = expected
            .iter()
            .filter(|e| !own(e))
            .map(|s| s.as_str())
            .collect();
        let got = received(&c.nodes[n].h.take(pushers[n]));
        assert_eq!(pks(&got), others, "pusher on node {n}");
    }
}

/// The replay a subscribe asked the application for.
fn replay_asked(h: &mut Harness) -> ReplayId {
    h.take_events()
        .into_iter()
        .find_map(|e| match e {
            ServerEvent::Replay { request, .. } => Some(request),
            _ => None,
        })
        .unwrap()
}

#[test]
fn a_replay_read_while_the_log_moves_on_gives_no_gap_and_no_duplicate() {
    let mut c = Cluster::new(2);
    let pusher = c.nodes[0].h.open("p");
    push(&mut c, 0, pusher, "p1", "p", &["a", "b"]);
    c.accept_pushes(0);
    c.follow_all();

    // A client resumes on node 1 from 1.1; before its replay is read, `c` is accepted and
    // node 1 follows it (held behind the pending replay).
    let sub = c.nodes[1].h.open("s");
    let msg = json!({"type":"subscribe","id":"r","payload":{"tables":["docs"],"cursor":"1.1"}});
    c.nodes[1].h.send(sub, &msg.to_string());
    let replay = replay_asked(&mut c.nodes[1].h);
    push(&mut c, 0, pusher, "p2", "p", &["c"]);
    c.accept_pushes(0);
    c.follow_all();
    assert!(c.nodes[1].h.take(sub).is_empty(), "live before the replay");

    // The replay is read now: it holds b and c (head 1.3). Then d arrives.
    let read = c.log.pull(&["docs".into()], None, Some(&Cursor::new(1, 1)));
    let answer = PullAnswer {
        changes: read.changes,
        latest_hlc: read.latest_hlc,
        head: read.head,
        complete: read.complete,
    };
    let now = c.nodes[1].h.now;
    c.nodes[1].h.server.answer_replay(now, replay, Ok(answer));
    c.nodes[1].h.drain();
    push(&mut c, 0, pusher, "p3", "p", &["d"]);
    c.accept_pushes(0);
    c.follow_all();
    let frames = c.nodes[1].h.take(sub);
    let got = received(&frames);
    assert_eq!(
        got,
        [
            ("-".into(), "b".into()),
            ("1.3".into(), "c".into()),
            ("1.4".into(), "d".into())
        ]
    );
    assert_eq!(frames.iter().filter(|f| f["type"] == "ack").count(), 1);
}

#[test]
fn a_subscribe_without_replay_gets_everything_after_the_followed_position() {
    let mut c = Cluster::new(2);
    let pusher = c.nodes[0].h.open("p");
    push(&mut c, 0, pusher, "p1", "p", &["a"]);
    c.accept_pushes(0);
    c.follow_all();
    // Node 1 has followed to 1.1; `b` is in the log but not yet followed when the subscribe
    // comes, so the ack says 1.1 and `b` follows live.
    push(&mut c, 0, pusher, "p2", "p", &["b"]);
    c.accept_pushes(0);
    let sub = c.nodes[1].h.open("s");
    c.nodes[1].h.send(
        sub,
        r#"{"type":"subscribe","id":"s","payload":{"tables":["docs"]}}"#,
    );
    c.answer_heads(1);
    c.follow_all();
    let frames = c.nodes[1].h.take(sub);
    assert_eq!(frames[0]["payload"]["cursor"], "1.1");
    assert_eq!(received(&frames), [("1.2".into(), "b".into())]);
}

#[test]
fn a_new_epoch_after_the_log_lost_its_data_is_routed_even_below_the_old_positions() {
    let mut c = Cluster::new(1);
    let sub = c.nodes[0].h.open("s");
    let msg = json!({"type":"subscribe","id":"r","payload":{"tables":["docs"],"cursor":"7.40"}});
    c.nodes[0].h.send(sub, &msg.to_string());
    let replay = replay_asked(&mut c.nodes[0].h);
    let answer = PullAnswer {
        head: Cursor::new(7, 50),
        complete: true,
        ..PullAnswer::default()
    };
    let now = c.nodes[0].h.now;
    c.nodes[0].h.server.answer_replay(now, replay, Ok(answer));
    c.nodes[0].h.drain();
    let _ack = c.nodes[0].h.take(sub);
    // The log came back empty with epoch 3 (an earlier clock): 3.1 is not "at or before 7.50".
    let record = server_util::record("docs", "x", 1, "q");
    let now = c.nodes[0].h.now;
    c.nodes[0]
        .h
        .server
        .handle_accepted(now, vec![(Cursor::new(3, 1), record)], None);
    c.nodes[0].h.drain();
    assert_eq!(
        received(&c.nodes[0].h.take(sub)),
        [("3.1".into(), "x".into())]
    );
}

#[test]
fn an_unavailable_backend_fails_the_request_and_keeps_the_session() {
    let mut c = Cluster::new(1);
    let pusher = c.nodes[0].h.open("p");
    push(&mut c, 0, pusher, "p1", "p", &["a"]);
    let ServerEvent::Push { request, .. } = c.nodes[0].h.take_events().remove(0) else {
        panic!()
    };
    let now = c.nodes[0].h.now;
    let down = AppError::unavailable("the shared store is unreachable");
    assert_eq!(down.code().as_str(), "UNAVAILABLE");
    c.nodes[0]
        .h
        .server
        .answer_push_unrouted(now, request, Err(down));
    c.nodes[0].h.drain();
    let frames = c.nodes[0].h.take(pusher);
    assert_eq!(
        frames,
        [
            json!({"type":"error","id":"p1","payload":{"code":"UNAVAILABLE",
            "message":"the shared store is unreachable"}})
        ]
    );
    assert!(c.nodes[0].h.server.is_open(pusher));
    // And it pushes again once the store is back.
    push(&mut c, 0, pusher, "p2", "p", &["a"]);
    c.accept_pushes(0);
    assert_eq!(c.nodes[0].h.take(pusher)[0]["payload"]["merged"], 1);
}

#[test]
fn a_gap_in_the_followed_log_closes_the_subscribers_to_resume_and_keeps_the_others() {
    let mut c = Cluster::new(1);
    let sub = c.nodes[0].h.open("s");
    let idle = c.nodes[0].h.open("i");
    c.subscribe(0, sub, &["docs"]);
    let now = c.nodes[0].h.now;
    assert_eq!(c.nodes[0].h.server.handle_log_gap(now), 1);
    c.nodes[0].h.drain();
    assert_eq!(
        c.nodes[0].h.closes.get(&sub).map(|(code, _)| *code),
        Some(4503)
    );
    assert!(!c.nodes[0].h.closes.contains_key(&idle));
    assert_eq!(
        c.nodes[0].h.server.session_count(),
        1,
        "only the subscriber goes"
    );
}
