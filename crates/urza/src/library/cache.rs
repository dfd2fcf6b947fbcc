//! A byte-bounded LRU of verified artifact bytes, with hit/miss statistics
//! over the process lifetime and over the most recent lookups.

use std::collections::VecDeque;

use bytes::Bytes;
use lru::LruCache;

/// Cache statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct CacheStats {
    /// Lookups served from memory since the library opened.
    pub hits: u64,
    /// Lookups that went to disk since the library opened.
    pub misses: u64,
    /// Entries evicted to stay under the byte budget.
    pub evictions: u64,
    /// Hit rate over the last `window_len` lookups.
    pub window_hit_rate: f64,
    /// Lookups in the window (at most the configured window).
    pub window_len: u64,
    /// Bytes held now.
    pub bytes: u64,
    /// Entries held now.
    pub entries: u64,
}

/// A least-recently-used cache of byte buffers bounded by their total size,
/// with lifetime and windowed hit statistics (Urza's artifact cache; Kasmina's
/// kernel cache).
#[derive(Debug)]
pub struct ArtifactCache {
    entries: LruCache<String, Bytes>,
    bytes: u64,
    capacity_bytes: u64,
    window: VecDeque<bool>,
    window_size: usize,
    hits: u64,
    misses: u64,
    evictions: u64,
}

impl ArtifactCache {
    /// A cache holding at most `capacity_bytes`, with a hit-rate window of
    /// `window_size` lookups.
    pub fn new(capacity_bytes: u64, window_size: usize) -> Self {
        Self {
            entries: LruCache::unbounded(),
            bytes: 0,
            capacity_bytes,
            window: VecDeque::with_capacity(window_size.max(1)),
            window_size: window_size.max(1),
            hits: 0,
            misses: 0,
            evictions: 0,
        }
    }

    fn record(&mut self, hit: bool) {
        if self.window.len() == self.window_size {
            self.window.pop_front();
        }
        self.window.push_back(hit);
        if hit {
            self.hits += 1;
            metrics::counter!("urza_cache_hits_total").increment(1);
        } else {
            self.misses += 1;
            metrics::counter!("urza_cache_misses_total").increment(1);
        }
    }

    /// Looks `key` up, counting a hit or a miss.
    pub fn get(&mut self, key: &str) -> Option<Bytes> {
        let found = self.entries.get(key).cloned();
        self.record(found.is_some());
        found
    }

    /// Inserts verified bytes, evicting least-recently used entries to stay
    /// within the budget. Entries larger than the whole budget are not kept.
    pub fn insert(&mut self, key: String, value: Bytes) {
        let size = value.len() as u64;
        if size > self.capacity_bytes {
            return;
        }
        if let Some(old) = self.entries.put(key, value) {
            self.bytes -= old.len() as u64;
        }
        self.bytes += size;
        while self.bytes > self.capacity_bytes {
            match self.entries.pop_lru() {
                Some((_, evicted)) => {
                    self.bytes -= evicted.len() as u64;
                    self.evictions += 1;
                    metrics::counter!("urza_cache_evictions_total").increment(1);
                }
                None => break,
            }
        }
    }

    /// Drops `key` (quarantine, corruption).
    pub fn remove(&mut self, key: &str) {
        if let Some(old) = self.entries.pop(key) {
            self.bytes -= old.len() as u64;
        }
    }

    /// Current statistics.
    pub fn stats(&self) -> CacheStats {
        let window_hits = self.window.iter().filter(|h| **h).count();
        CacheStats {
            hits: self.hits,
            misses: self.misses,
            evictions: self.evictions,
            window_hit_rate: if self.window.is_empty() {
                0.0
            } else {
                window_hits as f64 / self.window.len() as f64
            },
            window_len: self.window.len() as u64,
            bytes: self.bytes,
            entries: self.entries.len() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_holds_and_statistics_count_both_windows() {
        let mut cache = ArtifactCache::new(10, 4);
        cache.insert("a".into(), Bytes::from(vec![0; 4]));
        cache.insert("b".into(), Bytes::from(vec![0; 4]));
        assert!(cache.get("a").is_some()); // a is now most recent
        cache.insert("c".into(), Bytes::from(vec![0; 4])); // evicts b
        assert!(cache.get("b").is_none());
        assert!(cache.get("c").is_some());
        cache.insert("huge".into(), Bytes::from(vec![0; 11]));
        assert!(cache.get("huge").is_none());
        let s = cache.stats();
        assert_eq!((s.hits, s.misses, s.evictions), (2, 2, 1));
        assert_eq!(s.bytes, 8);
        assert_eq!(s.window_len, 4);
        for _ in 0..4 {
            cache.get("a");
        }
        let s = cache.stats();
        assert_eq!(s.window_hit_rate, 1.0);
        assert_eq!((s.hits, s.misses), (6, 2));
        cache.remove("a");
        assert_eq!(cache.stats().bytes, 4);
    }
}
