#![allow(clippy::unwrap_used, clippy::expect_used)]

use leyline::v1::{SeedStage, SlotKind, SystemStatePacket};

use super::*;
use crate::graph::{GraphBuilder, GraphSchema};

/// The graph tests' packet of `slots` conv slots, with a BLENDING
/// `conv.residual` seed `s<i>` in each of the first `seeds` slots.
fn packet(slots: usize, seeds: usize) -> SystemStatePacket {
    let mut p = crate::graph::tests::packet(slots);
    for i in 0..seeds.min(slots) {
        crate::graph::tests::seed(&mut p, i, &format!("s{i}"), "conv.residual");
    }
    p
}

use crate::graph::tests::catalog;

fn graph(slots: usize, seeds: usize) -> ObservationGraph {
    let mut builder = GraphBuilder::new(GraphSchema::default()).unwrap();
    builder.build(&packet(slots, seeds), &catalog()).unwrap()
}

#[test]
fn every_head_has_the_graphs_shape_and_finite_values() {
    let model = GnnModel::new(GnnConfig::default(), 7).unwrap();
    let g = graph(3, 2);
    let slots = g.nodes[&NodeType::Slot].ids.len();
    let bps = g.nodes[&NodeType::Blueprint].ids.len();
    let seeds = g.nodes[&NodeType::Seed].ids.len();
    let out = model.forward(&g).unwrap();
    let l = &out.logits;
    assert_eq!(l.op.len(), 4);
    assert_eq!(l.slot.len(), slots);
    assert_eq!(l.blueprint.len(), slots);
    assert!(l.blueprint.iter().all(|r| r.len() == bps));
    assert_eq!(l.blend.len(), bps);
    assert!(l.blend.iter().all(|r| r.len() == BLENDS.len()));
    assert_eq!(l.tempo.len(), 4);
    assert_eq!(l.seed.len(), seeds);
    let all =
        l.op.iter()
            .chain(&l.slot)
            .chain(l.blueprint.iter().flatten())
            .chain(l.blend.iter().flatten())
            .chain(&l.tempo)
            .chain(&l.seed);
    assert!(all.copied().all(f32::is_finite));
    assert!(out.value.is_finite());
}

#[test]
fn a_model_is_a_function_of_its_seed_and_the_graph() {
    let g = graph(4, 1);
    let a = GnnModel::new(GnnConfig::default(), 1)
        .unwrap()
        .forward(&g)
        .unwrap();
    let b = GnnModel::new(GnnConfig::default(), 1)
        .unwrap()
        .forward(&g)
        .unwrap();
    let c = GnnModel::new(GnnConfig::default(), 2)
        .unwrap()
        .forward(&g)
        .unwrap();
    assert_eq!(a.logits, b.logits);
    assert_eq!(a.value.to_bits(), b.value.to_bits());
    assert_ne!(a.logits, c.logits);
    // A seed in the graph changes what the network sees.
    let d = GnnModel::new(GnnConfig::default(), 1)
        .unwrap()
        .forward(&graph(4, 0))
        .unwrap();
    assert_ne!(a.logits.op, d.logits.op);
    assert!(d.logits.seed.is_empty());
}

#[test]
fn gradients_reach_every_layer_the_graph_uses() {
    let model = GnnModel::new(GnnConfig { hidden: 8 }, 3).unwrap();
    let g = graph(2, 1);
    // The value head's output as a tensor, through the same pass.
    let h = model.embed(&g).unwrap();
    let slots = &h[&NodeType::Slot];
    let loss = slots.sqr().unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let encoder = &model.encoders[&NodeType::Slot];
    assert!(grads.get(encoder.w.as_tensor()).is_some(), "slot encoder");
    let sage = &model.sage[&(Relation::GlobalSlot, true)];
    assert!(
        grads.get(sage.w.as_tensor()).is_some(),
        "global→slot messages"
    );
    assert!(!model.vars().is_empty());
}

#[test]
fn the_mask_follows_the_slots_the_catalog_the_lifecycle_and_the_budget() {
    let p = packet(3, 1); // seed s0 BLENDING in r0
    let g = GraphBuilder::new(GraphSchema::default())
        .unwrap()
        .build(&p, &catalog())
        .unwrap();
    let mask = mask_for(&g, &p, 2);
    assert_eq!(mask.slot, [false, true, true], "r0 holds a seed");
    let bps = &g.nodes[&NodeType::Blueprint].ids;
    for (row, slot) in mask.blueprint.iter().zip(&g.nodes[&NodeType::Slot].ids) {
        for (ok, bp) in row.iter().zip(bps) {
            let fits = urza::definition(bp).is_some_and(|d| {
                d.descriptor()
                    .slot_kinds
                    .contains(&(SlotKind::Conv2d as i32))
            });
            assert_eq!(*ok, fits, "{bp} at {slot}");
        }
    }
    for (modes, bp) in mask.blend.iter().zip(bps) {
        let features = urza::definition(bp).unwrap().output_form() == urza::OutputForm::Features;
        if features {
            assert_eq!(
                modes,
                &[false, true, false, false],
                "{bp} joins by RESIDUAL only"
            );
        } else {
            assert!(modes.iter().all(|&m| m), "{bp}");
        }
    }
    assert_eq!(
        mask.cull,
        [SeedStage::Blending.can_transition_to(SeedStage::Culled)]
    );
    assert_eq!(mask.fossilize, [false], "BLENDING cannot fossilize");
    assert!(mask.ops().unwrap()[1], "1 live seed of 2");
    // At the budget, GERMINATE is masked.
    assert!(!mask_for(&g, &p, 1).ops().unwrap()[1]);
    // Sampling the network's heads under this mask only ever proposes
    // what the packet allows.
    let model = GnnModel::new(GnnConfig::default(), 5).unwrap();
    let logits = model.forward(&g).unwrap().logits;
    let mut rng = crate::policy::action::Sampler::new(9);
    for _ in 0..200 {
        let (a, _) = crate::policy::action::sample(&logits, &mask, &mut rng).unwrap();
        if let Some(s) = a.slot {
            assert!(mask.slot[s]);
            assert!(mask.blueprint[s][a.blueprint.unwrap()]);
        }
        assert_ne!(a.op, crate::policy::action::Op::Fossilize);
    }
}
