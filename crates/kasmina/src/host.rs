//! The host contract: what Kasmina needs from any model it grows.
//!
//! A host declares its slots (where seeds may attach) with their feature shapes,
//! and runs its forward pass with [`Host::forward_with_slots`], handing each slot's
//! activation to a [`SlotRunner`] and continuing with what the runner returns.
//! Kasmina never names a concrete host (architecture invariant 5).

use candle_core::{Tensor, Var};
use leyline::v1::SlotKind;

use crate::error::{Error, Result};

/// One slot of a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotSpec {
    /// Stable id, e.g. `r0`.
    pub id: String,
    /// Dense `[N, F]` or convolutional `[N, C, H, W]`.
    pub kind: SlotKind,
    /// Feature shape without the batch dimension.
    pub feature_shape: Vec<usize>,
    /// Depth of the slot in the host (0 = closest to the input).
    pub layer_depth: u32,
}

impl SlotSpec {
    /// A dense slot carrying `[N, features]`.
    pub fn dense(id: impl Into<String>, features: usize, layer_depth: u32) -> Self {
        Self {
            id: id.into(),
            kind: SlotKind::Dense,
            feature_shape: vec![features],
            layer_depth,
        }
    }

    /// A convolutional slot carrying `[N, channels, height, width]`.
    pub fn conv2d(
        id: impl Into<String>,
        channels: usize,
        height: usize,
        width: usize,
        layer_depth: u32,
    ) -> Self {
        Self {
            id: id.into(),
            kind: SlotKind::Conv2d,
            feature_shape: vec![channels, height, width],
            layer_depth,
        }
    }

    /// Checks that `h` is `[N, feature_shape...]`.
    pub fn check(&self, h: &Tensor) -> Result<()> {
        let dims = h.dims();
        if dims.len() == self.feature_shape.len() + 1 && dims[1..] == self.feature_shape[..] {
            Ok(())
        } else {
            Err(Error::SlotShape {
                slot: self.id.clone(),
                expected: self.feature_shape.clone(),
                actual: dims.to_vec(),
            })
        }
    }
}

/// Runs whatever occupies a slot on the host activation `h`.
pub trait SlotRunner {
    /// The slot's output; its shape must equal `h`'s.
    fn run(&mut self, slot: &SlotSpec, h: Tensor) -> Result<Tensor>;
}

/// Every slot dormant: identity, with no extra tensor operation (only a shape check
/// on the dimensions, which touches no data).
#[derive(Debug, Clone, Copy, Default)]
pub struct DormantSlots;

impl SlotRunner for DormantSlots {
    fn run(&mut self, slot: &SlotSpec, h: Tensor) -> Result<Tensor> {
        slot.check(&h)?;
        Ok(h)
    }
}

/// A trainable parameter with its stable name (e.g. `conv1.weight`).
#[derive(Debug, Clone)]
pub struct NamedParameter {
    /// Stable, unique name; optimizer state and checkpoints are keyed by it.
    pub name: String,
    /// The variable.
    pub var: Var,
}

/// The forward multiply-accumulates of one host layer, per sample: each
/// weight times each position it is applied at (biases and elementwise work
/// excluded — the convention urza's blueprints count by, so host and seed
/// costs add up).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerMacs {
    /// The layer's name, as in its parameters' names (`conv1`, `fc`).
    pub layer: String,
    /// Multiply-accumulates per sample.
    pub macs: u64,
}

/// A model Kasmina can grow.
pub trait Host: Send {
    /// Short name, e.g. `cnn`.
    fn name(&self) -> &str;
    /// Input shape without the batch dimension, e.g. `[1, 28, 28]`.
    fn input_shape(&self) -> &[usize];
    /// Number of output classes.
    fn num_classes(&self) -> usize;
    /// The slots, in forward order.
    fn slots(&self) -> &[SlotSpec];
    /// Forward pass returning logits `[N, classes]`; every slot's activation goes
    /// through `slots`.
    fn forward_with_slots(&self, x: &Tensor, slots: &mut dyn SlotRunner) -> Result<Tensor>;
    /// Every trainable parameter, in a stable order.
    fn parameters(&self) -> Vec<NamedParameter>;
    /// The forward MACs of each layer, per sample, in forward order; `None`
    /// when the host does not count them, which a run reports as "not
    /// reported" (never as zero).
    fn layer_macs(&self) -> Option<Vec<LayerMacs>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn dormant_slots_are_identity_and_check_shapes() {
        let slot = SlotSpec::conv2d("r0", 4, 2, 2, 0);
        let h = Tensor::ones((3, 4, 2, 2), DType::F32, &Device::Cpu).unwrap();
        let out = DormantSlots.run(&slot, h.clone()).unwrap();
        assert_eq!(
            out.id(),
            h.id(),
            "dormant slot must not create a new tensor"
        );
        let wrong = Tensor::ones((3, 4, 2), DType::F32, &Device::Cpu).unwrap();
        let err = DormantSlots.run(&slot, wrong).unwrap_err().to_string();
        assert!(
            err.contains("slot r0") && err.contains("[3, 4, 2]"),
            "{err}"
        );
    }
}
