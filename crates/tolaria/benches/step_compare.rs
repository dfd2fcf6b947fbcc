//! Training-step throughput of the reference hosts on esper-ops, on candle's
//! own ops, and in PyTorch on the CPU, in one run at the same thread count and
//! batch (128: forward, cross-entropy, backward, AdamW). Prints images per
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
use common::{BATCH, StepFixture, python, torch_rates};
use esper_ops::ComputePool;
use tolaria::hosts::Ops;

#[global_allocator]
static GLOBAL: esper_ops::alloc::MiMalloc = esper_ops::alloc::MiMalloc;

/// Timed steps per host (after a tenth as many warm-up steps, at least 3).
const STEPS: [(&str, usize); 3] = [("mlp", 200), ("cnn", 30), ("cnn-impaired", 60)];

fn rate(name: &str, steps: usize, ops: Ops) -> f64 {
    let mut fixture = StepFixture::with_ops(name, ops);
    for _ in 0..(steps / 10).max(3) {
        fixture.step();
    }
    let started = Instant::now();
    for _ in 0..steps {
        fixture.step();
    }
    (steps * BATCH) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    // `cargo bench` passes harness flags such as `--bench`; nothing to parse.
    esper_ops::alloc::retain_freed_memory();
    let pool = ComputePool::new(0).expect("compute pool");
    let threads = pool.threads();
    println!("training step, batch {BATCH}, {threads} threads, release + mimalloc");
    // (host, esper-ops img/s, candle img/s)
    let ours: Vec<(&str, f64, f64)> = pool.run(|| {
        STEPS
            .iter()
            .map(|&(n, s)| (n, rate(n, s, Ops::Esper), rate(n, s, Ops::Candle)))
            .collect()
    });
    let torch = python().and_then(|p| torch_rates(&p, threads, &STEPS, "cpu", BATCH));
    if torch.is_none() {
        println!(
            "PyTorch not available (run `cargo xtask bench step --with-torch` to install it into target/torch-venv)"
        );
    }
    if let Some((version, _)) = &torch {
        println!("PyTorch {version} at {threads} threads, same run:");
    }
    for (name, esper, candle) in ours {
        let torch = torch
            .as_ref()
            .and_then(|(_, rates)| rates.iter().find(|(n, _)| n == name))
            .map(|(_, t)| *t);
        let torch = match torch {
            Some(t) => format!(" | torch {t:>7.0} img/s | esper-ops/torch {:.2}", esper / t),
            None => String::new(),
        };
        println!(
            "{name:>13}  esper-ops {esper:>7.0} img/s | candle ops {candle:>7.0} img/s | esper-ops/candle {:.2}{torch}",
            esper / candle
        );
    }
}
