//! Kasmina's part of the [`SystemStatePacket`](leyline::v1::SystemStatePacket):
//! one `SlotState` per slot of the host and one `SeedState` per seed, built
//! only from what the slots and the lifecycle hold (nothing zero-filled that
//! was not measured: a seed without a counterfactual has no contribution).

use std::collections::BTreeMap;

use leyline::v1::{AlphaState, SeedStage, SeedState, SlotState};

use super::Kasmina;

impl Kasmina {
    /// Every slot of the host, with its stage and seed id (empty when DORMANT).
    pub fn slot_states(&self) -> Vec<SlotState> {
        self.slots
            .slots()
            .map(|slot| {
                let spec = slot.spec();
                let measured = self.evidence.of(&spec.id);
                SlotState {
                    slot_id: spec.id.clone(),
                    kind: spec.kind as i32,
                    feature_shape: spec.feature_shape.iter().map(|&d| d as u32).collect(),
                    stage: slot.stage() as i32,
                    seed_id: slot.seed().map(|s| s.id().to_string()).unwrap_or_default(),
                    layer_depth: spec.layer_depth,
                    activation_norm: measured.activation_rms,
                    gradient_norm: measured.gradient_norm,
                }
            })
            .collect()
    }

    /// Every seed in a slot (any stage), as of `step` in `epoch`. The learning
    /// rate is the caller's to fill (the optimizer owns it).
    pub fn seed_states(&self, step: u64, epoch: u64) -> Vec<SeedState> {
        self.slots
            .slots()
            .filter_map(|slot| {
                let seed = slot.seed()?;
                let slot_id = &slot.spec().id;
                let evidence = self.lifecycle.evidence(slot_id);
                let (born_step, born_epoch) = self.lifecycle.born(slot_id).unwrap_or((step, epoch));
                let (blend_steps, ramp) = seed.ramp();
                let stage = seed.stage();
                let mut metrics = BTreeMap::from([
                    (
                        "parameter_count".to_string(),
                        seed.module().parameter_count() as f64,
                    ),
                    // What it costs each image now (0 where it does not run).
                    ("forward_macs".to_string(), seed.forward_macs() as f64),
                ]);
                // Measured (engine::timing): its forward time per step and
                // share of the model's forward, at this stage.
                if let Some(t) = self.timing.of(slot_id, seed.id(), stage) {
                    metrics.insert("forward_ms".into(), t.forward_ms);
                    metrics.insert("forward_share".into(), t.forward_share);
                }
                if let Some(e) = evidence {
                    metrics.insert("steps_in_stage".into(), e.steps_in_stage as f64);
                    metrics.insert("epochs_in_stage".into(), e.epochs_in_stage as f64);
                    metrics.insert("isolation_violations".into(), e.isolation_violations as f64);
                    if let Some(latest) = e.latest() {
                        metrics.insert("seed_loss".into(), latest.loss);
                    }
                }
                Some(SeedState {
                    seed_id: seed.id().to_string(),
                    slot_id: slot_id.clone(),
                    stage: stage as i32,
                    blueprint_id: seed.module().blueprint_id().to_string(),
                    gradient_norm: evidence
                        .and_then(|e| e.latest())
                        .map_or(0.0, |l| l.seed_grad_norm),
                    learning_rate: 0.0,
                    layer_depth: slot.spec().layer_depth,
                    age_epochs: epoch.saturating_sub(born_epoch) as u32,
                    age_steps: step.saturating_sub(born_step),
                    risk_score: urza::definition(seed.module().blueprint_id())
                        .map_or(1.0, |d| d.descriptor().risk),
                    alpha: Some(AlphaState {
                        alpha: seed.alpha(),
                        // The ramp is done at its last step; BLENDING may last longer.
                        steps: blend_steps.min(u64::from(ramp.steps())) as u32,
                        total_steps: ramp.steps(),
                        schedule: ramp.kind() as i32,
                    }),
                    blend_mode: seed.blend().mode() as i32,
                    blend_allowed: stage.blend_allowed(),
                    embargo_epochs_remaining: if stage == SeedStage::Embargoed {
                        slot.embargo_until_epoch().saturating_sub(epoch) as u32
                    } else {
                        0
                    },
                    contribution: evidence
                        .and_then(|e| e.counterfactual)
                        .map(|c| c.contribution()),
                    metrics,
                })
            })
            .collect()
    }
}
