//! `esper train` grows a network on its own: on `cnn-impaired` with the
//! bundled MNIST, the heuristic controller germinates the seed whose expected
//! gain best covers its rent when validation loss plateaus while the host is
//! short of capacity, Kasmina incubates, blends and fossilizes it, and
//! the run ends above the same run with the controller off on every one of 3
//! run seeds, by at least 3 points on average.

use std::path::Path;

use crate::common;
use common::{esper_in as esper, text};

/// Final validation accuracy (percent) of run `id` under `runs`.
fn final_accuracy(runs: &Path, id: &str) -> f64 {
    let lines = std::fs::read_to_string(runs.join(id).join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(lines.lines().last().unwrap()).unwrap();
    100.0 * last["validation_accuracy"].as_f64().unwrap()
}

#[test]
fn the_heuristic_controller_grows_the_impaired_host_on_every_seed_by_3_points_on_average() {
    let cwd = tempfile::tempdir().unwrap();
    let runs = cwd.path().join("runs");
    let (mut grown, mut plain) = (Vec::new(), Vec::new());
    let mut fossilized = 0;
    for seed in 0..3u64 {
        let seed_s = seed.to_string();
        let common = [
            ("ESPER_TOLARIA__HOST", "cnn-impaired"),
            ("ESPER_TOLARIA__EPOCHS", "6"),
            ("ESPER_RUN__SEED", seed_s.as_str()),
            // The one wall-clock guard still on by default lifted: this test
            // judges growth, and on cores shared with other test binaries a
            // missed Tamiyo step deadline delays a decision and the run takes
            // another path (with two busy loops beside it, a germination
            // landed 126 steps late and the test failed). The risk engine's
            // time rules and G2's slowdown rule are off by default (opt-in,
            // `wall_clock_rules`, `kasmina.max_slowdown`).
            (
                "ESPER_LEYLINE__BUDGETS__PERFORMANCE__TAMIYO_STEP_DEADLINE_MS",
                "10000",
            ),
        ];
        let id = format!("grow-{seed}");
        let env: Vec<_> = common
            .iter()
            .copied()
            .chain([("ESPER_RUN__RUN_ID", id.as_str())])
            .collect();
        let out = esper(&["train"], cwd.path(), &env);
        let t = text(&out);
        assert!(out.status.success(), "{t}");
        // The run's epochs and decisions, shown when the test fails.
        for line in t.lines().filter(|l| {
            l.starts_with("epoch") || l.starts_with("  ") || l.contains("tamiyo_step_failed")
        }) {
            println!("seed {seed} | {line}");
        }
        assert!(t.contains("controller heuristic"), "{t}");
        assert!(
            t.contains("GERMINATE seed-r0") && t.contains("germinate_capacity"),
            "{t}"
        );
        // A seed culled early is retried at the other slot, which may not
        // reach FOSSILIZED in 6 epochs: most runs, not every one, fossilize.
        fossilized += usize::from(t.contains("ended FOSSILIZED"));
        assert!(!t.contains("command_rejected"), "{t}");
        // Every decision is logged with its evidence.
        let decisions = std::fs::read_to_string(runs.join(&id).join("decisions.jsonl")).unwrap();
        let germinations = decisions
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|d| d["action"].as_str().unwrap().starts_with("GERMINATE"))
            .count();
        assert!(germinations >= 1, "{decisions}");
        // The first germination's outcome was decided on its two-epoch window
        // (a measured gain), logged durably and published.
        assert!(t.contains("field reports: success"), "{t}");
        let (_, logged) =
            tamiyo::field_reports::Wal::open(runs.join(&id).join("field_reports.wal")).unwrap();
        assert!(
            logged
                .reports
                .iter()
                .any(|r| r.outcome == leyline::v1::FieldReportOutcome::Success as i32),
            "{logged:?}"
        );
        grown.push(final_accuracy(&runs, &id));

        let id = format!("off-{seed}");
        let env: Vec<_> = common
            .iter()
            .copied()
            .chain([
                ("ESPER_RUN__RUN_ID", id.as_str()),
                ("ESPER_TAMIYO__CONTROLLER", "off"),
            ])
            .collect();
        let out = esper(&["train"], cwd.path(), &env);
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("controller off"), "{}", text(&out));
        plain.push(final_accuracy(&runs, &id));
        println!(
            "seed {seed}: heuristic {:.2} %, controller off {:.2} %",
            grown[seed as usize], plain[seed as usize]
        );
    }
    assert!(fossilized >= 2, "{fossilized} of 3 runs fossilized a seed");
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let lift = mean(&grown) - mean(&plain);
    println!(
        "mean: heuristic {:.2} %, off {:.2} %, lift {lift:+.2} points",
        mean(&grown),
        mean(&plain)
    );
    // The cost-aware heuristic grows cheap seeds (two depthwise seeds, 312
    // parameters, where the old choice of conv.residual added 1 172–5 820):
    // they measured +3.7 to +4.9 points on these seeds, and the earlier
    // threshold of 5 points belonged to the big seed.
    assert!(lift >= 3.0, "heuristic {grown:?} vs off {plain:?}");
    for (seed, (g, p)) in grown.iter().zip(&plain).enumerate() {
        assert!(g > p, "seed {seed}: heuristic {g} vs off {p}");
    }
}

/// The losses and accuracies of a run, epoch by epoch, as their exact bits.
fn trajectory(runs: &Path, id: &str) -> Vec<[u64; 4]> {
    let lines = std::fs::read_to_string(runs.join(id).join("metrics.jsonl")).unwrap();
    lines
        .lines()
        .map(|l| {
            let m: serde_json::Value = serde_json::from_str(l).unwrap();
            [
                "train_loss",
                "train_accuracy",
                "validation_loss",
                "validation_accuracy",
            ]
            .map(|k| m[k].as_f64().unwrap().to_bits())
        })
        .collect()
}

/// A run that grows repeats bit for bit by its seed (DESIGN principle 9):
/// from a fresh library, and from one where another run seed already forged
/// the artifacts (a germinated seed draws its weights from the run seed and
/// its own id, not from the cached artifact or the command's random id).
#[test]
fn a_grown_run_repeats_bit_for_bit_by_its_seed() {
    let run = |cwd: &Path, seed: &str, id: &str| {
        let env = [
            ("ESPER_TOLARIA__HOST", "cnn-impaired"),
            ("ESPER_TOLARIA__EPOCHS", "4"),
            ("ESPER_RUN__SEED", seed),
            ("ESPER_RUN__RUN_ID", id),
            // As above: Tamiyo's step deadline must not change the run's path.
            (
                "ESPER_LEYLINE__BUDGETS__PERFORMANCE__TAMIYO_STEP_DEADLINE_MS",
                "10000",
            ),
        ];
        let out = esper(&["train"], cwd, &env);
        let t = text(&out);
        assert!(out.status.success(), "{t}");
        assert!(t.contains("GERMINATE seed-r0"), "the run must grow: {t}");
        trajectory(&cwd.join("runs"), id)
    };
    let fresh = tempfile::tempdir().unwrap();
    let first = run(fresh.path(), "5", "first");
    let used = tempfile::tempdir().unwrap();
    run(used.path(), "6", "other-seed");
    let again = run(used.path(), "5", "again");
    assert_eq!(first, again, "the same seed took another path");
}

/// Copies a run directory (files and folders), for resuming one run from
/// several of its checkpoints.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The decisions of a run: fence, action and rule (ids and timings aside).
pub(crate) fn decisions(runs: &Path, id: &str) -> Vec<String> {
    let lines = std::fs::read_to_string(runs.join(id).join("decisions.jsonl")).unwrap();
    lines
        .lines()
        .map(|l| {
            let d: serde_json::Value = serde_json::from_str(l).unwrap();
            format!(
                "{} {} {} {} {}",
                d["global_step"], d["generation"], d["fence"], d["action"], d["rule"]
            )
        })
        .collect()
}

/// Exact resume (issue #19 item 3, DESIGN invariant 9): a growing run
/// resumed from the checkpoint of every epoch but the last — with seeds
/// GERMINATED, TRAINING, BLENDING or FOSSILIZED in it, Tamiyo's memory,
/// risk averages and open field reports, the trainer's generation and
/// governor — ends bit for bit as the uninterrupted run, with the same
/// decisions at the same fences.
#[test]
fn a_grown_run_resumed_from_every_epoch_ends_bit_for_bit_as_the_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let env = [
        ("ESPER_TOLARIA__HOST", "cnn-impaired"),
        ("ESPER_TOLARIA__EPOCHS", "5"),
        ("ESPER_TOLARIA__CHECKPOINT__KEEP", "10"),
        ("ESPER_RUN__SEED", "5"),
        // Tamiyo's step deadline must not change the run's path.
        (
            "ESPER_LEYLINE__BUDGETS__PERFORMANCE__TAMIYO_STEP_DEADLINE_MS",
            "10000",
        ),
    ];
    let with_id = |id: &'static str| {
        let mut e = env.to_vec();
        e.push(("ESPER_RUN__RUN_ID", id));
        e
    };
    let out = esper(&["train"], dir.path(), &with_id("whole"));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("GERMINATE seed-r0"), "the run must grow: {t}");
    let whole = trajectory(&runs, "whole");
    let whole_decisions = decisions(&runs, "whole");
    let mut checkpoints: Vec<_> = std::fs::read_dir(runs.join("whole/checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    checkpoints.sort();
    assert_eq!(checkpoints.len(), 5, "one checkpoint per epoch");
    let ids = ["from-1", "from-2", "from-3", "from-4"];
    for (epoch, id) in ids.iter().enumerate() {
        let copy = runs.join(id);
        copy_dir(&runs.join("whole"), &copy);
        for later in &checkpoints[epoch + 1..] {
            std::fs::remove_dir_all(copy.join("checkpoints").join(later.file_name().unwrap()))
                .unwrap();
        }
        let out = esper(&["train", "--resume", id], dir.path(), &with_id(id));
        let t = text(&out);
        assert!(out.status.success(), "{t}");
        assert!(t.contains(&format!("(epoch {}", epoch + 1)), "{t}");
        assert_eq!(
            trajectory(&runs, id),
            whole,
            "resumed after epoch {}: {t}",
            epoch + 1
        );
        assert_eq!(
            decisions(&runs, id),
            whole_decisions,
            "resumed after epoch {}",
            epoch + 1
        );
    }
}
