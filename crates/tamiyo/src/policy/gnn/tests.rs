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

/// The graph of `slots` slots with a seed in the first, and its mask with a
/// budget of 4 seeds.
fn graph_and_mask(slots: usize) -> (ObservationGraph, crate::policy::action::Mask) {
    let p = packet(slots, 1);
    let g = GraphBuilder::new(GraphSchema::default())
        .unwrap()
        .build(&p, &catalog())
        .unwrap();
    let mask = mask_for(&g, &p, 4);
    (g, mask)
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
            // The kind, and the shape at the blueprint's defaults.
            let shape = urza::SlotShape::new(SlotKind::Conv2d, vec![4, 14, 14]).unwrap();
            let fits = urza::definition(bp)
                .is_some_and(|d| d.check(&d.default_parameters(), &shape).is_ok());
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

#[test]
fn the_differentiable_log_prob_and_entropy_are_the_samplers() {
    use crate::policy::action::{self, Op, Sampler};
    let (g, mask) = graph_and_mask(3);
    let model = GnnModel::new(GnnConfig::default(), 11).unwrap();
    let out = model.forward(&g).unwrap();
    let mut rng = Sampler::new(3);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..300 {
        let (a, lp) = action::sample(&out.logits, &mask, &mut rng).unwrap();
        seen.insert(a.op);
        let e = model.evaluate(&g, &mask, &a).unwrap();
        let got = e.log_prob.to_scalar::<f32>().unwrap();
        assert!((got - lp).abs() < 1e-4, "{a:?}: {got} vs {lp}");
        let h = action::entropy(&out.logits, &mask, &a).unwrap();
        let got_h = e.entropy.to_scalar::<f32>().unwrap();
        assert!((got_h - h).abs() < 1e-4, "{a:?}: entropy {got_h} vs {h}");
        assert_eq!(e.value.to_scalar::<f32>().unwrap(), out.value);
    }
    assert!(
        seen.contains(&Op::Germinate) && seen.contains(&Op::Wait),
        "{seen:?}"
    );
    // A forbidden choice is an error, as in the sampler.
    let forbidden = action::Action {
        op: Op::Fossilize,
        seed: Some(0),
        ..action::Action::wait()
    };
    assert!(model.evaluate(&g, &mask, &forbidden).is_err());
}

#[test]
fn the_log_prob_of_an_action_has_a_gradient_in_the_heads_it_used() {
    use crate::policy::action::{self, Op, Sampler};
    // Two free slots (r1, r2): a head with one legal choice has log-prob
    // 0 whatever the weights, so no gradient — only heads with a choice can
    // be asked for one.
    let (g, mask) = graph_and_mask(3);
    let model = GnnModel::new(GnnConfig { hidden: 8 }, 4).unwrap();
    let logits = model.forward(&g).unwrap().logits;
    let mut rng = Sampler::new(1);
    let germinate = loop {
        let (a, _) = action::sample(&logits, &mask, &mut rng).unwrap();
        let blends = a
            .blueprint
            .map_or(0, |b| mask.blend[b].iter().filter(|&&m| m).count());
        if a.op == Op::Germinate && blends > 1 {
            break a;
        }
    };
    let e = model.evaluate(&g, &mask, &germinate).unwrap();
    let grads = e.log_prob.backward().unwrap();
    for (name, layer) in [
        ("op", &model.op),
        ("slot", &model.slot),
        ("query", &model.query),
        ("blend", &model.blend),
        ("tempo", &model.tempo),
    ] {
        let g = grads.get(layer.w.as_tensor()).expect(name);
        assert!(
            g.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0,
            "{name} has a zero gradient"
        );
    }
    // WAIT uses the op head alone: nothing reaches the seed head.
    let wait = action::Action::wait();
    let grads = model
        .evaluate(&g, &mask, &wait)
        .unwrap()
        .log_prob
        .backward()
        .unwrap();
    assert!(grads.get(model.seed.w.as_tensor()).is_none());
}
