//! Presence and rooms shared over Redis (README, "Scaling out over Redis",
//! [`RedisConfig::share_presence`]).
//!
//! Each server publishes its sessions' changes on the channel `{PREFIX}:events`, tagged with
//! its name, and keeps them in the hash `{PREFIX}:presence` (one field per member of a topic
//! or room, listed per server in `{PREFIX}:members:SERVER`) for servers that start later; one
//! script does both (`share.lua`). Every server subscribes to the channel, reads the hash
//! after subscribing (and again after every reconnect, removing what vanished), and hands the
//! other servers' members to its state machine. A heartbeat per server (`beat.lua`, by Redis'
//! clock, in the sorted set `{PREFIX}:servers`) lets the survivors remove the members of a
//! server silent for longer than [`RedisConfig::server_ttl`]; a server that finds itself
//! unknown (Redis lost its data, or took it for gone) announces its members again.
//!
//! A room's members are also counted in the set `{PREFIX}:room:NAME`: a join that the
//! server's own view lets pass is admitted by one script (`admit.lua`) that checks that count
//! and takes the place in the same step, so two joins on two servers at the same moment cannot
//! both take the last place. A server that dies leaves its places to its heartbeat's reaper.

use std::collections::BTreeMap;

use core::time::Duration;

use futures_util::StreamExt;
use redis::RedisError;
use serde::{Deserialize, Serialize};

use crate::{Inner, RedisConfig};
use syncmux::payload::RawJson;
use syncmux::{AppError, RemoteSession, RoomChange, ServerEvent};
use syncmux_runtime::{Admit, LogSink};

/// A member's state, the value of its hash field.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
struct State {
    /// Node id.
    n: String,
    /// Presence data, or room member data.
    d: Option<RawJson>,
    /// `updated_at` (presence).
    u: u64,
}

/// What the channel carries: a server gone, or one member's change.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
struct Event {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gone: Option<String>,
    /// The server.
    #[serde(default)]
    s: String,
    /// The session there.
    #[serde(default)]
    i: u64,
    /// `p` (presence topic) or `r` (room).
    #[serde(default)]
    k: String,
    /// The topic or room.
    #[serde(default)]
    t: String,
    /// `set`, `del` or `msg` (a room message).
    #[serde(default)]
    c: String,
    /// Node id.
    #[serde(default)]
    n: String,
    /// Data.
    #[serde(default)]
    d: Option<RawJson>,
    /// `updated_at`.
    #[serde(default)]
    u: u64,
}

/// The members of other servers this server knows of, by hash field.
type Mirror = BTreeMap<String, Event>;

/// The hash field naming one member of a topic (`p`) or room (`r`).
fn field(server: &str, session: u64, kind: &str, name: &str) -> String {
    // Strings and numbers always serialise.
    serde_json::to_string(&(server, session, kind, name)).unwrap_or_default()
}

impl Inner {
    /// Publishes one change of this server's presence or rooms (see
    /// [`Backend::publish`](syncmux_runtime::Backend::publish)); failures are logged.
    pub(super) async fn publish(&self, change: ServerEvent) {
        let me = &self.instance;
        // The room whose count changes, for a room member's field.
        let mut counted = String::new();
        let (field, state, event) = match change {
            ServerEvent::PresenceChanged {
                session,
                node_id,
                topic,
                data,
                updated_at,
            } => {
                let i = session.as_u64();
                let state = data.clone().map(|d| State {
                    n: node_id.clone(),
                    d: Some(d),
                    u: updated_at,
                });
                let event = Event {
                    s: me.clone(),
                    i,
                    k: "p".into(),
                    c: if state.is_some() { "set" } else { "del" }.into(),
                    n: node_id,
                    d: data,
                    u: updated_at,
                    t: topic,
                    gone: None,
                };
                (field(me, i, "p", &event.t), state, event)
            }
            ServerEvent::RoomChanged {
                session,
                node_id,
                room,
                change,
            } => {
                let i = session.as_u64();
                let (c, d, state) = match change {
                    RoomChange::Joined { data } => {
                        let state = State {
                            n: node_id.clone(),
                            d: data.clone(),
                            u: 0,
                        };
                        ("set", data, Some(state))
                    }
                    RoomChange::Message { data } => ("msg", data, None),
                    _ => ("del", None, None),
                };
                let f = match c {
                    "msg" => String::new(),
                    _ => {
                        counted.clone_from(&room);
                        field(me, i, "r", &room)
                    }
                };
                let event = Event {
                    s: me.clone(),
                    i,
                    k: "r".into(),
                    t: room,
                    c: c.into(),
                    n: node_id,
                    d,
                    u: 0,
                    gone: None,
                };
                (f, state, event)
            }
            _ => return,
        };
        let state = state
            .and_then(|s| serde_json::to_string(&s).ok())
            .unwrap_or_default();
        let Ok(event) = serde_json::to_string(&event) else {
            return;
        };
        let mut conn = self.conn.clone();
        let done: Result<i64, RedisError> = self
            .share
            .key(&self.meta)
            .arg(&self.prefix)
            .arg(me)
            .arg(field)
            .arg(state)
            .arg(event)
            .arg(counted)
            .invoke_async(&mut conn)
            .await;
        if let Err(e) = done {
            tracing::warn!(error = %e, "a presence or room change was not shared");
        }
    }

    /// Admits a session to a room if the room has room over every server (`admit.lua`).
    pub(super) async fn admit(&self, join: Admit) -> Result<bool, AppError> {
        let mut conn = self.conn.clone();
        let me = &self.instance;
        let admitted: i64 = self
            .admit
            .key(&self.meta)
            .arg(&self.prefix)
            .arg(me)
            .arg(field(me, join.session.as_u64(), "r", &join.room))
            .arg(&join.room)
            .arg(join.max_size)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| crate::failed(&e))?;
        Ok(admitted == 1)
    }

    /// Follows the other servers' presence and rooms until the server is gone, reconnecting
    /// with backoff.
    pub(super) async fn follow_presence(&self, log: LogSink) {
        let mut mirror = Mirror::new();
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.presence_session(&log, &mut mirror).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "Redis lost: presence and rooms reconnect");
                    if log.is_closed() {
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// One subscription: subscribe, beat, read the members, then follow the channel and beat
    /// until the connection fails (`Err`) or the server is gone (`Ok`).
    async fn presence_session(&self, log: &LogSink, mirror: &mut Mirror) -> Result<(), RedisError> {
        let events = format!("{}events", self.prefix);
        let mut pubsub = self.target.primary().await?.get_async_pubsub().await?;
        pubsub.subscribe(&events).await?;
        self.beat(log).await?;
        let mut conn = self.conn.clone();
        let stored: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(format!("{}presence", self.prefix))
            .query_async(&mut conn)
            .await?;
        let mut now = Mirror::new();
        for (field, state) in stored {
            let Ok((s, i, k, t)) = serde_json::from_str::<(String, u64, String, String)>(&field)
            else {
                continue;
            };
            let Ok(state) = serde_json::from_str::<State>(&state) else {
                continue;
            };
            if s != self.instance {
                let event = Event {
                    s,
                    i,
                    k,
                    t,
                    c: "set".into(),
                    n: state.n,
                    d: state.d,
                    u: state.u,
                    gone: None,
                };
                now.insert(field, event);
            }
        }
        // What vanished while this server was not listening has left.
        let vanished: Vec<String> = mirror
            .keys()
            .filter(|f| !now.contains_key(*f))
            .cloned()
            .collect();
        for f in vanished {
            if let Some(mut event) = mirror.remove(&f) {
                event.c = "del".into();
                if !apply(log, &event) {
                    return Ok(());
                }
            }
        }
        for (f, event) in now {
            if mirror.get(&f) != Some(&event) {
                if !apply(log, &event) {
                    return Ok(());
                }
                mirror.insert(f, event);
            }
        }
        let mut stream = pubsub.into_on_message();
        let mut beat = tokio::time::interval(self.config.heartbeat);
        beat.tick().await;
        loop {
            tokio::select! {
                message = stream.next() => {
                    let Some(message) = message else {
                        return Err(RedisError::from(std::io::Error::new(
                            std::io::ErrorKind::ConnectionReset,
                            "the subscription ended",
                        )));
                    };
                    let Ok(event) = serde_json::from_slice::<Event>(message.get_payload_bytes()) else {
                        tracing::warn!("an unreadable presence event: skipped");
                        continue;
                    };
                    if !self.heard(log, mirror, event) {
                        return Ok(());
                    }
                }
                _ = beat.tick() => {
                    self.beat(log).await?;
                    if log.is_closed() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// This server is alive; announces its members again when Redis did not know it.
    async fn beat(&self, log: &LogSink) -> Result<(), RedisError> {
        let mut conn = self.conn.clone();
        let ttl = u64::try_from(self.config.server_ttl.as_millis()).unwrap_or(u64::MAX);
        let new: i64 = self
            .beat
            .key(&self.meta)
            .arg(&self.prefix)
            .arg(&self.instance)
            .arg(ttl)
            .invoke_async(&mut conn)
            .await?;
        if new == 1 {
            log.announce();
        }
        Ok(())
    }

    /// An event from the channel; `false` once the server is gone.
    fn heard(&self, log: &LogSink, mirror: &mut Mirror, event: Event) -> bool {
        if let Some(gone) = &event.gone {
            mirror.retain(|_, e| e.s != *gone);
            return *gone == self.instance || log.remote_gone(gone);
        }
        if event.s == self.instance {
            return true;
        }
        let f = field(&event.s, event.i, &event.k, &event.t);
        match event.c.as_str() {
            "set" => {
                // Also read from the hash when this subscription began: once is enough.
                if mirror.get(&f) == Some(&event) {
                    return true;
                }
                mirror.insert(f, event.clone());
            }
            "del" => {
                mirror.remove(&f);
            }
            _ => {}
        }
        apply(log, &event)
    }
}

/// Hands one member's change to the state machine; `false` once the server is gone.
fn apply(log: &LogSink, e: &Event) -> bool {
    let from = RemoteSession {
        server: e.s.clone(),
        session: e.i,
    };
    match (e.k.as_str(), e.c.as_str()) {
        ("p", "set") => log.remote_presence(from, &e.n, &e.t, e.d.clone(), e.u),
        ("p", "del") => log.remote_presence(from, &e.n, &e.t, None, e.u),
        ("r", "set") => log.remote_room(from, &e.n, &e.t, RoomChange::Joined { data: e.d.clone() }),
        ("r", "del") => log.remote_room(from, &e.n, &e.t, RoomChange::Left),
        ("r", "msg") => {
            log.remote_room(from, &e.n, &e.t, RoomChange::Message { data: e.d.clone() })
        }
        _ => true,
    }
}

impl RedisConfig {
    /// The defaults of the presence fields.
    pub(super) const HEARTBEAT: Duration = Duration::from_secs(2);
    pub(super) const SERVER_TTL: Duration = Duration::from_secs(10);
}
