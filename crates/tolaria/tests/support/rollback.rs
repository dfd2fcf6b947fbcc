//! The rollback-budget measurement (DESIGN §10) shared by the CPU test
//! (`rollback_sla.rs`) and the GPU suite (`gpu.rs`): 10M parameters with
//! AdamW moments on a device, a fast rollback (the known-good snapshot) and
//! a full one (load, verify and restore the newest checkpoint), each timed
//! five times, medians checked against `leyline.budgets.performance`.

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use kasmina::NamedParameter;
use tolaria::checkpoints::{CheckpointMeta, CheckpointStore, Snapshot};
use tolaria::optim::{Optimizer, ParamGroup, Rule, StateEntry};

const PARAMETERS: usize = 10_000_000;

/// 10 tensors of 1M parameters with AdamW moments of the same size, on
/// `device`.
fn model(device: &Device) -> (Vec<NamedParameter>, Optimizer) {
    let per = PARAMETERS / 10;
    let params: Vec<NamedParameter> = (0..10)
        .map(|i| NamedParameter {
            name: format!("layer{i}.weight"),
            var: Var::from_tensor(&Tensor::randn(0f32, 1.0, per, device).unwrap()).unwrap(),
        })
        .collect();
    let mut optimizer = Optimizer::new(Rule::AdamW {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
    })
    .unwrap()
    .on(device.location());
    optimizer
        .add_group(ParamGroup::new("host", params.clone(), 1e-3, 0.0))
        .unwrap();
    let state: BTreeMap<String, StateEntry> = params
        .iter()
        .map(|p| {
            let moment = || Some(Tensor::randn(0f32, 1.0, per, device).unwrap());
            let entry = StateEntry {
                step: 1,
                first: moment(),
                second: moment(),
            };
            (p.name.clone(), entry)
        })
        .collect();
    optimizer.import_state(state).unwrap();
    (params, optimizer)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Measures both rollbacks on `device`, prints the figures and checks them
/// against the budgets; every restore is checked to have restored.
pub(crate) fn rollback_sla(device: &Device) {
    let budgets = leyline::Config::default().budgets.performance;
    let (params, mut optimizer) = model(device);
    let good = Snapshot::capture(&params, &optimizer, 100, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = CheckpointStore::open(dir.path(), 2).unwrap();
    let meta = CheckpointMeta {
        host: "sla".into(),
        seed: 0,
        lr: 1e-3,
        config_sha256: "0".repeat(64),
    };
    let started = Instant::now();
    store.save(&good, &meta).unwrap();
    let write_ms = started.elapsed().as_secs_f64() * 1e3;
    let scribble = |params: &[NamedParameter]| {
        for p in params {
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
        scribble(&params);
        let started = Instant::now();
        good.restore(&params, &mut optimizer).unwrap();
        device.synchronize().unwrap();
        fast.push(started.elapsed().as_secs_f64() * 1e3);
        assert_eq!(sum(), expected, "the fast rollback did not restore");
        scribble(&params);
        let started = Instant::now();
        let (loaded, skipped) = store.load_latest(device).unwrap();
        let loaded = loaded.expect("the checkpoint");
        loaded.snapshot.restore(&params, &mut optimizer).unwrap();
        device.synchronize().unwrap();
        full.push(started.elapsed().as_secs_f64() * 1e3);
        assert!(skipped.is_empty());
        assert_eq!(sum(), expected, "the full rollback did not restore");
    }
    let (fast_ms, full_ms) = (median(fast), median(full));
    println!(
        "rollback-sla: {PARAMETERS} parameters + AdamW moments on {}: fast {fast_ms:.1} ms (budget {} ms), \
         full {full_ms:.1} ms (budget {} ms), checkpoint write {write_ms:.0} ms",
        esper_ops::device::name(device.location()),
        budgets.fast_rollback_ms,
        budgets.full_rollback_ms
    );
    assert!(fast_ms <= budgets.fast_rollback_ms, "fast {fast_ms} ms");
    assert!(full_ms <= budgets.full_rollback_ms, "full {full_ms} ms");
}
