//! The Redis backend on real processes (`redis_util`): the store against the `MemoryStore`
//! (`backend`), several servers sharing one Redis or a Cluster (`servers`), and a Sentinel
//! deployment failing over under them (`ha`).
#![allow(clippy::unwrap_used)]

#[path = "../redis_util/mod.rs"]
mod redis_util;

mod backend;
mod ha;
mod servers;

use std::sync::Arc;

use syncmux::{Server, ServerConfig};
use syncmux_runtime::{self as adapters, Backend, ServerOptions, SyncServer};

/// A server with `config` on `backend`, listening on a free port: it and its clients' URL
/// (path `/sync/ws`).
async fn serve(backend: impl Backend, mut config: ServerConfig) -> (SyncServer, String) {
    config.path = Some("/sync/ws".to_owned());
    let server = Server::new(config).unwrap();
    let server =
        adapters::Tokio::start_with_backend(server, Arc::new(backend), ServerOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/sync/ws", listener.local_addr().unwrap());
    tokio::spawn(adapters::Tokio::serve(server.clone(), listener, None));
    (server, url)
}
