//! Plain counters of what a [`Server`](super::Server) did, per transport, for an adapter to
//! export. The core takes no metrics crate: it counts, and the adapter turns
//! [`Server::stats_by_transport`](super::Server::stats_by_transport) into metrics when they
//! are scraped.
//!
//! Counted where every frame already passes: frames in once decoded, frames out and closes
//! as [`poll_transmit`](super::Server::poll_transmit) hands them out (so a frame dropped by
//! a closing session is not counted), deliveries where fan-out queues them.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::{Server, SessionId};
use crate::payload::ErrorPayload;
use crate::wire::{CloseCode, DecodeLimits, ErrorCode, Frame, MessageType};

const TYPES: usize = MessageType::ALL.len();

/// Counters since the server was made (they only grow), and the sessions open now. Returned
/// by [`Server::stats`](super::Server::stats) for every transport together and by
/// [`Server::stats_by_transport`](super::Server::stats_by_transport) for each.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ServerStats {
    /// By `MessageType as usize` (its place in `MessageType::ALL`): counted per frame, on
    /// the fan-out path too, so an index rather than a map.
    frames_in: [u64; TYPES],
    frames_out: [u64; TYPES],
    errors: Vec<(ErrorCode, u64)>,
    closes: BTreeMap<CloseCode, u64>,
    /// Sessions open now (or closing): accepted and not yet closed or disconnected.
    pub sessions_open: u64,
    /// Sessions opened (accepted at a version the server speaks).
    pub sessions_opened: u64,
    /// Opened sessions that their peer or transport ended (the server sent no close).
    pub peer_closes: u64,
    /// Messages refused by a session's rate limit (each answered `RATE_LIMITED`).
    pub rate_limited: u64,
    /// Live change frames queued for subscribers by fan-out (one per recipient; replays
    /// not included).
    pub deliveries: u64,
    /// Subscribe replays answered (a subscribe without `since` or `cursor` included).
    pub replays: u64,
    /// Change records in those replays, in all.
    pub replayed_changes: u64,
}

impl ServerStats {
    /// Text frames received that decoded, by type (the rest are answered with error frames,
    /// counted in [`errors`](Self::errors)).
    pub fn frames_in(&self) -> impl Iterator<Item = (MessageType, u64)> + '_ {
        counted(&self.frames_in)
    }

    /// Decoded frames received of one type.
    pub fn frames_in_of(&self, kind: MessageType) -> u64 {
        self.frames_in[kind as usize]
    }

    /// Frames handed out by [`poll_transmit`](super::Server::poll_transmit), by type.
    pub fn frames_out(&self) -> impl Iterator<Item = (MessageType, u64)> + '_ {
        counted(&self.frames_out)
    }

    /// Frames handed out of one type.
    pub fn frames_out_of(&self, kind: MessageType) -> u64 {
        self.frames_out[kind as usize]
    }

    /// Error frames handed out, by code, in code order.
    pub fn errors(&self) -> impl Iterator<Item = (&ErrorCode, u64)> + '_ {
        self.errors.iter().map(|(k, n)| (k, *n))
    }

    /// Sessions closed by the server (the close handed out), by close code. Sessions whose
    /// peer or transport ended them are not here: the server sends them no close.
    pub fn closes(&self) -> impl Iterator<Item = (CloseCode, u64)> + '_ {
        self.closes.iter().map(|(k, n)| (*k, *n))
    }

    /// Sessions closed by the server with one code.
    pub fn closes_of(&self, code: CloseCode) -> u64 {
        self.closes.get(&code).copied().unwrap_or(0)
    }

    /// Adds `other`'s counts to these.
    fn add(&mut self, other: &ServerStats) {
        for (mine, theirs) in self.frames_in.iter_mut().zip(&other.frames_in) {
            *mine += theirs;
        }
        for (mine, theirs) in self.frames_out.iter_mut().zip(&other.frames_out) {
            *mine += theirs;
        }
        for (code, n) in &other.errors {
            self.error(code, *n);
        }
        for (code, n) in &other.closes {
            *self.closes.entry(*code).or_default() += n;
        }
        let ServerStats {
            sessions_open,
            sessions_opened,
            peer_closes,
            rate_limited,
            deliveries,
            replays,
            replayed_changes,
            ..
        } = other;
        self.sessions_open += sessions_open;
        self.sessions_opened += sessions_opened;
        self.peer_closes += peer_closes;
        self.rate_limited += rate_limited;
        self.deliveries += deliveries;
        self.replays += replays;
        self.replayed_changes += replayed_changes;
    }

    /// Counts `n` error frames of `code`.
    fn error(&mut self, code: &ErrorCode, n: u64) {
        match self.errors.iter_mut().find(|(c, _)| c == code) {
            Some((_, count)) => *count += n,
            None => {
                self.errors.push((code.clone(), n));
                self.errors.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
            }
        }
    }

    pub(crate) fn frame_in(&mut self, kind: MessageType) {
        self.frames_in[kind as usize] += 1;
    }

    pub(crate) fn replayed(&mut self, changes: usize) {
        self.replays += 1;
        self.replayed_changes += changes as u64;
    }

    /// Counts a frame `poll_transmit` hands out, of type `kind` (known where it was queued).
    pub(crate) fn sent(&mut self, kind: MessageType, bytes: &Bytes) {
        self.frames_out[kind as usize] += 1;
        if kind == MessageType::Error {
            // Rare: decoding the frame again costs nothing that matters here, and keeps the
            // queues free of anything but the frame and its type.
            let limits = DecodeLimits::with_max_frame_len(0);
            let code = Frame::decode(bytes.clone(), &limits)
                .ok()
                .and_then(|f| f.payload::<ErrorPayload>().ok())
                .map_or(ErrorCode::Internal, |p| p.code);
            self.error(&code, 1);
        }
    }

    /// Counts a session closed by `poll_transmit`'s close, with its code.
    pub(crate) fn closed(&mut self, code: CloseCode) {
        *self.closes.entry(code).or_default() += 1;
    }
}

/// The types counted at least once, in `MessageType::ALL` order.
fn counted(by_type: &[u64; TYPES]) -> impl Iterator<Item = (MessageType, u64)> + '_ {
    MessageType::ALL
        .iter()
        .zip(by_type)
        .filter(|(_, n)| **n > 0)
        .map(|(kind, n)| (*kind, *n))
}

/// The type of a frame the server encoded: `Frame::encode` always writes `{"type":"NAME"`
/// first.
pub(crate) fn kind_of(bytes: &[u8]) -> MessageType {
    read_kind(bytes).expect("invariant: every frame the server queues comes from Frame::encode")
}

fn read_kind(bytes: &[u8]) -> Option<MessageType> {
    let rest = bytes.strip_prefix(br#"{"type":""#)?;
    let end = rest.iter().position(|&b| b == b'"')?;
    MessageType::from_wire(core::str::from_utf8(&rest[..end]).ok()?)
}

impl Server {
    /// What the server did so far over every transport: frames in and out by type, error
    /// frames by code, closes by code, sessions, rate-limited messages, deliveries and
    /// replays (see [`ServerStats`]).
    pub fn stats(&self) -> ServerStats {
        let mut total = ServerStats::default();
        for (_, stats) in &self.stats {
            total.add(stats);
        }
        total
    }

    /// [`stats`](Self::stats) of each transport sessions ran over
    /// ([`Handshake::transport`](super::Handshake::transport)), in the order each was first
    /// seen (`"websocket"` always first).
    pub fn stats_by_transport(&self) -> impl Iterator<Item = (&'static str, &ServerStats)> + '_ {
        self.stats
            .iter()
            .map(|(transport, stats)| (*transport, stats))
    }

    /// The transport a session runs over (`None`: no such session).
    pub fn transport_of(&self, session: SessionId) -> Option<&'static str> {
        let session = self.sessions.get(session)?;
        Some(self.stats[session.transport].0)
    }

    /// The counters of `session`'s transport (the first transport's if it is gone).
    pub(crate) fn counters(&mut self, session: SessionId) -> &mut ServerStats {
        let at = self.sessions.get(session).map_or(0, |s| s.transport);
        &mut self.stats[at].1
    }

    /// The place of `transport`'s counters, made on its first session.
    pub(crate) fn transport_index(&mut self, transport: &'static str) -> usize {
        match self.stats.iter().position(|(t, _)| *t == transport) {
            Some(at) => at,
            None => {
                self.stats.push((transport, ServerStats::default()));
                self.stats.len() - 1
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{Handshake, HandshakeOutcome, ServerConfig};
    use crate::time::Instant;
    use bytes::Bytes;

    #[test]
    fn every_frame_type_is_read_back_from_its_encoding() {
        for kind in MessageType::ALL {
            let bytes = crate::wire::Frame::encode(*kind, None, &()).expect("encodes");
            assert_eq!(read_kind(&bytes), Some(*kind), "{bytes:?}");
        }
        assert_eq!(read_kind(b"{\"type\":\"nope\"}"), None);
        for (i, kind) in MessageType::ALL.iter().enumerate() {
            assert_eq!(*kind as usize, i, "{kind:?} indexes its counters");
        }
        assert_eq!(read_kind(b""), None);
    }

    #[test]
    fn frames_errors_rate_limits_and_closes_are_counted() {
        let config = ServerConfig {
            rate_limit_burst: 2,
            ..ServerConfig::default()
        };
        let mut server = Server::new(config).expect("valid");
        let now = Instant::ZERO;
        let HandshakeOutcome::Accept { session, .. } =
            server.handle_handshake(now, &Handshake::new("/", "node_id=a"))
        else {
            panic!("refused")
        };
        server.handle_message(
            now,
            session,
            Bytes::from_static(br#"{"type":"ping","id":"1"}"#),
        );
        server.handle_message(now, session, Bytes::from_static(b"not json"));
        server.handle_message(
            now,
            session,
            Bytes::from_static(br#"{"type":"ping","id":"2"}"#),
        );
        server.close_session(now, session, CloseCode::NORMAL, "bye");
        while server.poll_transmit().is_some() {}
        let stats = server.stats();
        // Received and decoded, the rate-limited one included.
        assert_eq!(stats.frames_in_of(MessageType::Ping), 2);
        assert_eq!(stats.frames_out_of(MessageType::Pong), 1);
        assert_eq!(stats.frames_out_of(MessageType::Error), 2);
        let errors: Vec<_> = stats.errors().map(|(c, n)| (c.as_str(), n)).collect();
        assert_eq!(errors, [("INVALID_FRAME", 1), ("RATE_LIMITED", 1)]);
        assert_eq!(stats.rate_limited, 1);
        assert_eq!(stats.closes_of(CloseCode::NORMAL), 1);
    }

    /// Each session's frames, closes and sessions count under its handshake's transport;
    /// `stats` is their sum.
    #[test]
    fn stats_are_kept_per_transport() {
        let mut server = Server::new(ServerConfig::default()).expect("valid");
        let now = Instant::ZERO;
        let mut open = |query: &str, transport: &'static str| {
            let mut handshake = Handshake::new("/", query);
            handshake.transport = transport;
            match server.handle_handshake(now, &handshake) {
                HandshakeOutcome::Accept { session, .. } => session,
                HandshakeOutcome::Reject { reason, .. } => panic!("{reason}"),
            }
        };
        let (ws, sse, other) = (
            open("node_id=a", "websocket"),
            open("node_id=b", "sse"),
            open("node_id=c", "sse"),
        );
        assert_eq!(server.transport_of(sse), Some("sse"));
        assert_eq!(server.transport_of(ws), Some("websocket"));
        let ping = Bytes::from_static(br#"{"type":"ping","id":"1"}"#);
        server.handle_message(now, ws, ping.clone());
        server.handle_message(now, sse, ping.clone());
        server.handle_message(now, sse, Bytes::from_static(br#"{"type":"ping","id":"2"}"#));
        server.close_session(now, sse, CloseCode::NORMAL, "bye");
        server.handle_disconnected(now, other);
        while server.poll_transmit().is_some() {}

        let by: Vec<_> = server.stats_by_transport().collect();
        let labels: Vec<_> = by.iter().map(|(t, _)| *t).collect();
        assert_eq!(labels, ["websocket", "sse"]);
        let (websocket, sse) = (by[0].1, by[1].1);
        assert_eq!(websocket.frames_in_of(MessageType::Ping), 1);
        assert_eq!(sse.frames_in_of(MessageType::Ping), 2);
        assert_eq!(sse.frames_out_of(MessageType::Pong), 2);
        assert_eq!(sse.closes_of(CloseCode::NORMAL), 1);
        assert_eq!(websocket.closes_of(CloseCode::NORMAL), 0);
        assert_eq!(
            (sse.sessions_opened, sse.sessions_open, sse.peer_closes),
            (2, 0, 1)
        );
        assert_eq!((websocket.sessions_opened, websocket.sessions_open), (1, 1));
        let total = server.stats();
        assert_eq!(total.frames_in_of(MessageType::Ping), 3);
        assert_eq!(total.frames_out_of(MessageType::Pong), 3);
        assert_eq!((total.sessions_opened, total.sessions_open), (3, 1));
        assert_eq!(total.closes_of(CloseCode::NORMAL), 1);
    }
}
