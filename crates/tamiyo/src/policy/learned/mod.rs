//! The learned controller as a [`Policy`]: at each epoch end the state
//! packet and the catalog become an observation graph (normalised with the
//! statistics the policy file carries, updated as the run goes), the GNN
//! scores every head, the action mask keeps only what the lifecycle, the
//! free slots, the catalog and the seed budget allow, and one action is
//! taken — the most probable (`greedy`, for evaluation) or a draw from the
//! seeded stream (`sample`, for training episodes). Between epoch ends it
//! waits: its reward is measured by validation, which only epoch ends have.
//!
//! A decision is a function of the weights, the packet and the sampling
//! seed, never of timing: the draw comes from a stream seeded by
//! (`sample_seed`, the packet's step), and a packet decided again — the
//! epoch-end fence retries a step that missed its deadline — is decided
//! from the normaliser statistics it was first decided from, so the retry
//! gives the same action and the statistics advance once per packet.
//!
//! Every decision can be recorded to a trajectory file
//! ([`crate::trajectory`]) for PPO: one record per packet (a retry replaces
//! the record of the attempt it retries; a record is written once the next
//! packet comes, or the policy is dropped). What a run's resume needs — the
//! normalisers and the count of decisions — is its exported state.

use std::path::Path;

use leyline::v1::CatalogEntry;
use serde::{Deserialize, Serialize};

use super::action::{self, Action, Op, Sampler, TEMPOS};
use super::gnn::{BLENDS, GnnModel, PolicyManifest, load_policy, mask_for};
use super::{Cancel, Policy, Proposal, Proposed};
use crate::config::{Exploration, LearnedConfig};
use crate::error::{Error, Result};
use crate::graph::{GraphBuilder, GraphSchema, NodeType, Normalisers, ObservationGraph, RunMemory};
use crate::observation::Observation;
use crate::trajectory::{DecisionRecord, TrajectoryWriter};

mod imitate;
mod swap;

pub use swap::{ServedPolicy, Validated};

/// The GNN policy in the loop.
pub struct LearnedPolicy {
    model: GnnModel,
    manifest: PolicyManifest,
    builder: GraphBuilder,
    exploration: Exploration,
    sample_seed: u64,
    max_live_seeds: u32,
    trajectory: Option<TrajectoryWriter>,
    decisions: u64,
    /// The packet decided last, the normalisers from before it, and its
    /// record (not yet written: a retry may replace it).
    last: Option<Last>,
    /// Who decides under `exploration = "imitate"`.
    teacher: Option<Box<dyn Policy>>,
    /// Teacher decisions with no action in the network's space (not
    /// recorded).
    unimitable: u64,
    /// `tamiyo.learned.blueprint_parameters`.
    blueprint_parameters: std::collections::BTreeMap<String, urza::Parameters>,
}

/// Who made a decision: the network (its proposal), or the teacher (its
/// proposal, which the network's action imitates — or cannot, and why).
enum Made {
    Own(Proposal),
    Taught(Proposed),
    Unimitable(Proposed, String),
}

struct Last {
    packet_id: String,
    normalisers_before: Normalisers,
    record: Option<DecisionRecord>,
}

/// The sampling stream of one packet: SplitMix64 of the seed and the step,
/// so that neighbouring steps and seeds give unrelated streams.
fn stream(sample_seed: u64, step: u64) -> Sampler {
    let mut z = sample_seed ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    Sampler::new(z ^ (z >> 31))
}

impl std::fmt::Debug for LearnedPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LearnedPolicy")
            .field("training_step", &self.manifest.training_step)
            .field("exploration", &self.exploration)
            .field("decisions", &self.decisions)
            .finish_non_exhaustive()
    }
}

/// What a checkpoint keeps of the policy.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    weights_sha256: String,
    sample_seed: u64,
    normalisers: Normalisers,
    /// The graph's memory of the run (absent in checkpoints from before it).
    #[serde(default)]
    memory: RunMemory,
    decisions: u64,
    /// The teacher's own state, under `exploration = "imitate"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    teacher: Option<serde_json::Value>,
}

/// `tamiyo.learned.policy`, or the error that it names no file.
fn policy_path(config: &LearnedConfig) -> Result<&Path> {
    config.policy.as_deref().ok_or_else(|| Error::PolicyFile {
        path: "(unset)".into(),
        problem: "tamiyo.learned.policy names no policy file".into(),
    })
}

impl LearnedPolicy {
    /// The policy of `model` and `manifest` for a run whose graph schema is
    /// `schema`; the graph starts from the manifest's normaliser statistics.
    pub fn new(
        model: GnnModel,
        manifest: PolicyManifest,
        config: &LearnedConfig,
        schema: GraphSchema,
    ) -> Result<Self> {
        let mut builder = GraphBuilder::new(schema)?
            .with_blueprint_parameters(config.blueprint_parameters.clone());
        builder.set_normalisers(manifest.normalisers.clone())?;
        Ok(Self {
            model,
            manifest,
            builder,
            exploration: config.exploration,
            sample_seed: config.sample_seed,
            max_live_seeds: config.max_live_seeds,
            trajectory: None,
            decisions: 0,
            last: None,
            teacher: None,
            unimitable: 0,
            blueprint_parameters: config.blueprint_parameters.clone(),
        })
    }

    /// The policy that decides under `exploration = "imitate"` (behaviour
    /// cloning): its proposals go out unchanged, and each is recorded as the
    /// network's action for it.
    pub fn with_teacher(mut self, teacher: Box<dyn Policy>) -> Self {
        self.teacher = Some(teacher);
        self
    }

    /// Teacher decisions that had no action in the network's space (a
    /// choice the mask forbids, a blueprint outside the graph): made, not
    /// recorded.
    pub fn unimitable(&self) -> u64 {
        self.unimitable
    }

    /// Loads the policy file `config.policy`, verified under `key`.
    pub fn load(
        config: &LearnedConfig,
        schema: GraphSchema,
        key: &leyline::security::SigningKey,
    ) -> Result<Self> {
        let (model, manifest) = load_policy(policy_path(config)?, key, &schema)?;
        Self::new(model, manifest, config, schema)
    }

    /// Records every decision from now on to the trajectory file at `path`.
    pub fn record_to(&mut self, path: &Path) -> Result<()> {
        self.trajectory = Some(TrajectoryWriter::create(path)?);
        Ok(())
    }

    /// The policy file's manifest.
    pub fn manifest(&self) -> &PolicyManifest {
        &self.manifest
    }

    /// Writes the pending record, if any.
    fn flush(&mut self) -> Result<()> {
        let record = self.last.as_mut().and_then(|l| l.record.take());
        match (&self.trajectory, record) {
            (Some(trajectory), Some(record)) => trajectory.record(record),
            _ => Ok(()),
        }
    }

    /// `action` as a proposal on `graph`.
    fn proposal(
        &self,
        graph: &ObservationGraph,
        obs: &Observation<'_>,
        action: &Action,
    ) -> Result<Proposal> {
        let id = |t: NodeType, i: Option<usize>, head: &str| -> Result<String> {
            i.and_then(|i| graph.nodes.get(&t).and_then(|n| n.ids.get(i)))
                .cloned()
                .ok_or_else(|| Error::Action(format!("{head} choice {i:?} is not in the graph")))
        };
        Ok(match action.op {
            Op::Wait => Proposal::Wait {
                reason: "the learned policy waits".into(),
            },
            Op::Germinate => {
                let slot_id = id(NodeType::Slot, action.slot, "slot")?;
                let blueprint_id = id(NodeType::Blueprint, action.blueprint, "blueprint")?;
                let given = self.blueprint_parameters.get(&blueprint_id);
                let parameters = urza::definition(&blueprint_id)
                    .map(|d| given.map_or_else(|| d.default_parameters(), |g| d.with_defaults(g)))
                    .unwrap_or_default();
                let pick = |i: Option<usize>, head: &str| {
                    i.ok_or_else(|| Error::Action(format!("GERMINATE without a {head}")))
                };
                let alpha_steps = *TEMPOS
                    .get(pick(action.tempo, "tempo")?)
                    .ok_or_else(|| Error::Action("tempo out of range".into()))?;
                let blend = *BLENDS
                    .get(pick(action.blend, "blend")?)
                    .ok_or_else(|| Error::Action("blend out of range".into()))?;
                Proposal::Germinate {
                    seed_id: format!("seed-{slot_id}-s{}", obs.packet.global_step),
                    slot_id,
                    blueprint_id,
                    parameters,
                    alpha_steps,
                    blend,
                }
            }
            Op::Cull => Proposal::Cull {
                seed_id: id(NodeType::Seed, action.seed, "seed")?,
            },
            Op::Fossilize => Proposal::Fossilize {
                seed_id: id(NodeType::Seed, action.seed, "seed")?,
            },
        })
    }
}

impl Policy for LearnedPolicy {
    fn name(&self) -> &'static str {
        "learned"
    }

    fn decide(
        &mut self,
        observation: &Observation<'_>,
        catalog: &[CatalogEntry],
        cancel: &Cancel,
    ) -> Result<Proposed> {
        if !observation.epoch_end() {
            return Ok(Proposed::wait(
                "learned_between_epochs",
                "the learned policy decides at epoch ends",
            ));
        }
        let packet = observation.packet;
        let retry = self
            .last
            .as_ref()
            .is_some_and(|last| last.packet_id == packet.packet_id);
        match self.last.as_ref() {
            Some(last) if retry => {
                // A retry: decide from the statistics the first try had.
                let before = last.normalisers_before.clone();
                self.builder.set_normalisers(before)?;
            }
            _ => {
                self.flush()?;
                self.last = Some(Last {
                    packet_id: packet.packet_id.clone(),
                    normalisers_before: self.builder.normalisers().clone(),
                    record: None,
                });
            }
        }
        let graph = self.builder.build(packet, catalog)?;
        cancel.check("policy network")?;
        let mask = mask_for(&graph, packet, self.max_live_seeds);
        let out = self.model.forward(&graph)?;
        let (action, log_prob, made) = match self.exploration {
            Exploration::Greedy => {
                let (a, lp) = action::greedy(&out.logits, &mask)?;
                (a, lp, Made::Own(self.proposal(&graph, observation, &a)?))
            }
            Exploration::Sample => {
                let (a, lp) = action::sample(
                    &out.logits,
                    &mask,
                    &mut stream(self.sample_seed, packet.global_step),
                )?;
                (a, lp, Made::Own(self.proposal(&graph, observation, &a)?))
            }
            Exploration::Imitate => {
                let teacher = self.teacher.as_mut().ok_or_else(|| {
                    Error::Action(
                        "tamiyo.learned.exploration = \"imitate\" needs a teacher policy".into(),
                    )
                })?;
                let proposed = teacher.decide(observation, catalog, cancel)?;
                let imitated = imitate::action_of(&graph, &proposed.proposal).and_then(|a| {
                    action::log_prob(&out.logits, &mask, &a)
                        .map(|lp| (a, lp))
                        .map_err(|e| format!("the mask forbids it ({e})"))
                });
                match imitated {
                    Ok((a, lp)) => (a, lp, Made::Taught(proposed)),
                    Err(why) => (Action::wait(), 0.0, Made::Unimitable(proposed, why)),
                }
            }
        };
        if !(log_prob.is_finite() && out.value.is_finite()) {
            return Err(Error::Action(format!(
                "log-probability {log_prob}, value {}",
                out.value
            )));
        }
        if !retry {
            self.decisions += 1;
        }
        if self.trajectory.is_some()
            && !matches!(made, Made::Unimitable(..))
            && let Some(last) = self.last.as_mut()
        {
            last.record = Some(DecisionRecord {
                run_id: packet.training_run_id.clone(),
                epoch: packet.current_epoch,
                global_step: packet.global_step,
                generation: packet.generation,
                validation_accuracy: packet.validation_accuracy,
                graph,
                mask,
                action,
                log_prob,
                value: out.value,
                policy_step: self.manifest.training_step,
            });
        }
        let proposal = match made {
            Made::Own(proposal) => proposal,
            Made::Taught(proposed) => return Ok(proposed),
            Made::Unimitable(mut proposed, why) => {
                if !retry {
                    self.unimitable += 1;
                }
                proposed.detail = format!("{} (not imitable: {why})", proposed.detail);
                return Ok(proposed);
            }
        };
        let rule = match action.op {
            Op::Wait => "learned_wait",
            Op::Germinate => "learned_germinate",
            Op::Cull => "learned_cull",
            Op::Fossilize => "learned_fossilize",
        };
        let detail = format!(
            "p {:.3} ({:?}), value {:.3}, policy step {}",
            log_prob.exp(),
            self.exploration,
            out.value,
            self.manifest.training_step
        );
        Ok(match proposal {
            Proposal::Wait { .. } => Proposed::wait(rule, detail),
            proposal => Proposed {
                proposal,
                rule,
                detail,
            },
        })
    }

    fn issued(&mut self, proposal: &Proposal) {
        if let Some(teacher) = self.teacher.as_mut() {
            teacher.issued(proposal);
        }
    }

    fn export_state(&self) -> Result<serde_json::Value> {
        super::encode_state(
            "learned",
            &State {
                weights_sha256: self.manifest.weights_sha256.clone(),
                sample_seed: self.sample_seed,
                normalisers: self.builder.normalisers().clone(),
                memory: self.builder.memory().clone(),
                decisions: self.decisions,
                teacher: self
                    .teacher
                    .as_ref()
                    .map(|t| t.export_state())
                    .transpose()?,
            },
        )
    }

    fn import_state(&mut self, state: serde_json::Value) -> Result<()> {
        let state: State = super::decode_state("learned", state)?;
        if state.weights_sha256 != self.manifest.weights_sha256 {
            return Err(Error::State(
                "the checkpoint was taken with another policy file (weights differ)".into(),
            ));
        }
        if state.sample_seed != self.sample_seed {
            return Err(Error::State(format!(
                "the checkpoint sampled from seed {}, this run from {}",
                state.sample_seed, self.sample_seed
            )));
        }
        match (self.teacher.as_mut(), state.teacher) {
            (Some(teacher), Some(taught)) => teacher.import_state(taught)?,
            (None, None) => {}
            (Some(_), None) | (None, Some(_)) => {
                return Err(Error::State(
                    "the checkpoint and this run differ in having a teacher policy".into(),
                ));
            }
        }
        self.builder.set_normalisers(state.normalisers)?;
        self.builder.set_memory(state.memory);
        self.decisions = state.decisions;
        self.last = None;
        Ok(())
    }
}

impl Drop for LearnedPolicy {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::error!(target: "tamiyo", "the last decision's record: {e}");
        }
    }
}

#[cfg(test)]
mod tests;
