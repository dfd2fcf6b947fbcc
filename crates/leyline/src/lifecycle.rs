//! The seed lifecycle: the single transition table and the gate guarding each edge.
//!
//! [`successors`] is the one place that says which stage may follow which; it is an
//! exhaustive `match` over [`SeedStage`], so adding a stage to the contract breaks
//! the build here until the new stage is placed in the graph.
//!
//! Gates guard the edges whose evidence they judge, in the order the evidence
//! exists (see `docs/decisions/0002-lifecycle-gates.md`):
//!
//! | edge | gate | evidence |
//! |---|---|---|
//! | DORMANT → GERMINATED | G0 sanity | blueprint exists, parameters in bounds |
//! | GERMINATED → TRAINING | G3 interface | built seed's shapes match the slot, mesh present |
//! | TRAINING → BLENDING | G1 gradient health | seed gradients over the training window |
//! | BLENDING → SHADOWING | G2 stability | seed loss variance, alpha ramp without oscillation |
//! | SHADOWING → PROBATIONARY | G4 system impact | counterfactual: no regression |
//! | PROBATIONARY → FOSSILIZED | G4 system impact | counterfactual: positive contribution |
//! | RESETTING → DORMANT | G5 reset | slot clean |
//!
//! Culling (any active stage → CULLED) and the embargo path are ungated: removing
//! a seed must always be possible.

use crate::error::{Error, Result};
use crate::v1::{SeedGate, SeedStage};

/// One edge of the lifecycle graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transition {
    /// Stage the seed leaves.
    pub from: SeedStage,
    /// Stage the seed enters.
    pub to: SeedStage,
    /// Gate that must pass before the move, if the edge is gated.
    pub gate: Option<SeedGate>,
}

/// Every stage, in wire order (`SeedStage::Unknown` first).
pub const ALL_STAGES: [SeedStage; 12] = [
    SeedStage::Unknown,
    SeedStage::Dormant,
    SeedStage::Germinated,
    SeedStage::Training,
    SeedStage::Blending,
    SeedStage::Shadowing,
    SeedStage::Probationary,
    SeedStage::Fossilized,
    SeedStage::Culled,
    SeedStage::Embargoed,
    SeedStage::Resetting,
    SeedStage::Terminated,
];

/// Every real gate (`SeedGate::Unknown` excluded).
pub const ALL_GATES: [SeedGate; 6] = [
    SeedGate::G0Sanity,
    SeedGate::G1GradientHealth,
    SeedGate::G2Stability,
    SeedGate::G3Interface,
    SeedGate::G4SystemImpact,
    SeedGate::G5Reset,
];

/// The stages that may follow `from`, each with the gate guarding the edge.
pub const fn successors(from: SeedStage) -> &'static [(SeedStage, Option<SeedGate>)] {
    use SeedGate as G;
    use SeedStage as S;
    match from {
        // A slot that has never been initialised becomes an empty slot.
        S::Unknown => &[(S::Dormant, None)],
        S::Dormant => &[(S::Germinated, Some(G::G0Sanity)), (S::Terminated, None)],
        S::Germinated => &[(S::Training, Some(G::G3Interface)), (S::Culled, None)],
        S::Training => &[(S::Blending, Some(G::G1GradientHealth)), (S::Culled, None)],
        S::Blending => &[(S::Shadowing, Some(G::G2Stability)), (S::Culled, None)],
        S::Shadowing => &[
            (S::Probationary, Some(G::G4SystemImpact)),
            (S::Culled, None),
        ],
        S::Probationary => &[(S::Fossilized, Some(G::G4SystemImpact)), (S::Culled, None)],
        S::Fossilized => &[(S::Terminated, None)],
        S::Culled => &[(S::Embargoed, None)],
        S::Embargoed => &[(S::Resetting, None)],
        S::Resetting => &[(S::Dormant, Some(G::G5Reset))],
        S::Terminated => &[],
    }
}

/// The edge `from → to`, or [`Error::IllegalTransition`].
pub fn transition(from: SeedStage, to: SeedStage) -> Result<Transition> {
    successors(from)
        .iter()
        .find(|(next, _)| *next == to)
        .map(|&(to, gate)| Transition { from, to, gate })
        .ok_or(Error::IllegalTransition { from, to })
}

/// The gate guarding `from → to` (`None` for an ungated edge), or
/// [`Error::IllegalTransition`] when the edge does not exist.
pub fn required_gate(from: SeedStage, to: SeedStage) -> Result<Option<SeedGate>> {
    transition(from, to).map(|t| t.gate)
}

/// Every edge of the graph, in table order.
pub fn all_transitions() -> impl Iterator<Item = Transition> {
    ALL_STAGES.into_iter().flat_map(|from| {
        successors(from)
            .iter()
            .map(move |&(to, gate)| Transition { from, to, gate })
    })
}

impl SeedStage {
    /// Whether the table has an edge `self → to`.
    pub fn can_transition_to(self, to: SeedStage) -> bool {
        successors(self).iter().any(|(next, _)| *next == to)
    }

    /// The gate guarding `self → to`; see [`required_gate`].
    pub fn required_gate(self, to: SeedStage) -> Result<Option<SeedGate>> {
        required_gate(self, to)
    }

    /// No stage follows this one.
    pub fn is_terminal(self) -> bool {
        successors(self).is_empty()
    }

    /// The seed is part of the model or on its way into it (GERMINATED
    /// through FOSSILIZED): not dormant, not culled or being reset.
    pub const fn is_live(self) -> bool {
        match self {
            SeedStage::Germinated
            | SeedStage::Training
            | SeedStage::Blending
            | SeedStage::Shadowing
            | SeedStage::Probationary
            | SeedStage::Fossilized => true,
            SeedStage::Unknown
            | SeedStage::Dormant
            | SeedStage::Culled
            | SeedStage::Embargoed
            | SeedStage::Resetting
            | SeedStage::Terminated => false,
        }
    }

    /// The seed's output reaches the host (BLENDING through FOSSILIZED).
    pub const fn blend_allowed(self) -> bool {
        match self {
            SeedStage::Blending
            | SeedStage::Shadowing
            | SeedStage::Probationary
            | SeedStage::Fossilized => true,
            SeedStage::Unknown
            | SeedStage::Dormant
            | SeedStage::Germinated
            | SeedStage::Training
            | SeedStage::Culled
            | SeedStage::Embargoed
            | SeedStage::Resetting
            | SeedStage::Terminated => false,
        }
    }

    /// A seed occupies the slot and may still be culled.
    pub const fn is_active(self) -> bool {
        match self {
            SeedStage::Germinated
            | SeedStage::Training
            | SeedStage::Blending
            | SeedStage::Shadowing
            | SeedStage::Probationary => true,
            SeedStage::Unknown
            | SeedStage::Dormant
            | SeedStage::Fossilized
            | SeedStage::Culled
            | SeedStage::Embargoed
            | SeedStage::Resetting
            | SeedStage::Terminated => false,
        }
    }

    /// Decodes a wire value, rejecting values that are not stages.
    pub fn from_wire(value: i32) -> Result<SeedStage> {
        SeedStage::try_from(value).map_err(|_| Error::UnknownEnumValue {
            enum_name: "SeedStage",
            value,
        })
    }
}

/// The operator-facing name of a stage: `TRAINING` for
/// `SEED_STAGE_TRAINING` (logs, tables and reports print this one).
pub fn stage_label(stage: SeedStage) -> &'static str {
    let name = stage.as_str_name();
    name.strip_prefix("SEED_STAGE_").unwrap_or(name)
}

/// [`stage_label`] of a wire value; `UNKNOWN` for a number the contract
/// does not define.
pub fn stage_label_of(stage: i32) -> &'static str {
    stage_label(SeedStage::try_from(stage).unwrap_or(SeedStage::Unknown))
}

/// [`stage_label`] of a stage's full name (`SEED_STAGE_TRAINING`, as run
/// files store it); `UNKNOWN` for a name the contract does not define.
pub fn stage_label_of_name(name: &str) -> &'static str {
    stage_label(SeedStage::from_str_name(name).unwrap_or(SeedStage::Unknown))
}

/// The operator-facing name of a gate: `G3_INTERFACE` for
/// `SEED_GATE_G3_INTERFACE`, as DESIGN names them.
pub fn gate_label(gate: SeedGate) -> &'static str {
    let name = gate.as_str_name();
    name.strip_prefix("SEED_GATE_").unwrap_or(name)
}

/// [`gate_label`] of a wire value; `UNKNOWN` for a number the contract does
/// not define.
pub fn gate_label_of(gate: i32) -> &'static str {
    gate_label(SeedGate::try_from(gate).unwrap_or(SeedGate::Unknown))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeSet, VecDeque};

    fn reachable(from: SeedStage) -> BTreeSet<i32> {
        let mut seen = BTreeSet::new();
        let mut queue = VecDeque::from([from]);
        while let Some(stage) = queue.pop_front() {
            for &(next, _) in successors(stage) {
                if seen.insert(next as i32) {
                    queue.push_back(next);
                }
            }
        }
        seen
    }

    #[test]
    fn all_stages_lists_every_wire_value() {
        let listed: BTreeSet<i32> = ALL_STAGES.iter().map(|s| *s as i32).collect();
        let wire: BTreeSet<i32> = (0..64)
            .filter(|v| SeedStage::try_from(*v).is_ok())
            .collect();
        assert_eq!(listed, wire);
        let gates: BTreeSet<i32> = ALL_GATES.iter().map(|g| *g as i32).collect();
        let wire_gates: BTreeSet<i32> =
            (1..64).filter(|v| SeedGate::try_from(*v).is_ok()).collect();
        assert_eq!(gates, wire_gates);
    }

    #[test]
    fn every_non_terminal_stage_reaches_dormant_or_terminated() {
        for stage in ALL_STAGES {
            if stage.is_terminal() {
                continue;
            }
            let r = reachable(stage);
            assert!(
                r.contains(&(SeedStage::Dormant as i32))
                    || r.contains(&(SeedStage::Terminated as i32)),
                "{stage:?} cannot reach DORMANT or TERMINATED"
            );
        }
    }

    #[test]
    fn terminated_is_the_only_terminal_stage() {
        let terminal: Vec<_> = ALL_STAGES.into_iter().filter(|s| s.is_terminal()).collect();
        assert_eq!(terminal, vec![SeedStage::Terminated]);
        for to in ALL_STAGES {
            assert!(!SeedStage::Terminated.can_transition_to(to));
        }
    }

    #[test]
    fn every_gate_guards_some_edge_and_gated_edges_name_a_real_gate() {
        let used: BTreeSet<i32> = all_transitions()
            .filter_map(|t| t.gate.map(|g| g as i32))
            .collect();
        for gate in ALL_GATES {
            assert!(used.contains(&(gate as i32)), "{gate:?} guards nothing");
        }
        assert!(all_transitions().all(|t| t.gate != Some(SeedGate::Unknown)));
        // Every forward move of an active seed into a new working stage is gated.
        for t in all_transitions() {
            if t.from.is_active() && t.to != SeedStage::Culled {
                assert!(t.gate.is_some(), "{t:?} is an ungated promotion");
            }
        }
    }

    #[test]
    fn every_active_stage_can_be_culled_and_culling_leads_back_to_dormant() {
        for stage in ALL_STAGES.into_iter().filter(|s| s.is_active()) {
            assert_eq!(required_gate(stage, SeedStage::Culled).unwrap(), None);
        }
        assert!(reachable(SeedStage::Culled).contains(&(SeedStage::Dormant as i32)));
        assert_eq!(
            required_gate(SeedStage::Resetting, SeedStage::Dormant).unwrap(),
            Some(SeedGate::G5Reset)
        );
        // The embargo cannot be skipped.
        assert!(!SeedStage::Culled.can_transition_to(SeedStage::Dormant));
        assert!(!SeedStage::Culled.can_transition_to(SeedStage::Resetting));
    }

    #[test]
    fn fossilization_needs_probation_and_g4() {
        let into_fossilized: Vec<_> = all_transitions()
            .filter(|t| t.to == SeedStage::Fossilized)
            .collect();
        assert_eq!(into_fossilized.len(), 1);
        assert_eq!(into_fossilized[0].from, SeedStage::Probationary);
        assert_eq!(into_fossilized[0].gate, Some(SeedGate::G4SystemImpact));
    }

    #[test]
    fn unknown_wire_values_are_errors() {
        assert!(SeedStage::from_wire(3).is_ok());
        let err = SeedStage::from_wire(99).unwrap_err();
        assert!(matches!(
            err,
            Error::UnknownEnumValue {
                enum_name: "SeedStage",
                value: 99
            }
        ));
    }

    proptest! {
        #[test]
        fn transition_agrees_with_can_transition_to(a in 0usize..12, b in 0usize..12) {
            let (from, to) = (ALL_STAGES[a], ALL_STAGES[b]);
            prop_assert_eq!(from.can_transition_to(to), transition(from, to).is_ok());
            if let Err(e) = transition(from, to) {
                let illegal = matches!(e, Error::IllegalTransition { .. });
                prop_assert!(illegal, "unexpected error {}", e);
            }
        }

        #[test]
        fn blend_allowed_only_on_blending_path(a in 0usize..12) {
            let s = ALL_STAGES[a];
            let expected = (SeedStage::Blending as i32..=SeedStage::Fossilized as i32).contains(&(s as i32));
            prop_assert_eq!(s.blend_allowed(), expected);
        }

        #[test]
        fn live_exactly_from_germination_to_fossilization(a in 0usize..12) {
            let s = ALL_STAGES[a];
            let expected = (SeedStage::Germinated as i32..=SeedStage::Fossilized as i32).contains(&(s as i32));
            prop_assert_eq!(s.is_live(), expected);
        }
    }

    #[test]
    fn labels_are_the_names_without_their_prefix() {
        assert_eq!(stage_label(SeedStage::Training), "TRAINING");
        assert_eq!(stage_label_of(SeedStage::Fossilized as i32), "FOSSILIZED");
        assert_eq!(stage_label_of(999), "UNKNOWN");
        assert_eq!(stage_label_of_name("SEED_STAGE_CULLED"), "CULLED");
        assert_eq!(stage_label_of_name("CULLED"), "UNKNOWN");
        assert_eq!(gate_label(SeedGate::G3Interface), "G3_INTERFACE");
        assert_eq!(
            gate_label_of(SeedGate::G1GradientHealth as i32),
            "G1_GRADIENT_HEALTH"
        );
        assert_eq!(gate_label_of(-1), "UNKNOWN");
    }
}
