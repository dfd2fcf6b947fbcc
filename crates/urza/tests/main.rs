//! Urza's integration tests, in one binary (one link instead of one per file).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod catalog_on_oona;
mod crash;
mod store_suite;
