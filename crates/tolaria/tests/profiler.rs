//! The step profiler: bounded windows into Chrome trace files; failures are
//! events and counters, never a stopped run.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use tolaria::ProfilerConfig;
use tolaria::{Config, Error, Trainer};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `tracing` caches callsite interest process-wide; tests that create
/// trainers concurrently could race that cache, so these run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn config(profiler: ProfilerConfig) -> Config {
    Config {
        host: "mlp".into(),
        epochs: 2,
        train_size: 1_024,
        profiler,
        ..Config::default()
    }
}

#[test]
fn windows_of_steps_become_chrome_traces() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(
        config(ProfilerConfig {
            dir: Some(dir.path().to_path_buf()),
            start_step: 3,
            steps: 4,
            windows: 2,
            every_steps: 8,
        }),
        1,
        "test-run",
    )
    .unwrap();
    t.run(|_| {}).unwrap();
    t.finish().unwrap();
    // 16 steps: windows at steps 3-6 and 11-14 (the second crosses no epoch end).
    let traces = t.profiler_traces().to_vec();
    assert_eq!(traces.len(), 2, "{traces:?}");
    assert!(traces[0].ends_with("trace-steps-000000003-000000006.json"));
    assert!(traces[1].ends_with("trace-steps-000000011-000000014.json"));
    // Every window, not only the first, holds its steps' spans.
    for trace in &traces {
        let text = std::fs::read_to_string(trace).unwrap();
        let events: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
        let names: std::collections::BTreeSet<&str> =
            events.iter().filter_map(|e| e["name"].as_str()).collect();
        for span in ["step", "data", "forward", "backward", "optimizer"] {
            assert!(
                names.contains(span),
                "{span} missing from {names:?} in {trace:?}"
            );
        }
        let steps = events
            .iter()
            .filter(|e| e["name"] == "step" && e["ph"] == "B")
            .count();
        assert_eq!(
            steps, 4,
            "exactly the window's steps are traced in {trace:?}"
        );
    }
    assert_eq!(t.profiler_failures(), 0);
}

#[test]
fn an_unwritable_trace_directory_is_an_event_and_training_continues() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    let mut t = Trainer::new(
        config(ProfilerConfig {
            dir: Some(blocker.join("traces")),
            ..ProfilerConfig::default()
        }),
        1,
        "test-run",
    )
    .unwrap();
    assert_eq!(t.profiler_failures(), 1);
    let events = t.drain_events();
    assert!(
        events.iter().any(|e| e.name == "profiler_failed"),
        "{events:?}"
    );
    let reports = t.run(|_| {}).unwrap();
    assert_eq!(reports.len(), 2);
    assert!(t.profiler_traces().is_empty());
}

#[test]
fn overlapping_windows_are_a_config_error() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let bad = config(ProfilerConfig {
        steps: 10,
        every_steps: 5,
        ..ProfilerConfig::default()
    });
    match Trainer::new(bad, 1, "test-run") {
        Err(Error::Config(e)) => assert_eq!(e.path(), "tolaria.profiler.every_steps"),
        other => panic!("expected a config error, got {:?}", other.map(|_| ())),
    }
}
