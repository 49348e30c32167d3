//! The encodings the scripts compare and index by.

use core::fmt::Write;

use syncmux::payload::{ChangeRecord, Hlc};

/// An HLC as a string whose byte order is the HLC's order: `ts` shifted to unsigned (20
/// digits), the counter (10 digits), then the node id in hex (so no byte of it sorts below
/// the `/` that ends the key in the per-table index, and a node id that is a prefix of
/// another sorts first, as in [`Hlc`]'s order).
pub(super) fn hlc_key(hlc: &Hlc) -> String {
    // Flipping the sign bit maps i64's order onto u64's.
    let ts = (hlc.ts as u64) ^ (1 << 63);
    let mut key = String::with_capacity(30 + 2 * hlc.node.len());
    let _ = write!(key, "{ts:020}{:010}", hlc.c);
    for byte in hlc.node.bytes() {
        let _ = write!(key, "{byte:02x}");
    }
    key
}

/// What the merge keys a record by: its (table, pk, field) for `lww` (one winner each), its
/// identity (table, pk, field, hlc) for every other type. JSON, so no two differ only by
/// where one string ends.
pub(super) fn merge_key(record: &ChangeRecord, lww: bool) -> String {
    let (t, p, f) = (&record.table, &record.pk, &record.field);
    let key = if lww {
        serde_json::to_string(&(t, p, f))
    } else {
        serde_json::to_string(&(t, p, f, record.hlc.to_string()))
    };
    // Strings and a tuple of them always serialise.
    key.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key's byte order is the HLC's order, over extremes and node ids that are prefixes
    /// of one another or hold bytes below '/'.
    #[test]
    fn hlc_keys_sort_as_hlcs() {
        let mut hlcs = Vec::new();
        for ts in [i64::MIN, -1, 0, 1, 1_700_000_000_000, i64::MAX] {
            for c in [0, 1, 9, 10, u32::MAX] {
                for node in ["", "a", "a!", "a\u{0}", "a/", "ab", "b", "é", "\u{7f}"] {
                    hlcs.push(Hlc::new(ts, c, node));
                }
            }
        }
        let mut by_key = hlcs.clone();
        by_key.sort_by_key(hlc_key);
        hlcs.sort();
        assert_eq!(by_key, hlcs);
        // A member "<key>/<seq>" sorts by HLC first.
        let member = |h: &Hlc, seq: u64| format!("{}/{seq:020}", hlc_key(h));
        let (a, a2) = (Hlc::new(1, 0, "a"), Hlc::new(1, 0, "a!"));
        assert!(member(&a, 99) < member(&a2, 1));
        assert!(member(&a, 1) < member(&a, 2));
    }

    /// `push.lua` starts a table's newest HLC at the default HLC's key.
    #[test]
    fn the_scripts_know_the_default_hlcs_key() {
        let key = hlc_key(&Hlc::default());
        assert!(include_str!("push.lua").contains(&format!("ZERO_HLC_KEY = '{key}'")));
    }
}
