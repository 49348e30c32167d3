//! Gapless resume with server cursors over real sockets: the tokio runtime, a server with a
//! `MemoryStore` on port 0, and a TCP proxy in front of the subscriber that the test cuts and
//! holds shut while old-HLC changes are pushed. The same scenario over the in-memory
//! simulation is the core's `cursor_resume` test.

#![cfg(feature = "tokio")]
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use syncmux::payload::ChangeRecord;

fn change(pk: u64, node: &str, ts: i64) -> ChangeRecord {
    crate::sim::change("docs", pk, node, ts)
}

fn once(pks: &[u64]) -> BTreeMap<String, usize> {
    pks.iter().map(|pk| (pk.to_string(), 1)).collect()
}

/// The scenario over real sockets: the tokio adapters, an example-style server (a `Driver`
/// with a `MemoryStore`) on port 0, and a TCP proxy in front of the subscriber that the test
/// cuts and holds shut while the old-HLC changes are pushed.
mod sockets {
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use futures_util::StreamExt;
    use syncmux::payload::{ChangeRecord, Cursor, PullRequest, Subscribe};
    use syncmux::ClientEvent;
    use syncmux::Driver;
    use syncmux::{ClientConfig, Server, ServerConfig};
    use syncmux::{MemoryStore, StoreConfig};
    use syncmux_runtime::{self as adapters, ClientEvents, ServerOptions};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::AbortHandle;

    use super::{change, once};

    /// A failure bound, not a timing assertion: a lost wake-up fails instead of hanging.
    const GUARD: Duration = Duration::from_secs(20);

    #[derive(Default)]
    struct Gate {
        shut: bool,
        links: Vec<AbortHandle>,
    }

    /// Forwards TCP connections to `upstream` while open; `cut` drops every connection and
    /// refuses new ones (accepted, then dropped at once) until `open`.
    struct Proxy {
        addr: SocketAddr,
        gate: Arc<Mutex<Gate>>,
    }

    impl Proxy {
        async fn start(upstream: SocketAddr) -> Proxy {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let gate = Arc::new(Mutex::new(Gate::default()));
            let shared = gate.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        return;
                    };
                    let mut gate = shared.lock().unwrap();
                    if gate.shut {
                        continue; // dropped: the dial fails
                    }
                    let link = tokio::spawn(async move {
                        let mut outbound = TcpStream::connect(upstream).await.unwrap();
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    });
                    gate.links.push(link.abort_handle());
                }
            });
            Proxy { addr, gate }
        }

        fn cut(&self) {
            let mut gate = self.gate.lock().unwrap();
            gate.shut = true;
            gate.links.drain(..).for_each(|link| link.abort());
        }

        fn open(&self) {
            self.gate.lock().unwrap().shut = false;
        }
    }

    fn client_config(addr: SocketAddr, node: &str, with_cursor: bool) -> ClientConfig {
        let mut config = ClientConfig::new(format!("ws://{addr}/sync"), node);
        config.reconnect_delay = Duration::from_millis(20);
        config.max_reconnect_delay = Duration::from_millis(100);
        config.resume_with_cursor = with_cursor;
        config
    }

    /// Events until `pick` accepts one; the changes among them are appended to `got`.
    async fn until(
        events: &mut ClientEvents,
        got: &mut Vec<ChangeRecord>,
        mut pick: impl FnMut(&ClientEvent, &[ChangeRecord]) -> bool,
    ) {
        loop {
            let event = events.next().await.expect("client task ended");
            if let ClientEvent::Changes { changes, .. } = &event {
                got.extend(changes.iter().cloned());
            }
            assert!(
                !matches!(event, ClientEvent::ResyncNeeded { .. }),
                "same store, no resync"
            );
            if pick(&event, got) {
                return;
            }
        }
    }

    async fn scenario(with_cursor: bool) -> Vec<ChangeRecord> {
        let mut store = StoreConfig::default();
        store.epoch = 3;
        let server = Server::new(ServerConfig::default()).unwrap();
        let driver = Driver::new(server, MemoryStore::new(store));
        let server = adapters::Tokio::start(driver, ServerOptions::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let direct = listener.local_addr().unwrap();
        tokio::spawn(adapters::Tokio::serve(server.clone(), listener, None));
        let proxy = Proxy::start(direct).await;

        let (writer, _writer_events) =
            adapters::Tokio::connect(client_config(direct, "writer", true)).unwrap();
        let (sub, mut events) =
            adapters::Tokio::connect(client_config(proxy.addr, "sub", with_cursor)).unwrap();
        let ack = sub
            .subscribe(Subscribe::new(["docs"]))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ack.cursor, Cursor::new(3, 0));
        let mut got = Vec::new();
        writer
            .push(vec![change(1, "writer", 1_000), change(2, "writer", 2_000)])
            .await
            .unwrap();
        until(&mut events, &mut got, |_, got| got.len() == 2).await;
        // The position an application would keep: the head after the first batch.
        let kept = sub
            .pull(PullRequest::new(["docs"]))
            .await
            .unwrap()
            .cursor
            .unwrap();
        assert_eq!(kept, Cursor::new(3, 2));

        proxy.cut();
        until(&mut events, &mut got, |e, _| {
            matches!(e, ClientEvent::Disconnected { .. })
        })
        .await;
        let late = vec![
            change(3, "offline", 500),
            change(4, "writer", 3_000),
            change(5, "offline", 1_500),
        ];
        assert_eq!(writer.push(late).await.unwrap().merged, 3);
        proxy.open();
        until(&mut events, &mut got, |e, _| {
            matches!(e, ClientEvent::Connected)
        })
        .await;
        // A marker pushed after the resume: once it arrives, the replay is in (the server
        // queues a replay ahead of live changes; if the marker beat the resubscribe, the
        // replay holds it).
        writer.push(vec![change(6, "writer", 9_000)]).await.unwrap();
        until(&mut events, &mut got, |_, got| {
            got.last().is_some_and(|c| c.pk == "6")
        })
        .await;
        app_resumes_after(direct, kept).await;
        sub.close().await;
        writer.close().await;
        server.shutdown();
        got
    }

    /// Through the adapter's handle, an application resumes from a cursor it kept: a pull
    /// after it and a subscribe after it give exactly what came later, old HLCs included.
    async fn app_resumes_after(addr: SocketAddr, kept: Cursor) {
        let (app, mut events) = adapters::Tokio::connect(client_config(addr, "app", true)).unwrap();
        let pulled = app
            .pull(PullRequest::new(["docs"]).after(kept))
            .await
            .unwrap();
        let pks: Vec<&str> = pulled.changes.iter().map(|c| c.pk.as_str()).collect();
        assert_eq!(pks, ["3", "4", "5", "6"]);
        assert_eq!(pulled.cursor, Some(Cursor::new(3, 6)));
        let ack = app
            .subscribe(Subscribe::new(["docs"]).after(kept))
            .await
            .unwrap()
            .unwrap();
        assert!(ack.recovered);
        assert_eq!(ack.cursor, Cursor::new(3, 6));
        let mut got = Vec::new();
        until(&mut events, &mut got, |_, got| got.len() >= 4).await;
        assert_eq!(counts(&got), once(&[3, 4, 5, 6]));
        app.close().await;
    }

    fn counts(got: &[ChangeRecord]) -> std::collections::BTreeMap<String, usize> {
        let mut seen = std::collections::BTreeMap::new();
        for c in got {
            *seen.entry(c.pk.clone()).or_insert(0) += 1;
        }
        seen
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn resume_after_cursor_over_sockets_gets_every_change_once() {
        let got = tokio::time::timeout(GUARD, scenario(true))
            .await
            .expect("test timed out");
        assert_eq!(counts(&got), once(&[1, 2, 3, 4, 5, 6]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn resume_by_since_alone_over_sockets_loses_old_hlc_changes() {
        let got = tokio::time::timeout(GUARD, scenario(false))
            .await
            .expect("test timed out");
        assert_eq!(counts(&got), once(&[1, 2, 4, 6]));
    }
}
