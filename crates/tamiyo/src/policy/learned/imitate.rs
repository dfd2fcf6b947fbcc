//! Behaviour cloning's half of the learned policy: a teacher's proposal (the
//! heuristic's, in `esper policy train --imitate`) expressed in the network's
//! factored action space, so that the network can be trained to take it.
//!
//! Not every proposal has an action: a blueprint outside the graph's
//! catalog, a slot or seed the graph does not hold, a blend mode outside
//! [`BLENDS`], or a choice the action mask forbids (the teacher does not
//! know `max_live_seeds`). Such a decision still happens — the teacher drives
//! the run — but it is not recorded, and the count of them is kept.

use super::super::Proposal;
use super::super::action::{Action, Op, TEMPOS};
use super::super::gnn::BLENDS;
use crate::graph::{NodeType, ObservationGraph};

/// The index of `id` among the graph's nodes of type `t`.
fn index_of(graph: &ObservationGraph, t: NodeType, id: &str) -> Option<usize> {
    graph.nodes.get(&t)?.ids.iter().position(|n| n == id)
}

/// The tempo closest to `alpha_steps` (the lower one on a tie).
fn nearest_tempo(alpha_steps: u32) -> usize {
    let mut best = 0;
    for (i, t) in TEMPOS.iter().enumerate() {
        if t.abs_diff(alpha_steps) < TEMPOS[best].abs_diff(alpha_steps) {
            best = i;
        }
    }
    best
}

/// `proposal` as an action on `graph`, or why it has none.
pub(super) fn action_of(graph: &ObservationGraph, proposal: &Proposal) -> Result<Action, String> {
    let seed = |seed_id: &str| {
        index_of(graph, NodeType::Seed, seed_id)
            .ok_or_else(|| format!("seed {seed_id} is not in the graph"))
    };
    Ok(match proposal {
        Proposal::Wait { .. } => Action::wait(),
        Proposal::Germinate {
            slot_id,
            blueprint_id,
            alpha_steps,
            blend,
            ..
        } => Action {
            op: Op::Germinate,
            slot: Some(
                index_of(graph, NodeType::Slot, slot_id)
                    .ok_or_else(|| format!("slot {slot_id} is not in the graph"))?,
            ),
            blueprint: Some(
                index_of(graph, NodeType::Blueprint, blueprint_id)
                    .ok_or_else(|| format!("blueprint {blueprint_id} is not in the graph"))?,
            ),
            blend: Some(
                BLENDS
                    .iter()
                    .position(|b| b == blend)
                    .ok_or_else(|| format!("blend {blend:?} has no index"))?,
            ),
            tempo: Some(nearest_tempo(*alpha_steps)),
            seed: None,
        },
        Proposal::Cull { seed_id } => Action {
            op: Op::Cull,
            seed: Some(seed(seed_id)?),
            ..Action::wait()
        },
        Proposal::Fossilize { seed_id } => Action {
            op: Op::Fossilize,
            seed: Some(seed(seed_id)?),
            ..Action::wait()
        },
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn tempos_round_to_the_nearest_and_ties_to_the_lower() {
        assert_eq!(nearest_tempo(0), 0);
        assert_eq!(nearest_tempo(150), 0);
        assert_eq!(nearest_tempo(160), 1);
        assert_eq!(nearest_tempo(400), 2);
        assert_eq!(nearest_tempo(10_000), 3);
    }
}
