//! Tolaria: the training orchestrator — loop driver, control hook, datasets,
//! reference hosts, optimizers and LR schedules, rollback and checkpoints,
//! governor and emergency controller (DESIGN §7).
//!
//! **Status:** this crate is not built yet (issue #3). It holds only its
//! documentation and its [`Error`] type, so that the workspace has its final shape
//! and every subsystem can already name the error it will return.

#![deny(missing_docs)]

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The requested feature is not implemented yet; the message names the issue
    /// that tracks it.
    #[error("{feature} is not implemented yet (issue #3)")]
    NotImplemented {
        /// What was asked for.
        feature: &'static str,
    },
}
