//! One writer per run and logs that match the state a run resumes from
//! (issue #19 items 5–8, 10 and 12): a second writer is refused, `--resume`
//! with no valid checkpoint is an error, a changed training config is refused
//! before anything is written, a resume drops the records past its
//! checkpoint, a damaged metrics line is never glued to the next record, and a
//! failed precondition leaves no run directory behind.

use std::path::Path;

use crate::common;
use common::{esper_in, text};

/// `esper args` on `mlp` with 1 024 training images, runs under `runs`.
fn esper(runs: &Path, args: &[&str], extra: &[(&str, &str)]) -> std::process::Output {
    let dir = runs.to_str().unwrap();
    let mut env = vec![
        ("ESPER_TOLARIA__HOST", "mlp"),
        ("ESPER_TOLARIA__TRAIN_SIZE", "1024"),
        ("ESPER_TAMIYO__CONTROLLER", "off"),
        ("ESPER_RUN__DIR", dir),
    ];
    env.extend_from_slice(extra);
    esper_in(args, runs, &env)
}

fn epochs(runs: &Path, id: &str) -> Vec<u64> {
    std::fs::read_to_string(runs.join(id).join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["epoch"].as_u64().unwrap())
        .collect()
}

#[test]
fn a_second_writer_on_a_run_is_refused_and_writes_nothing() {
    let runs = tempfile::tempdir().unwrap();
    let dir = runs.path().join("busy");
    std::fs::create_dir_all(&dir).unwrap();
    // Another process's lock, as `esper train` takes it.
    let held = std::fs::File::create(dir.join("lock")).unwrap();
    held.try_lock().unwrap();
    let out = esper(
        runs.path(),
        &["train"],
        &[
            ("ESPER_RUN__RUN_ID", "busy"),
            ("ESPER_TOLARIA__EPOCHS", "1"),
        ],
    );
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("in use by another esper process"), "{t}");
    assert!(!dir.join("metrics.jsonl").exists() && !dir.join("config.toml").exists());
    drop(held);
    let out = esper(
        runs.path(),
        &["train"],
        &[
            ("ESPER_RUN__RUN_ID", "busy"),
            ("ESPER_TOLARIA__EPOCHS", "1"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn resume_needs_a_valid_checkpoint_and_the_same_training_config() {
    let runs = tempfile::tempdir().unwrap();
    let id = [("ESPER_RUN__RUN_ID", "r"), ("ESPER_TOLARIA__EPOCHS", "1")];
    let out = esper(runs.path(), &["train"], &id);
    assert!(out.status.success(), "{}", text(&out));
    let config = runs.path().join("r/config.toml");
    let recorded = std::fs::read(&config).unwrap();

    // Another learning rate: refused, naming the key, before anything is written.
    let lr = [
        ("ESPER_TOLARIA__EPOCHS", "2"),
        ("ESPER_TOLARIA__OPTIMIZER__LR", "0.01"),
    ];
    let out = esper(runs.path(), &["train", "--resume", "r"], &lr);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("tolaria.optimizer.lr") && t.contains("--allow-config-change"),
        "{t}"
    );
    assert_eq!(
        std::fs::read(&config).unwrap(),
        recorded,
        "config.toml was rewritten"
    );
    // More epochs are not a change of training config.
    let more = [("ESPER_TOLARIA__EPOCHS", "2")];
    let out = esper(runs.path(), &["train", "--resume", "r"], &more);
    assert!(out.status.success(), "{}", text(&out));
    // Accepted when asked for, and said.
    let lr3 = [
        ("ESPER_TOLARIA__EPOCHS", "3"),
        ("ESPER_TOLARIA__OPTIMIZER__LR", "0.01"),
    ];
    let out = esper(
        runs.path(),
        &["train", "--resume", "r", "--allow-config-change"],
        &lr3,
    );
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("training settings changed") && t.contains("tolaria.optimizer.lr"),
        "{t}"
    );
    assert_eq!(epochs(runs.path(), "r"), [1, 2, 3]);

    // No valid checkpoint left: an error that says why each was skipped.
    let ckpts = runs.path().join("r/checkpoints");
    for entry in std::fs::read_dir(&ckpts).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            for file in std::fs::read_dir(&path).unwrap() {
                let file = file.unwrap().path();
                if file.extension().is_some_and(|e| e == "safetensors") {
                    std::fs::write(&file, b"not a checkpoint").unwrap();
                }
            }
        }
    }
    let before = std::fs::read_to_string(runs.path().join("r/metrics.jsonl")).unwrap();
    let out = esper(
        runs.path(),
        &["train", "--resume", "r", "--allow-config-change"],
        &[
            ("ESPER_TOLARIA__EPOCHS", "4"),
            ("ESPER_TOLARIA__OPTIMIZER__LR", "0.01"),
        ],
    );
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("no valid checkpoint remains") && t.contains("skipped"),
        "{t}"
    );
    let after = std::fs::read_to_string(runs.path().join("r/metrics.jsonl")).unwrap();
    assert_eq!(before, after, "the logs were touched");
}

#[test]
fn a_run_stopped_before_its_first_checkpoint_resumes_from_its_beginning() {
    let runs = tempfile::tempdir().unwrap();
    let id = [
        ("ESPER_RUN__RUN_ID", "early"),
        ("ESPER_TOLARIA__EPOCHS", "2"),
    ];
    let out = esper(runs.path(), &["train"], &id);
    assert!(out.status.success(), "{}", text(&out));
    let reference = std::fs::read_to_string(runs.path().join("early/metrics.jsonl")).unwrap();
    // What a SIGKILL before the first epoch end leaves: the run directory and
    // its config, an empty checkpoint directory, no epoch line.
    let ckpts = runs.path().join("early/checkpoints");
    std::fs::remove_dir_all(&ckpts).unwrap();
    std::fs::create_dir_all(&ckpts).unwrap();
    std::fs::write(runs.path().join("early/metrics.jsonl"), "").unwrap();
    let out = esper(runs.path(), &["train", "--resume", "early"], &id);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("stopped before its first checkpoint") && t.contains("from the beginning"),
        "{t}"
    );
    // Exactly the uninterrupted run.
    let resumed = std::fs::read_to_string(runs.path().join("early/metrics.jsonl")).unwrap();
    let strip = |text: &str| -> Vec<serde_json::Value> {
        text.lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().retain(|k, _| {
                    ["epoch", "global_step", "train_loss", "validation_accuracy"]
                        .contains(&k.as_str())
                });
                v
            })
            .collect()
    };
    assert_eq!(strip(&resumed), strip(&reference));

    // Recorded epochs but no checkpoint: something was lost, so still an error.
    std::fs::remove_dir_all(&ckpts).unwrap();
    std::fs::create_dir_all(&ckpts).unwrap();
    let out = esper(runs.path(), &["train", "--resume", "early"], &id);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("no valid checkpoint remains"), "{t}");
}

#[test]
fn a_resume_from_an_older_checkpoint_drops_the_later_records() {
    let runs = tempfile::tempdir().unwrap();
    let id = [("ESPER_RUN__RUN_ID", "old"), ("ESPER_TOLARIA__EPOCHS", "3")];
    let out = esper(runs.path(), &["train"], &id);
    assert!(out.status.success(), "{}", text(&out));
    // The newest checkpoint (epoch 3) is lost: the run resumes from epoch 2.
    let ckpts = runs.path().join("old/checkpoints");
    let mut dirs: Vec<_> = std::fs::read_dir(&ckpts)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    std::fs::remove_dir_all(dirs.last().unwrap()).unwrap();
    // Garbage without a final newline: the next record starts a line of its own.
    let metrics = runs.path().join("old/metrics.jsonl");
    let mut text_now = std::fs::read_to_string(&metrics).unwrap();
    text_now.push_str("{\"torn");
    std::fs::write(&metrics, text_now).unwrap();
    let out = esper(runs.path(), &["train", "--resume", "old"], &id);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("dropped 1 epoch line(s)"), "{t}");
    assert!(t.contains("line 3 is not an epoch record (kept)"), "{t}");
    assert_eq!(epochs(runs.path(), "old"), [1, 2, 3], "each epoch once");
    let lines = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        lines.lines().any(|l| l == "{\"torn"),
        "the damaged line is kept: {lines}"
    );
    // Every record still parses.
    let parsed = lines
        .lines()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
        .count();
    assert_eq!(parsed, 3);
}

#[test]
fn a_failed_precondition_leaves_no_run_directory() {
    let runs = tempfile::tempdir().unwrap();
    let out = esper(
        runs.path(),
        &["train"],
        &[
            ("ESPER_RUN__RUN_ID", "doomed"),
            ("ESPER_TOLARIA__TRAIN_SIZE", "10000000"),
        ],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(!runs.path().join("doomed").exists(), "{}", text(&out));
    // The message names the key and the data's directory (issue #19 item 10).
    let t = text(&out);
    assert!(
        t.contains("tolaria.train_size = 10000000 but the data holds") && t.contains("mnist"),
        "{t}"
    );
    // The shared Urza service unreachable: the error names it, and the run
    // directory (created before the controller is set up) is removed.
    let out = esper(
        runs.path(),
        &["train"],
        &[
            ("ESPER_RUN__RUN_ID", "no-urza"),
            ("ESPER_URZA__REMOTE", "http://127.0.0.1:9"),
            ("ESPER_URZA__CONNECT_TIMEOUT_MS", "500"),
            ("ESPER_TAMIYO__CONTROLLER", "heuristic"),
        ],
    );
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("127.0.0.1:9"), "{t}");
    assert!(!runs.path().join("no-urza").exists(), "{t}");
}

/// SIGINT and SIGTERM stop a run at the end of the epoch in progress: its
/// checkpoint and metrics line written, no summary (the run is unfinished),
/// exit 128 + the signal; `--resume` then finishes it.
#[test]
fn a_signal_stops_the_run_on_an_epoch_boundary_and_resume_finishes_it() {
    use std::io::BufRead;
    for (signal, code) in [("-INT", 130), ("-TERM", 143)] {
        let runs = tempfile::tempdir().unwrap();
        let dir = runs.path().to_str().unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_esper"));
        for (key, _) in std::env::vars() {
            if key.starts_with("ESPER_") {
                cmd.env_remove(key);
            }
        }
        let mut child = cmd
            .current_dir(runs.path())
            .arg("train")
            .envs([
                ("ESPER_TOLARIA__HOST", "mlp"),
                ("ESPER_TOLARIA__TRAIN_SIZE", "1024"),
                ("ESPER_TOLARIA__EPOCHS", "200"),
                ("ESPER_TAMIYO__CONTROLLER", "off"),
                ("ESPER_RUN__DIR", dir),
                ("ESPER_RUN__RUN_ID", "sig"),
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut seen = String::new();
        // Wait for the first epoch line: the handlers are installed by then.
        loop {
            let mut line = String::new();
            assert!(
                stdout.read_line(&mut line).unwrap() > 0,
                "ended early: {seen}"
            );
            seen.push_str(&line);
            if line.starts_with("epoch   1") {
                break;
            }
        }
        let killed = std::process::Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(code), "{signal}: {seen}{rest}");
        assert!(rest.contains("interrupted by SIG"), "{rest}");
        let run = runs.path().join("sig");
        assert!(!run.join("summary.json").exists());
        let done = epochs(runs.path(), "sig");
        let last = *done.last().unwrap();
        assert!(last < 200, "{signal} did not stop the run");
        assert_eq!(done, (1..=last).collect::<Vec<_>>());
        let checkpoint = run.join(format!("checkpoints/ckpt-{:012}", last * 8));
        assert!(checkpoint.is_dir(), "no checkpoint of epoch {last}");
        // The resume continues from there to the end, with its summary.
        let total = (last + 1).to_string();
        let out = esper(
            runs.path(),
            &["train", "--resume", "sig"],
            &[("ESPER_TOLARIA__EPOCHS", total.as_str())],
        );
        assert!(out.status.success(), "{}", text(&out));
        assert!(run.join("summary.json").exists());
        assert_eq!(
            epochs(runs.path(), "sig"),
            (1..=last + 1).collect::<Vec<_>>()
        );
    }
}
