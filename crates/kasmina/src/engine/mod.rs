//! [`Kasmina`]: slots, lifecycle, parameter registry and command intake of one
//! host, driven from the training thread at fences. Seed modules come from a
//! [`KernelSource`] — strictly: a failed load rejects the command, there is no
//! fallback kernel.

use std::collections::BTreeSet;
use std::sync::Arc;

use candle_core::{Device, DeviceLocation};
use leyline::v1::{
    AdaptationCommand, CommandSeedOperation, SeedOperation, SeedStage, adaptation_command::Payload,
};
use urza::{BlueprintModule, Parameters};

use crate::alpha::AlphaRamp;
use crate::blend::Blend;
use crate::gates::GateConfig;
use crate::host::SlotSpec;
use crate::intake::{CommandIntake, Failure, Rejection};
use crate::isolation::{IsolationConfig, IsolationMonitor};
use crate::lifecycle::{Lifecycle, Progress, next_stage};
use crate::registry::{Owner, ParamRegistry};
use crate::seed::Seed;
use crate::slots::SeedSlots;

/// Where seed modules come from.
pub trait KernelSource: Send {
    /// The module of `blueprint_id` for `slot` with `params` (defaults when
    /// empty), its initial weights drawn from `init_seed` (not the cached
    /// artifact's, so a run repeats by its seed); returns the artifact
    /// reference with it.
    fn load(
        &mut self,
        blueprint_id: &str,
        params: &Parameters,
        slot: &urza::SlotShape,
        init_seed: u64,
    ) -> urza::Result<(String, BlueprintModule)>;
}

/// Loads from a local Urza library: find or forge the artifact, fetch it
/// (SHA-256 verified), verify its module (guard digest checked) and build it
/// on `device` with weights from `init_seed`.
#[derive(Debug, Clone)]
pub struct LibrarySource {
    library: Arc<urza::Library>,
    device: Device,
}

impl LibrarySource {
    /// Loads from `library` onto `device`.
    pub fn new(library: Arc<urza::Library>, device: Device) -> Self {
        Self { library, device }
    }
}

impl KernelSource for LibrarySource {
    fn load(
        &mut self,
        blueprint_id: &str,
        params: &Parameters,
        slot: &urza::SlotShape,
        init_seed: u64,
    ) -> urza::Result<(String, BlueprintModule)> {
        let record = self
            .library
            .ensure_artifact(blueprint_id, slot, params, init_seed)?;
        let module = self
            .library
            .fetch(&record.artifact_ref)?
            .instantiate_with_init(&self.device, init_seed)?;
        Ok((record.artifact_ref, module))
    }
}

/// What happened to one command at a fence.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandOutcome {
    /// The command.
    pub command_id: String,
    /// What it did, or why it was refused.
    pub result: Result<String, Rejection>,
}

/// Kasmina for one host.
pub struct Kasmina {
    slots: SeedSlots,
    lifecycle: Lifecycle,
    intake: CommandIntake,
    registry: ParamRegistry,
    registered_seeds: BTreeSet<String>,
    source: Box<dyn KernelSource>,
    run_seed: u64,
    step: StepState,
    history: Vec<SeedOutcome>,
    evidence: evidence::SlotEvidence,
    timing: timing::SeedTiming,
    /// The host's forward MACs per image, for the seeds' counted budget.
    host_macs: Option<u64>,
    /// Where the model lives: a seed module elsewhere is refused at
    /// germination ([`Failure::Device`]).
    device: DeviceLocation,
}

impl std::fmt::Debug for Kasmina {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kasmina")
            .field("slots", &self.slots)
            .field("registered_seeds", &self.registered_seeds)
            .finish_non_exhaustive()
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// FNV-1a, for a per-command weight seed that does not depend on the process.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl Kasmina {
    /// The seed of a germinated module's initial weights: the run seed and
    /// the seed's id, so that a rebuilt module (a resumed run) starts from the
    /// same weights as the germinated one.
    fn init_seed(&self, seed_id: &str) -> u64 {
        self.run_seed ^ fnv(seed_id)
    }

    /// The host's forward MACs per image (the trainer sets it when it
    /// attaches Kasmina): a germination whose module costs more than
    /// `max_seed_mac_ratio` × this is refused. `None` leaves it unjudged.
    pub fn set_host_forward_macs(&mut self, macs: Option<u64>) {
        self.host_macs = macs;
    }

    /// Kasmina for a host with `slots`, its model on the CPU unless
    /// [`Kasmina::with_device`] says otherwise.
    pub fn new(
        slots: &[SlotSpec],
        gates: GateConfig,
        intake: CommandIntake,
        source: Box<dyn KernelSource>,
        run_seed: u64,
    ) -> Self {
        Self {
            slots: SeedSlots::new(slots),
            lifecycle: Lifecycle::new(gates),
            intake,
            registry: ParamRegistry::new(),
            registered_seeds: BTreeSet::new(),
            source,
            run_seed,
            step: StepState::new(IsolationMonitor::new(IsolationConfig::default())),
            history: Vec::new(),
            evidence: evidence::SlotEvidence::new(10),
            timing: timing::SeedTiming::default(),
            host_macs: None,
            device: DeviceLocation::Cpu,
        }
    }

    /// Measures the slots' evidence every `steps` optimizer steps (0: never;
    /// `kasmina.slot_evidence_every_steps`, default 10): the RMS of the
    /// activation entering each slot and the norm of the loss gradient
    /// arriving at it, reported in [`Kasmina::slot_states`]
    /// (`crates/kasmina/src/engine/evidence.rs` says what each means).
    pub fn with_slot_evidence_every(mut self, steps: u64) -> Self {
        self.evidence = evidence::SlotEvidence::new(steps);
        self
    }

    /// The isolation monitor's settings (the default's otherwise).
    pub fn with_isolation(mut self, isolation: IsolationConfig) -> Self {
        self.step.monitor = IsolationMonitor::new(isolation);
        self
    }

    /// The model's device (CPU otherwise): every seed module must be built
    /// there, or its germination is refused naming the parameter.
    pub fn with_device(mut self, device: DeviceLocation) -> Self {
        self.device = device;
        self
    }

    /// Turns the off-switch control on or off (`kasmina.off_switch`; see
    /// [`SeedSlots::set_off_switch`]).
    pub fn with_off_switch(mut self, on: bool) -> Self {
        self.slots.set_off_switch(on);
        self
    }

    /// Every seed this run has germinated, in order, with how far it got
    /// (kept in the checkpoint; updated at every step and fence).
    pub fn seed_outcomes(&self) -> &[SeedOutcome] {
        &self.history
    }

    /// Records a training forward over `images` images: each seed's
    /// history counts the images at its stage now. Returns the forward MACs
    /// per image the seeds added to that forward (0 with no live seed).
    pub fn count_forward(&mut self, images: u64) -> u64 {
        history::count_images(&mut self.history, &self.slots, images)
    }

    /// The forward MACs per image the seeds add now (live stages only).
    pub fn seed_forward_macs(&self) -> u64 {
        self.slots
            .slots()
            .filter_map(|s| s.seed())
            .map(Seed::forward_macs)
            .sum()
    }

    /// The slots (the host's [`crate::SlotRunner`]).
    pub fn slots(&self) -> &SeedSlots {
        &self.slots
    }

    /// The slots, mutably (tests drive stages by hand).
    #[cfg(test)]
    pub(crate) fn slots_mut(&mut self) -> &mut SeedSlots {
        &mut self.slots
    }

    /// The lifecycle (evidence, counters).
    pub fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
    }

    /// The lifecycle (tests record evidence by hand).
    #[cfg(test)]
    pub(crate) fn lifecycle_mut(&mut self) -> &mut Lifecycle {
        &mut self.lifecycle
    }

    /// The intake (submit commands as they arrive).
    #[cfg(test)]
    pub(crate) fn intake_mut(&mut self) -> &mut CommandIntake {
        &mut self.intake
    }

    /// Submits a command as it arrives (validated and verified now, applied
    /// at the fence it is due); [`Kasmina::apply_commands`] does this and
    /// the fence in one call.
    pub fn submit(&mut self, command: AdaptationCommand, now_ms: u64) -> Result<(), Rejection> {
        self.intake.submit(command, now_ms)
    }

    /// Records one step's evidence for the seed in `slot_id` without a
    /// training step (benchmarks and tests of code that drives Kasmina).
    #[cfg(feature = "testing")]
    pub fn record_evidence(&mut self, slot_id: &str, evidence: crate::gates::StepEvidence) {
        self.lifecycle.record_step(slot_id, evidence);
    }

    /// The parameter registry.
    #[cfg(test)]
    pub(crate) fn registry(&self) -> &ParamRegistry {
        &self.registry
    }

    /// Applies every due command (training thread, at a fence).
    pub fn fence(&mut self, step: u64, epoch: u64, now_ms: u64) -> Vec<CommandOutcome> {
        let due = self.intake.due(step, now_ms);
        let mut outcomes = Vec::with_capacity(due.len());
        for item in due {
            let (command_id, result) = match item {
                Err((command, rejection)) => (command.command_id, Err(rejection)),
                Ok(command) => {
                    let result = self
                        .execute(&command, step, epoch)
                        .map_err(|failure| self.intake.count(Rejection::Failed(failure)));
                    (command.command_id, result)
                }
            };
            outcomes.push(CommandOutcome { command_id, result });
        }
        self.sync_registry();
        history::note(&mut self.history, &self.slots);
        outcomes
    }

    /// Advances every seed that can move on evidence; call once per step after
    /// the evidence is recorded.
    pub fn advance_all(&mut self, step: u64, epoch: u64) -> crate::Result<Vec<(String, Progress)>> {
        let ids: Vec<String> = self.slots.slots().map(|s| s.spec().id.clone()).collect();
        let mut out = Vec::new();
        for id in ids {
            let progress = self.lifecycle.advance(&mut self.slots, &id, step, epoch)?;
            if progress != Progress::Idle {
                out.push((id, progress));
            }
        }
        self.sync_registry();
        history::note(&mut self.history, &self.slots);
        Ok(out)
    }

    /// Culls the seed in `slot_id` (outside a command: e.g. a rollback to a
    /// state that predates it).
    pub fn cull(
        &mut self,
        slot_id: &str,
        reason: &str,
        step: u64,
        epoch: u64,
    ) -> crate::Result<()> {
        self.lifecycle
            .cull(&mut self.slots, slot_id, reason, step, epoch)?;
        self.sync_registry();
        history::note(&mut self.history, &self.slots);
        Ok(())
    }

    /// Keeps the registry equal to the seeds that train: new ones registered,
    /// culled or reset ones removed.
    fn sync_registry(&mut self) {
        let training: BTreeSet<String> = self
            .slots
            .slots()
            .filter_map(|s| s.seed())
            .filter(|s| s.trains())
            .map(|s| s.id().to_string())
            .collect();
        for gone in self
            .registered_seeds
            .difference(&training)
            .cloned()
            .collect::<Vec<_>>()
        {
            self.registry.unregister(&Owner::Seed(gone.clone()));
            self.registered_seeds.remove(&gone);
        }
        for slot in self.slots.slots() {
            if let Some(seed) = slot.seed()
                && seed.trains()
                && !self.registered_seeds.contains(seed.id())
                && self
                    .registry
                    .register(Owner::Seed(seed.id().to_string()), &seed.parameters())
                    .is_ok()
            {
                self.registered_seeds.insert(seed.id().to_string());
            }
        }
    }

    fn slot_of(&self, seed_id: &str) -> Result<String, Failure> {
        self.slots
            .slots()
            .find(|s| s.seed().is_some_and(|seed| seed.id() == seed_id))
            .map(|s| s.spec().id.clone())
            .ok_or_else(|| Failure::NoSuchSeed {
                seed: seed_id.to_string(),
            })
    }

    fn execute(
        &mut self,
        command: &AdaptationCommand,
        step: u64,
        epoch: u64,
    ) -> Result<String, Failure> {
        let Some(Payload::SeedOperation(op)) = &command.payload else {
            return Err(Failure::NotASeedOperation);
        };
        let operation = SeedOperation::try_from(op.operation).unwrap_or(SeedOperation::Unspecified);
        let seed_id = command.target_seed_id.as_str();
        match operation {
            SeedOperation::Unspecified => Err(Failure::Unspecified),
            SeedOperation::Germinate => self.germinate(command, op, step, epoch),
            SeedOperation::Advance => {
                let slot = self.slot_of(seed_id)?;
                let target = SeedStage::try_from(op.target_stage).unwrap_or(SeedStage::Unknown);
                let current = self.slots.slot(&slot)?.stage();
                let next = next_stage(current);
                if Some(target) != next {
                    return Err(Failure::WrongTarget {
                        target: target.as_str_name(),
                        current: current.as_str_name(),
                        next: next.map_or("nothing", |s| s.as_str_name()),
                    });
                }
                self.progress(&slot, step, epoch)
            }
            SeedOperation::Fossilize => {
                let slot = self.slot_of(seed_id)?;
                let current = self.slots.slot(&slot)?.stage();
                if current != SeedStage::Probationary {
                    return Err(Failure::WrongStage {
                        operation: "FOSSILIZE",
                        needs: "PROBATIONARY",
                        stage: current.as_str_name(),
                    });
                }
                self.progress(&slot, step, epoch)
            }
            SeedOperation::SetBlend => {
                let slot = self.slot_of(seed_id)?;
                let channels = self.slots.slot(&slot)?.spec().feature_shape[0];
                let config = op.blend.as_ref().ok_or(Failure::Missing {
                    operation: "SET_BLEND",
                    missing: "a blend",
                })?;
                let blend = Blend::from_wire(config, channels)?;
                let seed = self.slots.seed_mut(&slot)?;
                match seed.stage() {
                    SeedStage::Blending | SeedStage::Shadowing | SeedStage::Probationary => {
                        seed.set_blend(blend);
                        Ok("blend changed".into())
                    }
                    other @ (SeedStage::Unknown
                    | SeedStage::Dormant
                    | SeedStage::Germinated
                    | SeedStage::Training
                    | SeedStage::Fossilized
                    | SeedStage::Culled
                    | SeedStage::Embargoed
                    | SeedStage::Resetting
                    | SeedStage::Terminated) => Err(Failure::WrongStage {
                        operation: "SET_BLEND",
                        needs: "BLENDING, SHADOWING or PROBATIONARY",
                        stage: other.as_str_name(),
                    }),
                }
            }
            SeedOperation::Cull | SeedOperation::Cancel => {
                // Loads are synchronous at the fence, so a seed has no
                // outstanding prefetch to cancel: CANCEL culls like CULL.
                let slot = self.slot_of(seed_id)?;
                self.lifecycle
                    .cull(&mut self.slots, &slot, "command", step, epoch)?;
                Ok("culled".into())
            }
        }
    }

    fn progress(&mut self, slot: &str, step: u64, epoch: u64) -> Result<String, Failure> {
        match self.lifecycle.advance(&mut self.slots, slot, step, epoch)? {
            Progress::Moved(stage) => Ok(format!("moved to {}", stage.as_str_name())),
            Progress::Waiting(reason) => Err(Failure::GateNotReady(reason)),
            Progress::Culled(reason) => Ok(format!("gate failed ({reason}): culled")),
            Progress::Idle => Err(Failure::NothingToAdvance),
        }
    }

    fn germinate(
        &mut self,
        command: &AdaptationCommand,
        op: &CommandSeedOperation,
        step: u64,
        epoch: u64,
    ) -> Result<String, Failure> {
        let spec = self.slots.slot(&op.slot_id)?.spec().clone();
        let slot = urza::SlotShape::new(spec.kind, spec.feature_shape.clone())
            .map_err(crate::Error::from)?;
        let blend = Blend::from_wire(
            op.blend.as_ref().ok_or(Failure::Missing {
                operation: "GERMINATE",
                missing: "a blend",
            })?,
            spec.feature_shape[0],
        )?;
        let ramp = AlphaRamp::from_wire(op.alpha_schedule.as_ref().ok_or(Failure::Missing {
            operation: "GERMINATE",
            missing: "an alpha schedule",
        })?)?;
        // From the seed's id (slot and step), not the command's random id:
        // the same run seed grows the same seed weights.
        let init_seed = self.init_seed(&command.target_seed_id);
        let (artifact_ref, module) = self
            .source
            .load(&op.blueprint_id, &op.parameters, &slot, init_seed)
            .map_err(|e| Failure::Load {
                blueprint: op.blueprint_id.clone(),
                source: Arc::new(e),
            })?;
        let params = module
            .named_vars()
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_tensor()));
        esper_ops::device::ensure_all_on(
            params,
            self.device,
            &format!("seed {}'s parameter", command.target_seed_id),
        )
        .map_err(|source| Failure::Device {
            blueprint: op.blueprint_id.clone(),
            source,
        })?;
        let ratio = self.lifecycle.config().max_seed_mac_ratio;
        if let Some(host_macs) = self.host_macs
            && ratio > 0.0
            && module.forward_macs() as f64 > ratio * host_macs as f64
        {
            return Err(Failure::OverBudget {
                blueprint: op.blueprint_id.clone(),
                seed_macs: module.forward_macs(),
                host_macs,
                ratio,
            });
        }
        let seed = Seed::new(
            &command.target_seed_id,
            &op.slot_id,
            artifact_ref,
            module,
            blend,
            ramp,
        )
        .with_mesh_layers(op.mesh_layers.clone());
        self.lifecycle
            .germinate(&mut self.slots, seed, step, epoch)?;
        Ok(format!("germinated at {}", op.slot_id))
    }
}

mod evidence;
mod history;
mod persist;
mod state;
mod step;
mod timing;

pub use history::SeedOutcome;
pub use persist::{KasminaState, SeedRecord};
use step::StepState;
pub use step::{CommandRefusal, IsolationViolation, SeedGroup, SeedSummary, StepReport, StepTimes};
pub use timing::SeedTime;

#[cfg(test)]
mod tests;
