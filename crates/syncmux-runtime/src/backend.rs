//! The async backend seam (README, "Scaling out over Redis"): a store the native server adapters
//! drive without blocking, answered later and in any order.
//!
//! An embedded store ([`MemoryStore`](syncmux::MemoryStore)) answers inside the input that
//! asked, through the [`Driver`](syncmux::Driver), and keeps doing so: no task, no channel, no
//! copy. A [`Backend`] is the other way, for a store behind the network: the adapter hands
//! it each pull, push and replay as a future, spawned on the runtime, and applies the answer
//! to the state machine when it comes ([`Server::answer_pull`](syncmux::Server::answer_pull)
//! and its siblings, which accept answers in any order).
//!
//! A backend whose log is shared by several servers (Redis) also **follows** the log: every
//! server reads every entry, its own included, and hands it to a [`LogSink`], which routes it
//! to the subscribers ([`Server::handle_accepted`](syncmux::Server::handle_accepted)). Its
//! pushes are then answered without routing
//! ([`Server::answer_push_unrouted`](syncmux::Server::answer_push_unrouted)), so each change
//! reaches each subscriber once, in log order, on every server. A subscribe that asks for no
//! replay is answered at once with where the server has followed the log to: everything
//! after that reaches the session live.

use core::fmt;
use core::future::Future;
use core::pin::Pin;
use std::sync::{Arc, Weak};

use syncmux::payload::{ChangeRecord, Cursor, Hlc, RawJson};
use syncmux::Driver;
use syncmux::Instant;
use syncmux::{
    AppError, PullAnswer, PushAnswer, RemoteSession, RoomChange, Server, ServerEvent, SessionId,
};

/// A boxed future a backend answers with.
pub type BackendFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A pull or a replay for a [`Backend`] to read: the changes of `tables` after `cursor` in
/// position order (`complete: false` when it cannot serve the cursor, falling back to
/// `since`), or after `since` in HLC order, or all of them; with the head it read at.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub struct Read {
    /// The tables.
    pub tables: Vec<String>,
    /// Only changes with a greater HLC.
    pub since: Option<Hlc>,
    /// Only changes after this position.
    pub cursor: Option<Cursor>,
    /// A subscribe that asked for no replay: only the head matters (and `complete: true`).
    /// Asked of a backend that follows a log only until its follower said where it stands
    /// ([`LogSink::at`]); after that, such a subscribe starts where the follower stands.
    pub head_only: bool,
}

impl Read {
    /// A read of everything retained for `tables`.
    pub fn new(tables: Vec<String>) -> Read {
        Read {
            tables,
            since: None,
            cursor: None,
            head_only: false,
        }
    }
}

/// A push for a [`Backend`] to merge.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub struct Push {
    /// The session pushing: a backend that follows a log records it with the entries, and
    /// hands it back with them to [`LogSink::accepted`] on this server.
    pub session: SessionId,
    /// Its node id.
    pub node_id: String,
    /// The changes to merge.
    pub changes: Vec<ChangeRecord>,
}

/// A session asking to join a room, for a [`Backend`] that shares rooms to admit
/// ([`Backend::admit`]).
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub struct Admit {
    /// The session joining.
    pub session: SessionId,
    /// Its node id.
    pub node_id: String,
    /// The room.
    pub room: String,
    /// The most members the room may have, over every server.
    pub max_size: usize,
}

/// A store that answers later (README, "Scaling out over Redis"): the seam the native server
/// adapters drive (`Runtime::start_with_backend`).
///
/// Each method returns at once with a future the adapter spawns; futures run concurrently
/// and may finish in any order. An error answers the request with an `error` frame
/// ([`AppError::unavailable`] for a store that cannot be reached: `UNAVAILABLE`); the
/// session stays open.
pub trait Backend: Send + Sync + 'static {
    /// Reads for a pull or a replay.
    fn read(&self, read: Read) -> BackendFuture<Result<PullAnswer, AppError>>;

    /// Merges a push and answers with the changes that were new, each at its position.
    fn push(&self, push: Push) -> BackendFuture<Result<PushAnswer, AppError>>;

    /// Follows a log shared with other servers, handing every entry to `log` in log order,
    /// until `log` says the server is gone. `None` (the default) for a store only this
    /// server writes: its pushes' answers are then routed as they come.
    fn follow(&self, log: LogSink) -> Option<BackendFuture<()>> {
        let _ = log;
        None
    }

    /// Whether the backend shares presence and rooms with other servers (the default:
    /// no). Then the server reports its sessions' changes
    /// ([`ServerConfig::shared_presence`](syncmux::ServerConfig::shared_presence)), the
    /// adapter hands each to [`publish`](Backend::publish), one at a time and in order, and
    /// the backend's follower hands the other servers' to [`LogSink::remote_presence`],
    /// [`LogSink::remote_room`] and [`LogSink::remote_gone`].
    fn shares_presence(&self) -> bool {
        false
    }

    /// Admits a session to a room if the room, over every server, has fewer than
    /// `max_size` members or already counts it, and counts it from then on; `Ok(false)`
    /// refuses (`ROOM_FULL`). Asked only of a backend that [shares
    /// presence](Backend::shares_presence), for a join this server's own view lets pass: two
    /// servers that each see one place left must not both fill it. The default admits (each
    /// server then decides from its own view, and two joins at the same moment may both
    /// pass). A join this server gives back (its session ended first) comes to
    /// [`publish`](Backend::publish) as a `Left`.
    fn admit(&self, join: Admit) -> BackendFuture<Result<bool, AppError>> {
        let _ = join;
        Box::pin(async { Ok(true) })
    }

    /// Tells the other servers of a change of this server's presence or rooms: a
    /// [`ServerEvent::PresenceChanged`] or a [`ServerEvent::RoomChanged`]. The next one waits
    /// until this one is done. Best effort: a failure is the backend's to log.
    fn publish(&self, change: ServerEvent) -> BackendFuture<()> {
        let _ = change;
        Box::pin(async {})
    }
}

/// How many presence and room changes may wait to be published; beyond it, changes are
/// dropped (and logged) until the backend catches up.
const MAX_UNPUBLISHED: usize = 65_536;

/// Work on the driver, done under the server's lock.
pub(crate) type Work<'a> = Box<dyn FnOnce(&mut Driver, Instant) + 'a>;

/// What a backend's tasks (its answers, its follower) ask of the server they serve: the
/// seam between the backend and the hub, which keeps its lock to itself.
pub(crate) trait Served: Send + Sync {
    /// Under the server's lock: records that the follower stands at `followed`, then runs
    /// `work` on the driver and hands its outputs out.
    fn apply(&self, followed: Option<Cursor>, work: Option<Work<'_>>);
    /// Queues everything the server's sessions are in for the backend to publish again.
    fn announce(&self);
}

/// Spawns a task on the adapter's runtime.
pub(crate) type Spawn = fn(BackendFuture<()>);

/// A server's link to its backend, kept beside the state machine under the adapter's lock.
pub(crate) struct Link {
    backend: Arc<dyn Backend>,
    spawn: Spawn,
    served: Weak<dyn Served>,
    /// Whether the backend follows a log (its pushes are answered unrouted).
    follows: bool,
    /// Presence and room changes on their way to the backend, in order.
    publish: Option<async_channel::Sender<ServerEvent>>,
    /// Where this server has followed the log to, once its follower has said.
    followed: Option<Cursor>,
}

impl Link {
    /// Links `backend` to the server behind `served`, with its tasks (the follower of its
    /// log, the publisher of presence and rooms): spawn those once the link is in place.
    pub(crate) fn new(
        backend: Arc<dyn Backend>,
        spawn: Spawn,
        served: Weak<dyn Served>,
    ) -> (Link, Vec<BackendFuture<()>>) {
        let sink = LogSink {
            served: served.clone(),
        };
        let mut tasks = Vec::new();
        let follow = backend.follow(sink);
        let follows = follow.is_some();
        tasks.extend(follow);
        let publish = backend.shares_presence().then(|| {
            let (tx, rx) = async_channel::bounded::<ServerEvent>(MAX_UNPUBLISHED);
            let backend = backend.clone();
            tasks.push(Box::pin(async move {
                // Ends when the server (the sender's holder) is gone.
                while let Ok(change) = rx.recv().await {
                    backend.publish(change).await;
                }
            }) as BackendFuture<()>);
            tx
        });
        let link = Link {
            backend,
            spawn,
            served,
            follows,
            publish,
            followed: None,
        };
        (link, tasks)
    }

    /// Whether the backend shares presence and rooms.
    pub(crate) fn shares_presence(&self) -> bool {
        self.publish.is_some()
    }

    /// Queues a presence or room change for the backend to publish.
    pub(crate) fn dispatch_change(&self, change: ServerEvent) {
        if let Some(publish) = &self.publish {
            if let Err(async_channel::TrySendError::Full(_)) = publish.try_send(change) {
                tracing::error!(
                    "presence and room changes are not published fast enough: one dropped"
                );
            }
        }
    }

    /// Records where the follower stands.
    pub(crate) fn set_followed(&mut self, position: Cursor) {
        self.followed = Some(position);
    }

    /// Whether the event is one for the backend (a pull, a push, a replay, a room join to
    /// admit, or a presence or room change).
    pub(crate) fn wants(event: &ServerEvent) -> bool {
        matches!(
            event,
            ServerEvent::Pull { .. }
                | ServerEvent::Push { .. }
                | ServerEvent::Replay { .. }
                | ServerEvent::RoomJoin { .. }
                | ServerEvent::PresenceChanged { .. }
                | ServerEvent::RoomChanged { .. }
        )
    }

    /// Hands a pull, push or replay to the backend. A subscribe without replay on a followed
    /// log is answered at once (then `true`: drain again).
    pub(crate) fn dispatch(
        &mut self,
        driver: &mut Driver,
        now: Instant,
        event: ServerEvent,
    ) -> bool {
        match (event, self.followed.filter(|_| self.follows)) {
            (
                ServerEvent::Replay {
                    request,
                    head_only: true,
                    ..
                },
                Some(head),
            ) => {
                let answer = PullAnswer {
                    head,
                    complete: true,
                    ..PullAnswer::default()
                };
                driver.with_server(now, |s| s.answer_replay(now, request, Ok(answer)));
                return true;
            }
            (
                ServerEvent::Replay {
                    request,
                    tables,
                    since,
                    cursor,
                    head_only,
                    ..
                },
                _,
            ) => {
                let read = self.backend.read(Read {
                    tables,
                    since,
                    cursor,
                    head_only,
                });
                self.answer_later(read, move |s, now, out| s.answer_replay(now, request, out));
            }
            (
                ServerEvent::Pull {
                    request,
                    tables,
                    since,
                    cursor,
                    ..
                },
                _,
            ) => {
                let read = self.backend.read(Read {
                    tables,
                    since,
                    cursor,
                    head_only: false,
                });
                self.answer_later(read, move |s, now, out| s.answer_pull(now, request, out));
            }
            (
                ServerEvent::Push {
                    request,
                    session,
                    node_id,
                    changes,
                },
                _,
            ) => {
                let push = self.backend.push(Push {
                    session,
                    node_id,
                    changes,
                });
                let routed = !self.follows;
                self.answer_later(push, move |s, now, out| match routed {
                    true => s.answer_push(now, request, out),
                    false => s.answer_push_unrouted(now, request, out),
                });
            }
            (
                ServerEvent::RoomJoin {
                    request,
                    session,
                    node_id,
                    room,
                    max_size,
                },
                _,
            ) => {
                let admit = self.backend.admit(Admit {
                    session,
                    node_id,
                    room,
                    max_size,
                });
                self.answer_later(admit, move |s, now, out| {
                    s.answer_room_join(now, request, out);
                });
            }
            (
                change @ (ServerEvent::PresenceChanged { .. } | ServerEvent::RoomChanged { .. }),
                _,
            ) => {
                self.dispatch_change(change);
            }
            (other, _) => tracing::debug!(?other, "not a backend's event"),
        }
        false
    }
}

impl Link {
    /// Spawns the backend's `work` and, when it is done, applies `answer` to the state
    /// machine under the adapter's lock (nothing, if the server is gone by then).
    fn answer_later<T: Send + 'static>(
        &self,
        work: BackendFuture<T>,
        answer: impl FnOnce(&mut Server, Instant, T) + Send + 'static,
    ) {
        let served = self.served.clone();
        (self.spawn)(Box::pin(async move {
            let out = work.await;
            if let Some(served) = served.upgrade() {
                let work = move |d: &mut Driver, now| d.with_server(now, |s| answer(s, now, out));
                served.apply(None, Some(Box::new(work)));
            }
        }));
    }
}

/// Where a [`Backend`]'s follower hands the entries of the shared log: the server routes
/// each to the subscribers of its table ([`Server::handle_accepted`]). Cheap to clone; every
/// method returns `false` once the server is gone, when the follower should stop.
///
/// [`Server::handle_accepted`]: syncmux::Server::handle_accepted
#[derive(Clone)]
pub struct LogSink {
    served: Weak<dyn Served>,
}

impl fmt::Debug for LogSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogSink").finish_non_exhaustive()
    }
}

impl LogSink {
    /// The follower stands at `position` without routing anything: where it started (the
    /// log's head), or the start of a new epoch (the log lost its data). A subscribe that
    /// asks for no replay starts at the last position handed over.
    pub fn at(&self, position: Cursor) -> bool {
        self.with(Some(position), None)
    }

    /// Entries after the last ones handed over, in log order: routed to the subscribers of
    /// their tables on this server, except to `pushed_by` (the session of this server that
    /// pushed them, as [`Push::session`] said; `None` for another server's entries).
    pub fn accepted(
        &self,
        changes: Vec<(Cursor, ChangeRecord)>,
        pushed_by: Option<SessionId>,
    ) -> bool {
        let last = changes.last().map(|(position, _)| *position);
        self.with(
            last,
            Some(Box::new(move |d: &mut Driver, now| {
                d.with_server(now, |s| s.handle_accepted(now, changes, pushed_by));
            })),
        )
    }

    /// The log lost entries after the last ones handed over, before the follower read them
    /// (trimmed by retention while the follower lagged): this server's subscribers are
    /// closed to resume from their cursors
    /// ([`Server::handle_log_gap`](syncmux::Server::handle_log_gap)). Hand the entries after
    /// the gap to [`accepted`](LogSink::accepted) as usual.
    pub fn gap(&self) -> bool {
        self.on_server(|s, now| {
            let closed = s.handle_log_gap(now);
            tracing::warn!(closed, "the shared log was trimmed past this server's position: its subscribers resume from their cursors");
        })
    }

    /// A session of another server joined, updated (`data: Some`) or left a presence topic
    /// ([`Server::handle_remote_presence`](syncmux::Server::handle_remote_presence)).
    pub fn remote_presence(
        &self,
        from: RemoteSession,
        node_id: &str,
        topic: &str,
        data: Option<RawJson>,
        updated_at: u64,
    ) -> bool {
        self.on_server(|s, now| {
            s.handle_remote_presence(now, from, node_id, topic, data, updated_at);
        })
    }

    /// A session of another server joined, left or broadcast to a room
    /// ([`Server::handle_remote_room`](syncmux::Server::handle_remote_room)).
    pub fn remote_room(
        &self,
        from: RemoteSession,
        node_id: &str,
        room: &str,
        change: RoomChange,
    ) -> bool {
        self.on_server(|s, now| s.handle_remote_room(now, from, node_id, room, change))
    }

    /// Another server is gone: its sessions leave everything
    /// ([`Server::handle_remote_gone`](syncmux::Server::handle_remote_gone)).
    pub fn remote_gone(&self, server: &str) -> bool {
        self.on_server(|s, now| s.handle_remote_gone(now, server))
    }

    /// Publishes again everything this server's sessions are in
    /// ([`Server::shared_state`](syncmux::Server::shared_state)), after the changes already
    /// queued: for a backend that lost it, or that took this server for dead.
    pub fn announce(&self) -> bool {
        let Some(served) = self.served.upgrade() else {
            return false;
        };
        served.announce();
        true
    }

    /// Whether the server is gone (the follower should stop).
    pub fn is_closed(&self) -> bool {
        self.served.strong_count() == 0
    }

    /// Runs `f` on the state machine under the server's lock; `false` once it is gone.
    fn on_server(&self, f: impl FnOnce(&mut Server, Instant)) -> bool {
        self.with(
            None,
            Some(Box::new(|d: &mut Driver, now| {
                d.with_server(now, |s| f(s, now))
            })),
        )
    }

    fn with(&self, followed: Option<Cursor>, work: Option<Work<'_>>) -> bool {
        let Some(served) = self.served.upgrade() else {
            return false;
        };
        served.apply(followed, work);
        true
    }
}
