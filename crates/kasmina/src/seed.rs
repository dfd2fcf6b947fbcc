//! One seed: a blueprint module at a slot, its stage, blend and α ramp, and its
//! forward by stage.
//!
//! | stage | slot output |
//! |---|---|
//! | DORMANT, GERMINATED, CULLED, EMBARGOED, RESETTING, TERMINATED | `h` (the module does not run) |
//! | TRAINING | `h + (s − s.detach())` (incubator) |
//! | BLENDING | `blend(h, s, ramp(α steps))` |
//! | SHADOWING, PROBATIONARY, FOSSILIZED | `blend(h, s, 1)` |
//!
//! The seed's input is always `h.detach()`: no seed gradient reaches the host.
//! In counterfactual mode (α forced to 0 for one evaluation) the seed does not
//! run and the slot returns `h`.

use candle_core::Tensor;
use leyline::v1::SeedStage;
use urza::BlueprintModule;

use crate::alpha::AlphaRamp;
use crate::blend::{Blend, incubate};
use crate::error::{Error, Result};
use crate::host::NamedParameter;

/// A seed and its lifecycle position.
#[derive(Debug, Clone)]
pub struct Seed {
    id: String,
    slot_id: String,
    artifact_ref: String,
    module: BlueprintModule,
    stage: SeedStage,
    blend: Blend,
    ramp: AlphaRamp,
    /// Optimizer steps taken since BLENDING began.
    blend_steps: u64,
    /// Host layers (slot ids) the seed's interface needs; checked by G3.
    mesh_layers: Vec<String>,
}

impl Seed {
    /// A germinated seed (stage GERMINATED) built from `artifact_ref`.
    pub fn new(
        id: impl Into<String>,
        slot_id: impl Into<String>,
        artifact_ref: impl Into<String>,
        module: BlueprintModule,
        blend: Blend,
        ramp: AlphaRamp,
    ) -> Self {
        Self {
            id: id.into(),
            slot_id: slot_id.into(),
            artifact_ref: artifact_ref.into(),
            module,
            stage: SeedStage::Germinated,
            blend,
            ramp,
            blend_steps: 0,
            mesh_layers: Vec::new(),
        }
    }

    /// The host layers (slot ids) the seed's interface needs.
    pub fn with_mesh_layers(mut self, layers: Vec<String>) -> Self {
        self.mesh_layers = layers;
        self
    }

    /// The host layers the seed needs.
    pub fn mesh_layers(&self) -> &[String] {
        &self.mesh_layers
    }

    /// The seed id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The slot it occupies.
    pub fn slot_id(&self) -> &str {
        &self.slot_id
    }

    /// The artifact its initial weights came from.
    pub fn artifact_ref(&self) -> &str {
        &self.artifact_ref
    }

    /// Its module.
    pub fn module(&self) -> &BlueprintModule {
        &self.module
    }

    /// Its stage.
    pub fn stage(&self) -> SeedStage {
        self.stage
    }

    pub(crate) fn set_stage(&mut self, stage: SeedStage) {
        if stage == SeedStage::Blending && self.stage != SeedStage::Blending {
            self.blend_steps = 0;
        }
        self.stage = stage;
    }

    /// Puts a restored seed back at its recorded stage and ramp position.
    pub(crate) fn restore_position(&mut self, stage: SeedStage, blend_steps: u64) {
        self.stage = stage;
        self.blend_steps = blend_steps;
    }

    pub(crate) fn set_blend(&mut self, blend: Blend) {
        self.blend = blend;
    }

    /// Its blend mode.
    pub fn blend(&self) -> &Blend {
        &self.blend
    }

    /// The α the forward uses now (0 before BLENDING, the ramp during it, 1 after).
    pub fn alpha(&self) -> f64 {
        match self.stage {
            SeedStage::Blending => self.ramp.alpha(self.blend_steps),
            SeedStage::Shadowing | SeedStage::Probationary | SeedStage::Fossilized => 1.0,
            SeedStage::Unknown
            | SeedStage::Dormant
            | SeedStage::Germinated
            | SeedStage::Training
            | SeedStage::Culled
            | SeedStage::Embargoed
            | SeedStage::Resetting
            | SeedStage::Terminated => 0.0,
        }
    }

    /// Advances the α ramp by one optimizer step (only while BLENDING).
    pub fn step(&mut self) {
        if self.stage == SeedStage::Blending {
            self.blend_steps += 1;
        }
    }

    /// Optimizer steps taken while BLENDING, and the ramp.
    pub fn ramp(&self) -> (u64, AlphaRamp) {
        (self.blend_steps, self.ramp)
    }

    /// Whether the ramp has reached 1.
    pub fn ramp_complete(&self) -> bool {
        self.blend_steps >= u64::from(self.ramp.steps())
    }

    /// Forward MACs per sample the seed costs at its stage: its module's in
    /// every stage where the module runs (TRAINING to FOSSILIZED, also under
    /// the off-switch), 0 where the slot passes `h` through.
    pub fn forward_macs(&self) -> u64 {
        if self.trains() {
            self.module.forward_macs()
        } else {
            0
        }
    }

    /// Whether the seed's parameters train at this stage.
    pub fn trains(&self) -> bool {
        matches!(
            self.stage,
            SeedStage::Training
                | SeedStage::Blending
                | SeedStage::Shadowing
                | SeedStage::Probationary
                | SeedStage::Fossilized
        )
    }

    /// The seed's parameters, named `seed/<seed id>/<parameter>`.
    pub fn parameters(&self) -> Vec<NamedParameter> {
        self.module
            .named_vars()
            .iter()
            .map(|(name, var)| NamedParameter {
                name: crate::names::seed_parameter(&self.id, name),
                var: var.clone(),
            })
            .collect()
    }

    /// The slot output under the off-switch: in every live stage the seed
    /// runs as in TRAINING (the forward value is `h` exactly, the seed's
    /// gradient intact), whatever its α.
    pub fn forward_held_off(&self, h: Tensor, counterfactual: bool) -> Result<Tensor> {
        match self.stage {
            SeedStage::Training
            | SeedStage::Blending
            | SeedStage::Shadowing
            | SeedStage::Probationary
            | SeedStage::Fossilized => {
                self.forward_staged(h, SeedStage::Training, None, counterfactual)
            }
            SeedStage::Dormant
            | SeedStage::Germinated
            | SeedStage::Culled
            | SeedStage::Embargoed
            | SeedStage::Resetting
            | SeedStage::Terminated
            | SeedStage::Unknown => self.forward(h, None, counterfactual),
        }
    }

    /// The slot output for host activation `h`. `margins` are the batch's
    /// logit margins (CONFIDENCE only); `counterfactual` forces α = 0.
    pub fn forward(
        &self,
        h: Tensor,
        margins: Option<&Tensor>,
        counterfactual: bool,
    ) -> Result<Tensor> {
        self.forward_staged(h, self.stage, margins, counterfactual)
    }

    fn forward_staged(
        &self,
        h: Tensor,
        stage: SeedStage,
        margins: Option<&Tensor>,
        counterfactual: bool,
    ) -> Result<Tensor> {
        let run = |h: &Tensor| -> Result<Tensor> {
            self.module.forward(&h.detach()).map_err(|e| Error::Seed {
                seed: self.id.clone(),
                reason: e.to_string(),
            })
        };
        match stage {
            SeedStage::Dormant
            | SeedStage::Germinated
            | SeedStage::Culled
            | SeedStage::Embargoed
            | SeedStage::Resetting
            | SeedStage::Terminated => Ok(h),
            SeedStage::Unknown => Err(Error::Seed {
                seed: self.id.clone(),
                reason: "stage is UNKNOWN (uninitialised)".into(),
            }),
            SeedStage::Training => {
                if counterfactual {
                    return Ok(h);
                }
                let s = run(&h)?;
                incubate(&h, &s)
            }
            SeedStage::Blending
            | SeedStage::Shadowing
            | SeedStage::Probationary
            | SeedStage::Fossilized => {
                if counterfactual {
                    return Ok(h);
                }
                let s = run(&h)?;
                self.blend.apply(&h, &s, self.alpha(), margins)
            }
        }
    }
}
