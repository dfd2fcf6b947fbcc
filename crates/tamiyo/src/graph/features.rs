//! Fixed-width feature rows of each node type, with their presence masks.
//! Which features are continuous (normalised) and which optional (masked,
//! counted in coverage) is declared per type.

use leyline::v1::{
    BlendMode, BlueprintTier, CatalogEntry, SeedStage, SeedState, SlotKind, SlotState,
    SystemStatePacket,
};

use super::memory::RunMemory;
use crate::observation::stage_of;

/// Width of the global node's features.
pub const GLOBAL_DIM: usize = 17;
/// Width of a slot node's features.
pub const SLOT_DIM: usize = 10;
/// Width of a seed node's features.
pub const SEED_DIM: usize = 21;
/// Width of a blueprint node's features.
pub const BLUEPRINT_DIM: usize = 8;
/// Width of every edge's features.
pub const EDGE_DIM: usize = 4;
/// The meaning of the features: bumped whenever any feature changes what it
/// measures or how it is scaled, even at the same widths, so that a policy
/// trained on the old meaning is refused (it is part of the schema hash).
pub const FEATURES_VERSION: u32 = 3;

/// One node's features before normalisation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    pub(crate) values: Vec<f32>,
    pub(crate) mask: Vec<f32>,
    pub(crate) optional: &'static [usize],
    pub(crate) continuous: &'static [usize],
}

impl Row {
    fn new(dim: usize, optional: &'static [usize], continuous: &'static [usize]) -> Self {
        Self {
            values: vec![0.0; dim],
            mask: vec![1.0; dim],
            optional,
            continuous,
        }
    }

    fn set(&mut self, i: usize, v: f64) {
        self.values[i] = v as f32;
    }

    fn maybe(&mut self, i: usize, v: Option<f64>) {
        match v {
            Some(v) if v.is_finite() => self.values[i] = v as f32,
            _ => {
                self.values[i] = 0.0;
                self.mask[i] = 0.0;
            }
        }
    }
}

/// Continuous and optional features of each type (indices into the row).
pub(crate) const GLOBAL_CONTINUOUS: &[usize] = &[0, 1, 2, 3, 5, 6, 7];
const GLOBAL_OPTIONAL: &[usize] = &[2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15];
pub(crate) const SLOT_CONTINUOUS: &[usize] = &[2, 3, 4, 5, 8, 9];
const SLOT_OPTIONAL: &[usize] = &[8, 9];
pub(crate) const SEED_CONTINUOUS: &[usize] = &[12, 13, 14, 16];
const SEED_OPTIONAL: &[usize] = &[16];
pub(crate) const BLUEPRINT_CONTINUOUS: &[usize] = &[];

/// Epoch, log step, training loss*, validation loss*, validation accuracy*,
/// step ms*, learning rate*, live seeds, training accuracy*, host
/// parameters*, host forward MACs*, share of the run left*, then from the
/// run's memory (`memory` has already seen `p`): relative validation-loss
/// fall over the last epoch* and over the one before*, generalisation gap*,
/// epochs since the newest seed was germinated* (/10), seeds tried so far
/// (/4) (* optional).
///
/// Features 8 on are raw (not normalised): they tell one host and one moment
/// of a run from another, which a per-run normaliser would flatten to 0 —
/// whether the host is short of capacity (training accuracy, the gap
/// `(validation − training loss) / training loss`) and how big it is,
/// whether a seed has time left to pay for itself, whether learning has
/// plateaued and what growth was already tried. Sizes are `ln(1 + x) / 10`,
/// so the reference hosts fall between 0.8 and 1.5.
pub(crate) fn global(p: &SystemStatePacket, memory: &RunMemory) -> Row {
    let mut r = Row::new(GLOBAL_DIM, GLOBAL_OPTIONAL, GLOBAL_CONTINUOUS);
    r.set(0, f64::from(p.current_epoch));
    r.set(1, (p.global_step as f64).ln_1p());
    r.maybe(2, p.training_loss);
    r.maybe(3, p.validation_loss);
    r.maybe(4, p.validation_accuracy);
    r.maybe(5, p.training_metrics.get("step_ms").copied());
    r.maybe(6, p.training_metrics.get("learning_rate").copied());
    let live = p
        .seed_states
        .iter()
        .filter(|s| stage_of(s.stage).is_live())
        .count();
    r.set(7, live as f64);
    let metric = |name: &str| p.training_metrics.get(name).copied();
    r.maybe(8, metric("train_accuracy"));
    r.maybe(9, metric("host_parameters").map(scaled_size));
    r.maybe(10, metric("host_forward_macs").map(scaled_size));
    r.maybe(
        11,
        metric("epochs_total")
            .filter(|&total| total > 0.0)
            .map(|total| ((total - f64::from(p.current_epoch)) / total).clamp(0.0, 1.0)),
    );
    r.maybe(12, memory.improvement(0));
    r.maybe(13, memory.improvement(1));
    r.maybe(
        14,
        p.training_loss
            .zip(p.validation_loss)
            .filter(|(train, _)| *train > 0.0)
            .map(|(train, validation)| ((validation - train) / train).clamp(-1.0, 4.0)),
    );
    r.maybe(
        15,
        p.seed_states
            .iter()
            .map(|s| s.age_epochs)
            .min()
            .map(|age| f64::from(age) / 10.0),
    );
    r.set(16, memory.seeds_seen() as f64 / 4.0);
    r
}

/// A size (parameters, MACs) as a feature: `ln(1 + x) / 10`.
pub(crate) fn scaled_size(x: f64) -> f64 {
    x.max(0.0).ln_1p() / 10.0
}

/// Kind (dense, conv), log channels, height, width, depth, occupied,
/// embargoed, log gradient norm*, log activation norm* (* optional).
pub(crate) fn slot(s: &SlotState) -> Row {
    let mut r = Row::new(SLOT_DIM, SLOT_OPTIONAL, SLOT_CONTINUOUS);
    let kind = SlotKind::try_from(s.kind).unwrap_or(SlotKind::Unspecified);
    r.set(0, f64::from(u8::from(kind == SlotKind::Dense)));
    r.set(1, f64::from(u8::from(kind == SlotKind::Conv2d)));
    let dim = |i: usize| s.feature_shape.get(i).copied().map_or(0.0, f64::from);
    r.set(2, dim(0).ln_1p());
    r.set(3, dim(1));
    r.set(4, dim(2));
    r.set(5, f64::from(s.layer_depth));
    let stage = stage_of(s.stage);
    r.set(6, f64::from(u8::from(!s.seed_id.is_empty())));
    r.set(7, f64::from(u8::from(stage == SeedStage::Embargoed)));
    r.maybe(8, s.gradient_norm.map(|g| (g + 1e-12).ln()));
    r.maybe(9, s.activation_norm.map(|a| (a + 1e-12).ln()));
    r
}

/// Stage one-hot (11), α, log age steps, age epochs, log gradient norm, risk,
/// contribution*, blend mode one-hot (4) (* optional).
pub(crate) fn seed(s: &SeedState) -> Row {
    let mut r = Row::new(SEED_DIM, SEED_OPTIONAL, SEED_CONTINUOUS);
    let stage = stage_of(s.stage) as i32;
    if (1..=11).contains(&stage) {
        r.set(stage as usize - 1, 1.0);
    }
    r.set(11, s.alpha.as_ref().map_or(0.0, |a| a.alpha));
    r.set(12, (s.age_steps as f64).ln_1p());
    r.set(13, f64::from(s.age_epochs));
    r.set(14, (s.gradient_norm + 1e-12).ln());
    r.set(15, s.risk_score);
    r.maybe(16, s.contribution);
    let mode = BlendMode::try_from(s.blend_mode).unwrap_or(BlendMode::Unspecified) as i32;
    if (1..=4).contains(&mode) {
        r.set(16 + mode as usize, 1.0);
    }
    r
}

/// Tier one-hot (safe, experimental, high-risk), risk, quarantined, approval
/// required, fits dense, fits conv.
pub(crate) fn blueprint(e: &CatalogEntry) -> Row {
    let mut r = Row::new(BLUEPRINT_DIM, &[], BLUEPRINT_CONTINUOUS);
    let Some(d) = &e.descriptor else { return r };
    let tier = BlueprintTier::try_from(d.tier).unwrap_or(BlueprintTier::Unspecified) as i32;
    if (1..=3).contains(&tier) {
        r.set(tier as usize - 1, 1.0);
    }
    r.set(3, d.risk);
    r.set(4, f64::from(u8::from(e.quarantined)));
    r.set(5, f64::from(u8::from(d.approval_required)));
    r.set(
        6,
        f64::from(u8::from(d.slot_kinds.contains(&(SlotKind::Dense as i32)))),
    );
    r.set(
        7,
        f64::from(u8::from(d.slot_kinds.contains(&(SlotKind::Conv2d as i32)))),
    );
    r
}

/// How far along the path to FOSSILIZED a stage is, in [0, 1].
pub(crate) fn stage_progress(stage: SeedStage) -> f32 {
    match stage {
        SeedStage::Germinated => 1.0 / 6.0,
        SeedStage::Training => 2.0 / 6.0,
        SeedStage::Blending => 3.0 / 6.0,
        SeedStage::Shadowing => 4.0 / 6.0,
        SeedStage::Probationary => 5.0 / 6.0,
        SeedStage::Fossilized => 1.0,
        SeedStage::Unknown
        | SeedStage::Dormant
        | SeedStage::Culled
        | SeedStage::Embargoed
        | SeedStage::Resetting
        | SeedStage::Terminated => 0.0,
    }
}
