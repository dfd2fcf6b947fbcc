//! A host that grows: Tolaria trains `cnn-impaired` on the bundled MNIST while a
//! scripted controller germinates a 3×3 residual seed (4 → 16 → 4 channels) at
//! slot `r0` early in the first epoch; Kasmina incubates it, blends it in,
//! judges it on counterfactual validation and fossilizes it. Each arm runs over
//! three run seeds; the seeded arm must end at least 5 points above the
//! seedless one on mean validation accuracy (docs/DESIGN.md §12: a seed present from
//! the start is worth ~10–12 points).

use std::sync::Arc;
use std::time::Duration;

use kasmina::GateConfig;
use leyline::v1::SeedStage;
use tolaria::{Config, Trainer};

use crate::support;
use support::Script;

fn config() -> Config {
    Config {
        host: "cnn-impaired".into(),
        epochs: 5,
        fence_every_steps: 5,
        ..Config::default()
    }
}

/// Final validation accuracy (percent) and, for the grown arm, the seed's stage.
fn run(seed: u64, grow: bool, library: &Arc<urza::Library>) -> (f64, Option<SeedStage>) {
    let trainer = Trainer::new(config(), seed, &format!("growth-{seed}")).unwrap();
    let mut trainer = if grow {
        let slots = trainer.host().slots().to_vec();
        let gates = GateConfig {
            window: 10,
            min_steps: [20, 40, 10, 10],
            min_epochs: [0, 0, 0, 1],
            // G2's latency bound judges wall-clock step time against the
            // seedless steps before germination; in CI the other test
            // binaries share the cores, and a seed culled
            // `latency_over_budget` there failed this test once. Growth is
            // what this test is about, not latency.
            max_slowdown: 1e6,
            ..GateConfig::default()
        };
        let kasmina = support::kasmina(&slots, gates, library, seed);
        trainer
            .with_kasmina(kasmina)
            .unwrap()
            .with_control_hook(
                Box::new(Script::new(vec![(5, "r0", "seed-r0")])),
                Duration::from_secs(5),
            )
            .unwrap()
    } else {
        trainer
    };
    let reports = trainer.run(|_| {}).unwrap();
    let accuracy = reports.last().unwrap().validation.accuracy * 100.0;
    if grow {
        // Per-step telemetry: a packet per active seed, and a global one.
        let (packets, dropped) = trainer.drain_seed_packets();
        assert_eq!(dropped, 0);
        let seed_packets: Vec<_> = packets.iter().filter(|p| p.seed_id == "seed-r0").collect();
        assert!(!seed_packets.is_empty());
        for p in &seed_packets {
            let share = p
                .metrics
                .iter()
                .find(|m| m.name == "seed.grad_share")
                .unwrap()
                .value;
            assert!((0.0..=1.0).contains(&share), "{share}");
        }
        let last_global = packets.iter().rev().find(|p| p.seed_id.is_empty()).unwrap();
        let alpha = last_global
            .metrics
            .iter()
            .find(|m| m.name == "alpha.mean")
            .unwrap()
            .value;
        assert_eq!(alpha, 1.0, "a fossilized seed blends fully");
        // The state packet carries the seed as Kasmina holds it, and passes
        // the contract's validation.
        let packet = tolaria::packet::state_packet(&trainer, reports.last().unwrap());
        let verdict = leyline::validate::Validator::new(&leyline::LimitsConfig::default())
            .state_packet(&packet);
        assert!(verdict.passed(), "{:?}", verdict.violations());
        let seed_state = packet
            .seed_states
            .iter()
            .find(|s| s.seed_id == "seed-r0")
            .unwrap();
        assert_eq!(seed_state.stage, SeedStage::Fossilized as i32);
        assert_eq!(seed_state.blueprint_id, "conv.residual");
        assert_eq!(
            seed_state.age_epochs, 4,
            "germinated in epoch 1, reported after epoch 5"
        );
        assert!(seed_state.learning_rate > 0.0);
        let slot = packet.slots.iter().find(|s| s.slot_id == "r0").unwrap();
        assert_eq!(
            (slot.stage, slot.seed_id.as_str()),
            (SeedStage::Fossilized as i32, "seed-r0")
        );
    }
    let stage = trainer.seed_summaries().first().map(|s| s.stage);
    let rejected: Vec<_> = trainer
        .drain_events()
        .into_iter()
        .filter(|e| e.name == "command_rejected" || e.name == "seed_isolation_violation")
        .collect();
    assert!(rejected.is_empty(), "{rejected:?}");
    (accuracy, stage)
}

#[test]
fn a_seed_germinated_early_is_fossilized_and_lifts_the_impaired_host() {
    let dir = tempfile::tempdir().unwrap();
    let library = Arc::new(
        urza::Library::open(urza::LibraryConfig::new(dir.path()))
            .unwrap()
            .0,
    );
    let mut with = Vec::new();
    let mut without = Vec::new();
    for seed in 0..3 {
        let (grown, stage) = run(seed, true, &library);
        let (plain, _) = run(seed, false, &library);
        println!("seed {seed}: with seed {grown:.2} % ({stage:?}), without {plain:.2} %");
        assert_eq!(stage, Some(SeedStage::Fossilized), "seed {seed}");
        with.push(grown);
        without.push(plain);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "mean: with {:.2} %, without {:.2} %, lift {:+.2} points",
        mean(&with),
        mean(&without),
        mean(&with) - mean(&without)
    );
    assert!(
        mean(&with) - mean(&without) >= 5.0,
        "with {with:?} vs without {without:?}"
    );
}
