//! Layers with seeded initialisation, and the pooling helper.

use candle_core::{Device, Tensor, Var};
use kasmina::NamedParameter;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::error::Result;

/// Draws initial weights from a seeded RNG, in call order, so that the same seed
/// and the same construction order give bit-identical parameters.
pub struct ParamInit {
    rng: ChaCha8Rng,
    device: Device,
}

impl ParamInit {
    /// A generator seeded with `seed`, creating tensors on `device`.
    pub fn new(seed: u64, device: Device) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            device,
        }
    }

    /// A variable of `shape` with entries uniform in `[-bound, bound)`.
    pub fn uniform(&mut self, shape: &[usize], bound: f32) -> Result<Var> {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| {
                // 24 random bits → a float in [0, 1) with every value exactly representable.
                let unit = (self.rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32;
                (2.0 * unit - 1.0) * bound
            })
            .collect();
        Ok(Var::from_tensor(&Tensor::from_vec(
            values,
            shape,
            &self.device,
        )?)?)
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
        x.conv2d(self.weight.as_tensor(), self.padding, 1, 1, 1)?
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

/// 2×2 max pooling, stride 2, by reshape and max: candle 0.11's `max_pool2d`
/// backward is wrong (DESIGN §12), this one's gradient is exact (the max's
/// gradient flows to the maximal element).
pub fn max_pool2x2(x: &Tensor) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if h % 2 != 0 || w % 2 != 0 {
        return Err(candle_core::Error::Msg(format!(
            "max_pool2x2 needs even height and width, got {h}x{w}"
        )));
    }
    x.reshape((n, c, h / 2, 2, w / 2, 2))?.max(5)?.max(3)
}
