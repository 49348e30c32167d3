//! Opens N idle sync connections to a server and keeps them open (answering the server's
//! pings, so its idle timeout does not close them), to measure what idle sessions cost the
//! server. Prints `open N` once all are up; Ctrl-C ends.
//!
//! ```text
//! ulimit -n 20000       # both processes need a descriptor per connection
//! cargo build --profile bench -p syncmux-server -p syncmux-bench --bin syncmux-server --bin idle_conns
//! target/release/syncmux-server --listen 127.0.0.1:8790 &
//! grep VmRSS /proc/$!/status
//! target/release/idle_conns --url ws://127.0.0.1:8790/sync/ws --count 10000
//! ```

use std::process::ExitCode;

use futures_util::{stream, SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

const USAGE: &str = "usage: idle_conns --url ws://HOST:PORT/PATH [--count N]";

fn main() -> ExitCode {
    let (mut url, mut count) = (None, 10_000usize);
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        match (flag.as_str(), argv.next()) {
            ("--url", Some(u)) => url = Some(u),
            ("--count", Some(n)) if n.parse::<usize>().is_ok() => count = n.parse().unwrap_or(0),
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(url) = url else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&url, count)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("error: {why}");
            ExitCode::FAILURE
        }
    }
}

async fn run(url: &str, count: usize) -> Result<(), String> {
    let addr = url
        .strip_prefix("ws://")
        .and_then(|rest| rest.split('/').next())
        .ok_or_else(|| format!("{url}: only ws:// URLs"))?
        .to_owned();
    let sep = if url.contains('?') { '&' } else { '?' };
    // 64 handshakes at a time: fast, without a thundering herd on the listener's backlog.
    let mut opened = stream::iter(0..count)
        .map(|i| {
            let addr = addr.clone();
            let url = format!("{url}{sep}node_id=idle-{i}");
            async move {
                let tcp = TcpStream::connect(&addr)
                    .await
                    .map_err(|e| format!("connection {i}: {e}"))?;
                // tungstenite's default 128 KiB read buffer would cost this side 1.3 GB.
                let config = WebSocketConfig::default().read_buffer_size(4096);
                let (ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config))
                    .await
                    .map_err(|e| format!("handshake {i}: {e}"))?;
                tokio::spawn(idle(ws));
                Ok::<(), String>(())
            }
        })
        .buffer_unordered(64);
    let mut open = 0;
    while let Some(result) = opened.next().await {
        result?;
        open += 1;
    }
    println!("open {open}");
    tokio::signal::ctrl_c().await.map_err(|e| e.to_string())
}

/// Reads the connection, answering the server's `ping` frames with `pong` (same id and
/// payload), until it closes.
async fn idle(mut ws: tokio_tungstenite::WebSocketStream<TcpStream>) {
    while let Some(Ok(message)) = ws.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let Ok(mut frame) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        if frame["type"] == "ping" {
            frame["type"] = "pong".into();
            if ws.send(Message::text(frame.to_string())).await.is_err() {
                return;
            }
        }
    }
}
