//! The blueprint metadata cache: the catalog as a [`urza::BlueprintStore`]
//! lists it, trusted for a fixed TTL from the moment it was loaded
//! (deterministic: the caller passes the clock), dropped at once when a
//! `KernelCatalogUpdate` says the catalog changed. Lookups run on the
//! service's worker, never on the training thread.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use leyline::v1::{CatalogEntry, KernelCatalogUpdate};

use crate::error::{Error, Result};

/// Loads the whole catalog (quarantined entries included: the risk engine
/// must see them to veto them).
pub type Loader = Box<dyn Fn() -> Result<Vec<CatalogEntry>> + Send + Sync>;

/// Counters of the cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Loads from the store (misses and expiries).
    pub loads: u64,
    /// Invalidations by catalog updates.
    pub invalidations: u64,
    /// Failed loads.
    pub failures: u64,
}

#[derive(Default)]
struct State {
    entries: Option<(Instant, Arc<Vec<CatalogEntry>>)>,
    stats: CacheStats,
}

/// The cache.
pub struct BlueprintCache {
    loader: Loader,
    ttl: Duration,
    state: Mutex<State>,
}

impl std::fmt::Debug for BlueprintCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlueprintCache")
            .field("ttl", &self.ttl)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl BlueprintCache {
    /// A cache over `loader`, trusting a listing for `ttl`.
    pub fn new(loader: Loader, ttl: Duration) -> Self {
        Self {
            loader,
            ttl,
            state: Mutex::new(State::default()),
        }
    }

    /// A cache over an Urza store (local library or remote service); its
    /// futures run on `runtime`.
    pub fn from_store(
        store: Arc<dyn urza::BlueprintStore>,
        runtime: tokio::runtime::Handle,
        ttl: Duration,
    ) -> Self {
        Self::new(
            Box::new(move || {
                runtime
                    .block_on(store.list_blueprints(urza::CatalogQuery {
                        include_quarantined: true,
                        ..urza::CatalogQuery::default()
                    }))
                    .map_err(|e| Error::Catalog(Box::new(e)))
            }),
            ttl,
        )
    }

    /// The catalog as of `now`: cached while younger than the TTL, else
    /// loaded again. A failed load is an error (no stale fallback).
    pub fn get(&self, now: Instant) -> Result<Arc<Vec<CatalogEntry>>> {
        {
            let mut state = self.lock();
            if let Some((loaded, entries)) = &state.entries
                && now.saturating_duration_since(*loaded) < self.ttl
            {
                let entries = Arc::clone(entries);
                state.stats.hits += 1;
                return Ok(entries);
            }
        }
        // Load outside the lock: a slow store must not block `invalidate`.
        let loaded = (self.loader)();
        let mut state = self.lock();
        match loaded {
            Ok(entries) => {
                let entries = Arc::new(entries);
                state.entries = Some((now, Arc::clone(&entries)));
                state.stats.loads += 1;
                Ok(entries)
            }
            Err(e) => {
                state.entries = None;
                state.stats.failures += 1;
                Err(e)
            }
        }
    }

    /// Drops the cached listing (the next lookup loads).
    pub fn invalidate(&self) {
        let mut state = self.lock();
        if state.entries.take().is_some() {
            state.stats.invalidations += 1;
        }
    }

    /// A catalog change announced on Oona: the listing is stale.
    pub fn apply(&self, update: &KernelCatalogUpdate) {
        tracing::debug!(blueprint = %update.blueprint_id, "catalog update invalidates the metadata cache");
        self.invalidate();
    }

    /// The counters.
    pub fn stats(&self) -> CacheStats {
        self.lock().stats
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave `State` half-written
        // (every update is a single assignment), so a poisoned lock is usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    fn counting() -> (Arc<AtomicU64>, BlueprintCache) {
        let calls = Arc::new(AtomicU64::new(0));
        let c = Arc::clone(&calls);
        let cache = BlueprintCache::new(
            Box::new(move || {
                c.fetch_add(1, Ordering::SeqCst);
                Ok(vec![CatalogEntry::default()])
            }),
            Duration::from_secs(10),
        );
        (calls, cache)
    }

    #[test]
    fn the_ttl_is_exact_and_updates_invalidate() {
        let (calls, cache) = counting();
        let t0 = Instant::now();
        cache.get(t0).unwrap();
        cache.get(t0 + Duration::from_millis(9_999)).unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        cache.get(t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        cache.apply(&KernelCatalogUpdate::default());
        cache.get(t0 + Duration::from_secs(11)).unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        let s = cache.stats();
        assert_eq!((s.hits, s.loads, s.invalidations), (1, 3, 1));
    }

    #[test]
    fn a_failed_load_is_an_error_not_a_stale_answer() {
        let ok = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = Arc::clone(&ok);
        let cache = BlueprintCache::new(
            Box::new(move || {
                if flag.load(Ordering::SeqCst) {
                    Ok(Vec::new())
                } else {
                    Err(Error::Catalog(Box::new(urza::Error::Transport(
                        "store down".into(),
                    ))))
                }
            }),
            Duration::from_secs(1),
        );
        let t0 = Instant::now();
        cache.get(t0).unwrap();
        ok.store(false, Ordering::SeqCst);
        assert!(cache.get(t0 + Duration::from_secs(2)).is_err());
        assert_eq!(cache.stats().failures, 1);
    }
}
