//! Every cross-crate integration test, in one binary (one link instead of one
//! per file); each module is one flow.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod support;

mod contract_flow;
mod growth;
mod seed_state;
mod state_on_the_bus;
