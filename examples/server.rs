//! The sync server on the embedded `MemoryStore`.
//!
//! ```text
//! cargo run --release --features tokio --example server -- [--listen 127.0.0.1:8787]
//!     [--token T] [--rate-limit N/SECS|0] [--max-frame BYTES] [--ping-interval MS]
//!     [--idle-timeout MS] [--presence-ttl MS] [--room-max N] [--handshake-timeout MS]
//!     [--max-connections N] [--tls-cert PEM --tls-key PEM] [--static DIR]
//! ```
//!
//! Serves `ws://ADDR/sync/ws` (`wss://` with a certificate), prints `listening on URL` once
//! ready (with the real port when given port 0), logs with `tracing` (`RUST_LOG` filters),
//! and on Ctrl-C closes every session with 1001. A flag of 0 disables that limit or timer.
//!
//! `--handshake-timeout` (default 10 000) bounds a connection's whole handshake, TLS
//! included: one that sends nothing, or half a request, is dropped after it.
//! `--max-connections` (default 100 000) is the most sessions at once; beyond it an upgrade
//! gets HTTP 503. `--max-frame` (default 1 MiB) is the one frame limit, the WebSocket
//! layer's included.
//!
//! With `--static DIR`, plain HTTP `GET`s on the same listener get DIR's files (`index.html`
//! at `/`), so `--static examples/browser` serves the browser demo; the WebSocket upgrade on
//! `/sync/ws` still goes through the server's state machine (see [`static_files`]).
//!
//! The flags are parsed by hand: ten flags of one shape do not justify clap's compile time
//! on a machine every helper shares.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use syncmux::adapters::{self, Clock, ServerOptions};
use syncmux::Driver;
use syncmux::{AuthDecision, AuthRequest};
use syncmux::{MemoryStore, StoreConfig};
use syncmux::{Server, ServerConfig};

const USAGE: &str = "usage: server [--listen ADDR] [--token T] [--rate-limit N/SECS|0] \
[--max-frame BYTES] [--ping-interval MS] [--idle-timeout MS] [--presence-ttl MS] [--room-max N] \
[--handshake-timeout MS] [--max-connections N] [--tls-cert PEM --tls-key PEM] [--static DIR]   \
(0 disables a limit or timer)";

/// Where the WebSocket is served.
const WS_PATH: &str = "/sync/ws";

struct Args {
    listen: String,
    config: ServerConfig,
    options: ServerOptions,
    tls: Option<(String, String)>,
    static_dir: Option<std::path::PathBuf>,
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{flag}: {value:?} is not a non-negative integer"))
}

fn parse(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut config = ServerConfig::default();
    config.path = Some(WS_PATH.to_owned());
    let mut options = ServerOptions::default();
    let mut listen = "127.0.0.1:8787".to_owned();
    let (mut cert, mut key) = (None, None);
    let mut static_dir = None;
    while let Some(flag) = argv.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let value = argv.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let ms = |v: &str| number::<u64>(&flag, v).map(Duration::from_millis);
        match flag.as_str() {
            "--listen" => listen = value,
            "--token" => {
                let token = value;
                config.auth = Some(Arc::new(move |req: &AuthRequest<'_>| {
                    if req.token == Some(token.as_str()) {
                        AuthDecision::allow(None)
                    } else {
                        AuthDecision::deny(401, "missing or wrong token")
                    }
                }));
            }
            // 0 alone disables rate limiting, as for every other limit.
            "--rate-limit" if value == "0" => config.rate_limit_burst = 0,
            "--rate-limit" => {
                let (n, secs) = value
                    .split_once('/')
                    .ok_or_else(|| format!("--rate-limit: {value:?} is not N/SECS or 0"))?;
                config.rate_limit_burst = number(&flag, n)?;
                config.rate_limit_window = Duration::from_secs(number(&flag, secs)?);
            }
            "--max-frame" => config.max_frame_len = number(&flag, &value)?,
            "--ping-interval" => config.ping_interval = ms(&value)?,
            "--idle-timeout" => config.idle_timeout = ms(&value)?,
            "--presence-ttl" => config.presence_ttl = ms(&value)?,
            "--room-max" => config.max_room_size = number(&flag, &value)?,
            "--handshake-timeout" => options.handshake_timeout = ms(&value)?,
            "--max-connections" => config.max_sessions = number(&flag, &value)?,
            "--tls-cert" => cert = Some(value),
            "--tls-key" => key = Some(value),
            "--static" => static_dir = Some(value.into()),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => return Err("--tls-cert and --tls-key go together".to_owned()),
    };
    Ok(Args {
        listen,
        config,
        options,
        tls,
        static_dir,
    })
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(why) => {
            if !why.is_empty() {
                eprintln!("error: {why}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("error: {why}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let tls = match &args.tls {
        Some((cert, key)) => {
            let cert = std::fs::read(cert).map_err(|e| format!("{cert}: {e}"))?;
            let key = std::fs::read(key).map_err(|e| format!("{key}: {e}"))?;
            Some(adapters::server_tls(&cert, &key).map_err(|e| e.to_string())?)
        }
        None => None,
    };
    let mut config = args.config;
    let clock = Clock::new();
    config.seed = clock.seed();
    let server = Server::new(config).map_err(|e| e.to_string())?;
    // A fresh epoch per start: cursors of an earlier run are then recognised as stale.
    let mut store = StoreConfig::default();
    store.epoch = clock.now().as_millis();
    let server = adapters::tokio::start(Driver::new(server, MemoryStore::new(store)), args.options);
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    println!("listening on {scheme}://{addr}/sync/ws");
    let serving = match args.static_dir {
        None => tokio::spawn(adapters::tokio::serve(server.clone(), listener, tls)),
        Some(dir) => {
            let files = static_files::Files::new(dir, WS_PATH);
            tokio::spawn(static_files::serve(server.clone(), listener, tls, files))
        }
    };
    tokio::signal::ctrl_c()
        .await
        .map_err(|e| format!("cannot wait for Ctrl-C: {e}"))?;
    tracing::info!("shutting down: closing every session with 1001");
    server.shutdown();
    // `adapters::tokio::serve` returns on shutdown; the static loop is simply stopped.
    serving.abort();
    let _ = serving.await;
    // The sessions' tasks write their close frames; give them a moment before exiting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

/// `--static DIR`: DIR's files over plain HTTP on the WebSocket's own listener.
///
/// Each connection's request head is read first; a request for the sync path is replayed,
/// unchanged, into [`adapters::tokio::accept`] (the state machine decides the upgrade), and
/// anything else is answered from DIR and the connection closed. Hand-written rather than an
/// HTTP framework: a demo needs `GET` of a handful of files, and this keeps the example
/// server on the library's own `accept` path.
mod static_files {
    use std::io::Cursor;
    use std::path::{Component, Path, PathBuf};
    use std::sync::Arc;

    use syncmux::adapters::tokio::Io;
    use syncmux::adapters::{self, SyncServer};
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
    use tokio::sync::Semaphore;

    /// A request head longer than this is refused (`431`).
    const MAX_HEAD: usize = 8 * 1024;

    /// What may be served, by extension; any other file is a 404, so that a directory's
    /// sources (`lib.rs`, `build.sh`) stay private.
    const TYPES: &[(&str, &str)] = &[
        ("html", "text/html; charset=utf-8"),
        ("js", "text/javascript; charset=utf-8"),
        ("mjs", "text/javascript; charset=utf-8"),
        ("css", "text/css; charset=utf-8"),
        ("wasm", "application/wasm"),
        ("json", "application/json"),
        ("png", "image/png"),
        ("svg", "image/svg+xml"),
        ("ico", "image/x-icon"),
    ];

    /// The directory served and the path left to the WebSocket.
    pub(crate) struct Files {
        root: PathBuf,
        ws_path: &'static str,
    }

    impl Files {
        pub(crate) fn new(root: PathBuf, ws_path: &'static str) -> Arc<Files> {
            Arc::new(Files { root, ws_path })
        }

        /// The file for a request target, or `None` when the target leaves the directory
        /// (`..`, an absolute path) or is not origin-form. `/` and `dir/` mean `index.html`.
        pub(crate) fn resolve(&self, target: &str) -> Option<PathBuf> {
            let path = target.split(['?', '#']).next().unwrap_or_default();
            let relative = path.strip_prefix('/')?;
            let mut file = self.root.clone();
            for part in Path::new(relative).components() {
                match part {
                    Component::Normal(name) => file.push(name),
                    // `..`, a second root (`//etc/passwd`), `.`: never followed.
                    _ => return None,
                }
            }
            if relative.is_empty() || relative.ends_with('/') {
                file.push("index.html");
            }
            Some(file)
        }

        /// The answer to `method target` as HTTP/1.1 bytes (head and body).
        pub(crate) async fn respond(&self, method: &str, target: &str) -> Vec<u8> {
            if method != "GET" && method != "HEAD" {
                return head(
                    405,
                    "Method Not Allowed",
                    "text/plain",
                    0,
                    "Allow: GET, HEAD\r\n",
                );
            }
            let file = self
                .resolve(target)
                .and_then(|f| Some((content_type(&f)?, f)));
            let found = match file {
                Some((kind, file)) => tokio::task::spawn_blocking(move || std::fs::read(file))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map(|body| (kind, body)),
                None => None,
            };
            let Some((kind, body)) = found else {
                let mut out = head(404, "Not Found", "text/plain", 10, "");
                out.extend_from_slice(b"not found\n");
                return out;
            };
            let mut out = head(200, "OK", kind, body.len(), "Cache-Control: no-cache\r\n");
            if method == "GET" {
                out.extend_from_slice(&body);
            }
            out
        }
    }

    /// The `Content-Type` of a file that may be served.
    pub(crate) fn content_type(file: &Path) -> Option<&'static str> {
        let ext = file.extension()?.to_str()?;
        TYPES.iter().find(|(e, _)| *e == ext).map(|(_, kind)| *kind)
    }

    fn head(status: u16, reason: &str, kind: &str, len: usize, extra: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {len}\r\n\
             {extra}Connection: close\r\n\r\n"
        )
        .into_bytes()
    }

    /// [`adapters::tokio::serve`] with the static files beside it; runs until aborted.
    ///
    /// The server's handshake limits hold here too: TLS and the request head must arrive
    /// within its `handshake_timeout` (the upgrade then has its own, in `accept`), and at
    /// most `max_handshakes` connections are before their request head at once.
    pub(crate) async fn serve(
        server: SyncServer,
        listener: tokio::net::TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        files: Arc<Files>,
    ) {
        let tls = tls.map(tokio_rustls::TlsAcceptor::from);
        let max = server.options().max_handshakes;
        let heads = Arc::new(Semaphore::new(if max == 0 {
            Semaphore::MAX_PERMITS
        } else {
            max
        }));
        loop {
            let Ok(permit) = heads.clone().acquire_owned().await else {
                return; // never closed
            };
            let tcp = match listener.accept().await {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::task::yield_now().await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (server, tls, files) = (server.clone(), tls.clone(), files.clone());
            tokio::spawn(async move {
                let head = async {
                    let io: Box<dyn Io> = match tls {
                        Some(tls) => match tls.accept(tcp).await {
                            Ok(stream) => Box::new(stream),
                            Err(e) => {
                                tracing::info!(error = %e, "TLS handshake failed");
                                return None;
                            }
                        },
                        None => Box::new(tcp),
                    };
                    Some(read_head(io).await)
                };
                let deadline = server.options().handshake_timeout;
                let head = if deadline.is_zero() {
                    head.await
                } else {
                    // Timed out: dropped, like a connection `accept` gives up on.
                    tokio::time::timeout(deadline, head).await.ok().flatten()
                };
                drop(permit);
                let routed = match head {
                    Some(Ok(head)) => route(&server, head, &files).await,
                    Some(Err(e)) => Err(e),
                    None => Ok(()),
                };
                if let Err(e) = routed {
                    tracing::debug!(error = %e, "HTTP connection ended");
                }
            });
        }
    }

    /// A connection and what it sent up to the end of its request head (or until it closed,
    /// or sent more than [`MAX_HEAD`] without ending it).
    struct Head<S> {
        reader: ReadHalf<S>,
        writer: WriteHalf<S>,
        buf: Vec<u8>,
    }

    fn complete(buf: &[u8]) -> bool {
        buf.windows(4).any(|w| w == b"\r\n\r\n")
    }

    async fn read_head<S: AsyncRead + AsyncWrite>(io: S) -> std::io::Result<Head<S>> {
        let (mut reader, writer) = tokio::io::split(io);
        let mut buf = Vec::with_capacity(1024);
        while !complete(&buf) {
            if buf.len() >= MAX_HEAD || reader.read_buf(&mut buf).await? == 0 {
                break;
            }
        }
        Ok(Head {
            reader,
            writer,
            buf,
        })
    }

    /// Sends a connection whose head was read where it belongs.
    async fn route<S>(server: &SyncServer, request: Head<S>, files: &Files) -> std::io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let Head {
            reader,
            mut writer,
            buf,
        } = request;
        if !complete(&buf) {
            if buf.len() >= MAX_HEAD {
                let answer = head(431, "Request Header Fields Too Large", "text/plain", 0, "");
                return writer.write_all(&answer).await;
            }
            // Closed before a whole head: nothing to answer.
            return Ok(());
        }
        let line = buf.split(|&b| b == b'\r').next().unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        let mut words = line.split(' ');
        let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let path = target.split('?').next().unwrap_or_default();
        if path == files.ws_path {
            // Every byte read so far goes first, so the handshake sees the whole request.
            let io = tokio::io::join(Cursor::new(buf).chain(reader), writer);
            adapters::tokio::accept(server, io).await;
            return Ok(());
        }
        let answer = files.respond(method, target).await;
        writer.write_all(&answer).await?;
        writer.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::static_files::{self, content_type, Files};
    use super::*;
    use std::path::{Path, PathBuf};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn args(flags: &[&str]) -> Result<Args, String> {
        parse(flags.iter().map(|f| (*f).to_owned()))
    }

    #[test]
    fn zero_disables_the_rate_limit() {
        let parsed = args(&["--rate-limit", "0"]).unwrap();
        assert_eq!(parsed.config.rate_limit_burst, 0);
        assert!(Server::new(parsed.config).is_ok());
        let parsed = args(&["--rate-limit", "10/5"]).unwrap();
        assert_eq!(parsed.config.rate_limit_burst, 10);
        assert_eq!(parsed.config.rate_limit_window, Duration::from_secs(5));
        assert!(args(&["--rate-limit", "10"]).is_err());
    }

    #[test]
    fn handshake_and_connection_flags() {
        let parsed = args(&[]).unwrap();
        assert_eq!(parsed.options.handshake_timeout, Duration::from_secs(10));
        let parsed = args(&[
            "--handshake-timeout",
            "250",
            "--max-connections",
            "2",
            "--max-frame",
            "33554432",
        ])
        .unwrap();
        assert_eq!(parsed.options.handshake_timeout, Duration::from_millis(250));
        assert_eq!(parsed.config.max_sessions, 2);
        assert_eq!(parsed.config.max_frame_len, 32 << 20);
        let parsed = args(&["--handshake-timeout", "0", "--max-connections", "0"]).unwrap();
        assert!(parsed.options.handshake_timeout.is_zero());
        assert_eq!(parsed.config.max_sessions, 0);
    }

    fn files() -> Arc<Files> {
        Files::new(PathBuf::from("/srv/demo"), "/sync/ws")
    }

    #[test]
    fn resolves_inside_the_directory_only() {
        let files = files();
        let ok = |t: &str| files.resolve(t).map(|p| p.display().to_string());
        assert_eq!(ok("/").as_deref(), Some("/srv/demo/index.html"));
        assert_eq!(ok("/?server=x").as_deref(), Some("/srv/demo/index.html"));
        assert_eq!(ok("/pkg/").as_deref(), Some("/srv/demo/pkg/index.html"));
        assert_eq!(ok("/pkg/a.js").as_deref(), Some("/srv/demo/pkg/a.js"));
        assert_eq!(ok("/a//b.css").as_deref(), Some("/srv/demo/a/b.css"));
        for escape in [
            "/..",
            "/../etc/passwd",
            "/pkg/../../etc/passwd",
            "/pkg/..",
            "//etc/passwd",
            "/./index.html",
            "etc/passwd",
            "http://host/index.html",
            "",
        ] {
            assert_eq!(files.resolve(escape), None, "{escape:?}");
        }
    }

    #[test]
    fn content_types_by_extension() {
        let kind = |f: &str| content_type(Path::new(f));
        assert_eq!(kind("index.html"), Some("text/html; charset=utf-8"));
        assert_eq!(
            kind("pkg/syncmux.js"),
            Some("text/javascript; charset=utf-8")
        );
        assert_eq!(kind("style.css"), Some("text/css; charset=utf-8"));
        assert_eq!(kind("pkg/syncmux_bg.wasm"), Some("application/wasm"));
        assert_eq!(kind("a.json"), Some("application/json"));
        assert_eq!(kind("shot.png"), Some("image/png"));
        assert_eq!(kind("lib.rs"), None);
        assert_eq!(kind("build.sh"), None);
        assert_eq!(kind("Makefile"), None);
    }

    /// One HTTP/1.1 exchange on a fresh connection: (status line, content type, body).
    async fn get(addr: std::net::SocketAddr, request: &str) -> (String, String, Vec<u8>) {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await.unwrap();
        let split = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8(answer[..split].to_vec()).unwrap();
        let status = head.lines().next().unwrap().to_owned();
        let kind = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Type: "))
            .unwrap_or_default()
            .to_owned();
        (status, kind, answer[split + 4..].to_vec())
    }

    #[tokio::test]
    async fn files_and_the_websocket_share_one_listener() {
        let dir = std::env::temp_dir().join(format!("syncmux-static-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("pkg")).unwrap();
        std::fs::write(dir.join("index.html"), "<h1>hi</h1>").unwrap();
        std::fs::write(dir.join("pkg/app.wasm"), b"\0asm").unwrap();
        std::fs::write(dir.join("lib.rs"), "fn main() {}").unwrap();

        let mut config = ServerConfig::default();
        config.path = Some("/sync/ws".to_owned());
        let driver = Driver::new(
            Server::new(config).unwrap(),
            MemoryStore::new(StoreConfig::default()),
        );
        let server = adapters::tokio::start(driver, ServerOptions::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let files = Files::new(dir.clone(), "/sync/ws");
        let serving = tokio::spawn(static_files::serve(server.clone(), listener, None, files));

        let (status, kind, body) = get(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(
            (status.as_str(), kind.as_str()),
            ("HTTP/1.1 200 OK", "text/html; charset=utf-8")
        );
        assert_eq!(body, b"<h1>hi</h1>");
        let (status, kind, body) = get(addr, "GET /pkg/app.wasm HTTP/1.1\r\n\r\n").await;
        assert_eq!(
            (status.as_str(), kind.as_str()),
            ("HTTP/1.1 200 OK", "application/wasm")
        );
        assert_eq!(body, b"\0asm");
        let (status, _, body) = get(addr, "HEAD / HTTP/1.1\r\n\r\n").await;
        assert_eq!((status.as_str(), body.len()), ("HTTP/1.1 200 OK", 0));
        for missing in [
            "/nope.html",
            "/lib.rs",
            "/../Cargo.toml",
            "/pkg/../../x.html",
            "//etc/passwd",
        ] {
            let (status, _, _) = get(addr, &format!("GET {missing} HTTP/1.1\r\n\r\n")).await;
            assert_eq!(status, "HTTP/1.1 404 Not Found", "{missing}");
        }
        let (status, _, _) = get(addr, "POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
        assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
        // A head that never ends within 8 KiB (exactly 8 KiB sent, so that all of it is read).
        let endless = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(8192 - 19));
        let (status, _, _) = get(addr, &endless).await;
        assert_eq!(status, "HTTP/1.1 431 Request Header Fields Too Large");

        // The upgrade goes through the state machine: it selects the subprotocol and the
        // session answers a ping.
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
        let mut request = format!("ws://{addr}/sync/ws?node_id=n1")
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", "syncmux.v1".parse().unwrap());
        let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
        assert_eq!(response.headers()["Sec-WebSocket-Protocol"], "syncmux.v1");
        ws.send(Message::text(r#"{"type":"ping","id":"p1"}"#))
            .await
            .unwrap();
        let pong = loop {
            match ws.next().await.unwrap().unwrap() {
                Message::Text(text) => break text.to_string(),
                _ => continue,
            }
        };
        assert!(
            pong.contains(r#""type":"pong""#) && pong.contains(r#""id":"p1""#),
            "{pong}"
        );

        serving.abort();
        server.shutdown();
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// With `--static`, a connection that never sends its request head is dropped after the
    /// handshake deadline too (it used to get a fixed 10 s).
    #[tokio::test]
    async fn the_static_path_drops_a_silent_connection_at_the_handshake_deadline() {
        let driver = Driver::new(
            Server::new(ServerConfig::default()).unwrap(),
            MemoryStore::new(StoreConfig::default()),
        );
        let mut options = ServerOptions::default();
        options.handshake_timeout = Duration::from_millis(200);
        let server = adapters::tokio::start(driver, options);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let files = Files::new(std::env::temp_dir(), "/sync/ws");
        let serving = tokio::spawn(static_files::serve(server.clone(), listener, None, files));
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        silent.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        // Generous next to the 200 ms deadline, well under the old fixed 10 s.
        let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "still open or answered: {read:?}"
        );
        serving.abort();
    }
}
