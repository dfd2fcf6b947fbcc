//! What decides a run besides its tensors, its step and Kasmina's seeds: the
//! trainer's counters and health statistics and the control hook's own state
//! (Tamiyo's policy memory, risk averages, open field reports). A checkpoint
//! holds it, so that a run resumed from any epoch boundary continues exactly
//! as the uninterrupted run (DESIGN invariant 9).

use serde::{Deserialize, Serialize};

/// The decision-relevant state a checkpoint holds beside the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeState {
    /// Fences reached: the generation the next state packet follows.
    pub generation: u64,
    /// How long the last control-hook call took, ms (the next packet
    /// reports it).
    pub last_hook_ms: Option<f64>,
    /// Batches drawn so far (never rewound by a rollback).
    pub batches_drawn: u64,
    /// The batches-drawn count of each rollback still inside the window.
    pub recent_rollbacks: Vec<u64>,
    /// Epoch ends in a row that validated at chance.
    pub at_chance_epochs: u32,
    /// The loss governor's moving statistics.
    pub governor: GovernorState,
    /// The control hook's state ([`crate::fence::ControlHook::export_state`]);
    /// `None` when the run had no hook or the hook keeps none.
    pub controller: Option<serde_json::Value>,
}

/// The loss governor's moving statistics.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GovernorState {
    /// Moving mean of healthy losses.
    pub mean: f64,
    /// Moving variance of healthy losses.
    pub variance: f64,
    /// Healthy losses seen.
    pub seen: u64,
    /// Sum of the warmup losses, then (once warm) their mean.
    pub warmup: f64,
}
