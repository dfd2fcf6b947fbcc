//! The [`Bus`] trait: what a backend must do, with identical semantics in
//! [`MemoryBus`] (in-process, the embedded default) and [`RedisBus`] (Redis
//! Streams). The conformance suite in `tests/conformance.rs` runs unchanged
//! against both.
//!
//! Semantics, modelled on Redis Streams so that both backends can honour them:
//! entries get increasing [`EntryId`]s; a consumer group has a cursor and a
//! pending-entries list; [`Bus::read`] first reclaims entries idle for
//! `claim_idle` (incrementing their delivery count) and then delivers new ones;
//! entries stay pending until acknowledged, retried or diverted; capped streams
//! are trimmed to about `max_len`, and [`Bus::trim_acknowledged`] removes only
//! entries that every group has acknowledged.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

use crate::{EntryId, Result, StartFrom, Stream};

mod memory;
mod pending;
mod redis;
mod redis_reply;

pub use memory::MemoryBus;
pub use redis::RedisBus;

/// One stored entry: a signed, encoded `BusEnvelope` and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The encoded `BusEnvelope` (signed by the publisher).
    pub payload: Bytes,
    /// Publisher's wall clock when it was published, µs since the Unix epoch
    /// (for end-to-end latency).
    pub published_us: u64,
    /// Set on dead-letter and quarantine entries: the entry they replace.
    pub origin: Option<Origin>,
    /// Fields of the stored entry that are not Oona's (Redis: written by
    /// another producer), kept verbatim so that a quarantined or
    /// dead-lettered copy holds every field of the original.
    pub extra: Vec<(Bytes, Bytes)>,
}

/// Where a dead-lettered or quarantined entry came from, and why it was moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Stream it was read from.
    pub stream: Stream,
    /// Its id there.
    pub entry: EntryId,
    /// Deliveries it had.
    pub attempts: u32,
    /// Why it was moved.
    pub reason: String,
}

/// One entry handed to a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDelivery {
    /// Stream it was read from.
    pub stream: Stream,
    /// Its id.
    pub entry: EntryId,
    /// Delivery count, 1 on first delivery (Redis: the entry's delivery counter).
    pub attempt: u32,
    /// What is stored.
    pub record: Record,
}

/// What one [`Bus::read`] returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadBatch {
    /// Entries to handle, reclaimed ones first.
    pub deliveries: Vec<RawDelivery>,
    /// Pending entries found trimmed away (by the length cap) while reclaiming;
    /// they are gone from the pending list and counted as dropped.
    pub trimmed: Vec<EntryId>,
}

/// Options of one read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOptions {
    /// Most entries returned.
    pub count: usize,
    /// Longest wait for new entries when there is nothing to return.
    pub block: Duration,
    /// Pending entries idle this long are reclaimed.
    pub claim_idle: Duration,
}

/// A stream's size and backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamDepth {
    /// Entries stored (acknowledged or not).
    pub len: u64,
    /// Backlog of the slowest group (undelivered + unacknowledged); `len` when
    /// the stream has no group.
    pub depth: u64,
}

/// A stream backend. Cheap to clone (clones share the same streams).
pub trait Bus: Clone + Send + Sync + 'static {
    /// A handle for one consumer: blocking reads on it do not stall other users
    /// (Redis: a connection of its own; in-process: a clone).
    fn reader(&self) -> impl Future<Output = Result<Self>> + Send;

    /// Appends `record`; capped streams are then trimmed to about `max_len`.
    fn publish(
        &self,
        stream: Stream,
        record: Record,
    ) -> impl Future<Output = Result<EntryId>> + Send;

    /// Appends `records` in order, in one round trip where the backend allows
    /// (Redis: one pipeline). Ids are returned in the same order.
    fn publish_many(
        &self,
        stream: Stream,
        records: Vec<Record>,
    ) -> impl Future<Output = Result<Vec<EntryId>>> + Send;

    /// Creates `group` at `start` unless it exists (then it is left as it is).
    /// Returns whether it was created.
    fn ensure_group(
        &self,
        stream: Stream,
        group: &str,
        start: StartFrom,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Deletes `group` and its pending list (a run's own group at exit).
    /// Returns whether it existed.
    fn remove_group(
        &self,
        stream: Stream,
        group: &str,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Reclaims idle pending entries for `consumer`, then reads new ones; blocks
    /// up to `options.block` only when there is nothing to return.
    fn read(
        &self,
        stream: Stream,
        group: &str,
        consumer: &str,
        options: ReadOptions,
    ) -> impl Future<Output = Result<ReadBatch>> + Send;

    /// Acknowledges entries; returns how many were pending.
    fn ack(
        &self,
        stream: Stream,
        group: &str,
        entries: &[EntryId],
    ) -> impl Future<Output = Result<u64>> + Send;

    /// Leaves a pending entry pending but makes it reclaimable after `backoff`
    /// instead of `claim_idle` (a handler failed on it).
    fn retry_later(
        &self,
        stream: Stream,
        group: &str,
        consumer: &str,
        delivery: &RawDelivery,
        backoff: Duration,
        claim_idle: Duration,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Appends `record` to `to` and acknowledges `entry` in `from`, atomically.
    fn divert(
        &self,
        from: Stream,
        group: &str,
        entry: EntryId,
        to: Stream,
        record: Record,
    ) -> impl Future<Output = Result<EntryId>> + Send;

    /// Length and backlog of `stream`.
    fn depth(&self, stream: Stream) -> impl Future<Output = Result<StreamDepth>> + Send;

    /// Up to `count` entries with ids after `after`, oldest first (inspection:
    /// dead letters, quarantine, tests).
    fn range(
        &self,
        stream: Stream,
        after: Option<EntryId>,
        count: usize,
    ) -> impl Future<Output = Result<Vec<(EntryId, Record)>>> + Send;

    /// Removes entries older than `older_than_ms` (entry-id time) that every
    /// group has delivered and acknowledged; returns how many were removed.
    fn trim_acknowledged(
        &self,
        stream: Stream,
        older_than_ms: u64,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// Stops the backend: later calls fail with `Error::Closed` and blocked
    /// readers return promptly.
    fn close(&self) -> impl Future<Output = ()> + Send;
}

/// The backend chosen at run time from the config.
#[derive(Debug, Clone)]
pub enum AnyBus {
    /// In-process.
    Memory(MemoryBus),
    /// Redis Streams.
    Redis(RedisBus),
}

macro_rules! delegate {
    ($self:ident, $b:ident => $e:expr) => {
        match $self {
            AnyBus::Memory($b) => $e,
            AnyBus::Redis($b) => $e,
        }
    };
}

impl Bus for AnyBus {
    async fn reader(&self) -> Result<Self> {
        Ok(match self {
            AnyBus::Memory(b) => AnyBus::Memory(b.reader().await?),
            AnyBus::Redis(b) => AnyBus::Redis(b.reader().await?),
        })
    }
    async fn publish(&self, stream: Stream, record: Record) -> Result<EntryId> {
        delegate!(self, b => b.publish(stream, record).await)
    }
    async fn publish_many(&self, stream: Stream, records: Vec<Record>) -> Result<Vec<EntryId>> {
        delegate!(self, b => b.publish_many(stream, records).await)
    }
    async fn ensure_group(&self, stream: Stream, group: &str, start: StartFrom) -> Result<bool> {
        delegate!(self, b => b.ensure_group(stream, group, start).await)
    }
    async fn remove_group(&self, stream: Stream, group: &str) -> Result<bool> {
        delegate!(self, b => b.remove_group(stream, group).await)
    }
    async fn read(
        &self,
        stream: Stream,
        group: &str,
        consumer: &str,
        options: ReadOptions,
    ) -> Result<ReadBatch> {
        delegate!(self, b => b.read(stream, group, consumer, options).await)
    }
    async fn ack(&self, stream: Stream, group: &str, entries: &[EntryId]) -> Result<u64> {
        delegate!(self, b => b.ack(stream, group, entries).await)
    }
    async fn retry_later(
        &self,
        stream: Stream,
        group: &str,
        consumer: &str,
        delivery: &RawDelivery,
        backoff: Duration,
        claim_idle: Duration,
    ) -> Result<()> {
        delegate!(self, b => b.retry_later(stream, group, consumer, delivery, backoff, claim_idle).await)
    }
    async fn divert(
        &self,
        from: Stream,
        group: &str,
        entry: EntryId,
        to: Stream,
        record: Record,
    ) -> Result<EntryId> {
        delegate!(self, b => b.divert(from, group, entry, to, record).await)
    }
    async fn depth(&self, stream: Stream) -> Result<StreamDepth> {
        delegate!(self, b => b.depth(stream).await)
    }
    async fn range(
        &self,
        stream: Stream,
        after: Option<EntryId>,
        count: usize,
    ) -> Result<Vec<(EntryId, Record)>> {
        delegate!(self, b => b.range(stream, after, count).await)
    }
    async fn trim_acknowledged(&self, stream: Stream, older_than_ms: u64) -> Result<u64> {
        delegate!(self, b => b.trim_acknowledged(stream, older_than_ms).await)
    }
    async fn close(&self) {
        delegate!(self, b => b.close().await)
    }
}
