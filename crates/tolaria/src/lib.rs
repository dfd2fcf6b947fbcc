//! Tolaria: the training orchestrator — loop driver, datasets, reference hosts,
//! optimizers and learning-rate schedules (DESIGN §7).
//!
//! **Status (issue #3, in progress):** built are the data layer ([`data`]: MNIST
//! IDX and CIFAR-10 loaders, the bundled 10 000-digit MNIST subset, seeded
//! shuffling, prefetched batches), the reference hosts ([`hosts`]: `mlp`, `cnn`,
//! `cnn-impaired`, seeded initialisation), our own optimizers ([`optim`]: AdamW and
//! SGD with momentum, parameter groups, state keyed by parameter name), the
//! learning-rate controller ([`lr`]) and the training loop with a real validation
//! pass ([`Trainer`]), in-RAM known-good snapshots with rollback on a non-finite
//! loss, and durable checksummed checkpoints with resume ([`state`]). Still to
//! come: publishing emergency signals on Oona, the control hook, asynchronous
//! checkpoint writes and the PyTorch comparison bench. The governor
//! ([`governor`]) judges every loss (NaN, k-sigma and ratio to its moving mean);
//! an explosion rolls back to the known-good state and raises the emergency level
//! ([`emergency`]); too many in a row halt the run with a final checkpoint.

#![deny(missing_docs)]

mod config;
pub mod data;
pub mod emergency;
mod error;
pub mod fence;
pub mod governor;
pub mod hosts;
pub mod lr;
pub mod optim;
pub mod packet;
pub mod profiler;
pub mod state;
mod trainer;

pub use config::{CheckpointConfig, Config, DeviceKind, OptimizerConfig};
pub use error::{Error, Result};
pub use trainer::{
    EmergencySink, EpochReport, Fault, SeedSummary, StepProgress, Trainer, Validation,
};
