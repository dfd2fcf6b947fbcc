//! The crate's error type.

use std::path::PathBuf;

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in Tolaria.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed: reading data, or writing, syncing, renaming
    /// or removing a checkpoint (the OS error says which went wrong).
    #[error("I/O on {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A data file or dataset is malformed.
    #[error("bad data in {path}: {detail}")]
    Data {
        /// The file or directory (empty for an in-memory dataset).
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A checkpoint's state could not be put back into this run.
    #[error("resuming from {}: {detail}", path.display())]
    Resume {
        /// The checkpoint.
        path: PathBuf,
        /// What did not fit.
        detail: String,
    },
    /// A configuration value is unknown or out of range.
    #[error(transparent)]
    Config(#[from] leyline::ConfigError),
    /// An optimizer was misused (duplicate or unknown parameter, bad state).
    #[error("optimizer: {0}")]
    Optimizer(String),
    /// An emergency-level change that the controller does not allow.
    #[error("emergency controller: {0}")]
    Emergency(String),
    /// The run halted: more loss explosions (or divergences) within
    /// `rollback_window_batches` than `max_rollbacks` allows, or validation at
    /// chance for `governor.chance_epochs` epoch ends in a row. The last
    /// known-good state was checkpointed when a checkpoint directory is
    /// configured.
    #[error("run halted at global step {step}: {reason}{}", .checkpoint.as_ref().map(|p| format!(" (known-good state saved to {})", p.display())).unwrap_or_default())]
    Halted {
        /// Why: the last explosion's description, or the accuracy at chance.
        reason: String,
        /// Global optimizer step.
        step: u64,
        /// Final checkpoint of the known-good state, if written.
        checkpoint: Option<PathBuf>,
    },
    /// A tensor (a parameter, an optimizer moment, a snapshot or checkpoint
    /// tensor, the logits) is not on the model's device.
    #[error("device: {0}")]
    Device(#[from] esper_ops::device::DeviceMismatch),
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    /// Kasmina (slots, host contract) failed.
    #[error(transparent)]
    Kasmina(#[from] kasmina::Error),
    /// The control hook failed at a fence.
    #[error("control hook failed at step {global_step}: {source}")]
    ControlHook {
        /// Global optimizer step of the fence.
        global_step: u64,
        /// What the hook said.
        #[source]
        source: crate::fence::FenceError,
    },
}
