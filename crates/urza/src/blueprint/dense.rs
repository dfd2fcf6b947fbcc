//! Blueprints for dense slots `[N, F]`. Each keeps the input shape, uses every
//! declared parameter, and reports its exact parameter count.

use candle_core::Tensor;

use super::Net;
use super::builder::{Builder, Linear};
use crate::error::Result;
use crate::params::{Parameters, get, get_usize, scaled};

/// The dense blueprints: each function below matches every
/// variant, so a new one breaks the build until it has a count, a builder and
/// its constraints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum DenseKind {
    MlpSmall,
    MlpLarge,
    LowRank,
    GatedFeedForward,
}

/// Linear layers with ReLU between them.
#[derive(Debug, Clone)]
pub(crate) struct Mlp {
    layers: Vec<Linear>,
}

/// `y = (α / r) · B A x`: a rank-`r` update.
#[derive(Debug, Clone)]
pub(crate) struct LowRank {
    scale: f64,
    down: Linear,
    up: Linear,
}

/// `y = W₂ (gelu(W₁ x) ⊙ W_g x)`: a gated feed-forward block.
#[derive(Debug, Clone)]
pub(crate) struct GatedFeedForward {
    value: Linear,
    gate: Linear,
    output: Linear,
}

fn hidden(kind: DenseKind, p: &Parameters, f: usize) -> usize {
    match kind {
        DenseKind::MlpSmall | DenseKind::MlpLarge | DenseKind::GatedFeedForward => {
            scaled(f, get(p, "hidden_multiple"))
        }
        DenseKind::LowRank => get_usize(p, "rank"),
    }
}

/// Constraints beyond the parameter bounds that depend on the slot.
pub(crate) fn fits(
    kind: DenseKind,
    p: &Parameters,
    shape: &[usize],
) -> std::result::Result<(), String> {
    let f = shape[0];
    match kind {
        DenseKind::LowRank => {
            let r = get_usize(p, "rank");
            if r > f {
                return Err(format!("rank {r} exceeds the {f} features"));
            }
            Ok(())
        }
        // No constraint beyond the parameter bounds.
        DenseKind::MlpSmall | DenseKind::MlpLarge | DenseKind::GatedFeedForward => Ok(()),
    }
}

/// The exact number of scalar parameters, from the formulas.
pub(crate) fn count(kind: DenseKind, p: &Parameters, shape: &[usize]) -> u64 {
    let f = shape[0] as u64;
    let h = hidden(kind, p, shape[0]) as u64;
    match kind {
        DenseKind::MlpSmall => f * h + h + h * f + f,
        DenseKind::MlpLarge => {
            let depth = get_usize(p, "depth") as u64;
            f * h + h + (depth - 1) * (h * h + h) + h * f + f
        }
        DenseKind::LowRank => 2 * f * h,
        DenseKind::GatedFeedForward => 2 * (f * h + h) + h * f + f,
    }
}

/// Forward MACs per sample: every weight once (see `macs.rs`).
pub(crate) fn macs(kind: DenseKind, p: &Parameters, shape: &[usize]) -> u64 {
    let f = shape[0] as u64;
    let h = hidden(kind, p, shape[0]) as u64;
    match kind {
        DenseKind::MlpSmall => 2 * f * h,
        DenseKind::MlpLarge => {
            let depth = get_usize(p, "depth") as u64;
            2 * f * h + (depth - 1) * h * h
        }
        DenseKind::LowRank => 2 * f * h,
        DenseKind::GatedFeedForward => 3 * f * h,
    }
}

/// Builds the network of a dense blueprint.
pub(crate) fn build(
    kind: DenseKind,
    p: &Parameters,
    shape: &[usize],
    b: &mut Builder<'_>,
) -> Result<Net> {
    let f = shape[0];
    let h = hidden(kind, p, f);
    Ok(match kind {
        DenseKind::MlpSmall => Net::Mlp(Mlp {
            layers: vec![b.linear("fc1", f, h)?, b.linear("fc2", h, f)?],
        }),
        DenseKind::MlpLarge => {
            let depth = get_usize(p, "depth");
            let mut layers = vec![b.linear("fc0", f, h)?];
            for i in 1..depth {
                layers.push(b.linear(&format!("fc{i}"), h, h)?);
            }
            layers.push(b.linear(&format!("fc{depth}"), h, f)?);
            Net::Mlp(Mlp { layers })
        }
        DenseKind::LowRank => Net::LowRank(LowRank {
            scale: get(p, "alpha") / h as f64,
            down: b.linear_no_bias("down", f, h)?,
            up: b.linear_no_bias("up", h, f)?,
        }),
        DenseKind::GatedFeedForward => Net::GatedFeedForward(GatedFeedForward {
            value: b.linear("value", f, h)?,
            gate: b.linear("gate", f, h)?,
            output: b.linear("output", h, f)?,
        }),
    })
}

impl Mlp {
    pub(crate) fn layers(&self) -> &[Linear] {
        &self.layers
    }

    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut y = x.clone();
        let last = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            let act = if i < last {
                esper_ops::Activation::Relu
            } else {
                esper_ops::Activation::Identity
            };
            y = layer.forward_act(&y, act)?;
        }
        Ok(y)
    }
}

impl LowRank {
    pub(crate) fn layers(&self) -> [&Linear; 2] {
        [&self.down, &self.up]
    }

    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.up.forward(&self.down.forward(x)?)? * self.scale
    }
}

impl GatedFeedForward {
    pub(crate) fn layers(&self) -> [&Linear; 3] {
        [&self.value, &self.gate, &self.output]
    }

    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let gated =
            (self.value.forward_act(x, esper_ops::Activation::Gelu)? * self.gate.forward(x)?)?;
        self.output.forward(&gated)
    }
}
