//! [`SeedSlots`]: the [`SlotRunner`] a grown host runs through. Each slot holds
//! at most one seed; a slot without one (or with a dormant one) is identity with
//! no tensor operation.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use candle_core::Tensor;
use leyline::v1::SeedStage;

use crate::error::{Error, Result};
use crate::host::{NamedParameter, SlotRunner, SlotSpec};
use crate::isolation::Probes;
use crate::seed::Seed;

/// One slot: its spec, its seed, its embargo.
#[derive(Debug, Clone)]
pub struct Slot {
    spec: SlotSpec,
    seed: Option<Seed>,
    /// Epoch before which the slot may not germinate again.
    embargo_until_epoch: u64,
    /// Wall time the seed's forward (module and blend) took since
    /// [`SeedSlots::reset_forward_times`]: measured in place, so no
    /// allocation per step.
    forward_time: Duration,
    /// Whether the next forwards route this slot through isolation probes.
    probe: bool,
}

impl Slot {
    /// The slot's spec.
    pub fn spec(&self) -> &SlotSpec {
        &self.spec
    }

    /// Its seed, if any.
    pub fn seed(&self) -> Option<&Seed> {
        self.seed.as_ref()
    }

    /// The stage of the slot: its seed's, or DORMANT.
    pub fn stage(&self) -> SeedStage {
        self.seed.as_ref().map_or(SeedStage::Dormant, Seed::stage)
    }

    /// First epoch at which the slot may germinate again.
    pub fn embargo_until_epoch(&self) -> u64 {
        self.embargo_until_epoch
    }
}

/// Every slot of a host, by id.
#[derive(Debug, Clone, Default)]
pub struct SeedSlots {
    slots: BTreeMap<String, Slot>,
    margins: Option<Tensor>,
    counterfactual: bool,
    /// Holds every seed's output at the host's (the off-switch control arm).
    off_switch: bool,
    /// Forces α = 0 in this slot only (a seed's own counterfactual).
    counterfactual_slot: Option<String>,
    probes: BTreeMap<String, Probes>,
    /// Whether this forward taps every slot (slot evidence).
    tap: bool,
    /// Per tapped slot: the activation entering it, and a zero variable
    /// added to its output whose gradient is the loss gradient arriving at
    /// the slot.
    taps: BTreeMap<String, (Tensor, candle_core::Var)>,
}

impl SeedSlots {
    /// One empty slot per spec.
    pub fn new(specs: &[SlotSpec]) -> Self {
        Self {
            slots: specs
                .iter()
                .map(|s| {
                    (
                        s.id.clone(),
                        Slot {
                            spec: s.clone(),
                            seed: None,
                            embargo_until_epoch: 0,
                            forward_time: Duration::ZERO,
                            probe: false,
                        },
                    )
                })
                .collect(),
            margins: None,
            counterfactual: false,
            off_switch: false,
            counterfactual_slot: None,
            probes: BTreeMap::new(),
            tap: false,
            taps: BTreeMap::new(),
        }
    }

    /// A slot by id.
    pub fn slot(&self, id: &str) -> Result<&Slot> {
        self.slots.get(id).ok_or_else(|| Error::UnknownSlot {
            slot: id.to_string(),
        })
    }

    pub(crate) fn slot_mut(&mut self, id: &str) -> Result<&mut Slot> {
        self.slots.get_mut(id).ok_or_else(|| Error::UnknownSlot {
            slot: id.to_string(),
        })
    }

    /// Every slot, ordered by id.
    pub fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.slots.values()
    }

    /// Places a GERMINATED seed in an empty slot whose embargo is over. The
    /// seed's module must fit the slot's shape.
    pub fn place(&mut self, seed: Seed, epoch: u64) -> Result<()> {
        let slot = self.slot_mut(seed.slot_id())?;
        let busy = |reason: String| Error::SlotBusy {
            slot: slot.spec.id.clone(),
            reason,
        };
        if let Some(existing) = &slot.seed {
            return Err(busy(format!(
                "holds seed {} ({})",
                existing.id(),
                existing.stage().as_str_name()
            )));
        }
        if epoch < slot.embargo_until_epoch {
            return Err(busy(format!(
                "embargoed until epoch {} (now {epoch})",
                slot.embargo_until_epoch
            )));
        }
        if seed.module().slot().shape() != slot.spec.feature_shape.as_slice()
            || seed.module().slot().kind() != slot.spec.kind
        {
            return Err(busy(format!(
                "seed built for {} but the slot is {:?} {:?}",
                seed.module().slot(),
                slot.spec.kind,
                slot.spec.feature_shape
            )));
        }
        slot.seed = Some(seed);
        Ok(())
    }

    /// Puts a restored seed (any stage) into its empty slot; the module must
    /// fit the slot.
    pub(crate) fn restore(&mut self, seed: Seed) -> Result<()> {
        let slot = self.slot_mut(seed.slot_id())?;
        if slot.seed.is_some()
            || seed.module().slot().shape() != slot.spec.feature_shape.as_slice()
            || seed.module().slot().kind() != slot.spec.kind
        {
            return Err(Error::SlotBusy {
                slot: slot.spec.id.clone(),
                reason: format!("cannot restore seed {} here", seed.id()),
            });
        }
        slot.seed = Some(seed);
        Ok(())
    }

    /// Removes the seed of a slot (after RESETTING), returning it.
    pub(crate) fn take(&mut self, slot_id: &str) -> Result<Option<Seed>> {
        Ok(self.slot_mut(slot_id)?.seed.take())
    }

    pub(crate) fn set_embargo(&mut self, slot_id: &str, until_epoch: u64) -> Result<()> {
        self.slot_mut(slot_id)?.embargo_until_epoch = until_epoch;
        Ok(())
    }

    pub(crate) fn seed_mut(&mut self, slot_id: &str) -> Result<&mut Seed> {
        let slot = self.slot_mut(slot_id)?;
        let id = slot.spec.id.clone();
        slot.seed.as_mut().ok_or(Error::SlotBusy {
            slot: id,
            reason: "holds no seed".into(),
        })
    }

    /// The logit margins CONFIDENCE blending gates on for the next forward
    /// (`[N]`); cleared by [`SeedSlots::clear_margins`].
    pub fn set_margins(&mut self, margins: Tensor) {
        self.margins = Some(margins);
    }

    /// Forgets the margins.
    pub fn clear_margins(&mut self) {
        self.margins = None;
    }

    /// The off-switch control: every live seed trains as in TRAINING (the
    /// incubator: its gradient intact) in every stage, but its output never
    /// reaches the host — the forward value is the host's activation exactly,
    /// whatever α says. A cohort's `off-switch` arm runs this way to show
    /// whether a grown arm's gain is the seeds' or only their extra
    /// optimizer groups'.
    pub fn set_off_switch(&mut self, on: bool) {
        self.off_switch = on;
    }

    /// Whether the off-switch is on.
    pub fn off_switch(&self) -> bool {
        self.off_switch
    }

    /// Forces α = 0 in every slot (counterfactual evaluation) until turned off.
    pub fn set_counterfactual(&mut self, on: bool) {
        self.counterfactual = on;
    }

    /// Forces α = 0 in `slot_id` only (that seed's own counterfactual: every
    /// other seed keeps its α), or in no slot with `None`.
    pub fn set_counterfactual_slot(&mut self, slot_id: Option<&str>) {
        self.counterfactual_slot = slot_id.map(str::to_string);
    }

    /// Routes every TRAINING slot through isolation probes on the following
    /// forwards (the isolation monitor's), or none; collect them with
    /// `take_probes` after the backward pass.
    pub fn set_isolation_probes(&mut self, on: bool) {
        for slot in self.slots.values_mut() {
            slot.probe = on;
        }
        if !on {
            self.probes.clear();
        }
    }

    /// Decides for every slot, from its spec and stage, whether the
    /// following forwards route it through isolation probes (only a
    /// TRAINING seed's slot is probed).
    pub(crate) fn choose_probes(&mut self, mut probe: impl FnMut(&SlotSpec, SeedStage) -> bool) {
        for slot in self.slots.values_mut() {
            let stage = slot.seed.as_ref().map_or(SeedStage::Dormant, Seed::stage);
            slot.probe = probe(&slot.spec, stage);
        }
    }

    /// Taps every slot on the following forwards (until turned off): the
    /// activation entering it is kept and its output gets `+ 0` from a zero
    /// variable, so that after the backward pass the loss gradient arriving
    /// at the slot can be read (candle keeps gradients of variables only).
    /// `y + 0` is exact, so a tapped step trains exactly like any other.
    pub(crate) fn set_taps(&mut self, on: bool) {
        self.tap = on;
        if !on {
            self.taps.clear();
        }
    }

    /// The taps of the last tapped forward, by slot id.
    pub(crate) fn take_taps(&mut self) -> BTreeMap<String, (Tensor, candle_core::Var)> {
        std::mem::take(&mut self.taps)
    }

    /// The probes of the last probed forward, by slot id.
    pub(crate) fn take_probes(&mut self) -> BTreeMap<String, Probes> {
        std::mem::take(&mut self.probes)
    }

    /// Forgets the forward times measured so far (before a training step's
    /// forward, so that validation forwards are not counted).
    pub(crate) fn reset_forward_times(&mut self) {
        for slot in self.slots.values_mut() {
            slot.forward_time = Duration::ZERO;
        }
    }

    /// Calls `f(slot id, seed, forward time)` for every occupied slot with
    /// the time its seed's forward took since the last reset.
    pub(crate) fn forward_times(&self, mut f: impl FnMut(&str, &Seed, Duration)) {
        for slot in self.slots.values() {
            if let Some(seed) = &slot.seed {
                f(&slot.spec.id, seed, slot.forward_time);
            }
        }
    }

    /// Advances every blending seed's α ramp (call after each optimizer step).
    pub fn step(&mut self) {
        for slot in self.slots.values_mut() {
            if let Some(seed) = slot.seed.as_mut() {
                seed.step();
            }
        }
    }

    /// Parameters of every seed that trains at its current stage.
    pub fn trainable_parameters(&self) -> Vec<NamedParameter> {
        self.slots
            .values()
            .filter_map(|s| s.seed.as_ref())
            .filter(|s| s.trains())
            .flat_map(Seed::parameters)
            .collect()
    }
}

impl SlotRunner for SeedSlots {
    fn run(&mut self, spec: &SlotSpec, h: Tensor) -> Result<Tensor> {
        if !self.tap {
            return self.run_untapped(spec, h);
        }
        let y = self.run_untapped(spec, h.clone())?;
        let at_y = candle_core::Var::zeros(y.shape(), y.dtype(), y.device())?;
        let tapped = (&y + at_y.as_tensor())?;
        self.taps.insert(spec.id.clone(), (h, at_y));
        Ok(tapped)
    }
}

impl SeedSlots {
    fn run_untapped(&mut self, spec: &SlotSpec, h: Tensor) -> Result<Tensor> {
        spec.check(&h)?;
        let Some(slot) = self.slots.get(&spec.id) else {
            return Err(Error::UnknownSlot {
                slot: spec.id.clone(),
            });
        };
        let Some(seed) = &slot.seed else {
            return Ok(h);
        };
        // The seed's own span in step profiles (`forward` › `seed`), and its
        // measured forward time: the module, the blend or incubator
        // arithmetic and, on checked steps, the isolation probes.
        let _span =
            tracing::info_span!("seed", slot = %spec.id, stage = seed.stage().as_str_name())
                .entered();
        let started = Instant::now();
        let counterfactual =
            self.counterfactual || self.counterfactual_slot.as_deref() == Some(spec.id.as_str());
        let y = if slot.probe && !counterfactual && seed.stage() == SeedStage::Training {
            let (at_h, probed_h) = Probes::enter(&h)?;
            let y = seed.forward(probed_h.clone(), self.margins.as_ref(), false)?;
            let (probes, probed_y) = Probes::leave(at_h, probed_h, y)?;
            self.probes.insert(spec.id.clone(), probes);
            probed_y
        } else if self.off_switch {
            seed.forward_held_off(h, counterfactual)?
        } else {
            seed.forward(h, self.margins.as_ref(), counterfactual)?
        };
        if let Some(slot) = self.slots.get_mut(&spec.id) {
            slot.forward_time += started.elapsed();
        }
        Ok(y)
    }
}
