//! Several servers on one Redis (see `redis_util`), with real WebSocket clients: to their
//! clients they are one server (README, "Scaling out over Redis"). The checks that do not
//! stop or pause Redis run on one `redis-server` and again on a three-primary Redis Cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::redis_util::{Cluster, RedisServer};
use syncmux::payload::{
    ChangeRecord, Cursor, Hlc, PresenceEvent, PresenceEventKind, PullRequest, RawJson, RoomEvent,
    RoomEventKind, Subscribe,
};
use syncmux::{ClientConfig, ClientEvent, ErrorCode, RequestError, ServerConfig};
use syncmux_redis::{RedisBackend, RedisConfig};
use syncmux_runtime::{self as adapters, ClientEvents, SyncClient, SyncServer};

/// Every wait in these tests ends by then, or the test fails.
const GUARD: Duration = Duration::from_secs(30);

/// One server of the cluster and its URL.
struct Node {
    server: SyncServer,
    url: String,
}

async fn node(url: &str, prefix: &str) -> Node {
    let mut config = RedisConfig::new(url);
    config.prefix = prefix.to_owned();
    config.heartbeat = Duration::from_millis(100);
    config.server_ttl = Duration::from_millis(1500);
    // Check the log's epoch often: the restart test waits for it.
    config.block = Duration::from_millis(200);
    config.request_timeout = Duration::from_secs(2);
    let backend = RedisBackend::connect(config).await.unwrap();
    let mut server = ServerConfig::default();
    server.rate_limit_burst = 0;
    server.max_room_size = 2;
    let (server, url) = crate::serve(backend, server).await;
    Node { server, url }
}

/// A fresh Redis and `N` servers on it sharing the keys under `prefix`; `None` (the test is
/// skipped) when there is no `redis-server` to run.
async fn cluster<const N: usize>(prefix: &str) -> Option<(RedisServer, [Node; N])> {
    let redis = RedisServer::start()?;
    let nodes = nodes(&redis.url(), prefix).await;
    Some((redis, nodes))
}

/// `N` servers on the Redis at `url`, sharing the keys under `prefix`.
async fn nodes<const N: usize>(url: &str, prefix: &str) -> [Node; N] {
    let mut nodes = Vec::new();
    for _ in 0..N {
        nodes.push(node(url, prefix).await);
    }
    nodes
        .try_into()
        .unwrap_or_else(|_| unreachable!("{N} nodes"))
}

/// What the servers of a test share: one `redis-server`, or a three-primary Redis Cluster.
enum Shared {
    One(RedisServer),
    Cluster(Cluster),
}

impl Shared {
    /// `N` servers on `shared` (`None`: the test is skipped), sharing the keys under `prefix`.
    async fn nodes<const N: usize>(
        shared: Option<Shared>,
        prefix: &str,
    ) -> Option<(Shared, [Node; N])> {
        let shared = shared?;
        let url = match &shared {
            Shared::One(redis) => redis.url(),
            Shared::Cluster(cluster) => cluster.url(),
        };
        let nodes = nodes(&url, prefix).await;
        Some((shared, nodes))
    }
}

/// Runs each of these tests (an async fn taking an `Option<Shared>`) as two: `one_redis`
/// and `cluster`, in a module of the test's name.
macro_rules! on_one_redis_and_a_cluster {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test]
            async fn one_redis() {
                let redis = super::RedisServer::start().map(super::Shared::One);
                super::$test(redis).await;
            }

            #[tokio::test]
            async fn cluster() {
                let cluster = super::Cluster::start().map(super::Shared::Cluster);
                super::$test(cluster).await;
            }
        }
    )*};
}

on_one_redis_and_a_cluster!(
    a_change_pushed_on_one_server_reaches_subscribers_on_the_others_not_its_pusher,
    concurrent_pushers_on_every_server_give_every_subscriber_the_same_order_once,
    a_client_resumes_on_another_server_from_its_cursor,
    concurrent_conflicting_writes_end_with_the_same_winner_everywhere,
    presence_and_rooms_span_the_servers,
    concurrent_joins_on_two_servers_never_overfill_a_room,
);

fn client(node: &Node, id: &str) -> (SyncClient, ClientEvents) {
    let mut config = ClientConfig::new(&node.url, id);
    config.request_timeout = Duration::from_secs(10);
    adapters::Tokio::connect(config).unwrap()
}

/// A client of `node` subscribed to `docs`.
async fn subscriber(node: &Node, id: &str) -> (SyncClient, ClientEvents) {
    let (c, events) = client(node, id);
    c.subscribe(Subscribe::new(["docs"])).await.unwrap();
    (c, events)
}

fn record(pk: &str, field: &str, ts: i64, node: &str) -> ChangeRecord {
    ChangeRecord::new("docs", pk, field, "lww", Hlc::new(ts, 0, node), node)
        .with_value(RawJson::from_serialize(&format!("{node}@{ts}")).unwrap())
}

/// The changes a client receives, with the cursor each frame carried, until `n` arrived.
async fn receive(events: &mut ClientEvents, n: usize) -> Vec<(Option<Cursor>, ChangeRecord)> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + GUARD;
    while got.len() < n {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} changes arrived", got.len()))
            .expect("client ended");
        if let ClientEvent::Changes {
            changes, cursor, ..
        } = event
        {
            let last = changes.len() - 1;
            for (i, c) in changes.into_iter().enumerate() {
                got.push(((i == last).then_some(cursor).flatten(), c));
            }
        }
    }
    got
}

/// Waits for the client to be told to resynchronise `docs` (a resume with
/// `recovered: false`); the changes that came first (the resume's replay may).
async fn resync_needed(events: &mut ClientEvents) -> Vec<(Option<Cursor>, ChangeRecord)> {
    let deadline = tokio::time::Instant::now() + GUARD;
    let mut got = Vec::new();
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("no resync was asked for")
            .expect("client ended");
        match event {
            ClientEvent::ResyncNeeded { tables } => {
                assert_eq!(tables, ["docs"]);
                return got;
            }
            ClientEvent::Changes {
                changes, cursor, ..
            } => got.extend(changes.into_iter().map(|c| (cursor, c))),
            _ => {}
        }
    }
}

/// Nothing more arrives within a short while (what the server sent has been delivered: the
/// client reads its socket in order, so a ping answered after it means it came first).
async fn nothing_more(client: &SyncClient, events: &mut ClientEvents) {
    client
        .ping(RawJson::from_serialize(&0).unwrap())
        .await
        .unwrap();
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(300), events.recv()).await
    {
        assert!(
            !matches!(event, ClientEvent::Changes { .. }),
            "unexpected {event:?}"
        );
    }
}

async fn a_change_pushed_on_one_server_reaches_subscribers_on_the_others_not_its_pusher(
    shared: Option<Shared>,
) {
    let Some((_redis, nodes)) = Shared::nodes::<3>(shared, "x").await else {
        return;
    };
    let (alice, mut alice_events) = client(&nodes[0], "alice");
    let mut subs = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let (c, e) = client(n, &format!("sub{i}"));
        let ack = c
            .subscribe(Subscribe::new(["docs"]))
            .await
            .unwrap()
            .unwrap();
        assert!(ack.recovered);
        subs.push((c, e));
    }
    alice.subscribe(Subscribe::new(["docs"])).await.unwrap();
    let pushed = alice
        .push(vec![record("1", "t", 10, "alice")])
        .await
        .unwrap();
    assert_eq!(pushed.merged, 1);
    let at = pushed.cursor.unwrap();
    for (_, events) in &mut subs {
        let got = receive(events, 1).await;
        assert_eq!(got, vec![(Some(at), record("1", "t", 10, "alice"))]);
    }
    nothing_more(&alice, &mut alice_events).await;
    for (c, events) in &mut subs {
        nothing_more(c, events).await;
    }
}

async fn concurrent_pushers_on_every_server_give_every_subscriber_the_same_order_once(
    shared: Option<Shared>,
) {
    let Some((_redis, nodes)) = Shared::nodes::<3>(shared, "c").await else {
        return;
    };
    let mut subs = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        for j in 0..2 {
            let (c, e) = subscriber(n, &format!("sub{i}-{j}")).await;
            subs.push((c, e));
        }
    }
    const PUSHERS: usize = 20;
    const PUSHES: usize = 10;
    let mut tasks = Vec::new();
    for p in 0..PUSHERS {
        let (c, _events) = client(&nodes[p % nodes.len()], &format!("p{p}"));
        tasks.push(tokio::spawn(async move {
            let _keep = _events;
            for k in 0..PUSHES {
                let pk = format!("{p}-{k}");
                let pushed = c.push(vec![record(&pk, "t", k as i64 + 1, &format!("p{p}"))]);
                assert_eq!(pushed.await.unwrap().merged, 1);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = PUSHERS * PUSHES;
    let mut orders = Vec::new();
    for (c, events) in &mut subs {
        let got = receive(events, total).await;
        nothing_more(c, events).await;
        let pks: Vec<String> = got.iter().map(|(_, r)| r.pk.clone()).collect();
        let mut unique = pks.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), total, "a change twice");
        // Cursors only go up, without a gap.
        let cursors: Vec<u64> = got.iter().filter_map(|(c, _)| c.map(|c| c.seq)).collect();
        assert!(cursors.windows(2).all(|w| w[0] < w[1]), "{cursors:?}");
        assert_eq!(cursors.last(), Some(&(total as u64)));
        orders.push(pks);
    }
    assert!(orders.windows(2).all(|w| w[0] == w[1]), "orders differ");
}

async fn a_client_resumes_on_another_server_from_its_cursor(shared: Option<Shared>) {
    let Some((_redis, [a, b])) = Shared::nodes(shared, "r").await else {
        return;
    };
    let (writer, _w) = client(&a, "writer");
    let (reader, mut reader_events) = subscriber(&a, "reader").await;
    for k in 0..3 {
        writer
            .push(vec![record(&k.to_string(), "t", 1, "writer")])
            .await
            .unwrap();
    }
    let got = receive(&mut reader_events, 3).await;
    let resume = got.last().unwrap().0.unwrap();
    reader.close().await;
    // Late: an edit made long ago (old HLC) reaches the log after the cursor.
    for k in 3..6 {
        writer
            .push(vec![record(&k.to_string(), "t", 100 - k, "writer")])
            .await
            .unwrap();
    }
    let (reader, mut reader_events) = client(&b, "reader");
    let ack = reader
        .subscribe(Subscribe::new(["docs"]).after(resume))
        .await
        .unwrap()
        .unwrap();
    assert!(ack.recovered);
    assert_eq!(ack.cursor, Cursor::new(resume.epoch, 6));
    let got = receive(&mut reader_events, 3).await;
    let pks: Vec<&str> = got.iter().map(|(_, r)| r.pk.as_str()).collect();
    assert_eq!(pks, ["3", "4", "5"]);
    nothing_more(&reader, &mut reader_events).await;
    // A pull from a cursor on the third server: the same.
    let pulled = reader
        .pull(PullRequest::new(["docs"]).after(resume))
        .await
        .unwrap();
    assert_eq!(pulled.recovered, Some(true));
    assert_eq!(pulled.changes.len(), 3);
}

async fn concurrent_conflicting_writes_end_with_the_same_winner_everywhere(shared: Option<Shared>) {
    let Some((_redis, nodes)) = Shared::nodes::<2>(shared, "w").await else {
        return;
    };
    let mut tasks = Vec::new();
    for p in 0..4 {
        let (c, events) = client(&nodes[p % 2], &format!("w{p}"));
        tasks.push(tokio::spawn(async move {
            let _keep = events;
            for k in 0..20 {
                // Everyone writes the same field; HLCs interleave across writers.
                let ts = (k * 7 + p * 3) as i64 % 50;
                c.push(vec![record("doc", "title", ts, &format!("w{p}"))])
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut winners = Vec::new();
    for n in &nodes {
        let (c, _e) = client(n, "check");
        let pulled = c.pull(PullRequest::new(["docs"])).await.unwrap();
        // Apply last-writer-wins over what the log holds.
        let mut fields: BTreeMap<(String, String), ChangeRecord> = BTreeMap::new();
        for r in pulled.changes {
            let key = (r.pk.clone(), r.field.clone());
            if fields.get(&key).is_none_or(|w| w.hlc < r.hlc) {
                fields.insert(key, r);
            }
        }
        winners.push(fields);
    }
    assert_eq!(winners[0], winners[1]);
    let winner = &winners[0][&("doc".to_owned(), "title".to_owned())];
    // The greatest HLC written: ts 49 by the greatest node among those that wrote it.
    assert_eq!(winner.hlc.ts, 49);
}

#[tokio::test]
async fn redis_lost_and_back_empty_gives_a_new_epoch_and_the_servers_keep_working() {
    let Some((mut redis, [a, b])) = cluster("e").await else {
        return;
    };
    let (writer, _w) = client(&a, "writer");
    let (reader, mut reader_events) = subscriber(&b, "reader").await;
    let before = writer
        .push(vec![record("1", "t", 1, "writer")])
        .await
        .unwrap();
    receive(&mut reader_events, 1).await;
    let old = before.cursor.unwrap();

    redis.kill();
    // Redis is gone: requests fail with UNAVAILABLE, and the sessions stay open.
    let err = writer
        .push(vec![record("2", "t", 2, "writer")])
        .await
        .unwrap_err();
    assert_server_error(&err, ErrorCode::Unavailable);
    let err = reader.pull(PullRequest::new(["docs"])).await.unwrap_err();
    assert_server_error(&err, ErrorCode::Unavailable);
    assert_eq!(a.server.session_count(), 1);
    assert_eq!(b.server.session_count(), 1);

    redis.restart_empty();
    // Back, empty: a new epoch. Retried until the request connection is up again.
    let deadline = tokio::time::Instant::now() + GUARD;
    let pushed = loop {
        match writer.push(vec![record("3", "t", 3, "writer")]).await {
            Ok(p) => break p,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "{e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let new = pushed.cursor.unwrap();
    assert_ne!(new.epoch, old.epoch);
    assert_eq!(new.seq, 1);
    // The other server follows the new epoch. Its live subscriber holds changes the log no
    // longer has: it is closed, resumes, is told to resynchronise, and gets the new epoch's.
    let got = resync_needed(&mut reader_events).await;
    let got = match got.is_empty() {
        true => receive(&mut reader_events, 1).await,
        false => got,
    };
    assert_eq!(got[0].1, record("3", "t", 3, "writer"));
    // A client resuming from the old epoch is told it may have missed changes.
    let (late, mut late_events) = client(&b, "late");
    let ack = late
        .subscribe(Subscribe::new(["docs"]).after(old))
        .await
        .unwrap()
        .unwrap();
    assert!(!ack.recovered);
    assert_eq!(ack.cursor, new);
    let replayed = receive(&mut late_events, 1).await;
    assert_eq!(replayed[0].1, record("3", "t", 3, "writer"));
}

#[tokio::test]
async fn followers_resume_where_they_stopped_when_the_connection_comes_back() {
    let Some((redis, [a, b])) = cluster("k").await else {
        return;
    };
    let (writer, _w) = client(&a, "writer");
    let (reader, mut reader_events) = subscriber(&b, "reader").await;
    writer
        .push(vec![record("0", "t", 1, "writer")])
        .await
        .unwrap();
    receive(&mut reader_events, 1).await;
    // Every connection to Redis is cut (the data stays): the followers reconnect and read
    // on after the last entry they routed, so the pushes made meanwhile all arrive.
    for k in 1..=5 {
        let _ = redis.command(&["CLIENT", "KILL", "TYPE", "normal"]);
        let deadline = tokio::time::Instant::now() + GUARD;
        loop {
            match writer
                .push(vec![record(&k.to_string(), "t", 1, "writer")])
                .await
            {
                Ok(_) => break,
                Err(e) => assert!(tokio::time::Instant::now() < deadline, "{e:?}"),
            }
        }
    }
    let got = receive(&mut reader_events, 5).await;
    let pks: Vec<&str> = got.iter().map(|(_, r)| r.pk.as_str()).collect();
    assert_eq!(pks, ["1", "2", "3", "4", "5"]);
    nothing_more(&reader, &mut reader_events).await;
}

/// `err` is the server's error frame with `code`.
fn assert_server_error(err: &RequestError, code: ErrorCode) {
    assert!(
        matches!(err, RequestError::Server { code: c, .. } if *c == code),
        "{err:?}"
    );
}

fn json(value: impl serde::Serialize) -> RawJson {
    RawJson::from_serialize(&value).unwrap()
}

/// The next event that `pick` takes (`what` names it; others skipped).
async fn next_event<T>(
    events: &mut ClientEvents,
    what: &str,
    pick: impl Fn(ClientEvent) -> Option<T>,
) -> T {
    loop {
        let event = tokio::time::timeout(GUARD, events.recv())
            .await
            .unwrap_or_else(|_| panic!("{what} in time"))
            .expect("client ended");
        if let Some(picked) = pick(event) {
            return picked;
        }
    }
}

/// The next presence event (others skipped).
async fn presence_event(events: &mut ClientEvents) -> PresenceEvent {
    next_event(events, "a presence event", |event| match event {
        ClientEvent::Presence(p) => Some(p),
        _ => None,
    })
    .await
}

/// The next room event (others skipped).
async fn room_event(events: &mut ClientEvents) -> RoomEvent {
    next_event(events, "a room event", |event| match event {
        ClientEvent::Room(r) => Some(r),
        _ => None,
    })
    .await
}

async fn presence_and_rooms_span_the_servers(shared: Option<Shared>) {
    let Some((_redis, [a, b])) = Shared::nodes(shared, "p").await else {
        return;
    };
    let (alice, mut alice_events) = client(&a, "alice");
    let (bob, mut bob_events) = client(&b, "bob");

    // Presence: bob hears alice join on the other server, then she hears him.
    bob.update_presence("doc", json(1)).await.unwrap();
    presence_event(&mut bob_events).await; // his own join
    alice.update_presence("doc", json(2)).await.unwrap();
    presence_event(&mut alice_events).await; // her own join
    let heard = presence_event(&mut bob_events).await;
    assert_eq!(
        (heard.kind, heard.node_id.as_str()),
        (PresenceEventKind::Join, "alice")
    );
    bob.update_presence("doc", json(3)).await.unwrap();
    let heard = presence_event(&mut alice_events).await;
    assert_eq!(heard.node_id, "bob");
    // Snapshots are the union, on both servers.
    for c in [&alice, &bob] {
        let snap = c.get_presence("doc").await.unwrap();
        let mut nodes: Vec<&str> = snap.states.iter().map(|s| s.node_id.as_str()).collect();
        nodes.sort();
        assert_eq!(nodes, ["alice", "bob"]);
    }

    // Rooms: two members, one per server, fill a room of two on both servers.
    bob.join_room("lobby", None).await.unwrap();
    room_event(&mut bob_events).await; // the member list
    alice.join_room("lobby", None).await.unwrap();
    let heard = room_event(&mut bob_events).await;
    assert_eq!(
        (heard.event, heard.node_id.as_deref()),
        (RoomEventKind::Join, Some("alice"))
    );
    // Bob's broadcast reaches alice after his join did: her server knows him by then.
    bob.broadcast("lobby", json("hi")).await.unwrap();
    loop {
        let heard = room_event(&mut alice_events).await;
        if heard.event == RoomEventKind::Message {
            assert_eq!(heard.node_id.as_deref(), Some("bob"));
            break;
        }
    }
    for n in [&a, &b] {
        let (c, _e) = client(n, "carol");
        let err = c.join_room("lobby", None).await.unwrap_err();
        assert_server_error(&err, ErrorCode::RoomFull);
    }

    // Alice's session ends: bob hears her leave the topic and the room.
    alice.close().await;
    let heard = presence_event(&mut bob_events).await;
    assert_eq!(
        (heard.kind, heard.node_id.as_str()),
        (PresenceEventKind::Leave, "alice")
    );
    let heard = room_event(&mut bob_events).await;
    assert_eq!(
        (heard.event, heard.node_id.as_deref()),
        (RoomEventKind::Leave, Some("alice"))
    );
}

#[tokio::test]
async fn the_members_of_a_silent_server_leave_and_a_forgotten_server_announces_itself() {
    let Some((redis, [b])) = cluster("g").await else {
        return;
    };
    let (bob, mut bob_events) = client(&b, "bob");
    bob.update_presence("doc", json(1)).await.unwrap();
    presence_event(&mut bob_events).await;
    // A server that crashed: its member is in Redis, its heartbeat long gone.
    let field = r#"["ghost",7,"p","doc"]"#;
    let state = r#"{"n":"casper","d":5,"u":1}"#;
    redis.command(&["HSET", "{g}:presence", field, state]);
    redis.command(&["SADD", "{g}:members:ghost", field]);
    // It beats now (Redis' clock) while its member is announced, so no sweep can reap it
    // before the announcement arrives, however loaded the machine is ...
    let time = redis.command(&["TIME"]);
    let secs: u64 = time.split("\r\n").nth(2).unwrap().parse().unwrap();
    let beat = (secs * 1000).to_string();
    redis.command(&["ZADD", "{g}:servers", &beat, "ghost"]);
    let event = r#"{"s":"ghost","i":7,"k":"p","t":"doc","c":"set","n":"casper","d":5,"u":1}"#;
    redis.command(&["PUBLISH", "{g}:events", event]);
    let heard = presence_event(&mut bob_events).await;
    assert_eq!(
        (heard.kind, heard.node_id.as_str()),
        (PresenceEventKind::Join, "casper")
    );
    // ... and then it falls silent: its last beat is long gone.
    redis.command(&["ZADD", "{g}:servers", "0", "ghost"]);
    // The survivors' heartbeat finds it silent: casper leaves, and Redis forgets him.
    let heard = presence_event(&mut bob_events).await;
    assert_eq!(
        (heard.kind, heard.node_id.as_str()),
        (PresenceEventKind::Leave, "casper")
    );
    assert_eq!(redis.command(&["HLEN", "{g}:presence"]), ":1\r\n");

    // Redis loses everything (the connections stay): the server, unknown to it now,
    // announces its members again.
    redis.command(&["FLUSHALL"]);
    let deadline = tokio::time::Instant::now() + GUARD;
    while redis.command(&["HLEN", "{g}:presence"]) != ":1\r\n" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bob was not announced again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Calls per command since the last `CONFIG RESETSTAT`, from `INFO commandstats`.
fn command_calls(redis: &RedisServer) -> BTreeMap<String, u64> {
    let info = redis.command(&["INFO", "commandstats"]);
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats.strip_prefix("calls=")?.split(',').next()?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}

/// Redis does one round trip per push (the push script) and none per delivery: each
/// server's follower reads every entry once, however many of its sessions get it, and the
/// fan-out stays local to each server.
#[tokio::test]
async fn a_push_is_one_redis_round_trip_and_a_delivery_none() {
    const PUSHES: usize = 40;
    const PER_NODE: usize = 10;
    let Some((redis, nodes)) = cluster::<2>("rt").await else {
        return;
    };
    let (pusher, _pusher_events) = client(&nodes[0], "pusher");
    let mut subs = Vec::new();
    for (k, n) in nodes.iter().enumerate() {
        for i in 0..PER_NODE {
            let (c, e) = subscriber(n, &format!("sub{k}-{i}")).await;
            subs.push((c, e));
        }
    }
    // Only the pushes and what they cause are counted: presence heartbeats are scripts too,
    // so they are counted apart (`beat`), and the followers' idle reads are bounded by time.
    redis.command(&["CONFIG", "RESETSTAT"]);
    let started = tokio::time::Instant::now();
    for i in 0..PUSHES {
        let ts = 100 + i as i64;
        pusher
            .push(vec![record(&i.to_string(), "t", ts, "pusher")])
            .await
            .unwrap();
        for (_, events) in &mut subs {
            receive(events, 1).await;
        }
    }
    let elapsed = started.elapsed();
    let calls = command_calls(&redis);
    let deliveries = PUSHES * nodes.len() * PER_NODE;
    let scripts =
        calls.get("evalsha").copied().unwrap_or(0) + calls.get("eval").copied().unwrap_or(0);
    let reads = calls.get("xread").copied().unwrap_or(0);
    // (Commands the scripts run inside Redis count in `INFO commandstats` too, but are no
    // round trips.)
    eprintln!(
        "{PUSHES} pushes, {deliveries} deliveries in {elapsed:?}: {scripts} script calls, \
         {reads} XREADs; all commands: {calls:?}"
    );
    // Heartbeats (every 100 ms per server here) are the only other scripts.
    let beats = 2 * (elapsed.as_millis() as u64 / 100 + 2);
    assert!(
        scripts >= PUSHES as u64 && scripts <= PUSHES as u64 + beats,
        "{scripts} script calls for {PUSHES} pushes (beats at most {beats})"
    );
    // Each follower reads once per entry at most, plus its timed-out blocks (200 ms here).
    let idle_reads = 2 * (elapsed.as_millis() as u64 / 200 + 2);
    assert!(
        reads <= (PUSHES * nodes.len()) as u64 + idle_reads,
        "{reads} XREADs for {PUSHES} pushes on {} servers",
        nodes.len()
    );
}

/// Joins at the same moment on two servers never overfill a room: Redis admits each join
/// that would take a place in one step. Places come free again when members leave or their
/// sessions end, and a server that dies gives its places back.
async fn concurrent_joins_on_two_servers_never_overfill_a_room(shared: Option<Shared>) {
    const PER_NODE: usize = 4;
    let Some((_redis, nodes)) = Shared::nodes::<2>(shared, "full").await else {
        return;
    };
    let mut clients = Vec::new();
    for (k, n) in nodes.iter().enumerate() {
        for i in 0..PER_NODE {
            let (c, e) = client(n, &format!("c{k}-{i}"));
            // Connected before the race starts.
            c.ping(json(0)).await.unwrap();
            clients.push((c, e));
        }
    }
    for round in 0..12 {
        let room = format!("race-{round}");
        let joins = clients.iter().map(|(c, _)| c.join_room(room.clone(), None));
        let outcomes = futures_util::future::join_all(joins).await;
        let mut admitted = Vec::new();
        for (i, outcome) in outcomes.into_iter().enumerate() {
            match outcome {
                Ok(()) => admitted.push(i),
                Err(RequestError::Server {
                    code: ErrorCode::RoomFull,
                    ..
                }) => {}
                Err(e) => panic!("round {round}: client {i}: {e:?}"),
            }
        }
        assert_eq!(admitted.len(), 2, "round {round}: admitted {admitted:?}");
        // A member that leaves frees its place: another client takes it.
        let (leaver, _) = &clients[admitted[0]];
        leaver.leave_room(room.clone()).await.unwrap();
        let other = (0..clients.len()).find(|i| !admitted.contains(i)).unwrap();
        let mut retries = 0;
        // The leave reaches Redis through the publishing queue, just after its ack.
        while let Err(e) = clients[other].0.join_room(room.clone(), None).await {
            assert!(
                retries < 50,
                "round {round}: the freed place stays taken: {e:?}"
            );
            retries += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Entries trimmed from the log before a server read them (its follower lagged behind the
/// retention) are changes its subscribers would silently miss: the server closes them with
/// 4503, and they resume from their cursors.
#[tokio::test]
async fn a_gap_in_the_log_closes_the_subscribers_so_they_resume() {
    let Some((redis, [a])) = cluster("gap").await else {
        return;
    };
    let (writer, _w) = client(&a, "writer");
    let (_reader, mut reader_events) = subscriber(&a, "reader").await;
    let pushed = writer
        .push(vec![record("1", "t", 1, "writer")])
        .await
        .unwrap();
    receive(&mut reader_events, 1).await;
    let at = pushed.cursor.unwrap();
    // What a follower sees when the entries after its position were trimmed before it read
    // them: the next entry it reads is several positions ahead.
    let entry = serde_json::to_string(&record("9", "t", 9, "elsewhere")).unwrap();
    let reply = redis.command(&[
        "XADD",
        "{gap}:log",
        &format!("{}-0", at.seq + 5),
        "e",
        &at.epoch.to_string(),
        "r",
        &entry,
    ]);
    assert!(reply.starts_with('$'), "{reply}");
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let event = tokio::time::timeout_at(deadline, reader_events.recv())
            .await
            .expect("the subscriber was not closed")
            .expect("client ended");
        match event {
            ClientEvent::Disconnected { code, .. } => {
                assert_eq!(code, Some(syncmux::wire::CloseCode::SLOW_CONSUMER));
                break;
            }
            ClientEvent::Changes { .. } => panic!("a change after the gap came first: {event:?}"),
            _ => {}
        }
    }
    // The writer, with no subscription, missed nothing and stays.
    writer.ping(json(1)).await.unwrap();
}

/// Redis stops answering for a while (paused: `SIGSTOP`, as a stalled host or a long fork
/// would) and then answers again: requests meanwhile fail with `UNAVAILABLE` or wait, the
/// sessions stay, and every change accepted before, during or after reaches the other
/// server's subscriber once, in order.
#[tokio::test]
async fn redis_paused_and_resumed_loses_nothing() {
    let Some((redis, [a, b])) = cluster("pause").await else {
        return;
    };
    let (writer, _w) = client(&a, "writer");
    let (reader, mut reader_events) = subscriber(&b, "reader").await;
    let mut accepted = Vec::new();
    for k in 0..3 {
        writer
            .push(vec![record(&format!("before-{k}"), "t", 1, "writer")])
            .await
            .unwrap();
        accepted.push(format!("before-{k}"));
    }
    redis.signal("STOP");
    // While paused, pushes fail (the request timeout is 2 s here) or are accepted once it
    // answers again.
    let paused = tokio::spawn({
        let writer = writer.clone();
        async move {
            let mut ok = Vec::new();
            for k in 0..2 {
                let pk = format!("during-{k}");
                if writer
                    .push(vec![record(&pk, "t", 1, "writer")])
                    .await
                    .is_ok()
                {
                    ok.push(pk);
                }
            }
            ok
        }
    });
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    redis.signal("CONT");
    accepted.extend(paused.await.unwrap());
    for k in 0..3 {
        let pk = format!("after-{k}");
        let deadline = tokio::time::Instant::now() + GUARD;
        while writer
            .push(vec![record(&pk, "t", 1, "writer")])
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "Redis did not come back"
            );
        }
        accepted.push(pk);
    }
    // A push that failed while Redis was paused may still have been applied when it came
    // back (the client cannot know; pushing it again would be harmless): it may arrive too.
    let mut got = Vec::new();
    while !accepted.iter().all(|pk| {
        got.iter()
            .any(|(_, r): &(Option<Cursor>, ChangeRecord)| r.pk == *pk)
    }) {
        got.extend(receive(&mut reader_events, 1).await);
    }
    nothing_more(&reader, &mut reader_events).await;
    let pks: Vec<String> = got.iter().map(|(_, r)| r.pk.clone()).collect();
    let mut unique = pks.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), pks.len(), "a change twice: {pks:?}");
    assert!(
        pks.iter()
            .all(|pk| accepted.contains(pk) || pk.starts_with("during-")),
        "{pks:?}"
    );
    let cursors: Vec<u64> = got.iter().filter_map(|(c, _)| c.map(|c| c.seq)).collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "{cursors:?}");
}

/// A backend whose follower starts late, as a cluster's does (it opens a connection to every
/// node and reads the slots first).
struct LateFollower(RedisBackend);

impl adapters::Backend for LateFollower {
    fn read(
        &self,
        read: adapters::Read,
    ) -> adapters::BackendFuture<Result<syncmux::PullAnswer, syncmux::AppError>> {
        adapters::Backend::read(&self.0, read)
    }

    fn push(
        &self,
        push: adapters::Push,
    ) -> adapters::BackendFuture<Result<syncmux::PushAnswer, syncmux::AppError>> {
        adapters::Backend::push(&self.0, push)
    }

    fn follow(&self, log: adapters::LogSink) -> Option<adapters::BackendFuture<()>> {
        let follow = self.0.follow(log)?;
        Some(Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            follow.await;
        }))
    }
}

/// A change pushed while a server's follower is not yet reading the log still reaches that
/// server's subscribers: the follower starts where the log stood when the backend
/// connected, not where it stands when the follower gets going.
#[tokio::test]
async fn a_change_pushed_before_a_follower_starts_reaches_its_subscribers() {
    let Some((redis, [a])) = cluster("late").await else {
        return;
    };
    let mut config = RedisConfig::new(redis.url());
    config.prefix = "late".to_owned();
    let backend = LateFollower(RedisBackend::connect(config).await.unwrap());
    let (server, url) = crate::serve(backend, ServerConfig::default()).await;
    let b = Node { server, url };
    let (_sub, mut events) = subscriber(&b, "sub").await;
    let (writer, _w) = client(&a, "writer");
    let pushed = writer
        .push(vec![record("1", "t", 1, "writer")])
        .await
        .unwrap();
    let got = receive(&mut events, 1).await;
    assert_eq!(got, vec![(pushed.cursor, record("1", "t", 1, "writer"))]);
}
