//! What the training-step benches share: a reference host with AdamW and one
//! random batch of 128 MNIST-shaped images.

use candle_core::{Device, Tensor};
use kasmina::{DormantSlots, Host};
use tolaria::optim::{Optimizer, ParamGroup, Rule};

/// Images per step.
pub(crate) const BATCH: usize = 128;

/// A host, its AdamW (lr 1e-3, weight decay 0.01) and a fixed batch.
pub(crate) struct StepFixture {
    pub(crate) host: Box<dyn Host>,
    pub(crate) optimizer: Optimizer,
    pub(crate) x: Tensor,
    pub(crate) y: Tensor,
}

impl StepFixture {
    /// The reference host `name`, seed 0, on the CPU, on esper-ops.
    #[allow(dead_code)] // not every bench uses both constructors
    pub(crate) fn new(name: &str) -> Self {
        Self::with_ops(name, tolaria::hosts::Ops::Esper)
    }

    /// The reference host `name`, seed 0, on the CPU, on `ops`.
    pub(crate) fn with_ops(name: &str, ops: tolaria::hosts::Ops) -> Self {
        let x = Tensor::randn(0f32, 1.0, (BATCH, 1, 28, 28), &Device::Cpu).expect("input");
        let labels: Vec<u32> = (0..BATCH as u32).map(|i| i % 10).collect();
        let y = Tensor::from_vec(labels, BATCH, &Device::Cpu).expect("labels");
        let host = tolaria::hosts::build_with_ops(name, 0, &Device::Cpu, ops).expect("host");
        let mut optimizer = Optimizer::new(Rule::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        })
        .expect("rule");
        optimizer
            .add_group(ParamGroup::new("host", host.parameters(), 1e-3, 0.01))
            .expect("group");
        Self {
            host,
            optimizer,
            x,
            y,
        }
    }

    /// One training step: forward through dormant slots, cross-entropy,
    /// backward, AdamW.
    pub(crate) fn step(&mut self) {
        let logits = self
            .host
            .forward_with_slots(&self.x, &mut DormantSlots)
            .expect("forward");
        let loss = candle_nn::loss::cross_entropy(&logits, &self.y).expect("loss");
        let grads = loss.backward().expect("backward");
        self.optimizer.step(&grads).expect("step");
    }
}
