//! The durable embedded change log of [syncmux]: SQLite in WAL mode.
//!
//! [`SqliteStore`] keeps the same log as the core's [`MemoryStore`](syncmux::MemoryStore) on
//! disk: the same merge rules, the same cursors, and an epoch that survives any crash, so
//! clients resume with `recovered: true` after a restart. A push returns only once it is
//! durable. [`SqliteBackend`] serves it to the runtime's hub through the async backend seam
//! ([`syncmux_runtime::Backend`]), with SQLite's blocking calls on threads of their own and
//! group commit.

mod backend;
mod store;

pub use backend::{SqliteBackend, SqliteBackendConfig, MAX_GROUP};
pub use store::{SqliteConfig, SqliteError, SqliteReader, SqliteStore};

/// The `crdt_type` whose records are last-writer-wins registers (the rest are operations).
const LWW: &str = "lww";
