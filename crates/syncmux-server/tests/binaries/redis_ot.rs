//! The OT profile on Redis (`syncmux_redis::RedisOt`): servers on one real `redis-server`
//! (see `redis_util`) serve the same documents. Clients on both servers converge through
//! concurrent edits; a Pub/Sub message that never came (an op appended without its publish)
//! is read back from the history list, whether a later op reveals the gap or only the poll
//! can; a server killed mid-way loses no op it acked.
#![cfg(all(feature = "redis", unix))]
#![allow(clippy::unwrap_used)]

use crate::example_util;
use crate::redis_util;

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use redis_util::RedisServer;
use syncmux::ot::{OtClient, OtClientConfig, OtClientState, OtServer, OtServerConfig, TextOp};
use syncmux_redis::{RedisOt, RedisOtConfig};
use syncmux_runtime::{self as adapters, Clock, OtServerHandle, ServerOptions};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

/// Only a hang reaches it.
const GUARD: Duration = Duration::from_secs(20);

/// An edit, made by the peer's task on its current text.
enum Edit {
    Insert { text: String, at: u64 },
    Delete { at: u64 },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Seen {
    text: String,
    revision: u64,
    unacked: bool,
    synced: bool,
    /// The connection ended.
    gone: bool,
    /// Edits made so far.
    edits: u64,
}

/// An `OtClient` driven over a WebSocket to `/ot` by a task of its own.
struct Peer {
    edits: mpsc::UnboundedSender<Edit>,
    seen: watch::Receiver<Seen>,
    sent: u64,
}

impl Peer {
    /// A client of `url`, connected and synchronized; gone once its connection ends.
    async fn open(url: &str, name: &str) -> Peer {
        Peer::open_with(url, name, false).await
    }

    /// [`open`](Self::open); with `reconnect`, a connection that ends is opened again (as an
    /// application would), and the client loads the document anew.
    async fn open_with(url: &str, name: &str, reconnect: bool) -> Peer {
        let (edits, mut rx) = mpsc::unbounded_channel::<Edit>();
        let (tx, seen) = watch::channel(Seen::default());
        let clock = Clock::new();
        let mut client = OtClient::new(OtClientConfig::new(name)).unwrap();
        let url = url.to_owned();
        let (ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        tokio::spawn(async move {
            let mut made = 0;
            let mut ws = Some(ws);
            'connections: loop {
                let ws = match ws.take() {
                    Some(ws) => ws,
                    None => match tokio_tungstenite::connect_async(&url).await {
                        Ok((ws, _)) => ws,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let (mut sink, mut stream) = ws.split();
                client.handle_connected(clock.now());
                loop {
                    while let Some(frame) = client.poll_transmit() {
                        let text = String::from_utf8(frame.to_vec()).unwrap();
                        if sink.send(Message::text(text)).await.is_err() {
                            break;
                        }
                    }
                    while client.poll_event().is_some() {}
                    tx.send_replace(Seen {
                        text: client.text().to_owned(),
                        revision: client.revision(),
                        unacked: client.has_unacked(),
                        synced: client.state() != OtClientState::Fetching,
                        gone: false,
                        edits: made,
                    });
                    // The client's timers (the delay before fetching again after a
                    // refusal), checked often enough for a test.
                    let tick = tokio::time::sleep(Duration::from_millis(20));
                    tokio::select! {
                        () = tick => client.handle_timeout(clock.now()),
                        m = stream.next() => match m {
                            Some(Ok(Message::Text(t))) => client.handle_message(clock.now(), Bytes::from(t)),
                            Some(Ok(_)) => {}
                            _ => break,
                        },
                        e = rx.recv() => {
                            let Some(e) = e else { break 'connections };
                            let len = TextOp::utf16_len(client.text());
                            let op = match e {
                                Edit::Insert { text, at } => TextOp::new().retain(at % (len + 1)).insert(text),
                                Edit::Delete { at } if len > 0 => TextOp::new().retain(at % len).delete(1),
                                Edit::Delete { .. } => TextOp::new(),
                            };
                            client.edit(clock.now(), op).unwrap();
                            made += 1;
                        }
                    }
                }
                client.handle_disconnected(clock.now());
                if !reconnect {
                    break;
                }
            }
            tx.send_modify(|s| s.gone = true);
        });
        let mut peer = Peer {
            edits,
            seen,
            sent: 0,
        };
        peer.wait(|s| s.synced).await;
        peer
    }

    fn edit(&mut self, edit: Edit) {
        self.edits.send(edit).unwrap();
        self.sent += 1;
    }

    /// Waits until the edits sent so far are made and acked (or the connection is gone).
    async fn acked(&mut self) -> Seen {
        let sent = self.sent;
        self.wait(move |s| s.gone || (s.edits == sent && !s.unacked))
            .await
    }

    async fn wait(&mut self, f: impl Fn(&Seen) -> bool) -> Seen {
        let probe = self.seen.clone();
        tokio::time::timeout(GUARD, self.seen.wait_for(|s| f(s)))
            .await
            .unwrap_or_else(|_| panic!("hung: {:?}", probe.borrow().clone()))
            .unwrap()
            .clone()
    }
}

/// An OT server on the shared history in `redis` (in process), and its `/ot` URL.
async fn server(redis: &str, poll: Duration) -> (OtServerHandle, String) {
    server_with(redis, poll, 0).await
}

/// [`server`], its commits acknowledged once `min_replicas` replicas hold them.
async fn server_with(redis: &str, poll: Duration, min_replicas: usize) -> (OtServerHandle, String) {
    let mut config = OtServerConfig::default();
    config.shared_history = true;
    config.rate_limit_messages = 0;
    let server =
        adapters::Tokio::start_ot(OtServer::new(config).unwrap(), ServerOptions::default());
    let mut config = RedisOtConfig::new(redis);
    config.prefix = "{t}:".to_owned();
    config.poll = poll;
    config.min_replicas = min_replicas;
    let shared = RedisOt::connect(config).await.unwrap();
    tokio::spawn(shared.run(server.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(adapters::Tokio::serve(server.clone(), listener, None));
    (server, format!("ws://{addr}/ot"))
}

async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

/// doc-1's head revision and text in Redis, its keys `{doc}:metadata` and so on.
async fn stored(conn: &mut redis::aio::MultiplexedConnection, doc: &str) -> (u64, String) {
    let (v, data): (Option<u64>, Option<String>) = redis::pipe()
        .atomic()
        .hget(format!("{doc}:metadata"), "v")
        .get(format!("{doc}:data"))
        .query_async(conn)
        .await
        .unwrap();
    let text = data.map_or_else(String::new, |d| serde_json::from_str(&d).unwrap());
    (v.unwrap_or(0), text)
}

/// Appends an op to doc-1's history the way a server does, but publishes nothing: the
/// channel's message for it is lost.
async fn append_unpublished(conn: &mut redis::aio::MultiplexedConnection, doc: &str, insert: &str) {
    let (v, text) = stored(conn, doc).await;
    let op = TextOp::new().insert(insert);
    let after = op.apply(&text).unwrap();
    let _: () = redis::pipe()
        .atomic()
        .rpush(format!("{doc}:history"), op.to_json())
        .hset(format!("{doc}:metadata"), "v", v + 1)
        .set(
            format!("{doc}:data"),
            serde_json::to_string(&after).unwrap(),
        )
        .query_async(conn)
        .await
        .unwrap();
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Waits until every peer has made and seen acked the edits sent to it, then until every
/// peer is settled on Redis' head text. (Without the first wait an edit still queued for a
/// peer's task lets an untouched document count as converged.)
async fn converge(
    peers: &mut [Peer],
    conn: &mut redis::aio::MultiplexedConnection,
    doc: &str,
) -> String {
    for peer in peers.iter_mut() {
        peer.acked().await;
    }
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let (v, text) = stored(conn, doc).await;
        let all = peers.iter().all(|p| {
            let s = p.seen.borrow();
            !s.unacked && s.revision == v && s.text == text
        });
        if all {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no convergence: redis at {v} {text:?}, peers {:?}",
            peers
                .iter()
                .map(|p| p.seen.borrow().clone())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Three clients on each of two servers edit doc-1 at once, 40 random inserts and deletes
/// each, without waiting for acks: every client ends on the text and revision that Redis
/// holds. Without the channel (or the commit's transform at a moved head) the servers' copies
/// diverge and the clients of one never see the other's edits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_two_servers_converge() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mut conn = redis_conn(&redis.url()).await;
    // No poll: the channel alone carries the ops between the servers.
    edit_on_two_servers(&redis.url(), &mut conn, "{t}:doc:doc-1", Duration::ZERO).await;
}

/// The same on a three-primary Redis Cluster, where a document's id is its keys' hash tag
/// (`t:doc:{doc-1}:metadata`): its keys share a slot, so the commit script runs there. The
/// poll is on: its pipeline reads the heads of documents in different slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_two_servers_converge_on_a_redis_cluster() {
    let Some(cluster) = redis_util::Cluster::start() else {
        return;
    };
    let doc = "t:doc:{doc-1}";
    let owner = cluster.slot_owner(&format!("{doc}:history"));
    let mut conn = redis_conn(&format!("redis://127.0.0.1:{owner}")).await;
    edit_on_two_servers(&cluster.url(), &mut conn, doc, Duration::from_millis(100)).await;
}

/// Three clients on each of two servers on `url` (polling every `poll`) edit doc-1 (its keys
/// `{doc}:...`, read through `conn`) at once, until they converge on what Redis holds.
async fn edit_on_two_servers(
    url: &str,
    conn: &mut redis::aio::MultiplexedConnection,
    doc: &str,
    poll: Duration,
) {
    let (_a, a) = server(url, poll).await;
    let (_b, b) = server(url, poll).await;
    let mut peers = Vec::new();
    for i in 0..6 {
        let at = if i % 2 == 0 { &a } else { &b };
        peers.push(Peer::open(at, &format!("p{i}")).await);
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..40u32 {
        for (i, peer) in peers.iter_mut().enumerate() {
            let at = rng.next();
            if rng.next().is_multiple_of(4) {
                peer.edit(Edit::Delete { at });
            } else {
                peer.edit(Edit::Insert {
                    text: format!("<{i}.{round}>"),
                    at,
                });
            }
        }
        if round.is_multiple_of(8) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let text = converge(&mut peers, conn, doc).await;
    // Edits made while one is in flight are composed into one op: fewer revisions than
    // edits, one history item each.
    let (v, _) = stored(conn, doc).await;
    let history: u64 = redis::cmd("LLEN")
        .arg(format!("{doc}:history"))
        .query_async(conn)
        .await
        .unwrap();
    assert_eq!(history, v);
    assert!(v > 6, "{v} revisions");
    // The history replays to the snapshot.
    let ops: Vec<String> = redis::cmd("LRANGE")
        .arg(format!("{doc}:history"))
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await
        .unwrap();
    let mut replay = String::new();
    for op in ops {
        replay = TextOp::from_json(serde_json::from_str(&op).unwrap())
            .unwrap()
            .apply(&replay)
            .unwrap();
    }
    assert_eq!(replay, text);
}

/// Two servers on a Sentinel deployment whose primary dies (SIGKILL) while two clients on
/// each edit doc-1; with `cut`, its replica was cut off first, so that the primary took ops
/// no replica has, which the failover loses. With `min_replicas` the new primary gets a
/// replica of its own. The servers' connections and channels move to the new primary; a
/// copy ahead of it (ops lost) is dropped and its clients closed, and they load the document
/// again. Every client ends on what the new primary holds, its edits after the failover in.
async fn edit_through_a_failover(min_replicas: usize, cut: bool) {
    let Some(mut ha) = redis_util::Sentinels::start() else {
        return;
    };
    let url = ha.url();
    let (_a, a) = server_with(&url, Duration::from_millis(100), min_replicas).await;
    let (_b, b) = server_with(&url, Duration::from_millis(100), min_replicas).await;
    let mut peers = Vec::new();
    for i in 0..4 {
        let at = if i % 2 == 0 { &a } else { &b };
        peers.push(Peer::open_with(at, &format!("p{i}"), true).await);
    }
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut edit = |peers: &mut [Peer], round: u32| {
        for (i, peer) in peers.iter_mut().enumerate() {
            peer.edit(Edit::Insert {
                text: format!("<{i}.{round}>"),
                at: rng.next(),
            });
        }
    };
    for round in 0..10 {
        edit(&mut peers, round);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if cut {
        ha.cut_replica_off();
        for round in 10..20 {
            edit(&mut peers, round);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let old = ha.kill_primary();
    let new = tokio::task::block_in_place(|| ha.wait_failover(old));
    if min_replicas > 0 {
        tokio::task::block_in_place(|| ha.add_replica());
    }
    for round in 20..30 {
        edit(&mut peers, round);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut conn = redis_conn(&format!("redis://127.0.0.1:{new}")).await;
    let text = converge(&mut peers, &mut conn, "{t}:doc:doc-1").await;
    for i in 0..4 {
        assert!(text.contains(&format!("<{i}.29>")), "{text}");
    }
}

/// Nothing lost: the replica had every op.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_converge_after_a_sentinel_failover() {
    edit_through_a_failover(0, false).await;
}

/// The ops only the dead primary had are lost; the copies that had them start again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_converge_after_a_failover_that_lost_ops() {
    edit_through_a_failover(0, true).await;
}

/// With `--redis-min-replicas 1`: ops the replica lacked were not acked (their senders
/// fetched the document), and are lost; the copies that had them start again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_converge_after_a_failover_that_lost_ops_with_min_replicas() {
    edit_through_a_failover(1, true).await;
}

/// An op appended without its Pub/Sub message: the next op on the channel shows both
/// servers a gap, and they read the missing op from the history list (the poll is off, so
/// nothing else could bring it). Without the read, server B's copy stops at the gap and its
/// client never converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_publish_is_read_back_from_the_history() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let (_a, a) = server(&url, Duration::ZERO).await;
    let (_b, b) = server(&url, Duration::ZERO).await;
    let mut peers = vec![Peer::open(&a, "a").await, Peer::open(&b, "b").await];
    let mut conn = redis_conn(&url).await;
    peers[0].edit(Edit::Insert {
        text: "hello".into(),
        at: 0,
    });
    assert_eq!(
        converge(&mut peers, &mut conn, "{t}:doc:doc-1").await,
        "hello"
    );
    append_unpublished(&mut conn, "{t}:doc:doc-1", "lost ").await;
    peers[0].edit(Edit::Insert {
        text: "!".into(),
        at: 5,
    });
    let text = converge(&mut peers, &mut conn, "{t}:doc:doc-1").await;
    assert_eq!(text, "lost hello!");
    assert_eq!(peers[1].seen.borrow().revision, 3);
}

/// An op appended without its Pub/Sub message and nothing after it: only the poll of the
/// heads can find it, and it does. Without the poll (or its fetch) no client ever sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_lost_at_the_tail_is_found_by_the_poll() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let (_a, a) = server(&url, Duration::from_millis(100)).await;
    let (_b, b) = server(&url, Duration::from_millis(100)).await;
    let mut peers = vec![Peer::open(&a, "a").await, Peer::open(&b, "b").await];
    let mut conn = redis_conn(&url).await;
    peers[1].edit(Edit::Insert {
        text: "x".into(),
        at: 0,
    });
    converge(&mut peers, &mut conn, "{t}:doc:doc-1").await;
    append_unpublished(&mut conn, "{t}:doc:doc-1", "tail ").await;
    assert_eq!(
        converge(&mut peers, &mut conn, "{t}:doc:doc-1").await,
        "tail x"
    );
}

/// Starts `syncmux-server` with `args`; its `/ot` URL.
fn start_example(args: &[&str]) -> (example_util::Killed, String) {
    let args = [&["--rate-limit", "0"], args].concat();
    example_util::start_server_until(&args, "ot on ").expect("the server stopped")
}

/// Two servers (`--redis`): two clients on each insert tokens one op in flight at a
/// time; server A is killed with SIGKILL mid-way. Every token whose op A (or B) acked is in
/// the text Redis holds and that B's clients converge on, exactly once: an ack is sent only
/// once the op is in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_loses_nothing_it_acked() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let args = ["--redis", &url, "--redis-prefix", "kill"];
    let (mut a_process, a) = start_example(&args);
    let (_b_process, b) = start_example(&args);
    let mut peers = Vec::new();
    for i in 0..4 {
        peers.push(Peer::open(if i < 2 { &a } else { &b }, &format!("k{i}")).await);
    }
    let mut acked: Vec<String> = Vec::new();
    for round in 0..30 {
        for (i, peer) in peers.iter_mut().enumerate() {
            if peer.seen.borrow().gone {
                continue;
            }
            let token = format!("<{i}.{round}>");
            // At the start: no insert splits another token.
            peer.edit(Edit::Insert {
                text: token.clone(),
                at: 0,
            });
            let seen = peer.acked().await;
            if !seen.gone {
                acked.push(token);
            }
            // Killed right after an ack: an ack sent before the op reached Redis (a write
            // behind) would lose that op.
            if round == 15 && i == 0 {
                a_process.0.kill().unwrap();
                a_process.0.wait().unwrap();
            }
        }
    }
    assert!(
        peers[0].seen.borrow().gone && peers[1].seen.borrow().gone,
        "A is dead"
    );
    let mut conn = redis_conn(&url).await;
    let text = converge(&mut peers[2..], &mut conn, "{kill}:doc:doc-1").await;
    assert!(acked.len() > 60, "{} acked", acked.len());
    for token in &acked {
        assert_eq!(
            text.matches(token.as_str()).count(),
            1,
            "{token} in {text:?}"
        );
    }
}

/// How many subscribers `channel` has, and how many pattern subscriptions there are.
async fn subscribers(conn: &mut redis::aio::MultiplexedConnection, channel: &str) -> (u64, u64) {
    let (_, count): (String, u64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(conn)
        .await
        .unwrap();
    let patterns: u64 = redis::cmd("PUBSUB")
        .arg("NUMPAT")
        .query_async(conn)
        .await
        .unwrap();
    (count, patterns)
}

/// Waits until `channel` has `count` subscribers.
async fn until_subscribers(
    conn: &mut redis::aio::MultiplexedConnection,
    channel: &str,
    count: u64,
) {
    let deadline = tokio::time::Instant::now() + GUARD;
    while subscribers(conn, channel).await.0 != count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{channel}: never {count}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A raw connection to `/ot` that asks for a document's snapshot (which joins it) and
/// reads the answer.
async fn join(
    url: &str,
    doc: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let ask = format!(r#"{{"type":"snapshot","docId":"{doc}"}}"#);
    ws.send(Message::text(ask)).await.unwrap();
    let answer = next_frame(&mut ws).await;
    assert_eq!(answer["type"], "snapshot", "{answer}");
    ws
}

async fn next_frame(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> serde_json::Value {
    loop {
        let message = tokio::time::timeout(GUARD, ws.next())
            .await
            .expect("hung")
            .unwrap()
            .unwrap();
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

/// A server follows the channels of the documents it serves, and no other: no pattern
/// subscription, doc-1's channel from the start, a document's channel once a client joins
/// it — before the document's snapshot is read, so already when the client's snapshot
/// answer comes. After its subscription is killed it resubscribes to all of them, and
/// another server's op comes through. Without per-document subscriptions (one pattern for
/// every document) the counts are wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_follows_the_channels_of_its_documents_only() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let mut conn = redis_conn(&url).await;
    let (_a, a) = server(&url, Duration::ZERO).await;
    until_subscribers(&mut conn, "{t}:doc:doc-1", 1).await;
    assert_eq!(subscribers(&mut conn, "{t}:doc:b").await, (0, 0));

    let mut on_a = join(&a, "b").await;
    assert_eq!(subscribers(&mut conn, "{t}:doc:b").await, (1, 0));
    assert_eq!(subscribers(&mut conn, "{t}:doc:c").await, (0, 0));

    // The subscription dies; the server comes back on every document's channel.
    let (_b, b) = server(&url, Duration::ZERO).await;
    let mut on_b = join(&b, "b").await;
    until_subscribers(&mut conn, "{t}:doc:b", 2).await;
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .unwrap();
    until_subscribers(&mut conn, "{t}:doc:doc-1", 2).await;
    until_subscribers(&mut conn, "{t}:doc:b", 2).await;
    assert_eq!(subscribers(&mut conn, "{t}:doc:c").await, (0, 0));

    on_b.send(Message::text(
        r#"{"type":"op","op":[{"i":"hi"}],"revision":0,"docId":"b"}"#,
    ))
    .await
    .unwrap();
    assert_eq!(next_frame(&mut on_b).await["type"], "ack");
    let op = next_frame(&mut on_a).await;
    assert_eq!(
        (
            op["type"].as_str(),
            op["revision"].as_u64(),
            op["docId"].as_str()
        ),
        (Some("op"), Some(1), Some("b")),
        "{op}"
    );
}

/// A snapshot read that fails (Redis paused past the request timeout) is tried again until
/// it succeeds: the client that asked for the document gets the shared text once Redis is
/// back. Read once only, the document would wait for its first snapshot for ever, and the
/// client with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_snapshot_read_is_tried_again() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let mut conn = redis_conn(&url).await;
    let _: () = redis::pipe()
        .hset("{t}:doc:z:metadata", "type", "text")
        .hset("{t}:doc:z:metadata", "v", 1)
        .set("{t}:doc:z:data", r#""x""#)
        .rpush("{t}:doc:z:history", r#"[{"i":"x"}]"#)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut config = OtServerConfig::default();
    config.shared_history = true;
    let server =
        adapters::Tokio::start_ot(OtServer::new(config).unwrap(), ServerOptions::default());
    let mut config = RedisOtConfig::new(&url);
    config.prefix = "{t}:".to_owned();
    config.poll = Duration::ZERO;
    config.request_timeout = Duration::from_millis(200);
    tokio::spawn(RedisOt::connect(config).await.unwrap().run(server.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(adapters::Tokio::serve(server, listener, None));
    until_subscribers(&mut conn, "{t}:doc:doc-1", 1).await;

    redis.signal("STOP");
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ot"))
        .await
        .unwrap();
    ws.send(Message::text(r#"{"type":"snapshot","docId":"z"}"#))
        .await
        .unwrap();
    // Long enough for the read to time out, twice.
    tokio::time::sleep(Duration::from_millis(800)).await;
    redis.signal("CONT");
    assert_eq!(
        next_frame(&mut ws).await,
        serde_json::json!({"type": "snapshot", "revision": 1, "text": "x", "docId": "z"})
    );
}

/// [`join`] on a new connection, again until the server has room for the document (the
/// previous holder's departure is seen by the server a little after its close): the
/// connection and the snapshot answer.
async fn join_when_room(
    url: &str,
    doc: &str,
) -> (
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    serde_json::Value,
) {
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let ask = format!(r#"{{"type":"snapshot","docId":"{doc}"}}"#);
        ws.send(Message::text(ask)).await.unwrap();
        let answer = next_frame(&mut ws).await;
        if answer["type"] == "snapshot" {
            return (ws, answer);
        }
        assert!(tokio::time::Instant::now() < deadline, "{answer}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A copy dropped to make room under `max_documents` leaves its channel (and only it),
/// and the document lives on in Redis: joined again, it is loaded again, with its text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_copy_leaves_its_channel_and_comes_back_whole() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let mut conn = redis_conn(&url).await;
    let mut config = OtServerConfig::default();
    config.shared_history = true;
    config.max_documents = 2;
    let server =
        adapters::Tokio::start_ot(OtServer::new(config).unwrap(), ServerOptions::default());
    let mut config = RedisOtConfig::new(&url);
    config.prefix = "{t}:".to_owned();
    config.poll = Duration::ZERO;
    tokio::spawn(RedisOt::connect(config).await.unwrap().run(server.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url_ot = format!("ws://{}/ot", listener.local_addr().unwrap());
    tokio::spawn(adapters::Tokio::serve(server, listener, None));

    let mut writer = join(&url_ot, "b").await;
    writer
        .send(Message::text(
            r#"{"type":"op","op":[{"i":"kept"}],"revision":0,"docId":"b"}"#,
        ))
        .await
        .unwrap();
    assert_eq!(next_frame(&mut writer).await["type"], "ack");
    writer.close(None).await.unwrap();
    drop(writer);

    // "c" needs b's place once the writer is gone.
    let (mut other, _) = join_when_room(&url_ot, "c").await;
    until_subscribers(&mut conn, "{t}:doc:b", 0).await;
    assert_eq!(subscribers(&mut conn, "{t}:doc:c").await, (1, 0));
    other.close(None).await.unwrap();
    drop(other);

    // b again, in c's place: loaded from Redis.
    let (_again, answer) = join_when_room(&url_ot, "b").await;
    assert_eq!(
        answer,
        serde_json::json!({"type": "snapshot", "revision": 1, "text": "kept", "docId": "b"})
    );
    assert_eq!(subscribers(&mut conn, "{t}:doc:b").await, (1, 0));
    until_subscribers(&mut conn, "{t}:doc:c", 0).await;
}

/// With `min_replicas` 1, an op is acknowledged once a replica holds it. While the replica is
/// stopped an op still stands (Redis has it, and the server's other clients get it) but its
/// sender gets an error instead of the ack; once the replica is back, ops are acknowledged
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_min_replicas_an_op_is_acked_once_a_replica_holds_it() {
    let Some(primary) = RedisServer::start() else {
        return;
    };
    let replica = RedisServer::start_replica_of(&primary).unwrap();
    tokio::time::timeout(GUARD, async {
        while primary.replicas() == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the replica came online");
    let (_server, url) = server_with(&primary.url(), Duration::ZERO, 1).await;
    let (mut editor, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let (mut watcher, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    // Appends `text` to the document of `revision` characters (one per revision).
    let op = |revision: u64, text: &str| {
        let mut components = Vec::new();
        if revision > 0 {
            components.push(serde_json::json!({ "r": revision }));
        }
        components.push(serde_json::json!({ "i": text }));
        let op = serde_json::json!({"type": "op", "op": components, "revision": revision});
        Message::text(op.to_string())
    };
    editor.send(op(0, "a")).await.unwrap();
    let answer = next_json(&mut editor).await;
    assert_eq!(
        (&answer["type"], &answer["revision"]),
        (&"ack".into(), &1.into()),
        "{answer}"
    );
    assert_eq!(next_json(&mut watcher).await["revision"], 1);

    replica.signal("STOP");
    editor.send(op(1, "b")).await.unwrap();
    let answer = next_json(&mut editor).await;
    replica.signal("CONT");
    assert_eq!(answer["type"], "error", "{answer}");
    // After the error (its client fetches the document then), the op like any other's.
    for ws in [&mut editor, &mut watcher] {
        let relayed = next_json(ws).await;
        assert_eq!(
            (&relayed["type"], &relayed["revision"]),
            (&"op".into(), &2.into()),
            "it stands: {relayed}"
        );
    }
    let mut conn = redis_conn(&primary.url()).await;
    assert_eq!(
        stored(&mut conn, "{t}:doc:doc-1").await,
        (2, "ab".to_owned())
    );

    editor.send(op(2, "c")).await.unwrap();
    let answer = next_json(&mut editor).await;
    assert_eq!(
        (&answer["type"], &answer["revision"]),
        (&"ack".into(), &3.into()),
        "{answer}"
    );
}

/// The next text frame of `ws`, as JSON.
async fn next_json<S, E>(ws: &mut S) -> serde_json::Value
where
    S: futures_util::Stream<Item = Result<Message, E>> + Unpin,
    E: std::fmt::Debug,
{
    match tokio::time::timeout(GUARD, ws.next())
        .await
        .expect("a frame in time")
    {
        Some(Ok(Message::Text(text))) => serde_json::from_str(&text).unwrap(),
        other => panic!("{other:?}"),
    }
}

/// No sticky sessions for the OT profile over HTTP + SSE either: a POST that reaches
/// another server than its stream's is handed to the stream's session through the relay,
/// acked on that stream and answered with its revision; the op reaches the SSE and
/// WebSocket clients of both servers, and a poll on either reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_on_the_server_without_its_stream_is_acked_on_the_stream() {
    use crate::ot_http::{next, open, poll, post, websocket, ws_next};
    use serde_json::json;
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let args = ["--redis", &url, "--redis-prefix", "relayed"];
    let address = |url: String| url.strip_prefix("ws://").unwrap().replace("/ot", "");
    let (_a_process, a) = start_example(&args);
    let (_b_process, b) = start_example(&args);
    let (a, b) = (address(a), address(b));
    let (mut on_a, cookie) = open(&a, Some("r1"), &[]).await;
    assert_eq!(next(&mut on_a).await["type"], "init");
    let (mut on_b, _) = open(&b, Some("r1"), &[]).await;
    assert_eq!(next(&mut on_b).await["type"], "init");
    let mut ws_on_a = websocket(&a, "r1").await;

    let op = json!({"type": "op", "op": [{"i": "relayed"}], "revision": 0, "docId": "r1"});
    let (status, answer) = post(&b, &op, &[&format!("Cookie: {cookie}")]).await;
    assert_eq!(
        (status, answer),
        (202, json!({"success": true, "revision": 1}))
    );
    let ack = json!({"type": "ack", "revision": 1, "docId": "r1"});
    assert_eq!(next(&mut on_a).await, ack);
    let broadcast = json!({"type": "op", "op": [{"i": "relayed"}], "revision": 1, "docId": "r1"});
    assert_eq!(next(&mut on_b).await, broadcast);
    assert_eq!(ws_next(&mut ws_on_a).await, broadcast);
    for server in [&a, &b] {
        let (status, answer) = poll(server, "r1", 0).await;
        assert_eq!((status, &answer["revision"]), (200, &json!(1)), "{answer}");
    }

    // A stream id of A's that A does not hold: not found, wherever it is asked for.
    let (node, _) = cookie
        .split_once('.')
        .expect("relayed ids name their server");
    let unknown = format!("Cookie: {node}.00000000000000000000000000000000");
    assert_eq!(post(&b, &op, &[&unknown]).await.0, 404);
    assert_eq!(post(&a, &op, &[&unknown]).await.0, 404);
}
