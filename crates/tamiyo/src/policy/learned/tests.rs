#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use leyline::v1::{SeedStage, SystemStatePacket};

use super::*;
use crate::graph::tests::{catalog, packet};
use crate::policy::gnn::GnnConfig;

fn policy(exploration: Exploration, seed: u64) -> LearnedPolicy {
    let schema = GraphSchema::default();
    let model = GnnModel::new(GnnConfig { hidden: 16 }, 21).unwrap();
    let manifest = PolicyManifest::new(16, &schema, Normalisers::new(0.05));
    let config = LearnedConfig {
        exploration,
        sample_seed: seed,
        ..LearnedConfig::default()
    };
    LearnedPolicy::new(model, manifest, &config, schema).unwrap()
}

/// An epoch-end packet of 3 conv slots at `epoch`.
fn epoch_end(epoch: u32) -> SystemStatePacket {
    let mut p = packet(3);
    p.current_epoch = epoch;
    p.packet_id = format!("epoch-{epoch}");
    p.global_step = 100 * u64::from(epoch);
    p.validation_accuracy = Some(0.5 + 0.05 * f64::from(epoch));
    p.validation_loss = Some(1.0 / f64::from(epoch));
    p.training_metrics.insert("train_accuracy".into(), 0.6);
    p
}

fn decide(policy: &mut LearnedPolicy, p: &SystemStatePacket) -> Proposed {
    let obs = Observation {
        packet: p,
        coverage: 1.0,
        present: 0,
    };
    policy.decide(&obs, &catalog(), &Cancel::new()).unwrap()
}

#[test]
fn it_waits_between_epochs_and_proposes_only_what_the_packet_allows() {
    let mut p = policy(Exploration::Sample, 5);
    let mut mid = packet(3);
    mid.validation_accuracy = None;
    assert_eq!(decide(&mut p, &mid).rule, "learned_between_epochs");
    let mut germinated = 0;
    for epoch in 1..60 {
        let packet = epoch_end(epoch);
        let proposed = decide(&mut p, &packet);
        match &proposed.proposal {
            Proposal::Germinate {
                slot_id,
                blueprint_id,
                parameters,
                alpha_steps,
                ..
            } => {
                germinated += 1;
                let slot = packet.slots.iter().find(|s| &s.slot_id == slot_id).unwrap();
                let def = urza::definition(blueprint_id).unwrap();
                let shape = urza::SlotShape::new(
                    leyline::v1::SlotKind::Conv2d,
                    slot.feature_shape.iter().map(|&d| d as usize).collect(),
                )
                .unwrap();
                def.check(parameters, &shape)
                    .unwrap_or_else(|e| panic!("{blueprint_id} at {slot_id}: {e}"));
                assert!(TEMPOS.contains(alpha_steps));
                assert_eq!(proposed.rule, "learned_germinate");
            }
            Proposal::Wait { .. } => assert_eq!(proposed.rule, "learned_wait"),
            // No seeds in the packet: nothing to cull or fossilize.
            other => panic!("{other:?} with no seed in the packet"),
        }
    }
    assert!(
        germinated > 0,
        "an untrained policy never germinated in 59 draws"
    );
}

#[test]
fn greedy_decisions_are_a_function_of_the_weights_and_the_packets() {
    let run = || {
        let mut p = policy(Exploration::Greedy, 0);
        (1..6)
            .map(|e| decide(&mut p, &epoch_end(e)).proposal)
            .collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}

#[test]
fn recorded_decisions_re_evaluate_to_their_log_probabilities() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(crate::trajectory::FILE_NAME);
    let mut p = policy(Exploration::Sample, 9);
    p.record_to(&path).unwrap();
    let mut packets = Vec::new();
    for epoch in 1..9 {
        let mut packet = epoch_end(epoch);
        if epoch % 2 == 0 {
            crate::graph::tests::seed(&mut packet, 0, "a", "conv.residual");
        }
        decide(&mut p, &packet);
        packets.push(packet);
    }
    let model = p.model.clone();
    drop(p); // closes the trajectory
    let t = crate::trajectory::read(&path).unwrap();
    assert_eq!(t.records.len(), 8);
    assert!(t.bad.is_empty() && t.torn_tail.is_none());
    for (r, packet) in t.records.iter().zip(&packets) {
        assert_eq!(r.global_step, packet.global_step);
        let e = model.evaluate(&r.graph, &r.mask, &r.action).unwrap();
        let lp = e.log_prob.to_scalar::<f32>().unwrap();
        assert!((lp - r.log_prob).abs() < 1e-4, "{lp} vs {}", r.log_prob);
    }
}

#[test]
fn a_resumed_policy_samples_on_as_the_uninterrupted_one() {
    let packets: Vec<_> = (1..13).map(epoch_end).collect();
    let mut whole = policy(Exploration::Sample, 77);
    let all: Vec<_> = packets.iter().map(|p| decide(&mut whole, p)).collect();
    let mut first = policy(Exploration::Sample, 77);
    for p in &packets[..5] {
        decide(&mut first, p);
    }
    let state = first.export_state().unwrap();
    let mut resumed = policy(Exploration::Sample, 77);
    resumed.import_state(state.clone()).unwrap();
    let rest: Vec<_> = packets[5..]
        .iter()
        .map(|p| decide(&mut resumed, p))
        .collect();
    assert_eq!(rest, all[5..]);
    // Without the state it decides otherwise (so the test can fail).
    let mut fresh = policy(Exploration::Sample, 77);
    let differs: Vec<_> = packets[5..].iter().map(|p| decide(&mut fresh, p)).collect();
    assert_ne!(differs, all[5..]);
    // Another sampling seed, or another policy's state, is refused.
    assert!(policy(Exploration::Sample, 78).import_state(state).is_err());
    let heuristic = serde_json::json!({"history": []});
    assert!(
        policy(Exploration::Sample, 77)
            .import_state(heuristic)
            .is_err()
    );
}

#[test]
fn a_seed_that_may_fossilize_can_be_chosen_and_a_dormant_slot_is_never_reused() {
    // A PROBATIONARY seed in r1: FOSSILIZE and CULL are legal for it.
    let mut p = policy(Exploration::Sample, 3);
    let mut ops = std::collections::BTreeSet::new();
    for epoch in 1..120 {
        let mut packet = epoch_end(epoch);
        crate::graph::tests::seed(&mut packet, 1, "b", "conv.residual");
        packet.seed_states[0].stage = SeedStage::Probationary as i32;
        packet.slots[1].stage = SeedStage::Probationary as i32;
        match decide(&mut p, &packet).proposal {
            Proposal::Germinate { slot_id, .. } => {
                assert_ne!(slot_id, "r1", "r1 holds a seed");
                ops.insert("germinate");
            }
            Proposal::Fossilize { seed_id } | Proposal::Cull { seed_id } => {
                assert_eq!(seed_id, "b");
                ops.insert("seed");
            }
            Proposal::Wait { .. } => {
                ops.insert("wait");
            }
        }
    }
    assert_eq!(ops.len(), 3, "{ops:?}");
}

#[test]
fn a_retried_packet_is_decided_alike_and_recorded_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(crate::trajectory::FILE_NAME);
    let packets: Vec<_> = (1..8)
        .map(|e| {
            let mut p = epoch_end(e);
            p.packet_id = format!("p{e}");
            p.training_loss = Some(2.0 / f64::from(e));
            p
        })
        .collect();
    // Each packet decided once …
    let mut once = policy(Exploration::Sample, 5);
    let plain: Vec<_> = packets.iter().map(|p| decide(&mut once, p)).collect();
    // … and each decided, then retried (as a missed epoch-end deadline is).
    let mut twice = policy(Exploration::Sample, 5);
    twice.record_to(&path).unwrap();
    for (p, first) in packets.iter().zip(&plain) {
        let a = decide(&mut twice, p);
        let b = decide(&mut twice, p);
        assert_eq!(&a, first, "a decision depends on what came before it");
        assert_eq!(a, b, "a retry decided otherwise");
    }
    assert_eq!(
        once.export_state().unwrap(),
        twice.export_state().unwrap(),
        "retries moved the normalisers or the decision count"
    );
    drop(twice);
    let t = crate::trajectory::read(&path).unwrap();
    let steps: Vec<u64> = t.records.iter().map(|r| r.global_step).collect();
    assert_eq!(
        steps,
        packets.iter().map(|p| p.global_step).collect::<Vec<_>>()
    );
}

/// A teacher that germinates at epoch 1 (on a slot and blueprint of its
/// choosing), culls a seed the packet does not have at epoch 2 (nothing the
/// network could choose) and waits after.
struct Teacher {
    slot: String,
    blueprint: String,
    issued: usize,
}

impl Policy for Teacher {
    fn name(&self) -> &'static str {
        "teacher"
    }

    fn decide(
        &mut self,
        observation: &Observation<'_>,
        _catalog: &[CatalogEntry],
        _cancel: &Cancel,
    ) -> Result<Proposed> {
        let proposal = match observation.packet.current_epoch {
            1 => Proposal::Germinate {
                slot_id: self.slot.clone(),
                blueprint_id: self.blueprint.clone(),
                parameters: Default::default(),
                seed_id: "taught".into(),
                alpha_steps: 380,
                blend: leyline::v1::BlendMode::Residual,
            },
            2 => Proposal::Cull {
                seed_id: "no-such-seed".into(),
            },
            _ => Proposal::Wait {
                reason: "teacher waits".into(),
            },
        };
        Ok(Proposed {
            proposal,
            rule: "teacher",
            detail: String::new(),
        })
    }

    fn issued(&mut self, _proposal: &Proposal) {
        self.issued += 1;
    }

    fn export_state(&self) -> Result<serde_json::Value> {
        Ok(serde_json::json!({ "issued": self.issued }))
    }

    fn import_state(&mut self, state: serde_json::Value) -> Result<()> {
        self.issued = state["issued"].as_u64().unwrap_or(0) as usize;
        Ok(())
    }
}

#[test]
fn imitation_passes_the_teachers_proposals_on_and_records_them_as_actions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(crate::trajectory::FILE_NAME);
    let packets: Vec<_> = (1..4).map(epoch_end).collect();
    let slot = packets[0].slots[1].slot_id.clone();
    let blueprint = "conv.residual".to_string();
    let mut p = policy(Exploration::Imitate, 0).with_teacher(Box::new(Teacher {
        slot: slot.clone(),
        blueprint: blueprint.clone(),
        issued: 0,
    }));
    p.record_to(&path).unwrap();
    let proposed: Vec<_> = packets.iter().map(|k| decide(&mut p, k)).collect();
    assert!(matches!(&proposed[0].proposal,
        Proposal::Germinate { slot_id, alpha_steps: 380, .. } if *slot_id == slot));
    assert_eq!(proposed[0].rule, "teacher");
    assert!(matches!(&proposed[1].proposal, Proposal::Cull { .. }));
    assert!(
        proposed[1].detail.contains("not imitable"),
        "{}",
        proposed[1].detail
    );
    assert_eq!(p.unimitable(), 1);
    p.issued(&proposed[0].proposal);
    let state = p.export_state().unwrap();
    assert_eq!(state["teacher"]["issued"], 1);
    let model = p.model.clone();
    drop(p);
    let t = crate::trajectory::read(&path).unwrap();
    // Epochs 1 and 3: the cull of a seed the graph lacks is not recorded.
    assert_eq!(
        t.records.iter().map(|r| r.epoch).collect::<Vec<_>>(),
        [1, 3]
    );
    let grow = &t.records[0];
    assert_eq!(grow.action.op, Op::Germinate);
    let ids = &grow.graph.nodes[&NodeType::Slot].ids;
    assert_eq!(ids[grow.action.slot.unwrap()], slot);
    let ids = &grow.graph.nodes[&NodeType::Blueprint].ids;
    assert_eq!(ids[grow.action.blueprint.unwrap()], blueprint);
    assert_eq!(
        BLENDS[grow.action.blend.unwrap()],
        leyline::v1::BlendMode::Residual
    );
    assert_eq!(TEMPOS[grow.action.tempo.unwrap()], 400);
    for r in &t.records {
        let e = model.evaluate(&r.graph, &r.mask, &r.action).unwrap();
        let lp = e.log_prob.to_scalar::<f32>().unwrap();
        assert!((lp - r.log_prob).abs() < 1e-4, "{lp} vs {}", r.log_prob);
    }
}

#[test]
fn imitation_without_a_teacher_is_an_error() {
    let mut p = policy(Exploration::Imitate, 0);
    let obs = Observation {
        packet: &epoch_end(1),
        coverage: 1.0,
        present: 0,
    };
    let err = p.decide(&obs, &catalog(), &Cancel::new()).unwrap_err();
    assert!(err.to_string().contains("teacher"), "{err}");
}

/// `tamiyo.learned.blueprint_parameters` names the variant the policy
/// germinates (over the blueprint's defaults), and the graph prices that
/// variant: a depthwise seed at kernel 5 on a 4-channel slot has 104
/// parameters (25 × 4 weights + 4 biases) where the default kernel 3 has 40.
#[test]
fn germinations_carry_the_configured_blueprint_parameters() {
    let schema = GraphSchema::default();
    let manifest = PolicyManifest::new(16, &schema, Normalisers::new(0.05));
    let config = LearnedConfig {
        exploration: Exploration::Sample,
        sample_seed: 11,
        blueprint_parameters: std::collections::BTreeMap::from([(
            "conv.depthwise".to_string(),
            urza::Parameters::from([("kernel_size".to_string(), 5.0)]),
        )]),
        ..LearnedConfig::default()
    };
    let model = GnnModel::new(GnnConfig { hidden: 16 }, 21).unwrap();
    let mut p = LearnedPolicy::new(model, manifest, &config, schema.clone()).unwrap();
    let mut depthwise = 0;
    for epoch in 1..300 {
        if let Proposal::Germinate {
            blueprint_id,
            parameters,
            ..
        } = decide(&mut p, &epoch_end(epoch)).proposal
            && blueprint_id == "conv.depthwise"
        {
            assert_eq!(parameters.get("kernel_size"), Some(&5.0));
            depthwise += 1;
        }
    }
    assert!(depthwise > 0, "no depthwise germination was sampled");
    // The edge's cost feature: ln(1 + parameters) / 10.
    let cost = |builder: GraphBuilder| {
        let mut builder = builder;
        let g = builder.build(&epoch_end(2), &catalog()).unwrap();
        let bp = g.nodes[&NodeType::Blueprint]
            .ids
            .iter()
            .position(|id| id == "conv.depthwise")
            .unwrap() as u32;
        let e = &g.edges[&crate::graph::Relation::SlotBlueprint];
        let i = e.dst.iter().position(|&d| d == bp).unwrap();
        e.features[i * crate::graph::EDGE_DIM + 2]
    };
    let plain = cost(GraphBuilder::new(schema.clone()).unwrap());
    let variant = cost(
        GraphBuilder::new(schema)
            .unwrap()
            .with_blueprint_parameters(config.blueprint_parameters.clone()),
    );
    assert!((plain - (41f32).ln() / 10.0).abs() < 1e-6, "{plain}");
    assert!((variant - (105f32).ln() / 10.0).abs() < 1e-6, "{variant}");
}
