//! A bounded in-memory cache for values that never change once made (state snapshots,
//! events formatted for sync, a range's receipts): no invalidation, and bounded by clearing
//! it when full, which costs a burst of re-reads but no bookkeeping per hit.

use std::{collections::HashMap, hash::Hash, sync::Mutex};

pub struct ClearingCache<K, V> {
    capacity: usize,
    /// A std mutex: held only for a lookup or an insert, never across an await.
    entries: Mutex<HashMap<K, V>>,
}

impl<K: Eq + Hash, V: Clone> ClearingCache<K, V> {
    pub fn new(capacity: usize) -> Self {
        ClearingCache {
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, V>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, key: &K) -> Option<V> {
        self.lock().get(key).cloned()
    }

    /// The cached values of `keys` that are present, in one look (so a clear meanwhile
    /// cannot split them).
    pub fn get_many<'a>(&self, keys: impl IntoIterator<Item = &'a K>) -> HashMap<&'a K, V> {
        let entries = self.lock();
        keys.into_iter()
            .filter_map(|k| Some((k, entries.get(k)?.clone())))
            .collect()
    }

    /// Keeps `value` (made outside the lock; two makers racing for one key made the same
    /// value, so either may win).
    pub fn insert(&self, key: K, value: V) {
        let mut entries = self.lock();
        if entries.len() >= self.capacity {
            entries.clear();
        }
        entries.insert(key, value);
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
}
