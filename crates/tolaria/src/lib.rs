//! Tolaria: the training orchestrator — loop driver, datasets, reference hosts,
//! optimizers and learning-rate schedules (DESIGN §7).
//!
//! **Status (issue #3, in progress):** built are the data layer ([`data`]: MNIST
//! IDX and CIFAR-10 loaders, the bundled 10 000-digit MNIST subset, seeded
//! shuffling, prefetched batches), the reference hosts ([`hosts`]: `mlp`, `cnn`,
//! `cnn-impaired`, seeded initialisation), our own optimizers ([`optim`]: AdamW and
//! SGD with momentum, parameter groups, state keyed by parameter name), the
//! learning-rate controller ([`lr`]) and the training loop with a real validation
//! pass ([`Trainer`]). Still to come: checkpoints and rollback, the governor, the
//! emergency controller and the control hook.

#![deny(missing_docs)]

mod config;
pub mod data;
mod error;
pub mod hosts;
pub mod lr;
pub mod optim;
mod trainer;

pub use config::{Config, OptimizerConfig, OptimizerKindConfig};
pub use error::{Error, Result};
pub use trainer::{EpochReport, Trainer, Validation};
