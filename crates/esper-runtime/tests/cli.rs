//! The `esper` binary as an operator runs it.

use std::process::Output;

use crate::common;
use common::text;

fn esper(args: &[&str], env: &[(&str, &str)]) -> Output {
    // A fresh working directory per call: defaults such as `urza.root =
    // "urza"` must not write into the source tree.
    let cwd = tempfile::tempdir().unwrap();
    common::esper_in(args, cwd.path(), env)
}

#[test]
fn check_passes_with_defaults() {
    let out = esper(&["check"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("11 checks, 11 passed, 0 failed"), "{t}");
    assert!(
        t.contains("oona round trip") && t.contains("in-process"),
        "{t}"
    );
    assert!(
        t.contains("lifecycle table") && t.contains("verification latency"),
        "{t}"
    );
}

#[test]
fn help_lists_the_subcommands() {
    let out = esper(&["--help"], &[]);
    assert!(out.status.success());
    let t = text(&out);
    assert!(t.contains("check") && t.contains("config"), "{t}");
}

#[test]
fn unknown_config_key_fails_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("esper.toml");
    std::fs::write(&path, "[leyline.limits]\nmax_mesh_layer = 3\n").unwrap();
    let out = esper(&["--config", path.to_str().unwrap(), "check"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("leyline.limits.max_mesh_layer"),
        "{}",
        text(&out)
    );
}

#[test]
fn bad_env_value_fails_naming_the_key_and_variable() {
    let out = esper(&["config"], &[("ESPER_LEYLINE__LIMITS__MAX_RETRIES", "0")]);
    assert_eq!(out.status.code(), Some(2));
    let t = text(&out);
    assert!(
        t.contains("leyline.limits.max_retries")
            && t.contains("ESPER_LEYLINE__LIMITS__MAX_RETRIES"),
        "{t}"
    );
}

#[test]
fn config_prints_the_resolved_values_and_never_a_secret() {
    let key = "aa".repeat(32);
    let out = esper(
        &["config"],
        &[
            ("ESPER_RUN__SEED", "11"),
            ("ESPER_LEYLINE__SECURITY__SECRET__SOURCE", "env"),
            ("ESPER_LEYLINE__SECURITY__SECRET__VAR", "ESPER_SECRET"),
            ("ESPER_SECRET", &key),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("seed = 11"), "{t}");
    assert!(t.contains("ESPER_SECRET") && !t.contains(&key), "{t}");
}

#[test]
fn missing_secret_is_a_startup_error() {
    let out = esper(
        &["check"],
        &[
            ("ESPER_LEYLINE__SECURITY__SECRET__SOURCE", "file"),
            ("ESPER_LEYLINE__SECURITY__SECRET__PATH", "/nonexistent/key"),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("signing secret"), "{}", text(&out));
}

#[test]
fn train_runs_a_short_real_training_and_reports_each_epoch() {
    let runs = tempfile::tempdir().unwrap();
    let out = esper(
        &["train"],
        &[
            ("ESPER_TOLARIA__HOST", "mlp"),
            ("ESPER_TOLARIA__EPOCHS", "2"),
            ("ESPER_TOLARIA__TRAIN_SIZE", "1024"),
            ("ESPER_RUN__SEED", "5"),
            ("ESPER_RUN__RUN_ID", "cli-run"),
            ("ESPER_RUN__DIR", runs.path().to_str().unwrap()),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("host mlp") && t.contains("1024 train / 8976 validation"),
        "{t}"
    );
    assert!(
        t.contains("epoch   1") && t.contains("epoch   2") && t.contains("done"),
        "{t}"
    );
    // One state packet per epoch went out on the (in-process) bus.
    assert!(
        t.contains("oona (in-process)") && t.contains("normal 2"),
        "{t}"
    );
    // The run directory: resolved config, one metrics line and one checkpoint per epoch.
    let dir = runs.path().join("cli-run");
    let lines = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let epochs: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(epochs.len(), 2);
    assert_eq!(epochs[1]["epoch"], 2);
    assert!(epochs[1]["validation_accuracy"].as_f64().unwrap() > 0.5);
    assert!(
        std::fs::read_to_string(dir.join("config.toml"))
            .unwrap()
            .contains("[oona]")
    );
    assert_eq!(
        std::fs::read_dir(dir.join("checkpoints")).unwrap().count(),
        2
    );
}

#[test]
fn train_resume_continues_a_run_from_its_checkpoint() {
    let runs = tempfile::tempdir().unwrap();
    let dir = runs.path().to_str().unwrap();
    let common = [
        ("ESPER_TOLARIA__HOST", "mlp"),
        ("ESPER_TOLARIA__TRAIN_SIZE", "1024"),
        ("ESPER_RUN__DIR", dir),
    ];
    let first: Vec<_> = common
        .iter()
        .copied()
        .chain([("ESPER_TOLARIA__EPOCHS", "1"), ("ESPER_RUN__RUN_ID", "r-1")])
        .collect();
    let out = esper(&["train"], &first);
    assert!(out.status.success(), "{}", text(&out));
    let second: Vec<_> = common
        .iter()
        .copied()
        .chain([("ESPER_TOLARIA__EPOCHS", "2")])
        .collect();
    let out = esper(&["train", "--resume", "r-1"], &second);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("resumed from") && t.contains("epoch   2") && !t.contains("epoch   1 |"),
        "{t}"
    );
    let lines = std::fs::read_to_string(runs.path().join("r-1/metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 2);
    let out = esper(&["train", "--resume", "no-such-run"], &second);
    assert!(!out.status.success());
    assert!(text(&out).contains("does not exist"), "{}", text(&out));
}

#[test]
fn train_rejects_an_unknown_host_before_starting() {
    let out = esper(&["train"], &[("ESPER_TOLARIA__HOST", "resnet")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("tolaria.host"), "{}", text(&out));
}

#[test]
fn urza_subcommands_list_forge_show_and_verify_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lib");
    let root_env = [("ESPER_URZA__ROOT", root.to_str().unwrap())];

    let out = esper(&["urza", "list", "--slot-kind", "dense"], &root_env);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("dense.low_rank") && !t.contains("conv.residual"),
        "{t}"
    );

    let out = esper(
        &[
            "urza",
            "forge",
            "conv.residual",
            "--slot",
            "conv2d:4x6x6",
            "--param",
            "depth=2",
            "--param",
            "expansion=1",
        ],
        &root_env,
    );
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    // 2 blocks × (3×3 conv 4→4 + bias) × 2 convs = 2 × 2 × (144 + 4) = 592 parameters.
    assert!(t.contains("592 parameters"), "{t}");
    let reference = t.split_whitespace().nth(1).unwrap().to_string();

    let out = esper(&["urza", "show", "conv.residual"], &root_env);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&reference[..16]), "{}", text(&out));

    let out = esper(&["urza", "verify"], &root_env);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("1 healthy"), "{}", text(&out));

    // Damage the artifact: verify fails, naming it.
    let file = root
        .join("artifacts")
        .join(&reference[..2])
        .join(format!("{reference}.safetensors"));
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[50] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();
    let out = esper(&["urza", "verify"], &root_env);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("1 corrupt"), "{}", text(&out));

    let out = esper(&["urza", "show", "nope"], &root_env);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("unknown blueprint `nope`"),
        "{}",
        text(&out)
    );
    let out = esper(
        &["urza", "forge", "conv.residual", "--slot", "conv2d:4"],
        &root_env,
    );
    assert_eq!(out.status.code(), Some(2));
}

/// Issue #21 items 2 and 8: hostile entries are news in `esper check` — in its
/// own round-trip stream (quarantined there, reported once) and in the real
/// quarantine stream (reported until they age out) — and a bus that is down
/// is reported with its cause, said once.
#[test]
fn check_reports_quarantined_entries_and_a_dead_bus_with_its_cause() {
    let redis = common::Redis::start();
    let url = redis.url();
    let key = "5e".repeat(32);
    let env = [
        ("ESPER_OONA__BACKEND__KIND", "redis"),
        ("ESPER_OONA__BACKEND__URL", url.as_str()),
        ("ESPER_LEYLINE__SECURITY__SECRET__SOURCE", "env"),
        ("ESPER_LEYLINE__SECURITY__SECRET__VAR", "ESPER_SECRET"),
        ("ESPER_SECRET", key.as_str()),
    ];
    let clean = esper(&["check"], &env);
    assert!(clean.status.success(), "{}", text(&clean));
    assert!(text(&clean).contains("oona.quarantine and oona.dead_letter are empty"));

    // Garbage in the check's own stream: quarantined by this check, and said.
    redis.cli(&["XADD", "oona.selfcheck.normal", "*", "e", "garbage"]);
    let hostile = esper(&["check"], &env);
    let t = text(&hostile);
    assert!(!hostile.status.success(), "{t}");
    assert!(
        t.contains("1 other entr(ies) on oona.selfcheck.normal failed verification")
            && t.contains("malformed_envelope"),
        "{t}"
    );
    // A quarantined entry on the real streams fails the check until it ages out.
    redis.cli(&[
        "XADD",
        "oona.quarantine",
        "*",
        "e",
        "x",
        "os",
        "normal",
        "oi",
        "1-0",
        "oa",
        "1",
        "or",
        "INVALID_SIGNATURE: forged",
    ]);
    let set_aside = esper(&["check"], &env);
    let t = text(&set_aside);
    assert!(!set_aside.status.success(), "{t}");
    assert!(
        t.contains("oona.quarantine holds 1 entr(ies) (1 INVALID_SIGNATURE)"),
        "{t}"
    );
    assert!(t.contains("10 passed, 1 failed"), "{t}");

    drop(redis);
    let down = esper(&["check"], &env);
    let t = text(&down);
    assert!(!down.status.success(), "{t}");
    assert!(t.contains("Connection refused"), "the cause is named: {t}");
    for line in t.lines() {
        assert!(
            line.matches("Connection refused").count() <= 1,
            "said once: {line}"
        );
    }
}

/// Issue #18 item 1: `esper train` checks its preconditions first and lists
/// every failure, naming what to fix, before any work or run directory.
#[test]
fn train_preflight_lists_every_failure_before_any_work() {
    let cwd = tempfile::tempdir().unwrap();
    let key = "5e".repeat(32);
    let out = common::esper_in(
        &["train"],
        cwd.path(),
        &[
            ("ESPER_RUN__RUN_ID", "preflight"),
            ("ESPER_TOLARIA__DATA_DIR", "/nonexistent"),
            ("ESPER_OONA__BACKEND__KIND", "redis"),
            ("ESPER_OONA__BACKEND__URL", "redis://127.0.0.1:1/0"),
            ("ESPER_LEYLINE__SECURITY__SECRET__SOURCE", "env"),
            ("ESPER_LEYLINE__SECURITY__SECRET__VAR", "ESPER_SECRET"),
            ("ESPER_SECRET", key.as_str()),
        ],
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("preflight failed"), "{t}");
    assert!(
        t.contains("bus reachable: redis redis://127.0.0.1:1/0") && t.contains("oona.backend.url"),
        "{t}"
    );
    assert!(
        t.contains("training data: ") && t.contains("tolaria.data_dir"),
        "{t}"
    );
    assert!(!cwd.path().join("runs").join("preflight").exists(), "{t}");

    // A library root that cannot be written, and CUDA in a build without it.
    std::fs::write(cwd.path().join("not-a-dir"), b"x").unwrap();
    let out = common::esper_in(
        &["train"],
        cwd.path(),
        &[
            ("ESPER_RUN__RUN_ID", "preflight"),
            ("ESPER_TAMIYO__CONTROLLER", "heuristic"),
            ("ESPER_URZA__ROOT", "not-a-dir"),
            ("ESPER_TOLARIA__DEVICE", "cuda"),
        ],
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("urza library: urza.root not-a-dir"), "{t}");
    if !cfg!(feature = "cuda") {
        assert!(
            t.contains("device: ") && t.contains("build with --features cuda"),
            "{t}"
        );
    }
    assert!(
        !t.contains("bus reachable:"),
        "the in-process bus passes: {t}"
    );
}

/// Issue #18 item 6: `esper inspect` gives a readable account of a run
/// directory, reports damage where it is (a flipped checkpoint byte, a bad
/// log line) and changes nothing.
#[test]
fn inspect_summarises_a_run_and_reports_damage_without_touching_it() {
    let cwd = tempfile::tempdir().unwrap();
    let env = [
        ("ESPER_RUN__RUN_ID", "looked-at"),
        ("ESPER_TOLARIA__HOST", "mlp"),
        ("ESPER_TOLARIA__TRAIN_SIZE", "1024"),
        ("ESPER_TOLARIA__EPOCHS", "2"),
    ];
    let trained = common::esper_in(&["train"], cwd.path(), &env);
    assert!(trained.status.success(), "{}", text(&trained));
    let run = cwd.path().join("runs/looked-at");
    let out = common::esper_in(&["inspect", "looked-at"], cwd.path(), &env);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    for expected in [
        "config: host mlp, 2 epochs, train size 1024",
        "status: completed",
        "epochs: 2 logged (1..2)",
        "checkpoints: 2 in",
        ": ok (epoch 2,",
    ] {
        assert!(t.contains(expected), "{expected:?} missing from:\n{t}");
    }
    // Damage: a flipped byte in the newest checkpoint's weights, garbage in the log.
    let newest = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    let weights = std::fs::read_dir(&newest)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .unwrap();
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&weights, &bytes).unwrap();
    let mut log = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    log.push_str("not json\n");
    std::fs::write(run.join("metrics.jsonl"), &log).unwrap();
    let out = common::esper_in(&["inspect", run.to_str().unwrap()], cwd.path(), &env);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("CORRUPT"), "{t}");
    assert!(t.contains("DAMAGED metrics.jsonl line 3"), "{t}");
    // Nothing was repaired or moved.
    assert_eq!(std::fs::read(&weights).unwrap(), bytes);
    assert_eq!(
        std::fs::read_to_string(run.join("metrics.jsonl")).unwrap(),
        log
    );
    let missing = common::esper_in(&["inspect", "no-such-run"], cwd.path(), &env);
    assert!(!missing.status.success());
    assert!(text(&missing).contains("no run directory no-such-run"));
}
