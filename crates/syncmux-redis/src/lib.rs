//! The Redis backend (README, "Scaling out over Redis"): many servers share one
//! Redis and behave, to their clients, as one server.
//!
//! # The log
//!
//! The change log is one Redis Stream; a cursor `epoch.seq` is its entry `seq-0`, one to one.
//! A push is one Lua script (`push.lua`), so concurrent pushes on different servers serialise:
//! per record, last-writer-wins against the stored winner of its (table, pk, field) by HLC,
//! operation-based types deduplicated by identity (table, pk, field, hlc), exactly the rules
//! of [`MemoryStore`](syncmux::MemoryStore); only new records are appended, and the script
//! returns the epoch and each new record's sequence. Pulls and replays are one script too
//! (`read.lua`), reading a consistent snapshot with its head; per-table indexes (a sorted
//! set of sequences, and one of HLCs) keep a table's pull from scanning other tables.
//!
//! Every server **follows** the log on a connection of its own (`XREAD BLOCK` from the last
//! entry it read) and routes each entry, its own included, in log order
//! ([`LogSink`]); its pushes are answered without routing. Pub/Sub alone
//! would lose what is published while a subscription is down; the stream does not.
//!
//! # Epochs
//!
//! The log's epoch comes from Redis' `TIME` when its metadata is missing: a Redis that lost
//! its data (restarted without persistence, flushed) starts a new epoch, so old cursors get
//! `recovered: false` and no sequence is ever reused. Followers notice a new epoch (an entry of
//! another epoch, or the metadata when a read times out), close this server's subscribers
//! (they resume from their cursors, which the new epoch answers `recovered: false`), and
//! follow it from its start.
//!
//! # Failover
//!
//! [`RedisConfig::url`] may name a Sentinel deployment or a Redis Cluster (see there); the
//! connections follow a failover (a request that finds its server gone or demoted reconnects
//! to the primary the Sentinels name then; requests meanwhile fail with `UNAVAILABLE`, and
//! sessions stay open). Redis replicates asynchronously, so a primary may die holding entries
//! no replica has, and a promoted replica would give their positions to other changes:
//!
//! - With [`RedisConfig::min_replicas`], nothing is handed out before that many replicas
//!   hold it: a push is acknowledged after `WAIT`, and a read's answer and the follower's
//!   entries wait for the replicas to hold what was read (a write of the server's own, then
//!   `WAIT`). A failover to one of those replicas loses nothing anyone was told of: followers
//!   resume from their positions, cursors resume with `recovered: true`.
//! - Without, the scripts start a new epoch (keeping the entries) when the primary's
//!   replication id changes, before anything is written on the new primary: positions of the
//!   old epoch are never given again, their cursors resume with `recovered: false`, and the
//!   subscribers are closed to resume so. What the old primary alone held is lost.
//!
//! All servers sharing a log use the same `min_replicas`.
//!
//! # Keys
//!
//! Every key starts with `{PREFIX}:` ([`RedisConfig::prefix`], default `syncmux`): one hash
//! tag, so all of them live in one slot. `meta` (hash: epoch, head, oldest retained
//! sequence), `log` (stream), `win` (hash: last-writer-wins winners), `ops` (set: identities
//! of operation records), `tables`, `latest`, `evicted`, and per table `s:TABLE` (sorted set
//! of sequences) and `h:TABLE` (sorted set of HLC keys, by lexicographic order); for shared
//! presence and rooms `presence`, `members:SERVER`, `servers`, `events` (the channel) and per
//! room `room:ROOM` (the set its size is counted in).
//!
//! # Retention
//!
//! With [`RedisConfig::retention`] set, a push trims the stream to that many entries (the
//! oldest go first) and every index forgets them, as `MemoryStore` does: a cursor before the
//! oldest retained entry is answered `recovered: false`.
//!
//! # Presence and rooms
//!
//! With [`RedisConfig::share_presence`] (the default), presence topics and rooms are shared
//! too: each server publishes its sessions' changes on Pub/Sub, tagged with its name, and
//! keeps them in a hash for servers that start later; a heartbeat per server lets the others
//! clean up after one that died. Snapshots, member lists and `ROOM_FULL` then count every
//! server's sessions; a join that would take a room's last place is admitted by Redis in one
//! step (`admit.lua`), so two servers never both take it.
//!
//! # Faults
//!
//! [`RedisBackend::connect`] fails when Redis cannot be reached (`syncmux-server` then
//! exits non-zero). While running, a request Redis does not answer (down, or slower than
//! [`RedisConfig::request_timeout`]) fails with `UNAVAILABLE`; the session stays open and
//! the client may retry. Requests reconnect on their own, and the follower reconnects with
//! backoff and resumes after the last entry it routed, so nothing accepted meanwhile is
//! missed.

use core::fmt;
use core::time::Duration;
use std::sync::Arc;

use redis::streams::StreamReadReply;
use redis::{RedisError, Script, Value};

use syncmux::payload::{ChangeRecord, Cursor, Hlc};
use syncmux::{AppError, PullAnswer, PushAnswer, ServerEvent, SessionId};
use syncmux_runtime::Clock;
use syncmux_runtime::{Admit, Backend, BackendFuture, LogSink, Push, Read};

mod conn;
mod keys;
mod ot;
mod presence;
mod relay;

pub use ot::{RedisOt, RedisOtConfig};
pub use relay::{Answering, Deliver, Relay, RelayError};

use conn::{Conn, Target};
use keys::{hlc_key, merge_key};

/// The scripts' shared prelude (keys, the epoch, byte-order comparison).
const COMMON: &str = include_str!("common.lua");

/// Configuration of a [`RedisBackend`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisConfig {
    /// The server: `redis://HOST:PORT[/DB]`, or `rediss://` for TLS (rustls, trusting the
    /// system's roots, or those of the PEM file `SSL_CERT_FILE` names). A Sentinel
    /// deployment: `redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER[?db=N]` (the Sentinels,
    /// then the monitored primary's name; a user and password before the hosts are the data
    /// nodes'; `rediss+sentinel://` for TLS to them). A Redis Cluster:
    /// `redis+cluster://HOST:PORT[,HOST:PORT...]` (seed nodes; `rediss+cluster://` for TLS).
    pub url: String,
    /// The keys' prefix, inside the hash tag: keys are `{PREFIX}:...`. Servers sharing a log
    /// use the same prefix; different prefixes are separate logs on one Redis. Default
    /// `syncmux`.
    pub prefix: String,
    /// The most entries the log keeps (`MAXLEN`); the oldest go first. Default 0: unbounded.
    pub retention: usize,
    /// How long a request may wait for Redis before it fails with `UNAVAILABLE`, and a
    /// connection attempt before it counts as failed. Default 5 s.
    pub request_timeout: Duration,
    /// How long the follower blocks in `XREAD` before it checks the log's epoch (a Redis
    /// that lost its data while the connection stayed up). Default 1 s.
    pub block: Duration,
    /// The most entries the follower reads at once. Default 512.
    pub batch: usize,
    /// Whether presence and rooms are shared with the other servers on this Redis (see
    /// [the module docs](crate#presence-and-rooms)): snapshots, member lists and room sizes then
    /// count every server's sessions. Default `true`.
    pub share_presence: bool,
    /// How often this server tells Redis it is alive. Default 2 s.
    pub heartbeat: Duration,
    /// A server silent this long is taken for gone: its sessions leave their topics and
    /// rooms on every other server. Default 10 s.
    pub server_ttl: Duration,
    /// Replicas that must hold a push before it is acknowledged (Redis's `WAIT`), so that an
    /// acknowledged change survives the primary's loss. A push they do not confirm within
    /// [`replica_timeout`](Self::replica_timeout) answers `UNAVAILABLE` (it may still land:
    /// the client pushes again, and merging is idempotent). Default 0: acknowledged once the
    /// primary has it (replication is asynchronous; a failover may lose the newest pushes).
    pub min_replicas: usize,
    /// How long a push waits for [`min_replicas`](Self::min_replicas). Default 1 s.
    pub replica_timeout: Duration,
}

impl RedisConfig {
    /// The defaults, for the Redis at `url`.
    pub fn new(url: impl Into<String>) -> RedisConfig {
        RedisConfig {
            url: url.into(),
            prefix: "syncmux".to_owned(),
            retention: 0,
            request_timeout: Duration::from_secs(5),
            block: Duration::from_secs(1),
            batch: 512,
            share_presence: true,
            heartbeat: RedisConfig::HEARTBEAT,
            server_ttl: RedisConfig::SERVER_TTL,
            min_replicas: 0,
            replica_timeout: Duration::from_secs(1),
        }
    }
}

/// Why a [`RedisBackend`] could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisBackendError {
    /// The URL is not one the `redis` crate accepts.
    #[error("invalid Redis URL {url:?}: {source}")]
    Url {
        /// The URL given.
        url: String,
        /// Why.
        source: RedisError,
    },
    /// Redis could not be reached, or refused the backend's first request.
    #[error("cannot reach Redis at {url}: {source}")]
    Connect {
        /// The URL given.
        url: String,
        /// Why.
        source: RedisError,
    },
    /// Redis answered, but not as the backend's scripts do (another program's keys under
    /// the prefix?).
    #[error("unexpected answer from Redis at {url}: {message}")]
    Unexpected {
        /// The URL given.
        url: String,
        /// What was wrong.
        message: String,
    },
}

/// The Redis backend: a change log shared by many servers (module docs). Cheap to clone.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use syncmux_redis::{RedisBackend, RedisConfig};
/// use syncmux_runtime::{self as adapters, ServerOptions};
/// use syncmux::{Server, ServerConfig};
///
/// let backend = RedisBackend::connect(RedisConfig::new("redis://127.0.0.1:6379")).await?;
/// let server = Server::new(ServerConfig::default())?;
/// let server = adapters::Tokio::start_with_backend(server, Arc::new(backend), ServerOptions::default());
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// adapters::Tokio::serve(server, listener, None).await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    config: RedisConfig,
    target: Arc<Target>,
    /// Requests: one multiplexed connection that reconnects on its own.
    conn: Conn,
    /// Pushes: `conn`, or with [`RedisConfig::min_replicas`] a connection of their own, as
    /// `WAIT` follows the writes of its connection and holds that connection while it waits.
    pushes: Conn,
    /// `{prefix}:`, the first argument of every script.
    prefix: String,
    /// The metadata's key: the key every script names, so that a cluster sends it to the
    /// node of the prefix's slot.
    meta: String,
    /// The key [`Inner::fence`] writes.
    fence: String,
    /// The log's head when the backend connected: where the follower starts, so that what
    /// is pushed before its own connection is up (a cluster's takes a while) still reaches
    /// the sessions that subscribed since.
    origin: Cursor,
    /// The stream's key.
    log: String,
    /// This server's name in the log's entries (who pushed them), random per start.
    instance: String,
    push: Script,
    read: Script,
    head: Script,
    share: Script,
    admit: Script,
    beat: Script,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("config", &self.inner.config)
            .field("instance", &self.inner.instance)
            .finish_non_exhaustive()
    }
}

/// Waits until `wanted` replicas hold every write `conn` (pinned: [`Conn::pin`]) made so far
/// to the node of `key` (`WAIT`, at most `timeout`); why not, when they do not confirm in time
/// or Redis fails. Nothing to wait for when `wanted` is 0.
pub(crate) async fn replicated(
    conn: &mut Conn,
    key: &str,
    wanted: usize,
    timeout: Duration,
) -> Result<(), String> {
    if wanted == 0 {
        return Ok(());
    }
    let confirmed = conn.wait(key, wanted, timeout).await.map_err(|e| {
        tracing::warn!(error = %e, "WAIT failed");
        "the shared store is unavailable; retry later".to_owned()
    })?;
    if confirmed < wanted {
        tracing::warn!(confirmed, wanted, "a write was not replicated in time");
        return Err(format!(
            "the change reached {confirmed} of {wanted} replicas in time; it may still land"
        ));
    }
    Ok(())
}

/// A log position as the scripts return it: `(epoch, head, first, base)`.
type Head = (String, u64, u64, u64);

/// Where the log stands: its head, the oldest sequence it retains, and the head its epoch
/// started at (0, or where the epoch changed after a failover).
#[derive(Clone, Copy, Debug)]
struct Position {
    head: Cursor,
    first: u64,
    base: u64,
}

impl RedisBackend {
    /// Connects to Redis and reads (or starts) the log's epoch. Fails when Redis cannot be
    /// reached: a server should not start without its store.
    pub async fn connect(config: RedisConfig) -> Result<RedisBackend, RedisBackendError> {
        let url = config.url.clone();
        let (target, conn) = conn::open(&url, config.request_timeout).await?;
        let pushes = match config.min_replicas {
            0 => conn.clone(),
            _ => conn::open(&url, config.request_timeout).await?.1,
        };
        let prefix = format!("{{{}}}:", config.prefix);
        // Without replicas to wait for, a failover may lose acknowledged entries: the
        // scripts start a new epoch when the primary changes (`common.lua`).
        let rotate = config.min_replicas == 0;
        let script =
            |body: &str| Script::new(&format!("local ROTATE = {rotate}\n{COMMON}\n{body}"));
        let mut inner = Inner {
            log: format!("{prefix}log"),
            meta: format!("{prefix}meta"),
            fence: format!("{prefix}fence"),
            origin: Cursor::default(),
            prefix,
            target,
            conn,
            pushes,
            instance: format!("{:016x}", Clock::new().seed()),
            push: script(include_str!("push.lua")),
            read: script(include_str!("read.lua")),
            head: script(include_str!("head.lua")),
            share: Script::new(include_str!("share.lua")),
            admit: Script::new(include_str!("admit.lua")),
            beat: Script::new(include_str!("beat.lua")),
            config,
        };
        let mut conn = inner.conn.clone();
        match inner.head(&mut conn).await {
            Ok(Some(at)) => {
                inner.origin = at.head;
                Ok(RedisBackend {
                    inner: Arc::new(inner),
                })
            }
            Ok(None) => Err(RedisBackendError::Unexpected {
                url,
                message: "the log's metadata is not a syncmux log's".to_owned(),
            }),
            Err(source) => Err(RedisBackendError::Connect { url, source }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// The log's head: the position of its newest entry (`epoch.0` when empty).
    pub async fn head(&self) -> Result<Cursor, AppError> {
        let mut conn = self.inner.conn.clone();
        match self.inner.head(&mut conn).await {
            Ok(Some(at)) => Ok(at.head),
            Ok(None) => Err(AppError::new("the shared store's metadata is invalid")),
            Err(e) => Err(failed(&e)),
        }
    }

    /// Merges `changes` as one push by `origin` (a session of this server, recorded with the
    /// entries so that this server does not route them back to it).
    pub async fn push(
        &self,
        changes: Vec<ChangeRecord>,
        origin: Option<SessionId>,
    ) -> Result<PushAnswer, AppError> {
        self.inner.push(changes, origin).await
    }

    /// Reads a pull or a replay (see [`Read`]).
    pub async fn read(&self, read: Read) -> Result<PullAnswer, AppError> {
        self.inner.read(read).await
    }
}

impl Backend for RedisBackend {
    fn read(&self, read: Read) -> BackendFuture<Result<PullAnswer, AppError>> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.read(read).await })
    }

    fn push(&self, push: Push) -> BackendFuture<Result<PushAnswer, AppError>> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.push(push.changes, Some(push.session)).await })
    }

    fn follow(&self, log: LogSink) -> Option<BackendFuture<()>> {
        let inner = self.inner.clone();
        Some(Box::pin(async move {
            if inner.config.share_presence {
                let presence = inner.follow_presence(log.clone());
                futures_util::future::join(inner.follow(log), presence).await;
            } else {
                inner.follow(log).await;
            }
        }))
    }

    fn shares_presence(&self) -> bool {
        self.inner.config.share_presence
    }

    fn publish(&self, change: ServerEvent) -> BackendFuture<()> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.publish(change).await })
    }

    fn admit(&self, join: Admit) -> BackendFuture<Result<bool, AppError>> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.admit(join).await })
    }
}

/// A Redis error as the client sees it: `UNAVAILABLE` when Redis cannot be reached or does
/// not answer in time, `HANDLER_ERROR` otherwise. The details go to the log, not the client.
fn failed(e: &RedisError) -> AppError {
    tracing::warn!(error = %e, "Redis request failed");
    if conn::unavailable(e) {
        AppError::unavailable("the shared store is unavailable; retry later")
    } else {
        AppError::new("the shared store failed")
    }
}

/// A script's answer that does not have the expected shape (a bug, or foreign keys).
fn invalid(what: &str) -> AppError {
    tracing::error!(what, "unexpected answer from the Redis scripts");
    AppError::new("the shared store answered unexpectedly")
}

fn epoch_of(epoch: &str) -> Result<u64, AppError> {
    epoch.parse().map_err(|_| invalid("epoch"))
}

impl Inner {
    /// Where the log stands; `None` if the metadata does not parse.
    async fn head(
        &self,
        conn: &mut (impl redis::aio::ConnectionLike + Send),
    ) -> Result<Option<Position>, RedisError> {
        let (epoch, head, first, base): Head = self
            .head
            .key(&self.meta)
            .arg(&self.prefix)
            .invoke_async(conn)
            .await?;
        Ok(epoch.parse().ok().map(|e| Position {
            head: Cursor::new(e, head),
            first,
            base,
        }))
    }

    /// With [`RedisConfig::min_replicas`]: whether the replicas hold everything the primary
    /// held when this began (a write of its own on `conn`, then `WAIT`), so that what was
    /// read before may be handed out: a failover keeps it. Reads and the follower hand out
    /// nothing a replica lacks, or a position it names could be lost, and given again to
    /// another change on the new primary.
    async fn fence(&self, conn: &mut Conn) -> Result<bool, RedisError> {
        let wanted = self.config.min_replicas;
        if wanted == 0 {
            return Ok(true);
        }
        let () = redis::cmd("SET")
            .arg(&self.fence)
            .arg(&self.instance)
            .query_async(conn)
            .await?;
        let timeout = self.config.replica_timeout;
        Ok(conn.wait(&self.meta, wanted, timeout).await? >= wanted)
    }

    /// [`fence`](Self::fence) on the pushes' connection, as a request's error.
    async fn fenced(&self) -> Result<(), AppError> {
        let mut conn = self.pushes.pin().await.map_err(|e| failed(&e))?;
        match self.fence(&mut conn).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(AppError::unavailable(
                "the shared store's replicas are behind; retry later",
            )),
            Err(e) => Err(failed(&e)),
        }
    }

    async fn push(
        &self,
        changes: Vec<ChangeRecord>,
        origin: Option<SessionId>,
    ) -> Result<PushAnswer, AppError> {
        let origin = match origin {
            // `index.generation`: the slot and its generation (`SessionId::as_u64` halves).
            Some(s) => format!(
                "{}/{}.{}",
                self.instance,
                s.as_u64() >> 32,
                s.as_u64() as u32
            ),
            None => String::new(),
        };
        let mut call = self.push.key(&self.meta);
        call.arg(&self.prefix)
            .arg(self.config.retention)
            .arg(origin)
            .arg(changes.len());
        for record in &changes {
            let json = serde_json::to_string(record).map_err(|_| invalid("record"))?;
            // The same rule as the MemoryStore: `lww` by HLC, every other type by identity.
            let lww = record.crdt_type == "lww";
            call.arg(&record.table)
                .arg(if lww { "1" } else { "0" })
                .arg(merge_key(record, lww))
                .arg(hlc_key(&record.hlc))
                .arg(record.hlc.to_string())
                .arg(json);
        }
        let mut conn = self.pushes.pin().await.map_err(|e| failed(&e))?;
        let (epoch, head, newest, accepted): (String, u64, String, Vec<u64>) =
            call.invoke_async(&mut conn).await.map_err(|e| failed(&e))?;
        let (wanted, timeout) = (self.config.min_replicas, self.config.replica_timeout);
        replicated(&mut conn, &self.meta, wanted, timeout)
            .await
            .map_err(AppError::unavailable)?;
        let epoch = epoch_of(&epoch)?;
        let mut changes: Vec<Option<ChangeRecord>> = changes.into_iter().map(Some).collect();
        let mut out = Vec::with_capacity(accepted.len() / 2);
        for pair in accepted.chunks_exact(2) {
            let index = usize::try_from(pair[0]).map_err(|_| invalid("index"))?;
            let record = index
                .checked_sub(1)
                .and_then(|i| changes.get_mut(i))
                .and_then(Option::take)
                .ok_or_else(|| invalid("index"))?;
            out.push((Cursor::new(epoch, pair[1]), record));
        }
        Ok(PushAnswer {
            accepted: out,
            latest_hlc: newest.parse().unwrap_or_default(),
            head: Cursor::new(epoch, head),
        })
    }

    async fn read(&self, read: Read) -> Result<PullAnswer, AppError> {
        let mut conn = self.conn.clone();
        if read.head_only {
            return match self.head(&mut conn).await {
                Ok(Some(at)) => {
                    self.fenced().await?;
                    Ok(PullAnswer {
                        head: at.head,
                        complete: true,
                        ..PullAnswer::default()
                    })
                }
                Ok(None) => Err(invalid("head")),
                Err(e) => Err(failed(&e)),
            };
        }
        let mut tables = read.tables;
        tables.sort_unstable();
        tables.dedup();
        let since_key = read.since.as_ref().map(hlc_key);
        let mut call = self.read.key(&self.meta);
        call.arg(&self.prefix);
        match read.cursor {
            Some(c) => call.arg(c.epoch.to_string()).arg(c.seq.to_string()),
            None => call.arg("").arg(""),
        };
        call.arg(since_key.as_deref().unwrap_or(""));
        for table in &tables {
            call.arg(table);
        }
        type Reply = (String, u64, u8, Vec<String>, Vec<String>, Vec<String>);
        let (epoch, head, served, entries, latest, evicted): Reply =
            call.invoke_async(&mut conn).await.map_err(|e| failed(&e))?;
        self.fenced().await?;
        let epoch = epoch_of(&epoch)?;
        let served = served == 1;
        let mut changes = Vec::with_capacity(entries.len() / 3);
        for entry in entries.chunks_exact(3) {
            let seq: u64 = entry[0].parse().map_err(|_| invalid("seq"))?;
            let record: ChangeRecord =
                serde_json::from_str(&entry[2]).map_err(|_| invalid("record"))?;
            changes.push((Cursor::new(epoch, seq), &entry[1], record));
        }
        // After a cursor: in position order. Otherwise in HLC order, equal HLCs by position:
        // the order of the members "<hlc key>/<seq>".
        if served {
            changes.sort_by_key(|(cursor, _, _)| *cursor);
        } else {
            changes.sort_by(|a, b| a.1.cmp(b.1));
        }
        let latest_hlc = latest
            .iter()
            .filter_map(|h| h.parse::<Hlc>().ok())
            .max()
            .or(read.since)
            .unwrap_or_default();
        let evicted_after_since = evicted
            .iter()
            .filter(|e| !e.is_empty())
            .any(|e| since_key.as_ref().is_none_or(|since| e > since));
        Ok(PullAnswer {
            changes: changes.into_iter().map(|(c, _, r)| (c, r)).collect(),
            latest_hlc,
            head: Cursor::new(epoch, head),
            complete: served || (read.cursor.is_none() && !evicted_after_since),
        })
    }

    /// Follows the log until the server is gone (module docs), reconnecting with backoff.
    async fn follow(&self, log: LogSink) {
        let mut at: Option<Cursor> = None;
        let mut conn: Option<Conn> = None;
        let mut check = true;
        let mut backoff = Duration::from_millis(50);
        let mut down = false;
        loop {
            let c = match conn.as_mut() {
                Some(c) => c,
                None => {
                    // Its own connection: a blocking read would hold up the requests'.
                    let response = self.config.block + self.config.request_timeout;
                    match self.target.dedicated(response).await {
                        Ok(c) => {
                            check = true;
                            conn.insert(c)
                        }
                        Err(e) => {
                            if !down {
                                tracing::warn!(error = %e, "Redis lost: the log's follower reconnects");
                                down = true;
                            }
                            if log.is_closed() {
                                return;
                            }
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(2));
                            continue;
                        }
                    }
                }
            };
            match self.follow_once(c, &log, &mut at, &mut check).await {
                Ok(true) => {
                    if down {
                        tracing::info!(at = %at.unwrap_or_default(), "Redis is back: following the log again");
                        down = false;
                    }
                    backoff = Duration::from_millis(50);
                }
                Ok(false) => return,
                Err(e) => {
                    if !down {
                        tracing::warn!(error = %e, "Redis lost: the log's follower reconnects");
                        down = true;
                    }
                    conn = None;
                    if log.is_closed() {
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// One read of the log; `Ok(false)` once the server is gone.
    async fn follow_once(
        &self,
        conn: &mut Conn,
        log: &LogSink,
        at: &mut Option<Cursor>,
        check: &mut bool,
    ) -> Result<bool, RedisError> {
        if *check {
            *check = false;
            let Some(Position { head, first, base }) = self.head(conn).await? else {
                tracing::error!("the log's metadata is not a syncmux log's");
                return Ok(true);
            };
            let origin = self.origin;
            let from = match *at {
                // Started: from the head when the backend connected (no session had anything
                // to miss before), unless the log lost its data since.
                None if origin.epoch == head.epoch && origin.seq <= head.seq => origin,
                None => head,
                Some(pos) if pos.epoch != head.epoch => {
                    tracing::warn!(
                        old = pos.epoch,
                        new = head.epoch,
                        "the shared log lost its data or its primary: following its new epoch"
                    );
                    // What the subscribers have may be gone (a primary that died before its
                    // replicas copied it, or a Redis that lost its data): they resume from
                    // their cursors, which the new epoch answers `recovered: false`.
                    if !log.gap() {
                        return Ok(false);
                    }
                    Cursor::new(head.epoch, base)
                }
                Some(pos) => {
                    if pos.seq + 1 < first && !log.gap() {
                        return Ok(false);
                    }
                    pos
                }
            };
            if *at != Some(from) {
                *at = Some(from);
                if !log.at(from) {
                    return Ok(false);
                }
            }
        }
        let from = at.unwrap_or_default();
        let block = u64::try_from(self.config.block.as_millis()).unwrap_or(u64::MAX);
        let reply: Option<StreamReadReply> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(self.config.batch.max(1))
            .arg("BLOCK")
            .arg(block.max(1))
            .arg("STREAMS")
            .arg(&self.log)
            .arg(format!("{}-0", from.seq))
            .query_async(conn)
            .await?;
        let entries = reply
            .and_then(|r| r.keys.into_iter().next())
            .map(|k| k.ids)
            .unwrap_or_default();
        if entries.is_empty() {
            // Timed out: a log that lost its data while this connection stayed up blocks
            // here for ever unless its epoch is checked.
            *check = true;
            return Ok(true);
        }
        if !self.fence(conn).await? {
            // Not on the replicas yet: routed once they are (read again next time).
            return Ok(true);
        }
        let epoch = from.epoch.to_string();
        let mine = format!("{}/", self.instance);
        let mut run: Vec<(Cursor, ChangeRecord)> = Vec::new();
        let mut run_by: Option<SessionId> = None;
        for entry in entries {
            if entry.map.get("e").and_then(string).as_deref() != Some(epoch.as_str()) {
                // Another epoch: the log was recreated; re-read its metadata.
                *check = true;
                break;
            }
            let Some(seq) = entry
                .id
                .strip_suffix("-0")
                .and_then(|s| s.parse::<u64>().ok())
            else {
                tracing::error!(id = entry.id, "a log entry with a foreign id: skipped");
                continue;
            };
            // Sequences are consecutive: a jump means entries were trimmed before this
            // server read them, and its subscribers missed them.
            let last = at.map_or(from.seq, |a| a.seq);
            if seq > last + 1 {
                if !run.is_empty() && !log.accepted(core::mem::take(&mut run), run_by) {
                    return Ok(false);
                }
                if !log.gap() {
                    return Ok(false);
                }
            }
            let cursor = Cursor::new(from.epoch, seq);
            *at = Some(cursor);
            let record = entry.map.get("r").and_then(string);
            let Some(record) = record.and_then(|r| serde_json::from_str::<ChangeRecord>(&r).ok())
            else {
                tracing::error!(%cursor, "a log entry without a valid record: skipped");
                continue;
            };
            let by = entry
                .map
                .get("o")
                .and_then(string)
                .and_then(|o| o.strip_prefix(&mine).and_then(session_of));
            if by != run_by && !run.is_empty() && !log.accepted(core::mem::take(&mut run), run_by) {
                return Ok(false);
            }
            run_by = by;
            run.push((cursor, record));
        }
        if !run.is_empty() {
            return Ok(log.accepted(run, run_by));
        }
        if let Some(pos) = *at {
            return Ok(log.at(pos));
        }
        Ok(true)
    }
}

/// A stream field's text.
fn string(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// The session of `"<index>.<generation>"`, as this server wrote it.
fn session_of(text: &str) -> Option<SessionId> {
    let (index, generation) = text.split_once('.')?;
    let (index, generation): (u32, u32) = (index.parse().ok()?, generation.parse().ok()?);
    Some(SessionId::from_u64(
        (u64::from(index) << 32) | u64::from(generation),
    ))
}
