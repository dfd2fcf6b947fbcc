//! Training-step throughput of the reference hosts (batch 128: forward, loss,
//! backward, AdamW), in images per second. Run: `cargo bench -p tolaria --bench step`.

// A benchmark that cannot set itself up should abort loudly, hence `expect`.
#![allow(missing_docs, clippy::expect_used)]

use candle_core::{Device, Tensor};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kasmina::DormantSlots;
use tolaria::optim::{Optimizer, ParamGroup, Rule};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 128;

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("train_step");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(10);
    let x = Tensor::randn(0f32, 1.0, (BATCH, 1, 28, 28), &Device::Cpu).expect("input");
    let labels: Vec<u32> = (0..BATCH as u32).map(|i| i % 10).collect();
    let y = Tensor::from_vec(labels, BATCH, &Device::Cpu).expect("labels");
    for name in tolaria::hosts::HOST_NAMES {
        let host = tolaria::hosts::build(name, 0, &Device::Cpu).expect("host");
        let mut optimizer = Optimizer::new(Rule::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        })
        .expect("rule");
        optimizer
            .add_group(ParamGroup::new("host", host.parameters(), 1e-3, 0.01))
            .expect("group");
        group.bench_function(name, |b| {
            b.iter(|| {
                let logits = host
                    .forward_with_slots(&x, &mut DormantSlots)
                    .expect("forward");
                let loss = candle_nn::loss::cross_entropy(&logits, &y).expect("loss");
                let grads = loss.backward().expect("backward");
                optimizer.step(&grads).expect("step");
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
