//! Seeds in the training loop: the trainer runs its host through Kasmina's
//! slots, gives every training seed an optimizer group of its own, records the
//! evidence the gates judge (seed gradient norm, loss, α, the isolation
//! monitor's verdict) after each backward pass, advances α ramps and the
//! lifecycle after each optimizer step, measures the counterfactual (α = 0)
//! validation accuracy of seeds in SHADOWING and PROBATIONARY at each epoch
//! end, and applies the control plane's commands at fences.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use candle_core::backprop::GradStore;
use kasmina::gates::{Counterfactual, StepEvidence};
use kasmina::isolation::{IsolationConfig, IsolationMonitor};
use kasmina::registry::Owner;
use kasmina::telemetry::SeedSignal;
use kasmina::{Kasmina, LifecycleEvent, NamedParameter};
use leyline::v1::{AdaptationCommand, SeedStage, TelemetryEvent, TelemetryLevel, TelemetryPacket};

use super::Trainer;
use crate::error::{Error, Result};
use crate::optim::ParamGroup;

/// Kasmina and the isolation monitor, as the trainer holds them.
pub(super) struct SeedControl {
    pub(super) kasmina: Kasmina,
    monitor: IsolationMonitor,
    /// The last step's per-seed gradient norms, for its telemetry.
    signals: Vec<SeedSignal>,
    seed_grad_sq: f64,
    last_loss: f64,
    /// Per-step seed packets not yet drained (bounded; oldest dropped).
    packets: VecDeque<TelemetryPacket>,
    dropped_packets: u64,
}

/// The seeds of the checkpoint a run resumed from: Kasmina's state (absent in
/// checkpoints written before it was recorded), the seeds' weights and their
/// optimizer state.
pub(super) struct ResumedSeeds {
    state: Option<kasmina::KasminaState>,
    weights: std::collections::BTreeMap<String, candle_core::Tensor>,
    optimizer: std::collections::BTreeMap<String, crate::optim::StateEntry>,
    path: std::path::PathBuf,
}

impl ResumedSeeds {
    /// The seeds of `snapshot` (loaded from `path`), if it has any.
    pub(super) fn from_snapshot(
        snapshot: &crate::state::Snapshot,
        path: &std::path::Path,
    ) -> Option<Self> {
        let seed = |name: &String| name.starts_with("seed/");
        let weights: std::collections::BTreeMap<_, _> = snapshot
            .params
            .iter()
            .filter(|(n, _)| seed(n))
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect();
        let has_seeds = snapshot
            .kasmina
            .as_ref()
            .is_some_and(|k| !k.seeds.is_empty());
        if weights.is_empty() && !has_seeds && snapshot.kasmina.is_none() {
            return None;
        }
        Some(Self {
            state: snapshot.kasmina.clone(),
            optimizer: snapshot
                .optimizer
                .iter()
                .filter(|(n, _)| seed(n))
                .map(|(n, e)| (n.clone(), e.clone()))
                .collect(),
            weights,
            path: path.to_path_buf(),
        })
    }
}

/// Seed packets held between drains.
const PACKET_BUFFER: usize = 1024;

/// One slot's state after an epoch, for reports and displays.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedSummary {
    /// Slot id.
    pub slot: String,
    /// Seed id.
    pub seed: String,
    /// Blueprint the seed was built from.
    pub blueprint: String,
    /// Lifecycle stage.
    pub stage: SeedStage,
    /// Blend α in effect.
    pub alpha: f64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(super) fn seed_group(seed_id: &str) -> String {
    format!("seed/{seed_id}")
}

fn lifecycle_event(event: &LifecycleEvent) -> TelemetryEvent {
    let name = |stage: i32| {
        SeedStage::try_from(stage)
            .unwrap_or(SeedStage::Unknown)
            .as_str_name()
    };
    match event {
        LifecycleEvent::Transition(t) => leyline::telemetry::event(
            "seed_stage_transition",
            TelemetryLevel::Info,
            format!(
                "seed {} at {}: {} -> {} ({})",
                t.seed_id,
                t.slot_id,
                name(t.from_stage),
                name(t.to_stage),
                t.reason
            ),
        )
        .attr("seed_id", &t.seed_id)
        .attr("slot_id", &t.slot_id)
        .attr("global_step", t.global_step)
        .build(),
        LifecycleEvent::Gate(g) => {
            let mut builder = leyline::telemetry::event(
                "seed_gate_evaluation",
                if g.passed {
                    TelemetryLevel::Info
                } else {
                    TelemetryLevel::Warning
                },
                format!(
                    "seed {} gate {:?} {} {}",
                    g.seed_id,
                    g.gate,
                    if g.passed { "passed" } else { "failed" },
                    g.reason
                ),
            )
            .attr("seed_id", &g.seed_id)
            .attr("passed", g.passed);
            for (k, v) in &g.inputs {
                builder = builder.attr(k.clone(), v);
            }
            builder.build()
        }
        LifecycleEvent::Rollback(r) => leyline::telemetry::event(
            "seed_culled",
            TelemetryLevel::Warning,
            format!("seed {} at {} culled: {}", r.seed_id, r.slot_id, r.reason),
        )
        .attr("seed_id", &r.seed_id)
        .attr("blueprint_id", &r.blueprint_id)
        .build(),
    }
}

impl Trainer {
    /// Grows the host with `kasmina`: its slots run the host's forward, its
    /// seeds train in groups of their own (the host's learning rate and weight
    /// decay), and its lifecycle advances on the evidence this loop records.
    /// The host's parameters are registered as the host's in Kasmina's
    /// registry, which checks every group before each optimizer step.
    pub fn with_kasmina(
        mut self,
        mut kasmina: Kasmina,
        isolation: IsolationConfig,
    ) -> Result<Self> {
        kasmina
            .registry_mut()
            .register(Owner::Host, &self.host.parameters())
            .map_err(|e| Error::Optimizer(e.to_string()))?;
        if let Some(resumed) = self.resumed_seeds.take() {
            match &resumed.state {
                Some(state) => {
                    kasmina
                        .restore_state(state, &resumed.weights)
                        .map_err(|e| Error::Resume {
                            path: resumed.path.clone(),
                            detail: format!("restoring seeds: {e}"),
                        })?;
                    self.pending_seed_optimizer = resumed.optimizer;
                    self.events.push(
                        leyline::telemetry::event(
                            "checkpoint_seeds_restored",
                            TelemetryLevel::Info,
                            format!(
                                "{} seed(s) restored from {}",
                                state.seeds.len(),
                                resumed.path.display()
                            ),
                        )
                        .build(),
                    );
                }
                None => self.resumed_seeds = Some(resumed),
            }
        }
        self.seeds = Some(SeedControl {
            kasmina,
            monitor: IsolationMonitor::new(isolation),
            signals: Vec::new(),
            seed_grad_sq: 0.0,
            last_loss: f64::NAN,
            packets: VecDeque::new(),
            dropped_packets: 0,
        });
        Ok(self)
    }

    /// A resumed checkpoint's seeds that nothing took (no Kasmina attached,
    /// or a checkpoint written before Kasmina's state was recorded): said
    /// once, as a WARNING.
    pub(super) fn unclaimed_seeds(&mut self) {
        let Some(resumed) = self.resumed_seeds.take() else {
            return;
        };
        let why = if resumed.state.is_none() {
            "it predates recorded seed state"
        } else {
            "this run does not grow (no Kasmina)"
        };
        self.events.push(
            leyline::telemetry::event(
                "checkpoint_seeds_not_restored",
                TelemetryLevel::Warning,
                format!(
                    "{} holds {} seed tensor(s) that this run cannot restore ({why}): seeds restart from DORMANT",
                    resumed.path.display(),
                    resumed.weights.len()
                ),
            )
            .build(),
        );
    }

    /// Kasmina, when the host grows.
    pub fn kasmina(&self) -> Option<&Kasmina> {
        self.seeds.as_ref().map(|s| &s.kasmina)
    }

    /// Every occupied slot, by id.
    pub fn seed_summaries(&self) -> Vec<SeedSummary> {
        let Some(control) = &self.seeds else {
            return Vec::new();
        };
        control
            .kasmina
            .slots()
            .slots()
            .filter_map(|slot| {
                slot.seed().map(|seed| SeedSummary {
                    slot: slot.spec().id.clone(),
                    seed: seed.id().to_string(),
                    blueprint: seed.module().blueprint_id().to_string(),
                    stage: seed.stage(),
                    alpha: seed.alpha(),
                })
            })
            .collect()
    }

    /// The host's parameters and those of every seed that trains (a
    /// fossilized seed is part of the model): what snapshots and checkpoints
    /// hold.
    pub(super) fn model_parameters(&self) -> Vec<NamedParameter> {
        let mut params = self.host.parameters();
        if let Some(control) = &self.seeds {
            params.extend(control.kasmina.slots().trainable_parameters());
        }
        params
    }

    /// Makes the model restorable from a snapshot holding `saved`: seeds
    /// germinated after it (their parameters are not in it) are culled — the
    /// known-good state predates them — and the parameters to restore are
    /// returned.
    pub(super) fn prepare_restore(
        &mut self,
        saved: &BTreeSet<String>,
    ) -> Result<Vec<NamedParameter>> {
        let (step, epoch) = (self.global_step, u64::from(self.epoch));
        if let Some(control) = self.seeds.as_mut() {
            let newer: Vec<String> = control
                .kasmina
                .slots()
                .slots()
                .filter(|s| {
                    s.seed().is_some_and(|seed| {
                        seed.trains() && seed.parameters().iter().any(|p| !saved.contains(&p.name))
                    })
                })
                .map(|s| s.spec().id.clone())
                .collect();
            for slot in newer {
                control
                    .kasmina
                    .cull(&slot, "rollback to a state before the seed", step, epoch)?;
            }
        }
        self.drain_seed_events();
        self.seeds_before_step()?;
        Ok(self.model_parameters())
    }

    /// Before a training step: isolation sessions for TRAINING seeds, probes on
    /// when any seed trains in isolation, optimizer groups equal to the seeds
    /// that train.
    pub(super) fn seeds_before_step(&mut self) -> Result<()> {
        let Some(control) = self.seeds.as_mut() else {
            return Ok(());
        };
        let mut incubating = false;
        let slots: Vec<(String, usize, SeedStage)> = control
            .kasmina
            .slots()
            .slots()
            .map(|s| {
                (
                    s.spec().id.clone(),
                    s.spec().feature_shape.iter().product(),
                    s.stage(),
                )
            })
            .collect();
        for (id, features, stage) in slots {
            if stage == SeedStage::Training {
                incubating = true;
                if !control.monitor.is_open(&id) {
                    control.monitor.open(&id, features);
                }
            } else if control.monitor.is_open(&id) {
                control.monitor.close(&id);
            }
        }
        control.kasmina.slots_mut().set_isolation_probes(incubating);

        // Optimizer groups follow the seeds that train.
        let training: Vec<(String, Vec<NamedParameter>)> = control
            .kasmina
            .slots()
            .slots()
            .filter_map(|s| s.seed())
            .filter(|s| s.trains())
            .map(|s| (seed_group(s.id()), s.parameters()))
            .collect();
        let wanted: BTreeSet<&String> = training.iter().map(|(g, _)| g).collect();
        let present: Vec<String> = self
            .optimizer
            .groups()
            .iter()
            .map(|g| g.name.clone())
            .filter(|n| n.starts_with("seed/"))
            .collect();
        for name in present {
            if !wanted.contains(&name) {
                self.optimizer.remove_group(&name)?;
            }
        }
        let (lr, wd) = (self.config.optimizer.lr, self.config.optimizer.weight_decay);
        for (name, params) in training {
            if !self.optimizer.groups().iter().any(|g| g.name == name) {
                let mut group = ParamGroup::new(name, params, lr, wd);
                group.lr = lr * self.config.lr.factor(self.global_step);
                self.optimizer.add_group(group)?;
            }
        }
        // A resumed run's seeds continue with their optimizer state.
        if !self.pending_seed_optimizer.is_empty() {
            let mut state = self.optimizer.export_state();
            state.extend(std::mem::take(&mut self.pending_seed_optimizer));
            self.optimizer.import_state(state)?;
        }
        // Every group's parameters must be its owner's.
        for group in self.optimizer.groups() {
            let owner = match group.name.strip_prefix("seed/") {
                Some(id) => Owner::Seed(id.to_string()),
                None => Owner::Host,
            };
            control
                .kasmina
                .registry()
                .validate_update(&owner, &group.params)
                .map_err(|e| Error::Optimizer(format!("group {}: {e}", group.name)))?;
        }
        Ok(())
    }

    /// After the backward pass: each training seed's evidence, and the
    /// step's forward + backward time (every seed's G2 baseline and latency).
    pub(super) fn seeds_after_backward(
        &mut self,
        grads: &GradStore,
        loss: f64,
        step_ms: f64,
    ) -> Result<()> {
        let Some(control) = self.seeds.as_mut() else {
            return Ok(());
        };
        control.kasmina.lifecycle_mut().record_step_time(step_ms);
        let probes = control.kasmina.slots_mut().take_probes();
        let mut evidence = Vec::new();
        for slot in control.kasmina.slots().slots() {
            let Some(seed) = slot.seed() else { continue };
            if !seed.trains() {
                continue;
            }
            let mut sum = 0.0f64;
            for p in seed.parameters() {
                if let Some(g) = grads.get(p.var.as_tensor()) {
                    sum += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
                }
            }
            evidence.push((slot.spec().id.clone(), sum.sqrt(), seed.alpha()));
        }
        control.signals = evidence
            .iter()
            .map(|(slot, norm, _)| SeedSignal {
                slot_id: slot.clone(),
                grad_norm: *norm,
            })
            .collect();
        control.seed_grad_sq = evidence.iter().map(|(_, n, _)| n * n).sum();
        control.last_loss = loss;
        for (slot, grad_norm, alpha) in evidence {
            let isolation_ok = match probes.get(&slot) {
                Some(p) => {
                    let report = control.monitor.check(&slot, p, grads, Instant::now())?;
                    if !report.ok {
                        let detail = format!(
                            "slot {slot}: gradient relative error {:.3e}, cosine {:.6}",
                            report.gradient_relative_error, report.gradient_cosine
                        );
                        // CRITICAL: onto the emergency path at once (the
                        // sink sends it after this step), and as telemetry.
                        self.events.extend(
                            self.emergency
                                .notify(&format!("seed isolation violation: {detail}")),
                        );
                        self.events.push(
                            leyline::telemetry::event(
                                "seed_isolation_violation",
                                TelemetryLevel::Critical,
                                detail,
                            )
                            .attr("slot_id", &slot)
                            .build(),
                        );
                    }
                    report.ok
                }
                None => true,
            };
            control.kasmina.lifecycle_mut().record_step(
                &slot,
                StepEvidence {
                    seed_grad_norm: grad_norm,
                    loss,
                    alpha,
                    isolation_ok,
                    step_ms,
                },
            );
        }
        Ok(())
    }

    /// Seed telemetry packets since the last drain (one per active seed per
    /// step and a global one), and how many were dropped because the buffer
    /// of 1 024 was full.
    pub fn drain_seed_packets(&mut self) -> (Vec<TelemetryPacket>, u64) {
        match self.seeds.as_mut() {
            Some(c) => (
                c.packets.drain(..).collect(),
                std::mem::take(&mut c.dropped_packets),
            ),
            None => (Vec::new(), 0),
        }
    }

    /// After the optimizer step: the step's telemetry, then α ramps advance and
    /// the lifecycle moves on evidence. `host_grad_norm` is the host's share of
    /// the step's gradient norm.
    pub(super) fn seeds_after_step(&mut self, host_grad_norm: f64) -> Result<()> {
        let Some(control) = self.seeds.as_mut() else {
            return Ok(());
        };
        let total = (host_grad_norm * host_grad_norm + control.seed_grad_sq).sqrt();
        let packets = kasmina::telemetry::step_packets(
            &control.kasmina,
            &self.run_id,
            self.global_step,
            now_ms(),
            &control.signals,
            total,
            control.last_loss,
        );
        for packet in packets {
            if control.packets.len() == PACKET_BUFFER {
                control.packets.pop_front();
                control.dropped_packets += 1;
            }
            control.packets.push_back(packet);
        }
        control.kasmina.slots_mut().step();
        control
            .kasmina
            .advance_all(self.global_step, u64::from(self.epoch))?;
        self.drain_seed_events();
        Ok(())
    }

    fn drain_seed_events(&mut self) {
        if let Some(control) = self.seeds.as_mut() {
            let events = control.kasmina.lifecycle_mut().drain_events();
            self.events.extend(events.iter().map(lifecycle_event));
        }
    }

    /// At an epoch end: counterfactual validation for seeds awaiting G4, then
    /// the lifecycle's epoch boundary.
    pub(super) fn seeds_epoch_end(&mut self, with_seeds_accuracy: f64) -> Result<()> {
        let Some(control) = self.seeds.as_ref() else {
            return Ok(());
        };
        let judged: Vec<String> = control
            .kasmina
            .slots()
            .slots()
            .filter(|s| matches!(s.stage(), SeedStage::Shadowing | SeedStage::Probationary))
            .map(|s| s.spec().id.clone())
            .collect();
        // Each judged seed against the model without it alone (every other
        // seed, fossilized ones included, keeps its α): its own contribution.
        for slot in judged {
            let without = self.validate_without(&slot)?.accuracy;
            if let Some(control) = self.seeds.as_mut() {
                control.kasmina.lifecycle_mut().record_counterfactual(
                    &slot,
                    Counterfactual {
                        with_seed: with_seeds_accuracy * 100.0,
                        without_seed: without * 100.0,
                    },
                );
            }
        }
        if let Some(control) = self.seeds.as_mut() {
            control
                .kasmina
                .end_epoch(self.global_step, u64::from(self.epoch))?;
            control
                .kasmina
                .advance_all(self.global_step, u64::from(self.epoch))?;
        }
        self.drain_seed_events();
        Ok(())
    }

    /// Submits the control plane's commands and applies the due ones; each
    /// refusal is a WARNING event with its reason.
    pub(super) fn seeds_apply(&mut self, commands: Vec<AdaptationCommand>) -> Result<()> {
        let Some(control) = self.seeds.as_mut() else {
            if !commands.is_empty() {
                self.events.push(
                    leyline::telemetry::event(
                        "commands_without_kasmina",
                        TelemetryLevel::Warning,
                        format!(
                            "{} command(s) refused: this host does not grow",
                            commands.len()
                        ),
                    )
                    .build(),
                );
            }
            return Ok(());
        };
        let now = now_ms();
        let mut refused = Vec::new();
        for command in commands {
            let id = command.command_id.clone();
            if let Err(r) = control.kasmina.intake_mut().submit(command, now) {
                refused.push((id, r.label(), r.to_string()));
            }
        }
        for outcome in control
            .kasmina
            .fence(self.global_step, u64::from(self.epoch), now)
        {
            if let Err(r) = outcome.result {
                refused.push((outcome.command_id, r.label(), r.to_string()));
            }
        }
        for (id, label, detail) in refused {
            self.events.push(
                leyline::telemetry::event(
                    "command_rejected",
                    TelemetryLevel::Warning,
                    format!("command {id} refused: {detail}"),
                )
                .attr("command_id", id)
                .attr("reason", label)
                .build(),
            );
        }
        self.drain_seed_events();
        Ok(())
    }
}
