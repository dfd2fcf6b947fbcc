//! Issue #17 end to end through the `esper` binary: a signed policy file
//! drives `esper train` (`tamiyo.controller = "learned"`), each epoch-end
//! decision lands in the run's trajectory, `esper policy train` runs real
//! episodes with their baselines and writes an updated, signed policy that
//! `--resume` continues, and a tampered file is refused before anything
//! runs.

use std::path::Path;

use crate::common::{esper_in, text};

/// A config with a file policy key and a tiny curriculum.
fn setup(dir: &Path) {
    std::fs::write(dir.join("policy.key"), "ab".repeat(32)).unwrap();
    std::fs::write(
        dir.join("esper.toml"),
        "[tamiyo.learned]\nkey = { source = \"file\", path = \"policy.key\" }\n\
         [tamiyo.ppo]\nhosts = [\"cnn-impaired\"]\nepisode_epochs = 2\n\
         episode_train_size = 1024\nepisodes_per_update = 2\nseed_pool_size = 2\n",
    )
    .unwrap();
}

fn esper(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut all = vec!["--config", "esper.toml"];
    all.extend_from_slice(args);
    let out = esper_in(&all, dir, env);
    (out.status.success(), text(&out))
}

/// A temporary directory set up with an untrained `p0.safetensors`.
fn with_a_policy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let (ok, t) = esper(
        dir.path(),
        &["policy", "init", "p0.safetensors", "--hidden", "8"],
        &[],
    );
    assert!(ok, "{t}");
    dir
}

const LEARNED: [(&str, &str); 7] = [
    // What these tests check does not depend on wall-clock time: a loaded
    // CI machine must not turn a fence into a missed deadline.
    (
        "ESPER_LEYLINE__BUDGETS__PERFORMANCE__TAMIYO_STEP_DEADLINE_MS",
        "10000",
    ),
    ("ESPER_TOLARIA__HOST", "cnn-impaired"),
    ("ESPER_TOLARIA__EPOCHS", "3"),
    ("ESPER_TOLARIA__TRAIN_SIZE", "1024"),
    ("ESPER_TAMIYO__CONTROLLER", "learned"),
    ("ESPER_TAMIYO__LEARNED__POLICY", "p0.safetensors"),
    ("ESPER_TAMIYO__LEARNED__EXPLORATION", "sample"),
];

#[test]
fn a_policy_file_drives_a_run_and_records_every_epoch_end_decision() {
    let dir = with_a_policy();
    let d = dir.path();
    let mut env = LEARNED.to_vec();
    env.push(("ESPER_RUN__RUN_ID", "l1"));
    let (ok, t) = esper(d, &["train"], &env);
    assert!(ok, "{t}");
    assert!(t.contains("controller learned"), "{t}");
    let run = d.join("runs/l1");
    let trajectory = tamiyo::trajectory::read(&run.join("trajectory.wal")).unwrap();
    let epochs: Vec<u32> = trajectory.records.iter().map(|r| r.epoch).collect();
    assert_eq!(epochs, [1, 2, 3], "one decision per epoch end");
    let decisions = std::fs::read_to_string(run.join("decisions.jsonl")).unwrap();
    assert!(decisions.contains("learned_"), "{decisions}");
    let (ok, t) = esper(d, &["inspect", "l1"], &[]);
    assert!(
        ok && t.contains("trajectory: 3 decision(s) recorded"),
        "{t}"
    );

    // One flipped byte in the weights: refused before a run directory exists.
    let mut bytes = std::fs::read(d.join("p0.safetensors")).unwrap();
    let n = bytes.len();
    bytes[n - 2] ^= 1;
    std::fs::write(d.join("bad.safetensors"), &bytes).unwrap();
    let mut env = LEARNED.to_vec();
    env[5] = ("ESPER_TAMIYO__LEARNED__POLICY", "bad.safetensors");
    env.push(("ESPER_RUN__RUN_ID", "l2"));
    let (ok, t) = esper(d, &["train"], &env);
    assert!(!ok && t.contains("SHA-256"), "{t}");
    assert!(
        !d.join("runs/l2").exists(),
        "a refused policy left a run directory"
    );
    // Without a key that outlives the process there is nothing to check.
    std::fs::write(d.join("esper.toml"), "").unwrap();
    let (ok, t) = esper(d, &["train"], &LEARNED);
    assert!(!ok && t.contains("tamiyo.learned.key"), "{t}");
}

#[test]
fn policy_train_runs_episodes_against_baselines_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    let train_with = |args: &[&str], env: &[(&str, &str)]| {
        let mut all = vec!["policy", "train", "--out", "p.safetensors", "--hidden", "8"];
        all.extend_from_slice(args);
        esper(d, &all, env)
    };
    let train = |args: &[&str]| train_with(args, &[]);
    // The first update is behaviour cloning of the heuristic, the second
    // (after --resume) PPO, regularised by the first's demonstrations.
    let (ok, t) = train(&["--updates", "1", "--jobs", "2", "--imitate", "1"]);
    assert!(ok, "{t}");
    assert!(t.contains("update 1/1 | 2 episode(s)"), "{t}");
    assert!(t.contains("imitation nll"), "{t}");
    let home = d.join("runs/policy-train/p/runs");
    for run in [
        "p-cnn-impaired-baseline-s1000",
        "p-cnn-impaired-baseline-s1001",
        "p-cnn-impaired-u0-s1000",
        "p-cnn-impaired-u0-s1001",
    ] {
        assert!(home.join(run).join("summary.json").exists(), "{run}: {t}");
    }
    // Without --resume an existing learner is not overwritten.
    let (ok, t) = train(&["--updates", "2"]);
    assert!(!ok && t.contains("--resume"), "{t}");
    let (ok, t) = train_with(
        &[
            "--updates",
            "2",
            "--jobs",
            "2",
            "--resume",
            "--imitate",
            "1",
        ],
        &[("ESPER_TAMIYO__PPO__IMITATION_COEF", "1.0")],
    );
    assert!(ok, "{t}");
    assert!(
        t.contains("demonstration(s) of the teacher read back from the first 1 update(s)"),
        "{t}"
    );
    assert!(t.contains("update 2/2"), "{t}");
    assert!(t.contains("| kl ") && t.contains("| teacher nll "), "{t}");
    // Update 2 reused both baselines (their seeds came round again).
    let (ok, t) = esper(d, &["policy", "show", "p.safetensors"], &[]);
    assert!(ok, "{t}");
    assert!(
        t.contains("trained       2 update(s) on 4 episode(s)"),
        "{t}"
    );
    assert!(t.contains("mean_return"), "{t}");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("p.learner.json")).unwrap()).unwrap();
    let history = state["history"].as_array().unwrap();
    assert_eq!(history.len(), 2);
    let agreement = history[0]["imitation_agreement"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&agreement), "{state}");
    // The PPO update reports the demonstrations' likelihood, no agreement.
    assert!(history[1]["imitation_nll"].as_f64().is_some(), "{state}");
    assert!(history[1].get("imitation_agreement").is_none(), "{state}");
    // The manifest reports what the last update optimised: PPO's KL.
    assert!(t.contains("approx_kl"), "{t}");
}

#[test]
fn policy_eval_runs_the_policy_as_one_more_cohort_arm() {
    let dir = with_a_policy();
    let d = dir.path();
    std::fs::write(
        d.join("tiny.toml"),
        format!(
            "name = \"tiny\"\nseeds = [7]\ndir = \"{}\"\n[config.tolaria]\nhost = \"mlp\"\n\
             epochs = 1\ntrain_size = 512\n[[arm]]\nkind = \"static-small\"\n",
            d.join("runs").display()
        ),
    )
    .unwrap();
    let (ok, t) = esper(
        d,
        &[
            "policy",
            "eval",
            "p0.safetensors",
            "--cohort",
            "tiny.toml",
            "--jobs",
            "2",
        ],
        &[],
    );
    // Two arms make no verdict (no static-big): the runs happen, then the
    // error names the arm the claims need.
    assert!(!ok && t.contains("has no static-big arm"), "{t}");
    let summary = std::fs::read_to_string(d.join("runs/tiny-learned-s7/summary.json")).unwrap();
    assert!(summary.contains("\"controller\": \"learned\""), "{summary}");
    // A policy signed under another key is refused before any run.
    std::fs::write(d.join("policy.key"), "cd".repeat(32)).unwrap();
    let (ok, t) = esper(
        d,
        &["policy", "eval", "p0.safetensors", "--cohort", "tiny.toml"],
        &[],
    );
    assert!(!ok && t.contains("signature"), "{t}");
}

/// The policy the repository ships still loads in this build: its
/// signature, its graph schema (features, heads) and every weight's shape.
/// A change to the features fails here until the policy is trained again.
#[test]
fn the_shipped_policy_verifies_and_loads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = esper_in(
        &[
            "--config",
            "policies/train.toml",
            "policy",
            "show",
            "policies/esper-v7.safetensors",
        ],
        &root,
        &[],
    );
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("signature and weights verified"), "{t}");
}

/// `esper tamiyo serve` with the learned controller validates its policy
/// before serving, and on SIGHUP swaps in a replaced file only when it loads
/// and validates: a tampered file is rejected (said on stderr) and the
/// served policy stays; a good one is served from then on. With
/// `[runtime] listen` its `/metrics` counts both outcomes.
#[test]
fn tamiyo_serve_swaps_its_policy_on_sighup_only_after_validating_it() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let dir = with_a_policy();
    let (ok, t) = esper(
        dir.path(),
        &[
            "policy",
            "init",
            "p1.safetensors",
            "--hidden",
            "8",
            "--seed",
            "7",
        ],
        &[],
    );
    assert!(ok, "{t}");
    let served = dir.path().join("served.safetensors");
    std::fs::copy(dir.path().join("p0.safetensors"), &served).unwrap();
    let port = crate::common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let metrics_at = format!("127.0.0.1:{}", crate::common::free_port());
    let mut child = crate::common::esper_command(
        &[
            "--config",
            "esper.toml",
            "tamiyo",
            "serve",
            "--listen",
            &listen,
        ],
        dir.path(),
        &[
            ("ESPER_LEYLINE__SECURITY__SECRET__SOURCE", "env"),
            ("ESPER_LEYLINE__SECURITY__SECRET__VAR", "SERVE_TEST_SECRET"),
            ("SERVE_TEST_SECRET", &"cd".repeat(32)),
            ("ESPER_TAMIYO__CONTROLLER", "learned"),
            ("ESPER_TAMIYO__LEARNED__POLICY", "served.safetensors"),
            ("ESPER_RUNTIME__LISTEN", &metrics_at),
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    struct Kill(u32);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill")
                .arg(self.0.to_string())
                .status();
        }
    }
    let pid = child.id();
    let _guard = Kill(pid);
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    let validated = out.next().unwrap().unwrap();
    assert!(
        validated.contains("validated (36 observations"),
        "{validated}"
    );
    let metrics = out.next().unwrap().unwrap();
    assert!(metrics.contains("metrics on http://"), "{metrics}");
    let listening = out.next().unwrap().unwrap();
    assert!(listening.contains("learned controller on"), "{listening}");
    // The reload counters, as an operator's Prometheus scrapes them.
    let reloads = |outcome: &str| -> f64 {
        let (status, text) = crate::common::get(&metrics_at, "/metrics");
        assert_eq!(status, 200, "{text}");
        let series = format!("tamiyo_policy_reloads_total{{outcome=\"{outcome}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series}in {text}"))
    };
    assert_eq!(crate::common::get(&metrics_at, "/readyz").0, 200);
    assert_eq!((reloads("swapped"), reloads("rejected")), (0.0, 0.0));
    let hangup = || {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };

    // A tampered file: refused, said on stderr.
    let mut bytes = std::fs::read(dir.path().join("p1.safetensors")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&served, &bytes).unwrap();
    hangup();
    let rejected = err
        .by_ref()
        .map(|l| l.unwrap())
        .find(|l| l.contains("SIGHUP"))
        .unwrap();
    assert!(
        rejected.contains("REJECTED, the served one stays"),
        "{rejected}"
    );
    assert_eq!((reloads("swapped"), reloads("rejected")), (0.0, 1.0));

    // A good one: served from now on.
    std::fs::copy(dir.path().join("p1.safetensors"), &served).unwrap();
    hangup();
    let swapped = out.next().unwrap().unwrap();
    assert!(swapped.contains("now serving policy"), "{swapped}");
    assert_ne!(
        swapped.split_whitespace().nth(7),
        validated.split_whitespace().nth(4),
        "{validated} / {swapped}"
    );
    assert_eq!((reloads("swapped"), reloads("rejected")), (1.0, 1.0));
    let _ = child.kill();
    let _ = child.wait();
}
