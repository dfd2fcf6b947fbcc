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
    /// A signing secret that cannot be used.
    #[error("invalid signing secret: {0}")]
    InvalidSecret(String),
    /// The operating system's random source failed.
    #[error("random source failed: {0}")]
    Random(String),
    /// A signed message failed verification.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// A configuration value is out of range; `key` is its full dotted path.
    #[error("config key `{key}`: {detail}")]
    Config {
        /// Full dotted key, e.g. `leyline.security.nonce_ttl_s`.
        key: String,
        /// What is wrong with it.
        detail: String,
    },
}
