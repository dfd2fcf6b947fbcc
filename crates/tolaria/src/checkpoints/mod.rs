//! Training state: in-RAM known-good snapshots for fast rollback, and durable
//! checkpoints for resume.
//!
//! A [`Snapshot`] deep-copies every parameter (`Var::set` writes in place, so a
//! shallow clone would follow the live weights) and the optimizer state. A
//! [`CheckpointStore`] writes snapshots to disk atomically — files into a
//! temporary directory, each fsynced, the directory renamed into place, the
//! parent fsynced — with a SHA-256 of every file in a JSON manifest; loading
//! verifies every checksum, and a corrupt checkpoint is reported and skipped in
//! favour of the previous one. Beside the tensors a checkpoint holds the
//! [`ResumeState`]: the trainer's counters and the control hook's state. A [`CheckpointWriter`] does the writing on a
//! thread of its own, so that training does not wait on the disk.

mod checkpoint;
mod resume;
mod snapshot;
mod writer;

pub(crate) use checkpoint::sha256_hex;

pub use checkpoint::{CheckpointMeta, CheckpointStore, Corrupt, Loaded, Manifest, RngState};
pub use resume::{GovernorState, ResumeState};
pub use snapshot::{RollbackReport, RollbackStats, Snapshot};
pub use writer::{CheckpointWriter, Written};
