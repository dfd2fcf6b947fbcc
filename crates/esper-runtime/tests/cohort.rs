//! `esper cohort` end to end on tiny runs: structure, the run store, skipping
//! finished runs, and resuming a cohort whose process was killed.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{esper_in, text};

fn cohort_file(dir: &Path, arms: &[&str], seeds: &[u64], epochs: u32) -> std::path::PathBuf {
    let mut text = format!(
        "name = \"tiny\"\nseeds = {seeds:?}\ndir = \"{}\"\n[config.tolaria]\nhost = \"mlp\"\nepochs = {epochs}\ntrain_size = 512\n",
        dir.join("runs").display()
    );
    for arm in arms {
        text.push_str(&format!("[[arm]]\nkind = \"{arm}\"\n"));
    }
    let path = dir.join("tiny.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_small_cohort_runs_every_arm_and_seed_into_the_store_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = cohort_file(dir.path(), &["static-small", "heuristic"], &[11, 12], 1);
    let file = file.to_str().unwrap();
    let out = esper_in(&["cohort", file, "--jobs", "2"], dir.path(), &[]);
    let t = text(&out);
    // Two arms cannot make a verdict: the runs happen, then the error names
    // the first arm the claims need.
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("has no static-big arm"), "{t}");
    assert!(t.contains("2 arms x 2 seeds = 4 runs"), "{t}");
    assert_eq!(t.matches(" done: ").count(), 4, "{t}");
    let runs = dir.path().join("runs");
    for id in [
        "tiny-static-small-s11",
        "tiny-static-small-s12",
        "tiny-heuristic-s11",
        "tiny-heuristic-s12",
    ] {
        let summary: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(runs.join(id).join("summary.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(summary["run_id"], id);
        assert_eq!(summary["status"], "completed");
        assert_eq!(summary["epochs"], 1);
        // The costs are counted: mlp's two layers, and a run at least as
        // costly to train as its final model's forward.
        let host: u64 = 784 * 128 + 128 * 10;
        assert_eq!(summary["host_layer_macs"][0]["layer"], "fc1");
        let end = summary["forward_macs_final"].as_u64().unwrap();
        assert!(end >= host, "{summary}");
        let flops = summary["training_flops_per_image"].as_f64().unwrap();
        assert!(flops >= 6.0 * host as f64, "{summary}");
        if id.contains("static-small") {
            assert_eq!(end, host, "the static host grows nothing");
            assert_eq!(flops, 6.0 * host as f64);
        }
        assert!(runs.join(id).join("cohort.json").is_file());
        assert!(runs.join(id).join("config.toml").is_file());
    }
    let runs_dir = runs.to_str().unwrap();
    let list = esper_in(
        &["runs", "list", "--cohort", "tiny"],
        dir.path(),
        &[("ESPER_RUN__DIR", runs_dir)],
    );
    let l = text(&list);
    assert!(list.status.success(), "{l}");
    assert_eq!(l.matches(" completed ").count(), 4, "{l}");
    assert!(l.contains("4 run(s)"), "{l}");
    let show = esper_in(
        &["runs", "show", "tiny-heuristic-s11"],
        dir.path(),
        &[("ESPER_RUN__DIR", runs_dir)],
    );
    assert!(show.status.success(), "{}", text(&show));
    assert!(
        text(&show).contains("controller heuristic")
            && text(&show).contains("host MMAC by layer: fc1 0.100, fc2 0.001"),
        "{}",
        text(&show)
    );
    // Again: nothing runs twice.
    let again = esper_in(&["cohort", file, "--jobs", "2"], dir.path(), &[]);
    let a = text(&again);
    assert!(a.contains("4 run(s) already finished: skipped"), "{a}");
    assert!(a.contains("0 run(s) now, 4 skipped, 0 failed"), "{a}");
}

fn wait_for(what: &str, deadline: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_killed_cohort_resumes_without_rerunning_what_finished() {
    let dir = tempfile::tempdir().unwrap();
    let file = cohort_file(dir.path(), &["static-small"], &[21, 22], 3);
    let runs = dir.path().join("runs");
    let first = runs.join("tiny-static-small-s21").join("summary.json");
    let log = runs
        .join("cohorts/tiny/logs")
        .join("tiny-static-small-s22.log");
    let mut cohort = Command::new(env!("CARGO_BIN_EXE_esper"))
        .current_dir(dir.path())
        .args(["cohort", file.to_str().unwrap(), "--jobs", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the first run", Duration::from_secs(600), || {
        first.is_file()
    });
    // The second run has started (its worker writes its log) when it is killed.
    wait_for("the second run to start", Duration::from_secs(60), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("esper train: run"))
    });
    cohort.kill().unwrap();
    cohort.wait().unwrap();
    let before = std::fs::read_to_string(&first).unwrap();
    // The orphaned worker notices and exits instead of writing on.
    wait_for("the worker to exit", Duration::from_secs(60), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("the cohort process is gone"))
    });
    assert!(!runs.join("tiny-static-small-s22/summary.json").exists());
    let again = esper_in(
        &["cohort", file.to_str().unwrap(), "--jobs", "1"],
        dir.path(),
        &[],
    );
    let a = text(&again);
    assert!(a.contains("1 run(s) already finished: skipped"), "{a}");
    assert!(a.contains("1 run(s) now, 1 skipped, 0 failed"), "{a}");
    assert_eq!(
        std::fs::read_to_string(&first).unwrap(),
        before,
        "the finished run was not touched"
    );
    let second: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(runs.join("tiny-static-small-s22/summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(second["epochs"], 3);
}
