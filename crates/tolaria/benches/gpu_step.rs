//! Training-step throughput on a GPU (feature `cuda`; issue #22 part 4): each
//! reference host in images per second on candle's CUDA backend and in
//! PyTorch on CUDA, in one run, at batch 128 and at larger batches (where
//! 128 does not saturate the GPU), and the same hosts on the CPU at batch 128
//! for the GPU/CPU ratio. A step is forward, cross-entropy, backward and
//! AdamW, as `step_compare` measures on the CPU; the timed loop is bracketed
//! by a device synchronisation, so queued kernels are counted.
//!
//! Build here and run on the GPU machine (`scripts/gpu-suite.sh`), or there:
//! `cargo bench -p tolaria --features cuda --bench gpu_step`. PyTorch comes
//! from the machine's `python3` (or `target/torch-venv`); without it only
//! candle's figures are printed, and it says so.

#![allow(missing_docs, clippy::expect_used)]

use std::time::Instant;

use candle_core::Device;

mod common;
use common::{BATCH, StepFixture, python, torch_rates};
use esper_ops::ComputePool;
use tolaria::hosts::Ops;

#[global_allocator]
static GLOBAL: esper_ops::alloc::MiMalloc = esper_ops::alloc::MiMalloc;

/// Timed steps per host (after a tenth as many warm-up steps, at least 5;
/// the first steps on a GPU also load kernels).
const STEPS: [(&str, usize); 3] = [("mlp", 300), ("cnn", 100), ("cnn-impaired", 200)];

/// Batches measured on the GPU.
const BATCHES: [usize; 3] = [128, 512, 2048];

fn rate(name: &str, steps: usize, device: &Device, batch: usize) -> f64 {
    let mut fixture = StepFixture::on(name, Ops::Esper, device, batch);
    for _ in 0..(steps / 10).max(5) {
        fixture.step();
    }
    device.synchronize().expect("synchronize");
    let started = Instant::now();
    for _ in 0..steps {
        fixture.step();
    }
    device.synchronize().expect("synchronize");
    (steps * batch) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    esper_ops::alloc::retain_freed_memory();
    let gpu = Device::new_cuda(0).expect("this bench needs CUDA device 0");
    let pool = ComputePool::new(0).expect("compute pool");
    let threads = pool.threads();
    let python = python();
    if python.is_none() {
        println!("PyTorch not available: candle's figures only");
    }
    println!("training step on {:?}, release + mimalloc", gpu.location());
    let cpu: Vec<f64> = pool.run(|| {
        STEPS
            .iter()
            .map(|&(n, s)| rate(n, (s / 10).max(10), &Device::Cpu, BATCH))
            .collect()
    });
    for batch in BATCHES {
        let torch = python
            .as_ref()
            .and_then(|p| torch_rates(p, threads, &STEPS, "cuda", batch));
        if let Some((version, _)) = &torch {
            println!("batch {batch} (PyTorch {version} on CUDA, same run):");
        } else {
            println!("batch {batch}:");
        }
        for (i, &(name, steps)) in STEPS.iter().enumerate() {
            let ours = rate(name, steps, &gpu, batch);
            let versus_torch = torch
                .as_ref()
                .and_then(|(_, rates)| rates.iter().find(|(n, _)| n == name))
                .map_or(String::new(), |(_, t)| {
                    format!(
                        " | torch-cuda {t:>9.0} img/s | candle/torch {:.2}",
                        ours / t
                    )
                });
            let versus_cpu = if batch == BATCH {
                format!(
                    " | cpu ({threads} threads) {:>7.0} img/s | gpu/cpu {:.1}",
                    cpu[i],
                    ours / cpu[i]
                )
            } else {
                String::new()
            };
            println!("{name:>13}  candle-cuda {ours:>9.0} img/s{versus_torch}{versus_cpu}");
        }
    }
}
