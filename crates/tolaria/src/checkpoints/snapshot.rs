//! In-RAM snapshots of parameters and optimizer state.

use std::collections::BTreeMap;

use candle_core::Tensor;
use kasmina::NamedParameter;

use crate::error::{Error, Result};
use crate::optim::{Optimizer, StateEntry};

/// A deep copy of the trainable state at one step.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Global optimizer step the snapshot was taken at.
    pub global_step: u64,
    /// Completed epochs at that step.
    pub epoch: u32,
    pub(crate) params: BTreeMap<String, Tensor>,
    pub(crate) optimizer: BTreeMap<String, StateEntry>,
    /// Kasmina's seeds at that step (a growing host only).
    pub(crate) kasmina: Option<kasmina::KasminaState>,
    /// The trainer's counters and the control hook's state at that step.
    pub(crate) resume: Option<super::ResumeState>,
}

/// One rollback: why, from where to where, and how long the restore took.
#[derive(Debug, Clone, PartialEq)]
pub struct RollbackReport {
    /// Which store it restored from: `fast` (the in-RAM known-good snapshot) or
    /// `full` (the newest valid checkpoint on disk).
    pub tier: &'static str,
    /// What triggered it.
    pub reason: String,
    /// Step at which the fault was seen.
    pub at_step: u64,
    /// Step of the state restored.
    pub restored_step: u64,
    /// Restore time, milliseconds.
    pub restore_ms: f64,
    /// The tier's deadline (SLA), milliseconds.
    pub deadline_ms: f64,
    /// Wall-clock time (Unix ms) at which the deadline was exceeded, if it was.
    pub deadline_tripped_at_ms: Option<u64>,
}

impl RollbackReport {
    /// Whether the restore met its deadline.
    pub fn within_deadline(&self) -> bool {
        self.deadline_tripped_at_ms.is_none()
    }
}

/// SLA compliance of rollbacks so far, per tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RollbackStats {
    /// Fast (in-RAM) restores.
    pub fast: u32,
    /// … that exceeded the fast deadline.
    pub fast_missed: u32,
    /// Full (checkpoint) restores.
    pub full: u32,
    /// … that exceeded the full deadline.
    pub full_missed: u32,
}

impl Snapshot {
    /// Copies every parameter and the optimizer's state.
    pub fn capture(
        params: &[NamedParameter],
        optimizer: &Optimizer,
        global_step: u64,
        epoch: u32,
    ) -> Result<Self> {
        let params = params
            .iter()
            .map(|p| Ok((p.name.clone(), p.var.as_tensor().copy()?)))
            .collect::<Result<_>>()?;
        // Optimizer moments are replaced by new tensors at every step, never
        // written in place, so sharing them is safe.
        Ok(Self {
            global_step,
            epoch,
            params,
            optimizer: optimizer.export_state()?,
            kasmina: None,
            resume: None,
        })
    }

    /// The snapshot with Kasmina's state at the same step.
    pub(crate) fn with_kasmina(mut self, state: Option<kasmina::KasminaState>) -> Self {
        self.kasmina = state;
        self
    }

    /// The snapshot with the trainer's and the controller's state at the
    /// same step.
    pub(crate) fn with_resume(mut self, state: super::ResumeState) -> Self {
        self.resume = Some(state);
        self
    }

    /// Bytes of parameter data held.
    pub fn param_bytes(&self) -> usize {
        self.params
            .values()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }

    /// Writes the snapshot back into `params` and `optimizer`. The parameter names
    /// must be exactly the snapshot's.
    pub fn restore(&self, params: &[NamedParameter], optimizer: &mut Optimizer) -> Result<()> {
        // Every given parameter must be saved; saved parameters that are not
        // given may only be seeds' (`seed/…`: seeds culled since the snapshot).
        let given: std::collections::BTreeSet<&str> =
            params.iter().map(|p| p.name.as_str()).collect();
        if let Some(missing) = self
            .params
            .keys()
            .find(|name| !given.contains(name.as_str()) && !kasmina::names::is_seed_name(name))
        {
            return Err(Error::Optimizer(format!(
                "snapshot holds {missing}, which the model does not have ({} saved, {} given)",
                self.params.len(),
                params.len()
            )));
        }
        // Every check before anything changes: a restore is whole or nothing.
        for p in params {
            let saved = self
                .params
                .get(&p.name)
                .ok_or_else(|| Error::Optimizer(format!("snapshot lacks parameter {}", p.name)))?;
            if saved.dims() != p.var.dims() {
                return Err(Error::Optimizer(format!(
                    "snapshot shape {:?} of {} differs from {:?}",
                    saved.dims(),
                    p.name,
                    p.var.dims()
                )));
            }
            let device = optimizer
                .device()
                .unwrap_or_else(|| p.var.device().location());
            esper_ops::device::ensure_on(saved, device, || {
                format!("the saved value of {}", p.name)
            })?;
        }
        // The optimizer's state next: its import checks names, shapes and
        // devices, and changes nothing when it refuses. State of seeds that
        // are gone has no group to go back to.
        let known: std::collections::BTreeSet<String> = optimizer
            .groups()
            .iter()
            .flat_map(|g| g.params.iter().map(|p| p.name.clone()))
            .collect();
        let state = self
            .optimizer
            .iter()
            .filter(|(name, _)| known.contains(*name) || !kasmina::names::is_seed_name(name))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        optimizer.import_state(state)?;
        for p in params {
            if let Some(saved) = self.params.get(&p.name) {
                p.var.set(saved)?;
            }
        }
        Ok(())
    }

    /// Names of the saved parameters.
    pub fn parameter_names(&self) -> impl Iterator<Item = &str> {
        self.params.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::{ParamGroup, Rule};
    use candle_core::{Device, DeviceLocation, Var};

    /// Device discipline with a double: a snapshot (a known-good state, or a
    /// checkpoint loaded on the wrong device) restored into a model declared
    /// on `cuda:0` is refused naming the tensor, and nothing is written.
    #[test]
    fn a_snapshot_off_the_model_device_is_refused_whole() {
        let p = NamedParameter {
            name: "w".into(),
            var: Var::from_vec(vec![1f32, 2.0], 2, &Device::Cpu).unwrap(),
        };
        let rule = Rule::Sgd {
            momentum: 0.0,
            nesterov: false,
        };
        let mut opt = Optimizer::new(rule).unwrap();
        opt.add_group(ParamGroup::new("host", vec![p.clone()], 0.1, 0.0))
            .unwrap();
        let snap = Snapshot::capture(std::slice::from_ref(&p), &opt, 0, 0).unwrap();
        p.var
            .set(&Tensor::new(&[5f32, 6.0], &Device::Cpu).unwrap())
            .unwrap();
        opt.declare_device(DeviceLocation::Cuda { gpu_id: 0 });
        let e = snap
            .restore(std::slice::from_ref(&p), &mut opt)
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("the saved value of w is on cpu, the model on cuda:0"),
            "{e}"
        );
        assert_eq!(
            p.var.to_vec1::<f32>().unwrap(),
            [5.0, 6.0],
            "written anyway"
        );
        // On the model's device it restores.
        opt.declare_device(DeviceLocation::Cpu);
        snap.restore(std::slice::from_ref(&p), &mut opt).unwrap();
        assert_eq!(p.var.to_vec1::<f32>().unwrap(), [1.0, 2.0]);
    }
}
