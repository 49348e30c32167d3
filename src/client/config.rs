//! Client configuration (docs/protocol.md section 11).

use core::time::Duration;

use crate::config::ConfigError;
use crate::wire::{CloseCode, DecodeLimits};

/// How a [`Client`](super::Client) connects, times out, backs off and bounds its memory.
///
/// `Default` gives the values of docs/protocol.md section 11 (the seed's: reconnect 5 s, maximum
/// reconnect delay 30 s, ping every 30 s) with an empty `url` and `node_id`; use
/// [`ClientConfig::new`] to set those. Check a hand-edited config with
/// [`ClientConfig::validate`] ([`Client::new`](super::Client::new) does).
///
/// A zero `Duration` disables the timer it names where the field says so.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The server's WebSocket URL (`ws://` or `wss://`). The client adds the `node_id` query
    /// parameter when it dials.
    pub url: String,
    /// This node's id: sent in the handshake and as `node_id` of every push.
    pub node_id: String,
    /// A bearer token, sent as `Authorization: Bearer <token>` (or, by a browser adapter, as
    /// the `access_token` query parameter). Default: none.
    pub token: Option<String>,
    /// The base reconnect delay: attempt k waits a delay drawn from `[d/2, d]`, where
    /// `d = min(max_reconnect_delay, reconnect_delay × 2^(k−1))`. Default 5 s.
    pub reconnect_delay: Duration,
    /// The ceiling of the reconnect delay. Default 30 s.
    pub max_reconnect_delay: Duration,
    /// Stop reconnecting (and close for good) after this many failed attempts in a row.
    /// Default: no limit.
    pub max_reconnect_attempts: Option<u32>,
    /// Close codes after which retrying cannot help: the client stops reconnecting and
    /// closes for good, with an event that says why. Default: 4401 (unauthorized), 4403
    /// (forbidden) and 4426 (protocol version mismatch).
    pub terminal_close_codes: Vec<CloseCode>,
    /// A connection that stays open this long is healthy: the attempt counter resets.
    /// Default: the reconnect delay, 5 s.
    pub healthy_after: Duration,
    /// Send a `ping` this often while open. Default 30 s; zero disables keepalive.
    pub ping_interval: Duration,
    /// After a keepalive ping, no frame at all from the server for this long means the
    /// connection is dead: the client closes it and reconnects. Default 10 s.
    pub pong_timeout: Duration,
    /// A request not answered this long after it was issued fails with `TIMEOUT`
    /// (time spent waiting offline counts). Default 30 s; zero disables request timeouts.
    pub request_timeout: Duration,
    /// Re-send pending pulls and pushes after a reconnect (they are idempotent) instead of
    /// failing them with `DISCONNECTED`. Default true.
    pub resend_idempotent: bool,
    /// Resume subscriptions after a reconnect from the newest server cursor seen (docs/protocol.md
    /// section 7, "Cursors"), next to the newest HLC. Off, they resume from the HLC alone, as
    /// a client of the seed protocol does: a change that reached the server late with an old
    /// HLC while this client was away is then never replayed to it. Turn it off only for a
    /// server that refuses cursors. Default true.
    pub resume_with_cursor: bool,
    /// Most application requests pending at once (sent, queued offline, or waiting to be
    /// re-sent). Over it a command fails at once with `TooManyInFlight`. Default 256.
    pub max_in_flight: usize,
    /// Most commands that wait while the client is not open. Over it a command fails at once
    /// with `QueueFull`; zero means fail fast (`NotConnected`) whenever the client is not open.
    /// Default 256.
    pub max_offline_queue: usize,
    /// Most events queued for [`poll_event`](super::Client::poll_event). Data from the server
    /// (changes, presence, rooms, unsolicited errors) that finds the queue full is not taken:
    /// the client closes the connection (4503, slow consumer) and later resumes from the last
    /// position it delivered, so nothing is lost. Request outcomes always fit (they are
    /// bounded by `max_in_flight`), and so do lifecycle events (the newest 32 unread are
    /// kept). Default 4096.
    pub max_queued_events: usize,
    /// Most frames queued for [`poll_transmit`](super::Client::poll_transmit). A command that
    /// finds it full fails with `QueueFull`; an answer to a server ping is dropped (the
    /// server's liveness check counts any frame). Default 1024.
    pub max_queued_transmits: usize,
    /// Most tables subscribed at once (`TooManySubscriptions` over it). Default 1024.
    pub max_subscriptions: usize,
    /// Most presence topics joined at once (`TooManyPresenceTopics` over it). Default 256.
    pub max_presence_topics: usize,
    /// Most rooms joined at once (`TooManyRooms` over it). Default 256.
    pub max_rooms: usize,
    /// Limits on frames from the server. Default: 16 MiB frames (pull responses can be
    /// large), depth 64.
    pub decode_limits: DecodeLimits,
    /// Seed of the backoff jitter: the same seed and inputs replay exactly. Default 0.
    pub seed: u64,
}

impl ClientConfig {
    /// The defaults, for the server at `url`, as node `node_id`.
    pub fn new(url: impl Into<String>, node_id: impl Into<String>) -> ClientConfig {
        ClientConfig {
            url: url.into(),
            node_id: node_id.into(),
            ..ClientConfig::default()
        }
    }

    /// Checks that the values make sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let scheme_ok = self.url.starts_with("ws://") || self.url.starts_with("wss://");
        if !scheme_ok {
            return Err(ConfigError::Url(self.url.clone()));
        }
        if self.node_id.is_empty() {
            return Err(ConfigError::EmptyNodeId);
        }
        if self.reconnect_delay.is_zero() {
            return Err(ConfigError::ZeroReconnectDelay);
        }
        if self.max_reconnect_delay < self.reconnect_delay {
            return Err(ConfigError::MaxDelayBelowDelay);
        }
        if !self.ping_interval.is_zero() && self.pong_timeout.is_zero() {
            return Err(ConfigError::ZeroPongTimeout);
        }
        let bounds = [
            ("max_in_flight", self.max_in_flight),
            ("max_queued_events", self.max_queued_events),
            ("max_queued_transmits", self.max_queued_transmits),
            ("max_subscriptions", self.max_subscriptions),
            ("max_presence_topics", self.max_presence_topics),
            ("max_rooms", self.max_rooms),
        ];
        if let Some((name, _)) = bounds.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::ZeroBound(name));
        }
        Ok(())
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        let reconnect_delay = Duration::from_millis(5000);
        ClientConfig {
            url: String::new(),
            node_id: String::new(),
            token: None,
            reconnect_delay,
            max_reconnect_delay: Duration::from_millis(30_000),
            max_reconnect_attempts: None,
            terminal_close_codes: vec![
                CloseCode::UNAUTHORIZED,
                CloseCode::FORBIDDEN,
                CloseCode::VERSION_MISMATCH,
            ],
            healthy_after: reconnect_delay,
            ping_interval: Duration::from_millis(30_000),
            pong_timeout: Duration::from_millis(10_000),
            request_timeout: Duration::from_millis(30_000),
            resend_idempotent: true,
            resume_with_cursor: true,
            max_in_flight: 256,
            max_offline_queue: 256,
            max_queued_events: 4096,
            max_queued_transmits: 1024,
            max_subscriptions: 1024,
            max_presence_topics: 256,
            max_rooms: 256,
            decode_limits: DecodeLimits::with_max_frame_len(16 << 20),
            seed: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_design_section_4() {
        let c = ClientConfig::new("ws://h/sync", "n1");
        assert_eq!(c.reconnect_delay, Duration::from_secs(5));
        assert_eq!(c.max_reconnect_delay, Duration::from_secs(30));
        assert_eq!(c.ping_interval, Duration::from_secs(30));
        assert_eq!(c.request_timeout, Duration::from_secs(30));
        assert_eq!(c.healthy_after, c.reconnect_delay);
        assert!(c.resume_with_cursor);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn validate_refuses_nonsense() {
        let ok = ClientConfig::new("wss://h", "n");
        let mut c = ok.clone();
        c.url = "http://h".into();
        assert_eq!(c.validate(), Err(ConfigError::Url("http://h".into())));
        let mut c = ok.clone();
        c.node_id.clear();
        assert_eq!(c.validate(), Err(ConfigError::EmptyNodeId));
        let mut c = ok.clone();
        c.reconnect_delay = Duration::ZERO;
        assert_eq!(c.validate(), Err(ConfigError::ZeroReconnectDelay));
        let mut c = ok.clone();
        c.max_reconnect_delay = Duration::from_secs(1);
        assert_eq!(c.validate(), Err(ConfigError::MaxDelayBelowDelay));
        let mut c = ok.clone();
        c.pong_timeout = Duration::ZERO;
        assert_eq!(c.validate(), Err(ConfigError::ZeroPongTimeout));
        c.ping_interval = Duration::ZERO;
        assert_eq!(c.validate(), Ok(()));
        let mut c = ok;
        c.max_rooms = 0;
        assert_eq!(c.validate(), Err(ConfigError::ZeroBound("max_rooms")));
    }
}
