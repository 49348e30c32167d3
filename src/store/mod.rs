mod memory;
mod table;

use core::fmt;

use serde::Serialize;

use crate::answer::{PullAnswer, PushAnswer};
use crate::payload::{ChangeRecord, Cursor, Hlc};

pub use memory::{MemoryStore, StoreConfig, StoredChange};

/// A change log that answers at once: what a [`Driver`](crate::Driver) answers the server's
/// pulls, pushes and replays from, in the order the server asks.
///
/// [`MemoryStore`] is the embedded one; a durable store (SQLite, in its own crate) implements
/// it too. Every store gives each change it accepts the next position (a cursor, `epoch.seq`)
/// and answers a pull after a cursor of its own epoch exactly, and one it cannot serve from
/// `since` with `complete: false`. A backend whose answers take time (a network store) does
/// not implement this trait: it answers the server's events itself, later.
pub trait Store {
    /// Why a push or a pull failed (the session gets an error frame with its text).
    type Error: fmt::Display;
    /// A record as a pull gives it out: owned, borrowed, or with its encoding kept.
    type Record<'a>: Serialize + AsRef<ChangeRecord>
    where
        Self: 'a;

    /// Merges `changes`, giving each new one the next position. When it returns `Ok`, the
    /// changes are as durable as the store makes them.
    fn push(&mut self, changes: Vec<ChangeRecord>) -> Result<PushAnswer, Self::Error>;

    /// The changes of `tables` after `cursor` (in position order) when the store can serve
    /// it, or else after `since`, or else all of them (in HLC order).
    fn pull(
        &self,
        tables: &[String],
        since: Option<&Hlc>,
        cursor: Option<&Cursor>,
    ) -> Result<PullAnswer<Self::Record<'_>>, Self::Error>;

    /// The position of the newest accepted change.
    fn head(&self) -> Cursor;
}
