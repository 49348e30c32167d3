//! Properties of the embedded store under random pushes, orders and duplicates (the
//! properties themselves are in `store_properties.rs`, which syncmux-sqlite runs on
//! its durable store too).

#![allow(clippy::unwrap_used)]

use crate::store_properties as properties;

use properties::*;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn memory_cursor_resumes_have_no_gap_and_no_duplicate(
        batches in batches(),
        tables in table_set(),
        reads in prop::collection::vec(any::<bool>(), 16),
    ) {
        cursor_resumes_have_no_gap_and_no_duplicate(memory(0), batches, tables, reads)?;
    }

    #[test]
    fn memory_since_pulls_are_the_hlc_filtered_log(
        batches in batches(),
        pulls in prop::collection::vec((table_set(), since()), 1..6),
    ) {
        since_pulls_are_the_hlc_filtered_log(memory(0), batches, pulls)?;
    }

    #[test]
    fn memory_merging_is_commutative(
        changes in prop::collection::vec(change(), 0..40),
        seed in any::<u64>(),
        split in 1..8usize,
    ) {
        merging_is_commutative((memory(0), memory(0)), changes, seed, split)?;
    }

    #[test]
    fn memory_retention_is_bounded_and_complete_never_lies(
        batches in batches(),
        retention in 1..8usize,
        pulls in cursor_pulls(),
    ) {
        retention_is_bounded_and_complete_never_lies(memory(retention), batches, retention, pulls)?;
    }
}
