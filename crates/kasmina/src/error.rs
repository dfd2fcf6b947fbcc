//! The crate's error type.

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in Kasmina.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A host passed a slot an activation whose shape is not the declared one.
    #[error(
        "slot {slot}: activation shape {actual:?} does not match the declared [N, {expected:?}]"
    )]
    SlotShape {
        /// Slot id.
        slot: String,
        /// Declared feature shape (without the batch dimension).
        expected: Vec<usize>,
        /// Shape received (with the batch dimension).
        actual: Vec<usize>,
    },
    /// A blend configuration or alpha schedule is unusable (missing mode
    /// parameters, a channel vector that does not fit the slot, …).
    #[error("blend configuration: {0}")]
    Blend(String),
    /// A seed's module failed.
    #[error("seed {seed}: {reason}")]
    Seed {
        /// Seed id.
        seed: String,
        /// What went wrong.
        reason: String,
    },
    /// No slot with this id.
    #[error("unknown slot `{slot}`")]
    UnknownSlot {
        /// Slot id.
        slot: String,
    },
    /// The slot is not in a state that allows the request.
    #[error("slot {slot}: {reason}")]
    SlotBusy {
        /// Slot id.
        slot: String,
        /// Why not.
        reason: String,
    },
    /// A stage change not in the Leyline transition table, or not yet allowed.
    #[error("seed {seed}: {reason}")]
    Lifecycle {
        /// Seed id.
        seed: String,
        /// Why the move was refused.
        reason: String,
    },
    /// A blueprint could not be built or loaded.
    #[error(transparent)]
    Urza(Box<urza::Error>),
    /// A kernel (blueprint module) could not be loaded; there is no fallback.
    #[error("kernel load: {0}")]
    Kernel(String),
    /// A parameter would get a second owner.
    #[error("parameter registry: {0}")]
    Ownership(#[from] crate::registry::AlreadyOwned),
    /// An optimizer group would update a parameter it does not own.
    #[error("optimizer group {group}: {source}")]
    GroupUpdate {
        /// The group.
        group: String,
        /// Which parameter, and whose it is.
        #[source]
        source: crate::registry::UpdateRejection,
    },
    /// A tensor (saved seed weights) is not on the model's device.
    #[error("device: {0}")]
    Device(#[from] esper_ops::device::DeviceMismatch),
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

impl From<urza::Error> for Error {
    fn from(e: urza::Error) -> Self {
        Self::Urza(Box::new(e))
    }
}
