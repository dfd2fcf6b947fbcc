//! esper-ops: tensor building blocks shared by Tolaria's hosts, Urza's
//! blueprints and Kasmina's seeds, with no dependency on any other Esper crate.
//!
//! * [`ParamInit`]: seeded parameter initialisation — candle cannot seed its CPU
//!   random number generator (docs/DESIGN.md §12), so determinism needs our own.
//! * [`max_pool2d`], [`avg_pool2d`], [`max_pool2x2`]: k×k max and average pooling (stride k) as one-pass custom ops
//!   with exact gradients (candle 0.11's `max_pool2d` backward is wrong,
//!   docs/DESIGN.md §12).
//! * [`conv2d`] ([`Conv2dSpec`]): 2-D convolution as a parallel whole-batch im2col + one GEMM
//!   per group (stride, padding, dilation, groups) whose backward computes
//!   only the gradients that are needed; a depthwise convolution runs as
//!   direct per-tap passes instead.
//! * [`bias_add`], [`bias_relu`]: per-channel bias add, and fused bias + ReLU, one pass each way
//!   with exact gradients.
//! * [`bias_relu_max_pool2x2`] and [`conv2d_bias_relu_max_pool2x2`]: bias + ReLU + 2×2 max pooling in one pass each way, without
//!   the full-size activation in between (a conv block's epilogue; the second
//!   with its convolution).
//! * [`linear`] ([`Activation`]): a fully connected layer with its bias and
//!   activation (ReLU, GELU) fused, one GEMM forward and one per needed
//!   gradient backward (none for an untracked input), the bias gradient one
//!   column sum.
//! * [`cross_entropy`]: softmax cross-entropy as one op each way.
//! * [`incubate`], [`residual_blend`], [`convex_blend`]: a seed's output
//!   joining the host activation (Kasmina's incubator and blends), one pass
//!   each way, bit for bit the candle composition.
//! * [`device`]: device discipline — [`device::ensure_on`] names a tensor
//!   found off the model's device ([`device::DeviceMismatch`]), and
//!   [`device::move_to`] is the one move between devices, naming its crossing.
//! * [`adamw_update`] ([`AdamWStep`]): AdamW in one in-place pass per
//!   parameter with the moments as plain buffers, bit for bit the candle
//!   composition (no per-step temporaries).
//! * [`threads`]: the compute pool a CPU training run executes on.
//! * `alloc` (feature `mimalloc`): mimalloc as the global allocator, with
//!   freed memory retained for the next step.
//!
//! The convolution's GEMMs call the `gemm` crate through one bounds-checked
//! wrapper, and `alloc` sets a mimalloc option: the workspace's only `unsafe`
//! code, each block with the argument for its soundness.

#![deny(missing_docs)]

mod act;
mod adamw;
#[cfg(feature = "mimalloc")]
pub mod alloc;
#[cfg(test)]
mod alloc_count;
mod blend;
mod conv;
mod cpu;
mod dense;
pub mod device;
mod fused;
mod gemm;
mod init;
mod loss;
mod pool;
pub mod threads;

pub use act::{bias_add, bias_relu};
pub use adamw::{AdamWStep, adamw_composition, adamw_update};
pub use blend::{convex_blend, incubate, residual_blend};
pub use conv::{Conv2dSpec, conv2d, conv2d_bias_relu_max_pool2x2};
pub use dense::{Activation, linear};
pub use fused::bias_relu_max_pool2x2;
pub use init::ParamInit;
pub use loss::cross_entropy;
pub use pool::{avg_pool2d, max_pool2d, max_pool2x2};
pub use threads::ComputePool;
