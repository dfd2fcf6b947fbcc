//! Urza: the blueprint catalog, the durable artifact library (SQLite +
//! content-addressed safetensors) and its gRPC service and client (DESIGN §9).
//!
//! **Status:** this crate is not built yet (issue #5). It holds only its
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
    #[error("{feature} is not implemented yet (issue #5)")]
    NotImplemented {
        /// What was asked for.
        feature: &'static str,
    },
}
