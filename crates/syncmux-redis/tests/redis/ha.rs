//! Redis without a single point of failure, on real processes (`redis_util`): two servers on
//! a Sentinel deployment (a primary, a replica, three sentinels) whose primary is killed with
//! SIGKILL while clients push and subscribe, and two servers on a three-primary Redis
//! Cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::redis_util::{Cluster, Sentinels};
use syncmux::payload::{ChangeRecord, Cursor, Hlc, PullRequest, RawJson, Subscribe};
use syncmux::{ClientConfig, ClientEvent, ErrorCode, RequestError, ServerConfig};
use syncmux_redis::{RedisBackend, RedisConfig};
use syncmux_runtime::{self as adapters, ClientEvents, SyncClient, SyncServer};

/// Every wait in these tests ends by then, or the test fails.
const GUARD: Duration = Duration::from_secs(60);

/// Changes acknowledged after the failover before the writers stop.
const AFTER: usize = 20;

/// A server on `url` and its clients' URL.
async fn node(url: &str, min_replicas: usize) -> (SyncServer, String) {
    let mut config = RedisConfig::new(url);
    config.prefix = "ha".to_owned();
    config.block = Duration::from_millis(200);
    config.request_timeout = Duration::from_secs(2);
    config.min_replicas = min_replicas;
    config.replica_timeout = Duration::from_millis(500);
    let backend = RedisBackend::connect(config).await.unwrap();
    let mut server = ServerConfig::default();
    server.rate_limit_burst = 0;
    crate::serve(backend, server).await
}

fn client(url: &str, id: &str) -> (SyncClient, ClientEvents) {
    let mut config = ClientConfig::new(url, id);
    config.request_timeout = Duration::from_secs(10);
    adapters::Tokio::connect(config).unwrap()
}

fn record(pk: &str) -> ChangeRecord {
    ChangeRecord::new("docs", pk, "v", "lww", Hlc::new(1, 0, pk), "writer")
        .with_value(RawJson::from_serialize(&pk).unwrap())
}

/// What a subscriber saw: each change with the cursor of its frame (on its last record),
/// and whether its session ever closed or was told to resynchronise.
#[derive(Default)]
struct Seen {
    changes: Vec<(Option<Cursor>, String)>,
    disconnected: usize,
    resyncs: usize,
}

/// A client of `url` subscribed to `docs`, its events collected by a task of their own.
async fn watch(url: &str, id: &str) -> (SyncClient, Arc<Mutex<Seen>>) {
    let (c, mut events) = client(url, id);
    c.subscribe(Subscribe::new(["docs"])).await.unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let into = seen.clone();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            let mut seen = into.lock().unwrap();
            match event {
                ClientEvent::Changes {
                    changes, cursor, ..
                } => {
                    let last = changes.len() - 1;
                    for (i, c) in changes.into_iter().enumerate() {
                        seen.changes
                            .push(((i == last).then_some(cursor).flatten(), c.pk));
                    }
                }
                ClientEvent::Disconnected { .. } => seen.disconnected += 1,
                ClientEvent::ResyncNeeded { .. } => seen.resyncs += 1,
                _ => {}
            }
        }
    });
    (c, seen)
}

/// What the writers were told: the records acknowledged, and each one's position.
#[derive(Clone, Default)]
struct Acked {
    records: Vec<String>,
    positions: Vec<(Cursor, String)>,
    /// The refusals that were not `UNAVAILABLE` (the failover must answer nothing else).
    other_errors: Vec<String>,
}

/// Pushes `prefix0`, `prefix1`, ... one at a time until `stop`, each tried once: a refused
/// record is given up (it may have landed, or be lost), so what comes next differs from what
/// a lost try left at the same position.
async fn write(
    client: SyncClient,
    prefix: &'static str,
    acked: Arc<Mutex<Acked>>,
    stop: Arc<AtomicBool>,
) {
    for i in 0.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let pk = format!("{prefix}{i}");
        match client.push(vec![record(&pk)]).await {
            Ok(answer) => {
                let mut acked = acked.lock().unwrap();
                acked.records.push(pk.clone());
                if let Some(cursor) = answer.cursor {
                    acked.positions.push((cursor, pk));
                }
            }
            Err(e) => {
                if !matches!(
                    e,
                    RequestError::Server {
                        code: ErrorCode::Unavailable,
                        ..
                    }
                ) {
                    acked
                        .lock()
                        .unwrap()
                        .other_errors
                        .push(format!("{pk}: {e:?}"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Waits until `n` changes were acknowledged.
async fn until_acked(acked: &Mutex<Acked>, n: usize) {
    let deadline = tokio::time::Instant::now() + GUARD;
    while acked.lock().unwrap().records.len() < n {
        let got = acked.lock().unwrap().records.len();
        assert!(tokio::time::Instant::now() < deadline, "only {got} acked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `seen` holds every record of `pks`.
async fn until_seen(seen: &Mutex<Seen>, pks: &BTreeSet<String>) {
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let have: BTreeSet<String> = seen
            .lock()
            .unwrap()
            .changes
            .iter()
            .map(|(_, pk)| pk.clone())
            .collect();
        if pks.is_subset(&have) {
            return;
        }
        let missing: Vec<_> = pks.difference(&have).take(5).collect();
        if tokio::time::Instant::now() >= deadline {
            let seen = std::mem::take(&mut *seen.lock().unwrap());
            panic!(
                "never seen: {missing:?}...; {} changes seen (the last {:?}), {} disconnections, {} resyncs",
                seen.changes.len(),
                seen.changes.iter().rev().take(3).collect::<Vec<_>>(),
                seen.disconnected,
                seen.resyncs
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every record the log holds now, as a fresh client pulls them.
async fn logged(url: &str) -> BTreeSet<String> {
    let (c, _e) = client(url, "auditor");
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        match c.pull(PullRequest::new(["docs"])).await {
            Ok(pulled) => return pulled.changes.into_iter().map(|r| r.pk).collect(),
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "{e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A run of [`fail_over_mid_stream`].
struct Run {
    /// The servers' URLs.
    urls: [String; 2],
    /// A subscriber on each server.
    seen: [Arc<Mutex<Seen>>; 2],
    acked: Acked,
    /// A position acknowledged well before the primary was killed.
    before: Cursor,
    /// The primary before and after.
    ports: (u16, u16),
    /// Alive until the run is dropped: the servers and the subscribers' clients.
    _alive: (SyncServer, SyncServer, SyncClient, SyncClient),
}

/// Two servers on `ha`, a subscriber on each and a writer on each pushing records one after
/// the other; once 30 were acknowledged the replica is cut off for 300 ms, the primary is killed
/// (SIGKILL), and `after_failover` runs once the sentinels named the replica primary. Returns
/// when [`AFTER`] more were acknowledged and the writers stopped.
async fn fail_over_mid_stream(
    ha: &mut Sentinels,
    min_replicas: usize,
    after_failover: impl FnOnce(&mut Sentinels),
) -> Run {
    let url = ha.url();
    let (server_a, a) = node(&url, min_replicas).await;
    let (server_b, b) = node(&url, min_replicas).await;
    let (sub_a, seen_a) = watch(&a, "sub-a").await;
    let (sub_b, seen_b) = watch(&b, "sub-b").await;
    let acked = Arc::new(Mutex::new(Acked::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers = [
        tokio::spawn(write(
            client(&a, "writer-a").0,
            "a",
            acked.clone(),
            stop.clone(),
        )),
        tokio::spawn(write(
            client(&b, "writer-b").0,
            "b",
            acked.clone(),
            stop.clone(),
        )),
    ];
    until_acked(&acked, 30).await;
    let before = acked.lock().unwrap().positions[10].0;
    // The replica is cut off while the writers go on, so that the primary holds changes no
    // replica has when it dies; then the replica is promoted.
    ha.cut_replica_off();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let old = ha.kill_primary();
    let new = tokio::task::block_in_place(|| ha.wait_failover(old));
    tokio::task::block_in_place(|| after_failover(ha));
    let so_far = acked.lock().unwrap().records.len();
    until_acked(&acked, so_far + AFTER).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    // While it failed over, requests answered UNAVAILABLE, and nothing else.
    assert_eq!(acked.other_errors, Vec::<String>::new());
    Run {
        urls: [a, b],
        seen: [seen_a, seen_b],
        acked,
        before,
        ports: (old, new),
        _alive: (server_a, server_b, sub_a, sub_b),
    }
}

/// Whether a client of the second server, resuming from the run's cursor from before the
/// failover, is told `recovered: true`.
async fn resumed(run: &Run) -> bool {
    let (late, _e) = client(&run.urls[1], "late");
    let ack = late
        .subscribe(Subscribe::new(["docs"]).after(run.before))
        .await
        .unwrap()
        .unwrap();
    ack.recovered
}

/// With `--redis-min-replicas 1`, a change is acknowledged once a replica holds it, and no
/// change is handed out before: the failover loses nothing acknowledged, every subscriber
/// gets every change once, in one order, with its session open, and a cursor from before the
/// failover resumes with `recovered: true`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_loses_no_change_acknowledged_with_min_replicas() {
    let Some(mut ha) = Sentinels::start() else {
        return;
    };
    // The new primary needs a replica before anything is acknowledged again.
    let run = fail_over_mid_stream(&mut ha, 1, Sentinels::add_replica).await;
    let pks: BTreeSet<String> = run.acked.records.iter().cloned().collect();
    assert_eq!(
        pks.len(),
        run.acked.records.len(),
        "a record acknowledged twice"
    );
    // Nothing acknowledged was lost (a record given up may have landed too).
    let log = logged(&run.urls[0]).await;
    let lost: Vec<&String> = pks.difference(&log).collect();
    assert!(lost.is_empty(), "acknowledged, then lost: {lost:?}");
    // Every subscriber got every change once, in one order, its session never closed, and
    // nothing the failover lost.
    let mut orders = Vec::new();
    for seen in &run.seen {
        until_seen(seen, &pks).await;
        let seen = seen.lock().unwrap();
        assert_eq!(
            (seen.disconnected, seen.resyncs),
            (0, 0),
            "a subscriber's session closed"
        );
        let order: Vec<&String> = seen.changes.iter().map(|(_, pk)| pk).collect();
        let once: BTreeSet<&String> = order.iter().copied().collect();
        assert_eq!(order.len(), once.len(), "a change seen twice: {order:?}");
        let gone: Vec<&&String> = once.iter().filter(|pk| !log.contains(**pk)).collect();
        assert!(gone.is_empty(), "handed out, then lost: {gone:?}");
        // In log order, one epoch throughout.
        let cursors: Vec<Cursor> = seen.changes.iter().filter_map(|(c, _)| *c).collect();
        assert!(cursors
            .windows(2)
            .all(|w| w[0].epoch == w[1].epoch && w[0].seq < w[1].seq));
        orders.push(order.into_iter().cloned().collect::<Vec<_>>());
    }
    assert_eq!(orders[0], orders[1]);
    // Each new record at the position its writer was told.
    let mut by_position = run.acked.positions.clone();
    by_position.sort();
    let positioned: Vec<&String> = by_position.iter().map(|(_, pk)| pk).collect();
    let in_order: Vec<&String> = orders[0]
        .iter()
        .filter(|pk| positioned.contains(pk))
        .collect();
    assert_eq!(in_order, positioned);
    // A cursor from before the failover resumes with nothing missed.
    assert!(
        resumed(&run).await,
        "resumed from {} without recovery",
        run.before
    );
}

/// Without `--redis-min-replicas`, replication is asynchronous: the failover may lose the
/// newest acknowledged changes (the test reports how many). The servers recover on their
/// own: the new primary starts a new epoch, so no position is ever given to two changes,
/// subscribers are told to resynchronise, and a cursor from before resumes with
/// `recovered: false`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_min_replicas_a_failover_starts_a_new_epoch_and_the_servers_recover() {
    let Some(mut ha) = Sentinels::start() else {
        return;
    };
    let run = fail_over_mid_stream(&mut ha, 0, |_| {}).await;
    // No position was given to two changes.
    let mut by_cursor: BTreeMap<Cursor, &str> = BTreeMap::new();
    for (cursor, pk) in &run.acked.positions {
        if let Some(other) = by_cursor.insert(*cursor, pk) {
            panic!("{cursor} acknowledged for {other} and {pk}");
        }
    }
    let epochs: BTreeSet<u64> = run.acked.positions.iter().map(|(c, _)| c.epoch).collect();
    assert_eq!(
        epochs.len(),
        2,
        "one epoch before the failover, one after: {epochs:?}"
    );
    let log = logged(&run.urls[0]).await;
    let lost: Vec<&String> = run
        .acked
        .records
        .iter()
        .filter(|pk| !log.contains(*pk))
        .collect();
    eprintln!(
        "failover 127.0.0.1:{} -> 127.0.0.1:{}: {} of {} acknowledged changes lost: {lost:?}",
        run.ports.0,
        run.ports.1,
        lost.len(),
        run.acked.records.len()
    );
    // The subscribers were told to resynchronise (what they had may be gone; the
    // application pulls what it needs), and get the changes after that live.
    for seen in &run.seen {
        let deadline = tokio::time::Instant::now() + GUARD;
        while seen.lock().unwrap().resyncs == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "a subscriber was not told to resynchronise"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let later: BTreeSet<String> = (0..5).map(|i| format!("c{i}")).collect();
    let (writer, _e) = client(&run.urls[0], "writer-c");
    for pk in &later {
        writer.push(vec![record(pk)]).await.unwrap();
    }
    for seen in &run.seen {
        until_seen(seen, &later).await;
    }
    assert!(!resumed(&run).await, "a cursor of the old epoch was served");
}

/// Two servers on a three-primary Redis Cluster behave as one: a change pushed to one
/// reaches the other's subscriber, a cursor resumes on either, and the keys of the log, which
/// share one hash tag, stay in one slot on one node (every script atomic there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_a_redis_cluster_serve_one_log() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let url = cluster.url();
    let (_a, a) = node(&url, 0).await;
    let (_b, b) = node(&url, 0).await;
    let (_sub, seen) = watch(&b, "sub").await;
    let (writer, _e) = client(&a, "writer");
    let pks: BTreeSet<String> = (0..20).map(|i| format!("r{i}")).collect();
    let mut cursors = Vec::new();
    for pk in &pks {
        let answer = writer.push(vec![record(pk)]).await.unwrap();
        cursors.push(answer.cursor.unwrap());
    }
    until_seen(&seen, &pks).await;
    assert_eq!(logged(&b).await, pks);
    // A cursor resumes on the other server with what came after it.
    let (late, mut late_events) = client(&b, "late");
    let ack = late
        .subscribe(Subscribe::new(["docs"]).after(cursors[9]))
        .await
        .unwrap()
        .unwrap();
    assert!(ack.recovered);
    assert_eq!(ack.cursor, cursors[19]);
    let mut replayed = Vec::new();
    while replayed.len() < 10 {
        let event = tokio::time::timeout(GUARD, late_events.recv())
            .await
            .unwrap()
            .unwrap();
        if let ClientEvent::Changes { changes, .. } = event {
            replayed.extend(changes.into_iter().map(|c| c.pk));
        }
    }
    let after: Vec<String> = pks.iter().skip(10).cloned().collect();
    let mut replayed_sorted = replayed.clone();
    replayed_sorted.sort();
    assert_eq!(replayed_sorted, after);
    // The log's keys are on the node that owns their slot, all of them.
    let owner = cluster.slot_owner("{ha}:log");
    assert_eq!(cluster.slot_owner("{ha}:meta"), owner);
    let len = cluster.command_on_slot_owner("{ha}:log", &["XLEN", "{ha}:log"]);
    assert_eq!(len, ":20\r\n");
}
