//! `cargo xtask cuda-check`: keeps the `cuda` feature compiling on a machine
//! without a GPU. Sets up a CUDA 13.0 toolkit from PyPI wheels with
//! `scripts/setup-cuda-home.sh` (once, cached in `target/cuda-home`), then
//! runs `cargo clippy -D warnings` with `--features cuda` on every crate
//! that has the feature, all targets (clippy reports every compile error,
//! so a separate `cargo check` would only check the workspace twice). The
//! check shares `target/` with the CPU build: dependencies the feature does
//! not touch are checked once for both, and the CPU build's cache stays
//! valid (the feature's crates get their own hashes, and no build script of
//! the CPU build reruns on `CUDA_HOME`, `CUDA_COMPUTE_CAP` or `PATH`).
//! Release builds with the feature (`bench step --device cuda`,
//! `scripts/gpu-suite.sh`) keep a directory of their own, `target/cuda`.
//! Nothing here needs a GPU: candle's kernels are compiled to PTX by nvcc,
//! and `libcuda` is a stub until run time.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// The crates with a `cuda` feature.
const CRATES: [&str; 3] = ["esper-ops", "tolaria", "esper-runtime"];

/// The toolkit (set up once in `target/cuda-home`) and the environment a
/// `--features cuda` build runs in: Hopper PTX, and `target_dir`.
fn cuda_env(root: &Path, target_dir: &str) -> Result<Vec<(&'static str, String)>> {
    let home = root.join("target/cuda-home");
    if !home.join("bin/nvcc").exists() {
        println!(
            "xtask cuda: setting up the CUDA toolkit from PyPI in {} (once)",
            home.display()
        );
        let status = Command::new("bash")
            .arg(root.join("scripts/setup-cuda-home.sh"))
            .arg(&home)
            .current_dir(root)
            .status()
            .context("cannot run scripts/setup-cuda-home.sh")?;
        if !status.success() {
            bail!("scripts/setup-cuda-home.sh failed ({status})");
        }
    }
    let path = format!(
        "{}:{}",
        home.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Ok(vec![
        ("CUDA_HOME", home.display().to_string()),
        ("PATH", path),
        ("CUDA_COMPUTE_CAP", "90".to_owned()),
        (
            "CARGO_TARGET_DIR",
            root.join(target_dir).display().to_string(),
        ),
    ])
}

/// `cargo args` with `--features cuda` builds' environment ([`cuda_env`]),
/// in `target_dir`.
fn cargo_cuda(root: &Path, target_dir: &str, args: &[&str]) -> Result<()> {
    let owned = cuda_env(root, target_dir)?;
    let env: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    super::cargo_env(root, args, &env)
}

/// `cargo xtask bench step --device cuda`: the GPU training-step bench
/// (`tolaria --bench gpu_step`: candle-CUDA vs PyTorch-CUDA at several
/// batches, GPU vs CPU). Needs a GPU; on a machine without one, build with
/// `scripts/gpu-suite.sh build` and run the carried executable there.
pub(crate) fn bench_step(root: &Path) -> Result<()> {
    cargo_cuda(
        root,
        "target/cuda",
        &[
            "bench",
            "-p",
            "tolaria",
            "--features",
            "cuda",
            "--bench",
            "gpu_step",
        ],
    )
}

pub(crate) fn check(root: &Path) -> Result<()> {
    let started = Instant::now();
    let mut packages = Vec::new();
    for c in CRATES {
        packages.extend(["-p", c]);
    }
    let mut clippy = vec!["clippy"];
    clippy.extend(&packages);
    clippy.extend([
        "--features",
        "cuda",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    cargo_cuda(root, "target", &clippy)?;
    println!(
        "xtask cuda-check: ok in {:.1} s ({} with --features cuda, all targets: clippy -D warnings)",
        started.elapsed().as_secs_f64(),
        CRATES.join(", ")
    );
    Ok(())
}
