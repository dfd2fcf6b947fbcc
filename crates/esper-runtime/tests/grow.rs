//! `esper train` grows a network on its own: on `cnn-impaired` with the
//! bundled MNIST, the heuristic controller germinates a 3×3 residual seed when
//! validation loss plateaus, Kasmina incubates, blends and fossilizes it, and
//! the run ends at least 5 points above the same run with the controller off
//! (mean over 3 run seeds). A schedule file (`--script`) drives the same
//! lifecycle by hand.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

mod common;
use common::{esper_in as esper, text};

/// Final validation accuracy (percent) of run `id` under `runs`.
fn final_accuracy(runs: &Path, id: &str) -> f64 {
    let lines = std::fs::read_to_string(runs.join(id).join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(lines.lines().last().unwrap()).unwrap();
    100.0 * last["validation_accuracy"].as_f64().unwrap()
}

#[test]
fn the_heuristic_controller_grows_the_impaired_host_by_at_least_5_points() {
    let cwd = tempfile::tempdir().unwrap();
    let runs = cwd.path().join("runs");
    let (mut grown, mut plain) = (Vec::new(), Vec::new());
    for seed in 0..3u64 {
        let seed_s = seed.to_string();
        let common = [
            ("ESPER_TOLARIA__HOST", "cnn-impaired"),
            ("ESPER_TOLARIA__EPOCHS", "6"),
            ("ESPER_RUN__SEED", seed_s.as_str()),
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
        assert!(t.contains("controller heuristic"), "{t}");
        assert!(
            t.contains("GERMINATE seed-r0") && t.contains("germinate_plateau"),
            "{t}"
        );
        assert!(t.contains("ended FOSSILIZED"), "{t}");
        assert!(!t.contains("command_rejected"), "{t}");
        // Every decision is logged with its evidence.
        let decisions = std::fs::read_to_string(runs.join(&id).join("decisions.jsonl")).unwrap();
        let germinations = decisions
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|d| d["action"].as_str().unwrap().starts_with("GERMINATE"))
            .count();
        assert!(germinations >= 1, "{decisions}");
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
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let lift = mean(&grown) - mean(&plain);
    println!(
        "mean: heuristic {:.2} %, off {:.2} %, lift {lift:+.2} points",
        mean(&grown),
        mean(&plain)
    );
    assert!(lift >= 5.0, "heuristic {grown:?} vs off {plain:?}");
}

#[test]
fn a_schedule_file_drives_the_lifecycle_and_a_bad_one_is_refused() {
    let cwd = tempfile::tempdir().unwrap();
    let script = cwd.path().join("seeds.toml");
    std::fs::write(
        &script,
        r#"
[[action]]
at_step = 5
op = "germinate"
slot = "r0"
blueprint = "conv.residual"
seed = "scripted"

[[action]]
at_epoch = 1
op = "cull"
seed = "scripted"
"#,
    )
    .unwrap();
    let env = [
        ("ESPER_TOLARIA__HOST", "cnn-impaired"),
        ("ESPER_TOLARIA__EPOCHS", "2"),
        ("ESPER_TOLARIA__TRAIN_SIZE", "2048"),
        ("ESPER_TOLARIA__FENCE_EVERY_STEPS", "5"),
        ("ESPER_RUN__RUN_ID", "scripted"),
    ];
    let out = esper(&["train", "--script", "seeds.toml"], cwd.path(), &env);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("controller script"), "{t}");
    assert!(
        t.contains("GERMINATE scripted at r0 (conv.residual)"),
        "{t}"
    );
    assert!(t.contains("CULL scripted"), "{t}");
    // Culled at the end of epoch 1: embargoed, not part of the model.
    assert!(t.contains("seed_culled"), "{t}");
    assert!(!t.contains("ended FOSSILIZED"), "{t}");

    std::fs::write(&script, "[[action]]\nat_step = 1\nop = \"explode\"\n").unwrap();
    let out = esper(&["train", "--script", "seeds.toml"], cwd.path(), &env);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("schedule"), "{}", text(&out));
}
