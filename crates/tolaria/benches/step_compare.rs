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

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

mod common;
use common::{BATCH, StepFixture};
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

fn python() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let venv = root.join("target/torch-venv/bin/python");
    [venv, PathBuf::from("python3")].into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import torch"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// (torch version, {host: img/s}) from `scripts/torch_step.py`.
fn torch_rates(python: &Path, threads: usize) -> Option<(String, Vec<(String, f64)>)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/torch_step.py");
    let steps = format!(
        "{{{}}}",
        STEPS
            .iter()
            .map(|(n, s)| format!("\"{n}\": {s}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let out = Command::new(python)
        .arg(script)
        .arg(threads.to_string())
        .arg(steps)
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "torch_step.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let version = v["torch"].as_str()?.to_owned();
    let hosts = STEPS
        .iter()
        .filter_map(|(n, _)| v["hosts"][n].as_f64().map(|r| ((*n).to_owned(), r)))
        .collect();
    Some((version, hosts))
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
    let torch = python().and_then(|p| torch_rates(&p, threads));
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
