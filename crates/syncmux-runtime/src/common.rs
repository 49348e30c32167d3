//! Helpers typed on `tungstenite`, shared by the tokio and smol adapters (both use the same
//! tungstenite, so a frame or a handshake looks the same to either).

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures_util::{Sink, Stream};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::client::Request;
use tungstenite::http::HeaderValue;
use tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tungstenite::protocol::frame::{CloseFrame, Utf8Bytes};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::Message;

use syncmux::wire::CloseCode;
use syncmux::DialRequest;
use syncmux::Handshake;

/// Where a dial goes: the parts of the URL the socket and TLS need.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls: bool,
}

/// The handshake request of a dial (subprotocols and headers of [`DialRequest`], then the
/// `extra` subprotocols) and where to open the socket.
pub(crate) fn client_request(
    dial: &DialRequest,
    extra: &[String],
) -> Result<(Request, Target), String> {
    let mut request = dial
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("bad url {}: {e}", dial.url))?;
    let uri = request.uri();
    let tls = match uri.scheme_str() {
        Some("wss") => true,
        Some("ws") => false,
        other => return Err(format!("unsupported scheme {other:?}")),
    };
    let host = uri
        .host()
        .ok_or_else(|| format!("no host in {}", dial.url))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let headers = request.headers_mut();
    let offered = dial.protocols.iter().copied();
    let protocols = offered
        .chain(extra.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(", ");
    // None offered (the OT wire has no subprotocol): no header, or the server would have to
    // select one.
    if !protocols.is_empty() {
        let value = HeaderValue::from_str(&protocols).map_err(|e| e.to_string())?;
        headers.insert("Sec-WebSocket-Protocol", value);
    }
    for (name, value) in &dial.headers {
        let value = HeaderValue::from_str(value).map_err(|e| format!("header {name}: {e}"))?;
        headers.insert(*name, value);
    }
    Ok((request, Target { host, port, tls }))
}

/// The state machine's view of an upgrade request.
pub(crate) fn handshake_of(request: &Request) -> Handshake {
    let uri = request.uri();
    let mut handshake = Handshake::new(uri.path(), uri.query().unwrap_or(""));
    for (name, value) in request.headers() {
        let Ok(value) = value.to_str() else { continue };
        if name == "sec-websocket-protocol" {
            let offered = value.split(',').map(str::trim).filter(|p| !p.is_empty());
            handshake.protocols.extend(offered.map(str::to_owned));
        } else if name == "origin" {
            handshake.origin = Some(value.to_owned());
        }
        handshake
            .headers
            .push((name.as_str().to_owned(), value.to_owned()));
    }
    handshake
}

/// The subprotocol a handshake response selected.
pub(crate) fn selected_protocol<B>(response: &tungstenite::http::Response<B>) -> Option<String> {
    let value = response.headers().get("Sec-WebSocket-Protocol")?;
    value.to_str().ok().map(|s| s.trim().to_owned())
}

/// The read buffer of one WebSocket. tungstenite's default, 128 KiB, is allocated and touched
/// per connection: 10 000 idle sessions cost 1.3 GB of it alone; and tungstenite zeroes the
/// buffer's free part on every read attempt, so its size is also a `memset` per wake-up. An
/// idle connection keeps it, so it is small (the fan-out bench, 8 KiB of it made an
/// idle session cost 17 KiB of RSS, 512 bytes 9 KiB). A frame longer than this still arrives
/// whole: tungstenite reserves its full length once it has read the header.
pub(crate) const READ_BUFFER_LEN: usize = 512;

/// tungstenite's default largest frame, which the server's read limit never goes below.
const WS_DEFAULT_MAX_FRAME: usize = 16 << 20;

/// The WebSocket layer's read limit on a server whose state machine takes frames of up to
/// `max_frame_len` bytes: derived from it, so one number is configured (docs/protocol.md section
/// 10). It is above that number (twice it, and never below tungstenite's default 16 MiB), so an
/// oversized frame still reaches the state machine and gets its answer (`FRAME_TOO_LARGE`,
/// 1009 on a repeat) rather than a dropped connection; a frame beyond even that is refused
/// before it is buffered. 0 (no limit) stays no limit, all the way down.
pub(crate) fn ws_read_limit(max_frame_len: usize) -> usize {
    if max_frame_len == 0 {
        return 0;
    }
    max_frame_len.saturating_mul(2).max(WS_DEFAULT_MAX_FRAME)
}

/// tungstenite's limits for a peer whose frames may be `max_len` bytes long (0: no limit).
pub(crate) fn ws_config(max_len: usize) -> WebSocketConfig {
    let max = (max_len > 0).then_some(max_len);
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_LEN)
        .max_message_size(max)
        .max_frame_size(max)
}

/// A text frame of bytes the core encoded (always UTF-8 JSON).
pub(crate) fn text(bytes: Bytes) -> Message {
    match Utf8Bytes::try_from(bytes.clone()) {
        Ok(text) => Message::Text(text),
        // The core only encodes JSON, which is UTF-8; should that ever break, the peer gets
        // a binary frame and answers INVALID_FRAME rather than us panicking.
        Err(_) => Message::Binary(bytes),
    }
}

/// A close frame with a wire close code.
pub(crate) fn close_message(code: CloseCode, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: WsCloseCode::from(code.0),
        reason: Utf8Bytes::from(truncate_reason(reason)),
    }))
}

/// The wire close code and reason of a received close frame.
pub(crate) fn close_code(frame: Option<&CloseFrame>) -> (Option<CloseCode>, String) {
    match frame {
        Some(f) => (Some(CloseCode(u16::from(f.code))), f.reason.to_string()),
        None => (None, "closed without a code".to_owned()),
    }
}

/// A close reason must fit a control frame (125 bytes, 2 of them the code).
fn truncate_reason(reason: &str) -> &str {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// A rustls server config from PEM files (certificate chain and private key), with `ring`.
pub fn server_tls(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, e: rustls::pki_types::pem::Error| {
        rustls::Error::General(format!("{what}: {e}"))
    };
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("certificate", e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| bad("private key", e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

/// A rustls client config that trusts exactly these PEM certificates (for a private CA or
/// a self-signed test certificate), with `ring`.
pub fn client_tls_trusting(cert_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(cert_pem) {
        let cert = cert.map_err(|e| rustls::Error::General(format!("certificate: {e}")))?;
        roots.add(cert)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// rustls with the `ring` provider and the webpki roots, made once per process.
pub(crate) fn default_tls() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("invariant: ring supports the default TLS versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

/// The rustls server name of a host.
pub(crate) fn server_name(host: &str) -> Result<rustls::pki_types::ServerName<'static>, String> {
    rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| format!("bad TLS server name {host}: {e}"))
}

/// An upgraded socket, as either runtime's tungstenite gives it.
pub(crate) trait WebSocket:
    Stream<Item = Result<Message, tungstenite::Error>>
    + Sink<Message, Error = tungstenite::Error>
    + Unpin
    + Send
    + 'static
{
}

impl<W> WebSocket for W where
    W: Stream<Item = Result<Message, tungstenite::Error>>
        + Sink<Message, Error = tungstenite::Error>
        + Unpin
        + Send
        + 'static
{
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_carries_protocols_and_headers() {
        let dial = DialRequest::new("wss://[::1]:9/sync/ws", "n1", Some("tok"));
        let extra = ["chat".to_owned()];
        let (request, target) = client_request(&dial, &extra).unwrap();
        assert_eq!(
            (target.host.as_str(), target.port, target.tls),
            ("::1", 9, true)
        );
        let h = request.headers();
        assert_eq!(h["Sec-WebSocket-Protocol"], "syncmux.v1, chat");
        assert_eq!(h["Authorization"], "Bearer tok");
        assert_eq!(h["X-Node-Id"], "n1");
        let (_, target) = client_request(&DialRequest::new("ws://h/x", "n", None), &[]).unwrap();
        assert_eq!((target.port, target.tls), (80, false));
    }

    #[test]
    fn an_idle_connection_keeps_a_small_read_buffer() {
        assert_eq!(ws_config(0).read_buffer_size, READ_BUFFER_LEN);
        const { assert!(READ_BUFFER_LEN <= 1024) };
    }

    #[test]
    fn the_read_limit_follows_the_frame_limit() {
        assert_eq!(ws_read_limit(0), 0, "0 disables all the way down");
        assert_eq!(ws_read_limit(1 << 20), 16 << 20);
        assert_eq!(ws_read_limit(20 << 20), 40 << 20);
        assert_eq!(ws_read_limit(usize::MAX), usize::MAX);
        let config = ws_config(ws_read_limit(0));
        assert_eq!(
            (config.max_message_size, config.max_frame_size),
            (None, None)
        );
    }

    #[test]
    fn close_codes_round_trip_and_reasons_fit() {
        let long = "é".repeat(100);
        let Message::Close(frame) = close_message(CloseCode::SLOW_CONSUMER, &long) else {
            panic!("not a close");
        };
        let (code, reason) = close_code(frame.as_ref());
        assert_eq!(code, Some(CloseCode::SLOW_CONSUMER));
        assert!(reason.len() <= 123 && reason.starts_with('é'));
        assert_eq!(close_code(None).0, None);
    }
}
