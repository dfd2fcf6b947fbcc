//! The step-shaped façade a training loop drives: [`Kasmina::before_step`],
//! [`Kasmina::after_backward`], [`Kasmina::after_step`],
//! [`Kasmina::end_epoch`] and [`Kasmina::apply_commands`]. Every piece of
//! per-step seed work — isolation sessions and probes, the gates' evidence,
//! α ramps, lifecycle moves, telemetry — happens here, so that a change to
//! gates or evidence touches this crate alone. The loop keeps what is its
//! own: the forward and backward pass, the optimizer, validation.

use std::collections::{BTreeSet, VecDeque};
use std::time::Instant;

use candle_core::backprop::GradStore;
use leyline::v1::{AdaptationCommand, SeedStage, TelemetryEvent, TelemetryLevel, TelemetryPacket};

use super::{Kasmina, now_ms};
use crate::error::{Error, Result};
use crate::gates::{Counterfactual, StepEvidence};
use crate::host::{NamedParameter, SlotRunner};
use crate::isolation::IsolationMonitor;
use crate::lifecycle::LifecycleEvent;
use crate::names;
use crate::registry::Owner;
use crate::telemetry::SeedSignal;

/// Seed packets held between drains (the oldest is dropped when full).
const PACKET_BUFFER: usize = 1024;

/// What the façade carries from one call of a step to the next.
pub(crate) struct StepState {
    pub(crate) monitor: IsolationMonitor,
    /// The last step's per-seed gradient norms, for its telemetry.
    signals: Vec<SeedSignal>,
    seed_grad_sq: f64,
    last_loss: f64,
    packets: VecDeque<TelemetryPacket>,
    dropped_packets: u64,
    /// Telemetry events not yet drained (command refusals, isolation
    /// violations); lifecycle events join them at each drain.
    events: Vec<TelemetryEvent>,
}

impl StepState {
    pub(crate) fn new(monitor: IsolationMonitor) -> Self {
        Self {
            monitor,
            signals: Vec::new(),
            seed_grad_sq: 0.0,
            last_loss: f64::NAN,
            packets: VecDeque::new(),
            dropped_packets: 0,
            events: Vec::new(),
        }
    }
}

/// An optimizer group the loop must hold: one per seed that trains.
#[derive(Debug, Clone)]
pub struct SeedGroup {
    /// Group name (see [`crate::names::seed_group`]).
    pub name: String,
    /// The seed's parameters.
    pub params: Vec<NamedParameter>,
}

/// How long a training step's phases took, measured by the loop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepTimes {
    /// The forward pass through the loss, milliseconds.
    pub forward_ms: f64,
    /// Forward and backward pass, milliseconds (every seed's G2 baseline and
    /// latency evidence).
    pub forward_backward_ms: f64,
}

/// A seed whose incubator leaked gradient into the host this step.
#[derive(Debug, Clone, PartialEq)]
pub struct IsolationViolation {
    /// Slot of the seed.
    pub slot_id: String,
    /// The measured error, for people.
    pub detail: String,
}

/// What [`Kasmina::after_backward`] found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepReport {
    /// Sum of the squared gradient norms of every training seed.
    pub seed_grad_sq: f64,
    /// Isolation violations (each is also a CRITICAL telemetry event); the
    /// loop raises them on its emergency path.
    pub isolation_violations: Vec<IsolationViolation>,
}

/// One occupied slot, for reports and displays.
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
    /// Forward MACs per sample the seed costs at its stage (0 where its
    /// module does not run).
    pub forward_macs: u64,
    /// Its measured forward time and share at this stage, once measured.
    pub time: Option<crate::SeedTime>,
}

impl Kasmina {
    /// Registers the host's parameters as the host's (once, before training):
    /// every optimizer group is checked against these owners before each step.
    pub fn register_host(&mut self, params: &[NamedParameter]) -> Result<()> {
        self.registry.register(Owner::Host, params)?;
        Ok(())
    }

    /// Registers a frozen distillation teacher's parameters (replacing any
    /// previous teacher), so that no optimizer group can update them.
    pub fn register_teacher(&mut self, params: &[NamedParameter]) -> Result<()> {
        self.registry.replace_teacher(params)?;
        Ok(())
    }

    /// The slots as the host's forward pass runs them.
    pub fn runner(&mut self) -> &mut dyn SlotRunner {
        &mut self.slots
    }

    /// Before a training step: isolation sessions open for TRAINING seeds and
    /// close for the others; a TRAINING seed's slot is probed on its
    /// session's sampled steps (`IsolationConfig::check_every_steps`). The
    /// seeds' forward clocks restart. Returns the optimizer groups the step must have: one per seed that
    /// trains.
    pub fn before_step(&mut self) -> Vec<SeedGroup> {
        let monitor = &mut self.step.monitor;
        self.slots.choose_probes(|spec, stage| {
            if stage == SeedStage::Training {
                if !monitor.is_open(&spec.id) {
                    monitor.open(&spec.id, spec.feature_shape.iter().product());
                }
                // Sampled steps only: the probes cost two activation-sized
                // variables and their gradients.
                monitor.due(&spec.id)
            } else {
                if monitor.is_open(&spec.id) {
                    monitor.close(&spec.id);
                }
                false
            }
        });
        self.slots.reset_forward_times();
        let tap = self.evidence.begin_step();
        self.slots.set_taps(tap);
        self.slots
            .slots()
            .filter_map(|s| s.seed())
            .filter(|s| s.trains())
            .map(|s| SeedGroup {
                name: names::seed_group(s.id()),
                params: s.parameters(),
            })
            .collect()
    }

    /// Checks that optimizer group `group` may update every one of `params`
    /// (its owner follows from its name).
    pub fn check_group(&self, group: &str, params: &[NamedParameter]) -> Result<()> {
        self.registry
            .validate_update(&names::group_owner(group), params)
            .map_err(|source| Error::GroupUpdate {
                group: group.to_string(),
                source,
            })
    }

    /// After the backward pass: the step's forward + backward time (every
    /// seed's G2 baseline and latency) and each training seed's evidence —
    /// its gradient norm, the loss, α and the isolation monitor's verdict.
    pub fn after_backward(
        &mut self,
        grads: &GradStore,
        loss: f64,
        times: StepTimes,
    ) -> Result<StepReport> {
        let step_ms = times.forward_backward_ms;
        self.lifecycle.record_step_time(step_ms);
        self.timing.record(&self.slots, &mut self.history, times);
        let taps = self.slots.take_taps();
        self.slots.set_taps(false);
        self.evidence.record(taps, grads)?;
        let probes = self.slots.take_probes();
        // Probes belong to the training forward just taken: the forwards
        // until the next step (validation) run unprobed, leaving nothing
        // for a step that is not checked.
        self.slots.set_isolation_probes(false);
        let mut evidence = Vec::new();
        for slot in self.slots.slots() {
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
        let state = &mut self.step;
        state.signals = evidence
            .iter()
            .map(|(slot, norm, _)| SeedSignal {
                slot_id: slot.clone(),
                grad_norm: *norm,
            })
            .collect();
        state.seed_grad_sq = evidence.iter().map(|(_, n, _)| n * n).sum();
        state.last_loss = loss;
        let mut report = StepReport {
            seed_grad_sq: state.seed_grad_sq,
            isolation_violations: Vec::new(),
        };
        for (slot, grad_norm, alpha) in evidence {
            let probe = probes.get(&slot);
            let isolation_ok = match probe {
                Some(p) => {
                    let check = state.monitor.check(&slot, p, grads, Instant::now())?;
                    if !check.ok {
                        let detail = format!(
                            "slot {slot}: gradient relative error {:.3e}, cosine {:.6}",
                            check.gradient_relative_error, check.gradient_cosine
                        );
                        state.events.push(
                            leyline::telemetry::event(
                                "seed_isolation_violation",
                                TelemetryLevel::Critical,
                                detail.clone(),
                            )
                            .attr("slot_id", &slot)
                            .build(),
                        );
                        report.isolation_violations.push(IsolationViolation {
                            slot_id: slot.clone(),
                            detail,
                        });
                    }
                    check.ok
                }
                None => true,
            };
            self.lifecycle.record_step(
                &slot,
                StepEvidence {
                    seed_grad_norm: grad_norm,
                    loss,
                    alpha,
                    isolation_checked: probe.is_some(),
                    isolation_ok,
                    step_ms,
                },
            );
        }
        Ok(report)
    }

    /// After the optimizer step `step` of run `run_id`: the step's telemetry
    /// packets, then α ramps advance and every seed that can moves on
    /// evidence. `host_grad_norm` is the host's share of the step's gradient
    /// norm.
    pub fn after_step(
        &mut self,
        run_id: &str,
        step: u64,
        epoch: u64,
        host_grad_norm: f64,
    ) -> Result<()> {
        let total = (host_grad_norm * host_grad_norm + self.step.seed_grad_sq).sqrt();
        let packets = crate::telemetry::step_packets(
            self,
            run_id,
            step,
            now_ms(),
            &self.step.signals,
            total,
            self.step.last_loss,
        );
        let state = &mut self.step;
        for packet in packets {
            if state.packets.len() == PACKET_BUFFER {
                state.packets.pop_front();
                state.dropped_packets += 1;
            }
            state.packets.push_back(packet);
        }
        self.slots.step();
        self.advance_all(step, epoch)?;
        Ok(())
    }

    /// Seed telemetry packets since the last drain (one per occupied slot
    /// per step and a global one), and how many were dropped because the
    /// buffer of 1 024 was full.
    pub fn drain_packets(&mut self) -> (Vec<TelemetryPacket>, u64) {
        (
            self.step.packets.drain(..).collect(),
            std::mem::take(&mut self.step.dropped_packets),
        )
    }

    /// Telemetry events since the last drain: every gate evaluation, stage
    /// move and cull, every refused command, every isolation violation.
    pub fn drain_events(&mut self) -> Vec<TelemetryEvent> {
        let mut events = std::mem::take(&mut self.step.events);
        events.extend(self.lifecycle.drain_events().iter().map(lifecycle_event));
        events
    }

    /// Slots whose seed awaits G4 (SHADOWING, PROBATIONARY): the loop
    /// validates the model without each of them and reports it with
    /// [`Kasmina::record_counterfactual`] before [`Kasmina::end_epoch`].
    pub fn judged_slots(&self) -> Vec<String> {
        self.slots
            .slots()
            .filter(|s| matches!(s.stage(), SeedStage::Shadowing | SeedStage::Probationary))
            .map(|s| s.spec().id.clone())
            .collect()
    }

    /// The counterfactual measurement of the seed in `slot_id`.
    pub fn record_counterfactual(&mut self, slot_id: &str, measurement: Counterfactual) {
        super::history::note_contribution(
            &mut self.history,
            &self.slots,
            slot_id,
            measurement.contribution(),
        );
        self.lifecycle.record_counterfactual(slot_id, measurement);
    }

    /// Epoch boundary: dwell counters, embargoes and resets, then every seed
    /// that can moves on evidence.
    pub fn end_epoch(&mut self, step: u64, epoch: u64) -> Result<()> {
        self.lifecycle.end_epoch(&mut self.slots, step, epoch)?;
        self.sync_registry();
        self.advance_all(step, epoch)?;
        Ok(())
    }

    /// Submits `commands` and applies every due one; each refusal (on
    /// arrival or when applied) is a WARNING event with its reason.
    pub fn apply_commands(
        &mut self,
        commands: Vec<AdaptationCommand>,
        step: u64,
        epoch: u64,
        now_ms: u64,
    ) -> Vec<CommandRefusal> {
        let mut refused = Vec::new();
        for command in commands {
            let id = command.command_id.clone();
            if let Err(r) = self.intake.submit(command, now_ms) {
                refused.push(CommandRefusal {
                    command_id: id,
                    rejection: r,
                });
            }
        }
        for outcome in self.fence(step, epoch, now_ms) {
            if let Err(rejection) = outcome.result {
                refused.push(CommandRefusal {
                    command_id: outcome.command_id,
                    rejection,
                });
            }
        }
        for r in &refused {
            self.step.events.push(
                leyline::telemetry::event(
                    "command_rejected",
                    TelemetryLevel::Warning,
                    format!("command {} refused: {}", r.command_id, r.rejection),
                )
                .attr("command_id", r.command_id.clone())
                .attr("reason", r.rejection.label())
                .build(),
            );
        }
        refused
    }

    /// Every occupied slot, by id.
    pub fn summaries(&self) -> Vec<SeedSummary> {
        self.slots
            .slots()
            .filter_map(|slot| {
                slot.seed().map(|seed| SeedSummary {
                    slot: slot.spec().id.clone(),
                    seed: seed.id().to_string(),
                    blueprint: seed.module().blueprint_id().to_string(),
                    stage: seed.stage(),
                    alpha: seed.alpha(),
                    forward_macs: seed.forward_macs(),
                    time: self.timing.of(&slot.spec().id, seed.id(), seed.stage()),
                })
            })
            .collect()
    }

    /// Before restoring a snapshot that holds the parameters `saved`: culls
    /// every training seed with a parameter the snapshot lacks (it germinated
    /// after the snapshot, which must not be restored around it).
    pub fn cull_newer_than(
        &mut self,
        saved: &BTreeSet<String>,
        step: u64,
        epoch: u64,
    ) -> Result<()> {
        let newer: Vec<String> = self
            .slots
            .slots()
            .filter(|s| {
                s.seed().is_some_and(|seed| {
                    seed.trains() && seed.parameters().iter().any(|p| !saved.contains(&p.name))
                })
            })
            .map(|s| s.spec().id.clone())
            .collect();
        for slot in newer {
            self.cull(&slot, "rollback to a state before the seed", step, epoch)?;
        }
        Ok(())
    }
}

/// A command refused at a fence.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandRefusal {
    /// The command.
    pub command_id: String,
    /// Why.
    pub rejection: crate::intake::Rejection,
}

/// A lifecycle event as telemetry.
/// A gate input for a log line: up to four significant digits.
fn compact(v: f64) -> String {
    if v != 0.0 && (v.abs() >= 1e5 || v.abs() < 1e-3) {
        format!("{v:.3e}")
    } else {
        format!("{}", (v * 1e4).round() / 1e4)
    }
}

fn lifecycle_event(event: &LifecycleEvent) -> TelemetryEvent {
    match event {
        LifecycleEvent::Transition(t) => {
            use leyline::lifecycle::{gate_label_of, stage_label_of};
            // An ungated edge (a cull, the embargo) names no gate.
            let gate = (t.gate != 0).then(|| gate_label_of(t.gate));
            let mut builder = leyline::telemetry::event(
                "seed_stage_transition",
                TelemetryLevel::Info,
                format!(
                    "seed {} at {}: {} -> {} ({}{})",
                    t.seed_id,
                    t.slot_id,
                    stage_label_of(t.from_stage),
                    stage_label_of(t.to_stage),
                    t.reason,
                    gate.map_or(String::new(), |g| format!(", {g}"))
                ),
            )
            .attr("seed_id", &t.seed_id)
            .attr("slot_id", &t.slot_id)
            .attr("from_stage", stage_label_of(t.from_stage))
            .attr("to_stage", stage_label_of(t.to_stage))
            .attr("global_step", t.global_step);
            if let Some(gate) = gate {
                builder = builder.attr("gate", gate);
            }
            builder.build()
        }
        LifecycleEvent::Gate(g) => {
            // The inputs in name order, compactly: what the gate decided on.
            let inputs: Vec<String> = g
                .inputs
                .iter()
                .map(|(k, v)| format!("{k} {}", compact(*v)))
                .collect();
            let mut builder = leyline::telemetry::event(
                "seed_gate_evaluation",
                if g.passed {
                    TelemetryLevel::Info
                } else {
                    TelemetryLevel::Warning
                },
                format!(
                    "seed {} at {}: {} {}{}{}",
                    g.seed_id,
                    g.slot_id,
                    leyline::lifecycle::gate_label_of(g.gate),
                    if g.passed { "passed" } else { "failed" },
                    if g.reason.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", g.reason)
                    },
                    if inputs.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", inputs.join(", "))
                    }
                ),
            )
            .attr("seed_id", &g.seed_id)
            .attr("slot_id", &g.slot_id)
            .attr("gate", leyline::lifecycle::gate_label_of(g.gate))
            .attr("global_step", g.global_step)
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
