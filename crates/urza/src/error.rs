//! Urza's error type: every rejection names what was rejected and why.

use std::path::PathBuf;

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No blueprint with this id is in the catalog.
    #[error("unknown blueprint `{blueprint_id}`")]
    UnknownBlueprint {
        /// The id asked for.
        blueprint_id: String,
    },
    /// No artifact with this reference is in the library.
    #[error("unknown artifact `{artifact_ref}`")]
    UnknownArtifact {
        /// The reference asked for.
        artifact_ref: String,
    },
    /// A blueprint parameter is missing, unknown, not finite, out of its bounds
    /// or not an integer where one is required.
    #[error("blueprint `{blueprint_id}`: parameter `{name}` {reason}")]
    InvalidParameter {
        /// The blueprint.
        blueprint_id: String,
        /// The parameter.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The blueprint cannot be built for this slot (kind or shape).
    #[error("blueprint `{blueprint_id}` does not fit slot {slot}: {reason}")]
    SlotMismatch {
        /// The blueprint.
        blueprint_id: String,
        /// The slot, as text.
        slot: String,
        /// Why not.
        reason: String,
    },
    /// A slot specification itself is malformed.
    #[error("invalid slot specification: {reason}")]
    InvalidSlot {
        /// What is wrong.
        reason: String,
    },
    /// A tensor had the wrong shape.
    #[error("{context}: expected shape {expected:?}, got {actual:?}")]
    Shape {
        /// Where.
        context: String,
        /// The shape required.
        expected: Vec<usize>,
        /// The shape given.
        actual: Vec<usize>,
    },
    /// A tensor operation failed.
    #[error("{context}: {source}")]
    Tensor {
        /// What was being done.
        context: String,
        /// candle's error.
        #[source]
        source: candle_core::Error,
    },
    /// The forge's probe found the built module unusable.
    #[error("forging `{blueprint_id}` failed: {reason}")]
    Forge {
        /// The blueprint.
        blueprint_id: String,
        /// What the probe found.
        reason: String,
    },
    /// An artifact's bytes do not hash to its reference: it was quarantined.
    #[error("artifact `{artifact_ref}` is corrupt: SHA-256 {actual} (quarantined)")]
    Integrity {
        /// The reference (the expected SHA-256).
        artifact_ref: String,
        /// The SHA-256 of the bytes read.
        actual: String,
    },
    /// The blueprint or artifact is quarantined and will not be served.
    #[error("{what} is quarantined: {reason}")]
    Quarantined {
        /// The blueprint or artifact.
        what: String,
        /// Why it was quarantined.
        reason: String,
    },
    /// The bytes are not a valid Urza artifact.
    #[error("malformed artifact: {reason}")]
    MalformedArtifact {
        /// What is wrong.
        reason: String,
    },
    /// A blueprint was refused by the selection policy.
    #[error("blueprint `{blueprint_id}` is not eligible: {reason}")]
    Ineligible {
        /// The blueprint.
        blueprint_id: String,
        /// The rule that refused it.
        reason: crate::select::Ineligible,
    },
    /// A file-system operation failed.
    #[error("{context} {}: {source}", path.display())]
    Io {
        /// What was being done.
        context: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A catalog (SQLite) operation failed.
    #[error("catalog database, {context}: {source}")]
    Sqlite {
        /// What was being done.
        context: &'static str,
        /// rusqlite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The catalog database holds something this version cannot read.
    #[error("catalog database holds an invalid row: {reason}")]
    CorruptCatalog {
        /// What is wrong.
        reason: String,
    },
    /// The remote Urza answered with an error status that has no typed
    /// counterpart here; `label` is the server's [`Error::label`].
    #[error("urza service: {code:?} ({label}): {message}")]
    Remote {
        /// gRPC status code.
        code: tonic::Code,
        /// The server-side error label (`"remote"` when the server sent none).
        label: &'static str,
        /// The server's message.
        message: String,
    },
    /// A catalog watcher fell behind and missed updates (its caches must be
    /// dropped and refilled).
    #[error("catalog watch missed {missed} update(s)")]
    WatchLagged {
        /// Updates missed.
        missed: u64,
    },
    /// The gRPC transport failed (connect, serve).
    #[error("urza transport: {0}")]
    Transport(String),
}

impl Error {
    pub(crate) fn tensor(context: impl Into<String>) -> impl FnOnce(candle_core::Error) -> Self {
        let context = context.into();
        move |source| Self::Tensor { context, source }
    }

    pub(crate) fn sqlite(context: &'static str) -> impl FnOnce(rusqlite::Error) -> Self {
        move |source| Self::Sqlite { context, source }
    }

    pub(crate) fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io {
            context,
            path,
            source,
        }
    }

    /// Every label [`Error::label`] can return for a local error.
    pub const LABELS: &'static [&'static str] = &[
        "unknown_blueprint",
        "unknown_artifact",
        "invalid_parameter",
        "slot_mismatch",
        "invalid_slot",
        "shape",
        "tensor",
        "forge",
        "integrity",
        "quarantined",
        "malformed_artifact",
        "ineligible",
        "io",
        "sqlite",
        "corrupt_catalog",
        "transport",
        "watch_lagged",
    ];

    /// A short, stable label for metrics (`urza_rejections_total{reason}`);
    /// a remote error keeps the server's label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::UnknownBlueprint { .. } => "unknown_blueprint",
            Self::UnknownArtifact { .. } => "unknown_artifact",
            Self::InvalidParameter { .. } => "invalid_parameter",
            Self::SlotMismatch { .. } => "slot_mismatch",
            Self::InvalidSlot { .. } => "invalid_slot",
            Self::Shape { .. } => "shape",
            Self::Tensor { .. } => "tensor",
            Self::Forge { .. } => "forge",
            Self::Integrity { .. } => "integrity",
            Self::Quarantined { .. } => "quarantined",
            Self::MalformedArtifact { .. } => "malformed_artifact",
            Self::Ineligible { .. } => "ineligible",
            Self::Io { .. } => "io",
            Self::Sqlite { .. } => "sqlite",
            Self::CorruptCatalog { .. } => "corrupt_catalog",
            Self::Remote { label, .. } => label,
            Self::WatchLagged { .. } => "watch_lagged",
            Self::Transport(_) => "transport",
        }
    }
}

/// Counts and logs a rejection so that every refused request is visible in
/// telemetry, then hands the error back.
pub(crate) fn rejected(error: Error) -> Error {
    metrics::counter!("urza_rejections_total", "reason" => error.label()).increment(1);
    tracing::warn!(target: "urza", reason = error.label(), "{error}");
    error
}
