//! A fixed schedule read from a TOML file: for control cohorts (the same
//! growth on every run) and for driving Kasmina's lifecycle by hand.
//!
//! ```toml
//! [[action]]
//! at_step = 5                  # the first fence at or after this global step
//! op = "germinate"             # germinate | cull | fossilize
//! slot = "r0"
//! blueprint = "conv.residual"
//! parameters = { depth = 1, expansion = 4 }   # default: the blueprint's
//! seed = "seed-r0"             # default: seed-<slot>-s<step>
//! alpha_steps = 40             # default 40
//! blend = "convex"             # convex (default) | residual
//!
//! [[action]]
//! at_epoch = 4                 # the epoch-end fence of epoch 4
//! op = "cull"
//! seed = "seed-r0"
//! ```
//!
//! One action per step, in schedule order; an action whose moment has come
//! waits for the next step if another one went first, and stays scheduled
//! until it has been issued (a vetoed one, or one lost to a missed deadline,
//! is proposed again). Every problem in the file is an error at load, naming
//! the action.

use std::collections::VecDeque;
use std::path::Path;

use leyline::v1::{BlendMode, CatalogEntry};
use serde::Deserialize;
use urza::Parameters;

use super::{Cancel, Policy, Proposal, Proposed};
use crate::error::{Error, Result};
use crate::observation::Observation;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    action: Vec<Action>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Op {
    Germinate,
    Cull,
    Fossilize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Blend {
    Convex,
    Residual,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Action {
    at_step: Option<u64>,
    at_epoch: Option<u32>,
    op: Op,
    slot: Option<String>,
    blueprint: Option<String>,
    #[serde(default)]
    parameters: Parameters,
    seed: Option<String>,
    alpha_steps: Option<u32>,
    blend: Option<Blend>,
}

/// A fixed schedule.
#[derive(Debug, Clone)]
pub struct ScriptedPolicy {
    /// Actions not yet issued, each with its place in the file (from 0).
    pending: VecDeque<(usize, Action)>,
    /// Actions in the file.
    total: usize,
    /// The action of the last proposal, removed once it is issued.
    proposed: Option<usize>,
}

/// What is wrong with a schedule.
#[derive(Debug, thiserror::Error)]
pub enum ScriptProblem {
    /// The text is not a schedule (TOML syntax, unknown field or op).
    #[error(transparent)]
    Toml(#[from] toml::de::Error),
    /// One action is unusable.
    #[error("action {action}: {problem}")]
    Action {
        /// The action, from 1.
        action: usize,
        /// What is wrong with it.
        problem: String,
    },
}

impl ScriptProblem {
    fn action(action: usize, problem: impl Into<String>) -> Self {
        Self::Action {
            action,
            problem: problem.into(),
        }
    }
}

impl ScriptedPolicy {
    /// Reads and checks a schedule file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            context: "reading the schedule",
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|problem| Error::Script {
            path: path.display().to_string(),
            problem,
        })
    }

    /// Parses a schedule (errors name the action, from 1).
    pub fn parse(text: &str) -> std::result::Result<Self, ScriptProblem> {
        let file: File = toml::from_str(text)?;
        for (i, a) in file.action.iter().enumerate() {
            let n = i + 1;
            if a.at_step.is_some() == a.at_epoch.is_some() {
                return Err(ScriptProblem::action(
                    n,
                    "give exactly one of at_step and at_epoch",
                ));
            }
            match a.op {
                Op::Germinate => {
                    let (Some(slot), Some(blueprint)) = (&a.slot, &a.blueprint) else {
                        return Err(ScriptProblem::action(
                            n,
                            "germinate needs slot and blueprint",
                        ));
                    };
                    if slot.trim().is_empty() {
                        return Err(ScriptProblem::action(n, "empty slot"));
                    }
                    let Some(def) = urza::definition(blueprint) else {
                        return Err(ScriptProblem::action(
                            n,
                            format!("unknown blueprint {blueprint:?}"),
                        ));
                    };
                    if let Some(unknown) = a
                        .parameters
                        .keys()
                        .find(|k| !def.params.iter().any(|p| p.name == k.as_str()))
                    {
                        return Err(ScriptProblem::action(
                            n,
                            format!("{blueprint} has no parameter {unknown:?}"),
                        ));
                    }
                    if a.alpha_steps == Some(0) {
                        return Err(ScriptProblem::action(n, "alpha_steps must be at least 1"));
                    }
                }
                Op::Cull | Op::Fossilize => {
                    if a.seed.is_none() {
                        return Err(ScriptProblem::action(n, "cull and fossilize need a seed"));
                    }
                    if a.slot.is_some() || a.blueprint.is_some() || !a.parameters.is_empty() {
                        return Err(ScriptProblem::action(
                            n,
                            "cull and fossilize take only a seed",
                        ));
                    }
                }
            }
        }
        Ok(Self {
            total: file.action.len(),
            pending: file.action.into_iter().enumerate().collect(),
            proposed: None,
        })
    }

    /// Checks the schedule against the host's slots (id and shape): every
    /// germination must name one of them, and its blueprint, with its
    /// parameters (the blueprint's defaults when none are given), must fit
    /// that slot. Errors name the action, so a bad schedule is refused
    /// before the run starts rather than at its fence.
    pub fn check_slots(
        &self,
        slots: &[(String, urza::SlotShape)],
    ) -> std::result::Result<(), ScriptProblem> {
        for (i, a) in &self.pending {
            let (Op::Germinate, Some(slot), Some(blueprint)) = (a.op, &a.slot, &a.blueprint) else {
                continue;
            };
            let n = i + 1;
            let Some((_, shape)) = slots.iter().find(|(id, _)| id == slot) else {
                let ids: Vec<&str> = slots.iter().map(|(id, _)| id.as_str()).collect();
                return Err(ScriptProblem::action(
                    n,
                    format!(
                        "the host has no slot {slot:?} (its slots: {})",
                        ids.join(", ")
                    ),
                ));
            };
            let Some(def) = urza::definition(blueprint) else {
                return Err(ScriptProblem::action(
                    n,
                    format!("unknown blueprint {blueprint:?}"),
                ));
            };
            // As the library builds it: the given parameters over the
            // defaults.
            let params = def.with_defaults(&a.parameters);
            def.check(&params, shape).map_err(|e| {
                ScriptProblem::action(n, format!("{blueprint} does not fit slot {slot}: {e}"))
            })?;
        }
        Ok(())
    }

    /// Actions not yet issued.
    pub fn remaining(&self) -> usize {
        self.pending.len()
    }
}

impl Policy for ScriptedPolicy {
    fn name(&self) -> &'static str {
        "script"
    }

    fn issued(&mut self, _proposal: &Proposal) {
        if let Some(index) = self.proposed.take() {
            self.pending.remove(index);
        }
    }

    fn export_state(&self) -> Result<serde_json::Value> {
        Ok(serde_json::json!({
            "actions": self.total,
            "pending": self.pending.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        }))
    }

    fn import_state(&mut self, state: serde_json::Value) -> Result<()> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct State {
            actions: usize,
            pending: Vec<usize>,
        }
        let State { actions, pending } = super::decode_state(self.name(), state)?;
        if actions != self.total {
            return Err(Error::State(format!(
                "the checkpoint's schedule had {actions} action(s), this one has {}",
                self.total
            )));
        }
        if let Some(gone) = pending
            .iter()
            .find(|i| !self.pending.iter().any(|(j, _)| j == *i))
        {
            return Err(Error::State(format!(
                "the checkpoint has action {} still to do, which this run already did",
                gone + 1
            )));
        }
        self.pending.retain(|(i, _)| pending.contains(i));
        self.proposed = None;
        Ok(())
    }

    fn decide(
        &mut self,
        observation: &Observation<'_>,
        _catalog: &[CatalogEntry],
        cancel: &Cancel,
    ) -> Result<Proposed> {
        cancel.check("script")?;
        self.proposed = None;
        let p = observation.packet;
        let due = |a: &Action| match (a.at_step, a.at_epoch) {
            (Some(step), _) => p.global_step >= step,
            (None, Some(epoch)) => observation.epoch_end() && p.current_epoch >= epoch,
            (None, None) => false,
        };
        let Some(index) = self.pending.iter().position(|(_, a)| due(a)) else {
            return Ok(Proposed::wait(
                "script_nothing_due",
                format!("{} action(s) scheduled later", self.pending.len()),
            ));
        };
        // The action stays scheduled until it is issued: one vetoed or lost
        // to a missed deadline is proposed again at the next fence.
        self.proposed = Some(index);
        let Some((_, a)) = self.pending.get(index).cloned() else {
            return Ok(Proposed::wait("script_nothing_due", "schedule empty"));
        };
        let when = match (a.at_step, a.at_epoch) {
            (Some(s), _) => format!("step {s}"),
            (None, Some(e)) => format!("epoch {e}"),
            (None, None) => String::new(),
        };
        let proposal = match a.op {
            Op::Germinate => {
                let slot = a.slot.unwrap_or_default();
                let blueprint = a.blueprint.unwrap_or_default();
                let mut parameters = urza::definition(&blueprint)
                    .map(|d| d.default_parameters())
                    .unwrap_or_default();
                parameters.extend(a.parameters);
                Proposal::Germinate {
                    seed_id: a
                        .seed
                        .unwrap_or_else(|| format!("seed-{slot}-s{}", p.global_step)),
                    slot_id: slot,
                    blueprint_id: blueprint,
                    parameters,
                    alpha_steps: a.alpha_steps.unwrap_or(40),
                    blend: match a.blend.unwrap_or(Blend::Convex) {
                        Blend::Convex => BlendMode::Convex,
                        Blend::Residual => BlendMode::Residual,
                    },
                }
            }
            Op::Cull => Proposal::Cull {
                seed_id: a.seed.unwrap_or_default(),
            },
            Op::Fossilize => Proposal::Fossilize {
                seed_id: a.seed.unwrap_or_default(),
            },
        };
        Ok(Proposed {
            proposal,
            rule: "script",
            detail: format!("scheduled at {when}"),
        })
    }
}
