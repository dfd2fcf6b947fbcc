//! Layers with seeded initialisation (from `esper-ops`), running on
//! esper-ops' operations or, for comparison, candle's own ([`Ops`]).

use candle_core::{Tensor, Var};
use esper_ops::ParamInit;
use kasmina::{LayerMacs, NamedParameter};

use crate::error::Result;

/// Which tensor operations a reference host runs on (`tolaria.ops`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ops {
    /// esper-ops: each conv block (conv, bias, ReLU, 2×2 max pooling) as one
    /// op, fused bias add and bias + ReLU (the default).
    #[default]
    Esper,
    /// candle's own: `conv2d`, broadcast add, `relu`, and the
    /// reshape-and-max pooling of docs/DESIGN.md §12 (candle's `max_pool2d` backward
    /// is wrong). The baseline of the step benchmark and of the
    /// accuracy-parity test.
    Candle,
}

impl Ops {
    /// The mean softmax cross-entropy of `logits [N, C]` against `labels
    /// [N]`: esper-ops' fused op, or candle-nn's composition.
    pub fn cross_entropy(self, logits: &Tensor, labels: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Ops::Esper => esper_ops::cross_entropy(logits, labels),
            Ops::Candle => candle_nn::loss::cross_entropy(logits, labels),
        }
    }
}

/// The parameters of a layer with a weight and a bias, named `name.weight` and
/// `name.bias`.
fn weight_and_bias(name: &str, weight: &Var, bias: &Var) -> Vec<NamedParameter> {
    vec![
        NamedParameter {
            name: format!("{name}.weight"),
            var: weight.clone(),
        },
        NamedParameter {
            name: format!("{name}.bias"),
            var: bias.clone(),
        },
    ]
}

/// Fully connected layer `y = x Wᵀ + b`.
pub struct Linear {
    name: String,
    weight: Var,
    bias: Var,
    ops: Ops,
}

impl Linear {
    /// `in_features → out_features`, PyTorch default init (±1/√in_features).
    pub fn new(
        name: &str,
        in_features: usize,
        out_features: usize,
        init: &mut ParamInit,
    ) -> Result<Self> {
        let bound = 1.0 / (in_features as f32).sqrt();
        Ok(Self {
            name: name.to_string(),
            weight: init.uniform(&[out_features, in_features], bound)?,
            bias: init.uniform(&[out_features], bound)?,
            ops: Ops::Esper,
        })
    }

    /// The same layer on `ops`.
    pub fn with_ops(self, ops: Ops) -> Self {
        Self { ops, ..self }
    }

    /// Applies the layer to `[N, in]`: on esper-ops, one fused op
    /// (`esper_ops::linear`).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.apply(x, esper_ops::Activation::Identity)
    }

    /// `relu(x Wᵀ + b)`: on esper-ops, product, bias and ReLU in one op.
    pub fn forward_relu(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.apply(x, esper_ops::Activation::Relu)
    }

    fn apply(&self, x: &Tensor, act: esper_ops::Activation) -> candle_core::Result<Tensor> {
        let (w, b) = (self.weight.as_tensor(), self.bias.as_tensor());
        match self.ops {
            Ops::Esper => esper_ops::linear(x, w, b, act),
            Ops::Candle => act.apply(x.matmul(&w.t()?)?.broadcast_add(b)?),
        }
    }

    /// `name.weight`, `name.bias`.
    pub fn parameters(&self) -> Vec<NamedParameter> {
        weight_and_bias(&self.name, &self.weight, &self.bias)
    }

    /// Forward MACs on one input vector: every weight once.
    pub fn macs(&self) -> LayerMacs {
        LayerMacs {
            layer: self.name.clone(),
            macs: self.weight.elem_count() as u64,
        }
    }
}

/// 2-D convolution (stride 1) with bias.
pub struct Conv2d {
    name: String,
    weight: Var,
    bias: Var,
    padding: usize,
    out_channels: usize,
    ops: Ops,
}

impl Conv2d {
    /// `in → out` channels, square `kernel`, PyTorch default init (±1/√(in·k·k)).
    pub fn new(
        name: &str,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        padding: usize,
        init: &mut ParamInit,
    ) -> Result<Self> {
        let bound = 1.0 / ((in_channels * kernel * kernel) as f32).sqrt();
        Ok(Self {
            name: name.to_string(),
            weight: init.uniform(&[out_channels, in_channels, kernel, kernel], bound)?,
            bias: init.uniform(&[out_channels], bound)?,
            padding,
            out_channels,
            ops: Ops::Esper,
        })
    }

    /// The same layer on `ops`.
    pub fn with_ops(self, ops: Ops) -> Self {
        Self { ops, ..self }
    }

    /// Stride 1, this layer's padding.
    fn spec(&self) -> esper_ops::Conv2dSpec {
        esper_ops::Conv2dSpec {
            padding: self.padding,
            ..esper_ops::Conv2dSpec::default()
        }
    }

    /// The convolution without its bias.
    fn convolve(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self.ops {
            // im2col + GEMM: exact, and no gradient for the data batch.
            Ops::Esper => esper_ops::conv2d(x, self.weight.as_tensor(), self.spec()),
            Ops::Candle => x.conv2d(self.weight.as_tensor(), self.padding, 1, 1, 1),
        }
    }

    /// Applies the convolution to `[N, C, H, W]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.convolve(x)?;
        match self.ops {
            Ops::Esper => esper_ops::bias_add(&y, self.bias.as_tensor()),
            Ops::Candle => y.broadcast_add(&self.bias.as_tensor().reshape((
                1,
                self.out_channels,
                1,
                1,
            ))?),
        }
    }

    /// `relu(conv(x) + b)`: on esper-ops, bias and ReLU in one fused pass.
    pub fn forward_relu(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self.ops {
            Ops::Esper => esper_ops::bias_relu(&self.convolve(x)?, self.bias.as_tensor()),
            Ops::Candle => self.forward(x)?.relu(),
        }
    }

    /// `max_pool2x2(relu(conv(x) + b))`: on esper-ops, the whole block in one
    /// op (`esper_ops::conv2d_bias_relu_max_pool2x2`).
    pub fn forward_relu_pool2x2(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self.ops {
            Ops::Esper => esper_ops::conv2d_bias_relu_max_pool2x2(
                x,
                self.weight.as_tensor(),
                self.bias.as_tensor(),
                self.spec(),
            ),
            Ops::Candle => {
                let a = self.forward_relu(x)?;
                let (n, c, h, w) = a.dims4()?;
                a.reshape((n, c, h / 2, 2, w / 2, 2))?.max(5)?.max(3)
            }
        }
    }

    /// `name.weight`, `name.bias`.
    pub fn parameters(&self) -> Vec<NamedParameter> {
        weight_and_bias(&self.name, &self.weight, &self.bias)
    }

    /// Forward MACs on one `height × width` input map: every kernel weight at
    /// each output position (stride 1: `in + 2·padding − k + 1` per side).
    pub fn macs(&self, height: usize, width: usize) -> LayerMacs {
        let k = self.weight.dims().last().copied().unwrap_or(1);
        let out = |side: usize| (side + 2 * self.padding + 1).saturating_sub(k) as u64;
        LayerMacs {
            layer: self.name.clone(),
            macs: self.weight.elem_count() as u64 * out(height) * out(width),
        }
    }
}
