//! The benches' client connections: TCP to a server, Nagle off as the adapters do.

use tokio::net::TcpStream;

/// The `host:port` of a `ws://host:port/...` URL (a bare `host:port` is its own).
pub(crate) fn host(url: &str) -> &str {
    let rest = url.trim_start_matches("ws://");
    rest.split('/').next().unwrap_or(rest)
}

/// A connection to `addr` (`host:port`), Nagle off.
pub(crate) async fn tcp(addr: &str) -> TcpStream {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    tcp
}
