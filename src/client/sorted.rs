//! The client's ordered maps: a vector of entries sorted by key.
//!
//! Every map of the client holds at most a few hundred entries (each bounded by its config:
//! `max_in_flight`, `max_subscriptions`, ...), and most inserts land at the end (request ids
//! and deadlines grow). A sorted vector finds a key by binary search as a `BTreeMap` does,
//! iterates in key order as it does (output never depends on a hasher), and costs a few
//! hundred bytes of code per key and value type where `BTreeMap` costs several kilobytes of
//! node handling: together some 40 KB of the browser client's `.wasm`, 15 KiB gzipped.

use core::borrow::Borrow;

/// A map ordered by key, as a sorted vector.
#[derive(Clone, Debug)]
pub(crate) struct SortedMap<K, V> {
    entries: Vec<(K, V)>,
}

impl<K, V> Default for SortedMap<K, V> {
    fn default() -> Self {
        SortedMap {
            entries: Vec::new(),
        }
    }
}

impl<K: Ord, V> SortedMap<K, V> {
    /// An empty map.
    pub(crate) fn new() -> Self {
        SortedMap::default()
    }

    /// Where `key` is, or where it would go.
    fn find<Q: Ord + ?Sized>(&self, key: &Q) -> Result<usize, usize>
    where
        K: Borrow<Q>,
    {
        self.entries.binary_search_by(|(k, _)| k.borrow().cmp(key))
    }

    pub(crate) fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.find(key).ok().map(|at| &self.entries[at].1)
    }

    pub(crate) fn get_mut<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        let at = self.find(key).ok()?;
        Some(&mut self.entries[at].1)
    }

    pub(crate) fn contains_key<Q: Ord + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.find(key).is_ok()
    }

    /// Inserts `value` under `key`; the value it replaces, if any.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(at) => Some(core::mem::replace(&mut self.entries[at].1, value)),
            Err(at) => {
                self.entries.insert(at, (key, value));
                None
            }
        }
    }

    /// The value under `key`, inserting `make()` first if there is none.
    pub(crate) fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        let at = match self.find(&key) {
            Ok(at) => at,
            Err(at) => {
                self.entries.insert(at, (key, make()));
                at
            }
        };
        &mut self.entries[at].1
    }

    pub(crate) fn remove<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let at = self.find(key).ok()?;
        Some(self.entries.remove(at).1)
    }

    /// The entry with the smallest key.
    pub(crate) fn first(&self) -> Option<&(K, V)> {
        self.entries.first()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The entries in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    /// The entries in key order, the values mutable.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.entries.iter_mut().map(|(k, v)| (&*k, v))
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &K> {
        self.entries.iter().map(|(k, _)| k)
    }

    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.entries.iter_mut().map(|(_, v)| v)
    }

    /// Keeps the entries for which `keep` holds.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        self.entries.retain_mut(|(k, v)| keep(k, v));
    }
}

impl<K, V> IntoIterator for SortedMap<K, V> {
    type Item = (K, V);
    type IntoIter = std::vec::IntoIter<(K, V)>;

    /// The entries in key order.
    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::SortedMap;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    proptest! {
        /// Any sequence of inserts, removals and retains leaves the same entries, in the same
        /// order, as a `BTreeMap` given the same sequence.
        #[test]
        fn behaves_as_a_btree_map(
            ops in proptest::collection::vec((0u8..4, 0u16..64, any::<u32>()), 0..200),
        ) {
            let mut sorted = SortedMap::new();
            let mut btree = BTreeMap::new();
            for (op, key, value) in ops {
                match op {
                    0 => prop_assert_eq!(sorted.insert(key, value), btree.insert(key, value)),
                    1 => prop_assert_eq!(sorted.remove(&key), btree.remove(&key)),
                    2 => {
                        sorted.retain(|k, v| (*k ^ key) % 3 != 0 || *v % 2 == 0);
                        btree.retain(|k, v| (*k ^ key) % 3 != 0 || *v % 2 == 0);
                    }
                    _ => {
                        *sorted.get_or_insert_with(key, || value) += 1;
                        *btree.entry(key).or_insert(value) += 1;
                    }
                }
                prop_assert_eq!(sorted.get(&key), btree.get(&key));
                prop_assert_eq!(sorted.contains_key(&key), btree.contains_key(&key));
                prop_assert_eq!(sorted.len(), btree.len());
                let first = btree.first_key_value().map(|(k, v)| (*k, *v));
                prop_assert_eq!(sorted.first().map(|(k, v)| (*k, *v)), first);
            }
            let entries: Vec<(u16, u32)> = sorted.into_iter().collect();
            prop_assert_eq!(entries, btree.into_iter().collect::<Vec<_>>());
        }
    }
}
