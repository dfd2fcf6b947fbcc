//! Blueprints for dense slots `[N, F]`. Each keeps the input shape, uses every
//! declared parameter, and reports its exact parameter count.

use candle_core::Tensor;

use super::builder::{Builder, Linear};
use super::{Kind, Net};
use crate::error::Result;
use crate::params::{Parameters, get, get_usize, scaled};

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

fn hidden(kind: Kind, p: &Parameters, f: usize) -> usize {
    match kind {
        Kind::MlpSmall | Kind::MlpLarge | Kind::GatedFeedForward => {
            scaled(f, get(p, "hidden_multiple"))
        }
        Kind::LowRank => get_usize(p, "rank"),
        // Blueprints without a hidden width use the feature count itself.
        _ => f,
    }
}

/// Constraints beyond the parameter bounds that depend on the slot.
pub(crate) fn fits(kind: Kind, p: &Parameters, shape: &[usize]) -> std::result::Result<(), String> {
    let f = shape[0];
    match kind {
        Kind::LowRank => {
            let r = get_usize(p, "rank");
            if r > f {
                return Err(format!("rank {r} exceeds the {f} features"));
            }
            Ok(())
        }
        // No constraint beyond the parameter bounds.
        _ => Ok(()),
    }
}

/// The exact number of scalar parameters, from the formulas.
pub(crate) fn count(kind: Kind, p: &Parameters, shape: &[usize]) -> u64 {
    let f = shape[0] as u64;
    let h = hidden(kind, p, shape[0]) as u64;
    match kind {
        Kind::MlpSmall => f * h + h + h * f + f,
        Kind::MlpLarge => {
            let depth = get_usize(p, "depth") as u64;
            f * h + h + (depth - 1) * (h * h + h) + h * f + f
        }
        Kind::LowRank => 2 * f * h,
        Kind::GatedFeedForward => 2 * (f * h + h) + h * f + f,
        // Identity and the other slot family: no parameters here (dispatch is by
        // slot kind; the tests compare every count with the built module).
        _ => 0,
    }
}

/// Builds the network of a dense blueprint.
pub(crate) fn build(
    kind: Kind,
    p: &Parameters,
    shape: &[usize],
    b: &mut Builder<'_>,
) -> Result<Net> {
    let f = shape[0];
    let h = hidden(kind, p, f);
    Ok(match kind {
        Kind::MlpSmall => Net::Mlp(Mlp {
            layers: vec![b.linear("fc1", f, h)?, b.linear("fc2", h, f)?],
        }),
        Kind::MlpLarge => {
            let depth = get_usize(p, "depth");
            let mut layers = vec![b.linear("fc0", f, h)?];
            for i in 1..depth {
                layers.push(b.linear(&format!("fc{i}"), h, h)?);
            }
            layers.push(b.linear(&format!("fc{depth}"), h, f)?);
            Net::Mlp(Mlp { layers })
        }
        Kind::LowRank => Net::LowRank(LowRank {
            scale: get(p, "alpha") / h as f64,
            down: b.linear_no_bias("down", f, h)?,
            up: b.linear_no_bias("up", h, f)?,
        }),
        Kind::GatedFeedForward => Net::GatedFeedForward(GatedFeedForward {
            value: b.linear("value", f, h)?,
            gate: b.linear("gate", f, h)?,
            output: b.linear("output", h, f)?,
        }),
        // Identity and the other slot family (dispatch is by slot kind).
        _ => Net::Identity,
    })
}

impl Mlp {
    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut y = x.clone();
        let last = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            y = layer.forward(&y)?;
            if i < last {
                y = y.relu()?;
            }
        }
        Ok(y)
    }
}

impl LowRank {
    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.up.forward(&self.down.forward(x)?)? * self.scale
    }
}

impl GatedFeedForward {
    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let gated = (self.value.forward(x)?.gelu()? * self.gate.forward(x)?)?;
        self.output.forward(&gated)
    }
}
