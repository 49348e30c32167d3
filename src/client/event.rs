//! What the client gives back: transport actions, events, and the typed handles they carry.

use core::fmt;
use core::time::Duration;

use bytes::Bytes;

use super::error::RequestError;
use crate::payload::{
    ChangeRecord, Cursor, PresenceEvent, PresenceSnapshot, PullResponse, PushResponse, RawJson,
    ResumeAck, RoomEvent,
};
use crate::wire::{CloseCode, ErrorCode, Frame};

/// The handle of one request, returned by the command that issued it and carried by its
/// outcome. On the wire it is the decimal number, unique for the client's lifetime.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct RequestId(pub(crate) u64);

impl RequestId {
    /// The number (also the wire id, in decimal).
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where the connection stands (docs/protocol.md section 11).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
// Exhaustive on purpose: these are the protocol's client states, and an embedder names each.
pub enum ClientState {
    /// Created, never asked to connect.
    Idle,
    /// A dial is under way (a [`ClientTransmit::Connect`] went out).
    Connecting,
    /// The transport is open.
    Open,
    /// Waiting out a backoff delay before the next dial.
    WaitingToReconnect,
    /// Closed for good; only [`Client::connect`](super::Client::connect) starts again.
    Closed,
}

/// What the adapter must do with the transport: open it, send a frame on it, or close it.
#[derive(Clone, PartialEq, Eq, Debug)]
// Exhaustive on purpose: every embedder acts on every variant, so a new one is a breaking
// change that the compiler must point out, not a silent `_` arm.
pub enum ClientTransmit {
    /// Open a WebSocket as described, then report [`handle_connected`] or, if it fails,
    /// [`handle_disconnected`].
    ///
    /// [`handle_connected`]: super::Client::handle_connected
    /// [`handle_disconnected`]: super::Client::handle_disconnected
    Connect(DialRequest),
    /// Send this text frame.
    Frame(Bytes),
    /// Close the transport with this code and reason. The client already counts the
    /// connection as gone: don't report its closing with `handle_disconnected`.
    Close {
        /// The close code.
        code: CloseCode,
        /// The close reason.
        reason: String,
    },
}

/// How to open the WebSocket (docs/protocol.md section 3, "Opening a connection").
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DialRequest {
    /// The server URL with the `node_id` query parameter added.
    pub url: String,
    /// Subprotocols to offer: `["syncmux.v1"]`.
    pub protocols: Vec<&'static str>,
    /// Handshake headers for native clients: `X-Node-Id`, and `Authorization: Bearer <token>`
    /// when a token is configured.
    pub headers: Vec<(&'static str, String)>,
    /// The token, for adapters that cannot set headers (see [`DialRequest::url_with_token`]).
    pub token: Option<String>,
}

impl DialRequest {
    /// The dial a [`Client`](super::Client) would ask for: `base` with `node_id` in its query,
    /// the protocol version offered, and the token as a bearer header. Clients make these
    /// themselves; this is for an embedder's tests of its own dialer.
    pub fn new(base: &str, node_id: &str, token: Option<&str>) -> DialRequest {
        let mut headers = vec![("X-Node-Id", node_id.to_owned())];
        if let Some(token) = token {
            headers.push(("Authorization", format!("Bearer {token}")));
        }
        DialRequest {
            url: with_query(base, "node_id", node_id),
            protocols: vec![Frame::SUBPROTOCOL],
            headers,
            token: token.map(str::to_owned),
        }
    }

    /// The URL with the token added as the `access_token` query parameter, for browsers,
    /// which cannot set WebSocket headers. Without a token, the plain URL.
    pub fn url_with_token(&self) -> String {
        match &self.token {
            Some(token) => with_query(&self.url, "access_token", token),
            None => self.url.clone(),
        }
    }

    /// The URLs of the fallback over an SSE stream and POSTs (docs/protocol.md section 2.3)
    /// for the WebSocket URL `url`: `ws`/`wss` as `http`/`https`, the path's last segment
    /// `ws` as `sse` (the stream's, the query kept) and as `send` (the POSTs', no query); a
    /// path that does not end in `/ws` gets `/sse` and `/send` appended.
    pub fn fallback_urls(url: &str) -> (String, String) {
        let http = match url.strip_prefix("ws") {
            Some(rest) => format!("http{rest}"),
            None => url.to_owned(),
        };
        let (base, query) = http.split_once('?').unwrap_or((&http, ""));
        let base = base
            .strip_suffix("/ws")
            .unwrap_or(base.trim_end_matches('/'));
        let stream = match query {
            "" => format!("{base}/sse"),
            query => format!("{base}/sse?{query}"),
        };
        (stream, format!("{base}/send"))
    }
}

/// Appends `key=value` to the query of `url` (before any `#fragment`), percent-encoding the
/// value. Written by hand: ten lines do not justify a URL crate in the core.
fn with_query(url: &str, key: &str, value: &str) -> String {
    let (head, fragment) = match url.find('#') {
        Some(at) => url.split_at(at),
        None => (url, ""),
    };
    let sep = if !head.contains('?') {
        "?"
    } else if head.ends_with('?') || head.ends_with('&') {
        ""
    } else {
        "&"
    };
    let mut out = String::with_capacity(url.len() + key.len() + value.len() + 2);
    out.push_str(head);
    out.push_str(sep);
    out.push_str(key);
    out.push('=');
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.push_str(fragment);
    out
}

/// Why the client closed for good.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum CloseReason {
    /// The application called [`Client::close`](super::Client::close).
    Local,
    /// The server closed with a code that retrying cannot help (4401, 4403, 4426).
    Server {
        /// The close code.
        code: CloseCode,
        /// The close reason.
        reason: String,
    },
    /// The server selected a subprotocol other than `syncmux.v1`.
    ProtocolMismatch {
        /// What it selected.
        selected: String,
    },
    /// `max_reconnect_attempts` dials failed in a row.
    MaxAttempts {
        /// How many.
        attempts: u32,
    },
}

/// The typed answer to a request.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Response {
    /// To a pull.
    Pull(PullResponse),
    /// To a push.
    Push(PushResponse),
    /// To a subscribe, unsubscribe, presence update or leave, or room action: `Some` for a
    /// subscribe that resumed from `since` or `cursor`.
    Ack(Option<ResumeAck>),
    /// To a presence get.
    PresenceSnapshot(PresenceSnapshot),
    /// To a ping: the echoed payload.
    Pong(RawJson),
}

/// Something the application should know, drained with
/// [`Client::poll_event`](super::Client::poll_event).
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The transport opened; subscriptions, presence and rooms are being restored.
    Connected,
    /// The transport closed, or a dial failed (`code` is the close code when there was one).
    Disconnected {
        /// The close code.
        code: Option<CloseCode>,
        /// Why.
        reason: String,
    },
    /// The client will dial again after `delay` (attempt counts from 1 since the last
    /// healthy connection).
    Reconnecting {
        /// The attempt number.
        attempt: u32,
        /// The backoff delay.
        delay: Duration,
    },
    /// The client stopped for good.
    Closed {
        /// Why.
        reason: CloseReason,
    },
    /// An `error` frame that answers none of the application's requests, or a frame the client
    /// could not read.
    Error {
        /// The code.
        code: ErrorCode,
        /// The explanation.
        message: String,
    },
    /// The one outcome of a request.
    Response {
        /// The request.
        id: RequestId,
        /// Its answer, or why it failed.
        outcome: Result<Response, RequestError>,
    },
    /// Live changes (a `change` or `changes` frame).
    Changes {
        /// The subscribe requests that asked for these changes' tables (sorted, no
        /// duplicates; empty for a table no longer subscribed).
        subscriptions: Vec<RequestId>,
        /// The records, in the order the server sent them.
        changes: Vec<ChangeRecord>,
        /// The server position of the last record, when the server has cursors (a replay
        /// by `since` alone has none: its frames are not resume points).
        cursor: Option<Cursor>,
    },
    /// A presence member joined, updated or left.
    Presence(PresenceEvent),
    /// A room event.
    Room(RoomEvent),
    /// A subscription restored after a reconnect could not be resumed without a gap
    /// (`recovered: false`): the application must resynchronise these tables.
    ResyncNeeded {
        /// The tables.
        tables: Vec<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dial_request_adds_node_id_and_token() {
        let d = DialRequest::new("wss://h/sync?x=1#f", "n 1&", Some("t/k"));
        assert_eq!(d.url, "wss://h/sync?x=1&node_id=n%201%26#f");
        assert_eq!(
            d.url_with_token(),
            "wss://h/sync?x=1&node_id=n%201%26&access_token=t%2Fk#f"
        );
        assert_eq!(d.protocols, ["syncmux.v1"]);
        assert_eq!(
            d.headers,
            [
                ("X-Node-Id", "n 1&".to_owned()),
                ("Authorization", "Bearer t/k".to_owned())
            ]
        );
        let d = DialRequest::new("ws://h", "n", None);
        assert_eq!(d.url_with_token(), "ws://h?node_id=n");
        assert_eq!(d.headers.len(), 1);
    }
}
