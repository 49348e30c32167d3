//! The embedded change store (DESIGN.md section 1, layer 5): [`MemoryStore`], the default
//! backend of the example server.
//!
//! The store knows payload types only: it never imports the server or the client; a small
//! driver pairs a server with it. It reads no clock and no entropy: the adapter chooses the
//! [epoch](StoreConfig::epoch).
//!
//! # Positions
//!
//! Every accepted change gets the next position, a [`Cursor`](crate::payload::Cursor)
//! `epoch.seq` whose `seq` grows by one per accepted change, from 1. The epoch names one
//! continuous history: the adapter picks a fresh one per process start, so a cursor from
//! before a restart is never read as a position in the new history (DESIGN.md section 3,
//! "Cursors").
//!
//! # Merge
//!
//! Merging is idempotent and commutative, so clients may re-send pushes after a reconnect and
//! nodes may push in any order. Which changes are *new* depends on the `crdt_type`:
//!
//! - `lww` (last writer wins): per (table, pk, field) only the change with the greatest HLC
//!   counts. A change is new only if its HLC is greater than the current winner's; an equal
//!   HLC is the same change again (an HLC names its node, so two nodes never stamp equal ones).
//! - every other type (`counter`, `set`, `list`, `text`, and names not yet invented) is
//!   operation-based: every operation matters and none supersedes another, so a change is new
//!   iff its identity (table, pk, field, hlc) was not seen before. The store cannot know the
//!   semantics of a type it has never heard of, and dropping an operation would lose data, so
//!   the safe default is to keep every distinct operation.
//!
//! A change that is not new is neither logged nor counted: it gets no position and is not
//! routed again, which is what makes a re-sent push deliver nothing twice. Superseded `lww`
//! changes stay in the log (it is a history, and positions never move); pullers apply
//! last-writer-wins themselves, as they must for live changes anyway.
//!
//! # Pull
//!
//! - after a `cursor` of the current epoch that is still retained: exactly the changes after
//!   it, in position order, late changes with old HLCs included, `complete: true`;
//! - after `since` (exclusive): the changes with an HLC greater than it, in HLC order;
//! - neither: everything retained for the tables, in HLC order.
//!
//! A cursor the store cannot serve (another epoch, beyond the head, or cut by retention) falls
//! back to `since`, or to everything, with `complete: false`: the caller answers
//! `recovered: false` and the client resynchronises. A `since` pull is incomplete when
//! retention evicted a change of the requested tables with an HLC greater than `since`.
//!
//! # Retention
//!
//! With [`StoreConfig::retention`] set, the oldest positions are evicted first and every index
//! forgets them, so memory is bounded by the retention. This includes what the merge
//! remembers: idempotence is exact within the retained window; a change re-pushed after its
//! original was evicted counts as new again. The alternative, refusing any change older than
//! the evicted history, would silently drop the edits of a node that was offline for long,
//! which is the case cursors exist for.
//!
//! # Example
//!
//! ```
//! use syncmux::payload::{ChangeRecord, Cursor, Hlc, RawJson};
//! use syncmux::store::{MemoryStore, StoreConfig};
//!
//! let mut config = StoreConfig::default();
//! config.epoch = 7; // an adapter picks a fresh epoch per process start
//! let mut store = MemoryStore::new(config);
//!
//! let title = |ts, value: &str| {
//!     ChangeRecord::new("docs", "1", "title", "lww", Hlc::new(ts, 0, "n1"), "n1")
//!         .with_value(RawJson::from_serialize(value).unwrap())
//! };
//! let pushed = store.push(vec![title(10, "draft"), title(20, "final")]);
//! assert_eq!(pushed.accepted.len(), 2);
//! assert_eq!(pushed.head, Cursor::new(7, 2));
//!
//! // Re-sending is harmless, and an older write loses, but a late one is still positioned.
//! assert!(store.push(vec![title(20, "final")]).accepted.is_empty());
//! assert!(store.push(vec![title(15, "stale")]).accepted.is_empty());
//!
//! // Resume after the first position: exactly what came after it.
//! let tables = ["docs".to_owned()];
//! let pulled = store.pull(&tables, None, Some(&Cursor::new(7, 1)));
//! assert!(pulled.complete);
//! assert_eq!(pulled.changes.len(), 1);
//! assert_eq!(pulled.changes[0].0, Cursor::new(7, 2));
//! assert_eq!(pulled.latest_hlc, Hlc::new(20, 0, "n1"));
//!
//! // A cursor of another epoch (a restart) falls back to `since`, and says so.
//! let pulled = store.pull(&tables, Some(&Hlc::new(10, 0, "n1")), Some(&Cursor::new(6, 1)));
//! assert!(!pulled.complete);
//! assert_eq!(pulled.changes.len(), 1);
//! ```

mod memory;
mod table;

pub use memory::{MemoryStore, PullOutcome, PushOutcome, StoreConfig};
