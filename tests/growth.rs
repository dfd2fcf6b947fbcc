//! A host that grows: Tolaria trains `cnn-impaired` on the bundled MNIST while a
//! scripted controller germinates a 3×3 residual seed (4 → 16 → 4 channels) at
//! slot `r0` early in the first epoch; Kasmina incubates it, blends it in,
//! judges it on counterfactual validation and fossilizes it. Each arm runs over
//! three run seeds; the seeded arm must end at least 5 points above the
//! seedless one on mean validation accuracy (DESIGN §12: a seed present from
//! the start is worth ~10–12 points).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use candle_core::Device;
use kasmina::gates::GateConfig;
use kasmina::intake::CommandIntake;
use kasmina::isolation::IsolationConfig;
use kasmina::{Kasmina, LibrarySource};
use leyline::security::{SigningKey, sign};
use leyline::v1::adaptation_command::Payload;
use leyline::v1::{
    AdaptationCommand, AlphaSchedule, AlphaScheduleKind, BlendConfig, BlendMode,
    CommandSeedOperation, CommandType, SeedOperation, SeedStage,
};
use tolaria::fence::{ControlHook, FenceContext, FenceOutcome};
use tolaria::{Config, Trainer};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const KEY: [u8; 32] = [0x42; 32];

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Germinates `conv.residual` at `r0` at the first fence at or after `at_step`.
struct Script {
    at_step: u64,
    sent: bool,
    pending: Vec<AdaptationCommand>,
}

impl ControlHook for Script {
    fn at_fence(&mut self, c: &FenceContext<'_>) -> Result<FenceOutcome, String> {
        if !self.sent && c.global_step >= self.at_step {
            self.sent = true;
            let mut command = AdaptationCommand {
                version: 1,
                command_id: format!("germinate-r0-{}", c.global_step),
                command_type: CommandType::Seed as i32,
                target_seed_id: "seed-r0".into(),
                issued_at_ms: now_ms(),
                deadline_at_ms: now_ms() + 10_000,
                issued_by: "script".into(),
                training_run_id: "growth".into(),
                payload: Some(Payload::SeedOperation(CommandSeedOperation {
                    operation: SeedOperation::Germinate as i32,
                    blueprint_id: "conv.residual".into(),
                    parameters: [("depth".to_string(), 1.0), ("expansion".to_string(), 4.0)].into(),
                    slot_id: "r0".into(),
                    mesh_layers: vec!["r0".into()],
                    blend: Some(BlendConfig {
                        mode: BlendMode::Convex as i32,
                        ..BlendConfig::default()
                    }),
                    alpha_schedule: Some(AlphaSchedule {
                        kind: AlphaScheduleKind::Linear as i32,
                        steps: 40,
                        temperature: 0.0,
                    }),
                    ..CommandSeedOperation::default()
                })),
                ..AdaptationCommand::default()
            };
            sign(&SigningKey::from_bytes(&KEY).unwrap(), &mut command);
            self.pending.push(command);
        }
        Ok(FenceOutcome::Continue)
    }

    fn commands(&mut self) -> Vec<AdaptationCommand> {
        std::mem::take(&mut self.pending)
    }
}

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
            ..GateConfig::default()
        };
        let intake = CommandIntake::new(
            SigningKey::from_bytes(&KEY).unwrap(),
            &leyline::Config::default(),
        );
        let source = LibrarySource::new(Arc::clone(library), Device::Cpu);
        let kasmina = Kasmina::new(&slots, gates, intake, Box::new(source), seed);
        trainer
            .with_kasmina(kasmina, IsolationConfig::default())
            .unwrap()
            .with_control_hook(
                Box::new(Script {
                    at_step: 5,
                    sent: false,
                    pending: Vec::new(),
                }),
                Duration::from_secs(5),
            )
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
