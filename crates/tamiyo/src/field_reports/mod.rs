//! Field reports: what became of each decision, decided after an observation
//! window from measured deltas ([`OutcomeTracker`]), kept in a write-ahead
//! log ([`Wal`]); the runtime publishes them on Oona.

pub mod outcome;
pub mod wal;

pub use outcome::OutcomeTracker;
pub use wal::{BadRecord, Loaded, Wal};
