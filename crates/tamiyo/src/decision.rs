//! What a step returns: an explicit WAIT or a signed command, with the
//! evidence behind it (which policy and rule decided, the risk engine's
//! findings and verdict, the input coverage, how long the step took).

use std::time::Duration;

use leyline::v1::AdaptationCommand;

use crate::risk::{Finding, Verdict};

/// The decision of one step.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// WAIT or a command.
    pub action: Action,
    /// Why.
    pub diagnostics: Diagnostics,
}

/// WAIT or a signed command.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Nothing to do now; the reason says why.
    Wait {
        /// Why (the policy's or the risk engine's).
        reason: String,
    },
    /// A signed command for Kasmina.
    Command(Box<AdaptationCommand>),
}

/// The evidence behind a decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostics {
    /// The policy that decided (`heuristic`, `script`).
    pub policy: &'static str,
    /// The policy's rule that fired.
    pub rule: String,
    /// The policy's own reason, with the numbers it used.
    pub detail: String,
    /// The risk engine's verdict on the proposal.
    pub verdict: Verdict,
    /// Every risk rule that fired, in rule order.
    pub findings: Vec<Finding>,
    /// Whether the risk engine is in conservative mode after this step.
    pub conservative: bool,
    /// Fraction of the optional input signals present.
    pub coverage: f64,
    /// The optional signals the packet lacked.
    pub missing: Vec<&'static str>,
    /// The packet's generation (commands carry it).
    pub generation: u64,
    /// Global step of the packet.
    pub global_step: u64,
    /// Wall time of the step.
    pub elapsed: Duration,
}

impl Decision {
    /// The command, if the decision is one.
    pub fn command(&self) -> Option<&AdaptationCommand> {
        match &self.action {
            Action::Command(c) => Some(c),
            Action::Wait { .. } => None,
        }
    }
}
