//! Fast rollback: capturing and restoring a known-good snapshot (parameters and
//! AdamW moments) at 1M and 10M parameters, against a baseline in the same run: a
//! plain copy of the same number of parameter bytes. Goal: restore ≤ 50 ms at 10M.
//! Run: `cargo bench -p tolaria --bench snapshot`.

// A benchmark that cannot set itself up should abort loudly, hence `expect`.
#![allow(missing_docs, clippy::expect_used)]

use std::collections::BTreeMap;
use std::hint::black_box;

use candle_core::{Device, Tensor, Var};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kasmina::NamedParameter;
use tolaria::checkpoints::Snapshot;
use tolaria::optim::{Optimizer, ParamGroup, Rule, StateEntry};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `total` parameters in 10 tensors, with AdamW moments of the same size.
fn model(total: usize) -> (Vec<NamedParameter>, Optimizer) {
    let per = total / 10;
    let params: Vec<NamedParameter> = (0..10)
        .map(|i| NamedParameter {
            name: format!("layer{i}.weight"),
            var: Var::from_tensor(&Tensor::randn(0f32, 1.0, per, &Device::Cpu).expect("randn"))
                .expect("var"),
        })
        .collect();
    let mut optimizer = Optimizer::new(Rule::AdamW {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
    })
    .expect("rule");
    optimizer
        .add_group(ParamGroup::new("host", params.clone(), 1e-3, 0.0))
        .expect("group");
    let state: BTreeMap<String, StateEntry> = params
        .iter()
        .map(|p| {
            let moment = || Some(Tensor::randn(0f32, 1.0, per, &Device::Cpu).expect("randn"));
            (
                p.name.clone(),
                StateEntry {
                    step: 1,
                    first: moment(),
                    second: moment(),
                },
            )
        })
        .collect();
    optimizer.import_state(state).expect("state");
    (params, optimizer)
}

fn bench(c: &mut Criterion) {
    for (label, total) in [("1M", 1_000_000usize), ("10M", 10_000_000)] {
        let (params, mut optimizer) = model(total);
        let mut group = c.benchmark_group(format!("snapshot_{label}"));
        group.throughput(Throughput::Bytes((total * 4) as u64));
        group.sample_size(20);
        let raw: Vec<f32> = vec![1.0; total];
        group.bench_function("baseline_copy_param_bytes", |b| {
            b.iter(|| black_box(raw.clone()))
        });
        group.bench_function("capture", |b| {
            b.iter(|| black_box(Snapshot::capture(&params, &optimizer, 1, 1).expect("capture")))
        });
        let snapshot = Snapshot::capture(&params, &optimizer, 1, 1).expect("capture");
        group.bench_function("restore", |b| {
            b.iter(|| snapshot.restore(&params, &mut optimizer).expect("restore"))
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
