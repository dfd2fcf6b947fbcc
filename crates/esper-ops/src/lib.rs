//! esper-ops: tensor building blocks shared by Tolaria's hosts, Urza's
//! blueprints and Kasmina's seeds, with no dependency on any other Esper crate.
//!
//! * [`init`]: seeded parameter initialisation — candle cannot seed its CPU
//!   random number generator (DESIGN §12), so determinism needs our own.
//! * [`pool`]: 2×2 max pooling whose gradient is exact (candle 0.11's
//!   `max_pool2d` backward is wrong, DESIGN §12).
//! * [`conv`]: 2-D convolution as im2col + GEMM (stride, padding, dilation,
//!   groups) whose backward skips the gradient of an untracked input.
//!
//! **Status (issue #6):** pooling with saved argmax indices, fused bias +
//! activation and a batch-parallel unfold are not built yet.

#![deny(missing_docs)]

pub mod conv;
pub mod init;
pub mod pool;

pub use conv::{Conv2dSpec, conv2d};
pub use init::ParamInit;
pub use pool::max_pool2x2;
