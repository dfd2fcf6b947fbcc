//! Seeds in the trainer's known-good state: a training (or fossilized) seed's
//! weights are part of snapshots and checkpoints; a rollback restores them,
//! and culls seeds germinated after the state it goes back to.

use std::sync::Arc;
use std::time::Duration;

use candle_core::Device;
use kasmina::GateConfig;
use leyline::v1::SeedStage;
use tolaria::{Config, Trainer};

use crate::support;
use support::Script;

fn values(t: &candle_core::Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// A temporary directory with an Urza library in `urza/`, and a 3-epoch
/// `cnn-impaired` config (20 steps per epoch, a fence every 5) that
/// checkpoints into `ckpt/`.
fn setup() -> (tempfile::TempDir, Arc<urza::Library>, Config) {
    let dir = tempfile::tempdir().unwrap();
    let library = Arc::new(
        urza::Library::open(urza::LibraryConfig::new(dir.path().join("urza")))
            .unwrap()
            .0,
    );
    let mut config = Config {
        host: "cnn-impaired".into(),
        epochs: 3,
        train_size: 2_560,
        fence_every_steps: 5,
        ..Config::default()
    };
    config.checkpoint.dir = Some(dir.path().join("ckpt"));
    (dir, library, config)
}

#[test]
fn seeds_are_checkpointed_restored_and_culled_when_newer_than_the_state() {
    let (dir, library, config) = setup();
    let ckpt = dir.path().join("ckpt");
    let trainer = Trainer::new(config, 0, "seed-state").unwrap();
    let slots = trainer.host().slots().to_vec();
    // Seeds stay in TRAINING (long dwell): both train and both are model state.
    let gates = GateConfig {
        min_steps: [10_000; 4],
        ..GateConfig::default()
    };
    let mut trainer = trainer
        .with_kasmina(support::kasmina(&slots, gates, &library, 0))
        .unwrap()
        .with_control_hook(
            Box::new(Script::new(vec![(5, "r0", "old"), (25, "r1", "new")])),
            Duration::from_secs(5),
        )
        .unwrap();

    trainer.run_epoch().unwrap(); // "old" germinates at step 5; checkpoint at step 20
    let old_params = trainer.kasmina().unwrap().slots().trainable_parameters();
    assert!(!old_params.is_empty() && old_params.iter().all(|p| p.name.starts_with("seed/old/")));
    let at_epoch_1: Vec<Vec<f32>> = old_params
        .iter()
        .map(|p| values(p.var.as_tensor()))
        .collect();
    trainer.run_epoch().unwrap(); // "new" germinates at step 25; checkpoint at step 40
    let stages: Vec<SeedStage> = trainer.seed_summaries().iter().map(|s| s.stage).collect();
    assert_eq!(stages, vec![SeedStage::Training, SeedStage::Training]);

    // Go back to the epoch-1 checkpoint: wait for the background writer to
    // finish both, then drop the newer one from disk.
    let list = || {
        let mut found: Vec<_> = std::fs::read_dir(&ckpt)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy().to_string();
                name.starts_with("ckpt-") && !name.ends_with(".tmp")
            })
            .collect();
        found.sort();
        found
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while list().len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let checkpoints_now = list();
    assert_eq!(checkpoints_now.len(), 2, "{checkpoints_now:?}");
    let first = checkpoints_now.first().unwrap().clone();
    let model =
        candle_core::safetensors::load(first.join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(
        model.keys().any(|k| k.starts_with("seed/old/")),
        "{:?}",
        model.keys().collect::<Vec<_>>()
    );
    assert!(!model.keys().any(|k| k.starts_with("seed/new/")));
    for newer in &checkpoints_now[1..] {
        std::fs::remove_dir_all(newer).unwrap();
    }
    let report = trainer.full_rollback("back to epoch 1").unwrap();
    assert_eq!(report.restored_step, 20, "{report:?}");

    // "old" is back at its epoch-1 weights; "new" postdates the state: culled.
    let summaries = trainer.seed_summaries();
    let stage_of = |seed: &str| summaries.iter().find(|s| s.seed == seed).map(|s| s.stage);
    assert_eq!(stage_of("old"), Some(SeedStage::Training));
    assert_eq!(stage_of("new"), Some(SeedStage::Embargoed));
    let restored: Vec<Vec<f32>> = trainer
        .kasmina()
        .unwrap()
        .slots()
        .trainable_parameters()
        .iter()
        .map(|p| values(p.var.as_tensor()))
        .collect();
    assert_eq!(restored, at_epoch_1);
    // Training goes on from there.
    trainer.run_epoch().unwrap();
}

#[test]
fn a_resumed_run_continues_its_seeds_from_the_checkpoint() {
    let (_dir, library, config) = setup();
    let gates = GateConfig {
        window: 5,
        min_steps: [5, 10, 5, 5],
        min_epochs: [0, 0, 0, 1],
        ..GateConfig::default()
    };
    let grow = |trainer: Trainer| {
        let slots = trainer.host().slots().to_vec();
        trainer
            .with_kasmina(support::kasmina(&slots, gates.clone(), &library, 0))
            .unwrap()
    };
    let mut first = grow(Trainer::new(config.clone(), 0, "resume-seeds").unwrap())
        .with_control_hook(
            Box::new(Script::new(vec![(5, "r0", "kept")])),
            Duration::from_secs(5),
        )
        .unwrap();
    first.run_epoch().unwrap();
    first.finish().unwrap();
    let before = first.kasmina().unwrap().export_state();
    assert_eq!(before.seeds.len(), 1);
    assert_ne!(before.seeds[0].stage, "SEED_STAGE_GERMINATED");
    let weights: Vec<Vec<f32>> = first
        .kasmina()
        .unwrap()
        .slots()
        .trainable_parameters()
        .iter()
        .map(|p| values(p.var.as_tensor()))
        .collect();
    let summaries = first.seed_summaries();
    let seed_param = first.kasmina().unwrap().slots().trainable_parameters()[0]
        .name
        .clone();
    let steps_before = first.optimizer().steps_of(&seed_param);
    assert!(steps_before > 0);
    drop(first);

    // A new process: the same config resumes from the checkpoint, and a fresh
    // Kasmina takes the seed back — stage, α, age, evidence and weights.
    let mut second = grow(Trainer::new(config, 0, "resume-seeds").unwrap());
    assert_eq!(second.epoch(), 1);
    // Measured forward times are wall-clock and restart with the process:
    // everything else of the summary must come back.
    let untimed = |s: Vec<kasmina::SeedSummary>| {
        s.into_iter()
            .map(|s| kasmina::SeedSummary { time: None, ..s })
            .collect::<Vec<_>>()
    };
    assert!(second.seed_summaries().iter().all(|s| s.time.is_none()));
    assert_eq!(untimed(second.seed_summaries()), untimed(summaries));
    assert_eq!(second.kasmina().unwrap().export_state(), before);
    let restored: Vec<Vec<f32>> = second
        .kasmina()
        .unwrap()
        .slots()
        .trainable_parameters()
        .iter()
        .map(|p| values(p.var.as_tensor()))
        .collect();
    assert_eq!(restored, weights);
    let events = second.drain_events();
    assert!(
        events.iter().any(|e| e.name == "checkpoint_seeds_restored"),
        "{events:?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| e.name == "checkpoint_seeds_not_restored")
    );
    // Training continues with the seed, and its optimizer state came back too:
    // its step count goes on from the checkpoint's.
    second.run_epoch().unwrap();
    assert_eq!(second.optimizer().steps_of(&seed_param), steps_before + 20);
    assert!(second.seed_summaries().iter().any(|s| s.seed == "kept"));
    let rejected: Vec<_> = second
        .drain_events()
        .into_iter()
        .filter(|e| e.name == "command_rejected")
        .collect();
    assert!(rejected.is_empty(), "{rejected:?}");
}
