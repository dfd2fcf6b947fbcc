//! Kasmina: runs every seed through its guarded lifecycle inside any host that
//! implements its [`Host`] trait — germinate, train in isolation, blend, probation,
//! fossilize or cull.
//!
//! * [`Host`]: a host declares its slots and runs its forward pass
//!   through a [`SlotRunner`]; [`DormantSlots`] is identity everywhere.
//! * [`SeedSlots`]: the runner of a grown host — at most one [`Seed`] per slot
//!   (an Urza blueprint module), forwarded by stage: identity, the incubator
//!   (TRAINING), or a [`Blend`] with the seed's [`AlphaRamp`]; a
//!   counterfactual switch forces α = 0.
//! * [`Lifecycle`]: moves seeds along the Leyline transition table after each
//!   stage's minimum dwell and on gate evidence ([`GateConfig`], [`StepEvidence`]: G0–G5);
//!   a failed gate culls (CULLED → EMBARGOED → RESETTING → DORMANT) with a
//!   rollback payload; every gate evaluation and move is recorded.
//!
//! * The isolation monitor proves the incubator invariant on sampled
//!   coordinates (normalised measures, a breaker that opens on repeated
//!   violations; [`IsolationConfig`], [`BreakerConfig`]).
//! * The parameter registry: one [`Owner`] per parameter, every optimizer
//!   group checked before each step ([`Kasmina::check_group`]).
//!
//! * [`CommandIntake`]: AdaptationCommands validated and verified on arrival, applied
//!   at a fence (deadline, generation, `apply_at_step`), SEED commands only;
//!   each refusal a typed [`Rejection`].
//! * [`Kasmina`]: slots + lifecycle + registry + intake for one host, seed
//!   modules from a [`KernelSource`] (e.g. [`LibrarySource`] over Urza).
//!
//! * [`kd_loss`], [`DistillConfig`], [`check_budget`]: the knowledge-distillation
//!   loss and the teacher's memory budget.
//!
//! * [`KernelManager`]: loads seed modules ("kernels": a blueprint built for a
//!   slot) through the kernel load manager — shared in-flight loads, a
//!   concurrency limit, timeouts and cancellation, checksum + guard-digest
//!   verification, a byte-bounded LRU, prefetch over Oona.
//!
//! A training loop drives it all through the step-shaped façade of
//! [`Kasmina`]: `before_step`, `after_backward` (returns a [`StepReport`]),
//! `after_step`, `end_epoch` and `apply_commands`; it drains the per-step
//! telemetry packets and events with `drain_packets` and `drain_events`.
//! Tolaria's `Trainer::with_kasmina` is such a loop. [`names`] is the one home
//! of the parameter-name scheme.
//!
//! * [`Config`]: the `[kasmina]` section (gates, dwell, isolation).
//!
//! [`KasminaState`] is what a checkpoint records of the seeds;
//! [`Kasmina::restore_state`] continues them in a resumed run.

#![deny(missing_docs)]

mod alpha;
mod blend;
mod breaker;
mod config;
mod distill;
mod engine;
mod error;
mod gates;
mod host;
mod intake;
mod isolation;
mod lifecycle;
mod loader;
pub mod names;
mod registry;
mod seed;
mod slots;
mod telemetry;

pub use alpha::{AlphaRamp, RampShape};
pub use blend::Blend;
pub use breaker::BreakerConfig;
pub use config::Config;
pub use distill::{DistillConfig, check_budget, kd_loss};
pub use engine::{
    CommandOutcome, CommandRefusal, IsolationViolation, Kasmina, KasminaState, KernelSource,
    LibrarySource, SeedGroup, SeedOutcome, SeedRecord, SeedSummary, SeedTime, StepReport,
    StepTimes,
};
pub use error::{Error, Result};
pub use gates::{Counterfactual, GateConfig, StepEvidence};
pub use host::{DormantSlots, Host, LayerMacs, NamedParameter, SlotRunner, SlotSpec};
pub use intake::{CommandIntake, Failure, Rejection};
pub use isolation::IsolationConfig;
pub use lifecycle::{Lifecycle, LifecycleEvent, Progress};
pub use loader::{KernelConfig, KernelManager, ManagedSource};
pub use registry::{AlreadyOwned, Owner, UpdateRejection};
pub use seed::Seed;
pub use slots::{SeedSlots, Slot};
