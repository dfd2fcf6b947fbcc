//! Training-step throughput of the reference hosts on esper-ops, on candle's
//! own ops, and in PyTorch on the CPU, in one run at the same thread count and
//! batch (128: forward, cross-entropy, backward, AdamW; `mlp` also at 32,
//! where per-op overhead dominates). Prints images per
//! second and the ratios esper-ops / PyTorch and esper-ops / candle. Runs as
//! `esper train` does: on the compute pool, with freed memory retained
//! (`esper_ops::threads`, `esper_ops::alloc`).
//!
//! PyTorch comes from `target/torch-venv` (created by
//! `cargo xtask bench step --with-torch`, never in CI) or the system `python3`; when
//! neither can `import torch`, only the candle figures are printed, and it says so.
//! Run: `cargo xtask bench step` (or `cargo bench -p tolaria --bench step_compare`).

// A benchmark that cannot set itself up should abort loudly, hence `expect`.
#![allow(missing_docs, clippy::expect_used)]

use std::time::Instant;

mod common;
use candle_core::Device;
use common::{BATCH, StepFixture, python, torch_rates};
use esper_ops::ComputePool;
use tolaria::hosts::Ops;

#[global_allocator]
static GLOBAL: esper_ops::alloc::MiMalloc = esper_ops::alloc::MiMalloc;

/// Timed steps per host (after a tenth as many warm-up steps, at least 3).
const STEPS: [(&str, usize); 3] = [("mlp", 200), ("cnn", 30), ("cnn-impaired", 60)];

/// `mlp` again at this batch.
const SMALL_BATCH: usize = 32;

fn rate(name: &str, steps: usize, ops: Ops, batch: usize) -> f64 {
    let mut fixture = StepFixture::on(name, ops, &Device::Cpu, batch);
    for _ in 0..(steps / 10).max(3) {
        fixture.step();
    }
    let started = Instant::now();
    for _ in 0..steps {
        fixture.step();
    }
    (steps * batch) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    // `cargo bench` passes harness flags such as `--bench`; nothing to parse.
    esper_ops::alloc::retain_freed_memory();
    let pool = ComputePool::new(0).expect("compute pool");
    let threads = pool.threads();
    println!("training step, {threads} threads, release + mimalloc");
    // (host, batch, steps) in the order printed
    let runs: Vec<(&str, usize, usize)> = STEPS
        .iter()
        .map(|&(n, s)| (n, BATCH, s))
        .chain([("mlp", SMALL_BATCH, 400)])
        .collect();
    // (host, batch, esper-ops img/s, candle img/s)
    let ours: Vec<(&str, usize, f64, f64)> = pool.run(|| {
        runs.iter()
            .map(|&(n, b, s)| (n, b, rate(n, s, Ops::Esper, b), rate(n, s, Ops::Candle, b)))
            .collect()
    });
    let python = python();
    let torch = python
        .as_ref()
        .and_then(|p| torch_rates(p, threads, &STEPS, "cpu", BATCH));
    let torch_small = python
        .as_ref()
        .and_then(|p| torch_rates(p, threads, &[("mlp", 400)], "cpu", SMALL_BATCH));
    if torch.is_none() {
        println!(
            "PyTorch not available (run `cargo xtask bench step --with-torch` to install it into target/torch-venv)"
        );
    }
    if let Some((version, _)) = &torch {
        println!("PyTorch {version} at {threads} threads, same run:");
    }
    for (name, batch, esper, candle) in ours {
        let rates = if batch == BATCH { &torch } else { &torch_small };
        let torch = rates
            .as_ref()
            .and_then(|(_, rates)| rates.iter().find(|(n, _)| n == name))
            .map(|(_, t)| *t);
        let torch = match torch {
            Some(t) => format!(" | torch {t:>7.0} img/s | esper-ops/torch {:.2}", esper / t),
            None => String::new(),
        };
        println!(
            "{name:>13} batch {batch:>3}  esper-ops {esper:>7.0} img/s | candle ops {candle:>7.0} img/s | esper-ops/candle {:.2}{torch}",
            esper / candle
        );
    }
}
