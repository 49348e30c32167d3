//! A command-line sync client: one JSON object per line on stdout.
//!
//! ```text
//! client --url URL --node-id ID [--token T] [--reconnect-delay MS] [--max-reconnect-delay MS]
//!        [--ping-interval MS] [--request-timeout MS] COMMAND
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
//! Errors print their code and message and exit non-zero.
//!
//! Flags are parsed by clap, each also read from an environment variable (`SYNCMUX_URL`,
//! `SYNCMUX_NODE_ID`, `SYNCMUX_TOKEN`, ...; `--help` names each); an invalid value exits with
//! code 2 and a message.

use std::future::Future;
use std::io::Read;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};
use serde_json::json;
use syncmux::payload::{ChangeRecord, Hlc, PullRequest, RawJson, Subscribe};
use syncmux::ClientConfig;
use syncmux::{ClientEvent, CloseReason, RequestError};
use syncmux_runtime::{self as adapters, ClientEvents, SyncClient};

/// A command-line syncmux client: one JSON object per line on stdout.
///
/// Every flag can also be set by the environment variable named in its help; a flag given on
/// the command line wins.
#[derive(Parser, Debug)]
#[command(name = "client", version)]
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
    Push(String),
    Subscribe(After, Vec<String>),
    Presence(String, String),
    Room(String, Option<String>),
}

impl Cli {
    fn into_parts(self) -> (ClientConfig, Command) {
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
            Sub::Push { file } => Command::Push(file),
            Sub::Subscribe { from, tables } => Command::Subscribe(after(from), tables),
            Sub::Presence { topic, json } => Command::Presence(topic, json),
            Sub::Room { room, message } => Command::Room(room, message),
        };
        (config, command)
    }
}

fn line(value: serde_json::Value) {
    println!("{value}");
}

fn fail(e: &RequestError) -> ExitCode {
    line(json!({"error": {"code": e.code().as_str(), "message": e.to_string()}}));
    ExitCode::FAILURE
}

fn json_arg(text: &str) -> Result<RawJson, RequestError> {
    RawJson::from_string(text.to_owned()).map_err(|e| RequestError::InvalidResponse {
        message: format!("argument is not JSON: {e}"),
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let (config, command) = Cli::parse().into_parts();
    let (client, events) = match adapters::tokio::connect(config) {
        Ok(pair) => pair,
        // A configuration the client refuses (a malformed URL, ...): exit code 2, as for
        // every value clap refuses.
        Err(e) => Cli::command()
            .error(clap::error::ErrorKind::ValueValidation, e)
            .exit(),
    };
    match run(&client, events, command).await {
        Ok(()) => {
            client.close().await;
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

async fn run(
    client: &SyncClient,
    events: ClientEvents,
    command: Command,
) -> Result<(), RequestError> {
    let value = |v: &dyn erased::Json| v.json();
    match command {
        Command::Pull(after, tables) => {
            let mut pull = PullRequest::new(tables).since(after.since);
            pull.cursor = after.cursor;
            let pulled = client.pull(pull).await?;
            line(value(&pulled));
        }
        Command::Push(file) => {
            let mut text = String::new();
            let read = if file == "-" {
                std::io::stdin().read_to_string(&mut text).map(drop)
            } else {
                std::fs::read_to_string(&file).map(|t| text = t)
            };
            read.map_err(|e| RequestError::InvalidResponse {
                message: format!("{file}: {e}"),
            })?;
            let changes: Vec<ChangeRecord> =
                serde_json::from_str(&text).map_err(|e| RequestError::InvalidResponse {
                    message: format!("{file}: not a JSON array of change records: {e}"),
                })?;
            line(value(&client.push(changes).await?));
        }
        Command::Subscribe(after, tables) => {
            let subscribed = async move {
                let mut subscribe = Subscribe::new(tables).since(after.since);
                subscribe.cursor = after.cursor;
                let ack = client.subscribe(subscribe).await?;
                let resume = ack.map(|a| json!({"recovered": a.recovered, "cursor": a.cursor}));
                Ok(json!({"subscribed": true, "resume": resume}))
            };
            return follow(events, Box::pin(subscribed)).await;
        }
        Command::Presence(topic, data) => {
            let data = json_arg(&data)?;
            let joined = async move {
                client.update_presence(topic.clone(), data).await?;
                Ok(value(&client.get_presence(topic).await?))
            };
            return follow(events, Box::pin(joined)).await;
        }
        Command::Room(room, None) => {
            let joined = async move {
                client.join_room(room.clone(), None).await?;
                Ok(json!({"joined": room}))
            };
            return follow(events, Box::pin(joined)).await;
        }
        Command::Room(room, Some(text)) => {
            client.join_room(room.clone(), None).await?;
            let data =
                RawJson::from_serialize(&text).map_err(|e| RequestError::InvalidResponse {
                    message: e.to_string(),
                })?;
            client.broadcast(room.clone(), data).await?;
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
            _ = tokio::signal::ctrl_c() => return Ok(()),
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
