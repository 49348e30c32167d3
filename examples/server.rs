//! The sync server on the embedded `MemoryStore`.
//!
//! ```text
//! cargo run --release --features tokio --example server -- [--listen 127.0.0.1:8787]
//!     [--token T] [--rate-limit N/SECS] [--max-frame BYTES] [--ping-interval MS]
//!     [--idle-timeout MS] [--presence-ttl MS] [--room-max N] [--tls-cert PEM --tls-key PEM]
//! ```
//!
//! Serves `ws://ADDR/sync/ws` (`wss://` with a certificate), prints `listening on URL` once
//! ready (with the real port when given port 0), logs with `tracing` (`RUST_LOG` filters),
//! and on Ctrl-C closes every session with 1001. A flag of 0 disables that limit or timer.
//!
//! The flags are parsed by hand: ten flags of one shape do not justify clap's compile time
//! on a machine every helper shares.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use syncmux::adapters::{self, Clock, ServerOptions};
use syncmux::driver::Driver;
use syncmux::server::{AuthDecision, AuthRequest};
use syncmux::store::{MemoryStore, StoreConfig};
use syncmux::{Server, ServerConfig};

const USAGE: &str = "usage: server [--listen ADDR] [--token T] [--rate-limit N/SECS] \
[--max-frame BYTES] [--ping-interval MS] [--idle-timeout MS] [--presence-ttl MS] [--room-max N] \
[--tls-cert PEM --tls-key PEM]   (0 disables a limit or timer)";

struct Args {
    listen: String,
    config: ServerConfig,
    tls: Option<(String, String)>,
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{flag}: {value:?} is not a non-negative integer"))
}

fn parse(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut config = ServerConfig::default();
    config.path = Some("/sync/ws".to_owned());
    let mut listen = "127.0.0.1:8787".to_owned();
    let (mut cert, mut key) = (None, None);
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
            "--rate-limit" => {
                let (n, secs) = value
                    .split_once('/')
                    .ok_or_else(|| format!("--rate-limit: {value:?} is not N/SECS"))?;
                config.rate_limit_burst = number(&flag, n)?;
                config.rate_limit_window = Duration::from_secs(number(&flag, secs)?);
            }
            "--max-frame" => config.max_frame_len = number(&flag, &value)?,
            "--ping-interval" => config.ping_interval = ms(&value)?,
            "--idle-timeout" => config.idle_timeout = ms(&value)?,
            "--presence-ttl" => config.presence_ttl = ms(&value)?,
            "--room-max" => config.max_room_size = number(&flag, &value)?,
            "--tls-cert" => cert = Some(value),
            "--tls-key" => key = Some(value),
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
        tls,
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
    let server = adapters::tokio::start(
        Driver::new(server, MemoryStore::new(store)),
        ServerOptions::default(),
    );
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    println!("listening on {scheme}://{addr}/sync/ws");
    let serving = tokio::spawn(adapters::tokio::serve(server.clone(), listener, tls));
    tokio::signal::ctrl_c()
        .await
        .map_err(|e| format!("cannot wait for Ctrl-C: {e}"))?;
    tracing::info!("shutting down: closing every session with 1001");
    server.shutdown();
    let _ = serving.await;
    // The sessions' tasks write their close frames; give them a moment before exiting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}
