//! The heuristic baseline: rules checked in order, first match
//! wins. Every cost is in validation-accuracy points: a seed's **rent** is
//! its parameters and forward MACs as fractions of the host's, each at a
//! configured price ([`super::cost`]).
//!
//! 1. `cull_regression` — a seed whose counterfactual contribution is below
//!    −D points is culled.
//! 2. `cull_no_improvement` — a seed K epochs old whose run has not beaten
//!    the validation accuracy of its germination epoch is culled.
//! 3. `fossilize_contribution` — a PROBATIONARY seed whose measured
//!    contribution covers its rent is asked to fossilize (once; Kasmina's G4
//!    decides); `cull_unpaid_rent` — one whose contribution does not is
//!    culled.
//! 4. `germinate_capacity` — at an epoch end, from epoch E0 on, when
//!    - the validation loss improved by less than the threshold (relative)
//!      in each of the last P epochs (a plateau),
//!    - the host is short of capacity: it still gets at least
//!      `min_training_error` of its training images wrong, and does not
//!      overfit (validation loss within `max_generalization_gap` of the
//!      training loss),
//!    - the last seeds grown paid their rent (growth stops for good once the
//!      newest `stop_after_unpaid_seeds` in a row measured a contribution
//!      below their rent; while the newest is in the model unmeasured, the
//!      next one waits),
//!    - and the seed budget allows:
//!
//!    germinate the (free slot, candidate) pair with the largest expected
//!    gain less rent, if that is positive. With `slot_choice = "earliest"`
//!    the earliest free slot where some candidate pays is used; with
//!    `"gradient"` every candidate's gain is weighted by its slot's measured
//!    gradient norm relative to the largest. The blend follows the blueprint:
//!    RESIDUAL for one that outputs new features, CONVEX for one that
//!    carries its input.
//!
//! Otherwise WAIT, saying which condition held it back.

use std::collections::BTreeMap;

use leyline::v1::{CatalogEntry, SeedStage, SlotKind, SystemStatePacket};
use urza::select::SelectionPolicy;

use super::cost::{self, HostSize, Priced};
use super::{Cancel, Policy, Proposal, Proposed};
use crate::config::{HeuristicConfig, SlotChoice};
use crate::error::{Error, Result};
use crate::observation::{Observation, stage_of};

/// What the policy remembers of one seed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedMemory {
    /// Validation accuracy when the seed was first seen.
    accuracy_at_birth: Option<f64>,
    /// FOSSILIZE already requested.
    fossilize_asked: bool,
    /// CULL already requested.
    cull_asked: bool,
    /// Its latest measured counterfactual contribution, points.
    contribution: Option<f64>,
    /// Its rent, points, when this policy grew it (or priced it since).
    rent: Option<f64>,
    /// Global step at which it was first seen (orders seeds by age).
    first_seen_step: u64,
}

/// The heuristic's memory as a checkpoint holds it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HeuristicState {
    history: Vec<(u32, f64, f64)>,
    seeds: BTreeMap<String, SeedMemory>,
    proposed_rents: BTreeMap<String, f64>,
    present: std::collections::BTreeSet<String>,
}

/// The plateau heuristic.
#[derive(Debug, Clone)]
pub struct HeuristicPolicy {
    config: HeuristicConfig,
    selection: SelectionPolicy,
    /// (epoch, validation loss, validation accuracy), one per epoch end.
    history: Vec<(u32, f64, f64)>,
    seeds: BTreeMap<String, SeedMemory>,
    /// Rents of the seeds this policy proposed, by seed id.
    proposed_rents: BTreeMap<String, f64>,
    /// Seeds in the latest packet.
    present: std::collections::BTreeSet<String>,
}

impl HeuristicPolicy {
    /// A policy with `config`, choosing among blueprints `selection` allows.
    pub fn new(config: HeuristicConfig, selection: SelectionPolicy) -> Self {
        Self {
            config,
            selection,
            history: Vec::new(),
            seeds: BTreeMap::new(),
            proposed_rents: BTreeMap::new(),
            present: Default::default(),
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
        let host = host_size(p);
        self.present = p.seed_states.iter().map(|s| s.seed_id.clone()).collect();
        for s in &p.seed_states {
            let memory = self
                .seeds
                .entry(s.seed_id.clone())
                .or_insert_with(|| SeedMemory {
                    accuracy_at_birth: accuracy,
                    fossilize_asked: false,
                    cull_asked: false,
                    contribution: None,
                    rent: None,
                    first_seen_step: p.global_step,
                });
            if s.contribution.is_some() {
                memory.contribution = s.contribution;
            }
            if memory.rent.is_none() {
                // A seed this policy grew keeps the rent it was chosen
                // with; another (restored, scripted) is priced from what
                // Kasmina reports of it once it runs.
                memory.rent = self.proposed_rents.get(&s.seed_id).copied().or_else(|| {
                    let params = s.metrics.get("parameter_count").copied()?;
                    let macs = s
                        .metrics
                        .get("forward_macs")
                        .copied()
                        .filter(|m| *m > 0.0)?;
                    cost::rent(&self.config, host?, params, macs)
                });
            }
        }
    }

    /// The rent of seed `id`, if known.
    fn rent_of(&self, id: &str) -> Option<f64> {
        self.seeds.get(id).and_then(|m| m.rent)
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
            {
                // Without a known rent the seed must at least add something.
                let rent = self.rent_of(&s.seed_id).unwrap_or(0.0);
                let seed_id = s.seed_id.clone();
                if c > rent {
                    return Some(Proposed {
                        proposal: Proposal::Fossilize { seed_id },
                        rule: "fossilize_contribution",
                        detail: format!(
                            "seed {} adds {c:.2} points, covering its rent of {rent:.2}",
                            s.seed_id
                        ),
                    });
                }
                return Some(Proposed {
                    proposal: Proposal::Cull { seed_id },
                    rule: "cull_unpaid_rent",
                    detail: format!(
                        "seed {} adds {c:.2} points, not its rent of {rent:.2}",
                        s.seed_id
                    ),
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
    fn germinate(&mut self, obs: &Observation<'_>, catalog: &[CatalogEntry]) -> Result<Proposed> {
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
        if let Some(wait) = self.unpaid_last_seed() {
            return Ok(wait);
        }
        let capacity = match self.capacity_short(p) {
            Ok(detail) => detail,
            Err((rule, detail)) => return Ok(Proposed::wait(rule, detail)),
        };
        let Some(host) = host_size(p) else {
            return Ok(Proposed::wait(
                "wait_no_cost_evidence",
                "the packet reports no host_parameters: a seed's rent cannot be weighed",
            ));
        };
        if self.config.rent_points_per_host_macs > 0.0 && host.macs.is_none() {
            return Ok(Proposed::wait(
                "wait_no_cost_evidence",
                "the host does not count its forward MACs (host_forward_macs): a seed's step-time rent cannot be weighed",
            ));
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
        free.sort_by_key(|s| (s.layer_depth, s.slot_id.clone()));
        let by_gradient = match self.config.slot_choice {
            SlotChoice::Earliest => false,
            SlotChoice::Gradient => free.iter().all(|s| s.gradient_norm.is_some()),
        };
        let best_gradient = free
            .iter()
            .filter_map(|s| s.gradient_norm)
            .fold(0.0_f64, f64::max);
        let mut refused = Vec::new();
        let mut priced: Vec<Priced> = Vec::new();
        let mut chosen: Option<Priced> = None;
        for slot in &free {
            let kind = SlotKind::try_from(slot.kind).unwrap_or(SlotKind::Unspecified);
            let shape: Vec<usize> = slot.feature_shape.iter().map(|&d| d as usize).collect();
            let Ok(spec) = urza::SlotShape::new(kind, shape) else {
                refused.push(format!("{}: slot shape not supported", slot.slot_id));
                continue;
            };
            let factor = match (by_gradient, slot.gradient_norm) {
                (true, Some(g)) if best_gradient > 0.0 => g / best_gradient,
                _ => 1.0,
            };
            let mut here: Vec<Priced> = Vec::new();
            for candidate in &self.config.candidates {
                let fits_kind = urza::definition(&candidate.blueprint)
                    .is_some_and(|d| d.descriptor().slot_kinds.contains(&(kind as i32)));
                if !fits_kind {
                    continue;
                }
                match cost::price(
                    &self.config,
                    &self.selection,
                    catalog,
                    host,
                    slot,
                    &spec,
                    candidate,
                    factor,
                ) {
                    Ok(x) => here.push(x),
                    Err(why) => refused.push(why),
                }
            }
            let best_here = here
                .iter()
                .filter(|x| x.net() > 0.0)
                .max_by(|a, b| a.net().total_cmp(&b.net()))
                .cloned();
            priced.extend(here);
            if let Some(best) = best_here {
                let better = chosen.as_ref().is_none_or(|c| best.net() > c.net());
                if better {
                    chosen = Some(best);
                }
                if !by_gradient {
                    // Earliest: the first slot where a seed pays.
                    break;
                }
            }
        }
        let Some(choice) = chosen else {
            if let Some(best) = priced.iter().max_by(|a, b| a.net().total_cmp(&b.net())) {
                return Ok(Proposed::wait(
                    "wait_no_paying_seed",
                    format!(
                        "{capacity}; no seed's expected gain covers its rent, best {}",
                        best.describe(host)
                    ),
                ));
            }
            return Err(Error::NoCandidates {
                detail: refused.join("; "),
            });
        };
        let seed_id = format!("seed-{}-s{}", choice.slot_id, p.global_step);
        self.proposed_rents.insert(seed_id.clone(), choice.rent);
        let detail = format!(
            "{why}; {capacity}; slot {} by {}; {}",
            choice.slot_id,
            if by_gradient {
                "gradient-weighted gain"
            } else {
                "earliest layer where a seed pays"
            },
            choice.describe(host)
        );
        Ok(Proposed {
            proposal: Proposal::Germinate {
                slot_id: choice.slot_id,
                blueprint_id: choice.blueprint_id,
                parameters: choice.parameters,
                seed_id,
                alpha_steps: self.config.alpha_steps,
                blend: choice.blend,
            },
            rule: "germinate_capacity",
            detail,
        })
    }

    /// `Some(wait)` while the newest seed is in the model unmeasured, or
    /// once the newest `stop_after_unpaid_seeds` seeds in a row each measured
    /// a contribution that did not cover its rent: growth stops.
    fn unpaid_last_seed(&self) -> Option<Proposed> {
        let mut newest_first: Vec<_> = self.seeds.iter().collect();
        newest_first.sort_by_key(|(id, m)| std::cmp::Reverse((m.first_seen_step, (*id).clone())));
        let (id, last) = newest_first.first()?;
        if last.contribution.is_none() {
            // One seed at a time: the next waits for the last one's evidence
            // while it is still in the model unmeasured.
            return self.present.contains(*id).then(|| {
                Proposed::wait(
                    "wait_last_seed_unmeasured",
                    format!("the last seed, {id}, has no measured contribution yet"),
                )
            });
        }
        let unpaid: Vec<String> = newest_first
            .iter()
            .map_while(|(id, m)| {
                let contribution = m.contribution?;
                let rent = m.rent.unwrap_or(0.0);
                (contribution <= rent)
                    .then(|| format!("{id} {contribution:+.2} against a rent of {rent:.2}"))
            })
            .collect();
        let limit = self.config.stop_after_unpaid_seeds as usize;
        (unpaid.len() >= limit).then(|| {
            Proposed::wait(
                "wait_last_seed_unpaid",
                format!(
                    "the last {} seed(s) did not pay their rent ({}): growth stops",
                    unpaid.len(),
                    unpaid.join(", ")
                ),
            )
        })
    }

    /// `Ok(detail)` when the packet says the host is short of capacity, else
    /// the WAIT that says why not (missing evidence included: no growth on a
    /// guess).
    fn capacity_short(
        &self,
        p: &SystemStatePacket,
    ) -> std::result::Result<String, (&'static str, String)> {
        let Some(&accuracy) = p.training_metrics.get("train_accuracy") else {
            return Err((
                "wait_no_capacity_evidence",
                "the packet reports no train_accuracy".into(),
            ));
        };
        let error = 1.0 - accuracy;
        let min = self.config.min_training_error;
        if error < min {
            return Err((
                "wait_capacity_sufficient",
                format!(
                    "training error {:.1}% is below {:.1}%: the host fits its training data",
                    100.0 * error,
                    100.0 * min
                ),
            ));
        }
        let (Some(train), Some(validation)) = (p.training_loss, p.validation_loss) else {
            return Err((
                "wait_no_capacity_evidence",
                "the packet lacks the training or validation loss".into(),
            ));
        };
        let gap = if train > 0.0 {
            (validation - train) / train
        } else {
            f64::INFINITY
        };
        if gap > self.config.max_generalization_gap {
            return Err((
                "wait_overfitting",
                format!(
                    "validation loss {validation:.4} is {:.0}% above training loss {train:.4} (limit {:.0}%)",
                    100.0 * gap,
                    100.0 * self.config.max_generalization_gap
                ),
            ));
        }
        Ok(format!(
            "training error {:.1}% ≥ {:.1}% and validation loss within {:.0}% of training loss",
            100.0 * error,
            100.0 * min,
            100.0 * gap.max(0.0)
        ))
    }
}

/// The host's size as the packet reports it.
fn host_size(p: &SystemStatePacket) -> Option<HostSize> {
    let parameters = p
        .training_metrics
        .get("host_parameters")
        .copied()
        .filter(|n| *n > 0.0)?;
    Some(HostSize {
        parameters,
        macs: p
            .training_metrics
            .get("host_forward_macs")
            .copied()
            .filter(|m| *m > 0.0),
    })
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

    fn export_state(&self) -> Result<serde_json::Value> {
        let state = HeuristicState {
            history: self.history.clone(),
            seeds: self.seeds.clone(),
            proposed_rents: self.proposed_rents.clone(),
            present: self.present.clone(),
        };
        super::encode_state(self.name(), &state)
    }

    fn import_state(&mut self, state: serde_json::Value) -> Result<()> {
        let HeuristicState {
            history,
            seeds,
            proposed_rents,
            present,
        } = super::decode_state(self.name(), state)?;
        self.history = history;
        self.seeds = seeds;
        self.proposed_rents = proposed_rents;
        self.present = present;
        Ok(())
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
