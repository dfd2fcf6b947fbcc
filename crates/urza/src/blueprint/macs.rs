//! Forward multiply-accumulates (MACs) of a blueprint instance, per sample.
//!
//! What counts: every multiply-accumulate of a weight layer (each weight
//! element times each position it is applied at: a 3×3 conv over an `H×W` map
//! costs `weights × H × W`, a linear layer on one vector costs `weights`) and
//! of the attention products (`QKᵀ` and the weighted sum of values). What does
//! not: biases, activations, normalisation, pooling, gating and residual
//! additions — elementwise work of the order of the activation size, not of
//! the weights. This is the convention of the usual MAC counters (fvcore,
//! ptflops); a host reports its layers the same way, so seed and host costs add.
//!
//! Two independent counts exist on purpose: [`formula`] from the blueprint's
//! parameters (what the catalog and a controller can know before building),
//! and [`built`] from the built module's actual weight shapes. The tests hold
//! them equal for every catalog blueprint on several slot shapes.

use candle_core::Var;

use super::{Kind, Net, conv, dense};
use crate::params::Parameters;

/// MACs per sample of a blueprint of `kind` on a slot of `shape` (already
/// checked to fit).
pub(super) fn formula(kind: Kind, params: &Parameters, shape: &[usize]) -> u64 {
    match kind {
        Kind::Identity => 0,
        Kind::Conv(kind) => conv::macs(kind, params, shape),
        Kind::Dense(kind) => dense::macs(kind, params, shape),
    }
}

fn elems(var: &Var) -> u64 {
    var.elem_count() as u64
}

/// MACs per sample of the built network `net` on a slot of `shape`, from the
/// shapes of the weights it holds.
pub(super) fn built(net: &Net, shape: &[usize]) -> u64 {
    // Positions per sample: H×W on a conv slot, 1 on a dense one.
    let positions: u64 = shape.iter().skip(1).map(|&d| d as u64).product();
    match net {
        Net::Identity | Net::ChannelNorm(_) => 0,
        Net::Conv(convs) | Net::ConvRelu(convs) => {
            convs.iter().map(|c| elems(c.weight()) * positions).sum()
        }
        Net::Residual(r) => r
            .blocks()
            .iter()
            .map(|(a, b)| (elems(a.weight()) + elems(b.weight())) * positions)
            .sum(),
        // Both layers act on the pooled channel vector: once per sample.
        Net::SqueezeExcitation(se) => se.layers().iter().map(|l| elems(l.weight())).sum(),
        Net::SpatialAttention(a) => {
            let (h, w) = (shape[1] as u64, shape[2] as u64);
            let pool = a.kv_pool() as u64;
            let pooled = (h / pool) * (w / pool);
            let [query, key, value, output] = a.layers();
            let channels = value.weight().dims().first().copied().unwrap_or(0) as u64;
            let key_dim = a.key_dim() as u64;
            elems(query.weight()) * positions
                + elems(output.weight()) * positions
                + (elems(key.weight()) + elems(value.weight())) * pooled
                // scores = Q Kᵀ, then the values weighted by the scores.
                + positions * pooled * key_dim
                + channels * positions * pooled
        }
        Net::Mlp(m) => m.layers().iter().map(|l| elems(l.weight())).sum(),
        Net::LowRank(m) => m.layers().iter().map(|l| elems(l.weight())).sum(),
        Net::GatedFeedForward(m) => m.layers().iter().map(|l| elems(l.weight())).sum(),
    }
}
