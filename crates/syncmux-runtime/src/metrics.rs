//! The server's metrics, through the [`metrics`] facade. Without a recorder
//! installed (`metrics::set_global_recorder`, done by an exporter) every call here is a
//! no-op, so a server that exports nothing pays a relaxed atomic load per call.
//!
//! Every metric carries the label `transport`: the transport of the session it counts
//! ([`Handshake::transport`](syncmux::Handshake::transport): `websocket`, `sse`, `http`).
//!
//! | metric | kind | labels | what |
//! |---|---|---|---|
//! | `syncmux_sessions_open` | gauge | | sessions open now |
//! | `syncmux_sessions_opened_total` | counter | | sessions opened |
//! | `syncmux_handshakes_total` | counter | `result` (`accepted`, `rejected`), `status` | handshakes decided, rejections by HTTP status |
//! | `syncmux_frames_in_total` | counter | `type` | text frames received that decoded, by type |
//! | `syncmux_frames_out_total` | counter | `type` | frames sent, by type |
//! | `syncmux_deliveries_total` | counter | | live change frames queued for subscribers (one per recipient) |
//! | `syncmux_error_frames_total` | counter | `code` | error frames sent, by code |
//! | `syncmux_closes_total` | counter | `code` | sessions the server closed, by close code |
//! | `syncmux_peer_closes_total` | counter | | sessions their peer or transport ended |
//! | `syncmux_rate_limited_total` | counter | | messages refused by the rate limit |
//! | `syncmux_slow_consumer_closes_total` | counter | | sessions closed as slow consumers (4503) |
//! | `syncmux_replay_changes` | histogram | | change records per subscribe replay |
//! | `syncmux_store_seconds` | histogram | `op` (`pull`, `push`, `replay`) | time the store took to answer, measured around the input that it answered |
//!
//! The counters the state machine keeps ([`ServerStats`]) are copied into the facade by
//! [`SyncServer::publish_metrics`](crate::SyncServer::publish_metrics), which an exporter
//! calls before it renders; the rest are recorded as they happen.

use core::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};

use syncmux::wire::{CloseCode, MessageType};
use syncmux::{Server, ServerStats, SessionId};

/// Sessions open now.
pub(crate) const SESSIONS_OPEN: &str = "syncmux_sessions_open";
/// Sessions opened.
pub(crate) const SESSIONS_OPENED: &str = "syncmux_sessions_opened_total";
/// Handshakes decided, by `result` and (rejections) `status`.
pub(crate) const HANDSHAKES: &str = "syncmux_handshakes_total";
/// Decoded frames received, by `type`.
pub(crate) const FRAMES_IN: &str = "syncmux_frames_in_total";
/// Frames sent, by `type`.
pub(crate) const FRAMES_OUT: &str = "syncmux_frames_out_total";
/// Live change frames queued for subscribers.
pub(crate) const DELIVERIES: &str = "syncmux_deliveries_total";
/// Error frames sent, by `code`.
pub(crate) const ERROR_FRAMES: &str = "syncmux_error_frames_total";
/// Sessions closed by the server, by close `code`.
pub(crate) const CLOSES: &str = "syncmux_closes_total";
/// Sessions ended by their peer or transport.
pub(crate) const PEER_CLOSES: &str = "syncmux_peer_closes_total";
/// Messages refused by the rate limit.
pub(crate) const RATE_LIMITED: &str = "syncmux_rate_limited_total";
/// Sessions closed as slow consumers.
pub(crate) const SLOW_CONSUMER_CLOSES: &str = "syncmux_slow_consumer_closes_total";
/// Change records per subscribe replay (histogram).
pub(crate) const REPLAY_CHANGES: &str = "syncmux_replay_changes";
/// Time the store took to answer, by `op` (histogram, seconds).
pub(crate) const STORE_SECONDS: &str = "syncmux_store_seconds";

/// Suggested histogram buckets for [`REPLAY_CHANGES`].
const REPLAY_CHANGES_BUCKETS: &[f64] = &[0.0, 1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0];
/// Suggested histogram buckets for [`STORE_SECONDS`].
const STORE_SECONDS_BUCKETS: &[f64] = &[
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
];

/// The histograms (the names of the table above) and the buckets suggested for each, for an
/// exporter that needs them set up front (Prometheus's).
pub fn histograms() -> [(&'static str, &'static [f64]); 2] {
    [
        (REPLAY_CHANGES, REPLAY_CHANGES_BUCKETS),
        (STORE_SECONDS, STORE_SECONDS_BUCKETS),
    ]
}

/// Gives every metric its help text and unit, in the recorder installed now (call it once,
/// after installing an exporter's recorder).
pub fn describe() {
    describe_gauge!(SESSIONS_OPEN, "Sessions open now.");
    describe_counter!(SESSIONS_OPENED, "Sessions opened.");
    describe_counter!(
        HANDSHAKES,
        "Handshakes decided: accepted, or rejected with an HTTP status."
    );
    describe_counter!(FRAMES_IN, "Text frames received that decoded, by type.");
    describe_counter!(FRAMES_OUT, "Frames sent, by type.");
    describe_counter!(
        DELIVERIES,
        "Live change frames queued for subscribers (one per recipient)."
    );
    describe_counter!(ERROR_FRAMES, "Error frames sent, by code.");
    describe_counter!(CLOSES, "Sessions the server closed, by close code.");
    describe_counter!(PEER_CLOSES, "Sessions their peer or transport ended.");
    describe_counter!(RATE_LIMITED, "Messages refused by the rate limit.");
    describe_counter!(
        SLOW_CONSUMER_CLOSES,
        "Sessions closed as slow consumers (4503)."
    );
    describe_histogram!(REPLAY_CHANGES, "Change records per subscribe replay.");
    describe_histogram!(
        STORE_SECONDS,
        Unit::Seconds,
        "Time the store took to answer, by operation."
    );
}

/// Copies the state machine's counters (of each transport) into the facade.
pub(crate) fn publish(by_transport: &[(&'static str, ServerStats)]) {
    for (transport, stats) in by_transport {
        let (transport, t) = (*transport, ("transport", *transport));
        gauge!(SESSIONS_OPEN, &[t]).set(stats.sessions_open as f64);
        counter!(SESSIONS_OPENED, &[t]).absolute(stats.sessions_opened);
        for (kind, n) in stats.frames_in() {
            counter!(FRAMES_IN, &[t, ("type", kind.as_str())]).absolute(n);
        }
        for (kind, n) in stats.frames_out() {
            counter!(FRAMES_OUT, &[t, ("type", kind.as_str())]).absolute(n);
        }
        for (code, n) in stats.errors() {
            let labels = [
                ("transport", transport.to_owned()),
                ("code", code.as_str().to_owned()),
            ];
            counter!(ERROR_FRAMES, &labels).absolute(n);
        }
        for (code, n) in stats.closes() {
            let labels = [
                ("transport", transport.to_owned()),
                ("code", code.0.to_string()),
            ];
            counter!(CLOSES, &labels).absolute(n);
        }
        counter!(DELIVERIES, &[t]).absolute(stats.deliveries);
        counter!(PEER_CLOSES, &[t]).absolute(stats.peer_closes);
        counter!(RATE_LIMITED, &[t]).absolute(stats.rate_limited);
        let slow = stats.closes_of(CloseCode::SLOW_CONSUMER);
        counter!(SLOW_CONSUMER_CLOSES, &[t]).absolute(slow);
    }
}

/// A handshake for `transport` the state machine decided: accepted, or rejected with this
/// HTTP status.
pub(crate) fn handshake(transport: &'static str, rejected: Option<u16>) {
    let t = ("transport", transport);
    match rejected {
        None => counter!(HANDSHAKES, &[t, ("result", "accepted")]).increment(1),
        Some(status) => {
            let labels = [
                ("transport", transport.to_owned()),
                ("result", "rejected".to_owned()),
                ("status", status.to_string()),
            ];
            counter!(HANDSHAKES, &labels).increment(1);
        }
    }
}

/// The store's work, as far as the counters show it: answers sent and replays answered.
#[derive(Clone, Copy)]
pub(crate) struct StoreWork {
    transport: &'static str,
    pulls: u64,
    pushes: u64,
    replays: u64,
    replayed_changes: u64,
}

impl StoreWork {
    /// The work so far on `session`'s transport (`None`: no such session).
    pub(crate) fn of(server: &Server, session: SessionId) -> Option<StoreWork> {
        StoreWork::on(server, server.transport_of(session)?)
    }

    fn on(server: &Server, transport: &'static str) -> Option<StoreWork> {
        let (_, stats) = server.stats_by_transport().find(|(t, _)| *t == transport)?;
        Some(StoreWork::counted(transport, stats))
    }

    fn counted(transport: &'static str, stats: &ServerStats) -> StoreWork {
        StoreWork {
            transport,
            pulls: stats.frames_out_of(MessageType::PullResponse),
            pushes: stats.frames_out_of(MessageType::PushResponse),
            replays: stats.replays,
            replayed_changes: stats.replayed_changes,
        }
    }

    /// Records what the store answered on the same transport since this was counted,
    /// during an input that took `took` (the driver answers inside the input, so that is
    /// the store's time plus decoding).
    pub(crate) fn record_until(self, server: &Server, took: Duration) {
        let (before, t) = (self, ("transport", self.transport));
        let Some(now) = StoreWork::on(server, self.transport) else {
            return;
        };
        let secs = took.as_secs_f64();
        if now.pulls > before.pulls {
            histogram!(STORE_SECONDS, &[t, ("op", "pull")]).record(secs);
        }
        if now.pushes > before.pushes {
            histogram!(STORE_SECONDS, &[t, ("op", "push")]).record(secs);
        }
        let replays = now.replays.saturating_sub(before.replays);
        if replays > 0 {
            histogram!(STORE_SECONDS, &[t, ("op", "replay")]).record(secs);
            let changes = now.replayed_changes.saturating_sub(before.replayed_changes);
            // One input answers one subscribe; should several be answered at once, each is
            // recorded with their mean.
            let each = changes as f64 / replays as f64;
            for _ in 0..replays {
                histogram!(REPLAY_CHANGES, &[t]).record(each);
            }
        }
    }
}
