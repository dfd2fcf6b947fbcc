//! The runtime's error type.

use std::path::PathBuf;

/// Why a signing secret could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum SecretProblem {
    /// The environment variable is not set.
    #[error("is not set")]
    NotSet,
    /// The file could not be read.
    #[error("cannot be read: {0}")]
    Read(#[source] std::io::Error),
    /// The text is not a usable key, or no key could be generated.
    #[error(transparent)]
    Key(leyline::Error),
}

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can stop the runtime from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML.
    #[error("config file {path} is not valid TOML: {source}")]
    ParseConfig {
        /// The file.
        path: PathBuf,
        /// The parser's error (its message has the line and column).
        #[source]
        source: toml::de::Error,
    },
    /// A key is unknown, has the wrong type, or is out of range (with
    /// where the value came from).
    #[error(transparent)]
    Config(#[from] leyline::ConfigError),
    /// An `ESPER_*` environment variable is malformed or unknown.
    #[error("environment variable {var}: {detail}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The signing secret could not be obtained.
    #[error("signing secret ({source_desc}): {cause}")]
    Secret {
        /// Where it was to come from.
        source_desc: String,
        /// What went wrong.
        #[source]
        cause: SecretProblem,
    },
    /// A contract-level failure.
    #[error(transparent)]
    Leyline(#[from] leyline::Error),
    /// Training failed.
    #[error(transparent)]
    Tolaria(#[from] tolaria::Error),
    /// The message bus failed.
    #[error(transparent)]
    Oona(#[from] oona::Error),
    /// Urza (the blueprint library or its service) failed (boxed: its errors
    /// carry shapes and paths, and this enum travels through hot paths).
    #[error(transparent)]
    Urza(Box<urza::Error>),
    /// Preconditions of a long command do not hold (each line names what to fix).
    #[error("preflight failed:\n  {}", .0.join("\n  "))]
    Preflight(Vec<String>),
    /// The local library could not be opened or written.
    #[error("urza library {}: {source}", root.display())]
    Library {
        /// `urza.root`.
        root: PathBuf,
        /// What Urza said.
        #[source]
        source: Box<urza::Error>,
    },
    /// The run directory could not be written.
    #[error("run directory {path}: {source}")]
    RunDir {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the run directory's lock.
    #[error(
        "run directory {path} is in use by another esper process (it holds {path}/lock); \
         wait for it to end or choose another run id"
    )]
    RunLocked {
        /// The run directory.
        path: PathBuf,
    },
    /// The async runtime could not be started or a task failed.
    #[error("{0}")]
    Runtime(String),
}

impl From<urza::Error> for Error {
    fn from(e: urza::Error) -> Self {
        Self::Urza(Box::new(e))
    }
}
