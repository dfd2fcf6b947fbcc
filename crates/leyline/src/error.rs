//! The crate's error type.

use crate::security::Rejection;
use crate::v1::SeedStage;

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in Leyline.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A lifecycle move that the transition table does not allow.
    #[error("illegal lifecycle transition {from:?} -> {to:?}")]
    IllegalTransition {
        /// Stage the seed is in.
        from: SeedStage,
        /// Stage that was requested.
        to: SeedStage,
    },
    /// A wire value that is not a variant of the named contract enum.
    #[error("unknown {enum_name} value {value}")]
    UnknownEnumValue {
        /// Proto name of the enum.
        enum_name: &'static str,
        /// The value that was received.
        value: i32,
    },
    /// Outside bytes that do not decode as the expected message.
    #[error("cannot decode {message} from {len} bytes: {source}")]
    Decode {
        /// Full proto name of the expected message.
        message: String,
        /// Length of the input.
        len: usize,
        /// What prost reported.
        #[source]
        source: prost::DecodeError,
    },
    /// Outside bytes whose protobuf records cannot even be scanned (for the
    /// signed bytes, before any decoding).
    #[error("cannot scan {message} from {len} bytes: {source}")]
    Wire {
        /// Full proto name of the expected message.
        message: String,
        /// Length of the input.
        len: usize,
        /// Where the scan stopped.
        #[source]
        source: crate::security::wire::WireError,
    },
    /// A signing secret that cannot be used.
    #[error("invalid signing secret: {0}")]
    InvalidSecret(String),
    /// The operating system's random source failed.
    #[error("random source failed: {0}")]
    Random(#[source] getrandom::Error),
    /// A signed message failed verification.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// A configuration value is out of range.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// A bad configuration value, in any section: the one configuration error
/// of the workspace (every crate's `validate` returns it; the runtime
/// reports it as it is).
#[derive(Debug, thiserror::Error)]
#[error("config key `{}`: {}", self.path(), .problem)]
pub struct ConfigError {
    /// The section, e.g. `leyline` or `kasmina`.
    pub section: String,
    /// The key within the section, e.g. `security.nonce_ttl_s`.
    pub key: String,
    /// What is wrong, and where the value came from when known.
    pub problem: String,
    /// The underlying error, when there is one (a parser's, a file's).
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// Equal when they name the same key with the same problem (the source is
/// context, not identity).
impl PartialEq for ConfigError {
    fn eq(&self, other: &Self) -> bool {
        (&self.section, &self.key, &self.problem) == (&other.section, &other.key, &other.problem)
    }
}

impl ConfigError {
    /// `problem` with the value of `key` in `section`.
    pub fn new(
        section: impl Into<String>,
        key: impl Into<String>,
        problem: impl Into<String>,
    ) -> Self {
        Self {
            section: section.into(),
            key: key.into(),
            problem: problem.into(),
            source: None,
        }
    }

    /// `problem` with the value at the full dotted path `path`
    /// (`tolaria.optimizer.lr`): its first component is the section.
    pub fn at(path: &str, problem: impl Into<String>) -> Self {
        let (section, key) = path.split_once('.').unwrap_or((path, ""));
        Self::new(section, key, problem)
    }

    /// The same, caused by `source`.
    pub fn caused_by(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The full dotted key, `section.key`.
    pub fn path(&self) -> String {
        if self.key.is_empty() {
            self.section.clone()
        } else {
            format!("{}.{}", self.section, self.key)
        }
    }
}

/// `error` and its causes on one line, each said once: a cause whose text
/// is already part of the line is not repeated (a wrapped I/O error often
/// prints its cause in its own message too).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !line.is_empty() && !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod chain_tests {
    #[derive(Debug, thiserror::Error)]
    #[error("connect to redis://h:1 failed")]
    struct Outer(#[source] Middle);
    #[derive(Debug, thiserror::Error)]
    #[error("Connection refused (os error 111)")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        );
        let e = Outer(Middle(io));
        assert_eq!(
            super::error_chain(&e),
            "connect to redis://h:1 failed: Connection refused (os error 111)"
        );
    }
}
