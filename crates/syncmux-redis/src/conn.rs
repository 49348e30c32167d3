//! Where Redis is, and connections that follow it.
//!
//! A [`Target`] is one server (`redis://`, `rediss://`), a Sentinel deployment
//! (`redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER`, the data nodes' user, password and
//! `?db=` in the same URL; `rediss+sentinel://` speaks TLS to the data nodes) or a Redis
//! Cluster (`redis+cluster://HOST:PORT[,HOST:PORT...]`, the seed nodes; `rediss+cluster://`
//! for TLS). The scheme names follow the `redis+unix` convention of URLs that say how to
//! reach Redis rather than where; the host list is what Sentinel and Cluster clients of
//! every language take.
//!
//! The `redis` crate resolves a Sentinel's primary once and its `ConnectionManager` then
//! reconnects to that address for ever, so after a failover it would keep knocking on a dead
//! (or demoted) server. [`Link`] is the one reconnecting connection for a single server and
//! a Sentinel deployment alike: it drops its connection when a request finds it broken or
//! the server no longer primary (`READONLY`), and the next request asks the Sentinels again.

use core::time::Duration;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ErrorKind, IntoConnectionInfo, Pipeline, RedisError,
    RedisFuture, RedisResult, ServerErrorKind, TlsMode, Value,
};

use crate::RedisBackendError;

/// Where Redis is (module docs). Shared by every connection to it.
pub(crate) struct Target {
    url: String,
    kind: Kind,
    timeout: Duration,
}

enum Kind {
    Single(Client),
    Sentinel {
        /// The `redis` crate's Sentinel client asks the Sentinels in turn; one lookup at a
        /// time, as it caches its connections to them.
        sentinel: tokio::sync::Mutex<Sentinel>,
        master: String,
        node: SentinelNodeConnectionInfo,
    },
    Cluster {
        client: ClusterClient,
        /// The seed nodes' URLs, for the dedicated connections' clients.
        urls: Vec<String>,
        /// A client per seed node, for Pub/Sub (a cluster forwards every `PUBLISH` to every
        /// node), tried in turn.
        seeds: Vec<Client>,
        next: AtomicUsize,
    },
}

/// The pieces of a `redis+sentinel://` or `redis+cluster://` URL.
struct Hosts<'a> {
    tls: bool,
    /// `user:password@`, or empty.
    auth: &'a str,
    hosts: Vec<&'a str>,
    /// After the host list: `/MASTER` and `?db=N` (Sentinel).
    path: &'a str,
    query: &'a str,
}

fn hosts<'a>(rest: &'a str, tls: bool) -> Hosts<'a> {
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (auth, list) = match authority.rsplit_once('@') {
        Some((auth, list)) => (&authority[..=auth.len()], list),
        None => ("", authority),
    };
    Hosts {
        tls,
        auth,
        hosts: list.split(',').filter(|h| !h.is_empty()).collect(),
        path,
        query,
    }
}

impl Hosts<'_> {
    /// The URL of one host, with the credentials when `auth`.
    fn url(&self, host: &str, auth: bool) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let auth = if auth { self.auth } else { "" };
        format!("{scheme}://{auth}{host}")
    }
}

fn invalid_url(url: &str, why: &'static str) -> RedisBackendError {
    RedisBackendError::Url {
        url: url.to_owned(),
        source: RedisError::from((ErrorKind::InvalidClientConfig, why)),
    }
}

impl Target {
    /// Reads `url` (module docs); connects to nothing yet.
    pub(crate) fn parse(url: &str, timeout: Duration) -> Result<Arc<Target>, RedisBackendError> {
        let invalid = |source| RedisBackendError::Url {
            url: url.to_owned(),
            source,
        };
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        let kind = match scheme {
            "redis+sentinel" | "rediss+sentinel" => {
                let parts = hosts(rest, scheme.starts_with("rediss"));
                let master = parts.path.trim_matches('/');
                if parts.hosts.is_empty() || master.is_empty() {
                    return Err(invalid_url(
                        url,
                        "a Sentinel URL names its Sentinels and master: redis+sentinel://HOST:PORT,.../MASTER",
                    ));
                }
                let sentinels: Vec<String> =
                    parts.hosts.iter().map(|h| parts.url(h, false)).collect();
                let sentinel = Sentinel::build(sentinels).map_err(invalid)?;
                // The data nodes' credentials and database, read as a one-server URL would be.
                let db = parts.query.strip_prefix("db=").unwrap_or("0");
                let data = format!("{}/{db}", parts.url("localhost", true));
                let info = data.as_str().into_connection_info().map_err(invalid)?;
                let mut node = SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(info.redis_settings().clone());
                if parts.tls {
                    node = node.set_tls_mode(TlsMode::Secure);
                }
                Kind::Sentinel {
                    sentinel: tokio::sync::Mutex::new(sentinel),
                    master: master.to_owned(),
                    node,
                }
            }
            "redis+cluster" | "rediss+cluster" => {
                let parts = hosts(rest, scheme.starts_with("rediss"));
                if parts.hosts.is_empty() {
                    return Err(invalid_url(
                        url,
                        "a Cluster URL names its seed nodes: redis+cluster://HOST:PORT,...",
                    ));
                }
                let urls: Vec<String> = parts.hosts.iter().map(|h| parts.url(h, true)).collect();
                let seeds = urls
                    .iter()
                    .map(|u| Client::open(u.as_str()))
                    .collect::<RedisResult<Vec<_>>>()
                    .map_err(invalid)?;
                let client = ClusterClient::builder(urls.clone())
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .build()
                    .map_err(invalid)?;
                Kind::Cluster {
                    client,
                    urls,
                    seeds,
                    next: AtomicUsize::new(0),
                }
            }
            _ => Kind::Single(Client::open(url).map_err(invalid)?),
        };
        Ok(Arc::new(Target {
            url: url.to_owned(),
            kind,
            timeout,
        }))
    }

    /// The URL it was read from.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Whether this is a Redis Cluster, whose keys must say which slot they share.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.kind, Kind::Cluster { .. })
    }

    /// A client for the primary: the server, the primary the Sentinels name now (checked to
    /// be one), or the next seed node of a cluster (for Pub/Sub).
    pub(crate) async fn primary(&self) -> RedisResult<Client> {
        match &self.kind {
            Kind::Single(client) => Ok(client.clone()),
            Kind::Sentinel {
                sentinel,
                master,
                node,
            } => {
                let mut sentinel = sentinel.lock().await;
                let lookup = sentinel.async_master_for(master, Some(node));
                tokio::time::timeout(self.timeout, lookup)
                    .await
                    .map_err(|_| {
                        RedisError::from((ErrorKind::Io, "the Sentinels did not answer in time"))
                    })?
            }
            Kind::Cluster { seeds, next, .. } => {
                let at = next.fetch_add(1, Ordering::Relaxed) % seeds.len();
                Ok(seeds[at].clone())
            }
        }
    }

    /// A connection for requests that reconnects on its own (a cluster connection follows
    /// the slots' moves itself). Fails when Redis cannot be reached now.
    pub(crate) async fn connect(self: &Arc<Target>) -> RedisResult<Conn> {
        if let Kind::Cluster { client, .. } = &self.kind {
            return Ok(Conn::Cluster(client.get_async_connection().await?));
        }
        let link = Arc::new(Link {
            target: self.clone(),
            current: tokio::sync::Mutex::new(None),
        });
        link.get().await?;
        Ok(Conn::Link(link))
    }

    /// A connection of its own to the primary (a blocking read holds it up), whose requests
    /// may take `response` (the block and then some); broken for good once it fails.
    pub(crate) async fn dedicated(&self, response: Duration) -> RedisResult<Conn> {
        if let Kind::Cluster { urls, .. } = &self.kind {
            let client = ClusterClient::builder(urls.clone())
                .connection_timeout(self.timeout)
                .response_timeout(response)
                .build()?;
            return Ok(Conn::Cluster(client.get_async_connection().await?));
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(response));
        let conn = self
            .primary()
            .await?
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        Ok(Conn::Pinned(None, 0, conn))
    }
}

/// A reconnecting connection to the primary (module docs).
pub(crate) struct Link {
    target: Arc<Target>,
    /// The connection and its generation; `None` after a failure. Held while connecting, so
    /// that requests after a failure wait for one new connection rather than each open one.
    current: tokio::sync::Mutex<Option<(u64, MultiplexedConnection)>>,
}

impl Link {
    /// The connection, opened (the primary looked up again) if there is none.
    async fn get(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        let mut current = self.current.lock().await;
        if let Some((generation, conn)) = current.as_ref() {
            return Ok((*generation, conn.clone()));
        }
        let timeout = Some(self.target.timeout);
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout);
        let client = self.target.primary().await?;
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let generation = NEXT_GENERATION.fetch_add(1, Ordering::Relaxed);
        *current = Some((generation, conn.clone()));
        Ok((generation, conn))
    }

    /// Forgets connection `generation` if `error` says it is of no more use.
    async fn failed(&self, generation: u64, error: &RedisError) {
        if lost(error) {
            let mut current = self.current.lock().await;
            if current.as_ref().is_some_and(|(g, _)| *g == generation) {
                tracing::warn!(error = %error, url = self.target.url(), "Redis connection lost: the next request reconnects");
                *current = None;
            }
        }
    }
}

static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// Whether `error` means Redis is not there for now: down, slow, failing over (the Sentinels
/// name no primary that is one), or a cluster moving slots. A request that failed so may
/// succeed later.
pub(crate) fn unavailable(error: &RedisError) -> bool {
    lost(error)
        || matches!(
            error.kind(),
            ErrorKind::MasterNameNotFoundBySentinel | ErrorKind::ClusterConnectionNotFound
        )
        || matches!(
            error.kind(),
            ErrorKind::Server(
                ServerErrorKind::ClusterDown
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::BusyLoading
            )
        )
}

/// Whether `error` means the connection is of no more use: broken, timed out, or to a server
/// that is no longer the primary.
fn lost(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || error.is_unrecoverable_error()
        || matches!(
            error.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        )
}

/// A connection to the [`Target`] (cheap to clone): a [`Link`], one connection of it pinned
/// (so that `WAIT` follows the writes before it), or a cluster's.
#[derive(Clone)]
pub(crate) enum Conn {
    Link(Arc<Link>),
    /// A connection that is not replaced: its link (told when it fails), its generation.
    Pinned(Option<Arc<Link>>, u64, MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Conn {
    /// This connection's present connection, pinned: requests on it go to that one
    /// connection, or fail. `WAIT` counts the writes of its own connection, so a write and
    /// its `WAIT` go over one pinned connection: were the link to reconnect between them,
    /// the `WAIT` of a fresh connection would confirm at once what it never saw.
    pub(crate) async fn pin(&self) -> RedisResult<Conn> {
        match self {
            Conn::Link(link) => {
                let (generation, conn) = link.get().await?;
                Ok(Conn::Pinned(Some(link.clone()), generation, conn))
            }
            other => Ok(other.clone()),
        }
    }

    /// `WAIT wanted timeout` on the node that holds `key` (on a cluster, `WAIT` would ask
    /// every primary; the writes it follows went to one): the replicas that confirmed.
    pub(crate) async fn wait(
        &mut self,
        key: &str,
        wanted: usize,
        timeout: Duration,
    ) -> RedisResult<usize> {
        let millis = u64::try_from(timeout.as_millis().max(1)).unwrap_or(u64::MAX);
        let mut wait = redis::cmd("WAIT");
        wait.arg(wanted).arg(millis);
        match self {
            Conn::Cluster(conn) => {
                let route = Route::with_slot(Slot::for_key(key), SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                let value = conn.route_command(wait, routing).await?;
                Ok(redis::from_redis_value(value)?)
            }
            other => wait.query_async(other).await,
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Link(link) => Box::pin(async move {
                let (generation, mut conn) = link.get().await?;
                let answer = conn.req_packed_command(cmd).await;
                told(Some(link), generation, answer).await
            }),
            Conn::Pinned(link, generation, conn) => Box::pin(async move {
                let answer = conn.req_packed_command(cmd).await;
                told(link.as_ref(), *generation, answer).await
            }),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Link(link) => Box::pin(async move {
                let (generation, mut conn) = link.get().await?;
                let answer = conn.req_packed_commands(pipeline, offset, count).await;
                told(Some(link), generation, answer).await
            }),
            Conn::Pinned(link, generation, conn) => Box::pin(async move {
                let answer = conn.req_packed_commands(pipeline, offset, count).await;
                told(link.as_ref(), *generation, answer).await
            }),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Link(_) => 0,
            Conn::Pinned(_, _, conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

/// `answer` of connection `generation`, its failure told to its `link` first.
async fn told<T>(
    link: Option<&Arc<Link>>,
    generation: u64,
    answer: RedisResult<T>,
) -> RedisResult<T> {
    if let (Err(e), Some(link)) = (&answer, link) {
        link.failed(generation, e).await;
    }
    answer
}

/// Opens `url`'s target and a first connection to it; the errors are the backend's.
pub(crate) async fn open(
    url: &str,
    timeout: Duration,
) -> Result<(Arc<Target>, Conn), RedisBackendError> {
    let target = Target::parse(url, timeout)?;
    let conn = target
        .connect()
        .await
        .map_err(|source| RedisBackendError::Connect {
            url: url.to_owned(),
            source,
        })?;
    Ok((target, conn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_and_cluster_urls_name_their_hosts() {
        let parts = hosts("u:p@a:1,b:2/mymaster?db=3", false);
        assert_eq!(parts.auth, "u:p@");
        assert_eq!(parts.hosts, ["a:1", "b:2"]);
        assert_eq!(parts.path, "mymaster");
        assert_eq!(parts.query, "db=3");
        assert_eq!(parts.url("a:1", true), "redis://u:p@a:1");
        assert_eq!(parts.url("a:1", false), "redis://a:1");
        let parts = hosts("a:1,b:2", true);
        assert_eq!((parts.auth, parts.path), ("", ""));
        assert_eq!(parts.url("b:2", true), "rediss://b:2");
        let timeout = Duration::from_secs(1);
        assert!(Target::parse("redis+sentinel://a:1,b:2/m", timeout).is_ok());
        assert!(Target::parse("redis+sentinel://a:1,b:2", timeout).is_err());
        assert!(Target::parse("redis+cluster://", timeout).is_err());
        let cluster = Target::parse("redis+cluster://a:1,b:2", timeout).unwrap();
        assert!(cluster.is_cluster());
        assert!(!Target::parse("redis://a:1", timeout).unwrap().is_cluster());
    }
}
