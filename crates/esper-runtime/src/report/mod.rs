//! `esper report RUN_OR_COHORT`: a self-contained HTML page with SVG charts.
//!
//! For a cohort (its TOML file): the verdict tables, validation accuracy per
//! epoch per arm (mean line, min–max band over the run seeds), final accuracy
//! against parameters added (a dot per run), step time per epoch per arm, the
//! seed timelines of the grown arms (stage per epoch, α) and a table of every
//! run. For one run (its directory, or its id under `run.dir`): accuracy and
//! step time per epoch, its seeds' timeline, and its costs (the host's MACs
//! per layer, each seed's MACs and images by stage).
//!
//! Everything comes from the run directories (the source of truth); the
//! verdict imports the cohort's runs into the run store first, as `esper
//! cohort verdict` does. A cohort whose verdict cannot be computed (a
//! missing arm) still gets its charts, with the error in place of the
//! verdict.

mod charts;
mod html;

use std::path::{Path, PathBuf};

use crate::cohort::command::{self, CommandError};
use crate::cohort::{CohortError, CohortFile};
use crate::runlog::{self, EpochLine, RunSummary};
use crate::store::EXIT;
use charts::{Dot, Series, TimelineRow};
use html::Page;

/// What can stop a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Neither a cohort file nor a run.
    #[error(
        "{target}: not a cohort file, a run directory, or a run id under {run_root} (a run directory holds metrics.jsonl)"
    )]
    NotFound {
        /// What was asked for.
        target: PathBuf,
        /// Where run ids were looked up.
        run_root: PathBuf,
    },
    /// The cohort file.
    #[error(transparent)]
    Cohort(#[from] CohortError),
    /// A run directory could not be read.
    #[error("run {run}: {problem}")]
    Run {
        /// The run directory.
        run: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A chart could not be drawn.
    #[error("drawing a chart: {0}")]
    Chart(String),
    /// The page could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// One run, as the report draws it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunData {
    /// Run id.
    pub run_id: String,
    /// Arm (`run` for a lone run).
    pub arm: String,
    /// `completed`, `stopped: …`, `failed`, `incomplete` or `missing`.
    pub status: String,
    /// Its epochs.
    pub epochs: Vec<EpochLine>,
    /// Its summary, once finished.
    pub summary: Option<RunSummary>,
}

fn read_run(dir: &Path, run_id: &str, arm: &str) -> Result<RunData, ReportError> {
    let bad = |problem: String| ReportError::Run {
        run: dir.to_path_buf(),
        problem,
    };
    if !dir.is_dir() {
        return Ok(RunData {
            run_id: run_id.to_owned(),
            arm: arm.to_owned(),
            status: "missing".to_owned(),
            epochs: Vec::new(),
            summary: None,
        });
    }
    let summary = RunSummary::read(dir).map_err(|e| bad(e.to_string()))?;
    let (epochs, skipped) = runlog::read_metrics(dir).map_err(|e| bad(e.to_string()))?;
    for (line, why) in skipped {
        eprintln!(
            "esper report: skipped {} line {line}: {why}",
            dir.join("metrics.jsonl").display()
        );
    }
    let status = match &summary {
        Some(s) => s.status.clone(),
        None if dir.join(EXIT).is_file() => "failed".to_owned(),
        None => "incomplete".to_owned(),
    };
    Ok(RunData {
        run_id: run_id.to_owned(),
        arm: arm.to_owned(),
        status,
        epochs,
        summary,
    })
}

/// Mean, min and max per epoch of `value` over `runs`.
fn per_epoch(runs: &[&RunData], value: fn(&EpochLine) -> f64) -> Vec<(u32, f64, f64, f64)> {
    let mut by_epoch: std::collections::BTreeMap<u32, Vec<f64>> = Default::default();
    for r in runs {
        for e in &r.epochs {
            let v = value(e);
            if v.is_finite() {
                by_epoch.entry(e.epoch).or_default().push(v);
            }
        }
    }
    by_epoch
        .into_iter()
        .map(|(epoch, vs)| {
            let mean = vs.iter().sum::<f64>() / vs.len() as f64;
            let lo = vs.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = vs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (epoch, mean, lo, hi)
        })
        .collect()
}

/// Timeline rows of `runs`: one per seed that ever sat in a slot at an
/// epoch's end.
fn timeline_rows(runs: &[&RunData], with_run: bool) -> Vec<TimelineRow> {
    let mut rows: Vec<TimelineRow> = Vec::new();
    for r in runs {
        let mut mine: Vec<TimelineRow> = Vec::new();
        for e in &r.epochs {
            for s in &e.seeds {
                let label = if with_run {
                    // The run by its arm and seed: shorter than its id.
                    let seed = r.run_id.rsplit('-').next().unwrap_or(&r.run_id);
                    format!(
                        "{} {seed}: {} at {} ({})",
                        r.arm, s.seed, s.slot, s.blueprint
                    )
                } else {
                    format!("{} at {} ({})", s.seed, s.slot, s.blueprint)
                };
                let row = match mine.iter_mut().position(|x| x.label == label) {
                    Some(i) => &mut mine[i],
                    None => {
                        mine.push(TimelineRow {
                            label,
                            cells: Vec::new(),
                        });
                        let last = mine.len() - 1;
                        &mut mine[last]
                    }
                };
                row.cells.push((e.epoch, s.stage.clone(), s.alpha));
            }
        }
        rows.extend(mine);
    }
    rows
}

fn accuracy(e: &EpochLine) -> f64 {
    e.validation_accuracy
}

fn step_ms(e: &EpochLine) -> f64 {
    e.step_ms_p50
}

fn cohort_page(file: &CohortFile) -> Result<String, ReportError> {
    let mut runs = Vec::new();
    for arm in &file.arms {
        for &seed in &file.seeds {
            let run_id = file.run_id(arm.name(), seed);
            runs.push(read_run(&file.dir.join(&run_id), &run_id, arm.name())?);
        }
    }
    let arms: Vec<String> = file.arms.iter().map(|a| a.name().to_owned()).collect();
    let of = |arm: &str| -> Vec<&RunData> { runs.iter().filter(|r| r.arm == arm).collect() };
    let mut page = Page::new(
        &format!("Cohort {}", file.name),
        &format!(
            "{} arms x {} run seeds = {} runs, from {}; written by esper {}",
            arms.len(),
            file.seeds.len(),
            runs.len(),
            file.dir.display(),
            env!("CARGO_PKG_VERSION")
        ),
    );
    page.heading("Verdict");
    match command::judge(file) {
        Ok(v) => html::verdict(&mut page, &v),
        Err(e @ (CommandError::Verdict(_) | CommandError::Store(_))) => {
            page.error(&format!("no verdict: {e}"));
        }
        Err(CommandError::Cohort(e)) => return Err(e.into()),
    }
    page.heading("Validation accuracy per epoch");
    let series: Vec<Series> = arms
        .iter()
        .map(|a| Series {
            name: a.clone(),
            points: per_epoch(&of(a), accuracy),
        })
        .collect();
    page.figure(
        &charts::lines("validation accuracy", "accuracy (%)", &series, 100.0)?,
        "Mean over the arm's run seeds; the band spans their lowest and highest value.",
    );
    page.heading("Accuracy against parameters added");
    let dots: Vec<Dot> = runs
        .iter()
        .filter_map(|r| {
            let s = r.summary.as_ref()?;
            Some(Dot {
                series: arms.iter().position(|a| *a == r.arm)?,
                x: s.parameters_added() as f64,
                y: 100.0 * s.validation_accuracy,
            })
        })
        .collect();
    page.figure(
        &charts::scatter(
            "final accuracy vs parameters added",
            "parameters added by growth",
            "final validation accuracy (%)",
            &arms,
            &dots,
        )?,
        "One dot per finished run.",
    );
    page.heading("Step time");
    let series: Vec<Series> = arms
        .iter()
        .map(|a| Series {
            name: a.clone(),
            points: per_epoch(&of(a), step_ms),
        })
        .collect();
    page.figure(
        &charts::lines("median step time", "ms per step", &series, 1.0)?,
        "Per epoch, the median step time (forward, backward, optimizer); mean over run seeds, band min-max.",
    );
    page.heading("Seed timelines");
    let grown: Vec<&RunData> = runs
        .iter()
        .filter(|r| r.epochs.iter().any(|e| !e.seeds.is_empty()))
        .collect();
    let rows = timeline_rows(&grown, true);
    if rows.is_empty() {
        page.paragraph("No run of this cohort held a seed at an epoch's end.");
    } else {
        html::stage_legend(&mut page);
        page.figure(
            &charts::timeline(&rows)?,
            "Each seed of each run: its stage at every epoch's end, and its blend α (black line, bottom 0, top 1).",
        );
    }
    page.heading("Runs");
    html::runs(&mut page, &runs);
    Ok(page.finish())
}

fn run_page(dir: &Path) -> Result<String, ReportError> {
    let run_id = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("run")
        .to_owned();
    let run = read_run(dir, &run_id, "run")?;
    let mut page = Page::new(
        &format!("Run {run_id}"),
        &match &run.summary {
            Some(s) => format!(
                "host {} | controller {}{} | seed {} | {} | written by esper {}",
                s.host,
                s.controller,
                if s.off_switch { " (off-switch)" } else { "" },
                s.seed,
                s.status,
                env!("CARGO_PKG_VERSION")
            ),
            None => format!("{} (no summary.json yet)", run.status),
        },
    );
    page.heading("Run");
    html::runs(&mut page, std::slice::from_ref(&run));
    page.heading("Accuracy per epoch");
    let one = [&run];
    let series = vec![
        Series {
            name: "validation".into(),
            points: per_epoch(&one, accuracy),
        },
        Series {
            name: "training (on the fly)".into(),
            points: per_epoch(&one, |e| e.train_accuracy),
        },
    ];
    page.figure(
        &charts::lines("accuracy", "accuracy (%)", &series, 100.0)?,
        "Validation after each epoch; training accuracy measured during the epoch.",
    );
    page.heading("Step time");
    let series = vec![
        Series {
            name: "p50".into(),
            points: per_epoch(&one, step_ms),
        },
        Series {
            name: "p95".into(),
            points: per_epoch(&one, |e| e.step_ms_p95),
        },
    ];
    page.figure(
        &charts::lines("step time", "ms per step", &series, 1.0)?,
        "Median and 95th percentile step time per epoch.",
    );
    page.heading("Seed timeline");
    let rows = timeline_rows(&one, false);
    if rows.is_empty() {
        page.paragraph("No seed sat in a slot at an epoch's end.");
    } else {
        html::stage_legend(&mut page);
        page.figure(
            &charts::timeline(&rows)?,
            "Stage at every epoch's end, and blend α (black line, bottom 0, top 1).",
        );
    }
    page.heading("Costs");
    html::costs(&mut page, &run);
    Ok(page.finish())
}

/// Writes the report for `target` (a cohort file, a run directory, or a run
/// id under `run_root`) to `out`, by default `report.html` in the run
/// directory or in `<cohort dir>/cohorts/<name>/`. Returns the file.
pub fn write(target: &Path, run_root: &Path, out: Option<&Path>) -> Result<PathBuf, ReportError> {
    let is_run =
        |dir: &Path| dir.join("metrics.jsonl").is_file() || dir.join("summary.json").is_file();
    let (html, default_out) = if target.is_file() {
        let file = CohortFile::load(target)?;
        let out = file
            .dir
            .join("cohorts")
            .join(&file.name)
            .join("report.html");
        (cohort_page(&file)?, out)
    } else if target.is_dir() && is_run(target) {
        (run_page(target)?, target.join("report.html"))
    } else if is_run(&run_root.join(target)) {
        let dir = run_root.join(target);
        (run_page(&dir)?, dir.join("report.html"))
    } else {
        return Err(ReportError::NotFound {
            target: target.to_path_buf(),
            run_root: run_root.to_path_buf(),
        });
    };
    let path = out.map_or(default_out, Path::to_path_buf);
    let write = || -> std::io::Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let tmp = path.with_extension("html.tmp");
        std::fs::write(&tmp, html.as_bytes())?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|source| ReportError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}
