//! A bounded in-memory cache for values that never change once made (state snapshots,
//! events formatted for sync, a range's receipts): bounded by clearing it when full, which
//! costs a burst of re-reads but no bookkeeping per hit. The one exception to "never
//! change" is a redaction, which rewrites what an event formatted earlier showed of another
//! ([`ClearingCache::remove_where`]); a generation keeps a value made from the old data out.

use std::{collections::HashMap, hash::Hash, sync::Mutex};

pub struct ClearingCache<K, V> {
    capacity: usize,
    /// A std mutex: held only for a lookup or an insert, never across an await. The number
    /// counts [`ClearingCache::remove_where`] calls: a value made from data read before one
    /// may be stale, so [`ClearingCache::insert_if_current`] refuses it.
    entries: Mutex<(u64, HashMap<K, V>)>,
}

impl<K: Eq + Hash, V: Clone> ClearingCache<K, V> {
    pub fn new(capacity: usize) -> Self {
        ClearingCache {
            capacity,
            entries: Mutex::new((0, HashMap::new())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, HashMap<K, V>)> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, key: &K) -> Option<V> {
        self.lock().1.get(key).cloned()
    }

    /// The cached values of `keys` that are present, in one look (so a clear meanwhile
    /// cannot split them).
    pub fn get_many<'a>(&self, keys: impl IntoIterator<Item = &'a K>) -> HashMap<&'a K, V> {
        let guard = self.lock();
        let entries = &guard.1;
        keys.into_iter()
            .filter_map(|k| Some((k, entries.get(k)?.clone())))
            .collect()
    }

    /// Keeps `value` (made outside the lock; two makers racing for one key made the same
    /// value, so either may win).
    pub fn insert(&self, key: K, value: V) {
        let mut guard = self.lock();
        let entries = &mut guard.1;
        if entries.len() >= self.capacity {
            entries.clear();
        }
        entries.insert(key, value);
    }

    /// The generation to pass to [`ClearingCache::insert_if_current`]; read it before reading
    /// what the value is made from.
    pub fn generation(&self) -> u64 {
        self.lock().0
    }

    /// Keeps `value` unless [`ClearingCache::remove_where`] ran since `generation` was read
    /// (then the value may have been made from data that has changed since).
    pub fn insert_if_current(&self, generation: u64, key: K, value: V) {
        let mut guard = self.lock();
        if guard.0 != generation {
            return;
        }
        let entries = &mut guard.1;
        if entries.len() >= self.capacity {
            entries.clear();
        }
        entries.insert(key, value);
    }

    /// Drops the entries `stale` picks and starts a new generation. A scan of the whole
    /// cache: for rare changes (a redaction of a state event), not for every write.
    pub fn remove_where(&self, mut stale: impl FnMut(&V) -> bool) {
        let mut guard = self.lock();
        guard.0 += 1;
        guard.1.retain(|_, v| !stale(v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_cache_starts_over() {
        let cache = ClearingCache::new(2);
        cache.insert(1, "a");
        cache.insert(2, "b");
        assert_eq!(cache.get(&1), Some("a"));
        cache.insert(3, "c");
        assert_eq!(cache.get(&1), None);
        assert_eq!(cache.get(&3), Some("c"));
        let keys = [1, 3];
        assert_eq!(cache.get_many(&keys).len(), 1);
    }

    #[test]
    fn a_value_made_before_a_removal_is_not_kept() {
        let cache = ClearingCache::new(10);
        cache.insert(1, "stale");
        let generation = cache.generation();
        cache.remove_where(|v| *v == "stale");
        assert_eq!(cache.get(&1), None);
        cache.insert_if_current(generation, 2, "made from old data");
        assert_eq!(cache.get(&2), None);
        cache.insert_if_current(cache.generation(), 2, "fresh");
        assert_eq!(cache.get(&2), Some("fresh"));
    }
}
