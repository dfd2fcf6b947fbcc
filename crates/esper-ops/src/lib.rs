//! esper-ops: tensor building blocks shared by Tolaria's hosts, Urza's
//! blueprints and Kasmina's seeds, with no dependency on any other Esper crate.
//!
//! * [`init`]: seeded parameter initialisation — candle cannot seed its CPU
//!   random number generator (DESIGN §12), so determinism needs our own.
//! * [`pool`]: 2×2 max pooling whose gradient is exact (candle 0.11's
//!   `max_pool2d` backward is wrong, DESIGN §12).
//!
//! **Status (issue #6):** the fast CPU kernels this crate exists for —
//! im2col + GEMM convolution with a backward that skips the data gradient,
//! pooling with saved argmax indices, fused bias + activation — are not built
//! yet; the operations here are compositions of candle's own ops.

#![deny(missing_docs)]

pub mod init;
pub mod pool;

pub use init::ParamInit;
pub use pool::max_pool2x2;
