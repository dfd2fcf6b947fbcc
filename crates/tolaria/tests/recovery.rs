//! Safety paths: rollback on a non-finite loss, durable checkpoints, exact resume.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use tolaria::checkpoints::CheckpointStore;
use tolaria::{CheckpointConfig, Config, Error, Fault, Trainer};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mlp` on 1 024 digits: 8 steps per epoch.
fn config(epochs: u32, dir: Option<&Path>) -> Config {
    Config {
        host: "mlp".into(),
        epochs,
        train_size: 1_024,
        checkpoint: CheckpointConfig {
            dir: dir.map(Path::to_path_buf),
            ..CheckpointConfig::default()
        },
        ..Config::default()
    }
}

fn bits(r: &tolaria::EpochReport) -> (u64, u64, u64, u64) {
    (
        r.global_step,
        r.train_loss.to_bits(),
        r.validation.loss.to_bits(),
        r.validation.accuracy.to_bits(),
    )
}

#[test]
fn nan_loss_rolls_back_to_known_good_and_training_continues() {
    let mut t = Trainer::new(config(3, None), 1, "nan-drill").unwrap();
    let first = t.run_epoch().unwrap();
    assert_eq!((first.global_step, first.rollbacks), (8, 0));
    t.inject_fault(Fault::NanLoss);
    let second = t.run_epoch().unwrap();
    assert_eq!(second.rollbacks, 1);
    let rb = &t.rollbacks()[0];
    assert_eq!((rb.tier, rb.at_step, rb.restored_step), ("fast", 8, 8));
    assert!(rb.reason.contains("NaN"), "{}", rb.reason);
    assert_eq!(t.emergency().level(), leyline::v1::EmergencyLevel::Elevated);
    // The poisoned batch was skipped, the other seven trained.
    assert_eq!(second.global_step, 15);
    assert!(second.validation.loss.is_finite());
    assert!(
        second.validation.accuracy > first.validation.accuracy,
        "training went on improving"
    );
}

#[test]
fn too_many_consecutive_explosions_halt_the_run_with_a_final_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(
        Config {
            max_rollbacks: 0,
            ..config(2, Some(dir.path()))
        },
        1,
        "halt-drill",
    )
    .unwrap();
    t.run_epoch().unwrap();
    t.inject_fault(Fault::NanLoss);
    match t.run_epoch() {
        Err(Error::Halted {
            reason,
            step,
            checkpoint,
        }) => {
            assert!(reason.contains("NaN") && step == 8, "{reason} at {step}");
            assert!(checkpoint.unwrap().ends_with("ckpt-000000000008"));
        }
        other => panic!("expected Halted, got {other:?}"),
    }
    assert!(t.emergency().halted());
    let mut signals = Vec::new();
    t.emergency().outbox().drain(|s| {
        signals.push(s.clone());
        Ok::<(), ()>(())
    });
    assert_eq!(signals.len(), 1);
    assert_eq!(signals[0].level(), leyline::v1::EmergencyLevel::Halt);
    assert_eq!(signals[0].training_run_id, "halt-drill");
    assert!(
        leyline::validate::Validator::default()
            .emergency_signal(&signals[0])
            .passed()
    );
}

#[test]
fn checkpoint_then_resume_matches_an_uninterrupted_run() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let uninterrupted = Trainer::new(config(3, Some(a.path())), 9, "test-run")
        .unwrap()
        .run(|_| {})
        .unwrap();
    let before = Trainer::new(config(2, Some(b.path())), 9, "test-run")
        .unwrap()
        .run(|_| {})
        .unwrap();
    assert_eq!(bits(&before[1]), bits(&uninterrupted[1]));
    let mut resumed = Trainer::new(config(3, Some(b.path())), 9, "test-run").unwrap();
    assert!(
        resumed
            .resumed_from()
            .unwrap()
            .ends_with("ckpt-000000000016")
    );
    assert_eq!((resumed.epoch(), resumed.global_step()), (2, 16));
    let after = resumed.run(|_| {}).unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(
        bits(&after[0]),
        bits(&uninterrupted[2]),
        "resumed epoch 3 differs from the uninterrupted one"
    );
}

#[test]
fn a_corrupted_checkpoint_byte_is_detected_and_the_previous_one_used() {
    let dir = tempfile::tempdir().unwrap();
    Trainer::new(config(2, Some(dir.path())), 4, "test-run")
        .unwrap()
        .run(|_| {})
        .unwrap();
    let newest = dir.path().join("ckpt-000000000016/model.safetensors");
    let mut bytes = std::fs::read(&newest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&newest, bytes).unwrap();

    let t = Trainer::new(config(3, Some(dir.path())), 4, "test-run").unwrap();
    assert!(t.resumed_from().unwrap().ends_with("ckpt-000000000008"));
    assert_eq!(t.epoch(), 1);
    let skipped = t.skipped_checkpoints();
    assert_eq!(skipped.len(), 1);
    assert!(
        skipped[0].reason.contains("checksum mismatch"),
        "{}",
        skipped[0].reason
    );
    // The corrupt checkpoint is left on disk for inspection, never deleted silently.
    assert!(newest.exists());
}

#[test]
fn resume_refuses_another_runs_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    Trainer::new(config(1, Some(dir.path())), 4, "test-run")
        .unwrap()
        .run(|_| {})
        .unwrap();
    let err = Trainer::new(config(2, Some(dir.path())), 5, "test-run")
        .err()
        .expect("seed mismatch must fail");
    assert!(err.to_string().contains("tolaria.checkpoint.dir"), "{err}");
}

#[test]
fn the_store_rotates_and_cleans_up_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let keep2 = Config {
        checkpoint: CheckpointConfig {
            dir: Some(dir.path().to_path_buf()),
            keep: 2,
            resume: true,
            allow_config_change: false,
        },
        ..config(3, None)
    };
    Trainer::new(keep2, 2, "test-run")
        .unwrap()
        .run(|_| {})
        .unwrap();
    std::fs::create_dir(dir.path().join("ckpt-000000000099.tmp")).unwrap();
    let (store, removed) = CheckpointStore::open(dir.path(), 2).unwrap();
    assert_eq!(removed, 1, "half-written checkpoint removed");
    let names: Vec<String> = store
        .list()
        .unwrap()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["ckpt-000000000016", "ckpt-000000000024"]);
}

#[test]
fn full_rollback_restores_the_newest_checkpoint_and_counts_its_sla() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(config(3, Some(dir.path())), 6, "test-run")
        .unwrap()
        .with_rollback_deadlines(
            std::time::Duration::from_millis(500),
            std::time::Duration::from_secs(12),
        );
    let first = t.run_epoch().unwrap();
    let second = t.run_epoch().unwrap();
    assert_eq!(second.global_step, 16);
    let report = t.full_rollback("operator asked").unwrap();
    assert_eq!((report.tier, report.restored_step), ("full", 16));
    assert!(report.within_deadline() && report.deadline_ms == 12_000.0);
    assert_eq!(t.global_step(), 16);
    assert_eq!(t.epoch(), 2);
    // Both checkpoints were written off the training thread and confirmed.
    let written: Vec<u64> = t
        .checkpoints_written()
        .iter()
        .map(|w| w.global_step)
        .collect();
    assert_eq!(written, vec![8, 16]);
    let stats = t.rollback_stats();
    assert_eq!((stats.full, stats.full_missed, stats.fast), (1, 0, 0));
    // Training carries on from the restored state, identically to before.
    let third = t.run_epoch().unwrap();
    assert_eq!(third.global_step, 24);
    assert!(third.validation.accuracy >= first.validation.accuracy);
}

#[test]
fn a_missed_rollback_deadline_is_counted_with_its_trip_time() {
    let mut t = Trainer::new(config(2, None), 1, "test-run")
        .unwrap()
        .with_rollback_deadlines(std::time::Duration::ZERO, std::time::Duration::ZERO);
    t.run_epoch().unwrap();
    let before = leyline::unix_now_ms();
    t.inject_fault(Fault::NanLoss);
    t.run_epoch().unwrap();
    let rb = &t.rollbacks()[0];
    assert_eq!(rb.tier, "fast");
    let tripped = rb
        .deadline_tripped_at_ms
        .expect("a zero deadline is always missed");
    assert!(tripped >= before.saturating_sub(1) && tripped <= leyline::unix_now_ms());
    let stats = t.rollback_stats();
    assert_eq!((stats.fast, stats.fast_missed), (1, 1));
    // Without checkpoints a full rollback is a typed error, not a silent no-op.
    assert!(matches!(t.full_rollback("x"), Err(Error::Config(_))));
}

#[test]
fn a_failed_background_checkpoint_write_is_an_error_not_silence() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let mut t = Trainer::new(config(2, Some(&ckpt)), 2, "test-run").unwrap();
    // Take the directory away: the writer thread cannot create its files.
    std::fs::remove_dir_all(&ckpt).unwrap();
    std::fs::write(&ckpt, b"not a directory").unwrap();
    let r = t.run_epoch().unwrap();
    assert!(r.checkpoint.is_some(), "queued");
    let err = t.finish().unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
}

#[test]
fn the_manifest_records_lr_rng_and_config_and_a_changed_config_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    Trainer::new(config(1, Some(dir.path())), 4, "test-run")
        .unwrap()
        .run(|_| {})
        .unwrap();
    let (store, _) = CheckpointStore::open(dir.path(), 3).unwrap();
    let latest = store.list().unwrap().pop().unwrap();
    let manifest: tolaria::checkpoints::Manifest =
        serde_json::from_slice(&std::fs::read(latest.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        manifest.rng.as_ref().map(|r| (r.seed, r.next_epoch)),
        Some((4, 2))
    );
    assert!(manifest.lr.unwrap() > 0.0);
    assert_eq!(manifest.config_sha256.as_ref().map(String::len), Some(64));

    // A longer run of the same training: resumed silently.
    let mut same = Trainer::new(config(2, Some(dir.path())), 4, "test-run").unwrap();
    assert!(same.resumed_from().is_some());
    assert!(
        !same
            .drain_events()
            .iter()
            .any(|e| e.name == "checkpoint_config_changed")
    );
    drop(same);
    // Another learning rate: resumed, and reported.
    let mut other = config(2, Some(dir.path()));
    other.optimizer.lr = 5e-4;
    // Allowed (refused otherwise: see the test below), and reported.
    other.checkpoint.allow_config_change = true;
    let mut changed = Trainer::new(other, 4, "test-run").unwrap();
    assert!(changed.resumed_from().is_some());
    assert!(
        changed
            .drain_events()
            .iter()
            .any(|e| e.name == "checkpoint_config_changed")
    );
}

#[test]
fn an_emergency_signal_leaves_through_the_sink_within_the_step_that_raised_it() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    let delivered = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&delivered);
    let mut t = Trainer::new(config(2, None), 1, "sink-drill")
        .unwrap()
        .with_emergency_sink(Box::new(move |signal| {
            assert_eq!(signal.level, leyline::v1::EmergencyLevel::Elevated as i32);
            seen.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }));
    t.run_epoch().unwrap();
    t.inject_fault(Fault::NanLoss);
    // The NaN is the first batch of the epoch: its rollback escalates to
    // ELEVATED, and the signal is out before the second batch has finished.
    let mut at_batch = Vec::new();
    t.run_epoch_with_progress(&mut |p| {
        at_batch.push((p.batch, delivered.load(Ordering::SeqCst)));
    })
    .unwrap();
    let (batch, count) = at_batch[0];
    assert_eq!((batch, count), (2, 1), "{at_batch:?}");
    assert!(t.emergency().outbox().is_empty());

    // A sink that fails leaves the signal queued for the caller.
    let mut t = Trainer::new(config(2, None), 1, "sink-down")
        .unwrap()
        .with_emergency_sink(Box::new(|_| Err("bus down".into())));
    t.run_epoch().unwrap();
    t.inject_fault(Fault::NanLoss);
    t.run_epoch().unwrap();
    assert_eq!(t.emergency().outbox().len(), 1);
}

/// The halt reason of a run with learning rate `lr`, or its epoch accuracies
/// when it never halted.
fn halt_reason(host: &str, lr: f64) -> Result<String, Vec<f64>> {
    let mut c = config(4, None);
    c.host = host.into();
    c.optimizer.lr = lr;
    let mut t = Trainer::new(c, 3, "diverge-drill").unwrap();
    let mut accuracies = Vec::new();
    for _ in 0..4 {
        match t.run_epoch() {
            Ok(r) => accuracies.push(r.validation.accuracy),
            Err(Error::Halted { reason, .. }) => {
                assert!(t.emergency().halted());
                return Ok(reason);
            }
            Err(other) => panic!("lr {lr}: expected Halted, got {other:?}"),
        }
    }
    Err(accuracies)
}

/// A learning rate that explodes the loss again after every rollback halts
/// the run (rollbacks are counted within a window, not only in a row: the
/// healthy steps between explosions used to reset the count forever).
#[test]
fn a_run_that_explodes_after_every_rollback_halts() {
    for lr in [1e4, 1e8, 1e30] {
        let why =
            halt_reason("mlp", lr).unwrap_or_else(|acc| panic!("lr {lr} never halted: {acc:?}"));
        assert!(
            why.contains("within the last 100 batches"),
            "lr {lr}: {why}"
        );
    }
}

/// A loss that climbs without a NaN or a spike, or a model stuck at chance,
/// halts the run instead of ending it as if it had trained.
#[test]
fn a_run_that_diverges_or_stays_at_chance_halts() {
    // On `cnn-impaired` the first steps at lr 50 reach a loss of ~10⁵, then
    // it settles near 6 with the model at chance.
    let why = halt_reason("cnn-impaired", 50.0)
        .unwrap_or_else(|acc| panic!("lr 50 never halted: {acc:?}"));
    assert!(
        why.contains("diverged") || why.contains("at chance"),
        "lr 50: {why}"
    );
    // A slow start is not at chance: a healthy run is not halted.
    assert!(halt_reason("cnn-impaired", 1e-3).is_err());
}

/// A checkpoint written under other training settings is not resumed unless
/// the change is allowed; then the change is recorded as an event.
#[test]
fn a_changed_training_config_is_refused_on_resume_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    Trainer::new(config(1, Some(dir.path())), 4, "cfg")
        .unwrap()
        .run(|_| {})
        .unwrap();
    let mut changed = config(2, Some(dir.path()));
    changed.optimizer.lr = 0.01;
    match Trainer::new(changed.clone(), 4, "cfg") {
        Err(Error::Config(e)) => assert!(e.to_string().contains("allow_config_change"), "{e}"),
        Err(other) => panic!("expected a config error, got {other:?}"),
        Ok(_) => panic!("a changed config was resumed"),
    }
    // More epochs alone are no change.
    assert!(Trainer::new(config(2, Some(dir.path())), 4, "cfg").is_ok());
    changed.checkpoint.allow_config_change = true;
    let mut t = Trainer::new(changed, 4, "cfg").unwrap();
    assert_eq!(t.epoch(), 1);
    assert!(
        t.drain_events()
            .iter()
            .any(|e| e.name == "checkpoint_config_changed")
    );
}

/// Issue #21 item 9: healthy training rolls nothing back at batch 8, 16 or
/// 128. The control arm proves the setup can fail: with the batch-size
/// scaling off (`reference_batch = 0`) the same runs at batch 8 judge the
/// noise of a small batch's mean loss as explosions and roll back.
#[test]
fn healthy_training_at_batch_8_16_and_128_rolls_nothing_back() {
    let run = |batch_size: usize, reference_batch: usize| {
        let mut cfg = Config {
            batch_size,
            train_size: 8_000,
            ..config(2, None)
        };
        cfg.governor.reference_batch = reference_batch;
        let mut t = Trainer::new(cfg, 0, "batches").unwrap();
        let reports = t.run(|_| {}).unwrap();
        let rollbacks: usize = reports.iter().map(|r| r.rollbacks).sum();
        let accuracy = reports.last().unwrap().validation.accuracy;
        (rollbacks, accuracy)
    };
    let (unscaled, _) = run(8, 0);
    assert!(
        unscaled > 0,
        "the control arm must show false rollbacks at batch 8"
    );
    for batch_size in [8, 16, 128] {
        let (rollbacks, accuracy) = run(batch_size, 128);
        assert_eq!(rollbacks, 0, "batch {batch_size}");
        assert!(accuracy > 0.8, "batch {batch_size}: accuracy {accuracy}");
    }
}
