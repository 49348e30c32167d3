//! The OT profile's documents in Redis (README, "The OT profile"): many servers serve the
//! same documents, and their clients converge.
//!
//! # Layout
//!
//! The open-ot Redis adapter's, under [`RedisOtConfig::prefix`] (empty by default: the
//! exact keys of open-ot; `syncmux-server` uses `{PREFIX}:`, its sync log's hash tag):
//! `{prefix}doc:ID:metadata` (a hash: `type` = `text`, `v` = the head revision),
//! `{prefix}doc:ID:data` (the text at `v`, as a JSON string), `{prefix}doc:ID:history` (a
//! list of JSON ops, item `i` made revision `i + 1`). Each applied op is published on the
//! channel `{prefix}doc:ID` as the seed does: `{"type":"op","op":[...],"revision":V}`, plus
//! `docId` for documents other than `doc-1` and `origin`, the publishing server.
//!
//! # The seam
//!
//! The [`OtServer`](syncmux::ot::OtServer) state machine stays sans-IO: with
//! [`OtServerConfig::shared_history`](syncmux::ot::OtServerConfig::shared_history) it asks
//! for commits and reads ([`OtServerEvent`]) and is answered later, as the sync server's
//! backend is; [`RedisOt::run`] does the asking. A commit is one Lua script
//! (`ot_commit.lua`) that appends only at the expected revision, sets the snapshot and
//! publishes the op, all in one step, so the channel carries a document's ops in revision
//! order. When another server appended first, the script answers with the ops since and the
//! snapshot; the op is transformed against them (it on side `right`, as open-ot's server
//! does), checked against that text, and tried again at the new head.
//!
//! # Nothing lost
//!
//! Pub/Sub delivers at most once. A server that sees a revision gap on the channel reads the
//! missing ops from the history list ([`OtServerEvent::Fetch`]); every
//! [`RedisOtConfig::poll`] it compares each document's `v` with its copy (a message lost at
//! the tail), and after its subscription comes back it does so at once. A client is acked
//! only once its op is in Redis: a server killed after the ack loses nothing.
//!
//! A server subscribes to the channels of the documents it serves, and only to those: a
//! node gets the traffic of its own documents, not of every document of the cluster. A
//! document's channel is subscribed to before its snapshot is read, so every op appended
//! after the snapshot's revision comes on the channel (one appended in between comes both
//! ways, and is applied once).
//!
//! # Failover
//!
//! Through a Sentinel failover (`redis+sentinel://`) the connections and the channels move to
//! the new primary. If it lacks revisions a copy has (replication is asynchronous; with
//! [`RedisOtConfig::min_replicas`] none of them was acknowledged), the copy is ahead of the
//! history for good: a commit whose base is past the head, or a poll that reads a head below
//! the copy's revision (taken before the read: every revision of a copy was in the history
//! before), makes the state machine drop the copy and close its members with 4503
//! ([`OtServer::handle_history_lost`](syncmux::ot::OtServer::handle_history_lost)); their
//! clients load the document again.

use core::time::Duration;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::conn::{Conn, Target};
use futures_util::StreamExt;
use redis::{AsyncCommands, RedisError, Script, Value};
use serde::Deserialize;

use crate::{Clock, RedisBackendError};
use syncmux::ot::{OtCommitId, OtServer, OtServerEvent, Side, TextOp};
use syncmux_runtime::OtServerHandle;

/// Configuration of [`RedisOt`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisOtConfig {
    /// The server: `redis://HOST:PORT[/DB]`, or `rediss://` for TLS (as
    /// [`RedisConfig::url`](crate::RedisConfig::url)).
    pub url: String,
    /// What every key and channel starts with (module docs). Default empty: open-ot's
    /// layout exactly. Servers sharing documents use the same prefix.
    pub prefix: String,
    /// How long a request may wait for Redis. Default 5 s.
    pub request_timeout: Duration,
    /// How often each document's head is compared with this server's copy. Default 1 s.
    pub poll: Duration,
    /// Tries of a commit that keeps finding the head moved (others appending); past them
    /// the op's sender gets an error frame and its client fetches a snapshot. Default 64.
    pub max_attempts: u32,
    /// Replicas that must hold a commit before its op is acknowledged (Redis's `WAIT`), as
    /// [`RedisConfig::min_replicas`](crate::RedisConfig::min_replicas): one they do not
    /// confirm within [`replica_timeout`](Self::replica_timeout) still stands (the document
    /// has it, every client gets it), but its sender gets an error frame instead of the ack,
    /// and its client fetches a snapshot. Default 0.
    pub min_replicas: usize,
    /// How long a commit waits for [`min_replicas`](Self::min_replicas). Default 1 s.
    pub replica_timeout: Duration,
}

impl RedisOtConfig {
    /// The defaults, for the Redis at `url`.
    pub fn new(url: impl Into<String>) -> RedisOtConfig {
        RedisOtConfig {
            url: url.into(),
            prefix: String::new(),
            request_timeout: Duration::from_secs(5),
            poll: Duration::from_secs(1),
            max_attempts: 64,
            min_replicas: 0,
            replica_timeout: Duration::from_secs(1),
        }
    }
}

/// The OT documents' shared history in Redis (module docs). Cheap to clone.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use syncmux_redis::{RedisOt, RedisOtConfig};
/// use syncmux_runtime::{self as adapters, ServerOptions};
/// use syncmux::ot::{OtServer, OtServerConfig};
///
/// let redis = RedisOt::connect(RedisOtConfig::new("redis://127.0.0.1:6379")).await?;
/// let mut config = OtServerConfig::default();
/// config.shared_history = true;
/// let server = adapters::Tokio::start_ot(OtServer::new(config)?, ServerOptions::default());
/// tokio::spawn(redis.run(server.clone()));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// adapters::Tokio::serve(server, listener, None).await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisOt {
    inner: Arc<Inner>,
}

impl core::fmt::Debug for RedisOt {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RedisOt")
            .field("config", &self.inner.config)
            .field("instance", &self.inner.instance)
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: RedisOtConfig,
    target: Arc<Target>,
    conn: Conn,
    /// Commits: `conn`, or with [`RedisOtConfig::min_replicas`] a connection of their own
    /// (`WAIT` follows its connection's writes, and holds it while it waits).
    commits: Conn,
    commit: Script,
    /// This server's name in the frames it publishes, random per start.
    instance: String,
    /// Per document, what this server last committed or read of the shared history; its
    /// lock also makes one server's commits to one document go one at a time.
    known: Mutex<HashMap<Arc<str>, Arc<tokio::sync::Mutex<Known>>>>,
}

/// The newest part of a document's shared history this server has seen: its head, the text
/// there, and the ops just before it (consecutive revisions, at most [`RECENT`]). A commit
/// made on an older revision is rebased onto them here, without asking Redis, so that one
/// server's concurrent commits to a document do not keep colliding in the script.
#[derive(Default)]
struct Known {
    head: u64,
    text: String,
    recent: VecDeque<(u64, TextOp)>,
}

/// Ops kept per document in [`Known`].
const RECENT: usize = 256;

impl Known {
    /// Whether every op after `base` up to the head is kept.
    fn covers(&self, base: u64) -> bool {
        self.head > base && self.recent.front().is_some_and(|(r, _)| *r <= base + 1)
    }

    /// Revision `revision` is `op`, making `text`.
    fn push(&mut self, revision: u64, op: TextOp) {
        if revision != self.head + 1 {
            self.recent.clear();
        }
        self.recent.push_back((revision, op));
        if self.recent.len() > RECENT {
            self.recent.pop_front();
        }
        self.head = revision;
    }
}

/// A message of the channel.
#[derive(Deserialize)]
struct Published {
    op: serde_json::Value,
    revision: u64,
    #[serde(default)]
    origin: Option<String>,
}

impl RedisOt {
    /// Connects to Redis. Fails when Redis cannot be reached.
    pub async fn connect(config: RedisOtConfig) -> Result<RedisOt, RedisBackendError> {
        let url = config.url.clone();
        let (target, mut conn) = crate::conn::open(&url, config.request_timeout).await?;
        let pong: Result<String, RedisError> = redis::cmd("PING").query_async(&mut conn).await;
        pong.map_err(|source| RedisBackendError::Connect {
            url: url.clone(),
            source,
        })?;
        let commits = match config.min_replicas {
            0 => conn.clone(),
            _ => crate::conn::open(&url, config.request_timeout).await?.1,
        };
        Ok(RedisOt {
            inner: Arc::new(Inner {
                target,
                conn,
                commits,
                commit: Script::new(include_str!("ot_commit.lua")),
                instance: format!("{:016x}", Clock::new().seed()),
                known: Mutex::default(),
                config,
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RedisOtConfig {
        &self.inner.config
    }

    /// The key of a document's `part` (`metadata`, `data` or `history`). On a Redis Cluster
    /// the document's id is its keys' hash tag (`doc:{ID}:metadata`: a document's keys share
    /// a slot, the documents spread over the nodes), and the prefix loses any braces of its
    /// own, which would put every document in one slot.
    pub fn key(&self, doc: &str, part: &str) -> String {
        let prefix = &self.inner.config.prefix;
        if self.inner.target.is_cluster() {
            let prefix = prefix.replace(['{', '}'], "");
            return format!("{prefix}doc:{{{doc}}}:{part}");
        }
        format!("{prefix}doc:{doc}:{part}")
    }

    /// The channel a document's ops are published on.
    pub fn channel(&self, doc: &str) -> String {
        format!("{}doc:{doc}", self.inner.config.prefix)
    }

    /// Serves `server`'s shared history (its config must have `shared_history`) until the
    /// server shuts down: commits, reads, the subscription and the polls (module docs).
    /// Takes the server's shared-history events at once, before the future is polled, so
    /// that no op of a connection accepted meanwhile goes unanswered.
    pub fn run(self, server: OtServerHandle) -> impl core::future::Future<Output = ()> + Send {
        let events = server.shared_events();
        self.serve(server, events)
    }

    async fn serve(self, server: OtServerHandle, events: async_channel::Receiver<OtServerEvent>) {
        let docs: Arc<Mutex<BTreeSet<Arc<str>>>> = Arc::default();
        let (follow, follows) = async_channel::unbounded();
        let stop = {
            let server = server.clone();
            async move { server.stopped().await }
        };
        let work = async {
            tokio::spawn(
                self.clone()
                    .subscribe(server.clone(), docs.clone(), follows),
            );
            tokio::spawn(self.clone().poll(server.clone(), docs.clone()));
            self.hold(&server, &docs, &follow, Arc::from(OtServer::DEFAULT_DOC_ID));
            while let Ok(event) = events.recv().await {
                let (me, server) = (self.clone(), server.clone());
                match event {
                    OtServerEvent::Commit {
                        commit,
                        doc,
                        base,
                        op,
                        text,
                    } => {
                        tokio::spawn(me.commit(server, commit, doc, base, op, text));
                    }
                    OtServerEvent::Fetch { doc, from, to } => {
                        tokio::spawn(me.fetch(server, doc, from, to));
                    }
                    OtServerEvent::Load { doc } | OtServerEvent::DocumentCreated { doc } => {
                        me.hold(&server, &docs, &follow, doc);
                    }
                    OtServerEvent::DocumentDropped { doc } => me.release(&docs, &follow, doc),
                    _ => {}
                }
            }
        };
        futures_util::future::select(Box::pin(stop), Box::pin(work)).await;
    }

    /// A document this server now serves: its channel is subscribed to, then its snapshot
    /// read (module docs). A subscription that takes longer than
    /// [`RedisOtConfig::request_timeout`] (Pub/Sub down) does not hold the read up: the
    /// heads compared once it is back find what the channel missed.
    fn hold(
        &self,
        server: &OtServerHandle,
        docs: &Mutex<BTreeSet<Arc<str>>>,
        follow: &async_channel::Sender<Follow>,
        doc: Arc<str>,
    ) {
        let (done, subscribed) = futures_channel::oneshot::channel();
        let new = docs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(doc.clone());
        if new {
            let _ = follow.try_send(Follow::Subscribe {
                doc: doc.clone(),
                done,
            });
        }
        let (me, server) = (self.clone(), server.clone());
        let wait = self.inner.config.request_timeout;
        tokio::spawn(async move {
            if new {
                let _ = tokio::time::timeout(wait, subscribed).await;
            }
            me.load(server, doc).await;
        });
    }

    /// A document this server no longer serves (its copy was dropped): its channel is left,
    /// and what was known of its history forgotten.
    fn release(
        &self,
        docs: &Mutex<BTreeSet<Arc<str>>>,
        follow: &async_channel::Sender<Follow>,
        doc: Arc<str>,
    ) {
        docs.lock().unwrap_or_else(|e| e.into_inner()).remove(&doc);
        self.inner
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&doc);
        let _ = follow.try_send(Follow::Unsubscribe { doc });
    }

    /// Appends an op (module docs) and answers the state machine.
    async fn commit(
        self,
        server: OtServerHandle,
        commit: OtCommitId,
        doc: Arc<str>,
        base: u64,
        op: Arc<TextOp>,
        text: String,
    ) {
        // One connection for the commit and its `WAIT` (`Conn::pin`).
        let mut lost = false;
        let (outcome, unconfirmed) = match self.inner.commits.pin().await {
            Ok(mut conn) => {
                let outcome = match self
                    .append(&mut conn, &doc, base, (*op).clone(), text)
                    .await
                {
                    Ok(appended) => Ok(appended),
                    Err(Failed::Refused(why)) => Err(why),
                    Err(Failed::Lost) => {
                        lost = true;
                        Err("The shared history lost revisions: load the document again".to_owned())
                    }
                };
                let unconfirmed = match &outcome {
                    Ok(_) => {
                        let config = &self.inner.config;
                        let meta = self.key(&doc, "metadata");
                        crate::replicated(
                            &mut conn,
                            &meta,
                            config.min_replicas,
                            config.replica_timeout,
                        )
                        .await
                        .err()
                    }
                    Err(_) => None,
                };
                (outcome, unconfirmed)
            }
            Err(e) => (Err(unavailable(&e)), None),
        };
        server.with_server(|s, now| match (outcome, unconfirmed) {
            (Ok((revision, op)), Some(why)) => {
                // The op stands, but its sender must not count on it: it is told first (its
                // client stops applying ops and fetches the document, op included), then the
                // document takes the op as another server's, for every other client.
                let refused = Err(format!("{why}: fetch the document"));
                s.handle_committed(now, commit, refused);
                s.handle_remote_op(now, &doc, revision, op);
            }
            (outcome, _) => {
                s.handle_committed(now, commit, outcome);
                if lost {
                    // The copy is ahead of the history (a failover lost the newest
                    // revisions): its clients load the document again.
                    let closed = s.handle_history_lost(now, &doc);
                    tracing::warn!(doc = %doc, closed, "the shared history lost revisions this server had");
                }
            }
        });
    }

    /// The Lua step, retried at the new head while others append first.
    async fn append(
        &self,
        conn: &mut Conn,
        doc: &str,
        mut base: u64,
        mut op: TextOp,
        mut text: String,
    ) -> Result<(u64, TextOp), Failed> {
        let mut tail = String::new();
        if doc != OtServer::DEFAULT_DOC_ID {
            tail.push_str(",\"docId\":");
            tail.push_str(&json_string(doc));
        }
        tail.push_str(",\"origin\":");
        tail.push_str(&json_string(&self.inner.instance));
        tail.push('}');
        let (meta, data, history) = (
            self.key(doc, "metadata"),
            self.key(doc, "data"),
            self.key(doc, "history"),
        );
        let channel = self.channel(doc);
        let cell = {
            let mut known = self.inner.known.lock().unwrap_or_else(|e| e.into_inner());
            known.entry(Arc::from(doc)).or_default().clone()
        };
        let mut known = cell.lock().await;
        if known.covers(base) {
            for (_, logged) in known.recent.iter().filter(|(r, _)| *r > base) {
                op = op.transform(logged, Side::Right);
            }
            text = op.apply(&known.text).map_err(|e| e.to_string())?;
            base = known.head;
        }
        for _ in 0..self.inner.config.max_attempts.max(1) {
            let reply: Value = self
                .inner
                .commit
                .key(&meta)
                .key(&data)
                .key(&history)
                .arg(base)
                .arg(op.to_json())
                .arg(json_string(&text))
                .arg(&channel)
                .arg(&tail)
                .invoke_async(conn)
                .await
                .map_err(|e| unavailable(&e))?;
            let Value::Array(items) = reply else {
                return Err(invalid("commit").into());
            };
            let mut items = items.into_iter();
            match (items.next().and_then(int), items.next().and_then(int)) {
                (Some(1), Some(revision)) => {
                    let revision = revision.unsigned_abs();
                    known.push(revision, op.clone());
                    known.text = text;
                    return Ok((revision, op));
                }
                (Some(0), Some(head)) => {
                    let ops = items.next().map(strings).unwrap_or_default();
                    let snapshot = items
                        .next()
                        .and_then(|v| strings(Value::Array(vec![v])).pop());
                    let snapshot: String = snapshot
                        .and_then(|s| serde_json::from_str(&s).ok())
                        .ok_or_else(|| invalid("snapshot"))?;
                    if base != known.head {
                        known.recent.clear();
                        known.head = base;
                    }
                    for (revision, logged) in (base + 1..).zip(ops) {
                        let logged = parse_op(&logged).ok_or_else(|| invalid("history"))?;
                        op = op.transform(&logged, Side::Right);
                        known.push(revision, logged);
                    }
                    let head = head.unsigned_abs();
                    if known.head != head {
                        // The list and `v` disagree: start again from the head alone.
                        known.recent.clear();
                        known.head = head;
                    }
                    text = op.apply(&snapshot).map_err(|e| e.to_string())?;
                    known.text = snapshot;
                    base = head;
                }
                (Some(-1), _) => return Err(Failed::Lost),
                _ => return Err(invalid("commit").into()),
            }
        }
        Err(Failed::Refused(
            "Too many concurrent operations on this document: retry".to_owned(),
        ))
    }

    /// Reads revisions `from..=to` of the history into the state machine (a snapshot if the
    /// list does not hold them all).
    async fn fetch(self, server: OtServerHandle, doc: Arc<str>, from: u64, to: u64) {
        if from == 0 || to < from {
            return;
        }
        let mut conn = self.inner.conn.clone();
        let read: Result<Vec<String>, RedisError> = redis::cmd("LRANGE")
            .arg(self.key(&doc, "history"))
            .arg(from - 1)
            .arg(to - 1)
            .query_async(&mut conn)
            .await;
        match read {
            Ok(ops) if ops.len() as u64 == to - from + 1 => {
                let ops: Option<Vec<TextOp>> = ops.iter().map(|o| parse_op(o)).collect();
                let Some(ops) = ops else {
                    tracing::error!(%doc, "an op of the shared history does not parse");
                    return;
                };
                server.with_server(|s, now| {
                    for (revision, op) in (from..).zip(ops) {
                        s.handle_remote_op(now, &doc, revision, op);
                    }
                });
            }
            Ok(_) => self.load(server, doc).await,
            Err(e) => tracing::warn!(error = %e, %doc, "reading the shared history failed"),
        }
    }

    /// Reads a document's snapshot into the state machine, trying again with backoff while
    /// Redis fails (a document waits for its first snapshot: its snapshot requests are
    /// answered with it) until the server stops.
    async fn load(self, server: OtServerHandle, doc: Arc<str>) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let mut conn = self.inner.conn.clone();
            let read: Result<(Option<u64>, Option<String>), RedisError> = redis::pipe()
                .atomic()
                .hget(self.key(&doc, "metadata"), "v")
                .get(self.key(&doc, "data"))
                .query_async(&mut conn)
                .await;
            match read {
                Ok((v, data)) => {
                    let text = data
                        .and_then(|d| serde_json::from_str::<String>(&d).ok())
                        .unwrap_or_default();
                    let v = v.unwrap_or(0);
                    server.with_server(|s, now| s.handle_remote_snapshot(now, &doc, v, text));
                    return;
                }
                Err(e) => tracing::warn!(error = %e, %doc, "reading a shared snapshot failed"),
            }
            let stop = Box::pin(server.stopped());
            let wait = Box::pin(tokio::time::sleep(backoff));
            if let futures_util::future::Either::Left(_) =
                futures_util::future::select(stop, wait).await
            {
                return;
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Compares every document's head with the state machine's copy.
    async fn heads(&self, server: &OtServerHandle, docs: &Mutex<BTreeSet<Arc<str>>>) {
        let docs: Vec<Arc<str>> = docs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        if docs.is_empty() {
            return;
        }
        // The copies' revisions before the heads are read: every one of them was in the
        // history before the read, so a head read below one means the history lost it.
        let copies: Vec<Option<u64>> = server.with_server(|s, _| {
            let revision = |doc: &Arc<str>| s.document(doc).map(|d| d.revision());
            docs.iter().map(revision).collect()
        });
        // One request per document, all at once (the multiplexed connection pipelines them):
        // a pipeline of keys in different slots is refused by a cluster.
        let reads = docs.iter().map(|doc| {
            let mut conn = self.inner.conn.clone();
            let key = self.key(doc, "metadata");
            async move { conn.hget::<_, _, Option<u64>>(key, "v").await }
        });
        let heads: Result<Vec<Option<u64>>, RedisError> = futures_util::future::join_all(reads)
            .await
            .into_iter()
            .collect();
        match heads {
            Ok(heads) => server.with_server(|s, now| {
                for ((doc, head), copy) in docs.iter().zip(heads).zip(copies) {
                    let head = head.unwrap_or(0);
                    if copy.is_some_and(|copy| head < copy) {
                        // A failover lost revisions this copy has (module docs).
                        let closed = s.handle_history_lost(now, doc);
                        tracing::warn!(doc = %doc, head, closed, "the shared history lost revisions this server had");
                        continue;
                    }
                    s.handle_remote_head(now, doc, head);
                }
            }),
            Err(e) => tracing::warn!(error = %e, "polling the shared documents failed"),
        }
    }

    async fn poll(self, server: OtServerHandle, docs: Arc<Mutex<BTreeSet<Arc<str>>>>) {
        let period = self.inner.config.poll;
        if period.is_zero() {
            return;
        }
        loop {
            let stop = Box::pin(server.stopped());
            let wait = Box::pin(tokio::time::sleep(period));
            if let futures_util::future::Either::Left(_) =
                futures_util::future::select(stop, wait).await
            {
                return;
            }
            self.heads(&server, &docs).await;
        }
    }

    /// Follows the channels of the documents held, reconnecting with backoff; after each
    /// (re)subscription the heads are compared at once: what was published while it was
    /// down, or before it for a document whose snapshot was read without waiting for it (a
    /// document still loading fetches what its snapshot lacks once it has it).
    async fn subscribe(
        self,
        server: OtServerHandle,
        docs: Arc<Mutex<BTreeSet<Arc<str>>>>,
        follows: async_channel::Receiver<Follow>,
    ) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let follow = async {
                let client = self.inner.target.primary().await?;
                let (mut sink, mut stream) = client.get_async_pubsub().await?.split();
                // Documents asked for (or dropped) while there was no subscription are in
                // `docs` (or not) already: subscribing to all of them answers them too.
                let asked: Vec<Follow> = core::iter::from_fn(|| follows.try_recv().ok()).collect();
                let channels: Vec<String> = docs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .map(|doc| self.channel(doc))
                    .collect();
                if !channels.is_empty() {
                    sink.subscribe(channels).await?;
                }
                for asked in asked {
                    if let Follow::Subscribe { done, .. } = asked {
                        let _ = done.send(());
                    }
                }
                backoff = Duration::from_millis(50);
                self.heads(&server, &docs).await;
                loop {
                    tokio::select! {
                        message = stream.next() => match message {
                            Some(message) => self.deliver(&server, &message),
                            None => return Ok::<(), RedisError>(()),
                        },
                        asked = follows.recv() => match asked {
                            Ok(Follow::Subscribe { doc, done }) => {
                                sink.subscribe(self.channel(&doc)).await?;
                                let _ = done.send(());
                            }
                            Ok(Follow::Unsubscribe { doc }) => {
                                sink.unsubscribe(self.channel(&doc)).await?;
                            }
                            // Closed: the server is shutting down.
                            Err(_) => return Ok(()),
                        },
                    }
                }
            };
            let stop = Box::pin(server.stopped());
            match futures_util::future::select(stop, Box::pin(follow)).await {
                futures_util::future::Either::Left(_) => return,
                futures_util::future::Either::Right((Err(e), _)) => {
                    tracing::warn!(error = %e, "the OT channels' subscription is lost: resubscribing");
                }
                futures_util::future::Either::Right((Ok(()), _)) => {}
            }
            if follows.is_closed() {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// A message on a document's channel: another server's op, into the state machine.
    fn deliver(&self, server: &OtServerHandle, message: &redis::Msg) {
        let channel = message.get_channel_name();
        let Some(doc) = channel
            .strip_prefix(self.inner.config.prefix.as_str())
            .and_then(|c| c.strip_prefix("doc:"))
        else {
            return;
        };
        let Ok(published) = serde_json::from_slice::<Published>(message.get_payload_bytes()) else {
            tracing::warn!(doc, "a foreign message on an OT channel: skipped");
            return;
        };
        // This server's own ops come with their commit's answer.
        if published.origin.as_deref() == Some(self.inner.instance.as_str()) {
            return;
        }
        let Ok(op) = TextOp::from_json(published.op) else {
            tracing::warn!(doc, "an invalid op on an OT channel: skipped");
            return;
        };
        server.with_server(|s, now| s.handle_remote_op(now, doc, published.revision, op));
    }
}

/// A change to the channels followed, in the order the documents came and went.
enum Follow {
    /// A document newly held: subscribe to its channel, then answer `done`.
    Subscribe {
        doc: Arc<str>,
        done: futures_channel::oneshot::Sender<()>,
    },
    /// A document dropped: leave its channel.
    Unsubscribe { doc: Arc<str> },
}

fn json_string(text: &str) -> String {
    // A string always serialises.
    serde_json::to_string(text).unwrap_or_default()
}

fn parse_op(json: &str) -> Option<TextOp> {
    TextOp::from_json(serde_json::from_str(json).ok()?).ok()
}

fn int(value: Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(n),
        _ => None,
    }
}

fn strings(value: Value) -> Vec<String> {
    match value {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|v| match v {
                Value::BulkString(b) => String::from_utf8(b).ok(),
                Value::SimpleString(s) => Some(s),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Why an op was not appended.
enum Failed {
    /// Refused (the error frame's message): the store failed, or the op does not fit.
    Refused(String),
    /// The history is shorter than the op's base, which this server had: the store lost
    /// revisions (a failover to a replica that lacked them).
    Lost,
}

impl From<String> for Failed {
    fn from(why: String) -> Failed {
        Failed::Refused(why)
    }
}

fn unavailable(e: &RedisError) -> String {
    tracing::warn!(error = %e, "an OT commit to Redis failed");
    "The shared store is unavailable: retry later".to_owned()
}

fn invalid(what: &str) -> String {
    tracing::error!(what, "unexpected answer from the OT script");
    "The shared store answered unexpectedly".to_owned()
}
