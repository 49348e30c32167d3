//! syncmux: a sans-IO client and server for a multiplexed real-time sync protocol.
//!
//! CRDT and OT applications use one WebSocket to pull and push changes, stream live changes to
//! subscribers, share presence and talk in rooms. syncmux implements that protocol (specified
//! in `docs/protocol.md`) as pure state machines: they take in bytes and clock ticks and give back frames,
//! timers and events. They do no networking and read no clock or OS randomness, so they run
//! anywhere — tokio, smol, the browser, or another language's event loop — and every run can be
//! replayed exactly.
//!
//! ```text
//!   application ── commands ──▶ state machine ── poll_transmit ──▶ adapter ──▶ socket
//!               ◀── poll_event ──              ◀── handle_message ──        ◀──
//! ```
//!
//! # Example
//!
//! A client and a server (with the embedded store) in one process, frames carried by hand —
//! exactly what an adapter does with a socket in between. Time is whatever the caller says.
//!
//! ```
//! use syncmux::payload::{ChangeRecord, Hlc, PullRequest, RawJson};
//! use syncmux::{
//!     Client, ClientConfig, ClientEvent, ClientTransmit, Driver, Handshake, HandshakeOutcome,
//!     Instant, MemoryStore, Response, Server, ServerConfig, ServerTransmit, StoreConfig,
//! };
//!
//! let mut server = Driver::new(
//!     Server::new(ServerConfig::default())?,
//!     MemoryStore::new(StoreConfig::default()),
//! );
//! let mut client = Client::new(ClientConfig::new("ws://localhost/sync/ws", "alice"))?;
//! let now = Instant::ZERO;
//!
//! // The application asks; the first command makes the client dial.
//! let change = ChangeRecord::new("docs", "1", "title", "lww", Hlc::new(5, 0, "alice"), "alice")
//!     .with_value(RawJson::from_serialize("Hello")?);
//! let push = client.push(now, vec![change])?;
//! let pull = client.pull(now, PullRequest::new(["docs"]))?;
//!
//! // The adapter's part: the dial becomes a handshake, then frames go both ways.
//! let Some(ClientTransmit::Connect(dial)) = client.poll_transmit() else { unreachable!() };
//! let query = dial.url.split_once('?').map_or("", |(_, q)| q);
//! let mut handshake = Handshake::new("/sync/ws", query);
//! for protocol in &dial.protocols {
//!     handshake = handshake.protocol(*protocol);
//! }
//! let HandshakeOutcome::Accept { session, protocol, .. } = server.handle_handshake(now, &handshake)
//! else {
//!     unreachable!()
//! };
//! client.handle_connected(now, protocol.as_deref());
//! while let Some(ClientTransmit::Frame(frame)) = client.poll_transmit() {
//!     server.handle_message(now, session, frame);
//! }
//! while let Some(ServerTransmit::Frame { session, bytes }) = server.poll_transmit() {
//!     server.handle_sent(now, session, bytes.len()); // the socket took it
//!     client.handle_message(now, bytes);
//! }
//!
//! // Every request ends in exactly one outcome, delivered as an event.
//! let mut merged = None;
//! let mut pulled = None;
//! while let Some(event) = client.poll_event() {
//!     match event {
//!         ClientEvent::Response { id, outcome: Ok(Response::Push(p)) } if id == push => {
//!             merged = Some(p.merged)
//!         }
//!         ClientEvent::Response { id, outcome: Ok(Response::Pull(p)) } if id == pull => {
//!             pulled = Some(p.changes.len())
//!         }
//!         _ => {}
//!     }
//! }
//! assert_eq!((merged, pulled), (Some(1), Some(1)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! After each input, drain `poll_transmit` and `poll_event`, then sleep until
//! `poll_timeout` and call `handle_timeout`: that loop is the whole integration.
//!
//! # The API on one page
//!
//! Both state machines have the same shape: inputs are `handle_*` methods that take the
//! current [`Instant`] first, commands return a handle at once, and outputs come out of
//! `poll_*` methods, which the caller drains after every input. A `now` that goes backwards
//! is clamped; a `handle_timeout` with nothing due does nothing.
//!
//! | | [`Client`] ([`ClientConfig`]) | [`Server`] ([`ServerConfig`]) |
//! |---|---|---|
//! | connection | [`handle_connected`](Client::handle_connected), [`handle_disconnected`](Client::handle_disconnected) | [`handle_handshake`](Server::handle_handshake) → [`HandshakeOutcome`], [`handle_disconnected`](Server::handle_disconnected) |
//! | frames in | [`handle_message`](Client::handle_message), [`handle_binary`](Client::handle_binary) | [`handle_message`](Server::handle_message), [`handle_binary`](Server::handle_binary), [`handle_sent`](Server::handle_sent) |
//! | time | [`handle_timeout`](Client::handle_timeout), [`poll_timeout`](Client::poll_timeout) | [`handle_timeout`](Server::handle_timeout), [`poll_timeout`](Server::poll_timeout) |
//! | to do | [`poll_transmit`](Client::poll_transmit) → [`ClientTransmit`]: connect, send a frame, close | [`poll_transmit`](Server::poll_transmit) → [`ServerTransmit`]: send a frame, close a session |
//! | to know | [`poll_event`](Client::poll_event) → [`ClientEvent`] | [`poll_event`](Server::poll_event) → [`ServerEvent`] |
//! | commands | [`pull`](Client::pull), [`push`](Client::push), [`subscribe`](Client::subscribe), [`unsubscribe`](Client::unsubscribe), presence, rooms, [`ping`](Client::ping) → [`RequestId`]; the outcome is a [`ClientEvent::Response`] | [`answer_pull`](Server::answer_pull), [`answer_push`](Server::answer_push), [`answer_replay`](Server::answer_replay) answer the [`ServerEvent`]s that need the application; [`close_session`](Server::close_session), [`shutdown`](Server::shutdown) |
//!
//! - **Requests** are built from the [`payload`] types: [`PullRequest`](payload::PullRequest)
//!   and [`Subscribe`](payload::Subscribe) say where to start (`since` an HLC, `after` a
//!   [`Cursor`](payload::Cursor)). Every request ends in exactly one outcome: a [`Response`]
//!   or a [`RequestError`].
//! - **The store**: [`MemoryStore`] is the embedded change log; [`Driver`] is a [`Server`]
//!   whose pulls, pushes and replays a [`Store`] answers at once, driven exactly like a
//!   `Server`. The crate `syncmux-sqlite` keeps the same log on disk (another `Store`). A
//!   backend whose answers take time answers the server's events itself, in any order and at
//!   any time.
//! - **Back pressure**: each session's outbound bytes are bounded
//!   ([`ServerConfig::max_outbound_bytes`]); a consumer too slow to keep up is closed with
//!   4503 and resumes from its cursor. An embedder that reports writes with
//!   [`handle_sent`](Server::handle_sent) (set [`ServerConfig::reports_writes`]) counts what
//!   its sockets have not taken yet; otherwise a frame counts as written once polled.
//! - **Errors**: [`ConfigError`] for configurations that cannot work; wire codes are
//!   [`ErrorCode`] and [`CloseCode`].
//! - **Modules**: [`payload`] holds the data types (HLCs, change records, every message's
//!   payload); [`wire`] the envelope codec; [`ot`] the OT profile (open-ot's text type, a
//!   document server and a client over the wire of `@open-ot/transport-websocket`).
//! - **I/O** lives in other crates: `syncmux-runtime` binds the state machines to tokio or
//!   smol sockets, `syncmux-redis` and `syncmux-sqlite` are backends, `syncmux-browser` is the
//!   browser client, and `syncmux-server` the deployable server and command-line client.
//!
//! The protocol itself is specified in `docs/protocol.md` in the repository.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(unreachable_pub)]

pub mod ot;
pub mod payload;
pub mod wire;

mod answer;
mod client;
mod config;
mod driver;
mod rng;
mod server;
mod store;
mod time;

pub use answer::{PullAnswer, PushAnswer};
pub use client::{
    Client, ClientConfig, ClientEvent, ClientState, ClientStats, ClientTransmit, CloseReason,
    DialRequest, RequestError, RequestId, Response,
};
pub use config::ConfigError;
pub use driver::Driver;
pub use server::{
    Access, AppError, AuthDecision, AuthRequest, Handshake, HandshakeOutcome, PullId, PushId,
    RemoteSession, ReplayId, Resource, RoomChange, RoomJoinId, Server, ServerConfig, ServerEvent,
    ServerStats, ServerTransmit, SessionId,
};
pub use store::{MemoryStore, Store, StoreConfig, StoredChange};
pub use time::Instant;
pub use wire::{CloseCode, ErrorCode};
