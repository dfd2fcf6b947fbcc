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
//! come: the loss-explosion governor beyond NaN, wiring the emergency controller
//! ([`emergency`], built) into the loop and onto Oona, the control hook and
//! asynchronous checkpoint writes.

#![deny(missing_docs)]

mod config;
pub mod data;
pub mod emergency;
mod error;
pub mod hosts;
pub mod lr;
pub mod optim;
pub mod state;
mod trainer;

pub use config::{CheckpointConfig, Config, DeviceKind, OptimizerConfig};
pub use error::{Error, Result};
pub use trainer::{EpochReport, Fault, Trainer, Validation};
