//! The one error of configuring a [`Client`](crate::Client), a [`Server`](crate::Server), or
//! the OT profile's client and server.

use core::time::Duration;

use thiserror::Error;

/// A configuration that cannot work: [`Client::new`](crate::Client::new),
/// [`Server::new`](crate::Server::new), [`OtClient::new`](crate::ot::OtClient::new) and
/// [`OtServer::new`](crate::ot::OtServer::new) check theirs before anything starts.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The URL is not `ws://` or `wss://`.
    #[error("url {0:?} must start with ws:// or wss://")]
    Url(String),
    /// No node id.
    #[error("node_id must not be empty")]
    EmptyNodeId,
    /// A zero reconnect delay would reconnect in a tight loop.
    #[error("reconnect_delay must be positive")]
    ZeroReconnectDelay,
    /// `max_reconnect_delay < reconnect_delay`.
    #[error("max_reconnect_delay must be at least reconnect_delay")]
    MaxDelayBelowDelay,
    /// Keepalive is on but the pong timeout is zero.
    #[error("pong_timeout must be positive when ping_interval is")]
    ZeroPongTimeout,
    /// A bound that must be at least 1 is zero.
    #[error("{0} must be at least 1")]
    ZeroBound(&'static str),
    /// A rate limit with a zero window would never refill.
    #[error("rate_limit_window must be non-zero when a rate limit is set")]
    RateLimitWindow,
    /// The OT client id is empty, longer than 40 bytes or holds control characters.
    #[error("client_id must be 1 to 40 bytes without control characters")]
    ClientId,
    /// An empty OT `docId` means `doc-1` on the wire: say `None`.
    #[error("doc_id must not be empty (None is doc-1)")]
    EmptyDocId,
    /// Pings must come before the idle timeout, or no pong could ever keep a session alive.
    // In milliseconds through f64, not Duration's Debug: the browser packages reach this
    // Display (through their config errors) and already hold f64 formatting, not Duration's.
    #[error(
        "ping_interval ({} ms) must be shorter than idle_timeout ({} ms)",
        ping.as_secs_f64() * 1e3,
        idle.as_secs_f64() * 1e3
    )]
    PingAfterIdle {
        /// The ping interval.
        ping: Duration,
        /// The idle timeout.
        idle: Duration,
    },
}
