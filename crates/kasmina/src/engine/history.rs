//! Every seed a run has germinated, with how far it got: the record a run
//! summary and a cohort's run store need ("what grew, where, how big, and
//! did it stay"). Live seeds alone do not say it: a culled seed leaves its
//! slot. The history travels in the checkpoint, so a resumed run still
//! knows the seeds culled before it stopped.

use std::collections::BTreeMap;

use leyline::v1::SeedStage;
use serde::{Deserialize, Serialize};

use crate::slots::SeedSlots;

/// One seed over its life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedOutcome {
    /// Seed id.
    pub seed: String,
    /// Slot id.
    pub slot: String,
    /// Blueprint id.
    pub blueprint: String,
    /// Scalar parameters the seed added while it lived.
    pub parameters: u64,
    /// The furthest stage along GERMINATED → FOSSILIZED it reached
    /// (`SEED_STAGE_*`).
    pub furthest: String,
    /// The last stage it was seen in (`SEED_STAGE_*`; CULLED or later when
    /// it was culled).
    pub last: String,
    /// Forward MACs per sample of its module (what it costs every image in
    /// the stages where it runs, TRAINING to FOSSILIZED).
    #[serde(default)]
    pub forward_macs: u64,
    /// Training images the host saw while the seed was in each stage
    /// (`SEED_STAGE_*` → images): its timeline, and with `forward_macs` what
    /// it cost per stage.
    #[serde(default)]
    pub images_by_stage: BTreeMap<String, u64>,
    /// Validation accuracy points the seed added at its last counterfactual
    /// measurement (with the seed − with α forced to 0), if it had one.
    #[serde(default)]
    pub contribution: Option<f64>,
    /// Measured wall time of the seed's forward over the training steps it
    /// ran in, seconds (see `engine::timing`).
    #[serde(default)]
    pub forward_seconds: f64,
    /// The whole model's forward time over the same steps, seconds.
    #[serde(default)]
    pub model_forward_seconds: f64,
    /// Training steps in which the seed's forward was timed.
    #[serde(default)]
    pub timed_steps: u64,
}

impl SeedOutcome {
    /// Mean measured forward time of the seed per training step it ran in,
    /// milliseconds; none before it ran.
    pub fn forward_ms_per_step(&self) -> Option<f64> {
        (self.timed_steps > 0).then(|| self.forward_seconds * 1e3 / self.timed_steps as f64)
    }

    /// The seed's share of the model's forward time over the steps it ran
    /// in (0–1); none before it ran.
    pub fn forward_share(&self) -> Option<f64> {
        (self.timed_steps > 0 && self.model_forward_seconds > 0.0)
            .then(|| self.forward_seconds / self.model_forward_seconds)
    }

    /// Whether the seed is part of the host at the end (FOSSILIZED).
    pub fn fossilized(&self) -> bool {
        self.last == SeedStage::Fossilized.as_str_name()
    }

    /// Whether the seed was culled (or is on its way back to DORMANT).
    pub fn culled(&self) -> bool {
        matches!(
            SeedStage::from_str_name(&self.last),
            Some(
                SeedStage::Culled
                    | SeedStage::Embargoed
                    | SeedStage::Resetting
                    | SeedStage::Terminated
            )
        )
    }
}

/// Position along the growth path; 0 for stages off it.
fn rank(stage: SeedStage) -> u8 {
    match stage {
        SeedStage::Germinated => 1,
        SeedStage::Training => 2,
        SeedStage::Blending => 3,
        SeedStage::Shadowing => 4,
        SeedStage::Probationary => 5,
        SeedStage::Fossilized => 6,
        SeedStage::Unknown
        | SeedStage::Dormant
        | SeedStage::Culled
        | SeedStage::Embargoed
        | SeedStage::Resetting
        | SeedStage::Terminated => 0,
    }
}

/// Counts `images` training images for every seed the slots hold, at its
/// stage now, and returns the forward MACs per image the seeds add at this
/// step. Allocates only the first time a seed is seen in a stage.
pub(crate) fn count_images(history: &mut [SeedOutcome], slots: &SeedSlots, images: u64) -> u64 {
    let mut macs = 0;
    for slot in slots.slots() {
        let Some(seed) = slot.seed() else { continue };
        macs += seed.forward_macs();
        let Some(outcome) = history.iter_mut().find(|o| o.seed == seed.id()) else {
            continue;
        };
        let stage = seed.stage().as_str_name();
        match outcome.images_by_stage.get_mut(stage) {
            Some(n) => *n += images,
            None => {
                outcome.images_by_stage.insert(stage.to_string(), images);
            }
        }
    }
    macs
}

/// Records the counterfactual contribution of the seed in `slot_id`.
pub(crate) fn note_contribution(
    history: &mut [SeedOutcome],
    slots: &SeedSlots,
    slot_id: &str,
    points: f64,
) {
    let Some(seed) = slots.slot(slot_id).ok().and_then(|s| s.seed()) else {
        return;
    };
    if let Some(outcome) = history.iter_mut().find(|o| o.seed == seed.id()) {
        outcome.contribution = Some(points);
    }
}

/// Updates `history` with what the slots hold now.
pub(crate) fn note(history: &mut Vec<SeedOutcome>, slots: &SeedSlots) {
    for slot in slots.slots() {
        let Some(seed) = slot.seed() else { continue };
        let stage = seed.stage();
        let index = match history.iter().position(|o| o.seed == seed.id()) {
            Some(i) => i,
            None => {
                let parameters = seed
                    .parameters()
                    .iter()
                    .map(|p| p.var.elem_count() as u64)
                    .sum();
                history.push(SeedOutcome {
                    seed: seed.id().to_string(),
                    slot: slot.spec().id.clone(),
                    blueprint: seed.module().blueprint_id().to_string(),
                    parameters,
                    furthest: stage.as_str_name().to_string(),
                    last: stage.as_str_name().to_string(),
                    forward_macs: seed.module().forward_macs(),
                    images_by_stage: BTreeMap::new(),
                    contribution: None,
                    forward_seconds: 0.0,
                    model_forward_seconds: 0.0,
                    timed_steps: 0,
                });
                history.len() - 1
            }
        };
        // Called at every step: only a stage change writes (and allocates).
        let outcome = &mut history[index];
        if outcome.last == stage.as_str_name() {
            continue;
        }
        let furthest = SeedStage::from_str_name(&outcome.furthest).unwrap_or(SeedStage::Unknown);
        if rank(stage) > rank(furthest) {
            outcome.furthest = stage.as_str_name().to_string();
        }
        outcome.last = stage.as_str_name().to_string();
    }
}
