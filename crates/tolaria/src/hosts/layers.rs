//! Layers with seeded initialisation (from `esper-ops`).

use candle_core::{Tensor, Var};
use esper_ops::ParamInit;
use kasmina::NamedParameter;

use crate::error::Result;

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
        })
    }

    /// Applies the layer to `[N, in]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.weight.as_tensor().t()?)?
            .broadcast_add(self.bias.as_tensor())
    }

    /// `name.weight`, `name.bias`.
    pub fn parameters(&self) -> Vec<NamedParameter> {
        weight_and_bias(&self.name, &self.weight, &self.bias)
    }
}

/// 2-D convolution (stride 1) with bias.
pub struct Conv2d {
    name: String,
    weight: Var,
    bias: Var,
    padding: usize,
    out_channels: usize,
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
        })
    }

    /// Applies the convolution to `[N, C, H, W]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // im2col + GEMM from esper-ops: exact, and no gradient for the data batch.
        esper_ops::conv2d(
            x,
            self.weight.as_tensor(),
            esper_ops::Conv2dSpec {
                padding: self.padding,
                ..esper_ops::Conv2dSpec::default()
            },
        )?
        .broadcast_add(
            &self
                .bias
                .as_tensor()
                .reshape((1, self.out_channels, 1, 1))?,
        )
    }

    /// `name.weight`, `name.bias`.
    pub fn parameters(&self) -> Vec<NamedParameter> {
        weight_and_bias(&self.name, &self.weight, &self.bias)
    }
}
