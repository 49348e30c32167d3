//! Server configuration: limits, timers and the auth hooks (docs/protocol.md sections 4 and 10).

use core::fmt;
use core::time::Duration;
use std::sync::Arc;

use super::handshake::{AuthDecision, AuthRequest};
use super::SessionId;
use crate::config::ConfigError;

/// The handshake's auth decision: from the token (if any), the node id the client asked for
/// and the whole handshake, allow (optionally naming or confirming the node id) or deny.
pub(crate) type AuthFn = dyn Fn(&AuthRequest<'_>) -> AuthDecision + Send + Sync;

/// `with_auth` of a config whose `auth` is an [`AuthFn`]: the server's and the OT server's,
/// whose handshakes take the same hook.
macro_rules! with_auth {
    () => {
        /// Sets the auth decision.
        pub fn with_auth(
            mut self,
            auth: impl Fn(&$crate::AuthRequest<'_>) -> $crate::AuthDecision + Send + Sync + 'static,
        ) -> Self {
            self.auth = Some(::std::sync::Arc::new(auth));
            self
        }
    };
}
pub(crate) use with_auth;

/// The authorization hook: may this session touch this table, topic or room?
pub(crate) type AuthorizeFn = dyn Fn(&Access<'_>) -> bool + Send + Sync;

/// What a session asks to touch, for the authorization hook.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Resource<'a> {
    /// Pull or subscribe to a table.
    ReadTable(&'a str),
    /// Push changes to a table.
    WriteTable(&'a str),
    /// Update, leave or read a presence topic.
    Topic(&'a str),
    /// Join, leave or broadcast to a room.
    Room(&'a str),
}

/// One authorization question: may `node_id` (on `session`) touch `resource`?
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Access<'a> {
    /// The session asking.
    pub session: SessionId,
    /// Its node id, as the handshake settled it.
    pub node_id: &'a str,
    /// What it wants to touch.
    pub resource: Resource<'a>,
}

/// Everything a [`Server`](super::Server) can be told. `Default` gives the values of
/// docs/protocol.md section 10; for every limit and timer, 0 disables it.
///
/// ```
/// use std::time::Duration;
/// use syncmux::{AuthDecision, ServerConfig};
///
/// let mut config = ServerConfig::default();
/// config.rate_limit_burst = 20;
/// config.idle_timeout = Duration::from_secs(30);
/// let config = config.with_auth(|req| match req.token {
///     Some("s3cret") => AuthDecision::allow(Some("alice".into())),
///     _ => AuthDecision::deny(401, "bad token"),
/// });
/// assert_eq!(config.max_frame_len, 1 << 20);
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// The only request path accepted; `None` accepts any (the adapter may route). Other
    /// paths are refused with 404.
    pub path: Option<String>,
    /// Origins allowed to connect; `None` allows any. A handshake without an `Origin` (a
    /// native client, not a browser) is allowed; a listed origin must match exactly.
    pub allowed_origins: Option<Vec<String>>,
    /// The auth decision; `None` accepts everyone. When set, a handshake without a token is
    /// refused with 401 before the hook runs.
    pub auth: Option<Arc<AuthFn>>,
    /// The per table, topic and room authorization hook; `None` allows everything. A refusal
    /// is a `FORBIDDEN` error frame.
    pub authorize: Option<Arc<AuthorizeFn>>,
    /// Whether presence is served; when off, presence messages get `PRESENCE_DISABLED`.
    pub presence: bool,
    /// Whether this server shares its presence topics and rooms with other servers (README,
    /// "Scaling out over Redis"): it then reports every change of its sessions' presence and rooms
    /// as
    /// [`ServerEvent::PresenceChanged`](super::ServerEvent::PresenceChanged) and
    /// [`ServerEvent::RoomChanged`](super::ServerEvent::RoomChanged), for the application to
    /// pass on. What other servers report comes in through `Server::handle_remote_*` either
    /// way. Default `false`.
    pub shared_presence: bool,
    /// Most sessions at once; further handshakes are refused with 503. Default 100 000.
    pub max_sessions: usize,
    /// Longest inbound frame in bytes (`FRAME_TOO_LARGE`). Default 1 MiB.
    pub max_frame_len: usize,
    /// Oversized frames tolerated per session; the next one closes it with 1009. Default 1
    /// (the first gets an error frame, a repeat closes).
    pub max_oversized_frames: u32,
    /// Invalid frames (`INVALID_FRAME`, `INVALID_PAYLOAD`) tolerated per session; the next one
    /// closes it with 4400. Default 10.
    pub max_invalid_frames: u32,
    /// Requests (pull, push, subscribe with replay) in flight per session; over it:
    /// `RATE_LIMITED` "too many requests in flight". Default 64.
    pub max_in_flight: usize,
    /// Tables a session may subscribe to. Default 256.
    pub max_subscriptions: usize,
    /// Presence topics a session may be a member of. Default 64.
    pub max_topics: usize,
    /// Rooms a session may be in. Default 64.
    pub max_rooms: usize,
    /// Members a room may have (`ROOM_FULL`). Default 1000.
    pub max_room_size: usize,
    /// Outbound bytes per session: queued, plus handed out and not yet reported written when
    /// [`reports_writes`](ServerConfig::reports_writes) is on, plus live changes held back
    /// behind a replay. Over it the session is closed with 4503 (it loses nothing: it
    /// resumes from its cursor). Default 8 MiB.
    pub max_outbound_bytes: usize,
    /// Whether the embedder reports what its sockets have written with
    /// [`Server::handle_sent`](crate::Server::handle_sent). On, a frame counts against
    /// `max_outbound_bytes` until reported, so a socket that stops taking bytes makes its
    /// session a slow consumer; the native adapters turn it on. Off (the default), a frame
    /// counts as written once [`poll_transmit`](crate::Server::poll_transmit) hands it out,
    /// so an embedder that never calls `handle_sent` is never closed for it.
    pub reports_writes: bool,
    /// Most change records in one replay frame; longer replays are split. Default 500.
    pub max_changes_per_frame: usize,
    /// Token bucket size N: the burst, and the messages refilled per window. Default 100.
    pub rate_limit_burst: u32,
    /// The token bucket's window. Default 60 s.
    pub rate_limit_window: Duration,
    /// Close a session that sent no frame at all for this long (4408). Default 90 s.
    pub idle_timeout: Duration,
    /// A session leaves its presence topics after this long without a frame. Default 60 s.
    pub presence_ttl: Duration,
    /// Ping a session that has been silent this long. Default 30 s.
    pub ping_interval: Duration,
    /// Seed of the keyed hashers (and anything random): same seed, same run.
    pub seed: u64,
}

impl ServerConfig {
    with_auth!();

    /// Sets the authorization hook.
    pub fn with_authorize(
        mut self,
        authorize: impl Fn(&Access<'_>) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.authorize = Some(Arc::new(authorize));
        self
    }

    /// Checks that the values make sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.rate_limit_burst != 0 && self.rate_limit_window.is_zero() {
            return Err(ConfigError::RateLimitWindow);
        }
        if !self.ping_interval.is_zero()
            && !self.idle_timeout.is_zero()
            && self.ping_interval >= self.idle_timeout
        {
            return Err(ConfigError::PingAfterIdle {
                ping: self.ping_interval,
                idle: self.idle_timeout,
            });
        }
        Ok(())
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            path: None,
            allowed_origins: None,
            auth: None,
            authorize: None,
            presence: true,
            shared_presence: false,
            max_sessions: 100_000,
            max_frame_len: 1 << 20,
            max_oversized_frames: 1,
            max_invalid_frames: 10,
            max_in_flight: 64,
            max_subscriptions: 256,
            max_topics: 64,
            max_rooms: 64,
            max_room_size: 1000,
            max_outbound_bytes: 8 << 20,
            reports_writes: false,
            max_changes_per_frame: 500,
            rate_limit_burst: 100,
            rate_limit_window: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(90),
            presence_ttl: Duration::from_secs(60),
            ping_interval: Duration::from_secs(30),
            seed: 0,
        }
    }
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("path", &self.path)
            .field("allowed_origins", &self.allowed_origins)
            .field("auth", &self.auth.as_ref().map(|_| "Fn"))
            .field("authorize", &self.authorize.as_ref().map(|_| "Fn"))
            .field("presence", &self.presence)
            .field("max_sessions", &self.max_sessions)
            .field("max_frame_len", &self.max_frame_len)
            .field("max_oversized_frames", &self.max_oversized_frames)
            .field("max_invalid_frames", &self.max_invalid_frames)
            .field("max_in_flight", &self.max_in_flight)
            .field("max_subscriptions", &self.max_subscriptions)
            .field("max_topics", &self.max_topics)
            .field("max_rooms", &self.max_rooms)
            .field("max_room_size", &self.max_room_size)
            .field("max_outbound_bytes", &self.max_outbound_bytes)
            .field("reports_writes", &self.reports_writes)
            .field("max_changes_per_frame", &self.max_changes_per_frame)
            .field("rate_limit_burst", &self.rate_limit_burst)
            .field("rate_limit_window", &self.rate_limit_window)
            .field("idle_timeout", &self.idle_timeout)
            .field("presence_ttl", &self.presence_ttl)
            .field("ping_interval", &self.ping_interval)
            .field("seed", &self.seed)
            .finish()
    }
}
