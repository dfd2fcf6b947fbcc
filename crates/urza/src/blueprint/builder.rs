//! Where a module's weights come from (a seeded initialiser, or stored
//! tensors), and the small layer helpers every builder shares.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};
use esper_ops::{Conv2dSpec, ParamInit};

use crate::error::{Error, Result};

/// The source of a module's parameters.
#[derive(Debug)]
pub enum Weights<'a> {
    /// Fresh weights drawn from a seeded initialiser (uniform ±1/√fan_in,
    /// PyTorch's default), in construction order.
    Init(&'a mut ParamInit),
    /// Stored weights by parameter name; every name must be consumed, with the
    /// declared shape, and none may be left over.
    Given {
        /// The tensors.
        tensors: BTreeMap<String, Tensor>,
        /// Device to place them on.
        device: Device,
    },
}

/// Creates named parameters in order.
pub(crate) struct Builder<'a> {
    weights: Weights<'a>,
    vars: Vec<(String, Var)>,
    context: String,
}

impl<'a> Builder<'a> {
    pub(crate) fn new(weights: Weights<'a>, context: String) -> Self {
        Self {
            weights,
            vars: Vec::new(),
            context,
        }
    }

    /// A parameter `name` of `shape`, initialised uniform in ±`bound`.
    pub(crate) fn param(&mut self, name: &str, shape: &[usize], bound: f64) -> Result<Var> {
        let var = match &mut self.weights {
            Weights::Init(init) => {
                init.uniform(shape, bound as f32)
                    .map_err(Error::tensor(format!(
                        "{}: initialising {name}",
                        self.context
                    )))?
            }
            Weights::Given { tensors, device } => {
                let tensor = tensors
                    .remove(name)
                    .ok_or_else(|| Error::MalformedArtifact {
                        reason: format!("{}: weight `{name}` is missing", self.context),
                    })?;
                if tensor.dims() != shape {
                    return Err(Error::Shape {
                        context: format!("{}: weight `{name}`", self.context),
                        expected: shape.to_vec(),
                        actual: tensor.dims().to_vec(),
                    });
                }
                if tensor.dtype() != DType::F32 {
                    return Err(Error::MalformedArtifact {
                        reason: format!(
                            "{}: weight `{name}` is {:?}, expected F32",
                            self.context,
                            tensor.dtype()
                        ),
                    });
                }
                // The kernel-load crossing: weights read on the host go to
                // the model's device.
                let on_device = esper_ops::device::move_to(&tensor, device, "blueprint weights")
                    .map_err(Error::tensor(format!("{}: placing {name}", self.context)))?;
                Var::from_tensor(&on_device)
                    .map_err(Error::tensor(format!("{}: {name}", self.context)))?
            }
        };
        self.vars.push((name.to_string(), var.clone()));
        Ok(var)
    }

    /// A linear layer `in → out` named `prefix.weight` / `prefix.bias`.
    pub(crate) fn linear(&mut self, prefix: &str, inputs: usize, outputs: usize) -> Result<Linear> {
        let bound = 1.0 / (inputs as f64).sqrt();
        Ok(Linear {
            weight: self.param(&format!("{prefix}.weight"), &[outputs, inputs], bound)?,
            bias: Some(self.param(&format!("{prefix}.bias"), &[outputs], bound)?),
        })
    }

    /// A linear layer without bias.
    pub(crate) fn linear_no_bias(
        &mut self,
        prefix: &str,
        inputs: usize,
        outputs: usize,
    ) -> Result<Linear> {
        let bound = 1.0 / (inputs as f64).sqrt();
        Ok(Linear {
            weight: self.param(&format!("{prefix}.weight"), &[outputs, inputs], bound)?,
            bias: None,
        })
    }

    /// A `k × k` convolution `c_in → c_out` with "same" padding.
    pub(crate) fn conv(
        &mut self,
        prefix: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        groups: usize,
    ) -> Result<Conv> {
        let fan_in = (c_in / groups) * k * k;
        let bound = 1.0 / (fan_in as f64).sqrt();
        Ok(Conv {
            weight: self.param(
                &format!("{prefix}.weight"),
                &[c_out, c_in / groups, k, k],
                bound,
            )?,
            bias: self.param(&format!("{prefix}.bias"), &[c_out], bound)?,
            spec: Conv2dSpec {
                padding: k / 2,
                stride: 1,
                dilation: 1,
                groups,
            },
        })
    }

    /// Finishes: with stored weights, none may be left unused.
    pub(crate) fn finish(self) -> Result<Vec<(String, Var)>> {
        if let Weights::Given { tensors, .. } = &self.weights
            && !tensors.is_empty()
        {
            let extra: Vec<&String> = tensors.keys().collect();
            return Err(Error::MalformedArtifact {
                reason: format!("{}: unexpected weights {extra:?}", self.context),
            });
        }
        Ok(self.vars)
    }
}

/// `y = x Wᵀ + b` over the last dimension of a `[N, F]` input.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    weight: Var,
    bias: Option<Var>,
}

impl Linear {
    /// The weight `[outputs, inputs]` (for the MAC count).
    pub(crate) fn weight(&self) -> &Var {
        &self.weight
    }

    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_act(x, esper_ops::Activation::Identity)
    }

    /// `act(x Wᵀ + b)`: with a bias, esper-ops' fused layer (one GEMM each
    /// way); without, candle's matmul and activation.
    pub(crate) fn forward_act(
        &self,
        x: &Tensor,
        act: esper_ops::Activation,
    ) -> candle_core::Result<Tensor> {
        let w = self.weight.as_tensor();
        match &self.bias {
            Some(b) => esper_ops::linear(x, w, b.as_tensor(), act),
            None => act.apply(x.matmul(&w.t()?)?),
        }
    }

    /// Applies the layer as a 1×1 convolution over `[N, C, L]` (channels first).
    pub(crate) fn forward_channels(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.weight.as_tensor().broadcast_matmul(x)?;
        match &self.bias {
            Some(b) => {
                let c = b.as_tensor().dim(0)?;
                y.broadcast_add(&b.as_tensor().reshape((1, c, 1))?)
            }
            None => Ok(y),
        }
    }
}

/// A 2-D convolution with bias (esper-ops' im2col + GEMM on the CPU).
#[derive(Debug, Clone)]
pub(crate) struct Conv {
    weight: Var,
    bias: Var,
    spec: Conv2dSpec,
}

impl Conv {
    /// The kernel `[outputs, inputs / groups, k, k]` (for the MAC count).
    pub(crate) fn weight(&self) -> &Var {
        &self.weight
    }

    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = esper_ops::conv2d(x, self.weight.as_tensor(), self.spec)?;
        esper_ops::bias_add(&y, self.bias.as_tensor())
    }

    /// `relu(forward(x))`, bias and ReLU fused.
    pub(crate) fn forward_relu(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = esper_ops::conv2d(x, self.weight.as_tensor(), self.spec)?;
        esper_ops::bias_relu(&y, self.bias.as_tensor())
    }
}
