//! The control fence: cadence, context, deadline accounting, stop and failure.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tolaria::fence::{ControlHook, FenceContext, FenceDecision, FenceError, FenceKind};
use tolaria::{Config, Error, Trainer};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mlp` on 2 560 digits: 20 steps per epoch, a step fence every 10.
fn config(epochs: u32) -> Config {
    Config {
        host: "mlp".into(),
        epochs,
        train_size: 2_560,
        fence_every_steps: 10,
        ..Config::default()
    }
}

type Seen = Arc<Mutex<Vec<(FenceKind, u32, u64, Option<f64>, usize)>>>;

struct Recorder {
    seen: Seen,
    sleep: Duration,
    stop_at: Option<u64>,
    fail_at: Option<u64>,
}

impl ControlHook for Recorder {
    fn at_fence(&mut self, c: &FenceContext<'_>) -> Result<FenceDecision, FenceError> {
        assert!(c.last_loss.is_finite());
        self.seen.lock().unwrap().push((
            c.kind,
            c.epoch,
            c.global_step,
            c.validation_accuracy,
            c.host.slots().len(),
        ));
        std::thread::sleep(self.sleep);
        if self.fail_at == Some(c.global_step) {
            return Err(FenceError::new("controller crashed"));
        }
        if self.stop_at == Some(c.global_step) {
            return Ok(FenceDecision::stop("controller asked to stop"));
        }
        Ok(FenceDecision::proceed())
    }
}

fn recorder(sleep: Duration, stop_at: Option<u64>, fail_at: Option<u64>) -> (Box<Recorder>, Seen) {
    let seen = Seen::default();
    let hook = Recorder {
        seen: Arc::clone(&seen),
        sleep,
        stop_at,
        fail_at,
    };
    (Box::new(hook), seen)
}

#[test]
fn fences_come_every_n_steps_and_at_each_epoch_end() {
    let (hook, seen) = recorder(Duration::ZERO, None, None);
    let mut t = Trainer::new(config(2), 3, "test-run")
        .unwrap()
        .with_control_hook(hook, Duration::from_secs(5))
        .unwrap();
    let reports = t.run(|_| {}).unwrap();
    let seen = seen.lock().unwrap().clone();
    let kinds: Vec<(FenceKind, u32, u64)> = seen.iter().map(|s| (s.0, s.1, s.2)).collect();
    assert_eq!(
        kinds,
        vec![
            // Step 20 ends the epoch: one fence there, the epoch end's.
            (FenceKind::Step, 1, 10),
            (FenceKind::EpochEnd, 1, 20),
            (FenceKind::Step, 2, 30),
            (FenceKind::EpochEnd, 2, 40),
        ]
    );
    // Epoch-end fences see the validation they follow; every fence sees the slots.
    assert_eq!(seen[1].3, Some(reports[0].validation.accuracy));
    assert!(seen.iter().all(|s| s.4 == 1));
    assert_eq!(reports[0].fences.fences, 2);
    assert_eq!(reports[0].fences.deadline_misses, 0);
    // The new per-epoch metrics are measured, not defaulted.
    assert!(reports[0].grad_norm > 0.0 && reports[0].grad_norm.is_finite());
    assert!(reports[0].step_ms_p50 > 0.0 && reports[0].step_ms_p95 >= reports[0].step_ms_p50);
}

#[test]
fn a_slow_hook_is_counted_and_reported_not_hidden() {
    let (hook, _) = recorder(Duration::from_millis(20), None, None);
    let mut t = Trainer::new(config(1), 3, "test-run")
        .unwrap()
        .with_control_hook(hook, Duration::from_millis(1))
        .unwrap();
    let r = t.run_epoch().unwrap();
    assert_eq!(r.fences.deadline_misses, 2);
    assert!(r.fences.slowest_ms >= 20.0);
    assert!(r.fences.total_ms >= 40.0, "{:?}", r.fences);
    let events = t.drain_events();
    let misses = events
        .iter()
        .filter(|e| e.name == "control_fence_deadline_missed")
        .count();
    assert_eq!(misses, 2);
}

#[test]
fn the_hook_can_stop_the_run_cleanly() {
    let (hook, seen) = recorder(Duration::ZERO, Some(30), None);
    let mut t = Trainer::new(config(3), 3, "test-run")
        .unwrap()
        .with_control_hook(hook, Duration::from_secs(5))
        .unwrap();
    let reports = t.run(|_| {}).unwrap();
    assert_eq!(reports.len(), 2, "stopped during epoch 2");
    assert_eq!(reports[1].global_step, 30);
    assert_eq!(reports[1].stop.as_deref(), Some("controller asked to stop"));
    assert_eq!(t.stop_requested(), Some("controller asked to stop"));
    assert!(
        reports[1].validation.loss.is_finite(),
        "the stopped epoch still validates"
    );
    assert_eq!(seen.lock().unwrap().last().unwrap().2, 30);
}

#[test]
fn a_failing_hook_stops_training_with_a_typed_error() {
    let (hook, _) = recorder(Duration::ZERO, None, Some(10));
    let mut t = Trainer::new(config(1), 3, "test-run")
        .unwrap()
        .with_control_hook(hook, Duration::from_secs(5))
        .unwrap();
    match t.run_epoch() {
        Err(Error::ControlHook {
            global_step,
            source,
        }) => {
            assert_eq!(global_step, 10);
            assert_eq!(source.reason, "controller crashed");
        }
        other => panic!("expected a control-hook error, got {other:?}"),
    }
}

/// A hook that remembers the fences it saw and the generations of their
/// packets, and keeps that count as its state.
struct Counting {
    fences: u64,
    generations: Arc<Mutex<Vec<u64>>>,
}

impl ControlHook for Counting {
    fn at_fence(&mut self, c: &FenceContext<'_>) -> Result<FenceDecision, FenceError> {
        self.fences += 1;
        self.generations.lock().unwrap().push(c.state.generation);
        assert_eq!(c.state.generation, self.fences, "generation = fences seen");
        Ok(FenceDecision::proceed())
    }

    fn export_state(&mut self) -> Result<Option<serde_json::Value>, FenceError> {
        Ok(Some(serde_json::json!({ "fences": self.fences })))
    }

    fn import_state(&mut self, state: serde_json::Value) -> Result<(), FenceError> {
        self.fences = state["fences"]
            .as_u64()
            .ok_or_else(|| FenceError::new("no fence count"))?;
        Ok(())
    }
}

/// Issue #19 item 3: the checkpoint holds the hook's state and the trainer's
/// generation; a resumed trainer gives the state back to the new hook, whose
/// packets continue the generations; a hook that keeps no state refuses one.
#[test]
fn a_checkpoint_holds_the_hooks_state_and_a_resumed_run_gives_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut with_checkpoints = config(1);
    with_checkpoints.checkpoint.dir = Some(dir.path().to_path_buf());
    let generations = Arc::new(Mutex::new(Vec::new()));
    let hook = |generations: &Arc<Mutex<Vec<u64>>>| {
        Box::new(Counting {
            fences: 0,
            generations: Arc::clone(generations),
        })
    };
    let mut first = Trainer::new(with_checkpoints.clone(), 3, "run")
        .unwrap()
        .with_control_hook(hook(&generations), Duration::from_secs(5))
        .unwrap();
    first.run(|_| {}).unwrap();
    first.finish().unwrap();
    drop(first);
    assert_eq!(*generations.lock().unwrap(), [1, 2]);

    let mut more = with_checkpoints.clone();
    more.epochs = 2;
    let mut resumed = Trainer::new(more.clone(), 3, "run")
        .unwrap()
        .with_control_hook(hook(&generations), Duration::from_secs(5))
        .unwrap();
    assert!(resumed.resumed_from().is_some());
    resumed.run(|_| {}).unwrap();
    resumed.finish().unwrap();
    drop(resumed);
    assert_eq!(*generations.lock().unwrap(), [1, 2, 3, 4]);

    // The recorder keeps no state: it cannot continue this run's.
    let (stateless, _) = recorder(Duration::ZERO, None, None);
    match Trainer::new(more, 3, "run")
        .unwrap()
        .with_control_hook(stateless, Duration::from_secs(5))
    {
        Err(Error::ControlHook { source, .. }) => {
            assert!(source.to_string().contains("keeps none"), "{source}");
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a stateless hook took a checkpoint's controller state"),
    }
}
