//! The heuristic baseline: rules checked in order, first match
//! wins.
//!
//! 1. `cull_regression` — a seed whose counterfactual contribution is below
//!    −D points is culled.
//! 2. `cull_no_improvement` — a seed K epochs old whose run has not beaten
//!    the validation accuracy of its germination epoch is culled.
//! 3. `fossilize_contribution` — a PROBATIONARY seed with a positive measured
//!    contribution is asked to fossilize (once; Kasmina's G4 decides).
//! 4. `germinate_plateau` — at an epoch end, from epoch E0 on, when the
//!    validation loss improved by less than the threshold (relative) in each
//!    of the last P epochs and the seed budget allows: germinate at the
//!    earliest free slot (whose features every later layer depends on), or
//!    with `slot_choice = "gradient"` at the one with the largest measured
//!    slot gradient norm, with the first preferred blueprint of the slot's kind that
//!    the catalog offers, selection allows and the parameter budget fits.
//!
//! Otherwise WAIT, saying which condition held it back.

use std::collections::BTreeMap;

use leyline::v1::{BlendMode, CatalogEntry, SeedStage, SlotKind};
use urza::select::SelectionPolicy;

use super::{Cancel, Policy, Proposal, Proposed};
use crate::config::{HeuristicConfig, SlotChoice};
use crate::error::{Error, Result};
use crate::observation::{Observation, stage_of};

/// What the policy remembers of one seed.
#[derive(Debug, Clone, PartialEq)]
struct SeedMemory {
    /// Validation accuracy when the seed was first seen.
    accuracy_at_birth: Option<f64>,
    /// FOSSILIZE already requested.
    fossilize_asked: bool,
    /// CULL already requested.
    cull_asked: bool,
}

/// The plateau heuristic.
#[derive(Debug, Clone)]
pub struct HeuristicPolicy {
    config: HeuristicConfig,
    selection: SelectionPolicy,
    /// (epoch, validation loss, validation accuracy), one per epoch end.
    history: Vec<(u32, f64, f64)>,
    seeds: BTreeMap<String, SeedMemory>,
}

impl HeuristicPolicy {
    /// A policy with `config`, choosing among blueprints `selection` allows.
    pub fn new(config: HeuristicConfig, selection: SelectionPolicy) -> Self {
        Self {
            config,
            selection,
            history: Vec::new(),
            seeds: BTreeMap::new(),
        }
    }

    fn remember(&mut self, obs: &Observation<'_>) {
        let p = obs.packet;
        if let (Some(loss), Some(acc)) = (p.validation_loss, p.validation_accuracy)
            && self
                .history
                .last()
                .is_none_or(|(e, _, _)| *e < p.current_epoch)
        {
            self.history.push((p.current_epoch, loss, acc));
        }
        let accuracy = self.history.last().map(|(_, _, a)| *a);
        for s in &p.seed_states {
            self.seeds
                .entry(s.seed_id.clone())
                .or_insert_with(|| SeedMemory {
                    accuracy_at_birth: accuracy,
                    fossilize_asked: false,
                    cull_asked: false,
                });
        }
    }

    /// Rules 1–3, over the seeds in the packet. A CULL or FOSSILIZE is
    /// proposed until it has been issued ([`Policy::issued`]): one lost to a
    /// deadline or a veto comes again at the next fence.
    fn judge_seeds(&self, obs: &Observation<'_>) -> Option<Proposed> {
        let latest = self.history.last().map(|(_, _, a)| *a);
        for s in &obs.packet.seed_states {
            let stage = stage_of(s.stage);
            let judged = matches!(
                stage,
                SeedStage::Training
                    | SeedStage::Blending
                    | SeedStage::Shadowing
                    | SeedStage::Probationary
            );
            let Some(memory) = self.seeds.get(&s.seed_id) else {
                continue;
            };
            if !judged || memory.cull_asked {
                continue;
            }
            if let Some(c) = s.contribution
                && c < -self.config.cull_drop_points
            {
                return Some(Proposed {
                    proposal: Proposal::Cull {
                        seed_id: s.seed_id.clone(),
                    },
                    rule: "cull_regression",
                    detail: format!(
                        "seed {} costs {:.2} points (limit -{:.2})",
                        s.seed_id, c, self.config.cull_drop_points
                    ),
                });
            }
            if s.age_epochs >= self.config.cull_after_epochs
                && let (Some(born), Some(now)) = (memory.accuracy_at_birth, latest)
                && now <= born
            {
                return Some(Proposed {
                    proposal: Proposal::Cull {
                        seed_id: s.seed_id.clone(),
                    },
                    rule: "cull_no_improvement",
                    detail: format!(
                        "seed {} is {} epochs old and accuracy {:.2}% has not beaten {:.2}% at its germination",
                        s.seed_id,
                        s.age_epochs,
                        100.0 * now,
                        100.0 * born
                    ),
                });
            }
            if stage == SeedStage::Probationary
                && !memory.fossilize_asked
                && let Some(c) = s.contribution
                && c > 0.0
            {
                return Some(Proposed {
                    proposal: Proposal::Fossilize {
                        seed_id: s.seed_id.clone(),
                    },
                    rule: "fossilize_contribution",
                    detail: format!("seed {} adds {c:.2} points", s.seed_id),
                });
            }
        }
        None
    }

    /// Whether learning has plateaued: the detail says why or why not.
    fn plateau(&self) -> (bool, String) {
        let p = self.config.plateau_epochs as usize;
        if self.history.len() < p + 1 {
            return (
                false,
                format!(
                    "{} epoch end(s) seen, a plateau of {p} epoch(s) needs {}",
                    self.history.len(),
                    p + 1
                ),
            );
        }
        let recent = &self.history[self.history.len() - p - 1..];
        let mut improvements = Vec::with_capacity(p);
        for pair in recent.windows(2) {
            let (before, after) = (pair[0].1, pair[1].1);
            improvements.push(if before > 0.0 {
                (before - after) / before
            } else {
                0.0
            });
        }
        let best = improvements
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        let flat = best < self.config.plateau_min_improvement;
        (
            flat,
            format!(
                "validation loss improved at most {:.1}% per epoch over the last {p} epoch(s) (plateau below {:.1}%)",
                100.0 * best,
                100.0 * self.config.plateau_min_improvement
            ),
        )
    }

    /// Rule 4.
    fn germinate(&self, obs: &Observation<'_>, catalog: &[CatalogEntry]) -> Result<Proposed> {
        let p = obs.packet;
        if !obs.epoch_end() {
            return Ok(Proposed::wait(
                "wait_epoch_end",
                "germination is decided on epoch-end evidence",
            ));
        }
        if p.current_epoch < self.config.min_epoch {
            return Ok(Proposed::wait(
                "wait_min_epoch",
                format!(
                    "epoch {} is before E0 = {}",
                    p.current_epoch, self.config.min_epoch
                ),
            ));
        }
        let live = obs.live_seeds().count() as u32;
        if live >= self.config.max_seeds {
            return Ok(Proposed::wait(
                "wait_seed_budget",
                format!("{live} seed(s) of at most {}", self.config.max_seeds),
            ));
        }
        let (flat, why) = self.plateau();
        if !flat {
            return Ok(Proposed::wait("wait_no_plateau", why));
        }
        let mut free: Vec<_> = p
            .slots
            .iter()
            .filter(|s| stage_of(s.stage) == SeedStage::Dormant && s.seed_id.is_empty())
            .collect();
        if free.is_empty() {
            return Ok(Proposed::wait(
                "wait_no_free_slot",
                "every slot is occupied or embargoed",
            ));
        }
        let by_gradient = match self.config.slot_choice {
            SlotChoice::Earliest => false,
            SlotChoice::Gradient => free.iter().all(|s| s.gradient_norm.is_some()),
        };
        if by_gradient {
            free.sort_by(|a, b| {
                b.gradient_norm
                    .unwrap_or(0.0)
                    .total_cmp(&a.gradient_norm.unwrap_or(0.0))
                    .then(a.layer_depth.cmp(&b.layer_depth))
            });
        } else {
            free.sort_by_key(|s| (s.layer_depth, s.slot_id.clone()));
        }
        let mut refused = Vec::new();
        for slot in free {
            let kind = SlotKind::try_from(slot.kind).unwrap_or(SlotKind::Unspecified);
            let shape: Vec<usize> = slot.feature_shape.iter().map(|&d| d as usize).collect();
            let Ok(spec) = urza::SlotShape::new(kind, shape) else {
                refused.push(format!("{}: slot shape not supported", slot.slot_id));
                continue;
            };
            let preferences = match kind {
                SlotKind::Conv2d => &self.config.conv_blueprints,
                SlotKind::Dense => &self.config.dense_blueprints,
                SlotKind::Unspecified => {
                    refused.push(format!("{}: slot kind unspecified", slot.slot_id));
                    continue;
                }
            };
            for id in preferences {
                let Some(entry) = catalog
                    .iter()
                    .find(|e| e.descriptor.as_ref().is_some_and(|d| &d.blueprint_id == id))
                else {
                    refused.push(format!("{id}: not in the catalog"));
                    continue;
                };
                let Some(descriptor) = &entry.descriptor else {
                    continue;
                };
                if let Err(why) = self.selection.check(descriptor, entry.quarantined, kind) {
                    refused.push(format!("{id}: {why}"));
                    continue;
                }
                let Some(def) = urza::definition(id) else {
                    refused.push(format!("{id}: no builder"));
                    continue;
                };
                let parameters = def.default_parameters();
                let count = match def.parameter_count(&parameters, &spec) {
                    Ok(n) => n,
                    Err(e) => {
                        refused.push(format!("{id} at {}: {e}", slot.slot_id));
                        continue;
                    }
                };
                if count > self.config.seed_parameter_budget {
                    refused.push(format!(
                        "{id} at {}: {count} parameters over the budget of {}",
                        slot.slot_id, self.config.seed_parameter_budget
                    ));
                    continue;
                }
                return Ok(Proposed {
                    proposal: Proposal::Germinate {
                        slot_id: slot.slot_id.clone(),
                        blueprint_id: id.clone(),
                        parameters,
                        seed_id: format!("seed-{}-s{}", slot.slot_id, p.global_step),
                        alpha_steps: self.config.alpha_steps,
                        blend: BlendMode::Convex,
                    },
                    rule: "germinate_plateau",
                    detail: format!(
                        "{why}; slot {} chosen by {} ; {id} has {count} parameters",
                        slot.slot_id,
                        if by_gradient {
                            "largest slot gradient norm"
                        } else {
                            "earliest layer"
                        }
                    ),
                });
            }
        }
        Err(Error::NoCandidates {
            detail: refused.join("; "),
        })
    }
}

impl Policy for HeuristicPolicy {
    fn name(&self) -> &'static str {
        "heuristic"
    }

    fn issued(&mut self, proposal: &Proposal) {
        match proposal {
            Proposal::Cull { seed_id } => {
                if let Some(m) = self.seeds.get_mut(seed_id) {
                    m.cull_asked = true;
                }
            }
            Proposal::Fossilize { seed_id } => {
                if let Some(m) = self.seeds.get_mut(seed_id) {
                    m.fossilize_asked = true;
                }
            }
            Proposal::Wait { .. } | Proposal::Germinate { .. } => {}
        }
    }

    fn decide(
        &mut self,
        observation: &Observation<'_>,
        catalog: &[CatalogEntry],
        cancel: &Cancel,
    ) -> Result<Proposed> {
        self.remember(observation);
        cancel.check("heuristic: seeds")?;
        if let Some(p) = self.judge_seeds(observation) {
            return Ok(p);
        }
        cancel.check("heuristic: germination")?;
        self.germinate(observation, catalog)
    }
}
