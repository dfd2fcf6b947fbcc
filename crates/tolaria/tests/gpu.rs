//! GPU suite for training, checkpoints and rollback (feature `cuda`; needs an
//! NVIDIA GPU, so every test is ignored by default and named `gpu_…`):
//!
//! ```text
//! cargo test --release -p tolaria --features cuda --test gpu -- --ignored gpu --nocapture
//! ```

#![cfg(feature = "cuda")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{Device, DeviceLocation, Tensor, Var};
use kasmina::NamedParameter;
use tolaria::checkpoints::{CheckpointMeta, CheckpointStore, Snapshot};
use tolaria::optim::{Optimizer, ParamGroup, Rule, StateEntry};
use tolaria::{Config, DeviceKind, Trainer};

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
    let device = Device::new_cuda(0).unwrap();
    let per = 1_000_000;
    let params: Vec<NamedParameter> = (0..10)
        .map(|i| NamedParameter {
            name: format!("layer{i}.weight"),
            var: Var::from_tensor(&Tensor::randn(0f32, 1.0, per, &device).unwrap()).unwrap(),
        })
        .collect();
    let rule = Rule::AdamW {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
    };
    let mut optimizer = Optimizer::new(rule).unwrap().on(GPU);
    optimizer
        .add_group(ParamGroup::new("host", params.clone(), 1e-3, 0.0))
        .unwrap();
    let moment = || Some(Tensor::randn(0f32, 1.0, per, &device).unwrap());
    let state: BTreeMap<String, StateEntry> = params
        .iter()
        .map(|p| {
            let entry = StateEntry {
                step: 1,
                first: moment(),
                second: moment(),
            };
            (p.name.clone(), entry)
        })
        .collect();
    optimizer.import_state(state).unwrap();
    let good = Snapshot::capture(&params, &optimizer, 100, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = CheckpointStore::open(dir.path(), 2).unwrap();
    let meta = CheckpointMeta {
        host: "sla".into(),
        seed: 0,
        lr: 1e-3,
        config_sha256: "0".repeat(64),
    };
    store.save(&good, &meta).unwrap();
    let scribble = || {
        for p in &params {
            p.var.set(&p.var.as_tensor().zeros_like().unwrap()).unwrap();
        }
    };
    let sum = || -> f32 {
        let s = params[0].var.as_tensor().sum_all().unwrap();
        s.to_device(&Device::Cpu)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let expected = sum();
    let (mut fast, mut full) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        scribble();
        let started = Instant::now();
        good.restore(&params, &mut optimizer).unwrap();
        device.synchronize().unwrap();
        fast.push(started.elapsed().as_secs_f64() * 1e3);
        assert_eq!(sum(), expected);
        scribble();
        let started = Instant::now();
        let (loaded, skipped) = store.load_latest(&device).unwrap();
        loaded
            .expect("the checkpoint")
            .snapshot
            .restore(&params, &mut optimizer)
            .unwrap();
        device.synchronize().unwrap();
        full.push(started.elapsed().as_secs_f64() * 1e3);
        assert!(skipped.is_empty());
        assert_eq!(sum(), expected);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (fast_ms, full_ms) = (median(fast), median(full));
    let budgets = leyline::Config::default().budgets.performance;
    println!(
        "gpu rollback: 10M parameters + AdamW moments on {:?}: fast {fast_ms:.1} ms (budget {} ms), full {full_ms:.1} ms (budget {} ms)",
        device.location(),
        budgets.fast_rollback_ms,
        budgets.full_rollback_ms
    );
    assert!(fast_ms <= budgets.fast_rollback_ms, "fast {fast_ms} ms");
    assert!(full_ms <= budgets.full_rollback_ms, "full {full_ms} ms");
}
