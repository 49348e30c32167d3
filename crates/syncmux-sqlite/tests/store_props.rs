//! The core's store properties on the durable store, and the durable store answering as the
//! `MemoryStore` does on random histories, across reopening it.

#![allow(clippy::unwrap_used)]

#[path = "../../../tests/core/store_properties.rs"]
mod properties;

use properties::*;
use proptest::prelude::*;
use syncmux::payload::{ChangeRecord, Cursor, Hlc};
use syncmux::{PullAnswer, PushAnswer};

mod durable {
    use super::*;
    use syncmux_sqlite::{SqliteConfig, SqliteStore};

    /// A `SqliteStore` in a directory of its own, removed with it.
    pub(super) struct Sqlite {
        pub(super) store: Option<SqliteStore>,
        config: SqliteConfig,
        dir: tempfile::TempDir,
    }

    impl Sqlite {
        pub(super) fn new(retention: usize) -> Sqlite {
            let mut config = SqliteConfig::default();
            config.epoch = EPOCH;
            config.retention = retention;
            let dir = tempfile::tempdir().unwrap();
            let store = SqliteStore::open(dir.path().join("changes.db"), config.clone()).unwrap();
            Sqlite {
                store: Some(store),
                config,
                dir,
            }
        }

        /// Closes the database and opens it again, with another epoch in the configuration
        /// (which must not replace the database's).
        pub(super) fn reopen(&mut self) {
            drop(self.store.take());
            let mut config = self.config.clone();
            config.epoch = EPOCH + 100;
            let path = self.dir.path().join("changes.db");
            self.store = Some(SqliteStore::open(path, config).unwrap());
        }

        fn get(&self) -> &SqliteStore {
            self.store.as_ref().unwrap()
        }
    }

    impl Store for Sqlite {
        fn push(&mut self, changes: Vec<ChangeRecord>) -> PushAnswer {
            self.store.as_mut().unwrap().push(changes).unwrap()
        }
        fn pull(
            &self,
            tables: &[String],
            since: Option<&Hlc>,
            cursor: Option<&Cursor>,
        ) -> PullAnswer {
            self.get().pull(tables, since, cursor).unwrap()
        }
        fn head(&self) -> Cursor {
            self.get().head()
        }
        fn len(&self) -> usize {
            self.get().len()
        }
        fn other_pulls_agree(&self, tables: &[String], since: Option<&Hlc>) -> bool {
            // A second connection, read-only, sees the same committed history.
            let reader = self.get().reader().unwrap();
            reader.pull(tables, since, None).unwrap() == self.pull(tables, since, None)
        }
    }
}

// The same properties on the durable store: fewer cases, as every push is a synced commit.
proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn sqlite_cursor_resumes_have_no_gap_and_no_duplicate(
        batches in batches(),
        tables in table_set(),
        reads in prop::collection::vec(any::<bool>(), 16),
    ) {
        let store = durable::Sqlite::new(0);
        cursor_resumes_have_no_gap_and_no_duplicate(store, batches, tables, reads)?;
    }

    #[test]
    fn sqlite_since_pulls_are_the_hlc_filtered_log(
        batches in batches(),
        pulls in prop::collection::vec((table_set(), since()), 1..6),
    ) {
        since_pulls_are_the_hlc_filtered_log(durable::Sqlite::new(0), batches, pulls)?;
    }

    #[test]
    fn sqlite_merging_is_commutative(
        changes in prop::collection::vec(change(), 0..40),
        seed in any::<u64>(),
        split in 1..8usize,
    ) {
        let stores = (durable::Sqlite::new(0), durable::Sqlite::new(0));
        merging_is_commutative(stores, changes, seed, split)?;
    }

    #[test]
    fn sqlite_retention_is_bounded_and_complete_never_lies(
        batches in batches(),
        retention in 1..8usize,
        pulls in cursor_pulls(),
    ) {
        let store = durable::Sqlite::new(retention);
        retention_is_bounded_and_complete_never_lies(store, batches, retention, pulls)?;
    }

    /// The durable store answers every push and every pull exactly as the `MemoryStore`
    /// does, with and without retention, and goes on doing so after being closed and opened
    /// again (winners, operation identities, positions, eviction horizons and the epoch all
    /// come back from disk); several pushes merged in one transaction (group commit) answer
    /// as if pushed one by one.
    #[test]
    fn sqlite_answers_as_the_memory_store_across_reopens(
        batches in batches(),
        retention in prop::sample::select(vec![0usize, 1, 3, 7]),
        reopen_after in prop::collection::vec(any::<bool>(), 16),
        group in 1..4usize,
        pulls in cursor_pulls(),
    ) {
        let mut memory = memory(retention);
        let mut durable = durable::Sqlite::new(retention);
        let mut batches = batches.into_iter().peekable();
        let mut reopens = reopen_after.into_iter();
        while batches.peek().is_some() {
            let grouped: Vec<Vec<ChangeRecord>> = batches.by_ref().take(group).collect();
            let expected: Vec<PushAnswer> =
                grouped.iter().map(|b| memory.push(b.clone())).collect();
            let got = durable.store.as_mut().unwrap().push_many(grouped).unwrap();
            prop_assert_eq!(got, expected);
            if reopens.next().unwrap_or(false) {
                durable.reopen();
                prop_assert_eq!(durable.store.as_ref().unwrap().epoch(), EPOCH);
            }
            prop_assert_eq!(Store::head(&durable), memory.head());
            prop_assert_eq!(Store::len(&durable), memory.len());
            for (tables, since, seq, stale) in &pulls {
                let epoch = if *stale { EPOCH + 1 } else { EPOCH };
                let cursor = Cursor::new(epoch, *seq);
                for cursor in [Some(&cursor), None] {
                    prop_assert_eq!(
                        Store::pull(&durable, tables, since.as_ref(), cursor),
                        memory.pull(tables, since.as_ref(), cursor)
                    );
                }
            }
        }
    }
}
