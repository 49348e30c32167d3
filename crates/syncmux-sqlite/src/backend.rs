//! The durable backend: a
//! [`SqliteStore`] served through the [`Backend`] seam, without blocking the runtime.
//!
//! SQLite's calls block (a commit waits for the disk), so none runs on the runtime's threads:
//!
//! - **One writer thread** owns the [`SqliteStore`]. It takes every push waiting (up to
//!   [`MAX_GROUP`]), merges them in one transaction with one sync (group commit:
//!   [`SqliteStore::push_many`]), and only then answers them, in order. A push is
//!   acknowledged only once it is on disk.
//! - **Reader threads** ([`SqliteBackendConfig::readers`]), each with its own read-only
//!   connection: in WAL mode they read a consistent snapshot while the writer commits.
//!
//! Both queues are bounded ([`SqliteBackendConfig::queue`]): a request that finds its queue
//! full waits (asynchronously) for room, so memory stays bounded under any load. The
//! threads end when the backend is dropped, after the requests already queued.
//!
//! A write that fails (disk full, I/O error, or another backend opened the database since:
//! [`SqliteError::Displaced`]) answers each push of its group with `UNAVAILABLE`; none of
//! them is kept, and the client may retry.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use syncmux_sqlite::{SqliteBackend, SqliteBackendConfig};
//! use syncmux_runtime::{tokio::start_with_backend, ServerOptions};
//! use syncmux::{Server, ServerConfig};
//! use syncmux_sqlite::SqliteConfig;
//!
//! let mut store = SqliteConfig::default();
//! store.epoch = 1_767_000_000_000; // used only if the database is new
//! let backend = SqliteBackend::open("changes.db", store, SqliteBackendConfig::default())?;
//! let server = Server::new(ServerConfig::default())?;
//! let server = start_with_backend(server, Arc::new(backend), ServerOptions::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8787").await?;
//! syncmux_runtime::tokio::serve(server, listener, None).await;
//! # Ok(())
//! # }
//! ```

use core::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_channel::oneshot;

use crate::{SqliteConfig, SqliteError, SqliteReader, SqliteStore};
use syncmux::payload::{ChangeRecord, Cursor};
use syncmux::{AppError, PullAnswer, PushAnswer};
use syncmux_runtime::{Backend, BackendFuture, Push, Read};

/// The most pushes merged in one transaction.
pub const MAX_GROUP: usize = 256;

/// Configuration of a [`SqliteBackend`] (the store's own is [`SqliteConfig`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteBackendConfig {
    /// Reader threads, each with its own connection. Default: 2; at least 1 is used.
    pub readers: usize,
    /// Requests that may wait for the writer, and for the readers, each. Default: 1024.
    pub queue: usize,
}

impl Default for SqliteBackendConfig {
    fn default() -> Self {
        SqliteBackendConfig {
            readers: 2,
            queue: 1024,
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T, AppError>>;

/// The durable embedded backend: a [`SqliteStore`] behind one writer thread with group
/// commit and a few reader threads (module docs).
pub struct SqliteBackend {
    pushes: async_channel::Sender<(Vec<ChangeRecord>, Reply<PushAnswer>)>,
    reads: async_channel::Sender<(Read, Reply<PullAnswer>)>,
    epoch: u64,
    /// Commits by the writer, and the pushes they merged.
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    commits: AtomicU64,
    pushes: AtomicU64,
}

impl fmt::Debug for SqliteBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteBackend")
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl SqliteBackend {
    /// Opens (or creates) the database at `path` ([`SqliteStore::open`]: a damaged or foreign
    /// file is an error) and starts the writer and reader threads.
    pub fn open(
        path: impl AsRef<Path>,
        store: SqliteConfig,
        config: SqliteBackendConfig,
    ) -> Result<SqliteBackend, SqliteError> {
        let store = SqliteStore::open(path, store)?;
        let readers: Vec<SqliteReader> = (0..config.readers.max(1))
            .map(|_| store.reader())
            .collect::<Result<_, _>>()?;
        let epoch = store.epoch();
        let (pushes, pushed) = async_channel::bounded(config.queue.max(1));
        let (reads, read) = async_channel::bounded(config.queue.max(1));
        let counts = Arc::new(Counts::default());
        let writer = counts.clone();
        spawn("syncmux-sqlite-writer", move || {
            write(store, pushed, &writer)
        })?;
        for reader in readers {
            let read = read.clone();
            spawn("syncmux-sqlite-reader", move || serve_reads(reader, read))?;
        }
        Ok(SqliteBackend {
            pushes,
            reads,
            epoch,
            counts,
        })
    }

    /// The epoch of the database's history.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Merges `changes` on the writer thread (with whatever other pushes are waiting: one
    /// commit for all); answers once they are on disk.
    pub async fn push(&self, changes: Vec<ChangeRecord>) -> Result<PushAnswer, AppError> {
        ask(self.pushes.clone(), changes).await
    }

    /// Reads a pull or a replay (see [`Read`]) on a reader thread.
    pub async fn read(&self, read: Read) -> Result<PullAnswer, AppError> {
        ask(self.reads.clone(), read).await
    }

    /// How many transactions the writer committed since the open, and how many pushes they
    /// merged: pushes per commit is what group commit saves in syncs.
    pub fn commits(&self) -> (u64, u64) {
        (
            self.counts.commits.load(Ordering::Relaxed),
            self.counts.pushes.load(Ordering::Relaxed),
        )
    }

    /// The newest position, read on a reader thread.
    pub async fn head(&self) -> Result<Cursor, AppError> {
        let mut read = Read::new(Vec::new());
        read.head_only = true;
        ask(self.reads.clone(), read)
            .await
            .map(|answer| answer.head)
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), SqliteError> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .map(drop)
        .map_err(SqliteError::Thread)
}

/// What a client is told when the store failed; the details go to the log.
fn unavailable() -> AppError {
    AppError::unavailable("the durable store failed; retry later")
}

/// The writer thread: group commit (module docs) until the backend is dropped.
fn write(
    mut store: SqliteStore,
    pushes: async_channel::Receiver<(Vec<ChangeRecord>, Reply<PushAnswer>)>,
    counts: &Counts,
) {
    while let Ok(first) = pushes.recv_blocking() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match pushes.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let (changes, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
        match store.push_many(changes) {
            Ok(outcomes) => {
                counts.commits.fetch_add(1, Ordering::Relaxed);
                counts
                    .pushes
                    .fetch_add(outcomes.len() as u64, Ordering::Relaxed);
                for (out, reply) in outcomes.into_iter().zip(replies) {
                    let _ = reply.send(Ok(PushAnswer {
                        accepted: out.accepted,
                        latest_hlc: out.latest_hlc,
                        head: out.head,
                    }));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, pushes = replies.len(), "a durable write failed");
                for reply in replies {
                    let _ = reply.send(Err(unavailable()));
                }
            }
        }
    }
}

/// A reader thread: pulls and replays until the backend is dropped.
fn serve_reads(reader: SqliteReader, reads: async_channel::Receiver<(Read, Reply<PullAnswer>)>) {
    while let Ok((read, reply)) = reads.recv_blocking() {
        let out = if read.head_only {
            reader.head().map(|head| PullAnswer {
                head,
                complete: true,
                ..PullAnswer::default()
            })
        } else {
            reader
                .pull(&read.tables, read.since.as_ref(), read.cursor.as_ref())
                .map(|out| PullAnswer {
                    changes: out.changes,
                    latest_hlc: out.latest_hlc,
                    head: out.head,
                    complete: out.complete,
                })
        };
        let out = out.map_err(|e| {
            tracing::error!(error = %e, "a durable read failed");
            unavailable()
        });
        let _ = reply.send(out);
    }
}

/// Queues `job` and waits for its answer.
async fn ask<J, T>(queue: async_channel::Sender<(J, Reply<T>)>, job: J) -> Result<T, AppError> {
    let (reply, answer) = oneshot::channel();
    queue.send((job, reply)).await.map_err(|_| unavailable())?;
    answer.await.map_err(|_| unavailable())?
}

impl Backend for SqliteBackend {
    fn read(&self, read: Read) -> BackendFuture<Result<PullAnswer, AppError>> {
        Box::pin(ask(self.reads.clone(), read))
    }

    fn push(&self, push: Push) -> BackendFuture<Result<PushAnswer, AppError>> {
        Box::pin(ask(self.pushes.clone(), push.changes))
    }
}
