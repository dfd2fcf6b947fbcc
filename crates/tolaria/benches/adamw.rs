//! One AdamW update of a parameter, two ways in the same run: the candle
//! composition (about a dozen parameter-sized temporaries, then
//! `Var::set`) and the fused in-place pass (`esper_ops::adamw_update`,
//! moments as plain buffers) that Tolaria's optimizer uses on the CPU. Sizes:
//! `mlp`'s 101 770 parameters and 1M. Run: `cargo bench -p tolaria --bench adamw`.

// A benchmark that cannot set itself up should abort loudly, hence `expect`.
#![allow(missing_docs, clippy::expect_used)]

use candle_core::{Device, Tensor, Var};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use esper_ops::{AdamWStep, adamw_composition, adamw_update};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const STEP: AdamWStep = AdamWStep {
    lr: 1e-3,
    weight_decay: 0.01,
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    step: 10,
};

fn bench(c: &mut Criterion) {
    for n in [101_770usize, 1_000_000] {
        let mut group = c.benchmark_group(format!("adamw/{n}"));
        group.throughput(Throughput::Elements(n as u64));
        let randn = || Tensor::randn(0f32, 1.0, n, &Device::Cpu).expect("randn");
        let grad = randn();
        let param = Var::from_tensor(&randn()).expect("var");
        let (mut m, mut v) = (randn(), randn().abs().expect("abs"));
        group.bench_function("candle composition", |b| {
            b.iter(|| {
                let p = param.as_tensor().detach();
                let (updated, m2, v2) =
                    adamw_composition(&p, &grad, Some(&m), Some(&v), STEP).expect("update");
                param.set(&updated).expect("set");
                (m, v) = (m2, v2);
            });
        });
        let mut first = randn().to_vec1::<f32>().expect("vec");
        let mut second: Vec<f32> = first.iter().map(|x| x.abs()).collect();
        group.bench_function("fused in place", |b| {
            b.iter(|| {
                adamw_update(param.as_tensor(), &grad, &mut first, &mut second, STEP)
                    .expect("update");
            });
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
