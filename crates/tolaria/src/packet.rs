//! The [`SystemStatePacket`] Tolaria publishes after every epoch, built only
//! from real values: the epoch's measured metrics, the run's identity and the
//! host's declared slots (all DORMANT until Kasmina germinates seeds).

use std::collections::BTreeMap;

use leyline::v1::{HardwareContext, SeedStage, SlotState, SystemStatePacket};

use crate::config::DeviceKind;
use crate::trainer::{EpochReport, Trainer};

/// Who the packet is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunIdentity {
    /// Training run id.
    pub run_id: String,
    /// Experiment name.
    pub experiment: String,
}

/// The state packet for the end of `report`'s epoch.
pub fn state_packet(
    trainer: &Trainer,
    report: &EpochReport,
    identity: &RunIdentity,
    device: DeviceKind,
) -> SystemStatePacket {
    let training_metrics = BTreeMap::from([
        ("train_accuracy".to_owned(), report.train_accuracy),
        (
            "train_images_per_second".to_owned(),
            report.train_images_per_second,
        ),
        ("epoch_seconds".to_owned(), report.seconds),
        ("rollbacks".to_owned(), report.rollbacks as f64),
        (
            "validation_samples".to_owned(),
            report.validation.samples as f64,
        ),
    ]);
    let slots = trainer
        .host()
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
        .collect();
    let device_type = match device {
        DeviceKind::Cpu => "cpu",
        DeviceKind::Cuda => "cuda",
    };
    SystemStatePacket {
        version: leyline::CONTRACT_VERSION,
        current_epoch: report.epoch,
        validation_accuracy: Some(report.validation.accuracy),
        validation_loss: Some(report.validation.loss),
        training_loss: Some(report.train_loss),
        timestamp_ms: leyline::unix_now_ms(),
        global_step: report.global_step,
        packet_id: leyline::new_id(),
        source_subsystem: "tolaria".to_owned(),
        training_run_id: identity.run_id.clone(),
        experiment_name: identity.experiment.clone(),
        hardware: Some(HardwareContext {
            device_type: device_type.to_owned(),
            device_id: "0".to_owned(),
            ..Default::default()
        }),
        training_metrics,
        seed_states: Vec::new(),
        slots,
        generation: 0,
    }
}
