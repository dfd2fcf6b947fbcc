//! Tamiyo: the controller that reads training state and decides when, where and
//! what to grow — heuristic and learned policies behind one step API, a separate
//! risk engine, and field reports (DESIGN §6).
//!
//! * [`field_reports`]: the field-report write-ahead log (length + CRC
//!   framing, fsync, corrupt records skipped and reported, retention).
//!
//! **Status (issue #8):** the step API, policies, observation graph, risk
//! engine, metadata cache and wiring are not built yet.

#![deny(missing_docs)]

mod error;
pub mod field_reports;

pub use error::{Error, Result};
