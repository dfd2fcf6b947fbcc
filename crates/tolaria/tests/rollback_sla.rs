//! The rollback budgets at 10M parameters (DESIGN §10, `leyline.budgets.
//! performance.fast_rollback_ms` and `full_rollback_ms`): a fast rollback
//! restores the in-RAM known-good snapshot, a full one loads and verifies
//! the newest checkpoint on disk (SHA-256 of every file) and restores it.
//! Ignored in CI (it writes ~120 MB and wants a release build); the
//! `rollback-sla` drill runs it:
//! `cargo test --release -p tolaria --test rollback_sla -- --ignored --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/rollback.rs"]
mod rollback;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[test]
#[ignore = "10M parameters, ~120 MB on disk: run by `cargo xtask drill rollback-sla`"]
fn rollback_sla_at_10m_parameters() {
    rollback::rollback_sla(&candle_core::Device::Cpu);
}
