//! The `esper` program's integration tests, in one binary (one link instead of one per file).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

mod cli;
mod cohort;
mod control;
mod exporter;
mod fleet;
#[cfg(feature = "cuda")]
mod gpu;
mod grow;
mod policy;
mod redis_outage;
mod remote_tamiyo;
mod report;
mod run_dir;
mod script;
