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
//! until Ctrl-C; only a refusal by the server (or a close that ends reconnecting) stops them. Each change line carries the `cursor` of
//! the frame that brought it (for a batch, the position of its last change, printed on each
//! of its lines); a `pull` prints the response with its `cursor`. Pass one back with
//! `--cursor` to get exactly what came after it, late changes with old HLCs included
//! (DESIGN.md section 3, "Cursors"); `--since` is the fallback for a server that cannot serve
//! the cursor, which a subscribe reports with `"recovered": false`. Errors print their code
//! and message and exit non-zero. Flags are parsed by hand, as in the server example.

use std::future::Future;
use std::io::Read;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;
use syncmux::adapters::{self, ClientEvents, SyncClient};
use syncmux::payload::{ChangeRecord, Cursor, Hlc, PullRequest, RawJson, Subscribe};
use syncmux::ClientConfig;
use syncmux::{ClientEvent, CloseReason, RequestError};

const USAGE: &str = "usage: client --url URL --node-id ID [--token T] [--reconnect-delay MS] \
[--max-reconnect-delay MS] [--ping-interval MS] [--request-timeout MS] \
(pull [--since HLC] [--cursor C] TABLE... | push FILE|- \
| subscribe [--since HLC] [--cursor C] TABLE... | presence TOPIC JSON | room ROOM [MESSAGE])";

/// Where a pull or subscribe starts: after an HLC, after a server cursor, or both.
#[derive(Default)]
struct After {
    since: Option<Hlc>,
    cursor: Option<Cursor>,
}

enum Command {
    Pull(After, Vec<String>),
    Push(String),
    Subscribe(After, Vec<String>),
    Presence(String, String),
    Room(String, Option<String>),
}

fn parse(argv: Vec<String>) -> Result<(ClientConfig, Command), String> {
    let mut it = argv.into_iter().peekable();
    let (mut url, mut node, mut config) = (None, None, ClientConfig::default());
    while let Some(flag) = it.next_if(|a| a.starts_with("--")) {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let ms = || {
            value
                .parse()
                .map(Duration::from_millis)
                .map_err(|_| format!("{flag}: {value:?} is not milliseconds"))
        };
        match flag.as_str() {
            "--url" => url = Some(value.clone()),
            "--node-id" => node = Some(value.clone()),
            "--token" => config.token = Some(value.clone()),
            "--reconnect-delay" => config.reconnect_delay = ms()?,
            "--max-reconnect-delay" => config.max_reconnect_delay = ms()?,
            "--ping-interval" => config.ping_interval = ms()?,
            "--request-timeout" => config.request_timeout = ms()?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    config.url = url.ok_or("--url is required")?;
    config.node_id = node.ok_or("--node-id is required")?;
    if config.healthy_after > config.reconnect_delay {
        config.healthy_after = config.reconnect_delay;
    }
    let sub = it.next().ok_or("a command is required")?;
    let mut after = After::default();
    while let Some(flag) = it.next_if(|a| a == "--since" || a == "--cursor") {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        if flag == "--since" {
            after.since = Some(value.parse().map_err(|e| format!("--since: {e}"))?);
        } else {
            after.cursor = Some(value.parse().map_err(|e| format!("--cursor: {e}"))?);
        }
    }
    let rest: Vec<String> = it.collect();
    let command = match (sub.as_str(), rest.as_slice()) {
        ("pull", [_, ..]) => Command::Pull(after, rest),
        ("subscribe", [_, ..]) => Command::Subscribe(after, rest),
        ("push", [file]) => Command::Push(file.clone()),
        ("presence", [topic, data]) => Command::Presence(topic.clone(), data.clone()),
        ("room", [room]) => Command::Room(room.clone(), None),
        ("room", [room, message]) => Command::Room(room.clone(), Some(message.clone())),
        _ => return Err(format!("bad command {sub} {}", rest.join(" "))),
    };
    Ok((config, command))
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
    let (config, command) = match parse(std::env::args().skip(1).collect()) {
        Ok(parsed) => parsed,
        Err(why) => {
            eprintln!("error: {why}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (client, events) = match adapters::tokio::connect(config) {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
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
            let pull = PullRequest::new(tables)
                .since(after.since)
                .after(after.cursor);
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
                let subscribe = Subscribe::new(tables)
                    .since(after.since)
                    .after(after.cursor);
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
                for change in changes {
                    line(json!({"change": change, "cursor": cursor}));
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
