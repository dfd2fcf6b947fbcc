//! Slot evidence: what each slot sees, measured cheaply on sampled steps
//! (every `kasmina.slot_evidence_every_steps`), for the state packet's
//! `SlotState.activation_norm` and `gradient_norm` (the observation graph's
//! slot features, and what the heuristic picks a slot by).
//!
//! - `activation_norm` is the RMS of the host activation entering the slot,
//!   `sqrt(mean(h²))` over the batch and every feature: how large the signal
//!   a seed would receive is, independent of the slot's size.
//! - `gradient_norm` is the L2 norm of the loss gradient arriving at the
//!   slot's output, `‖∂L/∂y‖` over the batch (the loss is the batch mean):
//!   how strongly the loss pulls on what passes through the slot, i.e. where
//!   a seed's output could move the loss most.
//!
//! Each is an exponential moving average over the sampled steps (weight
//! [`NEW_SAMPLE_WEIGHT`] on the newest), so one noisy batch does not decide.
//! A slot not measured yet reports nothing (never 0). The averages start
//! afresh on a resumed run.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use crate::error::Result;

/// Weight of the newest sample in the moving averages.
pub(crate) const NEW_SAMPLE_WEIGHT: f64 = 0.5;

/// One slot's averages.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct SlotMeasure {
    pub activation_rms: Option<f64>,
    pub gradient_norm: Option<f64>,
}

fn blend(old: Option<f64>, new: f64) -> Option<f64> {
    if !new.is_finite() {
        return old;
    }
    Some(old.map_or(new, |o| o + NEW_SAMPLE_WEIGHT * (new - o)))
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// The sampler and the averages.
#[derive(Debug, Clone, Default)]
pub(crate) struct SlotEvidence {
    every: u64,
    steps: u64,
    by_slot: BTreeMap<String, SlotMeasure>,
}

impl SlotEvidence {
    /// Measures every `every` steps (0: never).
    pub(crate) fn new(every: u64) -> Self {
        Self {
            every,
            steps: 0,
            by_slot: BTreeMap::new(),
        }
    }

    /// Counts a step; whether its forward is to be tapped (the first step,
    /// then every `every`-th).
    pub(crate) fn begin_step(&mut self) -> bool {
        self.steps += 1;
        self.every > 0 && (self.steps - 1).is_multiple_of(self.every)
    }

    /// Folds the taps of a tapped step into the averages.
    pub(crate) fn record(
        &mut self,
        taps: BTreeMap<String, (Tensor, Var)>,
        grads: &GradStore,
    ) -> Result<()> {
        for (slot, (h, at_y)) in taps {
            let rms = scalar(&h.sqr()?.mean_all()?)?.sqrt();
            let grad = match grads.get(at_y.as_tensor()) {
                Some(g) => Some(scalar(&g.sqr()?.sum_all()?)?.sqrt()),
                None => None,
            };
            let m = self.by_slot.entry(slot).or_default();
            m.activation_rms = blend(m.activation_rms, rms);
            if let Some(g) = grad {
                m.gradient_norm = blend(m.gradient_norm, g);
            }
        }
        Ok(())
    }

    /// The averages of `slot`.
    pub(crate) fn of(&self, slot: &str) -> SlotMeasure {
        self.by_slot.get(slot).copied().unwrap_or_default()
    }
}
