//! Reference hosts, for 1 × 28 × 28 input and 10 classes:
//!
//! - `mlp`: 784 → 128 (ReLU) → slot `r0` \[128\] → 10;
//! - `cnn`: conv 3×3 1→16 pad 1, ReLU, 2×2 max-pool → slot `r0` \[16,14,14\] →
//!   conv 3×3 16→32 pad 1, ReLU, 2×2 max-pool → slot `r1` \[32,7,7\] → linear 1568→10;
//! - `cnn-impaired`: the same with 1×1 convolutions 1→4 and 4→8 (no spatial
//!   context) → slots `r0` \[4,14,14\] and `r1` \[8,7,7\] → linear 392→10: the host on
//!   which growth must visibly pay.
//!
//! Weights are initialised from our own seeded RNG (candle cannot seed CPU
//! initialisation), with PyTorch's default scheme: weights and biases uniform in
//! ±1/√fan_in. Other hosts can be added by implementing [`kasmina::Host`].

mod layers;

use candle_core::{Device, Tensor};
use kasmina::{Host, LayerMacs, NamedParameter, SlotRunner, SlotSpec};

pub use esper_ops::ParamInit;
pub use layers::{Conv2d, Linear, Ops};

use crate::error::{Error, Result};

/// Names of the reference hosts. `mlp-wide` and `cnn-wide` are the bigger
/// references a cohort's `static-big` arm compares growth against (twice the
/// hidden width of `mlp`, twice the channels of `cnn`).
pub const HOST_NAMES: [&str; 5] = ["mlp", "cnn", "cnn-impaired", "mlp-wide", "cnn-wide"];

/// Builds the reference host `name` with weights drawn from `seed`, on
/// esper-ops' operations.
pub fn build(name: &str, seed: u64, device: &Device) -> Result<Box<dyn Host>> {
    build_with_ops(name, seed, device, Ops::Esper)
}

/// [`build`] on the given operations: the same weights either way.
pub fn build_with_ops(name: &str, seed: u64, device: &Device, ops: Ops) -> Result<Box<dyn Host>> {
    let mut init = ParamInit::new(seed, device.clone());
    Ok(match name {
        "mlp" => Box::new(Mlp::new("mlp", 128, &mut init, ops)?),
        "mlp-wide" => Box::new(Mlp::new("mlp-wide", 256, &mut init, ops)?),
        "cnn" => Box::new(ConvNet::new("cnn", 3, 16, 32, &mut init, ops)?),
        "cnn-wide" => Box::new(ConvNet::new("cnn-wide", 3, 32, 64, &mut init, ops)?),
        "cnn-impaired" => Box::new(ConvNet::new("cnn-impaired", 1, 4, 8, &mut init, ops)?),
        other => {
            return Err(Error::Config(leyline::ConfigError::at(
                "tolaria.host",
                format!("unknown host {other:?}; the reference hosts are {HOST_NAMES:?}"),
            )));
        }
    })
}

/// `mlp`: 784 → 128 (ReLU) → slot `r0` → 10 (`mlp-wide`: 256 hidden).
pub struct Mlp {
    name: &'static str,
    fc1: Linear,
    fc2: Linear,
    slots: Vec<SlotSpec>,
}

impl Mlp {
    fn new(name: &'static str, hidden: usize, init: &mut ParamInit, ops: Ops) -> Result<Self> {
        Ok(Self {
            name,
            fc1: Linear::new("fc1", 784, hidden, init)?.with_ops(ops),
            fc2: Linear::new("fc2", hidden, 10, init)?.with_ops(ops),
            slots: vec![SlotSpec::dense("r0", hidden, 0)],
        })
    }
}

impl Host for Mlp {
    fn name(&self) -> &str {
        self.name
    }
    fn input_shape(&self) -> &[usize] {
        &[1, 28, 28]
    }
    fn num_classes(&self) -> usize {
        10
    }
    fn slots(&self) -> &[SlotSpec] {
        &self.slots
    }
    fn forward_with_slots(
        &self,
        x: &Tensor,
        slots: &mut dyn SlotRunner,
    ) -> kasmina::Result<Tensor> {
        let x = x.flatten_from(1)?;
        let h = self.fc1.forward_relu(&x)?;
        let h = slots.run(&self.slots[0], h)?;
        Ok(self.fc2.forward(&h)?)
    }
    fn parameters(&self) -> Vec<NamedParameter> {
        [self.fc1.parameters(), self.fc2.parameters()].concat()
    }
    fn layer_macs(&self) -> Option<Vec<LayerMacs>> {
        Some(vec![self.fc1.macs(), self.fc2.macs()])
    }
}

/// `cnn`, `cnn-wide` and `cnn-impaired`: two conv stages with a slot after each.
pub struct ConvNet {
    name: &'static str,
    conv1: Conv2d,
    conv2: Conv2d,
    fc: Linear,
    slots: Vec<SlotSpec>,
}

impl ConvNet {
    fn new(
        name: &'static str,
        kernel: usize,
        c1: usize,
        c2: usize,
        init: &mut ParamInit,
        ops: Ops,
    ) -> Result<Self> {
        let padding = kernel / 2;
        Ok(Self {
            name,
            conv1: Conv2d::new("conv1", 1, c1, kernel, padding, init)?.with_ops(ops),
            conv2: Conv2d::new("conv2", c1, c2, kernel, padding, init)?.with_ops(ops),
            fc: Linear::new("fc", c2 * 7 * 7, 10, init)?.with_ops(ops),
            slots: vec![
                SlotSpec::conv2d("r0", c1, 14, 14, 0),
                SlotSpec::conv2d("r1", c2, 7, 7, 1),
            ],
        })
    }
}

impl Host for ConvNet {
    fn name(&self) -> &str {
        self.name
    }
    fn input_shape(&self) -> &[usize] {
        &[1, 28, 28]
    }
    fn num_classes(&self) -> usize {
        10
    }
    fn slots(&self) -> &[SlotSpec] {
        &self.slots
    }
    fn forward_with_slots(
        &self,
        x: &Tensor,
        slots: &mut dyn SlotRunner,
    ) -> kasmina::Result<Tensor> {
        let h = self.conv1.forward_relu_pool2x2(x)?;
        let h = slots.run(&self.slots[0], h)?;
        let h = self.conv2.forward_relu_pool2x2(&h)?;
        let h = slots.run(&self.slots[1], h)?;
        Ok(self.fc.forward(&h.flatten_from(1)?)?)
    }
    fn parameters(&self) -> Vec<NamedParameter> {
        [
            self.conv1.parameters(),
            self.conv2.parameters(),
            self.fc.parameters(),
        ]
        .concat()
    }
    fn layer_macs(&self) -> Option<Vec<LayerMacs>> {
        // conv1 sees the 28×28 input, conv2 the 14×14 pooled map.
        Some(vec![
            self.conv1.macs(28, 28),
            self.conv2.macs(14, 14),
            self.fc.macs(),
        ])
    }
}

#[cfg(test)]
mod tests;
