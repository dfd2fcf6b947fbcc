//! Maintainer tasks for the Esper workspace, run as `cargo xtask <task>`:
//!
//! - `ci`: everything CI checks — fmt, clippy (`-D warnings`), tests, tidy, proto-check;
//! - `tidy`: the crate dependency DAG, crate docs, file sizes, wildcard arms over
//!   Leyline enums;
//! - `proto-check [--bless]`: lints the contracts and checks them against
//!   `proto/leyline.lock` so that no field or enum value is renumbered or removed
//!   by accident (`--bless` records deliberate, compatible changes);
//! - `bench`: every criterion benchmark of the workspace.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

mod proto_check;
mod tidy;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: cargo xtask <ci | tidy | proto-check [--bless] | bench>";

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
        _ => bail!("{USAGE}"),
    }
}

fn workspace_root() -> Result<PathBuf> {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .context("xtask must live one level below the workspace root")
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
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

fn ci(root: &Path) -> Result<()> {
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
    step("test", || cargo(root, &["test", "--workspace"]))?;
    println!("==> xtask ci: all steps passed");
    Ok(())
}
