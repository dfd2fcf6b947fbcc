//! Runs a cohort's plan: each run is `esper --config <run config> train` in
//! a worker process of its own, `jobs` at a time. A run whose directory
//! holds a `summary.json` is finished and skipped; any other run starts — and
//! one that was interrupted continues from its newest valid checkpoint
//! (a run's id is fixed, its checkpoints live in its directory and
//! `tolaria.checkpoint.resume` is on). A failed run leaves `exit.json` with
//! its exit code; its log is `<cohort home>/logs/<run id>.log`. A run's
//! `cohort.json` records its plan's digest: planning refuses a directory
//! whose run was made under another plan (see [`super::CohortError::Stale`]).
//!
//! Workers hold their standard input open to this process and exit when it
//! closes (`esper train --exit-with-stdin`), so killing the cohort process
//! never leaves orphan runs writing into the cohort.
//!
//! With `--fleet` ([`Executor::Fleet`]) the same runs go to `esper worker`s
//! through Oona instead (see [`crate::fleet`]); their results land in the
//! same run directories.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

use super::{CohortError, CohortFile, MEMBERSHIP, Membership, PlannedRun, Result};
use crate::runlog::RunSummary;
use crate::store::EXIT;

/// How to run workers.
#[derive(Debug, Clone)]
pub struct Workers {
    /// The `esper` executable.
    pub exe: PathBuf,
    /// Runs at a time.
    pub jobs: usize,
    /// The environment workers get (see [`super::worker_env`]).
    pub env: BTreeMap<String, String>,
}

/// A run that ended in this invocation.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The run.
    pub run: PlannedRun,
    /// Its summary, or the failure (exit status and the log to read).
    pub outcome: std::result::Result<RunSummary, String>,
    /// Wall time of the worker, s.
    pub seconds: f64,
}

/// What a cohort invocation did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Runs already finished before (skipped).
    pub skipped: Vec<String>,
    /// Runs that ended now.
    pub finished: Vec<Finished>,
}

/// Whether `run` has finished (its summary is there and names it).
pub fn is_finished(run: &PlannedRun) -> bool {
    matches!(RunSummary::read(&run.dir), Ok(Some(s)) if s.run_id == run.run_id)
}

fn io(path: PathBuf, source: std::io::Error) -> CohortError {
    CohortError::Io { path, source }
}

/// Where a cohort's runs execute.
#[derive(Debug)]
pub enum Executor<'a> {
    /// Worker processes on this machine.
    Local(&'a Workers),
    /// `esper worker`s anywhere, through Oona on Redis (`--fleet`).
    Fleet(&'a crate::fleet::submit::Fleet),
}

/// Runs every unfinished run of `plan`; `on_finish` is called (on this
/// thread) as each one ends, in the order they end.
pub fn run(
    file: &CohortFile,
    plan: &[PlannedRun],
    executor: Executor<'_>,
    mut on_finish: impl FnMut(&Finished, usize, usize),
) -> Result<Report> {
    let mut report = Report::default();
    let mut todo = VecDeque::new();
    for run in plan {
        if is_finished(run) {
            report.skipped.push(run.run_id.clone());
            continue;
        }
        std::fs::create_dir_all(&run.dir).map_err(|e| io(run.dir.clone(), e))?;
        let path = run.dir.join(MEMBERSHIP);
        let text = membership_json(file, run);
        std::fs::write(&path, text).map_err(|e| io(path, e))?;
        todo.push_back(run.clone());
    }
    let total = todo.len();
    let mut done = 0;
    let mut finish = |finished: Finished| {
        done += 1;
        on_finish(&finished, done, total);
        report.finished.push(finished);
    };
    match executor {
        Executor::Local(workers) => local(file, todo, workers, &mut finish)?,
        Executor::Fleet(fleet) => fleet
            .run(file, todo.into(), &mut finish)
            .map_err(|e| CohortError::Fleet(Box::new(e)))?,
    }
    Ok(report)
}

/// The membership record (`cohort.json`) of a run of `file`.
pub fn membership_json(file: &CohortFile, run: &PlannedRun) -> String {
    let membership = Membership {
        cohort: file.name.clone(),
        arm: run.arm.clone(),
        kind: run.kind.as_str().to_owned(),
        seed: run.seed,
        plan: Some(run.plan.clone()),
    };
    serde_json::to_string_pretty(&membership).unwrap_or_default()
}

fn local(
    file: &CohortFile,
    todo: VecDeque<PlannedRun>,
    workers: &Workers,
    finish: &mut dyn FnMut(Finished),
) -> Result<()> {
    let logs = file.home().join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| io(logs.clone(), e))?;
    let total = todo.len();
    let queue = Arc::new(Mutex::new(todo));
    let (tx, rx) = mpsc::channel::<Finished>();
    let mut handles = Vec::new();
    for _ in 0..workers.jobs.max(1).min(total.max(1)) {
        let queue = Arc::clone(&queue);
        let tx = tx.clone();
        let workers = workers.clone();
        let logs = logs.clone();
        handles.push(std::thread::spawn(move || {
            loop {
                let next = queue.lock().ok().and_then(|mut q| q.pop_front());
                let Some(run) = next else { break };
                let started = Instant::now();
                let outcome = run_process(&run.run_id, &run.config, &run.dir, &workers, &logs);
                let finished = Finished {
                    run,
                    outcome,
                    seconds: started.elapsed().as_secs_f64(),
                };
                if tx.send(finished).is_err() {
                    break;
                }
            }
        }));
    }
    drop(tx);
    for finished in rx {
        finish(finished);
    }
    for handle in handles {
        let _ = handle.join();
    }
    Ok(())
}

/// Runs `esper --config <config> train` for run `run_id` (directory
/// `dir`), its output appended to `<logs>/<run id>.log`; on failure leaves
/// `exit.json` (the exit code and the log) in `dir`.
pub fn run_process(
    run_id: &str,
    config: &std::path::Path,
    dir: &std::path::Path,
    workers: &Workers,
    logs: &std::path::Path,
) -> std::result::Result<RunSummary, String> {
    let log_path = logs.join(format!("{run_id}.log"));
    (|| -> std::result::Result<RunSummary, String> {
        let _ = std::fs::remove_file(dir.join(EXIT));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let err = log
            .try_clone()
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let mut child = Command::new(&workers.exe)
            .arg("--config")
            .arg(config)
            .arg("train")
            .arg("--exit-with-stdin")
            .env_clear()
            .envs(&workers.env)
            .stdin(Stdio::piped())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", workers.exe.display()))?;
        // The worker's stdin stays open while this thread waits: it closes
        // (and the worker exits) when this process ends, however it ends.
        let stdin = child.stdin.take();
        let status = child
            .wait()
            .map_err(|e| format!("waiting for the worker: {e}"))?;
        drop(stdin);
        if status.success() {
            match RunSummary::read(dir) {
                Ok(Some(summary)) => Ok(summary),
                Ok(None) => Err(format!(
                    "exited 0 without a summary; see {}",
                    log_path.display()
                )),
                Err(e) => Err(e.to_string()),
            }
        } else {
            let code = status.code();
            let record = serde_json::json!({
                "code": code,
                "at_ms": leyline::unix_now_ms(),
                "log": log_path.display().to_string(),
            });
            let _ = std::fs::write(dir.join(EXIT), record.to_string());
            Err(format!(
                "exit {}; see {}",
                code.map_or("by signal".to_owned(), |c| c.to_string()),
                log_path.display()
            ))
        }
    })()
}
