//! Knowledge distillation in the loop: a frozen copy of the host (the teacher,
//! snapshotted when distillation is switched on) adds
//! `w · T² · KL(teacher ‖ student)` to the task loss of every step.

use candle_core::Tensor;
use kasmina::{DistillConfig, check_budget, kd_loss};
use kasmina::{DormantSlots, Host};

use super::Trainer;
use crate::error::{Error, Result};

/// The teacher and its settings.
pub(super) struct Teacher {
    host: Box<dyn Host>,
    config: DistillConfig,
}

impl Trainer {
    /// Distils from a frozen snapshot of the host as it is now. The snapshot
    /// must fit `config.memory_budget_bytes`; its parameters are registered as
    /// the teacher's (replacing any previous teacher) when the host grows, so
    /// that no optimizer group can update them.
    pub fn with_distillation(mut self, config: DistillConfig) -> Result<Self> {
        config.validate()?;
        let current = self.host.parameters();
        check_budget(&current, &config)?;
        let teacher = crate::hosts::build_with_ops(
            &self.config.host,
            self.seed,
            &self.device,
            self.config.ops,
        )?;
        let teacher_params = teacher.parameters();
        for p in &teacher_params {
            let source = current.iter().find(|c| c.name == p.name).ok_or_else(|| {
                Error::Optimizer(format!(
                    "teacher parameter {} has no host counterpart",
                    p.name
                ))
            })?;
            p.var.set(&source.var.as_tensor().detach().copy()?)?;
        }
        if let Some(control) = self.seeds.as_mut() {
            control.kasmina.register_teacher(&teacher_params)?;
        }
        self.teacher = Some(Teacher {
            host: teacher,
            config,
        });
        Ok(self)
    }

    /// The teacher's parameters (frozen), when distillation is on.
    pub fn teacher_parameters(&self) -> Vec<kasmina::NamedParameter> {
        self.teacher
            .as_ref()
            .map(|t| t.host.parameters())
            .unwrap_or_default()
    }

    /// The KD term for a batch, when distillation is on.
    pub(super) fn distillation_loss(
        &self,
        images: &Tensor,
        student_logits: &Tensor,
    ) -> Result<Option<Tensor>> {
        let Some(teacher) = &self.teacher else {
            return Ok(None);
        };
        let teacher_logits = teacher
            .host
            .forward_with_slots(images, &mut DormantSlots)?
            .detach();
        Ok(Some(kd_loss(
            student_logits,
            &teacher_logits,
            &teacher.config,
        )?))
    }
}
