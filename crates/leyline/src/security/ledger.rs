//! The replay-nonce ledger: bounded, with a time-to-live.

use std::collections::{BTreeSet, HashMap};

/// Remembers message ids for `ttl_ms` so that a replay is detected.
///
/// Bounded at `capacity` entries: when full, the entry expiring first is evicted and
/// counted ([`NonceLedger::evictions`]). An evicted id could be replayed only while
/// it is still fresh, so a capacity that covers the freshness window's traffic (the
/// default 10 000 ids per 60 s window) keeps replays impossible; the counter makes
/// any shortfall visible.
#[derive(Debug, Clone)]
pub struct NonceLedger {
    ttl_ms: u64,
    capacity: usize,
    expiry_of: HashMap<String, u64>,
    by_expiry: BTreeSet<(u64, String)>,
    evictions: u64,
}

impl NonceLedger {
    /// A ledger keeping ids for `ttl_ms`, at most `capacity` at a time (at least 1).
    pub fn new(ttl_ms: u64, capacity: usize) -> Self {
        Self {
            ttl_ms,
            capacity: capacity.max(1),
            expiry_of: HashMap::new(),
            by_expiry: BTreeSet::new(),
            evictions: 0,
        }
    }

    /// Records `id` at `now_ms`; `false` if it was already recorded and has not
    /// expired (a replay).
    pub fn burn(&mut self, id: &str, now_ms: u64) -> bool {
        self.purge_expired(now_ms);
        if self.expiry_of.contains_key(id) {
            return false;
        }
        while self.expiry_of.len() >= self.capacity {
            let Some(first) = self.by_expiry.pop_first() else {
                break;
            };
            self.expiry_of.remove(&first.1);
            self.evictions += 1;
        }
        let expiry = now_ms.saturating_add(self.ttl_ms);
        self.expiry_of.insert(id.to_owned(), expiry);
        self.by_expiry.insert((expiry, id.to_owned()));
        true
    }

    /// Whether `id` is currently remembered.
    pub fn contains(&self, id: &str) -> bool {
        self.expiry_of.contains_key(id)
    }

    /// Number of ids remembered.
    pub fn len(&self) -> usize {
        self.expiry_of.len()
    }

    /// No id is remembered.
    pub fn is_empty(&self) -> bool {
        self.expiry_of.is_empty()
    }

    /// Ids dropped before their expiry because the ledger was full.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    fn purge_expired(&mut self, now_ms: u64) {
        while let Some((expiry, _)) = self.by_expiry.first() {
            if *expiry > now_ms {
                break;
            }
            if let Some((_, id)) = self.by_expiry.pop_first() {
                self.expiry_of.remove(&id);
            }
        }
    }
}
