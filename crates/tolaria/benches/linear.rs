//! One dense layer, forward + backward, two ways in one run: esper-ops'
//! fused `linear` (one GEMM forward, one per needed gradient backward) and
//! candle's matmul + broadcast add (+ ReLU), at the shapes the reference
//! hosts and the GNN policy use (batch 128; the first layer's input is the
//! data batch, untracked, as in training). Run: `cargo bench -p tolaria
//! --bench linear`.

// A benchmark that cannot set itself up should abort loudly, hence `expect`.
#![allow(missing_docs, clippy::expect_used)]

use candle_core::{Device, Tensor, Var};
use criterion::{Criterion, criterion_group, criterion_main};
use esper_ops::Activation;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// (name, rows, inputs, outputs, ReLU, input tracked)
const SHAPES: [(&str, usize, usize, usize, bool, bool); 4] = [
    ("mlp fc1 128x784->128 relu", 128, 784, 128, true, false),
    ("mlp fc2 128x128->10", 128, 128, 10, false, true),
    ("cnn fc 128x1568->10", 128, 1568, 10, false, true),
    ("gnn 64x64->64 relu", 64, 64, 64, true, true),
];

fn bench(c: &mut Criterion) {
    esper_ops::alloc::retain_freed_memory();
    let pool = esper_ops::ComputePool::new(0).expect("pool");
    for (name, m, k, n, relu, tracked) in SHAPES {
        let mut group = c.benchmark_group(format!("linear/{name}"));
        let x = Var::randn(0f32, 1.0, (m, k), &Device::Cpu).expect("x");
        let x: Tensor = if tracked {
            x.as_tensor().clone()
        } else {
            x.as_tensor().detach()
        };
        let w = Var::randn(0f32, 0.05, (n, k), &Device::Cpu).expect("w");
        let b = Var::randn(0f32, 0.05, n, &Device::Cpu).expect("b");
        let g = Tensor::randn(0f32, 1.0, (m, n), &Device::Cpu).expect("g");
        let act = if relu {
            Activation::Relu
        } else {
            Activation::Identity
        };
        group.bench_function("candle composition", |bench| {
            bench.iter(|| {
                pool.run(|| {
                    let y = x
                        .matmul(&w.as_tensor().t().expect("t"))
                        .and_then(|y| y.broadcast_add(b.as_tensor()))
                        .and_then(|y| act.apply(y))
                        .expect("forward");
                    (y * &g)
                        .and_then(|l| l.sum_all())
                        .expect("loss")
                        .backward()
                        .expect("backward")
                })
            });
        });
        group.bench_function("esper-ops linear", |bench| {
            bench.iter(|| {
                pool.run(|| {
                    let y =
                        esper_ops::linear(&x, w.as_tensor(), b.as_tensor(), act).expect("forward");
                    (y * &g)
                        .and_then(|l| l.sum_all())
                        .expect("loss")
                        .backward()
                        .expect("backward")
                })
            });
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
