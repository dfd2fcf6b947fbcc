//! The crate's error type.

use std::path::PathBuf;

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The requested feature is not implemented yet; the message names the issue
    /// that tracks it.
    #[error("{feature} is not implemented yet (issue #8)")]
    NotImplemented {
        /// What was asked for.
        feature: &'static str,
    },
    /// A field report was refused.
    #[error("field report {report_id}: {reason}")]
    InvalidReport {
        /// The report.
        report_id: String,
        /// Why.
        reason: String,
    },
    /// A file-system operation failed.
    #[error("{context} {}: {source}", path.display())]
    Io {
        /// What was being done.
        context: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}
