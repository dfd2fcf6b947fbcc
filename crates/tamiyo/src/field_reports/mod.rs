//! Field reports: what became of each decision, decided after an observation
//! window, kept in a write-ahead log.
//!
//! **Status (issue #8):** the WAL is built; the outcome decision from
//! measured deltas and publishing on Oona are not yet.

pub mod wal;

pub use wal::{BadRecord, Loaded, Wal};
