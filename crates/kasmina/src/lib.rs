//! Kasmina: runs every seed through its guarded lifecycle inside any host that
//! implements its `Host` trait — germinate, train in isolation, blend, probation,
//! fossilize or cull (DESIGN §5).
//!
//! **Status:** this crate is not built yet (issue #7). It holds only its
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
    #[error("{feature} is not implemented yet (issue #7)")]
    NotImplemented {
        /// What was asked for.
        feature: &'static str,
    },
}
