//! A run's directory: `config.toml` (the resolved configuration, never
//! secrets) and `metrics.jsonl`, one JSON object per epoch, appended and synced
//! as each epoch ends so that a crash loses at most the epoch in progress.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::Resolved;
use crate::error::{Error, Result};

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
}

impl EpochLine {
    /// The line for `report`.
    pub fn new(run_id: &str, report: &tolaria::EpochReport) -> Self {
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
        }
    }
}

/// The open run directory.
#[derive(Debug)]
pub struct RunLog {
    dir: PathBuf,
    metrics: File,
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::RunDir {
        path: path.to_path_buf(),
        source,
    }
}

impl RunLog {
    /// Creates (or, when resuming, reopens) the run's directory, writes its
    /// resolved config and opens the metrics log for appending.
    pub fn open(resolved: &Resolved) -> Result<Self> {
        let dir = resolved.run_dir();
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let config_path = dir.join("config.toml");
        let text = format!(
            "# resolved configuration of run {} (secrets are never written)\n{}",
            resolved.run_id,
            resolved.config.to_toml()?
        );
        std::fs::write(&config_path, text).map_err(|e| io(&config_path, e))?;
        let metrics_path = dir.join("metrics.jsonl");
        let metrics = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .map_err(|e| io(&metrics_path, e))?;
        Ok(Self { dir, metrics })
    }

    /// The run directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one epoch and syncs it to disk.
    pub fn append(&mut self, line: &EpochLine) -> Result<()> {
        let path = self.dir.join("metrics.jsonl");
        let mut text = serde_json::to_string(line).map_err(|e| {
            io(
                &path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })?;
        text.push('\n');
        self.metrics
            .write_all(text.as_bytes())
            .and_then(|()| self.metrics.sync_data())
            .map_err(|e| io(&path, e))
    }
}
