//! Oona: the message fabric that carries every Leyline message between Esper's
//! subsystems — in-process by default, Redis Streams across machines (DESIGN §8).
//! Signing is mandatory; emergency signals are never rate-limited or dropped.
//!
//! **Status:** this crate is not built yet (issue #4). It holds only its
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
    #[error("{feature} is not implemented yet (issue #4)")]
    NotImplemented {
        /// What was asked for.
        feature: &'static str,
    },
}
