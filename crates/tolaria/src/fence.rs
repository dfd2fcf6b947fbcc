//! The control fence: where the control plane (Tamiyo deciding, Kasmina
//! applying) meets the training loop. The trainer calls its [`ControlHook`]
//! every `fence_every_steps` optimizer steps and at every epoch end, on the
//! training thread, with a deadline; it measures each call, counts deadline
//! misses (each also a WARNING telemetry event) and stops with a typed error if
//! the hook fails. Without a hook (no control plane configured) the fences are
//! still counted, so that an operator sees they happen.

use std::time::{Duration, Instant};

use kasmina::Host;
use leyline::v1::{AdaptationCommand, FieldReport, TelemetryEvent};

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

/// What the hook decided at a fence: one typed value, nothing on the side.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FenceDecision {
    /// Commands for Kasmina (signed; validated and verified on submission,
    /// applied at this fence).
    pub commands: Vec<AdaptationCommand>,
    /// Stop the run cleanly after this fence, for this reason (e.g. the
    /// controller asked to).
    pub stop: Option<String>,
    /// What the controller found and did, for the run's logs, summary and bus.
    pub diagnostics: FenceDiagnostics,
}

impl FenceDecision {
    /// Keep training, with no command.
    pub fn proceed() -> Self {
        Self::default()
    }

    /// Stop the run cleanly after this fence.
    pub fn stop(reason: impl Into<String>) -> Self {
        Self {
            stop: Some(reason.into()),
            ..Self::default()
        }
    }
}

/// A controller's account of one fence. The trainer keeps it until the
/// program drains it ([`crate::Trainer::drain_events`],
/// [`crate::Trainer::drain_decisions`], [`crate::Trainer::drain_field_reports`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FenceDiagnostics {
    /// Telemetry events (failed steps, vetoes, a decision log that cannot be
    /// written).
    pub events: Vec<TelemetryEvent>,
    /// Every decision taken, with its evidence.
    pub decisions: Vec<DecisionRecord>,
    /// Field reports decided (and already logged durably), to publish.
    pub field_reports: Vec<FieldReport>,
}

/// What a controller decided at a fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionKind {
    /// A command was issued.
    Command,
    /// The risk engine stopped the policy's proposal.
    Vetoed,
    /// Nothing to do.
    Wait,
    /// The decision step failed; no command at this fence.
    Error,
}

/// One decision, as logs and the run summary list it.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionRecord {
    /// Epoch of the fence.
    pub epoch: u32,
    /// Global step of the fence.
    pub global_step: u64,
    /// What kind of decision.
    pub kind: DecisionKind,
    /// What was decided, for people: `GERMINATE seed at slot (blueprint)`,
    /// `CULL seed`, `VETOED`, `WAIT` or `ERROR`.
    pub action: String,
    /// The rule (or error label).
    pub rule: String,
    /// The evidence: the rule's numbers, risk findings.
    pub evidence: String,
}

/// Why a control hook could not decide; training stops with
/// [`crate::Error::ControlHook`].
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct FenceError {
    /// What failed.
    pub reason: String,
    /// The underlying error, when there is one.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl FenceError {
    /// A failure described by `reason` alone.
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            source: None,
        }
    }
}

/// The control plane's entry point into the training loop.
pub trait ControlHook: Send {
    /// Called at every fence; `Err` stops training with
    /// [`crate::Error::ControlHook`].
    fn at_fence(&mut self, context: &FenceContext<'_>) -> Result<FenceDecision, FenceError>;

    /// The hook's own state for a checkpoint, taken at the epoch boundary the
    /// checkpoint is of: everything it decides from besides the state packet
    /// and its configuration. `None` (the default) for a hook that keeps none.
    fn export_state(&mut self) -> Result<Option<serde_json::Value>, FenceError> {
        Ok(None)
    }

    /// Continues from what [`ControlHook::export_state`] returned, when a
    /// resumed run installs the hook (before its first fence). The default
    /// refuses: a hook that keeps no state cannot continue one.
    fn import_state(&mut self, state: serde_json::Value) -> Result<(), FenceError> {
        let _ = state;
        Err(FenceError::new(
            "the checkpoint holds controller state, and this control hook keeps none",
        ))
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
