//! Kasmina's durable state: what a checkpoint records so that a resumed run
//! continues with the same seeds — each live seed's identity, blueprint and
//! parameters, stage, blend and α ramp position, age, mesh layers and the
//! evidence counters of its stage, plus every slot's embargo. The weights
//! travel with the model tensors (`seed/<id>/<name>`); restoring rebuilds each
//! module through the [`KernelSource`](super::KernelSource) and then puts the
//! saved weights in, checking every name and shape. Seeds that were culled
//! (CULLED, EMBARGOED, RESETTING) are not restored; their slots keep their
//! embargo.

use std::collections::BTreeMap;

use candle_core::Tensor;
use leyline::v1::{
    AlphaSchedule, AlphaScheduleKind, BlendConfig, BlendMode, ConfidenceGate, SeedStage,
};
use serde::{Deserialize, Serialize};

use super::Kasmina;
use crate::alpha::AlphaRamp;
use crate::blend::Blend;
use crate::error::{Error, Result};
use crate::gates::Counterfactual;
use crate::seed::Seed;

/// One live seed, as a checkpoint records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedRecord {
    /// Slot id.
    pub slot_id: String,
    /// Seed id.
    pub seed_id: String,
    /// Artifact its initial weights came from.
    pub artifact_ref: String,
    /// Blueprint id.
    pub blueprint_id: String,
    /// Blueprint parameters.
    pub parameters: BTreeMap<String, f64>,
    /// Stage (`SEED_STAGE_*`).
    pub stage: String,
    /// Blend mode (`BLEND_MODE_*`), per-channel α, confidence gate
    /// `[k, tau, alpha_lo, alpha_hi]`.
    pub blend_mode: String,
    /// CHANNEL's α vector.
    pub channel_alpha: Vec<f32>,
    /// CONFIDENCE's gate.
    pub confidence: Option<[f32; 4]>,
    /// α ramp kind (`ALPHA_SCHEDULE_KIND_*`), steps and sigmoid temperature.
    pub ramp_kind: String,
    /// Steps of the ramp.
    pub ramp_steps: u32,
    /// Sigmoid temperature (0 for the others).
    pub ramp_temperature: f32,
    /// Steps taken while BLENDING.
    pub blend_steps: u64,
    /// Host layers the seed needs.
    pub mesh_layers: Vec<String>,
    /// Step and epoch of germination.
    pub born: (u64, u64),
    /// Steps and epoch ends in the current stage.
    pub in_stage: (u64, u64),
    /// The stage's counterfactual measurement (with, without), if any.
    pub counterfactual: Option<(f64, f64)>,
    /// Isolation violations seen in the stage.
    pub isolation_violations: u64,
    /// G2's baseline: mean step time before germination, milliseconds.
    #[serde(default)]
    pub baseline_ms: Option<f64>,
}

/// Everything Kasmina needs to continue a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KasminaState {
    /// The live seeds (GERMINATED through FOSSILIZED).
    pub seeds: Vec<SeedRecord>,
    /// Each slot's embargo: first epoch it may germinate again.
    pub embargoes: BTreeMap<String, u64>,
    /// Every seed germinated so far, with how far it got (checkpoints
    /// written before the history existed have none).
    #[serde(default)]
    pub history: Vec<super::SeedOutcome>,
}

impl Kasmina {
    /// The state a checkpoint records.
    pub fn export_state(&self) -> KasminaState {
        let mut state = KasminaState {
            history: self.history.clone(),
            ..KasminaState::default()
        };
        for slot in self.slots.slots() {
            let id = &slot.spec().id;
            if slot.embargo_until_epoch() > 0 {
                state
                    .embargoes
                    .insert(id.clone(), slot.embargo_until_epoch());
            }
            let Some(seed) = slot.seed() else { continue };
            if !seed.stage().is_live() {
                continue;
            }
            let blend = seed.blend().to_wire();
            let (blend_steps, ramp) = seed.ramp();
            let schedule = ramp.to_wire();
            let evidence = self.lifecycle.evidence(id);
            state.seeds.push(SeedRecord {
                slot_id: id.clone(),
                seed_id: seed.id().to_string(),
                artifact_ref: seed.artifact_ref().to_string(),
                blueprint_id: seed.module().blueprint_id().to_string(),
                parameters: seed.module().parameters().clone(),
                stage: seed.stage().as_str_name().to_string(),
                blend_mode: BlendMode::try_from(blend.mode)
                    .unwrap_or(BlendMode::Unspecified)
                    .as_str_name()
                    .to_string(),
                channel_alpha: blend.channel_alpha,
                confidence: blend
                    .confidence
                    .map(|g| [g.k, g.tau, g.alpha_lo, g.alpha_hi]),
                ramp_kind: ramp.kind().as_str_name().to_string(),
                ramp_steps: schedule.steps,
                ramp_temperature: schedule.temperature,
                blend_steps,
                mesh_layers: seed.mesh_layers().to_vec(),
                born: self.lifecycle.born(id).unwrap_or((0, 0)),
                in_stage: evidence.map_or((0, 0), |e| (e.steps_in_stage, e.epochs_in_stage)),
                counterfactual: evidence
                    .and_then(|e| e.counterfactual)
                    .map(|c| (c.with_seed, c.without_seed)),
                isolation_violations: evidence.map_or(0, |e| e.isolation_violations),
                baseline_ms: self.lifecycle.baseline_ms(id),
            });
        }
        state
    }

    /// Restores `state` into this (fresh) Kasmina: each seed rebuilt from its
    /// blueprint, its weights taken from `weights` (`seed/<id>/<name>`; every
    /// parameter of a seed that trains must be there with its shape), its
    /// stage, blend, ramp, age and stage evidence put back; embargoes set.
    /// Any mismatch is an error and nothing is half-restored into a slot.
    pub fn restore_state(
        &mut self,
        state: &KasminaState,
        weights: &BTreeMap<String, Tensor>,
    ) -> Result<()> {
        for (slot_id, until) in &state.embargoes {
            self.slots.set_embargo(slot_id, *until)?;
        }
        self.history = state.history.clone();
        for record in &state.seeds {
            let bad = |reason: String| Error::Seed {
                seed: record.seed_id.clone(),
                reason: format!("cannot restore: {reason}"),
            };
            let stage = SeedStage::from_str_name(&record.stage)
                .filter(|s| s.is_live())
                .ok_or_else(|| bad(format!("stage {:?}", record.stage)))?;
            let spec = self.slots.slot(&record.slot_id)?.spec().clone();
            let slot = urza::SlotShape::new(spec.kind, spec.feature_shape.clone())
                .map_err(|e| bad(e.to_string()))?;
            let blend = Blend::from_wire(
                &BlendConfig {
                    mode: BlendMode::from_str_name(&record.blend_mode)
                        .ok_or_else(|| bad(format!("blend mode {:?}", record.blend_mode)))?
                        as i32,
                    channel_alpha: record.channel_alpha.clone(),
                    confidence: record.confidence.map(|[k, tau, alpha_lo, alpha_hi]| {
                        ConfidenceGate {
                            k,
                            tau,
                            alpha_lo,
                            alpha_hi,
                        }
                    }),
                },
                spec.feature_shape[0],
            )?;
            let ramp = AlphaRamp::from_wire(&AlphaSchedule {
                kind: AlphaScheduleKind::from_str_name(&record.ramp_kind)
                    .ok_or_else(|| bad(format!("ramp {:?}", record.ramp_kind)))?
                    as i32,
                steps: record.ramp_steps,
                temperature: record.ramp_temperature,
            })?;
            // A seed that does not train yet (GERMINATED) has no saved
            // weights: it is rebuilt with the initial weights it was
            // germinated with, or the resumed run would differ.
            let init_seed = self.init_seed(&record.seed_id);
            let (_, module) = self
                .source
                .load(&record.blueprint_id, &record.parameters, &slot, init_seed)
                .map_err(|e| bad(format!("loading {}: {e}", record.blueprint_id)))?;
            let mut seed = Seed::new(
                &record.seed_id,
                &record.slot_id,
                &record.artifact_ref,
                module,
                blend,
                ramp,
            )
            .with_mesh_layers(record.mesh_layers.clone());
            seed.restore_position(stage, record.blend_steps);
            if seed.trains() {
                for p in seed.parameters() {
                    let saved = weights
                        .get(&p.name)
                        .ok_or_else(|| bad(format!("no weights for {}", p.name)))?;
                    if saved.dims() != p.var.dims() {
                        return Err(bad(format!(
                            "{} has shape {:?}, the module {:?}",
                            p.name,
                            saved.dims(),
                            p.var.dims()
                        )));
                    }
                    esper_ops::device::ensure_on(saved, self.device, || {
                        format!("the saved weights of {}", p.name)
                    })?;
                    p.var.set(&saved.to_dtype(p.var.dtype())?)?;
                }
            }
            self.slots.restore(seed)?;
            self.lifecycle.restore(
                &record.slot_id,
                record.born,
                record.in_stage,
                record
                    .counterfactual
                    .map(|(with_seed, without_seed)| Counterfactual {
                        with_seed,
                        without_seed,
                    }),
                record.isolation_violations,
                record.baseline_ms,
            );
        }
        self.sync_registry();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    /// Checkpoint manifests are JSON: every `f64` of the state (step-time
    /// baselines, ramp temperatures) must come back bit for bit. 9.830050199999999
    /// came back as 9.8300502 with serde_json's default float parser, and a
    /// resumed run's state differed from the saved one.
    #[test]
    fn floats_survive_the_json_round_trip_bit_for_bit() {
        for x in [
            9.830050199999999f64,
            0.1 + 0.2,
            1.0 / 3.0,
            2.2250738585072014e-308,
        ] {
            let back: f64 = serde_json::from_str(&serde_json::to_string(&x).unwrap()).unwrap();
            assert_eq!(back.to_bits(), x.to_bits(), "{x:?} came back as {back:?}");
        }
    }
}
