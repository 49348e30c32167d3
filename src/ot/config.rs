//! Configuration of the OT server and client (the wire of `@open-ot/transport-websocket`).

use core::fmt;
use core::time::Duration;
use std::sync::Arc;

use crate::config::ConfigError;

use crate::server::{with_auth, AuthFn};

/// Everything an [`OtServer`](super::OtServer) can be told. `Default` gives the seed's
/// values (ping every 30 s, 100 messages per 60 s) and the limits below; for every limit and
/// timer, 0 disables it.
///
/// Memory is bounded by `max_documents` × (`max_document_len` + `max_history_bytes`) for
/// the documents, and `max_sessions` × `max_outbound_bytes` for the sessions.
///
/// ```
/// use syncmux::ot::OtServerConfig;
/// use syncmux::AuthDecision;
///
/// let config = OtServerConfig::default().with_auth(|req| match req.token {
///     Some("valid-token") => AuthDecision::allow(None),
///     _ => AuthDecision::deny(401, "bad token"),
/// });
/// assert_eq!(config.rate_limit_messages, 100);
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct OtServerConfig {
    /// The handshake's auth decision (the same hook as the sync endpoint's); `None` accepts
    /// everyone. When set, a handshake without a token (`?token=`, `?access_token=` or
    /// `Authorization: Bearer`) is refused with 401 before the hook runs.
    pub auth: Option<Arc<AuthFn>>,
    /// Origins allowed to connect, as the sync endpoint's
    /// [`allowed_origins`](crate::ServerConfig::allowed_origins): `None` allows any; a
    /// handshake from another `Origin` is refused with 403, one without an `Origin` (not a
    /// browser) is allowed.
    pub allowed_origins: Option<Vec<String>>,
    /// Most connections at once; further handshakes are refused with 503. Default 100 000.
    pub max_sessions: usize,
    /// Most documents, `doc-1` included. An op or snapshot request naming a new document
    /// beyond it gets an error frame — unless, with a [`shared_history`](Self::shared_history),
    /// a copy no session is a member of can be dropped to make room (the one idle longest;
    /// the shared history keeps it). Default 10 000.
    pub max_documents: usize,
    /// Most documents one connection may join, `doc-1` included; one more gets an error
    /// frame. Default 64.
    pub max_documents_per_session: usize,
    /// Ops kept per document to transform stale ops against. An op made at a revision older
    /// than the history gets an error frame telling the client to fetch a snapshot. Default
    /// 1000: a client may fall 1000 ops behind and still have its op transformed.
    pub max_history: usize,
    /// Bytes of ops kept per document (an estimate: inserted text plus a few words per
    /// component); the oldest go first. Default 8 MiB.
    pub max_history_bytes: usize,
    /// Longest document, in UTF-16 code units; an op that would make it longer gets an error
    /// frame. Default 4 Mi (4 194 304).
    pub max_document_len: u64,
    /// Most components in one op; more gets an error frame. Default 10 000.
    pub max_op_components: usize,
    /// Longest inbound message in bytes; a longer one gets an error frame (the connection
    /// stays open). Default 1 MiB.
    pub max_frame_len: usize,
    /// Longest `docId` in bytes. Default 256.
    pub max_doc_id_len: usize,
    /// Outbound bytes per connection, queued plus handed out and not yet reported written
    /// ([`OtServer::handle_sent`](super::OtServer::handle_sent)). A frame that would exceed
    /// it closes the connection with 4503 (its client fetches a snapshot when it comes
    /// back); a lone frame larger than the bound still goes out, so a large snapshot can.
    /// Default 8 MiB.
    pub max_outbound_bytes: usize,
    /// Events kept until polled; beyond it the oldest are dropped and counted
    /// ([`OtServer::dropped_events`](super::OtServer::dropped_events)). Default 65 536.
    pub max_events: usize,
    /// Messages per connection per window, as the seed counts them (a window starts with
    /// the connection, and anew with the first message after it ended). Each message past
    /// it is answered `Rate limit exceeded` and not processed. Default 100.
    pub rate_limit_messages: u32,
    /// The rate limit's window. Default 60 s.
    pub rate_limit_window: Duration,
    /// Longest time an op sent on to a member may be held back so that it leaves in one
    /// write with what that member gets next. A member that is editing gets the ops held
    /// for it at once with its next ack (answers to its own messages are never held); the
    /// others get theirs when the delay is over, all of them in one frame batch. Busy
    /// documents so cost one write per member per ack or per delay rather than one per op.
    /// Default 1 ms, far below what a person notices (the runtime's timer may add its own
    /// granularity: tokio's is a millisecond); zero sends every op on at once.
    pub broadcast_delay: Duration,
    /// How often to send a WebSocket ping. A connection that did not answer the previous
    /// ping when the next is due is terminated. Default 30 s.
    pub ping_interval: Duration,
    /// Seed of the keyed hasher of the document map (peer-chosen keys).
    pub seed: u64,
    /// The documents' history is shared with other servers and decided outside (see
    /// [`OtServer`'s shared history](super::OtServer#shared-history)): an op becomes an
    /// [`OtServerEvent::Commit`](super::OtServerEvent::Commit) that the application answers
    /// with [`OtServer::handle_committed`](super::OtServer::handle_committed). Default
    /// `false`: this server decides alone.
    pub shared_history: bool,
    /// With `shared_history`: most ops of one connection waiting for their commit; one more
    /// gets an error frame. Default 64.
    pub max_commits_in_flight: usize,
}

impl OtServerConfig {
    with_auth!();

    /// Checks that the values make sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.rate_limit_messages != 0 && self.rate_limit_window.is_zero() {
            return Err(ConfigError::RateLimitWindow);
        }
        Ok(())
    }
}

impl Default for OtServerConfig {
    fn default() -> Self {
        OtServerConfig {
            auth: None,
            allowed_origins: None,
            max_sessions: 100_000,
            max_documents: 10_000,
            max_documents_per_session: 64,
            max_history: 1000,
            max_history_bytes: 8 << 20,
            max_document_len: 4 << 20,
            max_op_components: 10_000,
            max_frame_len: 1 << 20,
            max_doc_id_len: 256,
            max_outbound_bytes: 8 << 20,
            max_events: 65_536,
            rate_limit_messages: 100,
            rate_limit_window: Duration::from_secs(60),
            broadcast_delay: Duration::from_millis(1),
            ping_interval: Duration::from_secs(30),
            seed: 0,
            shared_history: false,
            max_commits_in_flight: 64,
        }
    }
}

impl fmt::Debug for OtServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtServerConfig")
            .field("auth", &self.auth.as_ref().map(|_| "Fn"))
            .field("allowed_origins", &self.allowed_origins)
            .field("max_sessions", &self.max_sessions)
            .field("max_documents", &self.max_documents)
            .field("max_documents_per_session", &self.max_documents_per_session)
            .field("max_history", &self.max_history)
            .field("max_history_bytes", &self.max_history_bytes)
            .field("max_document_len", &self.max_document_len)
            .field("max_op_components", &self.max_op_components)
            .field("max_frame_len", &self.max_frame_len)
            .field("max_doc_id_len", &self.max_doc_id_len)
            .field("max_outbound_bytes", &self.max_outbound_bytes)
            .field("max_events", &self.max_events)
            .field("rate_limit_messages", &self.rate_limit_messages)
            .field("rate_limit_window", &self.rate_limit_window)
            .field("broadcast_delay", &self.broadcast_delay)
            .field("ping_interval", &self.ping_interval)
            .field("seed", &self.seed)
            .field("shared_history", &self.shared_history)
            .field("max_commits_in_flight", &self.max_commits_in_flight)
            .finish()
    }
}

/// Everything an [`OtClient`](super::OtClient) can be told.
///
/// ```
/// use syncmux::ot::OtClientConfig;
///
/// // The adapter picks a fresh random id per client: the core reads no entropy.
/// let config = OtClientConfig::new("3f9a0c1e5b7d2468").with_doc_id("notes");
/// assert_eq!(config.doc_id.as_deref(), Some("notes"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct OtClientConfig {
    /// The document; `None` is `doc-1` (frames then carry no `docId`, as the seed's do).
    pub doc_id: Option<String>,
    /// Makes the client's op ids (`<client_id>-<n>`) unique. It must differ for every
    /// client instance — a random string, such as 16 random bytes in hex — or the server may
    /// take a new op for an old one and drop it. At most 40 bytes, no control characters.
    pub client_id: String,
    /// The first delay before fetching the document again after the server refused a
    /// request; it doubles with each refusal in a row, up to `max_retry_delay`. Default 1 s.
    pub retry_delay: Duration,
    /// The longest retry delay. Default 30 s.
    pub max_retry_delay: Duration,
    /// Longest document, in UTF-16 code units: a local edit that would make it longer is
    /// refused. Default 4 Mi, the server's default.
    pub max_document_len: u64,
    /// Events kept until polled. Beyond it the queue is replaced by one
    /// [`OtClientEvent::Reset`](super::OtClientEvent::Reset). Default 4096.
    pub max_events: usize,
}

impl OtClientConfig {
    /// A configuration for `doc-1` with this client id and the defaults.
    pub fn new(client_id: impl Into<String>) -> Self {
        OtClientConfig {
            doc_id: None,
            client_id: client_id.into(),
            retry_delay: Duration::from_secs(1),
            max_retry_delay: Duration::from_secs(30),
            max_document_len: 4 << 20,
            max_events: 4096,
        }
    }

    /// Sets the document.
    #[must_use]
    pub fn with_doc_id(mut self, doc_id: impl Into<String>) -> Self {
        self.doc_id = Some(doc_id.into());
        self
    }

    /// Checks that the values make sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let id = &self.client_id;
        if id.is_empty() || id.len() > 40 || id.chars().any(char::is_control) {
            return Err(ConfigError::ClientId);
        }
        if self.doc_id.as_deref() == Some("") {
            return Err(ConfigError::EmptyDocId);
        }
        Ok(())
    }
}
