//! The rollback budgets at 10M parameters (DESIGN §10, `leyline.budgets.
//! performance.fast_rollback_ms` and `full_rollback_ms`): a fast rollback
//! restores the in-RAM known-good snapshot, a full one loads and verifies
//! the newest checkpoint on disk (SHA-256 of every file) and restores it.
//! Ignored in CI (it writes ~120 MB and wants a release build); the
//! `rollback-sla` drill runs it:
//! `cargo test --release -p tolaria --test rollback_sla -- --ignored --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use kasmina::NamedParameter;
use tolaria::checkpoints::{CheckpointMeta, CheckpointStore, Snapshot};
use tolaria::optim::{Optimizer, ParamGroup, Rule, StateEntry};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PARAMETERS: usize = 10_000_000;

/// 10 tensors of 1M parameters with AdamW moments of the same size.
fn model() -> (Vec<NamedParameter>, Optimizer) {
    let per = PARAMETERS / 10;
    let params: Vec<NamedParameter> = (0..10)
        .map(|i| NamedParameter {
            name: format!("layer{i}.weight"),
            var: Var::from_tensor(&Tensor::randn(0f32, 1.0, per, &Device::Cpu).unwrap()).unwrap(),
        })
        .collect();
    let mut optimizer = Optimizer::new(Rule::AdamW {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
    })
    .unwrap();
    optimizer
        .add_group(ParamGroup::new("host", params.clone(), 1e-3, 0.0))
        .unwrap();
    let state: BTreeMap<String, StateEntry> = params
        .iter()
        .map(|p| {
            let moment = || Some(Tensor::randn(0f32, 1.0, per, &Device::Cpu).unwrap());
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

#[test]
#[ignore = "10M parameters, ~120 MB on disk: run by `cargo xtask drill rollback-sla`"]
fn rollback_sla_at_10m_parameters() {
    let budgets = leyline::Config::default().budgets.performance;
    let (params, mut optimizer) = model();
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
    let (mut fast, mut full) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        scribble(&params);
        let started = Instant::now();
        good.restore(&params, &mut optimizer).unwrap();
        fast.push(started.elapsed().as_secs_f64() * 1e3);
        scribble(&params);
        let started = Instant::now();
        let (loaded, skipped) = store.load_latest(&Device::Cpu).unwrap();
        let loaded = loaded.expect("the checkpoint");
        loaded.snapshot.restore(&params, &mut optimizer).unwrap();
        full.push(started.elapsed().as_secs_f64() * 1e3);
        assert!(skipped.is_empty());
    }
    // Restored, not just timed: the weights are the snapshot's again.
    let first = params[0].var.as_tensor().sum_all().unwrap();
    assert!(first.to_scalar::<f32>().unwrap() != 0.0);
    let (fast_ms, full_ms) = (median(fast), median(full));
    println!(
        "rollback-sla: {PARAMETERS} parameters + AdamW moments: fast {fast_ms:.1} ms (budget {} ms), \
         full {full_ms:.1} ms (budget {} ms), checkpoint write {write_ms:.0} ms",
        budgets.fast_rollback_ms, budgets.full_rollback_ms
    );
    assert!(fast_ms <= budgets.fast_rollback_ms, "fast {fast_ms} ms");
    assert!(full_ms <= budgets.full_rollback_ms, "full {full_ms} ms");
}
