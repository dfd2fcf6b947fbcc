//! `esper inspect RUN`: a readable account of one run directory, read-only —
//! its configuration, whether it finished, its epochs, seeds, decisions,
//! field reports, the learned controller's trajectory (when it ran), and each
//! checkpoint verified (manifest, hashes, tensors).
//! Damage is reported where it is found (a bad log line, a corrupt WAL
//! record, a checkpoint that does not verify); nothing is repaired or moved.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::runlog::{self, RunSummary};

/// The directory `target` names: a path to a run directory, or a run id
/// under `runs_root`.
pub fn locate(target: &str, runs_root: &Path) -> Result<PathBuf> {
    let as_path = PathBuf::from(target);
    if as_path.join("metrics.jsonl").exists() || as_path.join("config.toml").exists() {
        return Ok(as_path);
    }
    let under = runs_root.join(target);
    if under.is_dir() {
        return Ok(under);
    }
    Err(Error::RunDir {
        path: under,
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no run directory {target} (neither a path nor a run id under run.dir)"),
        ),
    })
}

/// The account of the run in `dir`.
pub fn render(dir: &Path) -> Result<String> {
    let mut out = String::new();
    let summary = RunSummary::read(dir)?;
    let _ = writeln!(out, "run {}", dir.display());
    config_lines(dir, &mut out);
    match &summary {
        Some(s) => {
            let _ = writeln!(
                out,
                "status: {} — validation accuracy {:.2} % after {} epochs ({} steps), parameters {} → {} (+{}), {:.1} s training",
                s.status,
                100.0 * s.validation_accuracy,
                s.epochs,
                s.global_step,
                s.parameters_initial,
                s.parameters_final,
                s.parameters_added(),
                s.train_seconds
            );
        }
        None => {
            let _ = writeln!(
                out,
                "status: unfinished (no summary.json): `esper train --resume` continues it"
            );
        }
    }
    epoch_lines(dir, &mut out)?;
    seed_lines(summary.as_ref(), &mut out);
    decision_lines(dir, &mut out);
    report_lines(dir, &mut out);
    trajectory_lines(dir, &mut out);
    checkpoint_lines(dir, &mut out)?;
    Ok(out)
}

fn config_lines(dir: &Path, out: &mut String) {
    let path = dir.join("config.toml");
    let Ok(text) = std::fs::read_to_string(&path) else {
        let _ = writeln!(out, "config: none recorded ({} missing)", path.display());
        return;
    };
    let table: toml::Table = match toml::from_str(&text) {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(out, "config: {} does not parse: {e}", path.display());
            return;
        }
    };
    let get = |section: &str, key: &str| {
        table.get(section).and_then(|s| s.get(key)).map_or_else(
            || "?".to_owned(),
            |v| v.to_string().trim_matches('"').to_owned(),
        )
    };
    let controller = table
        .get("tamiyo")
        .and_then(|t| t.get("controller"))
        .map_or_else(
            || "?".to_owned(),
            |v| v.to_string().trim_matches('"').to_owned(),
        );
    let _ = writeln!(
        out,
        "config: host {}, {} epochs, train size {}, batch {}, controller {controller}, seed {}",
        get("tolaria", "host"),
        get("tolaria", "epochs"),
        get("tolaria", "train_size"),
        get("tolaria", "batch_size"),
        get("run", "seed"),
    );
}

fn epoch_lines(dir: &Path, out: &mut String) -> Result<()> {
    let (epochs, skipped) = runlog::read_metrics(dir)?;
    match (epochs.first(), epochs.last()) {
        (Some(first), Some(last)) => {
            let _ = writeln!(
                out,
                "epochs: {} logged ({}..{}); last: validation {:.2} % (loss {:.4}), train {:.2} %, step p50 {:.1} ms, {} rollback(s) in all",
                epochs.len(),
                first.epoch,
                last.epoch,
                100.0 * last.validation_accuracy,
                last.validation_loss,
                100.0 * last.train_accuracy,
                last.step_ms_p50,
                epochs.iter().map(|e| e.rollbacks).sum::<usize>()
            );
        }
        _ => {
            let _ = writeln!(out, "epochs: none logged");
        }
    }
    for (line, why) in &skipped {
        let _ = writeln!(out, "  DAMAGED metrics.jsonl line {line}: {why}");
    }
    Ok(())
}

fn seed_lines(summary: Option<&RunSummary>, out: &mut String) {
    let Some(s) = summary else {
        return;
    };
    if s.seeds.is_empty() {
        let _ = writeln!(out, "seeds: none");
        return;
    }
    let _ = writeln!(out, "seeds: {}", s.seeds.len());
    for seed in &s.seeds {
        let _ = writeln!(
            out,
            "  {} at {}: {} — reached {}, ended {}, {} parameters, {} MACs/image",
            seed.seed,
            seed.slot,
            seed.blueprint,
            seed.furthest.trim_start_matches("SEED_STAGE_"),
            seed.last.trim_start_matches("SEED_STAGE_"),
            seed.parameters,
            seed.forward_macs
        );
    }
}

fn decision_lines(dir: &Path, out: &mut String) {
    let path = dir.join("decisions.jsonl");
    let Ok(text) = std::fs::read_to_string(&path) else {
        let _ = writeln!(out, "decisions: none logged");
        return;
    };
    let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
    let mut commands = Vec::new();
    let mut damaged = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) => {
                let action = v["action"].as_str().unwrap_or("?");
                let kind = action.split_whitespace().next().unwrap_or("?").to_owned();
                if !matches!(kind.as_str(), "WAIT" | "VETOED" | "ERROR" | "?") {
                    commands.push(format!(
                        "step {}: {action} ({})",
                        v["global_step"],
                        v["rule"].as_str().unwrap_or("?")
                    ));
                }
                *kinds.entry(kind).or_default() += 1;
            }
            Err(_) => damaged += 1,
        }
    }
    let total: usize = kinds.values().sum();
    let by: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
    let _ = writeln!(out, "decisions: {total} ({})", by.join(", "));
    for c in &commands {
        let _ = writeln!(out, "  {c}");
    }
    if damaged > 0 {
        let _ = writeln!(
            out,
            "  DAMAGED: {damaged} line(s) of decisions.jsonl do not parse"
        );
    }
}

fn report_lines(dir: &Path, out: &mut String) {
    let path = dir.join("field_reports.wal");
    let Ok(bytes) = std::fs::read(&path) else {
        let _ = writeln!(out, "field reports: none");
        return;
    };
    let loaded = tamiyo::field_reports::wal::parse(&bytes);
    let _ = writeln!(
        out,
        "field reports: {} good, {} corrupt record(s){}",
        loaded.reports.len(),
        loaded.bad.len(),
        if loaded.torn_tail.is_some() {
            ", a torn tail"
        } else {
            ""
        }
    );
}

/// The learned controller's trajectory, when the run has one.
fn trajectory_lines(dir: &Path, out: &mut String) {
    let path = dir.join(tamiyo::trajectory::FILE_NAME);
    let Ok(bytes) = std::fs::read(&path) else {
        return;
    };
    let t = tamiyo::trajectory::parse(&bytes);
    let mut ops: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for r in &t.records {
        *ops.entry(format!("{:?}", r.action.op).to_lowercase())
            .or_default() += 1;
    }
    let by: Vec<String> = ops.iter().map(|(op, n)| format!("{op} {n}")).collect();
    let _ = writeln!(
        out,
        "trajectory: {} decision(s) recorded ({}), {} corrupt record(s){}",
        t.records.len(),
        by.join(", "),
        t.bad.len(),
        if t.torn_tail.is_some() {
            ", a torn tail"
        } else {
            ""
        }
    );
}

fn checkpoint_lines(dir: &Path, out: &mut String) -> Result<()> {
    let ckpts = dir.join("checkpoints");
    if !ckpts.is_dir() {
        let _ = writeln!(out, "checkpoints: none");
        return Ok(());
    }
    let store = tolaria::checkpoints::CheckpointStore::read_only(&ckpts);
    let list = store.list()?;
    let _ = writeln!(out, "checkpoints: {} in {}", list.len(), ckpts.display());
    for path in list {
        let name = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        match store.load(&path, &candle_core::Device::Cpu) {
            Ok(loaded) => {
                let _ = writeln!(
                    out,
                    "  {name}: ok (epoch {}, step {})",
                    loaded.snapshot.epoch, loaded.snapshot.global_step
                );
            }
            Err(corrupt) => {
                let _ = writeln!(out, "  {name}: CORRUPT — {}", corrupt.reason);
            }
        }
    }
    Ok(())
}
