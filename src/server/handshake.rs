//! The WebSocket handshake as the server sees it (docs/protocol.md section 3: version, auth,
//! identity), and the pure parts of deciding it.

use std::borrow::Cow;

use super::SessionId;
use crate::wire::Frame;

/// What an adapter read from the HTTP upgrade request (or the request that opens a session
/// on another transport).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Handshake {
    /// The request path, without the query (`/sync`).
    pub path: String,
    /// The raw query string, without the `?` (`node_id=n1&access_token=abc`).
    pub query: String,
    /// Every header, as sent (names are compared case-insensitively).
    pub headers: Vec<(String, String)>,
    /// The offered subprotocols, in order (`Sec-WebSocket-Protocol`; comma-separated
    /// entries are split).
    pub protocols: Vec<String>,
    /// The `Origin` header, if any.
    pub origin: Option<String>,
    /// The transport the session runs over, as metrics name it: `"websocket"` (the default),
    /// `"sse"`, `"http"`, or a label of the embedder's. The server counts its
    /// [`ServerStats`](super::ServerStats) per transport
    /// ([`Server::stats_by_transport`](super::Server::stats_by_transport)).
    pub transport: &'static str,
}

impl Default for Handshake {
    fn default() -> Handshake {
        Handshake {
            path: String::new(),
            query: String::new(),
            headers: Vec::new(),
            protocols: Vec::new(),
            origin: None,
            transport: "websocket",
        }
    }
}

impl Handshake {
    /// A handshake for `path?query` with nothing else.
    pub fn new(path: impl Into<String>, query: impl Into<String>) -> Self {
        Handshake {
            path: path.into(),
            query: query.into(),
            ..Handshake::default()
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Adds an offered subprotocol.
    pub fn protocol(mut self, protocol: impl Into<String>) -> Self {
        self.protocols.push(protocol.into());
        self
    }

    /// Sets the origin.
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = Some(origin.into());
        self
    }

    /// The first value of a header, by case-insensitive name.
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The value of a cookie, by name, from the `Cookie` headers.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        let headers = self.headers.iter();
        let cookies = headers.filter(|(n, _)| n.eq_ignore_ascii_case("cookie"));
        cookies.flat_map(|(_, v)| v.split(';')).find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then(|| value.trim())
        })
    }

    /// The first value of a query parameter, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<Cow<'_, str>> {
        self.query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key) == name).then(|| percent_decode(value))
        })
    }

    /// The bearer token: `Authorization: Bearer <token>`, else the query parameter
    /// `authorization` holding the same (`Bearer%20<token>`, as Grove's browser client
    /// sends its headers), else `access_token`, else `token`, else the cookie
    /// `syncmux_token` (what a browser's `EventSource`, which sends no headers, can carry).
    pub fn token(&self) -> Option<Cow<'_, str>> {
        fn bearer(value: &str) -> Option<&str> {
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        }
        // Grove's browser client puts its headers in the query, names lower-cased:
        // `?authorization=Bearer%20<token>`.
        let in_query = || {
            let value = self.query_param("authorization")?;
            bearer(&value).map(|token| Cow::Owned(token.to_owned()))
        };
        let header = self.header_value("authorization").and_then(bearer);
        header
            .map(Cow::Borrowed)
            .or_else(in_query)
            .or_else(|| self.query_param("access_token"))
            .or_else(|| self.query_param("token"))
            .or_else(|| self.cookie(TOKEN_COOKIE).map(Cow::Borrowed))
            .filter(|t| !t.is_empty())
    }

    /// The node id the client asked for: query `node_id`, else header `X-Node-Id`.
    pub fn requested_node_id(&self) -> Option<Cow<'_, str>> {
        self.query_param("node_id")
            .or_else(|| self.header_value("x-node-id").map(Cow::Borrowed))
            .filter(|n| !n.is_empty())
    }
}

/// The cookie [`Handshake::token`] reads last.
const TOKEN_COOKIE: &str = "syncmux_token";

/// Decodes `%XX` escapes and `+` (form encoding, as browsers write query strings).
///
/// Written by hand: it is ten lines, and the crates that do it pull in more than the core
/// should carry. Invalid escapes are kept literally; invalid UTF-8 is replaced.
fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push((hi * 16 + lo) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// What the auth hook received.
#[derive(Clone, Copy, Debug)]
pub struct AuthRequest<'a> {
    /// The bearer token (header, else `access_token`, else `token` query parameter).
    pub token: Option<&'a str>,
    /// The node id the client asked for, if any.
    pub node_id: Option<&'a str>,
    /// The whole handshake, for anything else the decision needs.
    pub handshake: &'a Handshake,
}

/// The auth hook's answer.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum AuthDecision {
    /// Let the client in. `node_id`, when set, is the session's identity: it must match the
    /// node id the client asked for, if it asked for one (else 403).
    Allow {
        /// The identity the token grants, if it grants one.
        node_id: Option<String>,
    },
    /// Refuse the upgrade with an HTTP status (401, 403, ...).
    Deny {
        /// The HTTP status.
        status: u16,
        /// Why, for the response body and the logs.
        reason: String,
    },
}

impl AuthDecision {
    /// Allow, optionally naming the node id.
    pub fn allow(node_id: Option<String>) -> Self {
        AuthDecision::Allow { node_id }
    }

    /// Deny with a status.
    pub fn deny(status: u16, reason: impl Into<String>) -> Self {
        AuthDecision::Deny {
            status,
            reason: reason.into(),
        }
    }
}

/// The server's answer to a handshake.
#[derive(Clone, PartialEq, Eq, Debug)]
// Exhaustive on purpose: every embedder acts on every variant, so a new one is a breaking
// change that the compiler must point out, not a silent `_` arm.
pub enum HandshakeOutcome {
    /// Upgrade. The adapter answers with `protocol` as `Sec-WebSocket-Protocol` (when set),
    /// then drains [`Server::poll_transmit`](super::Server::poll_transmit): a session whose
    /// version does not match already has its error frame and close queued.
    Accept {
        /// The new session.
        session: SessionId,
        /// Its node id.
        node_id: String,
        /// The subprotocol to select, if any.
        protocol: Option<String>,
    },
    /// Refuse the upgrade with this HTTP status.
    Reject {
        /// 401 (no or bad token), 403 (origin, node id), 404 (path), 503 (full, shut down).
        status: u16,
        /// Why.
        reason: String,
    },
}

/// The protocol version the offered subprotocols ask for.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) enum Version {
    /// Version 1, selecting this subprotocol (or none).
    V1(Option<String>),
    /// Another version: select `protocol` so the browser completes the handshake, then say
    /// why and close 4426. `got` names the version for the error message.
    Mismatch { protocol: String, got: String },
}

/// Picks the version from the offered subprotocols (docs/protocol.md section 3.1, "Protocol
/// version").
pub(crate) fn negotiate(offered: &[String]) -> Version {
    let mut offered = offered
        .iter()
        .flat_map(|p| p.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty());
    let all: Vec<&str> = offered.by_ref().collect();
    if all.contains(&Frame::SUBPROTOCOL) {
        return Version::V1(Some(Frame::SUBPROTOCOL.to_owned()));
    }
    match all.iter().find(|p| p.starts_with("syncmux.")) {
        Some(other) => {
            let version = &other["syncmux.".len()..];
            let got = version.strip_prefix('v').unwrap_or(version);
            Version::Mismatch {
                protocol: (*other).to_owned(),
                got: got.to_owned(),
            }
        }
        // No syncmux subprotocol at all: a plain client of the seed protocol.
        None => Version::V1(None),
    }
}

/// Whether a node id is acceptable: non-empty, at most 128 bytes, no control characters.
pub(crate) fn valid_node_id(node_id: &str) -> bool {
    !node_id.is_empty() && node_id.len() <= 128 && !node_id.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Bb+c"), "a+b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%e2%9c%93"), "\u{2713}");
    }

    #[test]
    fn negotiation() {
        let v = |p: &[&str]| negotiate(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(v(&[]), Version::V1(None));
        assert_eq!(v(&["graphql-ws"]), Version::V1(None));
        assert_eq!(
            v(&["syncmux.v2, syncmux.v1"]),
            Version::V1(Some("syncmux.v1".into()))
        );
        assert_eq!(
            v(&["x", "syncmux.v3", "syncmux.v2"]),
            Version::Mismatch {
                protocol: "syncmux.v3".into(),
                got: "3".into()
            }
        );
    }
}
