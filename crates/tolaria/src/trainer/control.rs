//! The trainer's side of the control fence: assembling the state packet,
//! calling the hook against its deadline, applying what it decided — and the
//! trainer's counters with the hook's own state for a checkpoint, so that a
//! resumed run decides exactly as the uninterrupted one.

use std::time::Instant;

use super::{SinceFence, Trainer, Validation, state};
use crate::checkpoints::ResumeState;
use crate::error::{Error, Result};
use crate::fence::{FenceContext, FenceDecision, FenceKind, FenceStats};

impl Trainer {
    /// The trainer's counters and the hook's state now, for a checkpoint.
    pub(super) fn resume_state(&mut self) -> Result<ResumeState> {
        let controller = match self.fence.hook.as_mut() {
            Some(hook) => hook.export_state().map_err(|source| Error::ControlHook {
                global_step: self.global_step,
                source,
            })?,
            None => None,
        };
        let (batches_drawn, recent_rollbacks, at_chance_epochs) = self.health.state();
        Ok(ResumeState {
            generation: self.generation,
            last_hook_ms: self.last_hook_ms,
            batches_drawn,
            recent_rollbacks,
            at_chance_epochs,
            governor: self.governor.state(),
            controller,
        })
    }

    /// Calls the hook (if any), timing it against the deadline.
    pub(super) fn at_fence(
        &mut self,
        kind: FenceKind,
        last_loss: f64,
        validation: Option<&Validation>,
        train_accuracy: Option<f64>,
        stats: &mut FenceStats,
    ) -> Result<()> {
        stats.fences += 1;
        let SinceFence {
            loss_sum,
            steps,
            step_ms_sum: ms_sum,
        } = std::mem::take(&mut self.since_fence);
        if self.fence.hook.is_none() {
            return Ok(());
        }
        let started = Instant::now();
        self.generation += 1;
        let mut metrics: std::collections::BTreeMap<String, f64> =
            [("fence_steps".to_owned(), steps as f64)].into();
        if steps > 0 {
            metrics.insert("step_ms".to_owned(), ms_sum / steps as f64);
        }
        if let Some(ms) = self.last_hook_ms {
            metrics.insert("last_hook_ms".to_owned(), ms);
        }
        if let Some(accuracy) = train_accuracy {
            // The epoch's training accuracy: the controller's evidence of
            // whether the host still fails to fit its own training data.
            metrics.insert("train_accuracy".to_owned(), accuracy);
        }
        let state = self.assemble_state(state::Measured {
            validation,
            training_loss: (steps > 0).then(|| loss_sum / steps as f64),
            metrics,
        });
        let Some(hook) = self.fence.hook.as_mut() else {
            return Ok(());
        };
        let context = FenceContext {
            kind,
            epoch: self.epoch,
            global_step: self.global_step,
            last_loss,
            validation_accuracy: validation.map(|v| v.accuracy),
            state: &state,
            host: self.host.as_ref(),
            deadline: started + self.fence.deadline,
        };
        let decision = hook
            .at_fence(&context)
            .map_err(|source| Error::ControlHook {
                global_step: self.global_step,
                source,
            })?;
        let FenceDecision {
            commands,
            stop,
            diagnostics,
        } = decision;
        self.events.extend(diagnostics.events);
        self.decisions.extend(diagnostics.decisions);
        self.field_reports.extend(diagnostics.field_reports);
        let took = started.elapsed();
        stats.slowest_ms = stats.slowest_ms.max(took.as_secs_f64() * 1e3);
        self.last_hook_ms = Some(took.as_secs_f64() * 1e3);
        if took > self.fence.deadline {
            stats.deadline_misses += 1;
            self.events.push(
                leyline::telemetry::event(
                    "control_fence_deadline_missed",
                    leyline::v1::TelemetryLevel::Warning,
                    format!(
                        "control hook took {:.1} ms at step {} (deadline {} ms)",
                        took.as_secs_f64() * 1e3,
                        self.global_step,
                        self.fence.deadline.as_millis()
                    ),
                )
                .attr("global_step", self.global_step)
                .build(),
            );
        }
        self.seeds_apply(commands)?;
        self.fence_seeds = self.seed_summaries();
        stats.total_ms += started.elapsed().as_secs_f64() * 1e3;
        self.flush_emergencies();
        if let Some(reason) = stop {
            self.stop = Some(reason);
        }
        Ok(())
    }
}
