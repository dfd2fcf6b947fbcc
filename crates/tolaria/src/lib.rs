//! Tolaria: the training orchestrator — the loop driver, datasets, reference
//! hosts, optimizers and learning-rate schedules, rollback and emergencies.
//!
//! [`Trainer`] runs the loop: batches from the data layer (MNIST IDX and
//! CIFAR-10 loaders, the bundled 10 000-digit MNIST subset, seeded shuffling,
//! prefetched batches), the forward pass of a reference host ([`hosts`]:
//! `mlp`, `cnn`, `cnn-impaired`) through Kasmina's slots when it grows
//! ([`Trainer::with_kasmina`]), our own optimizers ([`optim`]: AdamW and SGD
//! with momentum, state keyed by parameter name), the learning-rate schedule
//! ([`LrConfig`]) and a real validation pass. The loss governor
//! ([`GovernorConfig`]) judges every loss; an explosion rolls back to the
//! known-good state and raises the emergency level ([`EmergencyController`]);
//! too many rollbacks halt the run with a final checkpoint ([`checkpoints`]:
//! in-RAM snapshots and durable checksummed checkpoints with resume). The
//! control plane plugs in at the [`fence`]; [`packet`] builds the state packet
//! an epoch publishes; [`ProfilerConfig`] chooses steps to write as Chrome traces of chosen steps.

#![deny(missing_docs)]

pub mod checkpoints;
mod config;
mod data;
mod emergency;
mod error;
pub mod fence;
mod governor;
pub mod hosts;
mod lr;
pub mod optim;
pub mod packet;
mod profiler;
mod trainer;

pub use config::{CheckpointConfig, Config, DeviceKind, OptimizerConfig};
pub use data::{CifarSplit, Dataset, bundled_mnist_dir, load_cifar10, load_mnist};
pub use emergency::{COUNT_ATTRIBUTE, EmergencyController, Outbox, signal_count};
pub use error::{Error, Result};
pub use governor::GovernorConfig;
pub use lr::{AfterTMax, LrConfig, Schedule};
pub use profiler::ProfilerConfig;
pub use trainer::{
    EmergencySink, EpochReport, Fault, StepProgress, Trainer, Validation, open_device,
};
