//! Policies behind one trait: given an [`Observation`] and the blueprint
//! catalog, propose one thing to do. The service turns a proposal into a
//! signed command after the risk engine has judged it.
//!
//! * [`HeuristicPolicy`]: the plateau baseline every learned policy must beat.
//! * [`ScriptedPolicy`]: a fixed schedule from a file, for control cohorts and
//!   for exercising the lifecycle.
//! * [`LearnedPolicy`]: the GNN policy of a policy file (issue #17).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use leyline::v1::{BlendMode, CatalogEntry};
use urza::Parameters;

use crate::error::Result;
use crate::observation::Observation;

pub mod action;
mod cost;
pub mod gnn;
mod heuristic;
mod learned;
mod scripted;

pub use heuristic::HeuristicPolicy;
pub use learned::{LearnedPolicy, ServedPolicy, Validated};
pub use scripted::{ScriptProblem, ScriptedPolicy};

/// A cooperative cancellation flag, checked by policies between stages.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A flag that is not set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets it.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether it is set.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// `Err(Cancelled)` when set, naming the stage it was checked at.
    pub fn check(&self, stage: &'static str) -> Result<()> {
        if self.is_cancelled() {
            Err(crate::Error::Cancelled { stage })
        } else {
            Ok(())
        }
    }
}

/// One thing a policy proposes.
#[derive(Debug, Clone, PartialEq)]
pub enum Proposal {
    /// Nothing now.
    Wait {
        /// Why.
        reason: String,
    },
    /// Build a seed from a blueprint at a free slot.
    Germinate {
        /// The slot.
        slot_id: String,
        /// The blueprint (a real catalog entry).
        blueprint_id: String,
        /// Its parameters (within the blueprint's bounds).
        parameters: Parameters,
        /// The new seed's id.
        seed_id: String,
        /// Steps of its α ramp.
        alpha_steps: u32,
        /// How it blends in.
        blend: BlendMode,
    },
    /// Remove a seed.
    Cull {
        /// The seed.
        seed_id: String,
    },
    /// Keep a seed for good (Kasmina's G4 still decides).
    Fossilize {
        /// The seed.
        seed_id: String,
    },
}

/// A proposal and the rule that made it.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposed {
    /// What to do.
    pub proposal: Proposal,
    /// The rule's name (stable, for telemetry and tests).
    pub rule: &'static str,
    /// The rule's reason, with the numbers it used.
    pub detail: String,
}

impl Proposed {
    /// A WAIT from `rule`.
    pub fn wait(rule: &'static str, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        Self {
            proposal: Proposal::Wait {
                reason: detail.clone(),
            },
            rule,
            detail,
        }
    }
}

/// A controller policy. Runs on the service's persistent worker.
pub trait Policy: Send {
    /// Its name in diagnostics.
    fn name(&self) -> &'static str;

    /// Decides on one observation. `catalog` is the current blueprint
    /// catalog; `cancel` is checked between stages.
    fn decide(
        &mut self,
        observation: &Observation<'_>,
        catalog: &[CatalogEntry],
        cancel: &Cancel,
    ) -> Result<Proposed>;

    /// Told when a proposal became a command that left the service (not when
    /// it was vetoed, or discarded after a missed deadline): a policy that
    /// keeps state about what it asked for updates it here, so that a lost
    /// proposal is made again.
    fn issued(&mut self, _proposal: &Proposal) {}

    /// Everything the policy decides from besides the packet and its
    /// configuration (history, memory of its seeds, schedule position), for
    /// a checkpoint: a resumed run given it decides exactly as the
    /// uninterrupted one would. Required, so that no policy forgets it.
    fn export_state(&self) -> Result<serde_json::Value>;

    /// Continues from what [`Policy::export_state`] returned; an error (and
    /// no change) when the state is not this policy's or does not fit its
    /// configuration.
    fn import_state(&mut self, state: serde_json::Value) -> Result<()>;
}

/// Encodes a policy's state.
pub(crate) fn encode_state<T: serde::Serialize>(
    policy: &str,
    state: &T,
) -> Result<serde_json::Value> {
    serde_json::to_value(state)
        .map_err(|e| crate::Error::State(format!("the {policy} policy's state: {e}")))
}

/// Decodes a policy's state, naming the policy when it does not fit.
pub(crate) fn decode_state<T: serde::de::DeserializeOwned>(
    policy: &str,
    state: serde_json::Value,
) -> Result<T> {
    serde_json::from_value(state)
        .map_err(|e| crate::Error::State(format!("not a state of the {policy} policy: {e}")))
}
