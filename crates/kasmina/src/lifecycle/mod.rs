//! The lifecycle executor: every move follows the Leyline transition table,
//! waits out its stage's minimum dwell, and passes its gate on evidence; any
//! gate failure culls. Culling runs CULLED → EMBARGOED (counted in epochs) →
//! RESETTING → G5 → DORMANT and removes the seed's parameters.
//!
//! Every gate evaluation and every stage change is recorded (drained with
//! [`Lifecycle::drain_events`]) for telemetry.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use leyline::v1::{GateEvaluation, RollbackPayload, SeedGate, SeedStage, StageTransition};

use crate::error::{Error, Result};
use crate::gates::{self, Counterfactual, Evidence, GateConfig, StepEvidence, Verdict};
use crate::seed::Seed;
use crate::slots::SeedSlots;

/// What the lifecycle recorded.
#[derive(Debug, Clone, PartialEq)]
pub enum LifecycleEvent {
    /// A gate was evaluated (passed or failed), with its inputs.
    Gate(GateEvaluation),
    /// A seed changed stage.
    Transition(StageTransition),
    /// A seed was culled; what a rollback needs to know.
    Rollback(RollbackPayload),
}

/// The result of trying to move a seed on.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// The seed moved to this stage.
    Moved(SeedStage),
    /// Not yet: dwell or evidence missing (the reason says which).
    Waiting(String),
    /// A gate failed: the seed was culled.
    Culled(String),
    /// Nothing to do (no seed, or a stage with no automatic successor).
    Idle,
}

/// Drives every seed of a [`SeedSlots`].
#[derive(Debug, Clone)]
pub struct Lifecycle {
    config: GateConfig,
    evidence: BTreeMap<String, Evidence>,
    /// Step and epoch each slot's seed germinated at (its age).
    born: BTreeMap<String, (u64, u64)>,
    /// Mean step time (ms) before each slot's seed germinated: G2's baseline.
    baselines: BTreeMap<String, f64>,
    /// The most recent step times (ms), for the next germination's baseline.
    recent_step_ms: std::collections::VecDeque<f64>,
    events: Vec<LifecycleEvent>,
    gates_passed: u64,
    gates_failed: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Lifecycle {
    /// A lifecycle with `config`.
    pub fn new(config: GateConfig) -> Self {
        Self {
            config,
            evidence: BTreeMap::new(),
            born: BTreeMap::new(),
            baselines: BTreeMap::new(),
            recent_step_ms: std::collections::VecDeque::new(),
            events: Vec::new(),
            gates_passed: 0,
            gates_failed: 0,
        }
    }

    /// Puts back a restored seed's age and stage evidence (counters and the
    /// counterfactual; the step window starts empty).
    pub(crate) fn restore(
        &mut self,
        slot_id: &str,
        born: (u64, u64),
        (steps, epochs): (u64, u64),
        counterfactual: Option<Counterfactual>,
        isolation_violations: u64,
        baseline_ms: Option<f64>,
    ) {
        let mut e = Evidence::new(self.config.window);
        e.steps_in_stage = steps;
        e.epochs_in_stage = epochs;
        e.counterfactual = counterfactual;
        e.isolation_violations = isolation_violations;
        self.evidence.insert(slot_id.to_string(), e);
        self.born.insert(slot_id.to_string(), born);
        if let Some(b) = baseline_ms {
            self.baselines.insert(slot_id.to_string(), b);
        }
    }

    /// The step and epoch the seed in `slot_id` germinated at.
    pub fn born(&self, slot_id: &str) -> Option<(u64, u64)> {
        self.born.get(slot_id).copied()
    }

    /// The thresholds in use.
    pub fn config(&self) -> &GateConfig {
        &self.config
    }

    /// Evidence of the seed in a slot.
    pub fn evidence(&self, slot_id: &str) -> Option<&Evidence> {
        self.evidence.get(slot_id)
    }

    /// Takes the recorded events.
    pub fn drain_events(&mut self) -> Vec<LifecycleEvent> {
        std::mem::take(&mut self.events)
    }

    /// Gate evaluations that passed and failed so far.
    pub fn gate_counts(&self) -> (u64, u64) {
        (self.gates_passed, self.gates_failed)
    }

    fn gate_event(&mut self, mut eval: GateEvaluation, seed: &Seed, step: u64) {
        if eval.passed {
            self.gates_passed += 1;
        } else {
            self.gates_failed += 1;
        }
        eval.seed_id = seed.id().to_string();
        eval.slot_id = seed.slot_id().to_string();
        eval.global_step = step;
        eval.evaluated_at_ms = now_ms();
        self.events.push(LifecycleEvent::Gate(eval));
    }

    /// Moves the seed in `slot_id` to `to` along a legal edge, resetting its
    /// evidence. Gates are the caller's business (this is the one place stages change).
    fn apply(
        &mut self,
        slots: &mut SeedSlots,
        slot_id: &str,
        to: SeedStage,
        step: u64,
        reason: &str,
    ) -> Result<()> {
        let seed = slots.seed_mut(slot_id)?;
        let from = seed.stage();
        let edge = leyline::lifecycle::transition(from, to).map_err(|e| Error::Lifecycle {
            seed: seed.id().to_string(),
            reason: e.to_string(),
        })?;
        seed.set_stage(to);
        let transition = StageTransition {
            seed_id: seed.id().to_string(),
            slot_id: slot_id.to_string(),
            from_stage: from as i32,
            to_stage: to as i32,
            gate: edge.gate.map_or(SeedGate::Unknown as i32, |g| g as i32),
            global_step: step,
            at_ms: now_ms(),
            reason: reason.to_string(),
        };
        self.events.push(LifecycleEvent::Transition(transition));
        self.evidence
            .insert(slot_id.to_string(), Evidence::new(self.config.window));
        Ok(())
    }

    /// G0 and placement: the seed's blueprint exists and its parameters are in
    /// bounds for the slot (checked again here: the command was validated at
    /// intake, but the blueprint is the authority), the slot is free and not
    /// embargoed. The seed enters GERMINATED.
    pub fn germinate(
        &mut self,
        slots: &mut SeedSlots,
        seed: Seed,
        step: u64,
        epoch: u64,
    ) -> Result<()> {
        let module = seed.module();
        let g0 = urza::definition(module.blueprint_id())
            .ok_or_else(|| format!("unknown blueprint {}", module.blueprint_id()))
            .and_then(|def| {
                def.check(module.parameters(), module.slot())
                    .map_err(|e| e.to_string())
            });
        let eval = GateEvaluation {
            gate: SeedGate::G0Sanity as i32,
            passed: g0.is_ok(),
            reason: g0.as_ref().err().cloned().unwrap_or_default(),
            from_stage: SeedStage::Dormant as i32,
            to_stage: SeedStage::Germinated as i32,
            inputs: BTreeMap::from([(
                "parameter_count".to_string(),
                module.parameter_count() as f64,
            )]),
            ..GateEvaluation::default()
        };
        self.gate_event(eval, &seed, step);
        if let Err(reason) = g0 {
            return Err(Error::Lifecycle {
                seed: seed.id().to_string(),
                reason: format!("G0 sanity failed: {reason}"),
            });
        }
        let slot_id = seed.slot_id().to_string();
        let seed_id = seed.id().to_string();
        slots.place(seed, epoch)?;
        self.evidence
            .insert(slot_id.clone(), Evidence::new(self.config.window));
        self.born.insert(slot_id.clone(), (step, epoch));
        if !self.recent_step_ms.is_empty() {
            let mean = self.recent_step_ms.iter().sum::<f64>() / self.recent_step_ms.len() as f64;
            self.baselines.insert(slot_id.clone(), mean);
        }
        self.events
            .push(LifecycleEvent::Transition(StageTransition {
                seed_id,
                slot_id,
                from_stage: SeedStage::Dormant as i32,
                to_stage: SeedStage::Germinated as i32,
                gate: SeedGate::G0Sanity as i32,
                global_step: step,
                at_ms: now_ms(),
                reason: "germinate".into(),
            }));
        Ok(())
    }

    /// Records one step's forward + backward time (every step, with or
    /// without seeds): the window a new seed's G2 baseline is taken from.
    pub fn record_step_time(&mut self, step_ms: f64) {
        if !step_ms.is_finite() {
            return;
        }
        if self.recent_step_ms.len() == self.config.window {
            self.recent_step_ms.pop_front();
        }
        self.recent_step_ms.push_back(step_ms);
    }

    /// G2's baseline for the seed in `slot_id`: the mean step time before it
    /// germinated.
    pub fn baseline_ms(&self, slot_id: &str) -> Option<f64> {
        self.baselines.get(slot_id).copied()
    }

    /// Records one training step's evidence for the seed in `slot_id`.
    pub fn record_step(&mut self, slot_id: &str, evidence: StepEvidence) {
        if let Some(e) = self.evidence.get_mut(slot_id) {
            e.record(evidence);
        }
    }

    /// Records a counterfactual measurement for the seed in `slot_id`.
    pub fn record_counterfactual(&mut self, slot_id: &str, measurement: Counterfactual) {
        if let Some(e) = self.evidence.get_mut(slot_id) {
            e.counterfactual = Some(measurement);
        }
    }

    /// Counts an epoch boundary for every seed, and moves culled slots on:
    /// CULLED → EMBARGOED at once; EMBARGOED → RESETTING once the embargo is
    /// over; RESETTING → (G5) DORMANT when the slot is clean.
    pub fn end_epoch(&mut self, slots: &mut SeedSlots, step: u64, epoch: u64) -> Result<()> {
        for e in self.evidence.values_mut() {
            e.epochs_in_stage += 1;
        }
        let ids: Vec<String> = slots.slots().map(|s| s.spec().id.clone()).collect();
        for id in ids {
            let stage = slots.slot(&id)?.stage();
            match stage {
                SeedStage::Embargoed => {
                    if epoch >= slots.slot(&id)?.embargo_until_epoch() {
                        self.apply(slots, &id, SeedStage::Resetting, step, "embargo over")?;
                        self.reset(slots, &id, step)?;
                    }
                }
                SeedStage::Resetting => self.reset(slots, &id, step)?,
                SeedStage::Unknown
                | SeedStage::Dormant
                | SeedStage::Germinated
                | SeedStage::Training
                | SeedStage::Blending
                | SeedStage::Shadowing
                | SeedStage::Probationary
                | SeedStage::Fossilized
                | SeedStage::Culled
                | SeedStage::Terminated => {}
            }
        }
        Ok(())
    }

    /// G5: removes the seed (its parameters go with it) and checks the slot
    /// is clean before it is DORMANT again.
    fn reset(&mut self, slots: &mut SeedSlots, slot_id: &str, step: u64) -> Result<()> {
        let Some(seed) = slots.take(slot_id)? else {
            return Ok(());
        };
        let clean = slots.slot(slot_id)?.seed().is_none()
            && !slots
                .trainable_parameters()
                .iter()
                .any(|p| crate::names::seed_of(&p.name) == Some(seed.id()));
        let eval = GateEvaluation {
            gate: SeedGate::G5Reset as i32,
            passed: clean,
            reason: if clean {
                String::new()
            } else {
                "slot_not_clean".into()
            },
            from_stage: SeedStage::Resetting as i32,
            to_stage: SeedStage::Dormant as i32,
            ..GateEvaluation::default()
        };
        self.gate_event(eval, &seed, step);
        if !clean {
            return Err(Error::Lifecycle {
                seed: seed.id().to_string(),
                reason: "G5: the slot still holds the seed's parameters".into(),
            });
        }
        self.evidence.remove(slot_id);
        self.born.remove(slot_id);
        self.baselines.remove(slot_id);
        self.events
            .push(LifecycleEvent::Transition(StageTransition {
                seed_id: seed.id().to_string(),
                slot_id: slot_id.to_string(),
                from_stage: SeedStage::Resetting as i32,
                to_stage: SeedStage::Dormant as i32,
                gate: SeedGate::G5Reset as i32,
                global_step: step,
                at_ms: now_ms(),
                reason: "reset".into(),
            }));
        Ok(())
    }

    /// Culls the seed in `slot_id` (a failed gate or a command): CULLED, a
    /// rollback payload, then EMBARGOED until `epoch + embargo_epochs`.
    pub fn cull(
        &mut self,
        slots: &mut SeedSlots,
        slot_id: &str,
        reason: &str,
        step: u64,
        epoch: u64,
    ) -> Result<()> {
        self.apply(slots, slot_id, SeedStage::Culled, step, reason)?;
        let seed = slots.seed_mut(slot_id)?;
        self.events.push(LifecycleEvent::Rollback(RollbackPayload {
            seed_id: seed.id().to_string(),
            slot_id: slot_id.to_string(),
            stage: SeedStage::Culled as i32,
            reason: reason.to_string(),
            blueprint_id: seed.module().blueprint_id().to_string(),
            global_step: step,
            recorded_at_ms: now_ms(),
        }));
        self.apply(slots, slot_id, SeedStage::Embargoed, step, "embargo")?;
        slots.set_embargo(slot_id, epoch + self.config.embargo_epochs)?;
        Ok(())
    }

    /// Tries to move the seed in `slot_id` one stage on: GERMINATED →
    /// TRAINING (G3), TRAINING → BLENDING (G1), BLENDING → SHADOWING (G2),
    /// SHADOWING → PROBATIONARY (G4), PROBATIONARY → FOSSILIZED (G4). The
    /// stage's minimum dwell comes first; a failed gate culls.
    pub fn advance(
        &mut self,
        slots: &mut SeedSlots,
        slot_id: &str,
        step: u64,
        epoch: u64,
    ) -> Result<Progress> {
        let Some(seed) = slots.slot(slot_id)?.seed() else {
            return Ok(Progress::Idle);
        };
        let from = seed.stage();
        let Some(to) = next_stage(from) else {
            return Ok(Progress::Idle);
        };
        let evidence = self
            .evidence
            .get(slot_id)
            .cloned()
            .unwrap_or_else(|| Evidence::new(self.config.window));
        if let Some(i) = gates::dwell_index(from) {
            let (steps, epochs) = (self.config.min_steps[i], self.config.min_epochs[i]);
            if evidence.steps_in_stage < steps || evidence.epochs_in_stage < epochs {
                return Ok(Progress::Waiting(format!(
                    "dwell: {}/{steps} steps, {}/{epochs} epochs in {}",
                    evidence.steps_in_stage,
                    evidence.epochs_in_stage,
                    from.as_str_name()
                )));
            }
        }
        let verdict = match from {
            SeedStage::Germinated => {
                // G3: the module's interface is the slot's, and every host
                // layer the seed needs is a slot of this host.
                let spec = slots.slot(slot_id)?.spec();
                let fits = seed.module().slot().shape() == spec.feature_shape.as_slice()
                    && seed.module().slot().kind() == spec.kind;
                let missing = seed
                    .mesh_layers()
                    .iter()
                    .filter(|layer| slots.slot(layer).is_err())
                    .count();
                let reason = if !fits {
                    "shape_mismatch"
                } else if missing > 0 {
                    "mesh_layers_missing"
                } else {
                    ""
                };
                Verdict::Decided(GateEvaluation {
                    gate: SeedGate::G3Interface as i32,
                    passed: reason.is_empty(),
                    reason: reason.into(),
                    from_stage: from as i32,
                    to_stage: to as i32,
                    inputs: BTreeMap::from([
                        ("mesh_layers".to_string(), seed.mesh_layers().len() as f64),
                        ("mesh_layers_missing".to_string(), missing as f64),
                    ]),
                    ..GateEvaluation::default()
                })
            }
            SeedStage::Training => gates::g1(&self.config, &evidence, from, to),
            SeedStage::Blending => gates::g2(
                &self.config,
                &evidence,
                seed.ramp_complete(),
                self.baselines.get(slot_id).copied(),
                from,
                to,
            ),
            SeedStage::Shadowing | SeedStage::Probationary => {
                gates::g4(&self.config, &evidence, from, to)
            }
            SeedStage::Unknown
            | SeedStage::Dormant
            | SeedStage::Fossilized
            | SeedStage::Culled
            | SeedStage::Embargoed
            | SeedStage::Resetting
            | SeedStage::Terminated => return Ok(Progress::Idle),
        };
        match verdict {
            Verdict::Wait(reason) => Ok(Progress::Waiting(reason)),
            Verdict::Decided(eval) => {
                let passed = eval.passed;
                let reason = eval.reason.clone();
                let seed = seed.clone();
                self.gate_event(eval, &seed, step);
                if passed {
                    self.apply(slots, slot_id, to, step, "gate passed")?;
                    Ok(Progress::Moved(to))
                } else {
                    self.cull(slots, slot_id, &reason, step, epoch)?;
                    Ok(Progress::Culled(reason))
                }
            }
        }
    }
}

/// The stage a seed moves on to on evidence (the gated forward edges of the
/// Leyline table), or `None` where nothing follows on evidence.
pub(crate) fn next_stage(stage: SeedStage) -> Option<SeedStage> {
    match stage {
        SeedStage::Germinated => Some(SeedStage::Training),
        SeedStage::Training => Some(SeedStage::Blending),
        SeedStage::Blending => Some(SeedStage::Shadowing),
        SeedStage::Shadowing => Some(SeedStage::Probationary),
        SeedStage::Probationary => Some(SeedStage::Fossilized),
        SeedStage::Unknown
        | SeedStage::Dormant
        | SeedStage::Fossilized
        | SeedStage::Culled
        | SeedStage::Embargoed
        | SeedStage::Resetting
        | SeedStage::Terminated => None,
    }
}

#[cfg(test)]
mod tests;
