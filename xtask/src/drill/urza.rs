//! `prefetch-failure`: the blueprint library fails under a growing run —
//! its artifact bytes corrupt on disk, or the shared service unreachable —
//! and no seed is built from anything but verified bytes.

use super::{Ctx, Finding, text, with};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// Every artifact file under a library root (`artifacts/<fan>/<file>`).
fn artifacts(root: &Path) -> Vec<PathBuf> {
    let Ok(fans) = std::fs::read_dir(root.join("artifacts")) else {
        return Vec::new();
    };
    fans.filter_map(|f| f.ok())
        .filter_map(|f| std::fs::read_dir(f.path()).ok())
        .flat_map(|d| d.filter_map(|e| e.ok().map(|e| e.path())))
        .collect()
}

/// Seeds that reached TRAINING or beyond, from a run's summary.
fn seeds_that_trained(run: &Path) -> Result<usize> {
    let path = run.join("summary.json");
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?,
    )?;
    Ok(summary["seeds"].as_array().map_or(0, |seeds| {
        seeds
            .iter()
            .filter(|s| !matches!(s["furthest"].as_str(), Some("SEED_STAGE_GERMINATED") | None))
            .count()
    }))
}

pub(super) fn prefetch_failure(ctx: &Ctx) -> Result<Finding> {
    let dir = ctx.dir("prefetch-failure")?;
    let base = [
        ("ESPER_TOLARIA__HOST", "cnn-impaired"),
        ("ESPER_TOLARIA__EPOCHS", "4"),
    ];
    // A growing run forges the artifacts it needs.
    let first = ctx.esper(
        &dir,
        &["train"],
        &with(&base, &[("ESPER_RUN__RUN_ID", "forge")]),
    )?;
    if !first.status.success() {
        bail!("the forging run failed: {}", text(&first));
    }
    let grew = seeds_that_trained(&dir.join("runs/forge"))?;
    // One byte of every artifact flipped (past the header, in the weights).
    let files = artifacts(&dir.join("urza"));
    for file in &files {
        let mut bytes = std::fs::read(file)?;
        let at = bytes.len() - 1;
        bytes[at] ^= 0xff;
        std::fs::write(file, bytes)?;
    }
    let corrupt = ctx.esper(
        &dir,
        &["train"],
        &with(&base, &[("ESPER_RUN__RUN_ID", "corrupt")]),
    )?;
    let t = text(&corrupt);
    // Each germination on a corrupt artifact is refused naming it, and the
    // artifact is quarantined; a later one forges the blueprint afresh
    // (verified bytes of its definition), never runs unverified ones.
    let refused = t.matches("REFUSED").count();
    let detected = t.matches("is corrupt").count();
    let trained = seeds_that_trained(&dir.join("runs/corrupt")).unwrap_or(0);
    // The shared service unreachable: refused before any work, naming it.
    let remote = "http://127.0.0.1:9";
    let away = ctx.esper(
        &dir,
        &["train"],
        &with(
            &base,
            &[
                ("ESPER_RUN__RUN_ID", "away"),
                ("ESPER_URZA__REMOTE", remote),
            ],
        ),
    )?;
    let away_text = text(&away);
    let named = away_text.contains("127.0.0.1:9");
    let left = dir.join("runs/away").exists();
    let passed = grew > 0
        && !files.is_empty()
        && corrupt.status.success()
        && refused > 0
        && detected > 0
        && !away.status.success()
        && named
        && !left;
    Ok(Finding::check(
        passed,
        format!(
            "{} artifact(s) corrupted after a run that grew {grew} seed(s): the next run exit {}, \
             {refused} germination(s) REFUSED ({detected} naming the corrupt artifact, \
             quarantined), {trained} seed(s) trained later from a fresh forge; Urza at {remote} \
             unreachable: exit {}, address named: {named}, run directory left: {left}{}",
            files.len(),
            corrupt.status.code().unwrap_or(-1),
            away.status.code().unwrap_or(-1),
            if passed {
                String::new()
            } else {
                format!(
                    " | corrupt run: {} | unreachable: {}",
                    tail(&t),
                    tail(&away_text)
                )
            }
        ),
    ))
}

/// The last lines of a run's output, for a failing drill's report.
fn tail(t: &str) -> String {
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(6)..].join(" / ")
}
