//! The typed `[tolaria]` section of `esper.toml`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::governor::GovernorConfig;
use crate::lr::LrConfig;
use crate::optim::Rule;

/// Tolaria's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Reference host: `mlp`, `cnn` or `cnn-impaired` (default `cnn`).
    pub host: String,
    /// MNIST directory (IDX files, optionally gzip); default: the bundled subset.
    pub data_dir: Option<PathBuf>,
    /// Images used for training; the rest validate (default 8 000 of the bundled 10 000).
    pub train_size: usize,
    /// Passes over the training set (default 5).
    pub epochs: u32,
    /// Images per step (default 128).
    pub batch_size: usize,
    /// Batches assembled ahead of the step on the worker thread (default 2).
    pub prefetch_batches: usize,
    /// `cpu` or `cuda` (the `cuda` cargo feature and a GPU are required for `cuda`).
    pub device: DeviceKind,
    /// Threads of the compute pool the run executes on; 0 = one per core
    /// (default 0).
    pub cpu_threads: usize,
    /// Tensor operations of the reference hosts: `esper` (esper-ops'
    /// convolution, pooling and fused bias + ReLU; the default) or `candle`
    /// (candle's own, ~4× slower on the convolutional hosts; for comparison).
    pub ops: crate::hosts::Ops,
    /// Optimizer.
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule.
    pub lr: LrConfig,
    /// Rollbacks (loss explosions or divergence) tolerated within
    /// `rollback_window_batches` batches before the run halts with an error
    /// (default 3).
    pub max_rollbacks: u32,
    /// Batches over which rollbacks are counted (default 100): a run that
    /// explodes again soon after each rollback halts, even with healthy steps
    /// between the explosions.
    pub rollback_window_batches: u64,
    /// Durable checkpoints.
    pub checkpoint: CheckpointConfig,
    /// Loss-explosion detection.
    pub governor: GovernorConfig,
    /// Entries the emergency outbox holds before coalescing by level (default 64).
    pub emergency_outbox: usize,
    /// Step profiler (Chrome traces of bounded windows of steps).
    pub profiler: crate::profiler::ProfilerConfig,
    /// Optimizer steps between control fences; 0 = epoch ends only (default 100).
    /// The fence deadline is `leyline.budgets.performance.control_fence_ms`.
    pub fence_every_steps: u64,
}

/// The `[tolaria.checkpoint]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Directory of checkpoints; none are written when unset (the default).
    pub dir: Option<PathBuf>,
    /// Checkpoints kept, newest first (default 3).
    pub keep: usize,
    /// Resume from the newest valid checkpoint in `dir` at start (default true).
    pub resume: bool,
    /// Resume a checkpoint written under a different training configuration
    /// (the settings other than `epochs`, `checkpoint` and `profiler`); the
    /// change is recorded as a `checkpoint_config_changed` event. Off by
    /// default: such a resume is refused (`esper train --allow-config-change`).
    pub allow_config_change: bool,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            dir: None,
            keep: 3,
            resume: true,
            allow_config_change: false,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host: "cnn".into(),
            data_dir: None,
            train_size: 8_000,
            epochs: 5,
            batch_size: 128,
            prefetch_batches: 2,
            device: DeviceKind::Cpu,
            cpu_threads: 0,
            ops: crate::hosts::Ops::Esper,
            optimizer: OptimizerConfig::default(),
            lr: LrConfig::default(),
            max_rollbacks: 3,
            rollback_window_batches: 100,
            checkpoint: CheckpointConfig::default(),
            governor: GovernorConfig::default(),
            emergency_outbox: 64,
            fence_every_steps: 100,
            profiler: crate::profiler::ProfilerConfig::default(),
        }
    }
}

/// Where tensors live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    /// The CPU.
    Cpu,
    /// The first CUDA GPU.
    Cuda,
}

/// The `[tolaria.optimizer]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerConfig {
    /// Update rule (default AdamW with β = (0.9, 0.999), ε = 1e-8).
    pub rule: Rule,
    /// Base learning rate of the host group (default 1e-3).
    pub lr: f64,
    /// Weight decay of the host group (default 0.01).
    pub weight_decay: f64,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            rule: Rule::AdamW {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
            lr: 1e-3,
            weight_decay: 0.01,
        }
    }
}

impl Config {
    /// Checks every value; `prefix` is the section's dotted path (`"tolaria"`).
    pub fn validate(&self, prefix: &str) -> Result<()> {
        let bad = |key: &str, detail: String| {
            Err(Error::Config(leyline::ConfigError::at(
                &format!("{prefix}.{key}"),
                detail,
            )))
        };
        if !crate::hosts::HOST_NAMES.contains(&self.host.as_str()) {
            return bad(
                "host",
                format!(
                    "unknown host {:?}; the reference hosts are {:?}",
                    self.host,
                    crate::hosts::HOST_NAMES
                ),
            );
        }
        if self.train_size == 0 {
            return bad("train_size", "must be at least 1".into());
        }
        if self.epochs == 0 {
            return bad("epochs", "must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1".into());
        }
        if self.rollback_window_batches == 0 {
            return bad("rollback_window_batches", "must be at least 1".into());
        }
        if self.emergency_outbox < 5 {
            return bad(
                "emergency_outbox",
                "must be at least 5 (one entry per level, plus room)".into(),
            );
        }
        self.governor.validate(&format!("{prefix}.governor"))?;
        if let Some((key, detail)) = self.profiler.problem() {
            return bad(&format!("profiler.{key}"), detail);
        }
        if self.checkpoint.keep == 0 {
            return bad("checkpoint.keep", "must be at least 1".into());
        }
        if !(self.optimizer.lr.is_finite() && self.optimizer.lr > 0.0) {
            return bad(
                "optimizer.lr",
                format!("{} must be a finite number > 0", self.optimizer.lr),
            );
        }
        if !(self.optimizer.weight_decay.is_finite() && self.optimizer.weight_decay >= 0.0) {
            return bad(
                "optimizer.weight_decay",
                format!("{} must be >= 0", self.optimizer.weight_decay),
            );
        }
        crate::optim::Optimizer::new(self.optimizer.rule).map_err(|e| {
            Error::Config(
                leyline::ConfigError::at(
                    &format!("{prefix}.optimizer.rule"),
                    format!("cannot build this optimizer: {e}"),
                )
                .caused_by(e),
            )
        })?;
        self.lr.validate(&format!("{prefix}.lr"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_name_their_key() {
        Config::default().validate("tolaria").unwrap();
        let c = Config {
            host: "vgg".into(),
            ..Config::default()
        };
        assert!(
            c.validate("tolaria")
                .unwrap_err()
                .to_string()
                .contains("tolaria.host")
        );
        let c = Config {
            optimizer: OptimizerConfig {
                lr: -1.0,
                ..OptimizerConfig::default()
            },
            ..Config::default()
        };
        assert!(
            c.validate("tolaria")
                .unwrap_err()
                .to_string()
                .contains("tolaria.optimizer.lr")
        );
        let c = Config {
            optimizer: OptimizerConfig {
                rule: Rule::Sgd {
                    momentum: 1.5,
                    nesterov: false,
                },
                ..OptimizerConfig::default()
            },
            ..Config::default()
        };
        assert!(
            c.validate("tolaria")
                .unwrap_err()
                .to_string()
                .contains("tolaria.optimizer.rule")
        );
        let err = toml::from_str::<Config>("[optimizer.rule]\nkind = \"lion\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("lion"), "{err}");
        let err = toml::from_str::<Config>("epoch = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("epoch"), "{err}");
    }
}
