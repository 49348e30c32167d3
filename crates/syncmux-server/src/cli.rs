//! A command-line sync client: one JSON object per line on stdout.
//!
//! ```text
//! syncmux-cli --url URL --node-id ID [--token T] [--ca FILE] [--reconnect-delay MS]
//!        [--max-reconnect-delay MS] [--ping-interval MS] [--request-timeout MS] COMMAND
//! COMMAND: pull [--since HLC] [--cursor C] TABLE... | push FILE|-
//!        | subscribe [--since HLC] [--cursor C] TABLE...
//!        | presence TOPIC JSON | room ROOM [MESSAGE]
//! ```
//!
//! `subscribe`, `presence` and `room` (without a message) keep running and print what
//! arrives, across server restarts and servers that drop the connection before answering,
//! until Ctrl-C; only a refusal by the server (or a close that ends reconnecting) stops them. A
//! change line carries a `cursor` only where it is a resume point: the last line of each frame
//! gets the frame's cursor (the position of its last change), earlier lines of a batch none, so
//! resuming from the newest cursor printed never skips a change; a `pull` prints the response
//! with its `cursor`. Pass one back with
//! `--cursor` to get exactly what came after it, late changes with old HLCs included
//! (docs/protocol.md section 7, "Cursors, resume and replay order"); `--since` is the fallback for
//! a server that cannot serve the cursor, which a subscribe reports with `"recovered": false`.
//!
//! Exit codes: 0 done; 1 the server refused the request or did not answer it (a JSON line
//! `{"error": {"code", "message"}}` on stdout); 2 a bad flag or bad local input (a file that
//! cannot be read, records or presence data that are not JSON), said on stderr before anything
//! is sent. A one-shot command (`pull`, `push`, `room ROOM MESSAGE`) whose first connection
//! cannot be made stops at once, with the reason on stderr: 3 nothing answers at the address, 4
//! TLS failed (a certificate not trusted: see `--ca`), 5 the handshake was refused for want of
//! the right token (HTTP 401 or 403), 6 refused otherwise (HTTP 404 for a wrong path, ...).
//! The followers print such failures as events and keep trying.
//!
//! Flags are parsed by clap, each also read from an environment variable (`SYNCMUX_URL`,
//! `SYNCMUX_NODE_ID`, `SYNCMUX_TOKEN`, `SYNCMUX_CA`, ...; `--help` names each); an invalid
//! value exits with code 2 and a message.

use std::future::Future;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};
use serde_json::json;
use syncmux::payload::{ChangeRecord, Hlc, PullRequest, RawJson, Subscribe};
use syncmux::ClientConfig;
use syncmux::{ClientEvent, CloseReason, RequestError};
use syncmux_runtime::{self as adapters, ClientEvents, ClientOptions, SyncClient};

/// A command-line syncmux client: one JSON object per line on stdout.
///
/// Every flag can also be set by the environment variable named in its help; a flag given on
/// the command line wins.
#[derive(Parser, Debug)]
#[command(
    name = "syncmux-cli",
    version,
    after_help = "Exit codes: 0 done; 1 the server refused or did not answer (JSON on stdout); \
2 bad flags or input; a one-shot command that cannot connect: 3 nothing answers, 4 TLS \
(certificate: see --ca), 5 refused: 401/403 token, 6 refused otherwise (404 wrong path, ...)."
)]
struct Cli {
    /// The server's WebSocket URL (`ws://` or `wss://`).
    #[arg(long, env = "SYNCMUX_URL")]
    url: String,
    /// This client's node id (also the HLC node of what it pushes).
    #[arg(long, env = "SYNCMUX_NODE_ID", value_name = "ID")]
    node_id: String,
    /// The server's token.
    #[arg(long, env = "SYNCMUX_TOKEN", value_name = "T", hide_env_values = true)]
    token: Option<String>,
    /// Trust the certificates in FILE (PEM), a private CA or a self-signed server certificate,
    /// instead of the public roots, for `wss://`.
    #[arg(long, env = "SYNCMUX_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// First delay before reconnecting, in milliseconds (doubles up to
    /// --max-reconnect-delay) [default: the library's].
    #[arg(long, env = "SYNCMUX_RECONNECT_DELAY", value_name = "MS", value_parser = millis)]
    reconnect_delay: Option<Duration>,
    /// Longest delay between reconnects, in milliseconds [default: the library's].
    #[arg(long, env = "SYNCMUX_MAX_RECONNECT_DELAY", value_name = "MS", value_parser = millis)]
    max_reconnect_delay: Option<Duration>,
    /// Ping a silent server this often, in milliseconds [default: the library's].
    #[arg(long, env = "SYNCMUX_PING_INTERVAL", value_name = "MS", value_parser = millis)]
    ping_interval: Option<Duration>,
    /// Give up on a request after this long, in milliseconds [default: the library's].
    #[arg(long, env = "SYNCMUX_REQUEST_TIMEOUT", value_name = "MS", value_parser = millis)]
    request_timeout: Option<Duration>,
    #[command(subcommand)]
    command: Sub,
}

/// Where a pull or subscribe starts.
#[derive(Args, Debug)]
struct Start {
    /// Only changes after this HLC (`ts:counter:node`); the fallback when the cursor cannot
    /// be served.
    #[arg(long, value_name = "HLC")]
    since: Option<Hlc>,
    /// Exactly the changes after this cursor (as printed by an earlier pull or change). Any
    /// string: cursors are opaque, and one the server cannot serve is answered from --since
    /// with `"recovered": false`.
    #[arg(long, value_name = "C")]
    cursor: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Print the changes of TABLEs (all, or after --since / --cursor) with the cursor.
    Pull {
        #[command(flatten)]
        from: Start,
        /// Tables to pull.
        #[arg(required = true, value_name = "TABLE")]
        tables: Vec<String>,
    },
    /// Push a JSON array of change records from FILE (`-`: standard input).
    Push {
        /// The file, or `-` for standard input.
        file: String,
    },
    /// Follow TABLEs: print each change with its cursor, across reconnects, until Ctrl-C.
    Subscribe {
        #[command(flatten)]
        from: Start,
        /// Tables to follow.
        #[arg(required = true, value_name = "TABLE")]
        tables: Vec<String>,
    },
    /// Join a presence TOPIC with JSON data; print the snapshot, then events until Ctrl-C.
    Presence {
        /// The topic.
        topic: String,
        /// This client's presence data (JSON).
        json: String,
    },
    /// Join ROOM and say MESSAGE, or (without one) print what the room says until Ctrl-C.
    Room {
        /// The room.
        room: String,
        /// What to say.
        message: Option<String>,
    },
}

fn millis(value: &str) -> Result<Duration, String> {
    value
        .parse()
        .map(Duration::from_millis)
        .map_err(|_| format!("{value:?} is not a whole number of milliseconds"))
}

/// Where a pull or subscribe starts: after an HLC, after a server cursor, or both.
#[derive(Default)]
struct After {
    since: Option<Hlc>,
    /// Opaque: passed on as given.
    cursor: Option<String>,
}

enum Command {
    Pull(After, Vec<String>),
    /// The records, read and checked before connecting.
    Push(Vec<ChangeRecord>),
    Subscribe(After, Vec<String>),
    Presence(String, RawJson),
    Room(String, Option<String>),
}

impl Cli {
    /// The client's configuration, its adapter options and the command, with every local
    /// input (files, JSON) read and checked: a mistake there is the user's, said before any
    /// connection is made.
    fn into_parts(self) -> Result<(ClientConfig, ClientOptions, Command), String> {
        let mut options = ClientOptions::default();
        if let Some(ca) = &self.ca {
            options.tls = Some(trusting(ca)?);
        }
        let mut config = ClientConfig::default();
        config.url = self.url;
        config.node_id = self.node_id;
        config.token = self.token;
        let set = |field: &mut Duration, value: Option<Duration>| *field = value.unwrap_or(*field);
        set(&mut config.reconnect_delay, self.reconnect_delay);
        set(&mut config.max_reconnect_delay, self.max_reconnect_delay);
        set(&mut config.ping_interval, self.ping_interval);
        set(&mut config.request_timeout, self.request_timeout);
        if config.healthy_after > config.reconnect_delay {
            config.healthy_after = config.reconnect_delay;
        }
        let after = |from: Start| After {
            since: from.since,
            cursor: from.cursor,
        };
        let command = match self.command {
            Sub::Pull { from, tables } => Command::Pull(after(from), tables),
            Sub::Push { file } => Command::Push(records(&file)?),
            Sub::Subscribe { from, tables } => Command::Subscribe(after(from), tables),
            Sub::Presence { topic, json } => {
                let data = RawJson::from_string(json)
                    .map_err(|e| format!("presence: the data is not JSON: {e}"))?;
                Command::Presence(topic, data)
            }
            Sub::Room { room, message } => Command::Room(room, message),
        };
        Ok((config, options, command))
    }
}

/// `--ca FILE`: a TLS configuration that trusts the certificates in FILE.
fn trusting(ca: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let pem = std::fs::read(ca).map_err(|e| format!("--ca {}: {e}", ca.display()))?;
    // An empty trust store would refuse every server with a misleading certificate error.
    let has_certificate = String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----");
    if !has_certificate {
        return Err(format!(
            "--ca {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
            ca.display()
        ));
    }
    adapters::client_tls_trusting(&pem).map_err(|e| format!("--ca {}: {e}", ca.display()))
}

/// The change records of `push FILE` (`-`: standard input).
fn records(file: &str) -> Result<Vec<ChangeRecord>, String> {
    let (name, read) = if file == "-" {
        let mut text = String::new();
        let read = std::io::stdin().read_to_string(&mut text).map(|_| text);
        ("standard input".to_owned(), read)
    } else {
        (file.to_owned(), std::fs::read_to_string(file))
    };
    let text = read.map_err(|e| format!("push: cannot read {name}: {e}"))?;
    serde_json::from_str(&text)
        .map_err(|e| format!("push: {name} is not a JSON array of change records: {e}"))
}

/// Prints one line on stdout. A reader that went away (`| head -1`) is not an error of the
/// command's: the line is dropped rather than the process panicking.
fn line(value: serde_json::Value) {
    let _ = writeln!(std::io::stdout(), "{value}");
}

/// Why a command failed: its exit code, and where the reason goes (stdout carries what the
/// server said, stderr what went wrong before it could say anything).
enum Failure {
    /// The server refused the request, or never answered it: a JSON line, exit 1.
    Request(RequestError),
    /// The connection could not be made.
    Connect {
        /// The exit code of the cause (see [`connect_failure`]).
        code: u8,
        /// The client's reason.
        reason: String,
    },
}

impl From<RequestError> for Failure {
    fn from(e: RequestError) -> Failure {
        Failure::Request(e)
    }
}

/// Exit codes besides 0, 1 (the server refused or did not answer) and 2 (bad flags or input).
mod exit {
    /// Nothing answers at the address (refused, unreachable, unknown host).
    pub(crate) const UNREACHABLE: u8 = 3;
    /// TLS failed: most often a certificate the client does not trust (`--ca`).
    pub(crate) const TLS: u8 = 4;
    /// The server refused the handshake for want of the right token (HTTP 401 or 403).
    pub(crate) const UNAUTHORIZED: u8 = 5;
    /// The server refused the handshake otherwise (HTTP 404 wrong path, 503 full, ...).
    pub(crate) const REFUSED: u8 = 6;
}

/// The exit code of a dial that failed with `reason`.
///
/// The runtime reports a failed dial to the client only as text, so the cause is read back
/// from the words its dialer puts first (`connect ...`, `TLS with ...`, `handshake: HTTP
/// error: 401 ...`); anything else is a refusal of some other kind.
fn connect_failure(reason: &str) -> u8 {
    let status = reason
        .split_once("HTTP error: ")
        .and_then(|(_, rest)| rest.get(..3))
        .and_then(|digits| digits.parse::<u16>().ok());
    match status {
        Some(401 | 403) => exit::UNAUTHORIZED,
        Some(_) => exit::REFUSED,
        None if reason.starts_with("connect ") => exit::UNREACHABLE,
        None if reason.starts_with("TLS ") => exit::TLS,
        None => exit::REFUSED,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // Local mistakes (a missing file, JSON that does not parse): exit code 2 and a message,
    // as for every value clap refuses, before anything is sent.
    let refuse = |why: String| -> ! {
        Cli::command()
            .error(clap::error::ErrorKind::ValueValidation, why)
            .exit()
    };
    let cli = Cli::parse();
    let url = cli.url.clone();
    let (config, options, command) = cli.into_parts().unwrap_or_else(|why| refuse(why));
    let (client, events) = match adapters::Tokio::connect_with(config, options) {
        Ok(pair) => pair,
        // A configuration the client refuses (a malformed URL, ...).
        Err(e) => refuse(e.to_string()),
    };
    match run(&client, events, command).await {
        Ok(()) => {
            client.close().await;
            ExitCode::SUCCESS
        }
        Err(Failure::Request(e)) => {
            line(json!({"error": {"code": e.code().as_str(), "message": e.to_string()}}));
            ExitCode::FAILURE
        }
        Err(Failure::Connect { code, reason }) => {
            let _ = writeln!(
                std::io::stderr(),
                "error: cannot connect to {url}: {reason}"
            );
            ExitCode::from(code)
        }
    }
}

/// The outcome of a one-shot `request`, or, as soon as a dial fails before any connection
/// opened, that failure: a command that cannot connect says why at once instead of waiting
/// out the request timeout. Once a connection has opened, a drop is left to the client,
/// which re-sends the request after reconnecting.
async fn answered<T>(
    events: &mut ClientEvents,
    request: impl Future<Output = Result<T, RequestError>>,
) -> Result<T, Failure> {
    tokio::pin!(request);
    let mut open = false;
    loop {
        tokio::select! {
            biased;
            outcome = &mut request => return Ok(outcome?),
            event = events.recv() => match event {
                Some(ClientEvent::Connected) => open = true,
                Some(ClientEvent::Disconnected { reason, .. }) if !open => {
                    let code = connect_failure(&reason);
                    return Err(Failure::Connect { code, reason });
                }
                Some(ClientEvent::Disconnected { .. }) => open = false,
                Some(_) => {}
                // The client task is gone: the request ends on its own.
                None => return Ok((&mut request).await?),
            },
        }
    }
}

async fn run(
    client: &SyncClient,
    mut events: ClientEvents,
    command: Command,
) -> Result<(), Failure> {
    let value = |v: &dyn erased::Json| v.json();
    match command {
        Command::Pull(after, tables) => {
            let mut pull = PullRequest::new(tables).since(after.since);
            pull.cursor = after.cursor;
            let pulled = answered(&mut events, client.pull(pull)).await?;
            line(value(&pulled));
        }
        Command::Push(changes) => {
            let pushed = answered(&mut events, client.push(changes)).await?;
            line(value(&pushed));
        }
        Command::Subscribe(after, tables) => {
            let subscribed = async move {
                let mut subscribe = Subscribe::new(tables).since(after.since);
                subscribe.cursor = after.cursor;
                let ack = client.subscribe(subscribe).await?;
                let resume = ack.map(|a| json!({"recovered": a.recovered, "cursor": a.cursor}));
                Ok(json!({"subscribed": true, "resume": resume}))
            };
            return Ok(follow(events, Box::pin(subscribed)).await?);
        }
        Command::Presence(topic, data) => {
            let joined = async move {
                client.update_presence(topic.clone(), data).await?;
                Ok(value(&client.get_presence(topic).await?))
            };
            return Ok(follow(events, Box::pin(joined)).await?);
        }
        Command::Room(room, None) => {
            let joined = async move {
                client.join_room(room.clone(), None).await?;
                Ok(json!({"joined": room}))
            };
            return Ok(follow(events, Box::pin(joined)).await?);
        }
        Command::Room(room, Some(text)) => {
            answered(&mut events, client.join_room(room.clone(), None)).await?;
            let data =
                RawJson::from_serialize(&text).map_err(|e| RequestError::InvalidResponse {
                    message: e.to_string(),
                })?;
            answered(&mut events, client.broadcast(room.clone(), data)).await?;
            line(json!({"sent": text, "room": room}));
        }
    }
    Ok(())
}

/// Prints events until Ctrl-C or until the client closes for good, and the outcome of the
/// command that started following (a subscribe, a presence join, a room join) once it has
/// one.
///
/// A follower follows until it is told to stop: the command is printed when the server
/// answers it, however many reconnects that takes. A refusal by the server ends the client
/// (it cannot succeed by retrying); a timeout or a disconnect is printed and following goes
/// on, because the client restores the subscription (presence, room) after every reconnect.
async fn follow(
    mut events: ClientEvents,
    command: Pin<Box<dyn Future<Output = Result<serde_json::Value, RequestError>> + '_>>,
) -> Result<(), RequestError> {
    let mut command = Some(command);
    let mut stop = Stop::new();
    loop {
        let pending = async {
            match command.as_mut() {
                Some(command) => command.await,
                None => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            // Events first: the client queues a replay's changes before the subscribe's answer,
            // and the answer's cursor is a resume point only once they are printed.
            biased;
            event = events.recv() => event,
            outcome = pending => {
                command = None;
                match outcome {
                    Ok(value) => line(value),
                    Err(e @ RequestError::Server { .. }) => return Err(e),
                    Err(e) => line(
                        json!({"event": "error", "code": e.code().as_str(), "message": e.to_string()}),
                    ),
                }
                continue;
            }
            () = stop.requested() => return Ok(()),
        };
        let Some(event) = event else {
            return Err(RequestError::Closed);
        };
        match event {
            ClientEvent::Connected => line(json!({"event": "connected"})),
            ClientEvent::Disconnected { code, reason } => {
                line(json!({"event": "disconnected", "code": code.map(|c| c.0), "reason": reason}))
            }
            ClientEvent::Reconnecting { attempt, delay } => line(
                json!({"event": "reconnecting", "attempt": attempt, "delay_ms": delay.as_millis() as u64}),
            ),
            ClientEvent::Changes {
                changes, cursor, ..
            } => {
                // A frame's cursor is the position of its last record: printed on an earlier
                // line, it would make a user who resumes from there skip the rest of the batch.
                let last = changes.len().saturating_sub(1);
                for (i, change) in changes.into_iter().enumerate() {
                    match cursor.filter(|_| i == last) {
                        Some(cursor) => line(json!({"change": change, "cursor": cursor})),
                        None => line(json!({"change": change})),
                    }
                }
            }
            ClientEvent::Presence(p) => line(json!({"presence": p})),
            ClientEvent::Room(r) => line(json!({"room": r})),
            ClientEvent::ResyncNeeded { tables } => {
                line(json!({"event": "resync_needed", "tables": tables}))
            }
            ClientEvent::Error { code, message } => {
                line(json!({"event": "error", "code": code.as_str(), "message": message}))
            }
            ClientEvent::Closed { reason } => {
                let (code, message) = match reason {
                    CloseReason::Server { code, reason } => (code.0.to_string(), reason),
                    other => ("CLOSED".to_owned(), format!("{other:?}")),
                };
                line(json!({"event": "closed", "code": code, "message": message}));
                return Err(RequestError::Closed);
            }
            other => line(json!({"event": format!("{other:?}")})),
        }
    }
}

/// What ends a follower: SIGINT (Ctrl-C) or, on Unix, SIGTERM (a supervisor, `kill`, a
/// container stop). Either way the follower closes its connection (1000) and exits 0, rather
/// than dying by the signal with the connection dropped.
struct Stop {
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl Stop {
    fn new() -> Stop {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            // Without the handler, SIGTERM keeps its default: the process ends at once.
            Stop {
                terminate: signal(SignalKind::terminate()).ok(),
            }
        }
        #[cfg(not(unix))]
        Stop {}
    }

    /// Completes when a stop signal arrives.
    async fn requested(&mut self) {
        #[cfg(unix)]
        {
            let terminate = async {
                match self.terminate.as_mut() {
                    Some(signal) => drop(signal.recv().await),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                () = terminate => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Responses print as their JSON form.
mod erased {
    pub(crate) trait Json {
        fn json(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
        }
    }
}
