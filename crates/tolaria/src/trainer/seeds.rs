//! Seeds in the training loop: the trainer runs its host through Kasmina's
//! slots, gives every training seed an optimizer group of its own, records the
//! evidence the gates judge (seed gradient norm, loss, α, the isolation
//! monitor's verdict) after each backward pass, advances α ramps and the
//! lifecycle after each optimizer step, measures the counterfactual (α = 0)
//! validation accuracy of seeds in SHADOWING and PROBATIONARY at each epoch
//! end, and applies the control plane's commands at fences.

use std::collections::BTreeSet;

use candle_core::backprop::GradStore;
use kasmina::Counterfactual;
use kasmina::{Kasmina, NamedParameter, SeedSummary, names};
use leyline::v1::{AdaptationCommand, TelemetryLevel, TelemetryPacket};

use super::Trainer;
use crate::error::{Error, Result};
use crate::optim::ParamGroup;

/// Kasmina, as the trainer holds it.
pub(super) struct SeedControl {
    pub(super) kasmina: Kasmina,
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
        snapshot: &crate::checkpoints::Snapshot,
        path: &std::path::Path,
    ) -> Option<Self> {
        let seed = |name: &String| names::is_seed_name(name);
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

impl Trainer {
    /// Grows the host with `kasmina`: its slots run the host's forward, its
    /// seeds train in groups of their own (the host's learning rate and weight
    /// decay), and its lifecycle advances on the evidence this loop records.
    /// The host's parameters are registered as the host's in Kasmina's
    /// registry, which checks every group before each optimizer step.
    pub fn with_kasmina(mut self, mut kasmina: Kasmina) -> Result<Self> {
        kasmina.register_host(&self.host.parameters())?;
        kasmina.set_host_forward_macs(self.host_forward_macs());
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
        self.seeds = Some(SeedControl { kasmina });
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
        self.seeds
            .as_ref()
            .map(|c| c.kasmina.summaries())
            .unwrap_or_default()
    }

    /// Every seed the run germinated, with how far it got (none without
    /// Kasmina).
    pub fn seed_outcomes(&self) -> Vec<kasmina::SeedOutcome> {
        self.seeds
            .as_ref()
            .map(|c| c.kasmina.seed_outcomes().to_vec())
            .unwrap_or_default()
    }

    /// Forward MACs per image of the host's layers, summed; `None` when the
    /// host does not count them.
    pub fn host_forward_macs(&self) -> Option<u64> {
        self.host
            .layer_macs()
            .map(|layers| layers.iter().map(|l| l.macs).sum())
    }

    /// Forward MACs per image of the model now: the host's and every live
    /// seed's (what an image costs at inference after this point).
    pub fn forward_macs(&self) -> Option<u64> {
        let seeds = self
            .seeds
            .as_ref()
            .map_or(0, |c| c.kasmina.seed_forward_macs());
        self.host_forward_macs().map(|host| host + seeds)
    }

    /// Records a training forward over `images` images with the seeds'
    /// histories; returns the MACs per image the seeds added to it.
    pub(super) fn count_forward(&mut self, images: u64) -> u64 {
        self.seeds
            .as_mut()
            .map_or(0, |c| c.kasmina.count_forward(images))
    }

    /// Scalar parameters of the model now: the host's and every seed's that
    /// trains (a fossilized seed is part of the model).
    pub fn parameter_count(&self) -> u64 {
        self.model_parameters()
            .iter()
            .map(|p| p.var.elem_count() as u64)
            .sum()
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
            control.kasmina.cull_newer_than(saved, step, epoch)?;
        }
        self.drain_seed_events();
        self.seeds_before_step()?;
        Ok(self.model_parameters())
    }

    /// Before a training step: Kasmina prepares the step (isolation sessions,
    /// probes) and the optimizer's seed groups become those of the seeds that
    /// train; every group is checked against the registry.
    pub(super) fn seeds_before_step(&mut self) -> Result<()> {
        let Some(control) = self.seeds.as_mut() else {
            return Ok(());
        };
        let training = control.kasmina.before_step();
        let wanted: BTreeSet<&String> = training.iter().map(|g| &g.name).collect();
        let present: Vec<String> = self
            .optimizer
            .groups()
            .iter()
            .map(|g| g.name.clone())
            .filter(|n| names::is_seed_name(n))
            .collect();
        for name in present {
            if !wanted.contains(&name) {
                self.optimizer.remove_group(&name)?;
            }
        }
        let (lr, wd) = (self.config.optimizer.lr, self.config.optimizer.weight_decay);
        for seed in training {
            if !self.optimizer.groups().iter().any(|g| g.name == seed.name) {
                let mut group = ParamGroup::new(seed.name, seed.params, lr, wd);
                group.lr = lr * self.config.lr.factor(self.global_step);
                self.optimizer.add_group(group)?;
            }
        }
        // A resumed run's seeds continue with their optimizer state.
        if !self.pending_seed_optimizer.is_empty() {
            let mut state = self.optimizer.export_state()?;
            state.extend(std::mem::take(&mut self.pending_seed_optimizer));
            self.optimizer.import_state(state)?;
        }
        // Every group's parameters must be its owner's.
        for group in self.optimizer.groups() {
            control.kasmina.check_group(&group.name, &group.params)?;
        }
        Ok(())
    }

    /// After the backward pass: Kasmina records each training seed's evidence
    /// and the step's forward + backward time; an isolation violation goes
    /// onto the emergency path at once.
    pub(super) fn seeds_after_backward(
        &mut self,
        grads: &GradStore,
        loss: f64,
        times: kasmina::StepTimes,
    ) -> Result<()> {
        let Some(control) = self.seeds.as_mut() else {
            return Ok(());
        };
        let report = control.kasmina.after_backward(grads, loss, times)?;
        for violation in &report.isolation_violations {
            // CRITICAL: the sink sends it after this step.
            self.events.extend(
                self.emergency
                    .notify(&format!("seed isolation violation: {}", violation.detail)),
            );
        }
        self.drain_seed_events();
        Ok(())
    }

    /// Seed telemetry packets since the last drain (one per active seed per
    /// step and a global one), and how many were dropped because the buffer
    /// of 1 024 was full.
    pub fn drain_seed_packets(&mut self) -> (Vec<TelemetryPacket>, u64) {
        match self.seeds.as_mut() {
            Some(c) => c.kasmina.drain_packets(),
            None => (Vec::new(), 0),
        }
    }

    /// After the optimizer step: the step's telemetry, α ramps and lifecycle
    /// moves (Kasmina's). `host_grad_norm` is the host's share of the step's
    /// gradient norm.
    pub(super) fn seeds_after_step(&mut self, host_grad_norm: f64) -> Result<()> {
        let Some(control) = self.seeds.as_mut() else {
            return Ok(());
        };
        control.kasmina.after_step(
            &self.run_id,
            self.global_step,
            u64::from(self.epoch),
            host_grad_norm,
        )?;
        self.drain_seed_events();
        Ok(())
    }

    fn drain_seed_events(&mut self) {
        if let Some(control) = self.seeds.as_mut() {
            self.events.extend(control.kasmina.drain_events());
        }
    }

    /// At an epoch end: counterfactual validation for seeds awaiting G4, then
    /// the lifecycle's epoch boundary.
    pub(super) fn seeds_epoch_end(&mut self, with_seeds_accuracy: f64) -> Result<()> {
        let Some(control) = self.seeds.as_ref() else {
            return Ok(());
        };
        // Each judged seed against the model without it alone (every other
        // seed, fossilized ones included, keeps its α): its own contribution.
        for slot in control.kasmina.judged_slots() {
            let without = self.validate_without(&slot)?.accuracy;
            if let Some(control) = self.seeds.as_mut() {
                control.kasmina.record_counterfactual(
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
        control.kasmina.apply_commands(
            commands,
            self.global_step,
            u64::from(self.epoch),
            leyline::unix_now_ms(),
        );
        self.drain_seed_events();
        Ok(())
    }
}
