//! Packet builders the Tamiyo tests share.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;

use leyline::v1::{
    AlphaState, HardwareContext, SeedStage, SeedState, SlotKind, SlotState, SystemStatePacket,
};

/// `cnn-impaired`'s parameters.
pub(crate) const HOST_PARAMETERS: f64 = 3978.0;
/// `cnn-impaired`'s forward MACs per image.
pub(crate) const HOST_MACS: f64 = 13328.0;

/// A valid packet for a `cnn-impaired`-like host (slots r0 [4,14,14], r1
/// [8,7,7]) at `step` of `epoch`; validation metrics when `validation` is set.
pub(crate) fn packet(epoch: u32, step: u64, validation: Option<(f64, f64)>) -> SystemStatePacket {
    SystemStatePacket {
        version: leyline::CONTRACT_VERSION,
        current_epoch: epoch,
        validation_loss: validation.map(|(l, _)| l),
        validation_accuracy: validation.map(|(_, a)| a),
        training_loss: Some(0.8),
        timestamp_ms: leyline::unix_now_ms(),
        global_step: step,
        packet_id: leyline::new_id(),
        source_subsystem: "test".into(),
        training_run_id: "run".into(),
        experiment_name: "test".into(),
        hardware: Some(HardwareContext {
            device_type: "cpu".into(),
            device_id: "0".into(),
            total_memory_gib: 16.0,
            available_memory_gib: 8.0,
            ..HardwareContext::default()
        }),
        // The host's size is `cnn-impaired`'s; it still gets 20 % of its
        // training images wrong (short of capacity).
        training_metrics: BTreeMap::from([
            ("step_ms".to_string(), 10.0),
            ("train_accuracy".to_string(), 0.8),
            ("host_parameters".to_string(), HOST_PARAMETERS),
            ("host_forward_macs".to_string(), HOST_MACS),
        ]),
        seed_states: Vec::new(),
        slots: vec![slot("r0", &[4, 14, 14], 0), slot("r1", &[8, 7, 7], 1)],
        generation: step,
    }
}

fn slot(id: &str, shape: &[u32], depth: u32) -> SlotState {
    SlotState {
        slot_id: id.into(),
        kind: SlotKind::Conv2d as i32,
        feature_shape: shape.to_vec(),
        stage: SeedStage::Dormant as i32,
        seed_id: String::new(),
        layer_depth: depth,
        activation_norm: None,
        gradient_norm: None,
    }
}

/// Puts a seed in `slot` at `stage`.
pub(crate) fn with_seed(
    mut p: SystemStatePacket,
    slot: &str,
    seed: &str,
    stage: SeedStage,
    age_epochs: u32,
    contribution: Option<f64>,
) -> SystemStatePacket {
    for s in &mut p.slots {
        if s.slot_id == slot {
            s.stage = stage as i32;
            s.seed_id = seed.into();
        }
    }
    p.seed_states.push(SeedState {
        seed_id: seed.into(),
        slot_id: slot.into(),
        stage: stage as i32,
        blueprint_id: "conv.residual".into(),
        age_epochs,
        risk_score: 0.25,
        alpha: Some(AlphaState::default()),
        blend_allowed: stage.blend_allowed(),
        contribution,
        metrics: BTreeMap::from([("isolation_violations".to_string(), 0.0)]),
        ..SeedState::default()
    });
    p
}

/// The built-in catalog as the library lists it.
pub(crate) fn catalog() -> Vec<leyline::v1::CatalogEntry> {
    urza::catalog()
        .iter()
        .map(|d| leyline::v1::CatalogEntry {
            descriptor: Some(d.descriptor()),
            ..Default::default()
        })
        .collect()
}
