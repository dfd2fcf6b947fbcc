//! Tamiyo: the controller that reads training state and decides when, where and
//! what to grow — policies behind one step API, a separate risk engine, a
//! blueprint metadata cache, and field reports.
//!
//! * [`TamiyoService::step`]: one [`SystemStatePacket`](leyline::v1::SystemStatePacket)
//!   in, one [`Decision`] out — an explicit WAIT or a signed
//!   `AdaptationCommand`, with diagnostics — or a typed [`Error`] (deadline,
//!   invalid input, no candidates), never a synthetic decision.
//! * the policy layer: the [`Policy`] trait; [`HeuristicPolicy`] (plateau
//!   baseline), [`ScriptedPolicy`] (fixed schedule) and [`LearnedPolicy`]
//!   (the GNN of a signed policy file, [`gnn`]).
//! * [`trajectory`]: the learned policy's decisions, recorded for PPO.
//! * [`risk`]: ordered veto/downgrade rules with conservative-mode hysteresis.
//! * [`BlueprintCache`]: the blueprint metadata cache over `urza::BlueprintStore`.
//! * [`graph`]: the observation graph (global, slot, seed and blueprint nodes,
//!   fixed-width features and edges, truncation, presence masks, EWMA
//!   normalisers) the learned policy will read.
//! * [`field_reports`]: the field-report write-ahead log.
//! * [`Config`]: the `[tamiyo]` section.
//!
#![deny(missing_docs)]

mod catalog;
mod config;
mod decision;
mod error;
pub mod field_reports;
mod framing;
pub mod graph;
pub mod grpc;
mod observation;
mod policy;
pub mod ppo;
pub mod risk;
mod service;
pub mod trajectory;

pub use catalog::{BlueprintCache, CacheStats, Loader};
pub use config::{
    Candidate, Config, Controller, Exploration, FieldReportConfig, HeuristicConfig, LearnedConfig,
    RiskConfig, SlotChoice,
};
pub use decision::{Action, Decision, Diagnostics};
pub use error::{Error, Result};
pub use observation::{OPTIONAL_SIGNALS, Observation};
pub use policy::action as action_space;
pub use policy::gnn;
pub use policy::{
    Cancel, HeuristicPolicy, LearnedPolicy, Policy, Proposal, Proposed, ScriptProblem,
    ScriptedPolicy, ServedPolicy, Validated,
};
pub use service::{ControllerState, ServiceStats, TamiyoService};
