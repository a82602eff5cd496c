//! A bounded in-memory cache for values that never change once made (state snapshots,
//! events formatted for sync, a range's receipts): bounded by clearing it when full, which
//! costs a burst of re-reads but no bookkeeping per hit. The one exception to "never
//! change" is a redaction, which rewrites what an event formatted earlier showed of another
//! ([`ClearingCache::remove_where`]); a generation keeps a value made from the old data out.
//!
//! "Full" is measured in bytes, not entries: an entry can be anything from a few bytes to a
//! 64 KiB event (or a snapshot of a large room), so a count alone would let a budget of
//! 16,384 entries grow to a gigabyte. Each cache is given a [`Weigh`] that estimates what an
//! entry holds on the heap.

use std::{collections::HashMap, hash::Hash, sync::Mutex};

/// Estimates the memory an entry holds (its key and value, heap included), in bytes.
pub type Weigh<K, V> = fn(&K, &V) -> usize;

/// What every entry costs beyond what [`Weigh`] counts: the map's slot, hashes, pointers.
const ENTRY_OVERHEAD: usize = 64;

pub struct ClearingCache<K, V> {
    max_bytes: usize,
    weigh: Weigh<K, V>,
    /// A std mutex: held only for a lookup or an insert, never across an await.
    inner: Mutex<Inner<K, V>>,
}

struct Inner<K, V> {
    entries: HashMap<K, V>,
    /// The sum of the entries' weights (plus [`ENTRY_OVERHEAD`] each).
    bytes: usize,
    /// Counts [`ClearingCache::remove_where`] calls: a value made from data read before one
    /// may be stale, so [`ClearingCache::insert_if_current`] refuses it.
    generation: u64,
}

impl<K: Eq + Hash, V: Clone> ClearingCache<K, V> {
    /// A cache that keeps at most about `max_bytes` as weighed by `weigh`.
    pub fn new(max_bytes: usize, weigh: Weigh<K, V>) -> Self {
        ClearingCache {
            max_bytes,
            weigh,
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                bytes: 0,
                generation: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K, V>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, key: &K) -> Option<V> {
        self.lock().entries.get(key).cloned()
    }

    /// The cached values of `keys` that are present, in one look (so a clear meanwhile
    /// cannot split them).
    pub fn get_many<'a>(&self, keys: impl IntoIterator<Item = &'a K>) -> HashMap<&'a K, V> {
        let inner = self.lock();
        keys.into_iter()
            .filter_map(|k| Some((k, inner.entries.get(k)?.clone())))
            .collect()
    }

    /// Keeps `value` (made outside the lock; two makers racing for one key made the same
    /// value, so either may win). A value larger than a quarter of the budget is not kept: it
    /// would clear the cache for one entry.
    pub fn insert(&self, key: K, value: V) {
        let mut inner = self.lock();
        self.insert_locked(&mut inner, key, value);
    }

    fn insert_locked(&self, inner: &mut Inner<K, V>, key: K, value: V) {
        let weight = (self.weigh)(&key, &value) + ENTRY_OVERHEAD;
        if weight > self.max_bytes / 4 {
            return;
        }
        if inner.bytes + weight > self.max_bytes {
            inner.entries.clear();
            inner.bytes = 0;
        }
        if let Some(old) = inner.entries.get(&key) {
            let old_weight = (self.weigh)(&key, old) + ENTRY_OVERHEAD;
            inner.bytes = inner.bytes.saturating_sub(old_weight);
        }
        inner.entries.insert(key, value);
        inner.bytes += weight;
    }

    /// The bytes the cache counts as held (for tests and metrics).
    pub fn weight(&self) -> usize {
        self.lock().bytes
    }

    /// The generation to pass to [`ClearingCache::insert_if_current`]; read it before reading
    /// what the value is made from.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Keeps `value` unless [`ClearingCache::remove_where`] ran since `generation` was read
    /// (then the value may have been made from data that has changed since).
    pub fn insert_if_current(&self, generation: u64, key: K, value: V) {
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        self.insert_locked(&mut inner, key, value);
    }

    /// Keeps `value` for `key` in place of what was there, and starts a new generation, so a
    /// value made from data read before this change is not kept after it
    /// ([`ClearingCache::insert_if_current`]). For values that do change (push rules).
    pub fn replace(&self, key: K, value: V) {
        let mut inner = self.lock();
        inner.generation += 1;
        if let Some(old) = inner.entries.remove(&key) {
            let weight = (self.weigh)(&key, &old) + ENTRY_OVERHEAD;
            inner.bytes = inner.bytes.saturating_sub(weight);
        }
        self.insert_locked(&mut inner, key, value);
    }

    /// Drops the entries `stale` picks and starts a new generation. A scan of the whole
    /// cache: for rare changes (a redaction of a state event), not for every write.
    pub fn remove_where(&self, mut stale: impl FnMut(&V) -> bool) {
        let mut inner = self.lock();
        inner.generation += 1;
        let weigh = self.weigh;
        let mut removed = 0;
        inner.entries.retain(|k, v| {
            if stale(v) {
                removed += weigh(k, v) + ENTRY_OVERHEAD;
                false
            } else {
                true
            }
        });
        inner.bytes = inner.bytes.saturating_sub(removed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::ptr_arg)] // a weigher is a `fn(&K, &V)` with `V = String`
    fn weigh(_: &i32, v: &String) -> usize {
        v.len()
    }

    #[test]
    fn a_full_cache_starts_over() {
        let cache = ClearingCache::new(2 * (ENTRY_OVERHEAD + 1) * 4, |_: &i32, _: &&str| 1);
        for i in 0..8 {
            cache.insert(i, "a");
        }
        assert_eq!(cache.get(&0), Some("a"));
        cache.insert(8, "c");
        assert_eq!(cache.get(&0), None);
        assert_eq!(cache.get(&8), Some("c"));
        let keys = [1, 8];
        assert_eq!(cache.get_many(&keys).len(), 1);
    }

    #[test]
    fn the_budget_is_bytes_not_entries() {
        let cache = ClearingCache::new(1024 * 1024, weigh);
        // 64 KiB values: a budget of 1 MiB keeps at most 16 of them, however many entries
        // the cache might otherwise allow.
        for i in 0..100 {
            cache.insert(i, "x".repeat(64 * 1024));
            assert!(cache.weight() <= 1024 * 1024, "{}", cache.weight());
        }
        assert!(cache.get(&99).is_some());
        // A value too large for the budget is not kept, and does not clear the others.
        cache.insert(1000, "x".repeat(512 * 1024));
        assert!(cache.get(&1000).is_none());
        assert!(cache.get(&99).is_some());
    }

    #[test]
    fn a_value_made_before_a_removal_is_not_kept() {
        let cache = ClearingCache::new(1024 * 1024, |_: &i32, _: &&str| 1);
        cache.insert(1, "stale");
        let generation = cache.generation();
        cache.remove_where(|v| *v == "stale");
        assert_eq!(cache.get(&1), None);
        assert_eq!(cache.weight(), 0);
        cache.insert_if_current(generation, 2, "made from old data");
        assert_eq!(cache.get(&2), None);
        cache.insert_if_current(cache.generation(), 2, "fresh");
        assert_eq!(cache.get(&2), Some("fresh"));
    }
}
