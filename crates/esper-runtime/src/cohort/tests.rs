#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use super::verdict::{Outcome, VerdictError, judge};
use super::*;
use crate::store::{COMPLETED, RunRow};

const FULL: &str = r#"
name = "t"
seeds = [1, 2, 3, 4, 5]
dir = "RUNS"
[config.tolaria]
host = "cnn-impaired"
epochs = 1
[[arm]]
kind = "static-small"
[[arm]]
kind = "static-big"
host = "cnn"
[[arm]]
kind = "off-switch"
[[arm]]
kind = "fixed-schedule"
script = "seeds.toml"
[[arm]]
kind = "heuristic"
[arm.config.tolaria]
epochs = 2
"#;

fn load(text: &str) -> Result<CohortFile> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        text.replace("RUNS", &dir.path().join("runs").display().to_string()),
    )
    .unwrap();
    CohortFile::load(&path)
}

#[test]
fn a_cohort_file_gives_one_config_per_arm_and_seed() {
    let file = load(FULL).unwrap();
    assert_eq!(file.arms.len(), 5);
    let heuristic = file.arm("heuristic").unwrap();
    let config = file.run_config(heuristic, 3, 2);
    let tolaria = config["tolaria"].as_table().unwrap();
    assert_eq!(tolaria["host"].as_str(), Some("cnn-impaired"));
    assert_eq!(
        tolaria["epochs"].as_integer(),
        Some(2),
        "the arm's override wins"
    );
    assert_eq!(tolaria["cpu_threads"].as_integer(), Some(2));
    assert_eq!(config["tamiyo"]["controller"].as_str(), Some("heuristic"));
    assert_eq!(config["run"]["run_id"].as_str(), Some("t-heuristic-s3"));
    assert_eq!(config["run"]["seed"].as_integer(), Some(3));
    let big = file.run_config(file.arm("static-big").unwrap(), 1, 1);
    assert_eq!(big["tolaria"]["host"].as_str(), Some("cnn"));
    assert_eq!(big["tamiyo"]["controller"].as_str(), Some("off"));
    let off = file.run_config(file.arm("off-switch").unwrap(), 1, 1);
    assert_eq!(off["kasmina"]["off_switch"].as_bool(), Some(true));
    let fixed = file.run_config(file.arm("fixed-schedule").unwrap(), 1, 1);
    assert_eq!(fixed["tamiyo"]["controller"].as_str(), Some("script"));
    assert!(
        fixed["tamiyo"]["script"]
            .as_str()
            .unwrap()
            .ends_with("seeds.toml")
    );
}

#[test]
fn every_planned_config_resolves_before_anything_runs() {
    let text = FULL.replace("epochs = 2", "epochz = 2");
    let file = load(&text).unwrap();
    let err = file.plan(1, &BTreeMap::new()).unwrap_err();
    assert!(
        matches!(&err, CohortError::Config { run_id, .. } if run_id == "t-heuristic-s1"),
        "{err}"
    );
    assert!(err.to_string().contains("epochz"), "{err}");
}

#[test]
fn a_learned_arm_runs_its_policy_file_and_needs_one() {
    let text = format!(
        "{FULL}\n[[arm]]\nkind = \"learned\"\npolicy = \"p.safetensors\"\n\
         [arm.config.tamiyo.learned]\nkey = {{ source = \"env\", var = \"K\" }}\n"
    );
    let file = load(&text).unwrap();
    let config = file.run_config(file.arm("learned").unwrap(), 2, 1);
    assert_eq!(config["tamiyo"]["controller"].as_str(), Some("learned"));
    let learned = config["tamiyo"]["learned"].as_table().unwrap();
    assert!(
        learned["policy"]
            .as_str()
            .unwrap()
            .ends_with("p.safetensors"),
        "{learned:?}"
    );
    assert_eq!(
        learned["key"]["var"].as_str(),
        Some("K"),
        "the arm's key kept"
    );
    let err = load(&format!("{FULL}\n[[arm]]\nkind = \"learned\"\n")).unwrap_err();
    assert!(err.to_string().contains("needs `policy`"), "{err}");
}

#[test]
fn bad_cohort_files_name_the_problem() {
    for (text, says) in [
        (FULL.replace("host = \"cnn\"\n", ""), "needs `host`"),
        (
            FULL.replace("script = \"seeds.toml\"\n", ""),
            "needs `script`",
        ),
        (
            FULL.replace("seeds = [1, 2, 3, 4, 5]", "seeds = [1, 1]"),
            "listed twice",
        ),
        (
            FULL.replace("seeds = [1, 2, 3, 4, 5]", "seeds = []"),
            "seeds is empty",
        ),
        (
            FULL.replace("name = \"t\"", "name = \"a b\""),
            "name must be",
        ),
    ] {
        let err = load(&text).unwrap_err();
        assert!(err.to_string().contains(says), "{says}: {err}");
    }
    assert!(matches!(
        load(&FULL.replace("kind = \"heuristic\"", "kind = \"magic\"")),
        Err(CohortError::Parse { .. })
    ));
}

fn row(file: &CohortFile, arm: &str, seed: u64, acc: f64, params: u64) -> RunRow {
    RunRow {
        run_id: file.run_id(arm, seed),
        cohort: Some(file.name.clone()),
        arm: Some(arm.to_owned()),
        seed: Some(seed),
        host: None,
        controller: None,
        status: COMPLETED.to_owned(),
        epochs: 1,
        validation_accuracy: Some(acc),
        parameters_initial: Some(1000),
        parameters_final: Some(params),
        seeds: 0,
        fossilized: 0,
        step_ms_p50: Some(1.0),
        train_seconds: 1.0,
        forward_macs_final: Some(params * 10),
        training_flops_per_image: Some(params as f64 * 60.0),
    }
}

/// A table whose outcomes can be worked out by hand: small 0.90 + s/1000,
/// big small + 0.05, heuristic small + 0.04 ± 0.002 (5 seeds), fixed =
/// small + 0.01, off-switch = small + 0.001 ± 0.001.
fn table(file: &CohortFile, seeds: &[u64]) -> Vec<RunRow> {
    let mut rows = Vec::new();
    for &s in seeds {
        let base = 0.90 + s as f64 / 1000.0;
        let wiggle = if s % 2 == 0 { 0.002 } else { -0.002 };
        rows.push(row(file, "static-small", s, base, 1000));
        rows.push(row(file, "static-big", s, base + 0.05, 3000));
        rows.push(row(file, "heuristic", s, base + 0.04 + wiggle, 1800));
        rows.push(row(file, "fixed-schedule", s, base + 0.01, 1800));
        rows.push(row(
            file,
            "off-switch",
            s,
            base + 0.001 + wiggle / 2.0,
            1800,
        ));
    }
    rows
}

#[test]
fn a_known_table_gets_the_verdict_worked_out_by_hand() {
    let file = load(FULL).unwrap();
    let v = judge(&file, &table(&file, &[1, 2, 3, 4, 5])).unwrap();
    let outcome = |prefix: &str| {
        v.claims
            .iter()
            .find(|c| c.claim.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix}: {v}"))
            .outcome
    };
    // heuristic − small: 0.038, 0.042, 0.038, 0.042, 0.038 → mean 0.0396,
    // sd 0.00219, half-width 2.776 · 0.00219 / √5 = 0.00272: CI [3.69, 4.23]
    // points, above 0.
    assert_eq!(
        outcome("heuristic beats static-small"),
        Outcome::Pass,
        "{v}"
    );
    let d = &v.differences[0];
    assert!((d.diff.mean - 0.0396).abs() < 1e-9, "{v}");
    assert!((d.diff.lo - (0.0396 - 0.002_72)).abs() < 2e-5, "{v}");
    // heuristic − big: −0.0104 ± 0.00272: CI [−1.31, −0.77] reaches −1:
    // inconclusive; 800 parameters added ≤ half of 2000 extra.
    assert_eq!(outcome("heuristic within"), Outcome::Inconclusive, "{v}");
    assert_eq!(
        outcome("heuristic beats fixed-schedule"),
        Outcome::Pass,
        "{v}"
    );
    // off − small: 0.0, 0.002, 0.0, 0.002, 0.0 → mean 0.0008, CI upper
    // 0.0008 + 2.776 · 0.001095 / √5 = 0.00216 < 0.005: no gain.
    assert_eq!(outcome("off-switch shows no gain"), Outcome::Pass, "{v}");
    // Costs are means over the arm's runs: the rows carry 10 MACs and 60
    // FLOPs per parameter.
    let heuristic = v.arms.iter().find(|a| a.arm == "heuristic").unwrap();
    assert_eq!(heuristic.forward_macs, 18_000.0);
    assert_eq!(heuristic.training_flops, 108_000.0);
    assert!(!v.all_pass());
    let text = v.to_string();
    assert!(
        text.contains("INCONCLUSIVE") && text.contains("verdict: NOT PASS"),
        "{text}"
    );
}

#[test]
fn a_grown_arm_over_its_parameter_budget_fails() {
    let file = load(FULL).unwrap();
    let mut rows = table(&file, &[1, 2, 3, 4, 5]);
    for r in rows
        .iter_mut()
        .filter(|r| r.arm.as_deref() == Some("heuristic"))
    {
        r.parameters_final = Some(2500); // +1500 > half of 2000
    }
    let v = judge(&file, &rows).unwrap();
    let c = v
        .claims
        .iter()
        .find(|c| c.claim.contains("within"))
        .unwrap();
    assert_eq!(c.outcome, Outcome::Fail, "{v}");
    assert!(c.reason.contains("over the budget"), "{}", c.reason);
}

#[test]
fn four_seeds_are_never_enough_to_pass() {
    let text = FULL.replace("seeds = [1, 2, 3, 4, 5]", "seeds = [1, 2, 3, 4]");
    let file = load(&text).unwrap();
    let v = judge(&file, &table(&file, &[1, 2, 3, 4])).unwrap();
    assert!(
        v.claims.iter().all(|c| c.outcome == Outcome::Inconclusive),
        "{v}"
    );
    assert!(
        v.claims[0].reason.contains("5 needed"),
        "{}",
        v.claims[0].reason
    );
}

#[test]
fn a_crashed_run_keeps_its_arm_from_passing() {
    let file = load(FULL).unwrap();
    let mut rows = table(&file, &[1, 2, 3, 4, 5]);
    let crashed = rows
        .iter_mut()
        .find(|r| r.run_id == "t-heuristic-s3")
        .unwrap();
    crashed.status = "failed (exit 101)".into();
    let v = judge(&file, &rows).unwrap();
    let c = &v.claims[0];
    assert_eq!(c.claim, "heuristic beats static-small");
    assert_eq!(c.outcome, Outcome::Inconclusive, "{v}");
    assert!(
        c.reason.contains("t-heuristic-s3: failed (exit 101)"),
        "{}",
        c.reason
    );
    // A run the store does not have at all is no better.
    let rows: Vec<RunRow> = table(&file, &[1, 2, 3, 4, 5])
        .into_iter()
        .filter(|r| r.run_id != "t-static-small-s5")
        .collect();
    let v = judge(&file, &rows).unwrap();
    assert!(v.claims[0].reason.contains("missing"), "{v}");
}

#[test]
fn a_missing_arm_is_an_error_naming_it() {
    let text = FULL.replace("[[arm]]\nkind = \"off-switch\"\n", "");
    let file = load(&text).unwrap();
    let err = judge(&file, &[]).unwrap_err();
    assert!(
        matches!(
            err,
            VerdictError::MissingArm {
                kind: "off-switch",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn worker_environments_carry_no_overrides() {
    let env = BTreeMap::from([
        ("ESPER_CONFIG".to_owned(), "x".to_owned()),
        ("ESPER_RUN__SEED".to_owned(), "7".to_owned()),
        ("ESPER_SECRET".to_owned(), "k".to_owned()),
        ("PATH".to_owned(), "/bin".to_owned()),
    ]);
    let kept: Vec<String> = worker_env(&env).into_keys().collect();
    assert_eq!(kept, ["ESPER_SECRET", "PATH"]);
}

#[test]
fn merging_replaces_leaves_and_merges_tables() {
    let mut base: toml::Table = toml::from_str("[a]\nx = 1\ny = 2\n[b]\nz = 3\n").unwrap();
    merge(
        &mut base,
        toml::from_str("c = 7\n[a]\ny = 5\nw = 6\n").unwrap(),
    );
    assert_eq!(
        base,
        toml::from_str::<toml::Table>("c = 7\n[a]\nx = 1\ny = 5\nw = 6\n[b]\nz = 3\n").unwrap()
    );
}

#[test]
fn the_shipped_cohorts_load_and_every_run_resolves() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../cohorts");
    let mut seen = 0;
    for dir in [root.clone(), root.join("held-out"), root.join("confirm")] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            if !name.ends_with(".toml") || name.ends_with(".seeds.toml") {
                continue;
            }
            let mut file = CohortFile::load(&path).unwrap();
            assert!(file.seeds.len() >= verdict::MIN_SEEDS, "{name}");
            let out = tempfile::tempdir().unwrap();
            file.dir = out.path().to_path_buf();
            let plan = file.plan(1, &BTreeMap::new()).unwrap();
            assert_eq!(plan.len(), file.arms.len() * file.seeds.len());
            // Every schedule fits its host, as `esper train` checks it
            // before a run starts (a held-out mlp schedule naming one
            // parameter of two once failed here, on every seed).
            for run in plan.iter().filter(|r| r.kind == ArmKind::FixedSchedule) {
                let resolved = crate::config::load(Some(&run.config), &BTreeMap::new()).unwrap();
                let host = tolaria::hosts::build(
                    &resolved.config.tolaria.host,
                    0,
                    &candle_core::Device::Cpu,
                )
                .unwrap();
                crate::control::load_script(&resolved, host.slots())
                    .unwrap_or_else(|e| panic!("{name}, {}: {e}", run.run_id));
            }
            // The verdict can be asked of it (every arm kind it needs is there).
            judge(&file, &[]).unwrap();
            seen += 1;
        }
    }
    assert_eq!(
        seen, 7,
        "cnn-impaired, mlp and cnn, their held-out seeds, and cnn-impaired's confirmation"
    );
}

#[test]
fn a_learned_arm_is_judged_against_the_heuristic_too() {
    let text = format!("{FULL}\n[[arm]]\nkind = \"learned\"\npolicy = \"p.safetensors\"\n");
    let file = load(&text).unwrap();
    let mut rows = table(&file, &[1, 2, 3, 4, 5]);
    // learned = heuristic − 0.3 points ± 0.1: within the half-point margin.
    for s in 1..=5u64 {
        let base = 0.90 + s as f64 / 1000.0;
        let wiggle = if s % 2 == 0 { 0.002 } else { -0.002 };
        let jitter = if s % 2 == 0 { 0.001 } else { -0.001 };
        rows.push(row(
            &file,
            "learned",
            s,
            base + 0.04 + wiggle - 0.003 + jitter,
            1200,
        ));
    }
    let v = judge(&file, &rows).unwrap();
    let claim = |prefix: &str| {
        v.claims
            .iter()
            .find(|c| c.claim.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix}: {v}"))
    };
    // learned − heuristic: −0.004, −0.002, −0.004, −0.002, −0.004 → mean
    // −0.0032, sd 0.0011, half-width 0.00136: CI [−0.46, −0.18] > −0.5.
    let c = claim("learned no worse than heuristic by more than 0.5 point");
    assert_eq!(c.outcome, Outcome::Pass, "{v}");
    assert_eq!(claim("learned beats static-small").outcome, Outcome::Pass);
    // Per parameter: learned +3.64 points (mean of 4 − 0.3 + wiggle +
    // jitter) for 200 parameters = 18.20 per 1k, the heuristic +3.96 for
    // 800 = 4.95 per 1k; every resample agrees.
    let c = claim("learned beats heuristic on accuracy per parameter added");
    assert_eq!(c.outcome, Outcome::Pass, "{v}");
    assert!(c.reason.contains("18.20 vs 4.95"), "{}", c.reason);
    // One point worse throughout: FAIL.
    for r in rows
        .iter_mut()
        .filter(|r| r.arm.as_deref() == Some("learned"))
    {
        *r.validation_accuracy.as_mut().unwrap() -= 0.01;
    }
    let v = judge(&file, &rows).unwrap();
    let c = v
        .claims
        .iter()
        .find(|c| c.claim.starts_with("learned no worse"))
        .unwrap();
    assert_eq!(c.outcome, Outcome::Fail, "{v}");
    let per_parameter = |v: &verdict::Verdict| {
        v.claims
            .iter()
            .find(|c| c.claim.ends_with("on accuracy per parameter added"))
            .unwrap()
            .clone()
    };
    // The heuristic at 200 parameters too: 2.7 against 4.0 points for the
    // same parameters — worse per parameter: FAIL.
    for r in rows
        .iter_mut()
        .filter(|r| r.arm.as_deref() == Some("heuristic"))
    {
        r.parameters_final = Some(1200);
    }
    let c = per_parameter(&judge(&file, &rows).unwrap());
    assert_eq!(c.outcome, Outcome::Fail, "{}", c.reason);
    // Growing on one seed in five: no ranking per parameter.
    for r in rows
        .iter_mut()
        .filter(|r| r.arm.as_deref() == Some("learned") && r.seed != Some(1))
    {
        r.parameters_final = Some(1000);
    }
    let c = per_parameter(&judge(&file, &rows).unwrap());
    assert_eq!(c.outcome, Outcome::Inconclusive, "{}", c.reason);
    assert!(c.reason.contains("added nothing"), "{}", c.reason);
    // Growing nowhere: inconclusive, and it says which arm.
    for r in rows
        .iter_mut()
        .filter(|r| r.arm.as_deref() == Some("learned"))
    {
        r.parameters_final = Some(1000);
    }
    let c = per_parameter(&judge(&file, &rows).unwrap());
    assert_eq!(c.outcome, Outcome::Inconclusive, "{}", c.reason);
    assert!(
        c.reason.starts_with("learned added no parameters"),
        "{}",
        c.reason
    );
}

/// A learned arm added for `esper policy eval` or a training episode
/// decides under the invoking configuration's `[tamiyo.learned]` limits:
/// the variants it names (`blueprint_parameters`, not the blueprints'
/// defaults) and `max_live_seeds`.
#[test]
fn an_added_learned_arm_carries_the_invoking_learned_settings() {
    let mut file = load(FULL).unwrap();
    let key = leyline::SecretSource::File {
        path: "k.key".into(),
    };
    let defaults = tamiyo::LearnedConfig::default();
    let plain = file
        .add_learned_arm("plain", Path::new("p.safetensors"), &key, &defaults)
        .unwrap();
    let learned = plain.config["tamiyo"]["learned"].as_table().unwrap();
    assert!(!learned.contains_key("blueprint_parameters"), "{learned:?}");
    assert_eq!(
        learned["max_live_seeds"].as_integer(),
        Some(2),
        "{learned:?}"
    );
    let invoking = tamiyo::LearnedConfig {
        max_live_seeds: 1,
        blueprint_parameters: BTreeMap::from([(
            "conv.depthwise".to_string(),
            urza::Parameters::from([("kernel_size".to_string(), 5.0)]),
        )]),
        ..defaults
    };
    let arm = file
        .add_learned_arm("variant", Path::new("p.safetensors"), &key, &invoking)
        .unwrap();
    let learned = &arm.config["tamiyo"]["learned"];
    let k = &learned["blueprint_parameters"]["conv.depthwise"]["kernel_size"];
    assert_eq!(k.as_float(), Some(5.0), "{:?}", arm.config);
    assert_eq!(
        learned["max_live_seeds"].as_integer(),
        Some(1),
        "{learned:?}"
    );
    // The arm's runs resolve those settings, not the defaults.
    let run = file.run_config(file.arm("variant").unwrap(), 20, 1);
    let resolved: tamiyo::Config = run["tamiyo"].clone().try_into().unwrap();
    assert_eq!(resolved.learned.max_live_seeds, 1);
    assert_eq!(
        resolved.learned.blueprint_parameters,
        invoking.blueprint_parameters
    );
    assert!(resolved.learned.policy.is_some());
}

/// A run directory holding a run of another plan — the same arm name over
/// another configuration, or a retrained policy — is refused before
/// anything runs, naming the run, instead of being taken as this arm's
/// result; the same plan (with another `--jobs`) and runs recorded before
/// plans were are taken as they are.
#[test]
fn a_run_made_under_another_plan_is_refused_not_reused() {
    let out = tempfile::tempdir().unwrap();
    let cohort = |epochs: u32| {
        let path = out.path().join(format!("c{epochs}.toml"));
        let text = format!(
            "name = \"t\"\nseeds = [1, 2, 3, 4, 5]\n[config.tolaria]\nhost = \"cnn-impaired\"\n\
             epochs = {epochs}\n[[arm]]\nkind = \"heuristic\"\n"
        );
        std::fs::write(&path, text).unwrap();
        let mut file = CohortFile::load(&path).unwrap();
        file.dir = out.path().join("runs");
        file
    };
    let file = cohort(1);
    let plan = file.plan(1, &BTreeMap::new()).unwrap();
    // The runner records each run's plan where it runs.
    let run = &plan[0];
    std::fs::create_dir_all(&run.dir).unwrap();
    let membership = run.dir.join(MEMBERSHIP);
    std::fs::write(&membership, runner::membership_json(&file, run)).unwrap();
    let again = file.plan(2, &BTreeMap::new()).unwrap();
    assert_eq!(again[0].plan, run.plan, "threads are not what the run is");

    let err = cohort(2).plan(1, &BTreeMap::new()).unwrap_err();
    assert!(
        matches!(&err, CohortError::Stale { run_id, .. } if *run_id == run.run_id),
        "{err}"
    );
    assert!(err.to_string().contains("Remove that directory"), "{err}");

    let mut legacy: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&membership).unwrap()).unwrap();
    legacy.as_object_mut().unwrap().remove("plan");
    std::fs::write(&membership, legacy.to_string()).unwrap();
    cohort(2).plan(1, &BTreeMap::new()).unwrap();
}
