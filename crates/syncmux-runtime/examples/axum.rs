//! The sync endpoint mounted inside an axum app, next to other routes.
//!
//! ```text
//! cargo run -p syncmux-runtime --features tokio --example axum -- [--listen 127.0.0.1:8788]
//! curl http://127.0.0.1:8788/health                  # ok
//! cargo run -p syncmux-server --bin syncmux-cli -- --url ws://127.0.0.1:8788/sync/ws \
//!     --node-id n1 pull docs
//! ```
//!
//! The state machine decides the handshake (auth, identity, subprotocol) *before* axum
//! upgrades: a refusal is a plain HTTP answer with its status (401, 403, ...), an acceptance
//! selects the subprotocol the state machine chose. After the upgrade,
//! [`AcceptedSession::run`] drives the session on axum's socket, whose messages are mapped to
//! tungstenite's (axum may sit on another tungstenite than this crate; the mapping moves the
//! `Bytes`, it does not copy them).

use std::process::ExitCode;
use std::time::Duration;

use axum::extract::ws::{self, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures_util::{future, SinkExt, StreamExt};
use syncmux::Driver;
use syncmux::Handshake;
use syncmux::{MemoryStore, StoreConfig};
use syncmux::{Server, ServerConfig};
use syncmux_runtime::{self as adapters, AcceptedSession, Clock, ServerOptions, SyncServer};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::{CloseFrame, Utf8Bytes};
use tungstenite::Message;

const USAGE: &str = "usage: axum [--listen ADDR]";

fn main() -> ExitCode {
    let mut listen = "127.0.0.1:8788".to_owned();
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        match (flag.as_str(), argv.next()) {
            ("--listen", Some(addr)) => listen = addr,
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
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
    match runtime.block_on(run(&listen)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("error: {why}");
            ExitCode::FAILURE
        }
    }
}

async fn run(listen: &str) -> Result<(), String> {
    let clock = Clock::new();
    let mut config = ServerConfig::default();
    config.path = Some("/sync/ws".to_owned());
    config.seed = clock.seed();
    let server = Server::new(config).map_err(|e| e.to_string())?;
    let mut store = StoreConfig::default();
    store.epoch = clock.now().as_millis();
    let sync = adapters::Tokio::start(
        Driver::new(server, MemoryStore::new(store)),
        ServerOptions::default(),
    );

    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/sync/ws", get(sync_ws))
        .with_state(sync.clone());

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("listening on ws://{addr}/sync/ws");
    let shutdown = async move {
        if tokio::signal::ctrl_c().await.is_err() {
            // No signal handling: serve until killed.
            future::pending::<()>().await;
        }
        tracing::info!("shutting down: closing every session with 1001");
        sync.shutdown();
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| e.to_string())?;
    // Upgraded sockets outlive the HTTP server; let them write their close frames.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

/// `GET /sync/ws`: the state machine decides, then axum upgrades.
async fn sync_ws(
    State(sync): State<SyncServer>,
    upgrade: WebSocketUpgrade,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let session = match sync.handshake(&handshake(&uri, &headers)) {
        Ok(session) => session,
        Err(rejection) => {
            let status =
                StatusCode::from_u16(rejection.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (status, rejection.reason).into_response();
        }
    };
    let upgrade = match session.protocol() {
        Some(protocol) => upgrade.protocols([protocol.to_owned()]),
        None => upgrade,
    };
    // A failed upgrade drops the session, which closes it in the state machine.
    upgrade.on_upgrade(move |socket| run_session(session, socket))
}

/// The state machine's view of the upgrade request (docs/protocol.md section 4).
fn handshake(uri: &Uri, headers: &HeaderMap) -> Handshake {
    let mut handshake = Handshake::new(uri.path(), uri.query().unwrap_or(""));
    for (name, value) in headers {
        let Ok(value) = value.to_str() else { continue };
        if name == "sec-websocket-protocol" {
            let offered = value.split(',').map(str::trim).filter(|p| !p.is_empty());
            handshake.protocols.extend(offered.map(str::to_owned));
        } else if name == "origin" {
            handshake.origin = Some(value.to_owned());
        }
        handshake = handshake.header(name.as_str(), value);
    }
    handshake
}

async fn run_session(session: AcceptedSession, socket: WebSocket) {
    let socket = socket
        .with(|message| future::ready(to_axum(message)))
        .map(|received| received.map(from_axum));
    session.run(socket).await;
}

fn utf8(bytes: Bytes) -> Result<Utf8Bytes, Bytes> {
    Utf8Bytes::try_from(bytes.clone()).map_err(|_| bytes)
}

fn from_axum(message: ws::Message) -> Message {
    match message {
        // axum checked the UTF-8 already; a failure here would be a bug in one of the two.
        ws::Message::Text(text) => utf8(text.into()).map_or_else(Message::Binary, Message::Text),
        ws::Message::Binary(data) => Message::Binary(data),
        ws::Message::Ping(data) => Message::Ping(data),
        ws::Message::Pong(data) => Message::Pong(data),
        ws::Message::Close(frame) => Message::Close(frame.map(|f| CloseFrame {
            code: CloseCode::from(f.code),
            reason: utf8(f.reason.into()).unwrap_or_default(),
        })),
    }
}

fn to_axum(message: Message) -> Result<ws::Message, axum::Error> {
    let text = |t: Utf8Bytes| ws::Utf8Bytes::try_from(Bytes::from(t)).map_err(axum::Error::new);
    Ok(match message {
        Message::Text(t) => ws::Message::Text(text(t)?),
        Message::Binary(data) => ws::Message::Binary(data),
        Message::Ping(data) => ws::Message::Ping(data),
        Message::Pong(data) => ws::Message::Pong(data),
        Message::Close(frame) => ws::Message::Close(match frame {
            Some(f) => Some(ws::CloseFrame {
                code: f.code.into(),
                reason: text(f.reason)?,
            }),
            None => None,
        }),
        Message::Frame(_) => return Err(axum::Error::new("raw frames are never sent")),
    })
}
