//! A consumer group's pending-entries list for the in-process backend.
//!
//! Entries join in increasing id order (the group's cursor only moves forward)
//! and usually leave in the same order, so a deque sorted by id, with
//! tombstones for entries acknowledged out of order, beats a tree: insertion is
//! a push, lookup a binary search, and in-order acknowledgement a pop.

use std::collections::VecDeque;
use std::time::Instant;

use crate::EntryId;

/// Delivery state of one pending entry.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pending {
    pub(super) delivered_at: Instant,
    /// Set by `retry_later`: reclaimable from then on instead of after `claim_idle`.
    pub(super) ready_at: Option<Instant>,
    pub(super) count: u32,
}

#[derive(Debug, Default)]
pub(super) struct PendingList {
    /// Sorted by id; `None` marks an entry acknowledged out of order.
    slots: VecDeque<(EntryId, Option<Pending>)>,
    live: usize,
}

impl PendingList {
    /// Adds a newly delivered entry; `id` is greater than every id added before.
    pub(super) fn push(&mut self, id: EntryId, pending: Pending) {
        debug_assert!(self.slots.back().is_none_or(|(last, _)| *last < id));
        self.slots.push_back((id, Some(pending)));
        self.live += 1;
    }

    fn index(&self, id: EntryId) -> Option<usize> {
        self.slots.binary_search_by_key(&id, |(e, _)| *e).ok()
    }

    pub(super) fn get_mut(&mut self, id: EntryId) -> Option<&mut Pending> {
        let i = self.index(id)?;
        self.slots.get_mut(i).and_then(|(_, p)| p.as_mut())
    }

    /// Removes `id`; whether it was pending.
    pub(super) fn remove(&mut self, id: EntryId) -> bool {
        let Some(i) = self.index(id) else {
            return false;
        };
        let removed = self.slots.get_mut(i).and_then(|(_, p)| p.take()).is_some();
        if removed {
            self.live -= 1;
            while matches!(self.slots.front(), Some((_, None))) {
                self.slots.pop_front();
            }
            // Out-of-order acknowledgements behind a long-pending entry: compact
            // once tombstones dominate, so memory follows the live count.
            if self.slots.len() > 64 && self.slots.len() > 4 * self.live {
                self.slots.retain(|(_, p)| p.is_some());
            }
        }
        removed
    }

    pub(super) fn len(&self) -> usize {
        self.live
    }

    pub(super) fn first(&self) -> Option<EntryId> {
        self.iter().next().map(|(id, _)| id)
    }

    /// Live entries in id order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (EntryId, &Pending)> {
        self.slots
            .iter()
            .filter_map(|(id, p)| p.as_ref().map(|p| (*id, p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn pending() -> Pending {
        Pending {
            delivered_at: Instant::now(),
            ready_at: None,
            count: 1,
        }
    }

    proptest! {
        // Behaves like an ordered map under any mix of pushes and removals.
        #[test]
        fn matches_an_ordered_map(ops in proptest::collection::vec((any::<bool>(), 0u64..200), 0..400)) {
            let mut list = PendingList::default();
            let mut model = BTreeMap::new();
            let mut next = 0u64;
            for (push, k) in ops {
                if push {
                    next += 1 + k % 3;
                    let id = EntryId { ms: next, seq: 0 };
                    list.push(id, pending());
                    model.insert(id, ());
                } else {
                    let id = EntryId { ms: k, seq: 0 };
                    prop_assert_eq!(list.remove(id), model.remove(&id).is_some());
                }
                prop_assert_eq!(list.len(), model.len());
                prop_assert_eq!(list.first(), model.keys().next().copied());
                prop_assert!(list.iter().map(|(id, _)| id).eq(model.keys().copied()));
            }
        }
    }
}
