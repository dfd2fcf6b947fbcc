//! The benches' state packets: `slots` convolutional slots, `seeds` of them
//! with live seeds, an epoch end on a plateau (validation loss falling 10 %
//! per epoch, under the heuristic's 30 %), so every step takes the
//! heuristic's germinating path.

use std::collections::BTreeMap;

use leyline::v1::{
    AlphaState, HardwareContext, SeedStage, SeedState, SlotKind, SlotState, SystemStatePacket,
};

pub(crate) fn packet(slots: usize, seeds: usize, epoch: u32) -> SystemStatePacket {
    let mut p = SystemStatePacket {
        version: leyline::CONTRACT_VERSION,
        current_epoch: epoch,
        // Validation loss falls 10 % per epoch: a plateau under the default 30 %.
        validation_loss: Some(0.9f64.powi(epoch as i32)),
        validation_accuracy: Some(0.8),
        training_loss: Some(0.5),
        timestamp_ms: leyline::unix_now_ms(),
        global_step: u64::from(epoch) * 100,
        packet_id: leyline::new_id(),
        source_subsystem: "bench".into(),
        training_run_id: "bench".into(),
        experiment_name: "bench".into(),
        hardware: Some(HardwareContext {
            device_type: "cpu".into(),
            device_id: "0".into(),
            total_memory_gib: 16.0,
            available_memory_gib: 8.0,
            ..HardwareContext::default()
        }),
        training_metrics: BTreeMap::from([
            ("step_ms".to_string(), 20.0),
            ("learning_rate".to_string(), 1e-3),
            // Train accuracy no better than validation: capacity-bound, so a
            // plateau is a reason to grow (the heuristic's germinating path).
            ("train_accuracy".to_string(), 0.8),
            // What a seed's rent is weighed against (cost-aware growth).
            ("host_parameters".to_string(), 100_000.0),
            ("host_forward_macs".to_string(), 5_000_000.0),
        ]),
        seed_states: Vec::new(),
        slots: (0..slots)
            .map(|i| SlotState {
                slot_id: format!("s{i}"),
                kind: SlotKind::Conv2d as i32,
                feature_shape: vec![8, 7, 7],
                stage: SeedStage::Dormant as i32,
                seed_id: String::new(),
                layer_depth: i as u32,
                activation_norm: None,
                gradient_norm: None,
            })
            .collect(),
        generation: u64::from(epoch),
    };
    for i in 0..seeds {
        p.slots[i].stage = SeedStage::Blending as i32;
        p.slots[i].seed_id = format!("seed{i}");
        p.seed_states.push(SeedState {
            seed_id: format!("seed{i}"),
            slot_id: format!("s{i}"),
            stage: SeedStage::Blending as i32,
            blueprint_id: "conv.residual".into(),
            risk_score: 0.25,
            alpha: Some(AlphaState::default()),
            blend_allowed: true,
            metrics: BTreeMap::from([("isolation_violations".to_string(), 0.0)]),
            // Measured and paying its way: the heuristic may grow another
            // (a seed without a measured contribution makes it wait).
            contribution: Some(5.0),
            ..SeedState::default()
        });
    }
    p
}
