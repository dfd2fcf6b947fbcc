//! The action mask for one observation (issue #17): what the lifecycle,
//! the free slots, the catalog and the seed budget allow, in the shapes of
//! the network's heads over `graph`.
//!
//! * GERMINATE: a slot whose state is DORMANT with no seed; a blueprint the
//!   graph links to that slot (`SlotBlueprint`: the catalog's eligibility
//!   for its kind and shape); blend modes the blueprint's output allows (new
//!   features only join by RESIDUAL); every tempo; and fewer live seeds than
//!   `max_seeds`.
//! * CULL / FOSSILIZE: a seed whose stage has that edge in the lifecycle
//!   table (Kasmina's gates still decide).
//! * WAIT: always.

use std::collections::BTreeMap;

use leyline::v1::{SeedStage, SystemStatePacket};

use super::BLENDS;
use crate::graph::{NodeType, ObservationGraph, Relation};
use crate::observation::stage_of;
use crate::policy::action::{Mask, TEMPOS};

/// The mask for `graph`, built from `packet`, with at most `max_seeds` live
/// seeds.
pub fn mask_for(graph: &ObservationGraph, packet: &SystemStatePacket, max_seeds: u32) -> Mask {
    let ids = |t: NodeType| graph.nodes.get(&t).map_or(&[][..], |n| n.ids.as_slice());
    let slots = ids(NodeType::Slot);
    let seeds = ids(NodeType::Seed);
    let blueprints = ids(NodeType::Blueprint);
    let slot_state: BTreeMap<&str, _> = packet
        .slots
        .iter()
        .map(|s| (s.slot_id.as_str(), s))
        .collect();
    let seed_stage: BTreeMap<&str, SeedStage> = packet
        .seed_states
        .iter()
        .map(|s| (s.seed_id.as_str(), s.stage()))
        .collect();
    let live = packet
        .seed_states
        .iter()
        .filter(|s| stage_of(s.stage).is_live())
        .count();
    let free: Vec<bool> = slots
        .iter()
        .map(|id| {
            slot_state
                .get(id.as_str())
                .is_some_and(|s| s.seed_id.is_empty() && s.stage() == SeedStage::Dormant)
        })
        .collect();
    let mut eligible = vec![vec![false; blueprints.len()]; slots.len()];
    if let Some(edges) = graph.edges.get(&Relation::SlotBlueprint) {
        for (&s, &b) in edges.src.iter().zip(&edges.dst) {
            if let Some(cell) = eligible
                .get_mut(s as usize)
                .and_then(|row| row.get_mut(b as usize))
            {
                *cell = true;
            }
        }
    }
    let blend: Vec<Vec<bool>> = blueprints
        .iter()
        .map(|id| {
            let features_only =
                urza::definition(id).is_some_and(|d| d.output_form() == urza::OutputForm::Features);
            BLENDS
                .iter()
                .map(|&m| !features_only || m == leyline::v1::BlendMode::Residual)
                .collect()
        })
        .collect();
    let stage_allows = |to: SeedStage| -> Vec<bool> {
        seeds
            .iter()
            .map(|id| {
                seed_stage
                    .get(id.as_str())
                    .is_some_and(|stage| stage.can_transition_to(to))
            })
            .collect()
    };
    Mask {
        op: vec![true, (live as u32) < max_seeds, true, true],
        slot: free,
        blueprint: eligible,
        blend,
        tempo: vec![true; TEMPOS.len()],
        cull: stage_allows(SeedStage::Culled),
        fossilize: stage_allows(SeedStage::Fossilized),
    }
}
