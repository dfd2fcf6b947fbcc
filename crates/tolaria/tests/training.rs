//! Training on the bundled MNIST subset, end to end.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use tolaria::{Config, Trainer};

// Candle's CPU backend churns large buffers: the system allocator made training
// 2.7x slower (docs/DESIGN.md §12), so tests train with mimalloc like the binaries do.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn config(host: &str, epochs: u32, train_size: usize) -> Config {
    Config {
        host: host.into(),
        epochs,
        train_size,
        ..Config::default()
    }
}

/// The small CNN learns real digits: loss falls and validation accuracy on the
/// 2 000 held-out digits exceeds 95 %.
#[test]
fn cnn_exceeds_95_percent_on_bundled_mnist() {
    let mut trainer = Trainer::new(config("cnn", 4, 8_000), 0, "test-run").unwrap();
    assert_eq!(trainer.dataset_sizes(), (8_000, 2_000));
    let reports = trainer
        .run(|r| {
            eprintln!(
                "epoch {} step {} train loss {:.4} acc {:.4} | val loss {:.4} acc {:.4} | {:.0} img/s",
                r.epoch, r.global_step, r.train_loss, r.train_accuracy, r.validation.loss, r.validation.accuracy, r.train_images_per_second
            )
        })
        .unwrap();
    let first = &reports[0];
    let last = reports.last().unwrap();
    assert!(last.train_loss < first.train_loss, "loss did not decrease");
    assert_eq!(last.global_step, 4 * 63);
    assert_eq!(last.validation.samples, 2_000);
    assert!(
        last.validation.accuracy > 0.95,
        "validation accuracy {}",
        last.validation.accuracy
    );
}

/// The reference hosts reach the same validation accuracy on esper-ops as on
/// candle's own ops (same seed, same data; the runs differ only in float
/// rounding): within 0.5 points on the 2 000 held-out digits.
#[test]
fn esper_ops_match_candle_ops_in_accuracy() {
    for (host, epochs) in [("cnn", 2), ("cnn-impaired", 2), ("mlp", 2)] {
        let accuracy = |ops| {
            let config = Config {
                ops,
                ..config(host, epochs, 8_000)
            };
            let mut trainer = Trainer::new(config, 0, "test-run").unwrap();
            let reports = trainer.run(|_| {}).unwrap();
            reports.last().unwrap().validation.accuracy
        };
        let ours = accuracy(tolaria::hosts::Ops::Esper);
        let candle = accuracy(tolaria::hosts::Ops::Candle);
        eprintln!("{host}: esper-ops {ours:.4}, candle ops {candle:.4}");
        assert!(
            (ours - candle).abs() <= 0.005,
            "{host}: validation accuracy {ours:.4} on esper-ops, {candle:.4} on candle's ops"
        );
    }
}

/// Same config and seed on the CPU: bit-identical metrics.
#[test]
fn seeded_runs_are_bit_identical() {
    let run = |seed| {
        let mut t = Trainer::new(config("cnn-impaired", 2, 1_024), seed, "test-run").unwrap();
        t.run(|_| {})
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.train_loss.to_bits(),
                    r.validation.loss.to_bits(),
                    r.validation.accuracy.to_bits(),
                )
            })
            .collect::<Vec<_>>()
    };
    let a = run(3);
    assert_eq!(a, run(3));
    assert_ne!(a, run(4));
}

/// Distillation from a frozen snapshot: training still learns, the teacher
/// does not move, and a snapshot over its memory budget is refused.
#[test]
fn distillation_trains_the_student_and_freezes_the_teacher() {
    use kasmina::DistillConfig;
    let kd = DistillConfig {
        temperature: 2.0,
        weight: 0.5,
        memory_budget_bytes: 8 << 20,
    };
    let trainer = Trainer::new(config("mlp", 1, 2_560), 0, "kd").unwrap();
    let mut trainer = trainer.with_distillation(kd).unwrap();
    let before: Vec<Vec<f32>> = trainer
        .teacher_parameters()
        .iter()
        .map(|p| p.var.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    let report = trainer.run_epoch().unwrap();
    assert!(report.train_loss.is_finite());
    assert!(
        report.validation.accuracy > 0.5,
        "{}",
        report.validation.accuracy
    );
    let after: Vec<Vec<f32>> = trainer
        .teacher_parameters()
        .iter()
        .map(|p| p.var.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    assert_eq!(before, after, "the teacher is frozen");
    let host_moved = trainer.host().parameters()[0]
        .var
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_ne!(host_moved, before[0], "the student trained");

    let tight = DistillConfig {
        memory_budget_bytes: 1024,
        ..kd
    };
    let trainer = Trainer::new(config("mlp", 1, 2_560), 0, "kd").unwrap();
    assert!(trainer.with_distillation(tight).is_err());
}
