//! esper-runtime: the thin layer that turns one configuration into a running Esper.
//!
//! It resolves the configuration once ([`config::load`]: one `esper.toml` plus
//! `ESPER_*` environment overrides, unknown keys and out-of-range values rejected
//! with the key named), hands each crate its typed section, and provides the
//! `esper` command-line program. Nothing below it reads the environment.
//!
//! The program resolves configuration, runs the contract self-check
//! ([`selfcheck`]), serves and inspects the blueprint library ([`urza_cmd`]),
//! and trains a reference host on the bundled MNIST subset (`esper train`)
//! while the [`control`] plane grows it — Tamiyo deciding at each fence,
//! Kasmina applying — publishing state packets, seed telemetry and emergency
//! signals on Oona ([`bus`]); each run directory ([`runlog`]) ends with a
//! `summary.json`. [`cohort`] runs arms × seeds of such runs in worker
//! processes and gives a fail-closed verdict on whether growth paid;
//! [`store`] keeps every run in one queryable SQLite database.

#![deny(missing_docs)]

pub mod bus;
pub mod cohort;
pub mod config;
pub mod control;
pub mod epoch_end;
mod error;
pub mod exporter;
pub mod fleet;
pub mod inspect;
pub mod narrate;
pub mod policy;
pub mod preflight;
pub mod report;
pub mod runlog;
pub mod selfcheck;
pub mod signals;
pub mod store;
pub mod supervisor;
pub mod tamiyo_cmd;
pub mod urza_cmd;

pub use bus::{BusSummary, RunBus};
pub use config::{EsperConfig, Resolved, RunConfig};
pub use error::{Error, Result, SecretProblem};
