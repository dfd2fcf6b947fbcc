//! Training-step throughput of the reference hosts against PyTorch on the CPU,
//! in one run at the same thread count and batch (128: forward, cross-entropy,
//! backward, AdamW). Prints images per second and the ratio candle / PyTorch.
//!
//! PyTorch comes from `target/torch-venv` (created by
//! `cargo xtask bench --with-torch`, never in CI) or the system `python3`; when
//! neither can `import torch`, only the candle figures are printed, and it says so.
//! Run: `cargo bench -p tolaria --bench step_compare`.

// A benchmark that cannot set itself up should abort loudly, hence `expect`.
#![allow(missing_docs, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

mod common;
use common::{BATCH, StepFixture};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Timed steps per host (after a tenth as many warm-up steps, at least 3).
const STEPS: [(&str, usize); 3] = [("mlp", 200), ("cnn", 30), ("cnn-impaired", 60)];

fn candle_rate(name: &str, steps: usize) -> f64 {
    let mut fixture = StepFixture::new(name);
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
    let threads = candle_core::utils::get_num_threads();
    println!("training step, batch {BATCH}, {threads} threads, release + mimalloc");
    let candle: Vec<(String, f64)> = STEPS
        .iter()
        .map(|(n, s)| ((*n).to_owned(), candle_rate(n, *s)))
        .collect();
    let torch = python().and_then(|p| torch_rates(&p, threads));
    match &torch {
        None => {
            println!(
                "PyTorch not available (run `cargo xtask bench --with-torch` to install it into target/torch-venv)"
            );
            for (name, rate) in &candle {
                println!("{name:>13}  candle {rate:>9.0} img/s");
            }
        }
        Some((version, rates)) => {
            println!("PyTorch {version} at {threads} threads, same run:");
            for (name, rate) in &candle {
                match rates.iter().find(|(n, _)| n == name) {
                    Some((_, t)) => println!(
                        "{name:>13}  candle {rate:>9.0} img/s | torch {t:>9.0} img/s | ratio {:.2}",
                        rate / t
                    ),
                    None => println!("{name:>13}  candle {rate:>9.0} img/s | torch: no figure"),
                }
            }
        }
    }
}
