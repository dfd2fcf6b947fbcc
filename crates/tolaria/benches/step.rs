//! Training-step throughput of the reference hosts (batch 128: forward, loss,
//! backward, AdamW), in images per second. Run: `cargo bench -p tolaria --bench step`.

// A benchmark that cannot set itself up should abort loudly, hence `expect`.
#![allow(missing_docs, clippy::expect_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

mod common;
use common::{BATCH, StepFixture};

#[global_allocator]
static GLOBAL: esper_ops::alloc::MiMalloc = esper_ops::alloc::MiMalloc;

fn bench(c: &mut Criterion) {
    esper_ops::alloc::retain_freed_memory();
    let mut group = c.benchmark_group("train_step");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(10);
    for name in tolaria::hosts::HOST_NAMES {
        let mut fixture = StepFixture::new(name);
        group.bench_function(name, |b| b.iter(|| fixture.step()));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
