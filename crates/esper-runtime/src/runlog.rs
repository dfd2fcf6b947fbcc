//! A run's directory: `config.toml` (the resolved configuration, never
//! secrets), `metrics.jsonl`, one JSON object per epoch, appended and synced
//! as each epoch ends so that a crash loses at most the epoch in progress, and
//! `summary.json`, written (atomically) only when the run has finished: its
//! presence is what marks a run done for a cohort and the run store.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Resolved;
use crate::error::{Error, Result};

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochLine {
    /// Run id.
    pub run_id: String,
    /// Wall clock at the end of the epoch, Unix ms.
    pub timestamp_ms: u64,
    /// Epoch number, from 1.
    pub epoch: u32,
    /// Global optimizer step.
    pub global_step: u64,
    /// Mean training loss.
    pub train_loss: f64,
    /// Training accuracy.
    pub train_accuracy: f64,
    /// Validation loss.
    pub validation_loss: f64,
    /// Validation accuracy.
    pub validation_accuracy: f64,
    /// Mean global gradient L2 norm.
    pub grad_norm: f64,
    /// Median step latency, ms.
    pub step_ms_p50: f64,
    /// 95th-percentile step latency, ms.
    pub step_ms_p95: f64,
    /// Training images per second.
    pub images_per_second: f64,
    /// Epoch wall time, s.
    pub seconds: f64,
    /// Rollbacks during the epoch.
    pub rollbacks: usize,
    /// Control fences, and how many missed their deadline.
    pub fences: u32,
    /// Control fences past their deadline.
    pub fence_deadline_misses: u32,
    /// Time spent in control fences, ms.
    pub fence_ms: f64,
    /// Checkpoint written at the end of the epoch.
    pub checkpoint: Option<PathBuf>,
    /// Training images stepped on.
    #[serde(default)]
    pub train_images: u64,
    /// Mean forward MACs per training image (host + live seeds); absent when
    /// the host does not count its layers.
    #[serde(default)]
    pub forward_macs_per_image: Option<f64>,
    /// Every seed in a slot at the end of the epoch: a run's seed timeline.
    #[serde(default)]
    pub seeds: Vec<EpochSeed>,
}

/// A seed at the end of an epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochSeed {
    /// Seed id.
    pub seed: String,
    /// Slot id.
    pub slot: String,
    /// Blueprint id.
    pub blueprint: String,
    /// Stage (`SEED_STAGE_*`).
    pub stage: String,
    /// Blend α in effect.
    pub alpha: f64,
    /// Forward MACs per image the seed costs at its stage.
    #[serde(default)]
    pub forward_macs: u64,
    /// Its measured forward time per step at this stage, ms (moving average).
    #[serde(default)]
    pub forward_ms: Option<f64>,
    /// Its measured share of the model's forward time (0–1).
    #[serde(default)]
    pub forward_share: Option<f64>,
}

impl EpochLine {
    /// The line for `report`, with the seeds the slots hold after it.
    pub fn new(
        run_id: &str,
        report: &tolaria::EpochReport,
        seeds: &[kasmina::SeedSummary],
    ) -> Self {
        Self {
            run_id: run_id.to_owned(),
            timestamp_ms: leyline::unix_now_ms(),
            epoch: report.epoch,
            global_step: report.global_step,
            train_loss: report.train_loss,
            train_accuracy: report.train_accuracy,
            validation_loss: report.validation.loss,
            validation_accuracy: report.validation.accuracy,
            grad_norm: report.grad_norm,
            step_ms_p50: report.step_ms_p50,
            step_ms_p95: report.step_ms_p95,
            images_per_second: report.train_images_per_second,
            seconds: report.seconds,
            rollbacks: report.rollbacks,
            fences: report.fences.fences,
            fence_deadline_misses: report.fences.deadline_misses,
            fence_ms: report.fences.total_ms,
            checkpoint: report.checkpoint.clone(),
            train_images: report.train_images as u64,
            forward_macs_per_image: report.forward_macs_per_image,
            seeds: seeds
                .iter()
                .map(|s| EpochSeed {
                    seed: s.seed.clone(),
                    slot: s.slot.clone(),
                    blueprint: s.blueprint.clone(),
                    stage: s.stage.as_str_name().to_owned(),
                    alpha: s.alpha,
                    forward_macs: s.forward_macs,
                    forward_ms: s.time.map(|t| t.forward_ms),
                    forward_share: s.time.map(|t| t.forward_share),
                })
                .collect(),
        }
    }
}

/// `summary.json`: how a finished run ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSummary {
    /// Run id.
    pub run_id: String,
    /// Reference host.
    pub host: String,
    /// Controller (`heuristic`, `script`, `off`).
    pub controller: String,
    /// Whether the off-switch control held every seed's output at 0.
    pub off_switch: bool,
    /// Run seed.
    pub seed: u64,
    /// `completed`, or `stopped: <reason>` when the control plane stopped it.
    pub status: String,
    /// Epochs trained.
    pub epochs: u32,
    /// Optimizer steps taken.
    pub global_step: u64,
    /// Validation accuracy after the last epoch.
    pub validation_accuracy: f64,
    /// Validation loss after the last epoch.
    pub validation_loss: f64,
    /// Mean training loss of the last epoch.
    pub train_loss: f64,
    /// Scalar parameters of the host before it grew.
    pub parameters_initial: u64,
    /// Scalar parameters at the end (host + seeds still training or fossilized).
    pub parameters_final: u64,
    /// Every seed germinated, with how far it got.
    pub seeds: Vec<kasmina::SeedOutcome>,
    /// Median over epochs of the per-epoch median step time, ms.
    pub step_ms_p50: f64,
    /// Training wall time summed over every epoch (also across resumes), s.
    pub train_seconds: f64,
    /// Wall clock when the run finished, Unix ms.
    pub finished_ms: u64,
    /// The host's forward MACs per image, layer by layer (`None`: the host
    /// does not count them).
    #[serde(default)]
    pub host_layer_macs: Option<Vec<kasmina::LayerMacs>>,
    /// Forward MACs per image of the model at the end: the host's and the
    /// live seeds' (the inference cost of what the run grew).
    #[serde(default)]
    pub forward_macs_final: Option<u64>,
    /// Training FLOPs per image, averaged over every training image of the
    /// run: 6 × the mean forward MACs (2 FLOPs per MAC; the backward pass
    /// costs about twice the forward). Filled from `metrics.jsonl`.
    #[serde(default)]
    pub training_flops_per_image: Option<f64>,
}

/// FLOPs per MAC (a multiply and an add) times (forward + a backward of
/// about twice its cost): the usual training-compute estimate.
pub const TRAINING_FLOPS_PER_FORWARD_MAC: f64 = 6.0;

/// Training FLOPs per image over `epochs` (see
/// [`RunSummary::training_flops_per_image`]); `None` when an epoch lacks its
/// MAC count or no image was trained.
pub fn training_flops_per_image(epochs: &[EpochLine]) -> Option<f64> {
    let mut macs = 0.0;
    let mut images = 0u64;
    for e in epochs {
        macs += e.forward_macs_per_image? * e.train_images as f64;
        images += e.train_images;
    }
    (images > 0).then(|| TRAINING_FLOPS_PER_FORWARD_MAC * macs / images as f64)
}

impl RunSummary {
    /// Parameters the run added (0 when it shrank back).
    pub fn parameters_added(&self) -> u64 {
        self.parameters_final
            .saturating_sub(self.parameters_initial)
    }

    /// Reads `<dir>/summary.json`; `Ok(None)` when the run has not finished.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(SUMMARY);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path, e)),
        };
        serde_json::from_str(&text).map(Some).map_err(|e| {
            io(
                &path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })
    }
}

/// The file that marks a run finished.
pub const SUMMARY: &str = "summary.json";

/// The median of `values` (NaN when empty).
pub(crate) fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// A line that was not a record: (line number from 1, why).
pub type Skipped = (usize, String);

/// Reads `metrics.jsonl`: the epochs in order, and the lines that are not an
/// epoch (number, reason) — a torn last line after a crash, say. Nothing is
/// dropped silently: the caller reports the skipped lines.
pub fn read_metrics(dir: &Path) -> Result<(Vec<EpochLine>, Vec<Skipped>)> {
    let path = dir.join("metrics.jsonl");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(&path, e)),
    };
    let mut epochs = Vec::new();
    let mut skipped = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<EpochLine>(line) {
            Ok(epoch) => epochs.push(epoch),
            Err(e) => skipped.push((i + 1, e.to_string())),
        }
    }
    Ok((epochs, skipped))
}

/// The open run directory, held under an exclusive lock on `<dir>/lock` for
/// the life of this value: one writer per run.
#[derive(Debug)]
pub struct RunLog {
    dir: PathBuf,
    metrics: Option<File>,
    /// Held for the lock; released when the log is dropped (or the process
    /// ends, however it ends).
    _lock: File,
    /// Whether this log created the directory (a failed start removes it).
    created: bool,
    /// Epoch records appended by this log.
    appended: u64,
}

/// What [`RunLog::rewind`] dropped: records past the state being resumed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rewound {
    /// `metrics.jsonl` lines of later epochs.
    pub epochs: usize,
    /// `decisions.jsonl` lines of later steps.
    pub decisions: usize,
}

/// The file a run's writer locks.
pub const LOCK: &str = "lock";

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::RunDir {
        path: path.to_path_buf(),
        source,
    }
}

impl RunLog {
    /// Claims the run's directory: creates it when missing and takes the
    /// exclusive lock, writing nothing else. A second process on the same run
    /// gets [`Error::RunLocked`].
    pub fn claim(resolved: &Resolved) -> Result<Self> {
        let dir = resolved.run_dir();
        let created = !dir.exists();
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let lock_path = dir.join(LOCK);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::RunLocked { path: dir });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path, e)),
        }
        Ok(Self {
            dir,
            metrics: None,
            _lock: lock,
            created,
            appended: 0,
        })
    }

    /// The `[tolaria]` keys (dotted) whose values differ between the run's
    /// recorded `config.toml` and `resolved`, leaving out what may change
    /// between a run and its resume (`epochs`, `checkpoint`, `profiler`: what
    /// the checkpoint's training-config hash leaves out too). Empty when the
    /// run has no recorded config.
    pub fn changed_training_keys(&self, resolved: &Resolved) -> Result<Vec<String>> {
        let path = self.dir.join("config.toml");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&path, e)),
        };
        let invalid = |e: String| {
            io(
                &path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        };
        let old: toml::Table = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        let new: toml::Table =
            toml::from_str(&resolved.config.to_toml()?).map_err(|e| invalid(e.to_string()))?;
        let section = |t: &toml::Table| {
            t.get("tolaria")
                .cloned()
                .unwrap_or(toml::Value::Table(toml::Table::new()))
        };
        let mut changed = Vec::new();
        diff_keys("tolaria", &section(&old), &section(&new), &mut changed);
        changed.retain(|key| {
            !["tolaria.epochs", "tolaria.checkpoint", "tolaria.profiler"]
                .iter()
                .any(|free| key == free || key.starts_with(&format!("{free}.")))
        });
        Ok(changed)
    }

    /// Drops the records past the state being resumed (epoch `epoch`, global
    /// step `step`; 0 and 0 when starting over): `metrics.jsonl` lines of
    /// later epochs and `decisions.jsonl` lines of later steps, so that each
    /// epoch and decision appears once. Lines that are not records are kept
    /// (and reported by their readers). Each file is rewritten through a
    /// synced temporary file and a rename.
    pub fn rewind(&mut self, epoch: u32, step: u64) -> Result<Rewound> {
        let keep = |name: &str, field: &str, limit: u64| -> Result<usize> {
            let path = self.dir.join(name);
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
                Err(e) => return Err(io(&path, e)),
            };
            let mut kept = String::with_capacity(text.len());
            let mut dropped = 0;
            for line in text.lines() {
                let at = serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v.get(field).and_then(serde_json::Value::as_u64));
                if at.is_some_and(|at| at > limit) {
                    dropped += 1;
                } else if !line.is_empty() {
                    kept.push_str(line);
                    kept.push('\n');
                }
            }
            if dropped > 0 || (!text.is_empty() && !text.ends_with('\n')) {
                write_atomic(&path, kept.as_bytes())?;
            }
            Ok(dropped)
        };
        Ok(Rewound {
            epochs: keep("metrics.jsonl", "epoch", u64::from(epoch))?,
            decisions: keep("decisions.jsonl", "global_step", step)?,
        })
    }

    /// Writes the resolved config (`config.toml`) and opens the metrics log
    /// for appending: the run has started.
    pub fn start(&mut self, resolved: &Resolved) -> Result<()> {
        let config_path = self.dir.join("config.toml");
        let text = format!(
            "# resolved configuration of run {} (secrets are never written)\n{}",
            resolved.run_id,
            resolved.config.to_toml()?
        );
        // Whole or absent: a kill mid-write must not leave a truncated config
        // that the resume then cannot read.
        write_atomic(&config_path, text.as_bytes())?;
        let metrics_path = self.dir.join("metrics.jsonl");
        self.metrics = Some(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&metrics_path)
                .map_err(|e| io(&metrics_path, e))?,
        );
        Ok(())
    }

    /// Creates (or, when resuming, reopens) the run's directory under its
    /// lock, writes its resolved config and opens the metrics log for
    /// appending ([`RunLog::claim`] then [`RunLog::start`]).
    pub fn open(resolved: &Resolved) -> Result<Self> {
        let mut log = Self::claim(resolved)?;
        log.start(resolved)?;
        Ok(log)
    }

    /// Gives the run up before it trained: removes the directory when this
    /// log created it and no epoch was recorded (a failed precondition —
    /// bad data, an unreachable Urza service — leaves no orphan run behind).
    pub fn abandon(self) {
        if self.created && self.appended == 0 {
            let dir = self.dir.clone();
            drop(self);
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// The run directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one epoch and syncs it to disk, on a line of its own: when
    /// something else left the file without a final newline, one is written
    /// first (a record is never glued onto a damaged line).
    pub fn append(&mut self, line: &EpochLine) -> Result<()> {
        let path = self.dir.join("metrics.jsonl");
        let Some(metrics) = self.metrics.as_mut() else {
            return Err(io(
                &path,
                std::io::Error::other("the run has not started (RunLog::start)"),
            ));
        };
        let mut text = serde_json::to_string(line).map_err(|e| {
            io(
                &path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })?;
        text.push('\n');
        if !ends_on_line_boundary(&path).map_err(|e| io(&path, e))? {
            text.insert(0, '\n');
        }
        metrics
            .write_all(text.as_bytes())
            .and_then(|()| metrics.sync_data())
            .map_err(|e| io(&path, e))?;
        self.appended += 1;
        Ok(())
    }
}

/// Whether the file is empty or ends with a newline.
fn ends_on_line_boundary(path: &Path) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = File::open(path)?;
    if file.metadata()?.len() == 0 {
        return Ok(true);
    }
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
}

/// Appends to `out` the dotted keys under `prefix` whose values differ
/// between `old` and `new` (a key present in one only differs).
fn diff_keys(prefix: &str, old: &toml::Value, new: &toml::Value, out: &mut Vec<String>) {
    match (old, new) {
        (toml::Value::Table(a), toml::Value::Table(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let path = format!("{prefix}.{key}");
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => diff_keys(&path, x, y, out),
                    _ => out.push(path),
                }
            }
        }
        (a, b) if a != b => out.push(prefix.to_owned()),
        _ => {}
    }
}

impl RunLog {
    /// Writes `summary.json` (through a temporary file, synced, then
    /// renamed: a crash leaves either no summary or a whole one). The step
    /// time, the training seconds, the training FLOPs and the last epoch's figures are taken
    /// from `metrics.jsonl` (every epoch, including those before a resume);
    /// the fields of `summary` that hold them are overwritten.
    pub fn finish(&mut self, mut summary: RunSummary) -> Result<RunSummary> {
        let (epochs, _) = read_metrics(&self.dir)?;
        let Some(last) = epochs.last() else {
            return Err(io(
                &self.dir.join("metrics.jsonl"),
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "the run has no epoch to summarise",
                ),
            ));
        };
        summary.epochs = last.epoch;
        summary.global_step = last.global_step;
        summary.validation_accuracy = last.validation_accuracy;
        summary.validation_loss = last.validation_loss;
        summary.train_loss = last.train_loss;
        let mut p50: Vec<f64> = epochs.iter().map(|e| e.step_ms_p50).collect();
        summary.step_ms_p50 = median(&mut p50);
        summary.train_seconds = epochs.iter().map(|e| e.seconds).sum();
        summary.training_flops_per_image = training_flops_per_image(&epochs);
        let path = self.dir.join(SUMMARY);
        let text = serde_json::to_string_pretty(&summary).map_err(|e| {
            io(
                &path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })?;
        write_atomic(&path, text.as_bytes())?;
        Ok(summary)
    }
}

/// Replaces `path` with `bytes` through a synced temporary file beside it
/// and a rename: a crash leaves the old file or the whole new one.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut file = File::create(&tmp).map_err(|e| io(&tmp, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))
}

/// One `metrics.jsonl` line of `epoch` at validation `accuracy` (the
/// other figures fixed), for tests that read run directories.
#[cfg(test)]
pub(crate) fn epoch_line_json(epoch: u32, accuracy: f64) -> String {
    serde_json::json!({
        "run_id": "r1", "timestamp_ms": 1, "epoch": epoch, "global_step": epoch * 10,
        "train_loss": 0.5, "train_accuracy": 0.8, "validation_loss": 0.4,
        "validation_accuracy": accuracy, "grad_norm": 1.0, "step_ms_p50": 2.0,
        "step_ms_p95": 3.0, "images_per_second": 100.0, "seconds": 1.5,
        "rollbacks": 0, "fences": 1, "fence_deadline_misses": 0, "fence_ms": 0.1,
        "checkpoint": null
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn epoch(images: u64, macs: Option<f64>) -> EpochLine {
        EpochLine {
            run_id: "r".into(),
            timestamp_ms: 0,
            epoch: 1,
            global_step: 1,
            train_loss: 0.0,
            train_accuracy: 0.0,
            validation_loss: 0.0,
            validation_accuracy: 0.0,
            grad_norm: 0.0,
            step_ms_p50: 0.0,
            step_ms_p95: 0.0,
            images_per_second: 0.0,
            seconds: 0.0,
            rollbacks: 0,
            fences: 0,
            fence_deadline_misses: 0,
            fence_ms: 0.0,
            checkpoint: None,
            train_images: images,
            forward_macs_per_image: macs,
            seeds: Vec::new(),
        }
    }

    #[test]
    fn training_flops_weigh_each_epoch_by_its_images() {
        // 100 images at 1 000 MACs, 300 at 2 000: mean 1 750 MACs, × 6.
        let epochs = [epoch(100, Some(1000.0)), epoch(300, Some(2000.0))];
        assert_eq!(training_flops_per_image(&epochs), Some(6.0 * 1750.0));
        // One epoch without a count makes the whole run's figure unknown.
        let partial = [epoch(100, Some(1000.0)), epoch(300, None)];
        assert_eq!(training_flops_per_image(&partial), None);
        assert_eq!(training_flops_per_image(&[]), None);
    }

    #[test]
    fn an_epoch_line_written_before_costs_were_counted_still_reads() {
        let mut value = serde_json::to_value(epoch(10, Some(1.0))).unwrap();
        let map = value.as_object_mut().unwrap();
        map.remove("train_images");
        map.remove("forward_macs_per_image");
        let line: EpochLine = serde_json::from_value(value).unwrap();
        assert_eq!((line.train_images, line.forward_macs_per_image), (0, None));
    }
}
