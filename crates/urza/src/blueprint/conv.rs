//! Blueprints for convolutional slots `[N, C, H, W]`. Each keeps the input
//! shape, uses every declared parameter, and reports its exact parameter count.

use candle_core::{D, Tensor};

use super::Net;
use super::builder::{Builder, Conv, Linear};
use crate::error::Result;
use crate::params::{Parameters, get, get_usize, scaled};

/// The convolutional blueprints: each function below matches every
/// variant, so a new one breaks the build until it has a count, a builder and
/// its constraints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ConvKind {
    ChannelNorm,
    Depthwise,
    LightConv,
    HeavyConv,
    Residual,
    SqueezeExcitation,
    SpatialAttention,
    GroupedConv,
}

/// Channel normalisation over `(C, H, W)` of each sample, with a per-channel affine.
#[derive(Debug, Clone)]
pub(crate) struct ChannelNorm {
    eps: f64,
    gamma: candle_core::Var,
    beta: candle_core::Var,
}

/// `y = x + f(x)` blocks, `f = conv3×3 ∘ relu ∘ conv3×3` through an expanded width.
#[derive(Debug, Clone)]
pub(crate) struct Residual {
    blocks: Vec<(Conv, Conv)>,
}

/// Squeeze-excitation: channel gates from globally pooled features.
#[derive(Debug, Clone)]
pub(crate) struct SqueezeExcitation {
    squeeze: Linear,
    excite: Linear,
}

/// Single-head self-attention over spatial positions; keys and values come from
/// an average-pooled map so that memory is `HW × HW/p²`.
#[derive(Debug, Clone)]
pub(crate) struct SpatialAttention {
    key_dim: usize,
    kv_pool: usize,
    query: Linear,
    key: Linear,
    value: Linear,
    output: Linear,
}

/// Channels × derived width for the bottleneck, heavy and residual blocks.
fn width(kind: ConvKind, p: &Parameters, c: usize) -> usize {
    match kind {
        ConvKind::LightConv => scaled(c, get(p, "bottleneck_ratio")),
        ConvKind::HeavyConv => scaled(c, get(p, "width_multiplier")),
        ConvKind::Residual => scaled(c, get(p, "expansion")),
        ConvKind::SqueezeExcitation => scaled(c, 1.0 / get(p, "reduction")),
        ConvKind::SpatialAttention => get_usize(p, "key_dim"),
        // Blueprints without a derived width use the channel count itself.
        ConvKind::ChannelNorm | ConvKind::Depthwise | ConvKind::GroupedConv => c,
    }
}

/// Constraints beyond the parameter bounds that depend on the slot.
pub(crate) fn fits(
    kind: ConvKind,
    p: &Parameters,
    shape: &[usize],
) -> std::result::Result<(), String> {
    let (c, h, w) = (shape[0], shape[1], shape[2]);
    match kind {
        ConvKind::Depthwise => {
            let k = get_usize(p, "kernel_size");
            if k.is_multiple_of(2) {
                return Err(format!("kernel_size {k} must be odd to keep the shape"));
            }
            Ok(())
        }
        ConvKind::GroupedConv => {
            let g = get_usize(p, "groups");
            if !c.is_multiple_of(g) {
                return Err(format!("{c} channels do not split into {g} groups"));
            }
            Ok(())
        }
        ConvKind::SpatialAttention => {
            let pool = get_usize(p, "kv_pool");
            if h < pool || w < pool {
                return Err(format!("a {h}x{w} map is smaller than kv_pool {pool}"));
            }
            Ok(())
        }
        ConvKind::ChannelNorm => {
            if c * h * w < 2 {
                return Err("normalising a single value gives a constant".into());
            }
            Ok(())
        }
        // No constraint beyond the parameter bounds.
        ConvKind::LightConv
        | ConvKind::HeavyConv
        | ConvKind::Residual
        | ConvKind::SqueezeExcitation => Ok(()),
    }
}

/// The exact number of scalar parameters, computed from the formulas (the tests
/// compare it with what [`build`] creates).
pub(crate) fn count(kind: ConvKind, p: &Parameters, shape: &[usize]) -> u64 {
    let c = shape[0] as u64;
    let n = width(kind, p, shape[0]) as u64;
    match kind {
        ConvKind::ChannelNorm => 2 * c,
        ConvKind::Depthwise => {
            let k = get_usize(p, "kernel_size") as u64;
            c * k * k + c
        }
        ConvKind::LightConv => c * n + n + 9 * n * n + n + n * c + c,
        ConvKind::HeavyConv => 9 * c * n + n + 9 * n * c + c,
        ConvKind::Residual => get_usize(p, "depth") as u64 * (9 * c * n + n + 9 * n * c + c),
        ConvKind::SqueezeExcitation => c * n + n + n * c + c,
        ConvKind::SpatialAttention => 2 * (c * n + n) + 2 * (c * c + c),
        ConvKind::GroupedConv => {
            let g = get_usize(p, "groups") as u64;
            9 * c * (c / g) + c
        }
    }
}

/// Forward MACs per sample (see `macs.rs` for what counts): every kernel
/// weight at each of the `H×W` positions (stride 1, padded to keep the map),
/// squeeze-excitation's layers once on the pooled vector, and attention's
/// projections at their positions plus its two products.
pub(crate) fn macs(kind: ConvKind, p: &Parameters, shape: &[usize]) -> u64 {
    let c = shape[0] as u64;
    let positions = (shape[1] * shape[2]) as u64;
    let n = width(kind, p, shape[0]) as u64;
    match kind {
        ConvKind::ChannelNorm => 0,
        ConvKind::Depthwise => {
            let k = get_usize(p, "kernel_size") as u64;
            c * k * k * positions
        }
        ConvKind::LightConv => (c * n + 9 * n * n + n * c) * positions,
        ConvKind::HeavyConv => 18 * c * n * positions,
        ConvKind::Residual => get_usize(p, "depth") as u64 * 18 * c * n * positions,
        ConvKind::SqueezeExcitation => 2 * c * n,
        ConvKind::SpatialAttention => {
            let pool = get_usize(p, "kv_pool");
            let pooled = ((shape[1] / pool) * (shape[2] / pool)) as u64;
            // Q and the output projection at every position, K and V at the
            // pooled ones, then scores (positions × pooled × d) and the
            // weighted values (C × positions × pooled).
            (c * n + c * c) * positions
                + (c * n + c * c) * pooled
                + positions * pooled * n
                + c * positions * pooled
        }
        ConvKind::GroupedConv => {
            let g = get_usize(p, "groups") as u64;
            9 * c * (c / g) * positions
        }
    }
}

/// Builds the network of a convolutional blueprint.
pub(crate) fn build(
    kind: ConvKind,
    p: &Parameters,
    shape: &[usize],
    b: &mut Builder<'_>,
) -> Result<Net> {
    let c = shape[0];
    let n = width(kind, p, c);
    Ok(match kind {
        ConvKind::ChannelNorm => Net::ChannelNorm(ChannelNorm {
            eps: get(p, "eps"),
            // γ starts near 1 and β near 0 (a near-identity normaliser), but
            // drawn, so that seeds differ.
            gamma: {
                let g = b.param("gamma", &[c], 0.1)?;
                let shifted = (g.as_tensor() + 1.0).map_err(crate::Error::tensor("gamma"))?;
                g.set(&shifted).map_err(crate::Error::tensor("gamma"))?;
                g
            },
            beta: b.param("beta", &[c], 0.1)?,
        }),
        ConvKind::Depthwise => {
            let k = get_usize(p, "kernel_size");
            Net::Conv(vec![b.conv("depthwise", c, c, k, c)?])
        }
        ConvKind::LightConv => Net::ConvRelu(vec![
            b.conv("reduce", c, n, 1, 1)?,
            b.conv("spatial", n, n, 3, 1)?,
            b.conv("expand", n, c, 1, 1)?,
        ]),
        ConvKind::HeavyConv => Net::ConvRelu(vec![
            b.conv("conv1", c, n, 3, 1)?,
            b.conv("conv2", n, c, 3, 1)?,
        ]),
        ConvKind::Residual => {
            let depth = get_usize(p, "depth");
            let mut blocks = Vec::with_capacity(depth);
            for i in 0..depth {
                blocks.push((
                    b.conv(&format!("block{i}.conv1"), c, n, 3, 1)?,
                    b.conv(&format!("block{i}.conv2"), n, c, 3, 1)?,
                ));
            }
            Net::Residual(Residual { blocks })
        }
        ConvKind::SqueezeExcitation => Net::SqueezeExcitation(SqueezeExcitation {
            squeeze: b.linear("squeeze", c, n)?,
            excite: b.linear("excite", n, c)?,
        }),
        ConvKind::SpatialAttention => Net::SpatialAttention(SpatialAttention {
            key_dim: n,
            kv_pool: get_usize(p, "kv_pool"),
            query: b.linear("query", c, n)?,
            key: b.linear("key", c, n)?,
            value: b.linear("value", c, c)?,
            output: b.linear("output", c, c)?,
        }),
        ConvKind::GroupedConv => {
            let g = get_usize(p, "groups");
            Net::Conv(vec![b.conv("grouped", c, c, 3, g)?])
        }
    })
}

impl ChannelNorm {
    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let flat = x.reshape((n, c * h * w))?;
        let mean = flat.mean_keepdim(1)?;
        let centred = flat.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(1)?;
        let normed = centred
            .broadcast_div(&(var + self.eps)?.sqrt()?)?
            .reshape((n, c, h, w))?;
        normed
            .broadcast_mul(&self.gamma.as_tensor().reshape((1, c, 1, 1))?)?
            .broadcast_add(&self.beta.as_tensor().reshape((1, c, 1, 1))?)
    }
}

impl Residual {
    pub(crate) fn blocks(&self) -> &[(Conv, Conv)] {
        &self.blocks
    }

    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut y = x.clone();
        for (a, b) in &self.blocks {
            y = (&y + b.forward(&a.forward_relu(&y)?)?)?;
        }
        Ok(y)
    }
}

impl SqueezeExcitation {
    pub(crate) fn layers(&self) -> [&Linear; 2] {
        [&self.squeeze, &self.excite]
    }

    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, c, _, _) = x.dims4()?;
        let pooled = x.mean(D::Minus1)?.mean(D::Minus1)?;
        let hidden = self.squeeze.forward(&pooled)?.relu()?;
        let gate = candle_nn::ops::sigmoid(&self.excite.forward(&hidden)?)?;
        x.broadcast_mul(&gate.reshape((n, c, 1, 1))?)
    }
}

impl SpatialAttention {
    /// Query, key, value and output projections.
    pub(crate) fn layers(&self) -> [&Linear; 4] {
        [&self.query, &self.key, &self.value, &self.output]
    }

    pub(crate) fn kv_pool(&self) -> usize {
        self.kv_pool
    }

    pub(crate) fn key_dim(&self) -> usize {
        self.key_dim
    }

    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let tokens = x.reshape((n, c, h * w))?;
        let pooled = if self.kv_pool > 1 {
            x.avg_pool2d(self.kv_pool)?
        } else {
            x.clone()
        };
        let (_, _, ph, pw) = pooled.dims4()?;
        let kv = pooled.reshape((n, c, ph * pw))?;
        let q = self.query.forward_channels(&tokens)?.transpose(1, 2)?; // [N, HW, d]
        let k = self.key.forward_channels(&kv)?; // [N, d, P]
        let v = self.value.forward_channels(&kv)?; // [N, C, P]
        let scores = (q.contiguous()?.matmul(&k)? / (self.key_dim as f64).sqrt())?; // [N, HW, P]
        let attention = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let mixed = v.matmul(&attention.transpose(1, 2)?.contiguous()?)?; // [N, C, HW]
        self.output.forward_channels(&mixed)?.reshape((n, c, h, w))
    }
}
