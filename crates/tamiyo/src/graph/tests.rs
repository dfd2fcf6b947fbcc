#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use leyline::v1::{
    AlphaState, CatalogEntry, HardwareContext, SeedStage, SeedState, SlotKind, SlotState,
    SystemStatePacket,
};

use super::*;

pub(crate) fn packet(slots: usize) -> SystemStatePacket {
    SystemStatePacket {
        current_epoch: 2,
        global_step: 100,
        training_loss: Some(0.5),
        packet_id: "p".into(),
        hardware: Some(HardwareContext::default()),
        training_metrics: BTreeMap::from([("learning_rate".to_string(), 1e-3)]),
        slots: (0..slots)
            .map(|i| SlotState {
                slot_id: format!("r{i}"),
                kind: SlotKind::Conv2d as i32,
                feature_shape: vec![4, 14, 14],
                stage: SeedStage::Dormant as i32,
                layer_depth: i as u32,
                ..SlotState::default()
            })
            .collect(),
        ..SystemStatePacket::default()
    }
}

pub(crate) fn seed(p: &mut SystemStatePacket, slot: usize, id: &str, blueprint: &str) {
    p.slots[slot].stage = SeedStage::Blending as i32;
    p.slots[slot].seed_id = id.into();
    p.seed_states.push(SeedState {
        seed_id: id.into(),
        slot_id: format!("r{slot}"),
        stage: SeedStage::Blending as i32,
        blueprint_id: blueprint.into(),
        alpha: Some(AlphaState {
            alpha: 0.5,
            ..AlphaState::default()
        }),
        gradient_norm: 0.1,
        ..SeedState::default()
    });
}

pub(crate) fn catalog() -> Vec<CatalogEntry> {
    urza::catalog()
        .iter()
        .map(|d| CatalogEntry {
            descriptor: Some(d.descriptor()),
            ..CatalogEntry::default()
        })
        .collect()
}

#[test]
fn nodes_and_edges_have_fixed_widths_and_blueprints_are_the_catalogs() {
    let mut p = packet(3);
    seed(&mut p, 0, "a", "conv.residual");
    let mut b = GraphBuilder::new(GraphSchema::default()).unwrap();
    let g = b.build(&p, &catalog()).unwrap();
    for (t, set) in &g.nodes {
        assert_eq!(set.features.len(), set.ids.len() * t.dim(), "{t:?}");
        assert_eq!(set.mask.len(), set.features.len(), "{t:?}");
    }
    for (r, e) in &g.edges {
        assert_eq!(e.src.len(), e.dst.len(), "{r:?}");
        assert_eq!(e.features.len(), e.src.len() * EDGE_DIM, "{r:?}");
    }
    let blueprints = &g.nodes[&NodeType::Blueprint].ids;
    let real: Vec<String> = urza::catalog().iter().map(|d| d.id.to_string()).collect();
    assert_eq!(
        blueprints, &real,
        "one node per catalog entry, nothing invented"
    );
    assert_eq!(g.nodes[&NodeType::Slot].ids, ["r0", "r1", "r2"]);
    assert_eq!(g.nodes[&NodeType::Seed].ids, ["a"]);
    assert_eq!(g.edges[&Relation::SlotNext].src, [0, 1]);
    assert_eq!(g.edges[&Relation::SeedBlueprint].src.len(), 1);
    let bi = g.edges[&Relation::SeedBlueprint].dst[0] as usize;
    assert_eq!(blueprints[bi], "conv.residual");
    // Conv slots connect to conv blueprints only.
    let conv = urza::catalog()
        .iter()
        .filter(|d| {
            d.descriptor()
                .slot_kinds
                .contains(&(SlotKind::Conv2d as i32))
        })
        .count();
    assert_eq!(g.edges[&Relation::SlotBlueprint].src.len(), 3 * conv);
    assert!(!g.truncated.any() && g.dangling.is_empty());
}

#[test]
fn limits_truncate_explicitly_and_unknown_blueprints_dangle() {
    let mut p = packet(5);
    seed(&mut p, 0, "a", "conv.residual");
    seed(&mut p, 4, "deep", "conv.residual");
    seed(&mut p, 1, "orphan", "conv.retired");
    let schema = GraphSchema {
        max_slots: 3,
        max_blueprints: 4,
        ..GraphSchema::default()
    };
    let g = GraphBuilder::new(schema)
        .unwrap()
        .build(&p, &catalog())
        .unwrap();
    assert_eq!(g.nodes[&NodeType::Slot].ids, ["r0", "r1", "r2"]);
    assert_eq!(
        g.truncated,
        Truncation {
            slots: 2,
            seeds: 1,
            blueprints: urza::catalog().len() - 4
        }
    );
    assert_eq!(g.dangling, ["orphan"]);
}

#[test]
fn required_metrics_are_errors_and_optional_ones_are_masked() {
    let mut p = packet(2);
    p.training_metrics.clear();
    let mut b = GraphBuilder::new(GraphSchema::default()).unwrap();
    assert!(matches!(
        b.build(&p, &catalog()).unwrap_err(),
        Error::MissingMetric { .. }
    ));
    let mut p = packet(2);
    p.training_loss = None;
    let g = b.build(&p, &catalog()).unwrap();
    let global = &g.nodes[&NodeType::Global];
    assert_eq!(global.mask[2], 0.0, "training loss missing");
    assert_eq!(global.features[2], 0.0);
    assert_eq!(global.mask[6], 1.0, "learning rate present");
    assert!(g.coverage < 1.0 && g.coverage > 0.0, "{}", g.coverage);
}

#[test]
fn schemas_are_validated_and_unknown_node_types_refused() {
    let bad = GraphSchema {
        node_types: vec![NodeType::Global, NodeType::Seed],
        ..GraphSchema::default()
    };
    assert!(GraphBuilder::new(bad).is_err());
    let twice = GraphSchema {
        node_types: vec![NodeType::Global, NodeType::Slot, NodeType::Slot],
        ..GraphSchema::default()
    };
    assert!(GraphBuilder::new(twice).is_err());
    let parsed: std::result::Result<GraphSchema, _> =
        toml::from_str("node_types = [\"global\", \"slot\", \"widget\"]");
    let err = parsed.unwrap_err().to_string();
    assert!(err.contains("widget"), "{err}");
    // Without blueprint nodes, no blueprint edges and nothing dangles.
    let schema = GraphSchema {
        node_types: vec![NodeType::Global, NodeType::Slot, NodeType::Seed],
        ..GraphSchema::default()
    };
    let mut p = packet(1);
    seed(&mut p, 0, "a", "conv.retired");
    let g = GraphBuilder::new(schema)
        .unwrap()
        .build(&p, &catalog())
        .unwrap();
    assert!(!g.nodes.contains_key(&NodeType::Blueprint));
    assert!(g.dangling.is_empty());
}

#[test]
fn normalisers_round_trip_and_their_errors_surface() {
    let mut b = GraphBuilder::new(GraphSchema::default()).unwrap();
    for step in 0..20u64 {
        let mut p = packet(2);
        p.global_step = step * 10;
        p.training_loss = Some(1.0 / (step as f64 + 1.0));
        b.build(&p, &catalog()).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("norm.json");
    b.normalisers().save(&path).unwrap();
    let loaded = Normalisers::load(&path).unwrap();
    assert_eq!(&loaded, b.normalisers());
    let mut c = GraphBuilder::new(GraphSchema::default()).unwrap();
    c.set_normalisers(loaded).unwrap();
    let p = packet(2);
    assert_eq!(
        b.build(&p, &catalog()).unwrap(),
        c.build(&p, &catalog()).unwrap(),
        "the same statistics give the same graph"
    );
    // Missing, malformed and mis-sized files are errors.
    assert!(matches!(
        Normalisers::load(&dir.path().join("none.json")).unwrap_err(),
        Error::Io { .. }
    ));
    std::fs::write(&path, "{ not json").unwrap();
    assert!(matches!(
        Normalisers::load(&path).unwrap_err(),
        Error::Graph(_)
    ));
    let mut json: serde_json::Value = serde_json::to_value(Normalisers::new(0.05)).unwrap();
    json["stats"]["global"].as_array_mut().unwrap().pop();
    std::fs::write(&path, json.to_string()).unwrap();
    let err = Normalisers::load(&path).unwrap_err();
    assert!(err.to_string().contains("features for Global"), "{err}");
}

/// The global node's history features (features v3): the validation loss's
/// relative fall over the last two epochs, the generalisation gap, the
/// youngest seed's age and the seeds tried — raw, so a plateau reads the
/// same on every host; a packet without the history has them masked.
#[test]
fn the_global_node_remembers_the_runs_plateau_and_growth() {
    let mut b = GraphBuilder::new(GraphSchema::default()).unwrap();
    let cat = catalog();
    let global = |g: &ObservationGraph| {
        let n = &g.nodes[&NodeType::Global];
        (n.features.clone(), n.mask.clone())
    };
    let mut p = packet(2);
    p.current_epoch = 1;
    p.validation_loss = Some(1.0);
    let (f, m) = global(&b.build(&p, &cat).unwrap());
    assert_eq!(f.len(), GLOBAL_DIM);
    assert_eq!(
        (m[12], m[13], m[15]),
        (0.0, 0.0, 0.0),
        "no history yet: {m:?}"
    );
    // training loss 0.5, validation 1.0: the gap is (1.0 − 0.5) / 0.5.
    assert_eq!((f[14], m[14]), (1.0, 1.0));
    assert_eq!(f[16], 0.0);
    p.current_epoch = 2;
    p.validation_loss = Some(0.6);
    seed(&mut p, 0, "s1", "conv.residual");
    p.seed_states[0].age_epochs = 3;
    let (f, m) = global(&b.build(&p, &cat).unwrap());
    assert!((f[12] - 0.4).abs() < 1e-6 && m[12] == 1.0, "{f:?}");
    assert_eq!(m[13], 0.0);
    assert!((f[15] - 0.3).abs() < 1e-6 && m[15] == 1.0);
    assert!((f[16] - 0.25).abs() < 1e-6);
    p.current_epoch = 3;
    p.validation_loss = Some(0.57);
    p.seed_states.clear();
    let built = b.build(&p, &cat).unwrap();
    // Built again (a retried decision): the same history (the normalisers
    // moved, which the learned policy undoes for a retry).
    let (again, _) = global(&b.build(&p, &cat).unwrap());
    let (f, m) = global(&built);
    assert_eq!(again[12..], f[12..]);
    assert!((f[12] - 0.05).abs() < 1e-6, "a plateau: {f:?}");
    assert!((f[13] - 0.4).abs() < 1e-6 && m[13] == 1.0);
    assert_eq!(m[15], 0.0, "no seed in the packet");
    assert!((f[16] - 0.25).abs() < 1e-6, "the culled seed still counts");
}
