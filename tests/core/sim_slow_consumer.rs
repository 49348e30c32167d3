//! Regression: a slow consumer whose backlog outgrew `max_outbound_bytes` was closed with
//! 4503, resumed from its cursor, got the whole backlog as one replay answer, overflowed the
//! bound again at once, and looped forever (found by `sim_network`, seed 36). The server now
//! paces a replay answer by the bound: its frames enter the queue as earlier ones are written.

#![allow(clippy::unwrap_used)]

use crate::sim;

use std::time::Duration;

use sim::{Net, NetConfig};
use syncmux::payload::{ChangeRecord, Hlc, PullRequest, RawJson, Subscribe};
use syncmux::ClientEvent;
use syncmux::ServerConfig;

fn change(pk: u64) -> ChangeRecord {
    ChangeRecord::new(
        "docs",
        pk.to_string(),
        "title",
        "lww",
        Hlc::new(pk as i64 + 1, 0, "w"),
        "w",
    )
    .with_value(RawJson::from_serialize(&"x".repeat(100)).unwrap())
}

#[test]
fn a_backlog_larger_than_the_outbound_bound_resumes_without_looping() {
    let mut config = ServerConfig::default();
    config.reports_writes = true; // slow consumers stall their writes
    config.rate_limit_burst = 0;
    config.max_outbound_bytes = 2_000;
    config.max_changes_per_frame = 2;
    let mut net = Net::new(
        1,
        config,
        NetConfig {
            latency_ms: (5, 5),
            answer_ms: (0, 0),
            ..NetConfig::default()
        },
    );
    let writer = net.add_client("w", |_| {});
    let reader = net.add_client("r", |c| c.reconnect_delay = Duration::from_millis(100));
    let now = net.now;
    net.nodes[reader]
        .client
        .subscribe(now, Subscribe::new(["docs"]))
        .unwrap();
    net.nodes[reader]
        .client
        .pull(now, PullRequest::new(["docs"]))
        .unwrap();
    net.run_for(Duration::from_secs(1), 10_000);

    // The reader stops reading while 60 changes (about 15 KB) are pushed.
    net.stall(reader, Duration::from_secs(5));
    for pk in 0..60 {
        let now = net.now;
        net.nodes[writer]
            .client
            .push(now, vec![change(pk)])
            .unwrap();
        net.run_for(Duration::from_millis(20), 10_000);
    }
    net.run_for(Duration::from_secs(30), 200_000);

    let events = &net.nodes[reader].events;
    let slow = events
        .iter()
        .filter(
            |e| matches!(e, ClientEvent::Disconnected { reason, .. } if reason == "slow consumer"),
        )
        .count();
    assert_eq!(
        slow, 1,
        "closed once as a slow consumer, then resumed for good"
    );
    assert!(net.nodes[reader].is_connected());
    let mut pks: Vec<u64> = net.nodes[reader]
        .received
        .iter()
        .map(|c| c.pk.parse().unwrap())
        .collect();
    pks.sort_unstable();
    assert_eq!(
        pks,
        (0..60).collect::<Vec<_>>(),
        "every change exactly once"
    );
}
