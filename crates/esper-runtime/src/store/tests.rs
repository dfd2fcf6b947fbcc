#![allow(clippy::unwrap_used)]

use super::*;

fn epoch_line(epoch: u32, acc: f64) -> String {
    runlog::epoch_line_json(epoch, acc)
}

fn run_dir(root: &Path) -> PathBuf {
    let dir = root.join("r1");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.toml"), "[run]\nseed = 3\n").unwrap();
    // A torn line in the middle (say, a crash while appending, then a
    // resume) is skipped and reported; the epochs around it are kept.
    let metrics = format!(
        "{}\n{{\"run_id\": \"r1\", \"epo\n{}\n",
        epoch_line(1, 0.8),
        epoch_line(2, 0.9)
    );
    std::fs::write(dir.join("metrics.jsonl"), metrics).unwrap();
    std::fs::write(
        dir.join("decisions.jsonl"),
        "{\"kind\":\"wait\"}\n{\"kind\":\"command\"}\n",
    )
    .unwrap();
    let summary = RunSummary {
        run_id: "r1".into(),
        host: "mlp".into(),
        controller: "heuristic".into(),
        off_switch: false,
        seed: 3,
        status: COMPLETED.into(),
        epochs: 2,
        global_step: 20,
        validation_accuracy: 0.9,
        validation_loss: 0.4,
        train_loss: 0.5,
        parameters_initial: 100,
        parameters_final: 130,
        seeds: vec![kasmina::SeedOutcome {
            seed: "s1".into(),
            slot: "h0".into(),
            blueprint: "dense.adapter".into(),
            parameters: 30,
            furthest: "SEED_STAGE_FOSSILIZED".into(),
            last: "SEED_STAGE_FOSSILIZED".into(),
            forward_macs: 30,
            images_by_stage: [("SEED_STAGE_TRAINING".to_string(), 64)].into(),
            contribution: Some(1.5),
            forward_seconds: 0.25,
            model_forward_seconds: 1.0,
            timed_steps: 10,
        }],
        step_ms_p50: 2.0,
        train_seconds: 3.0,
        finished_ms: 5,
        host_layer_macs: Some(vec![kasmina::LayerMacs {
            layer: "fc1".into(),
            macs: 100,
        }]),
        forward_macs_final: Some(130),
        training_flops_per_image: Some(6.0 * 115.0),
    };
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_string(&summary).unwrap(),
    )
    .unwrap();
    dir
}

#[test]
fn import_is_idempotent_and_reports_what_it_skips() {
    let root = tempfile::tempdir().unwrap();
    let dir = run_dir(root.path());
    let mut store = RunStore::open(&root.path().join("esper.sqlite")).unwrap();
    let first = store.import_all(root.path()).unwrap();
    assert_eq!(first.runs, 1);
    assert_eq!(first.skipped.len(), 1, "{first:?}");
    assert_eq!(first.skipped[0].1, 2, "the torn line is line 2");
    let second = store.import(&dir).unwrap();
    assert_eq!(second.skipped.len(), 1);
    let rows = store.runs(None).unwrap();
    assert_eq!(rows.len(), 1, "a re-import replaces, never duplicates");
    let r = &rows[0];
    assert_eq!(r.status, COMPLETED);
    assert_eq!((r.epochs, r.validation_accuracy), (2, Some(0.9)));
    assert_eq!(r.parameters_added(), Some(30));
    assert_eq!((r.seeds, r.fossilized), (1, 1));
    assert_eq!(store.epochs("r1").unwrap().len(), 2);
    let seeds = store.seeds("r1").unwrap();
    assert_eq!(
        seeds,
        summary_of(&dir).seeds,
        "seeds round-trip, costs included"
    );
    assert_eq!(
        (r.forward_macs_final, r.training_flops_per_image),
        (Some(130), Some(6.0 * 115.0))
    );
    assert_eq!(store.decision_count("r1").unwrap(), 2);
    // The run directory is the source of truth: the import changed nothing.
    assert!(
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .contains("\"epo\n")
    );
}

#[test]
fn a_run_without_a_summary_is_failed_or_incomplete() {
    let root = tempfile::tempdir().unwrap();
    let dir = run_dir(root.path());
    std::fs::remove_file(dir.join("summary.json")).unwrap();
    let mut store = RunStore::open(&root.path().join("esper.sqlite")).unwrap();
    store.import(&dir).unwrap();
    assert_eq!(store.runs(None).unwrap()[0].status, "incomplete");
    std::fs::write(dir.join(EXIT), "{\"code\": 101}").unwrap();
    store.import(&dir).unwrap();
    assert_eq!(store.runs(None).unwrap()[0].status, "failed (exit 101)");
}

fn summary_of(dir: &Path) -> RunSummary {
    RunSummary::read(dir).unwrap().unwrap()
}

#[test]
fn a_store_of_an_older_layout_is_rebuilt_and_says_so() {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("esper.sqlite");
    {
        // The first layout: no user_version, no cost columns.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE runs (run_id TEXT PRIMARY KEY, status TEXT NOT NULL);
             INSERT INTO runs VALUES ('old', 'completed');",
        )
        .unwrap();
    }
    let store = RunStore::open(&path).unwrap();
    assert!(store.rebuilt());
    assert!(store.runs(None).unwrap().is_empty());
    drop(store);
    let again = RunStore::open(&path).unwrap();
    assert!(!again.rebuilt(), "the current layout is kept");
    let fresh = RunStore::open(&root.path().join("new.sqlite")).unwrap();
    assert!(!fresh.rebuilt(), "a new store is not a rebuild");
}
