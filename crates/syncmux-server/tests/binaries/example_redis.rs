//! The server on Redis (`--redis`, feature `redis`, on by default): two processes on one
//! `redis-server` (see `redis_util`) serve one log; an unreachable Redis stops the start-up.
//! Built without the feature, `--redis` is refused.
#![cfg(unix)]
#![allow(clippy::unwrap_used)]

use crate::example_util;

use example_util::start_server as start;

#[cfg(feature = "redis")]
mod with_redis {
    use std::time::Duration;

    use super::start;
    use crate::example_util;
    use crate::redis_util::RedisServer;
    use syncmux::payload::{ChangeRecord, Hlc, PullRequest, RawJson, Subscribe};
    use syncmux::{ClientConfig, ClientEvent};
    use syncmux_runtime as adapters;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_servers_on_one_redis_serve_one_log() {
        let Some(redis) = RedisServer::start() else {
            return;
        };
        two_servers_serve_one_log(&redis.url()).await;
    }

    /// `--redis redis+sentinel://...`: the servers find the primary through the Sentinels.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_servers_on_a_sentinel_deployment_serve_one_log() {
        let Some(sentinels) = crate::redis_util::Sentinels::start() else {
            return;
        };
        two_servers_serve_one_log(&sentinels.url()).await;
    }

    /// `--redis redis+cluster://...`: the servers share a log on a three-primary Cluster.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_servers_on_a_redis_cluster_serve_one_log() {
        let Some(cluster) = crate::redis_util::Cluster::start() else {
            return;
        };
        two_servers_serve_one_log(&cluster.url()).await;
    }

    /// Two `syncmux-server`s with `--redis url`: a change pushed to one reaches a subscriber
    /// of the other.
    async fn two_servers_serve_one_log(url: &str) {
        let args = ["--redis", url, "--redis-prefix", "example"];
        let (_a, a) = start(&args).unwrap();
        let (_b, b) = start(&args).unwrap();
        let (reader, mut events) =
            adapters::Tokio::connect(ClientConfig::new(&b, "reader")).unwrap();
        reader.subscribe(Subscribe::new(["docs"])).await.unwrap();
        let (writer, _w) = adapters::Tokio::connect(ClientConfig::new(&a, "writer")).unwrap();
        let record = ChangeRecord::new("docs", "1", "t", "lww", Hlc::new(5, 0, "writer"), "writer")
            .with_value(RawJson::from_serialize("hello").unwrap());
        let pushed = writer.push(vec![record.clone()]).await.unwrap();
        let changes = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Some(ClientEvent::Changes {
                    changes, cursor, ..
                }) = events.recv().await
                {
                    return (changes, cursor);
                }
            }
        })
        .await
        .expect("the change crossed servers");
        assert_eq!(changes, (vec![record], pushed.cursor));
    }

    /// `rediss://`: TLS to Redis, trusting the system's roots or those of `SSL_CERT_FILE`
    /// (here the test's self-signed certificate): two servers serve one log over it, and a
    /// server that does not trust the certificate does not start.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_servers_share_a_log_over_rediss() {
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let cert = rcgen::generate_simple_self_signed(names).unwrap();
        let (pem, key) = (cert.cert.pem(), cert.signing_key.serialize_pem());
        let Some(redis) = RedisServer::start_tls(&pem, &key) else {
            return;
        };
        let url = redis.url();
        assert!(url.starts_with("rediss://"), "{url}");
        let ca = std::env::temp_dir().join(format!("syncmux-rediss-{}.pem", std::process::id()));
        std::fs::write(&ca, &pem).unwrap();
        let trust = [("SSL_CERT_FILE", ca.to_str().unwrap())];
        let args = ["--redis", &url, "--redis-prefix", "tls"];
        let (_a, a) = example_util::start_server_with(&args, "listening on ", &trust).unwrap();
        let (_b, b) = example_util::start_server_with(&args, "listening on ", &trust).unwrap();
        let (writer, _w) = adapters::Tokio::connect(ClientConfig::new(&a, "writer")).unwrap();
        let record = ChangeRecord::new("docs", "1", "t", "lww", Hlc::new(5, 0, "writer"), "writer")
            .with_value(RawJson::from_serialize("over TLS").unwrap());
        writer.push(vec![record.clone()]).await.unwrap();
        let (reader, _r) = adapters::Tokio::connect(ClientConfig::new(&b, "reader")).unwrap();
        let pulled = reader.pull(PullRequest::new(["docs"])).await.unwrap();
        assert_eq!(
            pulled.changes,
            vec![record],
            "the other server read it from Redis"
        );

        let untrusted = ca.with_extension("none.pem");
        std::fs::write(&untrusted, "").unwrap();
        let distrust = [("SSL_CERT_FILE", untrusted.to_str().unwrap())];
        let refused = example_util::start_server_with(&args, "listening on ", &distrust);
        let (status, stderr) = refused.err().expect("started without trusting Redis");
        assert_ne!(status, Some(0), "{stderr}");
        assert!(stderr.contains("cannot reach Redis"), "{stderr}");
        let _ = std::fs::remove_file(ca);
        let _ = std::fs::remove_file(untrusted);
    }

    /// `--redis-min-replicas 1`: a push is acknowledged once a replica holds it; while the
    /// replica is stopped, a push answers `UNAVAILABLE`, and once it is back pushes are
    /// acknowledged again. Asking for more replicas than there are is `UNAVAILABLE` at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_min_replicas_a_push_is_acked_once_a_replica_holds_it() {
        use syncmux::{ErrorCode, RequestError};

        let Some(primary) = RedisServer::start() else {
            return;
        };
        let replica = RedisServer::start_replica_of(&primary).unwrap();
        let linked = tokio::time::timeout(Duration::from_secs(30), async {
            while primary.replicas() == 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        linked.await.expect("the replica came online");
        let url = primary.url();
        let (_one, one) = start(&["--redis", &url, "--redis-min-replicas", "1"]).unwrap();
        let (_two, two) = start(&["--redis", &url, "--redis-min-replicas", "2"]).unwrap();
        let record = |pk: &str, ts: i64| {
            ChangeRecord::new("docs", pk, "t", "lww", Hlc::new(ts, 0, "w"), "w")
                .with_value(RawJson::from_serialize("v").unwrap())
        };
        let unavailable = |result: Result<_, RequestError>| match result {
            Err(RequestError::Server { code, .. }) => code == ErrorCode::Unavailable,
            _ => false,
        };
        let (writer, _w) = adapters::Tokio::connect(ClientConfig::new(&one, "w")).unwrap();
        writer.push(vec![record("1", 1)]).await.expect("replicated");
        replica.signal("STOP");
        let refused = writer.push(vec![record("2", 2)]).await;
        replica.signal("CONT");
        assert!(unavailable(refused.clone()), "{refused:?}");
        writer
            .push(vec![record("3", 3)])
            .await
            .expect("replicated again");
        let (greedy, _g) = adapters::Tokio::connect(ClientConfig::new(&two, "w")).unwrap();
        let refused = greedy.push(vec![record("4", 4)]).await;
        assert!(
            unavailable(refused.clone()),
            "two replicas wanted: {refused:?}"
        );
    }

    /// A server killed with SIGKILL: its sessions' presence and room places are given back
    /// on every other server once its heartbeat is overdue (10 s by default).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_killed_servers_members_leave_everywhere_and_free_their_places() {
        use syncmux::payload::PresenceEventKind;
        use syncmux::{ErrorCode, RequestError};

        let Some(redis) = RedisServer::start() else {
            return;
        };
        let url = redis.url();
        let args = ["--redis", &url, "--redis-prefix", "kill", "--room-max", "1"];
        let (mut a_process, a) = start(&args).unwrap();
        let (_b_process, b) = start(&args).unwrap();
        let (alice, _alice_events) =
            adapters::Tokio::connect(ClientConfig::new(&a, "alice")).unwrap();
        let (bob, mut bob_events) = adapters::Tokio::connect(ClientConfig::new(&b, "bob")).unwrap();
        bob.update_presence("doc", RawJson::from_serialize(&1).unwrap())
            .await
            .unwrap();
        alice
            .update_presence("doc", RawJson::from_serialize(&2).unwrap())
            .await
            .unwrap();
        alice.join_room("lobby", None).await.unwrap();
        // The room of one is full for bob, on the other server.
        let full = bob.join_room("lobby", None).await.unwrap_err();
        assert!(
            matches!(
                &full,
                RequestError::Server {
                    code: ErrorCode::RoomFull,
                    ..
                }
            ),
            "{full:?}"
        );
        a_process.0.kill().unwrap();
        a_process.0.wait().unwrap();
        let left = tokio::time::timeout(Duration::from_secs(40), async {
            loop {
                if let Some(ClientEvent::Presence(e)) = bob_events.recv().await {
                    if e.kind == PresenceEventKind::Leave && e.node_id == "alice" {
                        return;
                    }
                }
            }
        })
        .await;
        assert!(left.is_ok(), "alice never left bob's topic");
        // Her place in the room is free again, over every server.
        bob.join_room("lobby", None).await.unwrap();
        let snapshot = bob.get_presence("doc").await.unwrap();
        let nodes: Vec<&str> = snapshot.states.iter().map(|s| s.node_id.as_str()).collect();
        assert_eq!(nodes, ["bob"]);
    }

    #[test]
    fn an_unreachable_redis_stops_the_start_up_with_a_clear_error() {
        let Some(redis) = RedisServer::start() else {
            return;
        };
        let url = redis.url();
        drop(redis);
        let Err((code, stderr)) = start(&["--redis", &url]) else {
            panic!("started without Redis");
        };
        assert_eq!(code, Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("cannot reach Redis at {url}")),
            "{stderr}"
        );
    }
}

/// A server built without the `redis` feature refuses `--redis` instead of ignoring it.
#[cfg(not(feature = "redis"))]
#[test]
fn without_the_feature_redis_is_refused() {
    let Err((code, stderr)) = start(&["--redis", "redis://127.0.0.1:1"]) else {
        panic!("started");
    };
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("--features redis"), "{stderr}");
}
