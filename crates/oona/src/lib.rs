//! Oona: the message fabric that carries every Leyline message between Esper's
//! subsystems — in-process by default, Redis Streams across machines.
//!
//! * [`Bus`] is the backend contract, with two implementations of identical
//!   semantics: [`MemoryBus`] (in-process) and [`RedisBus`] (Redis Streams).
//!   Consumer groups start at an explicit id, unacknowledged entries are
//!   reclaimed after an idle timeout and handed to the handler with their
//!   delivery count, and entries go to the dead-letter stream after
//!   `max_attempts` deliveries.
//! * [`Oona`] publishes: every envelope is signed (there is no unsigned mode),
//!   routed by a pure function of (type, priority, depth,
//!   mode) — and shed with a counter under backpressure. Emergency signals are
//!   never shed or rate-limited.
//! * A publication the backend refuses with a transient error (Redis
//!   restarting) is retried briefly, then held in a bounded local buffer and
//!   sent after reconnect ([`Published::Held`], [`OutageStats`]); emergency
//!   signals are never dropped.
//! * [`Subscription`] consumes: decodes, verifies (signature, replay, freshness)
//!   and quarantines what fails, then acknowledges, retries or dead-letters.
//!   [`Subscription::run`] stops within `block_ms` of a cancellation token.
//! * [`emitter`] batches telemetry under a budget without ever blocking the
//!   caller; CRITICAL events take a fast path.
//! * [`StatsSnapshot`] and the `metrics` facade report publish and delivery
//!   latency (p50/p95/p99), depth, drops, retries, dead letters and quarantine.
//!
//! ```no_run
//! # async fn demo() -> oona::Result<()> {
//! use leyline::security::SigningKey;
//! use leyline::v1::{MessagePriority, SystemStatePacket};
//! use oona::{Identity, StartFrom, Stream};
//!
//! let key = SigningKey::generate().map_err(|e| oona::Error::Invariant(e.to_string()))?;
//! let identity = Identity { source: "tolaria".into(), run_id: "run-1".into() };
//! let bus = oona::connect(&Default::default(), &Default::default(), key, identity).await?;
//! let mut sub = bus.subscribe(Stream::Normal, "tamiyo", "tamiyo-0", StartFrom::Beginning).await?;
//! bus.publish(&SystemStatePacket::default(), MessagePriority::Normal).await?;
//! for delivery in sub.next_batch().await? {
//!     sub.ack(&delivery).await?;
//! }
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

pub mod backend;
mod client;
pub mod config;
pub mod emitter;
mod metrics;
mod outage;
mod routing;
mod stream;
mod subscription;

// Backend plumbing (records, read options, depths) stays under `backend`:
// only a new backend or a conformance test needs it.
pub use backend::{AnyBus, Bus, MemoryBus, RedisBus};
pub use client::{BusMessage, Identity, Oona, Published, connect};
pub use config::Config;
pub use emitter::{EmitterHandle, EmitterStats};
pub use metrics::{Percentiles, StatsSnapshot};
pub use outage::{HELD_SINCE_ATTRIBUTE, OutageStats};
pub use routing::ShedReason;
pub use stream::{BadEntryId, EntryId, StartFrom, Stream};
pub use subscription::{Delivery, FailOutcome, Handler, HandlerResult, RunReport, Subscription};

/// Wall clock, µs since the Unix epoch (publish → delivery latency).
pub(crate) fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is out of range.
    #[error(transparent)]
    Config(#[from] leyline::ConfigError),
    /// The bus was closed.
    #[error("the bus is closed")]
    Closed,
    /// A read or acknowledgement named a consumer group that does not exist.
    #[error("stream {stream} has no consumer group {group:?}")]
    NoGroup {
        /// Stream name.
        stream: String,
        /// Group name.
        group: String,
    },
    /// A Redis command failed (the cause is the error's `source`).
    #[error("redis {op} on {stream} failed")]
    Redis {
        /// The command.
        op: &'static str,
        /// The stream key, or the server URL for connection set-up.
        stream: String,
        /// What Redis or the connection said.
        #[source]
        source: redis::RedisError,
    },
    /// Redis replied in a shape we do not understand.
    #[error("unexpected redis reply to {op}: {detail}")]
    Reply {
        /// The command.
        op: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// An internal rule was broken (a bug, reported rather than hidden).
    #[error("oona invariant broken: {0}")]
    Invariant(String),
}

impl Error {
    /// Whether retrying later may succeed (the connection dropped, the server
    /// is restarting, a timeout).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Redis { source, .. } => {
                source.is_io_error()
                    || source.is_connection_dropped()
                    || source.is_connection_refusal()
                    || source.is_timeout()
                    || source.is_unrecoverable_error()
                    || matches!(source.code(), Some("LOADING" | "TRYAGAIN" | "BUSY"))
            }
            Error::Config(_)
            | Error::Closed
            | Error::NoGroup { .. }
            | Error::Reply { .. }
            | Error::Invariant(_) => false,
        }
    }
}
