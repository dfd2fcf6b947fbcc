//! `esper cohort` and `esper runs`: the commands over cohorts and the run
//! store, as library code returning what to print.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::runner::{self, Executor, Workers};
use super::verdict::{self, Verdict, VerdictError};
use super::{CohortError, CohortFile};
use crate::fleet::submit::Fleet;
use crate::store::{RunStore, StoreError};

/// Anything a cohort or runs command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The cohort file or its runs.
    #[error(transparent)]
    Cohort(#[from] CohortError),
    /// The run store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The verdict.
    #[error(transparent)]
    Verdict(#[from] VerdictError),
}

/// Result with [`CommandError`].
pub type Result<T> = std::result::Result<T, CommandError>;

/// Runs a cohort, imports its runs and judges them; prints progress as it
/// goes (one bar for the cohort, a line per finished run) and returns the
/// verdict.
pub fn run_cohort(
    path: &Path,
    jobs: usize,
    exe: PathBuf,
    env: &BTreeMap<String, String>,
    fleet: Option<&Fleet>,
) -> Result<Verdict> {
    run_file(&CohortFile::load(path)?, jobs, exe, env, fleet)
}

/// [`run_cohort`] on a loaded (and possibly extended) cohort file; with
/// `fleet`, the runs go to `esper worker`s instead of local processes.
pub fn run_file(
    file: &CohortFile,
    jobs: usize,
    exe: PathBuf,
    env: &BTreeMap<String, String>,
    fleet: Option<&Fleet>,
) -> Result<Verdict> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let jobs = jobs.max(1);
    let threads = (cores / jobs).max(1);
    let plan = file.plan(threads, env)?;
    let place = if fleet.is_some() {
        "on the fleet".to_owned()
    } else {
        format!("{jobs} at a time ({threads} threads each)")
    };
    println!(
        "esper cohort {}: {} arms x {} seeds = {} runs, {place}; runs in {}",
        file.name,
        file.arms.len(),
        file.seeds.len(),
        plan.len(),
        file.dir.display()
    );
    let bar = indicatif::ProgressBar::new(plan.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30.cyan/blue}] {pos}/{len} runs | {elapsed} (eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(format!("cohort {}", file.name));
    let workers = Workers {
        exe,
        jobs,
        env: super::worker_env(env),
    };
    let finished_before = plan.iter().filter(|r| runner::is_finished(r)).count();
    bar.set_position(finished_before as u64);
    if finished_before > 0 {
        bar.suspend(|| println!("  {finished_before} run(s) already finished: skipped"));
    }
    let executor = match fleet {
        Some(fleet) => Executor::Fleet(fleet),
        None => Executor::Local(&workers),
    };
    let report = runner::run(file, &plan, executor, |f, done, total| {
        bar.inc(1);
        let line = match &f.outcome {
            Ok(s) => format!(
                "  [{done}/{total}] {} done: {:.2}% | {} parameters (+{}) | {} seed(s) | {:.0} s",
                f.run.run_id,
                100.0 * s.validation_accuracy,
                s.parameters_final,
                s.parameters_added(),
                s.seeds.len(),
                f.seconds
            ),
            Err(why) => format!("  [{done}/{total}] {} FAILED: {why}", f.run.run_id),
        };
        // On stdout whether or not the bar is drawn (it is hidden when
        // stderr is not a terminal).
        bar.suspend(|| println!("{line}"));
    })?;
    bar.finish_and_clear();
    let failed = report
        .finished
        .iter()
        .filter(|f| f.outcome.is_err())
        .count();
    println!(
        "esper cohort {}: {} run(s) now, {} skipped, {failed} failed",
        file.name,
        report.finished.len(),
        report.skipped.len()
    );
    judge(file)
}

/// Imports a cohort's runs into the store and judges them.
pub fn verdict(path: &Path) -> Result<Verdict> {
    let file = CohortFile::load(path)?;
    judge(&file)
}

/// Imports `file`'s runs into its store and judges them.
pub fn judge(file: &CohortFile) -> Result<Verdict> {
    let mut store = RunStore::open(&file.store_path())?;
    eprint!("{}", rebuilt_note(&store));
    for arm in &file.arms {
        for &seed in &file.seeds {
            let dir = file.dir.join(file.run_id(arm.name(), seed));
            if dir.is_dir() {
                let report = store.import(&dir)?;
                for (path, line, why) in report.skipped {
                    eprintln!(
                        "esper cohort: skipped {} line {line}: {why}",
                        path.display()
                    );
                }
            }
        }
    }
    let rows = store.runs(Some(&file.name))?;
    Ok(verdict::judge(file, &rows)?)
}

/// `esper runs import`: every run directory under `root`.
pub fn import(root: &Path, store: &Path) -> Result<String> {
    let mut db = RunStore::open(store)?;
    let report = db.import_all(root)?;
    let mut out = format!(
        "imported {} run(s) from {} into {}\n",
        report.runs,
        root.display(),
        store.display()
    );
    for (path, line, why) in &report.skipped {
        let _ = writeln!(out, "  skipped {} line {line}: {why}", path.display());
    }
    Ok(out)
}

/// A line saying the store was rebuilt, when it was (empty otherwise).
fn rebuilt_note(db: &RunStore) -> String {
    if db.rebuilt() {
        "note: the run store had an older layout and was rebuilt empty; `esper runs import DIR` fills it again\n".to_owned()
    } else {
        String::new()
    }
}

fn opt(x: Option<f64>, scale: f64, digits: usize) -> String {
    x.map_or("-".to_owned(), |v| format!("{:.*}", digits, v * scale))
}

/// `esper runs list`: one line per run.
pub fn list(store: &Path, cohort: Option<&str>) -> Result<String> {
    let db = RunStore::open(store)?;
    let rows = db.runs(cohort)?;
    let mut out = rebuilt_note(&db);
    let _ = writeln!(
        out,
        "{:<36} {:<14} {:<16} {:<12} {:<14} {:>3} {:>7} {:>8} {:>7} {:>7} {:>5} {:>7}",
        "run",
        "cohort",
        "arm",
        "host",
        "status",
        "ep",
        "acc %",
        "params",
        "added",
        "MMAC",
        "seeds",
        "train s"
    );
    for r in &rows {
        let _ = writeln!(
            out,
            "{:<36} {:<14} {:<16} {:<12} {:<14} {:>3} {:>7} {:>8} {:>7} {:>7} {:>5} {:>7.1}",
            r.run_id,
            r.cohort.as_deref().unwrap_or("-"),
            r.arm.as_deref().unwrap_or("-"),
            r.host.as_deref().unwrap_or("-"),
            r.status,
            r.epochs,
            opt(r.validation_accuracy, 100.0, 2),
            r.parameters_final.map_or("-".to_owned(), |p| p.to_string()),
            r.parameters_added()
                .map_or("-".to_owned(), |p| p.to_string()),
            opt(r.forward_macs_final.map(|m| m as f64), 1e-6, 3),
            format!("{}/{}", r.fossilized, r.seeds),
            r.train_seconds
        );
    }
    let _ = writeln!(
        out,
        "{} run(s); MMAC = forward multiply-accumulates per image of the final model, millions; seeds = fossilized/germinated",
        rows.len()
    );
    Ok(out)
}

/// `esper runs show RUN_ID`: the run, its epochs and its seeds.
pub fn show(store: &Path, run_id: &str) -> Result<Option<String>> {
    let db = RunStore::open(store)?;
    let Some(r) = db.run(run_id)? else {
        return Ok(None);
    };
    let mut out = rebuilt_note(&db);
    let _ = writeln!(out, "run {}", r.run_id);
    let _ = writeln!(
        out,
        "  cohort {} arm {} seed {} | host {} controller {} | {}",
        r.cohort.as_deref().unwrap_or("-"),
        r.arm.as_deref().unwrap_or("-"),
        r.seed.map_or("-".to_owned(), |s| s.to_string()),
        r.host.as_deref().unwrap_or("-"),
        r.controller.as_deref().unwrap_or("-"),
        r.status
    );
    let _ = writeln!(
        out,
        "  parameters {} -> {} (+{}) | step p50 {} ms | {:.1} s training | {} decisions",
        r.parameters_initial
            .map_or("-".to_owned(), |p| p.to_string()),
        r.parameters_final.map_or("-".to_owned(), |p| p.to_string()),
        r.parameters_added()
            .map_or("-".to_owned(), |p| p.to_string()),
        opt(r.step_ms_p50, 1.0, 2),
        r.train_seconds,
        db.decision_count(run_id)?
    );
    let _ = writeln!(
        out,
        "  forward {} MMAC/image at the end | training {} MFLOP/image (6 x the mean forward MACs)",
        opt(r.forward_macs_final.map(|m| m as f64), 1e-6, 3),
        opt(r.training_flops_per_image, 1e-6, 3),
    );
    if let Some(layers) = db.host_layer_macs(run_id)? {
        let text: Vec<String> = layers
            .iter()
            .map(|l| format!("{} {:.3}", l.layer, l.macs as f64 / 1e6))
            .collect();
        let _ = writeln!(out, "  host MMAC by layer: {}", text.join(", "));
    }
    let _ = writeln!(
        out,
        "  {:>5} {:>8} {:>8} {:>8} {:>8} {:>7}",
        "epoch", "acc %", "loss", "step ms", "MMAC/img", "s"
    );
    for e in db.epochs(run_id)? {
        let _ = writeln!(
            out,
            "  {:>5} {:>8.2} {:>8.4} {:>8.2} {:>8} {:>7.1}",
            e.epoch,
            100.0 * e.validation_accuracy,
            e.validation_loss,
            e.step_ms_p50,
            opt(e.forward_macs_per_image, 1e-6, 3),
            e.seconds
        );
    }
    let seeds = db.seeds(run_id)?;
    if seeds.is_empty() {
        let _ = writeln!(out, "  no seed germinated");
    }
    for s in seeds {
        let stage = |s: &str| leyline::lifecycle::stage_label_of_name(s).to_owned();
        let images: Vec<String> = s
            .images_by_stage
            .iter()
            .map(|(st, n)| format!("{} {n}", stage(st)))
            .collect();
        let _ = writeln!(
            out,
            "  seed {} at {}: {}, {} parameters, {:.3} MMAC/image where it runs, reached {}, ended {}; images by stage: {}",
            s.seed,
            s.slot,
            s.blueprint,
            s.parameters,
            s.forward_macs as f64 / 1e6,
            stage(&s.furthest),
            stage(&s.last),
            if images.is_empty() {
                "-".to_owned()
            } else {
                images.join(", ")
            }
        );
    }
    Ok(Some(out))
}
