//! GPU suite for training, checkpoints and rollback (feature `cuda`; needs an
//! NVIDIA GPU, so every test is ignored by default and named `gpu_…`):
//!
//! ```text
//! cargo test --release -p tolaria --features cuda --test gpu -- --ignored gpu --nocapture
//! ```

#![cfg(feature = "cuda")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use candle_core::{Device, DeviceLocation};
use tolaria::{Config, DeviceKind, Trainer};

#[path = "support/rollback.rs"]
mod rollback;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const GPU: DeviceLocation = DeviceLocation::Cuda { gpu_id: 0 };

fn config(device: DeviceKind, epochs: u32) -> Config {
    Config {
        host: "cnn-impaired".into(),
        epochs,
        train_size: 4_096,
        device,
        ..Config::default()
    }
}

/// The host's parameters, copied to the CPU, by name.
fn weights(trainer: &Trainer) -> BTreeMap<String, Vec<f32>> {
    trainer
        .host()
        .parameters()
        .iter()
        .map(|p| {
            let flat = p.var.as_tensor().flatten_all().unwrap();
            let on_cpu = flat.to_device(&Device::Cpu).unwrap();
            (p.name.clone(), on_cpu.to_vec1::<f32>().unwrap())
        })
        .collect()
}

/// The same run on the GPU and the CPU: every parameter on the GPU, and
/// validation accuracy within a point of the CPU's (the devices round
/// differently, so the runs are close, not bit-identical).
#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda -- --ignored gpu"]
fn gpu_training_tracks_the_cpu_run() {
    let run = |device| {
        let mut trainer = Trainer::new(config(device, 2), 0, "gpu").unwrap();
        let reports = trainer.run(|_| {}).unwrap();
        (trainer, reports.last().unwrap().validation.accuracy)
    };
    let (gpu, on_gpu) = run(DeviceKind::Cuda);
    assert_eq!(gpu.device().location(), GPU);
    for p in gpu.host().parameters() {
        assert_eq!(p.var.device().location(), GPU, "{} left the GPU", p.name);
    }
    assert_eq!(gpu.optimizer().device(), Some(GPU));
    let (_, on_cpu) = run(DeviceKind::Cpu);
    eprintln!("cnn-impaired, 2 epochs: GPU {on_gpu:.4}, CPU {on_cpu:.4}");
    assert!(
        (on_gpu - on_cpu).abs() <= 0.01,
        "GPU {on_gpu:.4} vs CPU {on_cpu:.4}"
    );
}

/// A checkpoint written from GPU tensors resumes on the CPU with exactly
/// the weights it saved, and trains on; and the reverse.
#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda -- --ignored gpu"]
fn gpu_checkpoints_resume_across_devices() {
    for (from, to) in [
        (DeviceKind::Cuda, DeviceKind::Cpu),
        (DeviceKind::Cpu, DeviceKind::Cuda),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let with_dir = |device, epochs| {
            let mut c = config(device, epochs);
            c.checkpoint.dir = Some(dir.path().to_path_buf());
            // The device is part of the training config: changing it is
            // accepted explicitly.
            c.checkpoint.allow_config_change = true;
            c
        };
        let mut first = Trainer::new(with_dir(from, 2), 0, "gpu").unwrap();
        first.run(|_| {}).unwrap();
        let saved = weights(&first);
        drop(first);
        let mut resumed = Trainer::new(with_dir(to, 3), 0, "gpu").unwrap();
        assert!(
            resumed.resumed_from().is_some(),
            "{from:?} → {to:?}: no resume"
        );
        assert_eq!(resumed.epoch(), 2);
        assert_eq!(
            weights(&resumed),
            saved,
            "{from:?} → {to:?}: weights differ"
        );
        let location = resumed.device().location();
        for p in resumed.host().parameters() {
            assert_eq!(p.var.device().location(), location, "{}", p.name);
        }
        let reports = resumed.run(|_| {}).unwrap();
        assert_eq!(reports.iter().map(|r| r.epoch).collect::<Vec<_>>(), [3]);
        assert!(reports[0].validation.accuracy > 0.5, "{from:?} → {to:?}");
    }
}

/// The rollback budgets (DESIGN §10) with 10M parameters and AdamW moments
/// on the GPU: a fast rollback restores the known-good snapshot kept on the
/// device, a full one loads and verifies the newest checkpoint and restores
/// it onto the device.
#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda -- --ignored gpu"]
fn gpu_rollback_within_its_budgets() {
    rollback::rollback_sla(&Device::new_cuda(0).unwrap());
}
