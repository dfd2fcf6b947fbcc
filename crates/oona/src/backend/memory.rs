//! The in-process backend: bounded per-stream queues with Redis Streams'
//! semantics (ids, consumer groups, pending lists, reclaim, trimming), for a
//! single process. Each stream has its own lock, never held across an await.

use std::collections::{BTreeMap, VecDeque};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::pending::{Pending, PendingList};
use super::{Bus, RawDelivery, ReadBatch, ReadOptions, Record, StreamDepth};
use crate::{EntryId, Error, Result, StartFrom, Stream};

/// In-process streams shared by every clone.
#[derive(Debug, Clone)]
pub struct MemoryBus {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    slots: [Slot; Stream::ALL.len()],
    max_len: usize,
    closed: AtomicBool,
}

#[derive(Debug, Default)]
struct Slot {
    state: Mutex<StreamState>,
    notify: Notify,
    /// Readers about to block. Publishers skip the notification (a lock inside
    /// `Notify`) when nobody waits, which is the common case under load.
    waiting: AtomicUsize,
}

#[derive(Debug, Default)]
struct StreamState {
    entries: VecDeque<(EntryId, Record)>,
    last_id: EntryId,
    groups: BTreeMap<String, Group>,
}

#[derive(Debug)]
struct Group {
    /// Last entry delivered to the group.
    cursor: EntryId,
    pending: PendingList,
}

impl MemoryBus {
    /// Empty streams; capped streams hold at most `max_len` entries.
    pub fn new(max_len: u64) -> Self {
        Self {
            inner: Arc::new(Inner {
                slots: Default::default(),
                max_len: usize::try_from(max_len).unwrap_or(usize::MAX).max(1),
                closed: AtomicBool::new(false),
            }),
        }
    }

    fn slot(&self, stream: Stream) -> &Slot {
        &self.inner.slots[stream.index()]
    }

    fn lock(&self, stream: Stream) -> Result<MutexGuard<'_, StreamState>> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        // A poisoned lock means a panic inside this module while holding it; the
        // state is plain data updated in place, so it is still consistent enough
        // to keep serving rather than failing every later call.
        Ok(self
            .slot(stream)
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    fn append(&self, stream: Stream, record: Record) -> Result<EntryId> {
        let mut ids = self.append_all(stream, std::iter::once(record))?;
        ids.pop()
            .ok_or_else(|| Error::Invariant("append stored nothing".into()))
    }

    fn append_all(
        &self,
        stream: Stream,
        records: impl ExactSizeIterator<Item = Record>,
    ) -> Result<Vec<EntryId>> {
        let mut ids = Vec::with_capacity(records.len());
        self.append_with(stream, records, |id| ids.push(id))?;
        Ok(ids)
    }

    /// Appends under one lock acquisition, reporting each new id, then wakes
    /// blocked readers once.
    fn append_with(
        &self,
        stream: Stream,
        records: impl Iterator<Item = Record>,
        mut on_id: impl FnMut(EntryId),
    ) -> Result<()> {
        {
            let mut state = self.lock(stream)?;
            let now_ms = leyline::unix_now_ms();
            for record in records {
                let id = if now_ms > state.last_id.ms {
                    EntryId { ms: now_ms, seq: 0 }
                } else {
                    state.last_id.next()
                };
                state.last_id = id;
                state.entries.push_back((id, record));
                on_id(id);
            }
            if stream.capped() {
                let excess = state.entries.len().saturating_sub(self.inner.max_len);
                state.entries.drain(..excess);
            }
        }
        // SeqCst pairs with the reader's increment before it looks at the stream:
        // either we see the waiter, or it sees the entries pushed above.
        let slot = self.slot(stream);
        if slot.waiting.load(Ordering::SeqCst) > 0 {
            slot.notify.notify_waiters();
        }
        Ok(())
    }

    fn ack_locked(
        state: &mut StreamState,
        stream: Stream,
        group: &str,
        entries: &[EntryId],
    ) -> Result<u64> {
        let group_state = group_mut(state, stream, group)?;
        Ok(entries
            .iter()
            .filter(|id| group_state.pending.remove(**id))
            .count() as u64)
    }
}

/// Counts a blocked reader for as long as it lives (also when its future is dropped).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn group_mut<'s>(state: &'s mut StreamState, stream: Stream, group: &str) -> Result<&'s mut Group> {
    state.groups.get_mut(group).ok_or_else(|| Error::NoGroup {
        stream: stream.name().to_owned(),
        group: group.to_owned(),
    })
}

fn find(entries: &VecDeque<(EntryId, Record)>, id: EntryId) -> Option<&Record> {
    entries
        .binary_search_by_key(&id, |(e, _)| *e)
        .ok()
        .and_then(|i| entries.get(i))
        .map(|(_, r)| r)
}

/// Reclaim, then new entries: one non-blocking pass of `read`.
fn read_once(
    state: &mut StreamState,
    stream: Stream,
    group: &str,
    options: ReadOptions,
    now: Instant,
) -> Result<ReadBatch> {
    let StreamState {
        entries, groups, ..
    } = state;
    let g = groups.get_mut(group).ok_or_else(|| Error::NoGroup {
        stream: stream.name().to_owned(),
        group: group.to_owned(),
    })?;
    let mut batch = ReadBatch::default();
    let idle: Vec<EntryId> = g
        .pending
        .iter()
        .filter(|(_, p)| match p.ready_at {
            Some(at) => now >= at,
            None => now.duration_since(p.delivered_at) >= options.claim_idle,
        })
        .map(|(id, _)| id)
        .take(options.count)
        .collect();
    for id in idle {
        match find(entries, id) {
            None => {
                g.pending.remove(id);
                batch.trimmed.push(id);
            }
            Some(record) => {
                if let Some(p) = g.pending.get_mut(id) {
                    p.delivered_at = now;
                    p.ready_at = None;
                    p.count = p.count.saturating_add(1);
                    batch.deliveries.push(RawDelivery {
                        stream,
                        entry: id,
                        attempt: p.count,
                        record: record.clone(),
                    });
                }
            }
        }
    }
    let room = options.count.saturating_sub(batch.deliveries.len());
    if room > 0 {
        let start = entries.partition_point(|(id, _)| *id <= g.cursor);
        for (id, record) in entries.range(start..).take(room) {
            g.cursor = *id;
            g.pending.push(
                *id,
                Pending {
                    delivered_at: now,
                    ready_at: None,
                    count: 1,
                },
            );
            batch.deliveries.push(RawDelivery {
                stream,
                entry: *id,
                attempt: 1,
                record: record.clone(),
            });
        }
    }
    Ok(batch)
}

impl Bus for MemoryBus {
    async fn reader(&self) -> Result<Self> {
        Ok(self.clone())
    }

    async fn publish(&self, stream: Stream, record: Record) -> Result<EntryId> {
        self.append(stream, record)
    }

    async fn publish_many(&self, stream: Stream, records: Vec<Record>) -> Result<Vec<EntryId>> {
        self.append_all(stream, records.into_iter())
    }

    async fn ensure_group(&self, stream: Stream, group: &str, start: StartFrom) -> Result<bool> {
        let mut state = self.lock(stream)?;
        if state.groups.contains_key(group) {
            return Ok(false);
        }
        let cursor = match start {
            StartFrom::Beginning => EntryId::ZERO,
            StartFrom::After(id) => id,
        };
        state.groups.insert(
            group.to_owned(),
            Group {
                cursor,
                pending: PendingList::default(),
            },
        );
        Ok(true)
    }

    async fn remove_group(&self, stream: Stream, group: &str) -> Result<bool> {
        Ok(self.lock(stream)?.groups.remove(group).is_some())
    }

    async fn read(
        &self,
        stream: Stream,
        group: &str,
        _consumer: &str,
        options: ReadOptions,
    ) -> Result<ReadBatch> {
        let deadline = Instant::now() + options.block;
        let slot = self.slot(stream);
        loop {
            {
                let mut state = self.lock(stream)?;
                let batch = read_once(&mut state, stream, group, options, Instant::now())?;
                if !batch.deliveries.is_empty() || !batch.trimmed.is_empty() {
                    return Ok(batch);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(ReadBatch::default());
            }
            // Announce the wait and register for the notification *before*
            // looking again, so that a publish in between is never missed.
            let _waiting = Waiting::new(&slot.waiting);
            let mut notified = pin!(slot.notify.notified());
            notified.as_mut().enable();
            let batch = self.lock(stream).and_then(|mut state| {
                read_once(&mut state, stream, group, options, Instant::now())
            })?;
            if !batch.deliveries.is_empty() || !batch.trimmed.is_empty() {
                return Ok(batch);
            }
            let _ = tokio::time::timeout(deadline - now, notified).await;
        }
    }

    async fn ack(&self, stream: Stream, group: &str, entries: &[EntryId]) -> Result<u64> {
        let mut state = self.lock(stream)?;
        Self::ack_locked(&mut state, stream, group, entries)
    }

    async fn retry_later(
        &self,
        stream: Stream,
        group: &str,
        _consumer: &str,
        delivery: &RawDelivery,
        backoff: Duration,
        _claim_idle: Duration,
    ) -> Result<()> {
        let mut state = self.lock(stream)?;
        let g = group_mut(&mut state, stream, group)?;
        if let Some(p) = g.pending.get_mut(delivery.entry) {
            p.ready_at = Some(Instant::now() + backoff);
        }
        Ok(())
    }

    async fn divert(
        &self,
        from: Stream,
        group: &str,
        entry: EntryId,
        to: Stream,
        record: Record,
    ) -> Result<EntryId> {
        // Two locks taken one after the other (never nested, so no lock-order
        // deadlock); in one process there is no crash window between them that
        // would not lose the whole in-memory bus anyway.
        let id = self.append(to, record)?;
        let mut state = self.lock(from)?;
        Self::ack_locked(&mut state, from, group, &[entry])?;
        Ok(id)
    }

    async fn depth(&self, stream: Stream) -> Result<StreamDepth> {
        let state = self.lock(stream)?;
        let len = state.entries.len() as u64;
        let depth = state
            .groups
            .values()
            .map(|g| {
                let lag =
                    state.entries.len() - state.entries.partition_point(|(id, _)| *id <= g.cursor);
                (lag + g.pending.len()) as u64
            })
            .max()
            .unwrap_or(len);
        Ok(StreamDepth { len, depth })
    }

    async fn range(
        &self,
        stream: Stream,
        after: Option<EntryId>,
        count: usize,
    ) -> Result<Vec<(EntryId, Record)>> {
        let state = self.lock(stream)?;
        let start = match after {
            None => 0,
            Some(after) => state.entries.partition_point(|(id, _)| *id <= after),
        };
        Ok(state.entries.range(start..).take(count).cloned().collect())
    }

    async fn trim_acknowledged(&self, stream: Stream, older_than_ms: u64) -> Result<u64> {
        let mut state = self.lock(stream)?;
        let mut safe = EntryId {
            ms: older_than_ms,
            seq: 0,
        };
        for g in state.groups.values() {
            safe = safe.min(g.cursor.next());
            if let Some(first) = g.pending.first() {
                safe = safe.min(first);
            }
        }
        let cut = state.entries.partition_point(|(id, _)| *id < safe);
        state.entries.drain(..cut);
        Ok(cut as u64)
    }

    async fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        for slot in &self.inner.slots {
            slot.notify.notify_waiters();
        }
    }
}
