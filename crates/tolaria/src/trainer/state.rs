//! State assembly: the [`SystemStatePacket`] the trainer hands its control
//! hook at every fence and publishes after every epoch, built only from
//! measured values — the run's identity, the fence's generation, the loss
//! since the last fence, validation metrics when a validation pass just ran,
//! and every slot and seed as Kasmina holds them (all DORMANT on a host that
//! does not grow).

use std::collections::BTreeMap;

use leyline::v1::{HardwareContext, SeedStage, SlotState, SystemStatePacket};

use super::{EpochReport, Trainer, Validation};
use crate::config::DeviceKind;
use kasmina::names::seed_group;

/// What one packet reports beyond what the trainer holds.
#[derive(Debug, Clone, Default)]
pub(crate) struct Measured<'a> {
    /// The validation pass that just ran, if any.
    pub(crate) validation: Option<&'a Validation>,
    /// Mean training loss over the steps the packet covers.
    pub(crate) training_loss: Option<f64>,
    /// Further named metrics.
    pub(crate) metrics: BTreeMap<String, f64>,
}

impl Trainer {
    /// Names the experiment reported in every state packet (default `default`).
    pub fn with_experiment(mut self, experiment: impl Into<String>) -> Self {
        self.experiment = experiment.into();
        self
    }

    /// The packet at the end of `report`'s epoch, with `metrics` added.
    pub(crate) fn epoch_state(
        &self,
        report: &EpochReport,
        metrics: BTreeMap<String, f64>,
    ) -> SystemStatePacket {
        self.assemble_state(Measured {
            validation: Some(&report.validation),
            training_loss: Some(report.train_loss),
            metrics,
        })
    }

    /// The packet for the current moment of training.
    pub(crate) fn assemble_state(&self, measured: Measured<'_>) -> SystemStatePacket {
        let (step, epoch) = (self.global_step, u64::from(self.epoch));
        let (slots, seed_states) = match &self.seeds {
            Some(control) => {
                let mut seeds = control.kasmina.seed_states(step, epoch);
                for seed in &mut seeds {
                    let group = seed_group(&seed.seed_id);
                    if let Some(g) = self.optimizer.groups().iter().find(|g| g.name == group) {
                        seed.learning_rate = g.lr;
                    }
                }
                (control.kasmina.slot_states(), seeds)
            }
            None => (
                self.host
                    .slots()
                    .iter()
                    .map(|s| SlotState {
                        slot_id: s.id.clone(),
                        kind: s.kind as i32,
                        feature_shape: s.feature_shape.iter().map(|&d| d as u32).collect(),
                        stage: SeedStage::Dormant as i32,
                        seed_id: String::new(),
                        layer_depth: s.layer_depth,
                        activation_norm: None,
                        gradient_norm: None,
                    })
                    .collect(),
                Vec::new(),
            ),
        };
        let mut training_metrics = measured.metrics;
        if let Some(host) = self.optimizer.groups().iter().find(|g| g.name == "host") {
            training_metrics.insert("learning_rate".into(), host.lr);
        }
        if let Some(v) = measured.validation {
            training_metrics.insert("validation_samples".into(), v.samples as f64);
        }
        // How much of the run is left decides whether a seed has time to
        // pay for itself (the learned controller reads it).
        training_metrics.insert("epochs_total".into(), f64::from(self.config.epochs));
        // What a seed's cost is weighed against: the host's own size and
        // forward MACs per image (absent when the host does not count them).
        let host_parameters: usize = self
            .host
            .parameters()
            .iter()
            .map(|p| p.var.elem_count())
            .sum();
        training_metrics.insert("host_parameters".into(), host_parameters as f64);
        if let Some(macs) = self.host_forward_macs() {
            training_metrics.insert("host_forward_macs".into(), macs as f64);
        }
        let (device_type, memory) = match self.config.device {
            DeviceKind::Cpu => ("cpu", host_memory_gib()),
            DeviceKind::Cuda => ("cuda", None),
        };
        SystemStatePacket {
            version: leyline::CONTRACT_VERSION,
            current_epoch: self.epoch,
            validation_accuracy: measured.validation.map(|v| v.accuracy),
            validation_loss: measured.validation.map(|v| v.loss),
            training_loss: measured.training_loss,
            timestamp_ms: leyline::unix_now_ms(),
            global_step: step,
            packet_id: leyline::new_id(),
            source_subsystem: "tolaria".to_owned(),
            training_run_id: self.run_id.clone(),
            experiment_name: self.experiment.clone(),
            hardware: Some(HardwareContext {
                device_type: device_type.to_owned(),
                device_id: "0".to_owned(),
                total_memory_gib: memory.map_or(0.0, |(total, _)| total),
                available_memory_gib: memory.map_or(0.0, |(_, available)| available),
                ..Default::default()
            }),
            training_metrics,
            seed_states,
            slots,
            generation: self.generation,
        }
    }
}

/// Total and available memory of this machine (GiB) from `/proc/meminfo`;
/// `None` where there is no such file (the packet then says 0 = unknown, and
/// Tamiyo counts the signal as missing).
fn host_memory_gib() -> Option<(f64, f64)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<f64>().ok())
            .map(|kib| kib / (1024.0 * 1024.0))
    };
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}
