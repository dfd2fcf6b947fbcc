//! The control fence: where the control plane (Tamiyo deciding, Kasmina
//! applying) meets the training loop. The trainer calls its [`ControlHook`]
//! every `fence_every_steps` optimizer steps and at every epoch end, on the
//! training thread, with a deadline; it measures each call, counts deadline
//! misses (each also a WARNING telemetry event) and stops with a typed error if
//! the hook fails. Without a hook (no control plane configured) the fences are
//! still counted, so that an operator sees they happen.

use std::time::{Duration, Instant};

use kasmina::Host;

/// Where in the loop a fence is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceKind {
    /// Every `fence_every_steps` optimizer steps.
    Step,
    /// After an epoch's validation pass.
    EpochEnd,
}

/// What the hook sees at a fence.
pub struct FenceContext<'a> {
    /// Step fence or epoch end.
    pub kind: FenceKind,
    /// Current epoch (from 1).
    pub epoch: u32,
    /// Global optimizer step.
    pub global_step: u64,
    /// Loss of the last stepped batch (NaN before the first step).
    pub last_loss: f64,
    /// Validation accuracy, at epoch-end fences.
    pub validation_accuracy: Option<f64>,
    /// The state packet of this fence: every slot and seed, the loss since
    /// the last fence, validation metrics at epoch ends; its `generation`
    /// is the one commands decided on it must carry.
    pub state: &'a leyline::v1::SystemStatePacket,
    /// The host, for its slots and parameters.
    pub host: &'a dyn Host,
    /// When the hook must have returned.
    pub deadline: Instant,
}

impl std::fmt::Debug for FenceContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FenceContext")
            .field("kind", &self.kind)
            .field("epoch", &self.epoch)
            .field("global_step", &self.global_step)
            .field("host", &self.host.name())
            .finish_non_exhaustive()
    }
}

/// What the hook decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceOutcome {
    /// Keep training.
    Continue,
    /// Stop the run cleanly after this fence (e.g. the controller asked to).
    Stop {
        /// Why.
        reason: String,
    },
}

/// The control plane's entry point into the training loop.
pub trait ControlHook: Send {
    /// Called at every fence. `Err` stops training with `Error::ControlHook`.
    fn at_fence(&mut self, context: &FenceContext<'_>) -> Result<FenceOutcome, String>;

    /// Commands decided at the last fence, for Kasmina (signed; validated and
    /// verified on submission, applied at this fence). None by default.
    fn commands(&mut self) -> Vec<leyline::v1::AdaptationCommand> {
        Vec::new()
    }
}

/// Counters of the fences of one epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FenceStats {
    /// Fences reached.
    pub fences: u32,
    /// Hook calls that returned after their deadline.
    pub deadline_misses: u32,
    /// Slowest hook call, milliseconds.
    pub slowest_ms: f64,
    /// Time in fences (state assembly, hook, command apply), milliseconds.
    pub total_ms: f64,
}

/// The hook (if any), its cadence and deadline, as the trainer holds them.
pub(crate) struct Fence {
    pub(crate) hook: Option<Box<dyn ControlHook>>,
    pub(crate) every_steps: u64,
    pub(crate) deadline: Duration,
}

impl Fence {
    /// Whether a step fence falls on `global_step`.
    pub(crate) fn due(&self, global_step: u64) -> bool {
        self.every_steps > 0 && global_step > 0 && global_step.is_multiple_of(self.every_steps)
    }
}
