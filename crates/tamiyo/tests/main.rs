//! Tamiyo's integration tests, in one binary (one link instead of one per file).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

mod field_reports;
mod grpc;
mod heuristic;
mod risk;
mod service;
mod state;
