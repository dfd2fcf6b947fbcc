//! Rollback (fast from the in-RAM known-good snapshot, full from the newest
//! checkpoint), rollback deadlines and SLA counters, and the collection of
//! background checkpoint writes.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use leyline::v1::EmergencyLevel;

use super::{Trainer, checkpoint_meta};
use crate::checkpoints::{RollbackReport, RollbackStats, Written};
use crate::error::{Error, Result};
use crate::governor::{Governor, GovernorConfig};

/// The store a rollback restores from.
#[derive(Debug, Clone, Copy)]
enum Tier {
    /// The in-RAM known-good snapshot.
    Fast,
    /// The newest valid checkpoint on disk.
    Full,
}

impl Tier {
    fn as_str(self) -> &'static str {
        match self {
            Tier::Fast => "fast",
            Tier::Full => "full",
        }
    }
}

/// What judges whether the run can still learn: the rollbacks within the
/// recent window, the governor as it was at the known-good state, and how many
/// epoch ends in a row validated at chance.
#[derive(Debug, Clone)]
pub(super) struct Health {
    /// Batches drawn so far (never rewound by a rollback, unlike the step).
    pub(super) attempts: u64,
    /// The `attempts` at which each recent rollback happened.
    recent: VecDeque<u64>,
    /// The governor's statistics when the known-good state was taken.
    pub(super) known_good_governor: Governor,
    at_chance: u32,
}

impl Health {
    pub(super) fn new(governor: &GovernorConfig, batch_size: usize) -> Self {
        Self {
            attempts: 0,
            recent: VecDeque::new(),
            known_good_governor: Governor::new(governor.clone(), batch_size),
            at_chance: 0,
        }
    }

    /// Batches drawn, the rollbacks within the window, the epoch ends at
    /// chance in a row: for a checkpoint.
    pub(super) fn state(&self) -> (u64, Vec<u64>, u32) {
        (
            self.attempts,
            self.recent.iter().copied().collect(),
            self.at_chance,
        )
    }

    /// Continues from a checkpoint's counters, with the governor of then.
    pub(super) fn restore(&mut self, state: &crate::checkpoints::ResumeState, governor: Governor) {
        self.attempts = state.batches_drawn;
        self.recent = state.recent_rollbacks.iter().copied().collect();
        self.at_chance = state.at_chance_epochs;
        self.known_good_governor = governor;
    }
}

impl Trainer {
    /// Restores the last known-good snapshot (and the governor's statistics
    /// of then) after a loss explosion, raising the emergency level; more than
    /// `max_rollbacks` within `rollback_window_batches` batches halt the run.
    pub(super) fn rollback(&mut self, reason: String) -> Result<()> {
        let now = self.health.attempts;
        let window = self.config.rollback_window_batches;
        self.health.recent.push_back(now);
        while self
            .health
            .recent
            .front()
            .is_some_and(|at| now.saturating_sub(*at) >= window)
        {
            self.health.recent.pop_front();
        }
        let within = self.health.recent.len();
        if within > self.config.max_rollbacks as usize {
            return self.halt(format!(
                "{within} loss explosions within the last {window} batches, the last: {reason}"
            ));
        }
        if self.emergency.level() < EmergencyLevel::Elevated {
            let event = self
                .emergency
                .escalate(EmergencyLevel::Elevated, &format!("rollback: {reason}"))?;
            self.events.extend(event);
        }
        let started = Instant::now();
        let saved: BTreeSet<String> = self
            .known_good
            .parameter_names()
            .map(str::to_owned)
            .collect();
        let params = self.prepare_restore(&saved)?;
        match self.known_good.restore(&params, &mut self.optimizer) {
            Ok(()) => {
                let report =
                    self.rollback_report(Tier::Fast, reason, self.known_good.global_step, started);
                self.rollbacks.push(report);
                self.global_step = self.known_good.global_step;
                self.governor = self.health.known_good_governor.clone();
                Ok(())
            }
            // The in-RAM state could not be restored: fall back to the disk.
            Err(fast) if self.checkpoints.is_some() => self
                .full_rollback(&format!("{reason}; fast restore failed: {fast}"))
                .map(|_| ()),
            Err(fast) => Err(fast),
        }
    }

    /// Full-tier rollback: restores the newest valid checkpoint on disk
    /// (parameters, optimizer state, step and epoch) and makes it the known-good
    /// state. Errors when no checkpoint directory is configured or none is valid.
    pub fn full_rollback(&mut self, reason: &str) -> Result<RollbackReport> {
        let started = Instant::now();
        let Some(writer) = self.checkpoints.as_mut() else {
            return Err(Error::Config(leyline::ConfigError::at(
                "tolaria.checkpoint.dir",
                format!("a full rollback ({reason}) needs checkpoints, and none are configured"),
            )));
        };
        // The newest checkpoint may still be in the writer's hands.
        let pending = writer.flush();
        let (loaded, skipped) = writer.store().load_latest(&self.device)?;
        self.record_writes(pending)?;
        self.skipped_checkpoints.extend(skipped);
        let Some(loaded) = loaded else {
            return Err(Error::Data {
                path: self.config.checkpoint.dir.clone().unwrap_or_default(),
                detail: format!("a full rollback ({reason}) found no valid checkpoint"),
            });
        };
        let saved: BTreeSet<String> = loaded
            .snapshot
            .parameter_names()
            .map(str::to_owned)
            .collect();
        let params = self.prepare_restore(&saved)?;
        loaded.snapshot.restore(&params, &mut self.optimizer)?;
        self.global_step = loaded.manifest.global_step;
        self.epoch = loaded.manifest.epoch;
        self.known_good = loaded.snapshot;
        // The checkpoint does not hold the governor's statistics: judge the
        // restored model afresh (a warmup) rather than by the later run's.
        self.governor = Governor::new(self.config.governor.clone(), self.config.batch_size);
        self.health.known_good_governor = self.governor.clone();
        let report = self.rollback_report(Tier::Full, reason.to_owned(), self.global_step, started);
        self.rollbacks.push(report.clone());
        Ok(report)
    }

    /// Halts the run: a HALT signal, the known-good state checkpointed, and
    /// [`Error::Halted`] with `why`.
    fn halt(&mut self, why: String) -> Result<()> {
        let event = self.emergency.escalate(EmergencyLevel::Halt, &why)?;
        self.events.extend(event);
        let checkpoint = match &mut self.checkpoints {
            Some(writer) => {
                let meta = checkpoint_meta(
                    &self.config,
                    self.seed,
                    &self.config_sha256,
                    self.known_good.global_step,
                );
                let path = writer.submit(self.known_good.clone(), meta)?;
                self.collect_writes(true)?;
                Some(path)
            }
            None => None,
        };
        Err(Error::Halted {
            reason: why,
            step: self.global_step,
            checkpoint,
        })
    }

    /// Halts a run whose validation accuracy stayed below 1.5 × chance
    /// (1 / `classes`) for `governor.chance_epochs` epoch ends in a row.
    pub(super) fn judge_learning(&mut self, accuracy: f64, classes: usize) -> Result<()> {
        let epochs = self.config.governor.chance_epochs;
        if epochs == 0 || classes < 2 {
            return Ok(());
        }
        let chance = 1.0 / classes as f64;
        if accuracy >= 1.5 * chance {
            self.health.at_chance = 0;
            return Ok(());
        }
        self.health.at_chance += 1;
        if self.health.at_chance < epochs {
            return Ok(());
        }
        self.halt(format!(
            "validation accuracy {:.2} % is at chance ({:.2} % for {classes} classes) at {} epoch \
             end(s) in a row: the run is not learning",
            100.0 * accuracy,
            100.0 * chance,
            self.health.at_chance
        ))
    }

    fn rollback_report(
        &mut self,
        tier: Tier,
        reason: String,
        restored_step: u64,
        started: Instant,
    ) -> RollbackReport {
        let took = started.elapsed();
        let (deadline, counters) = match tier {
            Tier::Fast => (
                self.rollback_deadlines.0,
                (
                    &mut self.rollback_stats.fast,
                    &mut self.rollback_stats.fast_missed,
                ),
            ),
            Tier::Full => (
                self.rollback_deadlines.1,
                (
                    &mut self.rollback_stats.full,
                    &mut self.rollback_stats.full_missed,
                ),
            ),
        };
        *counters.0 += 1;
        let tripped = (took > deadline).then(|| {
            *counters.1 += 1;
            // The moment the deadline passed, on the wall clock.
            leyline::unix_now_ms().saturating_sub((took - deadline).as_millis() as u64)
        });
        RollbackReport {
            tier: tier.as_str(),
            reason,
            at_step: self.global_step,
            restored_step,
            restore_ms: took.as_secs_f64() * 1e3,
            deadline_ms: deadline.as_secs_f64() * 1e3,
            deadline_tripped_at_ms: tripped,
        }
    }

    /// Sets the fast and full rollback deadlines (the runtime passes
    /// `leyline.budgets.performance.fast_rollback_ms` / `full_rollback_ms`).
    pub fn with_rollback_deadlines(mut self, fast: Duration, full: Duration) -> Self {
        self.rollback_deadlines = (fast, full);
        self
    }

    /// SLA compliance of the rollbacks so far.
    pub fn rollback_stats(&self) -> RollbackStats {
        self.rollback_stats
    }

    /// Checkpoints confirmed written so far.
    pub fn checkpoints_written(&self) -> &[Written] {
        &self.written
    }

    /// Closes an open profiler window and waits for every queued checkpoint
    /// write; an error if any write failed.
    pub fn finish(&mut self) -> Result<()> {
        self.profiler.close(&mut self.events);
        self.collect_writes(true)
    }

    /// Chrome trace files written by the profiler so far.
    pub fn profiler_traces(&self) -> &[std::path::PathBuf] {
        self.profiler.traces()
    }

    /// Profiler failures so far (each also a telemetry event).
    pub fn profiler_failures(&self) -> u32 {
        self.profiler.failures()
    }

    /// Gathers finished checkpoint writes (waiting for all when `wait`).
    pub(super) fn collect_writes(&mut self, wait: bool) -> Result<()> {
        let outcomes = match self.checkpoints.as_mut() {
            Some(writer) if wait => writer.flush(),
            Some(writer) => writer.finished(),
            None => Vec::new(),
        };
        self.record_writes(outcomes)
    }

    fn record_writes(&mut self, outcomes: Vec<Result<Written>>) -> Result<()> {
        for outcome in outcomes {
            self.written.push(outcome?);
        }
        Ok(())
    }
}
