//! Leyline: Esper's shared contracts.
//!
//! Every enum and message that crosses a crate boundary is defined once, in
//! `proto/leyline/v1/*.proto`, and generated into [`v1`]. On top of the generated
//! types this crate provides the pieces every subsystem must agree on:
//!
//! - [`lifecycle`]: the single seed-lifecycle transition table and its gates;
//! - [`validate`]: one validator for commands and packets with structured reports;
//! - [`security`]: canonical signing bytes, HMAC-SHA256, the nonce ledger and
//!   freshness checks, in the fixed order signature → id → freshness → nonce;
//! - [`telemetry`]: builders for telemetry packets, metrics and events, with the
//!   message priority derived from levels;
//! - [`codec`]: decoding of outside bytes into typed messages with typed errors;
//! - [`Config`]: the typed `[leyline]` section of `esper.toml` (security windows,
//!   limits and budgets), resolved once by `esper-runtime`.
//!
//! ```
//! use leyline::lifecycle::required_gate;
//! use leyline::v1::{SeedGate, SeedStage};
//!
//! assert!(SeedStage::Dormant.can_transition_to(SeedStage::Germinated));
//! assert_eq!(
//!     required_gate(SeedStage::Dormant, SeedStage::Germinated).unwrap(),
//!     Some(SeedGate::G0Sanity)
//! );
//! assert!(!SeedStage::Terminated.can_transition_to(SeedStage::Dormant));
//! ```

#![deny(missing_docs)]

pub mod codec;
mod config;
mod error;
pub mod lifecycle;
pub mod security;
pub mod telemetry;
pub mod v1;
pub mod validate;

pub use config::{
    BudgetsConfig, Config, LimitsConfig, MemoryBudgetsConfig, PerformanceBudgetsConfig,
    SecretSource, SecurityConfig,
};
pub use error::{ConfigError, Error, Result, error_chain};

/// The contract version carried in `version` fields; bumped on breaking changes.
pub const CONTRACT_VERSION: u32 = 1;

/// Milliseconds since the Unix epoch, for `*_at_ms` fields.
///
/// A clock before 1970 (which a misconfigured host can have) reads as 0, which every
/// validator rejects as a missing timestamp rather than silently accepting it.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A fresh random identifier (UUID v4) for `*_id` fields.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
