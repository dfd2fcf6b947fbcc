//! The run store: every run's epochs, decisions, seeds, parameters and
//! timings in one SQLite database (`<run.dir>/esper.sqlite`, WAL), imported
//! from the run directories — one transaction per run, idempotent (a re-import
//! replaces the run's rows), lines that are not records skipped and reported,
//! never dropped silently. The run directories stay the source of truth; the
//! store is what `esper runs` and the cohort verdict query.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use crate::cohort::{MEMBERSHIP, Membership};
use crate::runlog::{self, RunSummary};

/// What can go wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("run store {path}: {source}")]
    Sqlite {
        /// The database.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// A run directory could not be read.
    #[error("run directory {path}: {problem}")]
    RunDir {
        /// The directory or file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// Result with [`StoreError`].
pub type Result<T> = std::result::Result<T, StoreError>;

/// How a run stands.
pub const COMPLETED: &str = "completed";

/// One run's row.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    /// Run id.
    pub run_id: String,
    /// Cohort, when the run belongs to one.
    pub cohort: Option<String>,
    /// Arm, when the run belongs to a cohort.
    pub arm: Option<String>,
    /// Run seed.
    pub seed: Option<u64>,
    /// Host.
    pub host: Option<String>,
    /// Controller.
    pub controller: Option<String>,
    /// `completed`, `stopped: …`, `failed (exit N)` or `incomplete`.
    pub status: String,
    /// Epochs recorded.
    pub epochs: u32,
    /// Last validation accuracy.
    pub validation_accuracy: Option<f64>,
    /// Scalar parameters before growth.
    pub parameters_initial: Option<u64>,
    /// Scalar parameters at the end.
    pub parameters_final: Option<u64>,
    /// Seeds germinated.
    pub seeds: u32,
    /// Seeds fossilized.
    pub fossilized: u32,
    /// Median step time, ms.
    pub step_ms_p50: Option<f64>,
    /// Training wall time, s.
    pub train_seconds: f64,
}

impl RunRow {
    /// Parameters added by growth.
    pub fn parameters_added(&self) -> Option<u64> {
        Some(
            self.parameters_final?
                .saturating_sub(self.parameters_initial?),
        )
    }
}

/// One epoch of a run, as the store has it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochRow {
    /// Epoch, from 1.
    pub epoch: u32,
    /// Validation accuracy.
    pub validation_accuracy: f64,
    /// Validation loss.
    pub validation_loss: f64,
    /// Median step time, ms.
    pub step_ms_p50: f64,
    /// Epoch wall time, s.
    pub seconds: f64,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportReport {
    /// Runs imported (or re-imported).
    pub runs: usize,
    /// Lines skipped: (file, line number, reason).
    pub skipped: Vec<(PathBuf, usize, String)>,
}

/// The open store.
#[derive(Debug)]
pub struct RunStore {
    path: PathBuf,
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    cohort TEXT, arm TEXT, seed INTEGER, host TEXT, controller TEXT,
    status TEXT NOT NULL,
    epochs INTEGER NOT NULL,
    validation_accuracy REAL, validation_loss REAL,
    parameters_initial INTEGER, parameters_final INTEGER,
    step_ms_p50 REAL, train_seconds REAL NOT NULL,
    finished_ms INTEGER, config TEXT, dir TEXT NOT NULL, skipped_lines INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_cohort ON runs (cohort, arm);
CREATE TABLE IF NOT EXISTS epochs (
    run_id TEXT NOT NULL, epoch INTEGER NOT NULL, global_step INTEGER NOT NULL,
    train_loss REAL, train_accuracy REAL, validation_loss REAL, validation_accuracy REAL,
    grad_norm REAL, step_ms_p50 REAL, step_ms_p95 REAL, images_per_second REAL,
    seconds REAL, rollbacks INTEGER,
    PRIMARY KEY (run_id, epoch)
);
CREATE TABLE IF NOT EXISTS seeds (
    run_id TEXT NOT NULL, seed TEXT NOT NULL, slot TEXT NOT NULL, blueprint TEXT NOT NULL,
    parameters INTEGER NOT NULL, furthest TEXT NOT NULL, last TEXT NOT NULL,
    PRIMARY KEY (run_id, seed)
);
CREATE TABLE IF NOT EXISTS decisions (
    run_id TEXT NOT NULL, line INTEGER NOT NULL, record TEXT NOT NULL,
    PRIMARY KEY (run_id, line)
);
";

/// The exit record a cohort worker leaves when `esper train` failed.
pub const EXIT: &str = "exit.json";

impl RunStore {
    /// Opens (creating) the store at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let sql = |source| StoreError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::RunDir {
                path: parent.to_path_buf(),
                problem: e.to_string(),
            })?;
        }
        let conn = Connection::open(path).map_err(sql)?;
        // Set first, so that even the WAL switch waits for another process.
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.execute_batch(SCHEMA).map_err(sql)?;
        Ok(Self {
            path: path.to_path_buf(),
            conn,
        })
    }

    fn sql(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Imports every run directory under `root` (a directory holding a
    /// `config.toml` or `metrics.jsonl`).
    pub fn import_all(&mut self, root: &Path) -> Result<ImportReport> {
        let entries = std::fs::read_dir(root).map_err(|e| StoreError::RunDir {
            path: root.to_path_buf(),
            problem: e.to_string(),
        })?;
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(std::result::Result::ok)
            .map(|e| e.path())
            .filter(|p| p.join("config.toml").is_file() || p.join("metrics.jsonl").is_file())
            .collect();
        dirs.sort();
        let mut report = ImportReport::default();
        for dir in dirs {
            let one = self.import(&dir)?;
            report.runs += one.runs;
            report.skipped.extend(one.skipped);
        }
        Ok(report)
    }

    /// Imports one run directory in one transaction, replacing what the
    /// store held of it.
    pub fn import(&mut self, dir: &Path) -> Result<ImportReport> {
        let bad = |path: &Path, problem: String| StoreError::RunDir {
            path: path.to_path_buf(),
            problem,
        };
        let run_id = dir
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| bad(dir, "not a run directory name".into()))?
            .to_owned();
        let summary = RunSummary::read(dir).map_err(|e| bad(dir, e.to_string()))?;
        let (epochs, skipped_metrics) =
            runlog::read_metrics(dir).map_err(|e| bad(dir, e.to_string()))?;
        let membership: Option<Membership> = read_json(&dir.join(MEMBERSHIP))?;
        let exit: Option<serde_json::Value> = read_json(&dir.join(EXIT))?;
        let config_path = dir.join("config.toml");
        let config = match std::fs::read_to_string(&config_path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(bad(&config_path, e.to_string())),
        };
        let (decisions, skipped_decisions) = read_lines(&dir.join("decisions.jsonl"))?;
        let mut report = ImportReport {
            runs: 1,
            skipped: Vec::new(),
        };
        for (line, why) in skipped_metrics {
            report.skipped.push((dir.join("metrics.jsonl"), line, why));
        }
        for (line, why) in skipped_decisions {
            report
                .skipped
                .push((dir.join("decisions.jsonl"), line, why));
        }
        let status = match (&summary, &exit) {
            (Some(s), _) => s.status.clone(),
            (None, Some(e)) => format!(
                "failed (exit {})",
                e.get("code").map_or("?".to_owned(), ToString::to_string)
            ),
            (None, None) => "incomplete".to_owned(),
        };
        let last = epochs.last();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|source| StoreError::Sqlite {
                path: self.path.clone(),
                source,
            })?;
        let path = self.path.clone();
        let sql = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        for table in ["runs", "epochs", "seeds", "decisions"] {
            tx.execute(&format!("DELETE FROM {table} WHERE run_id = ?1"), [&run_id])
                .map_err(sql)?;
        }
        tx.execute(
            "INSERT INTO runs VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
            params![
                run_id,
                membership.as_ref().map(|m| m.cohort.clone()),
                membership.as_ref().map(|m| m.arm.clone()),
                membership
                    .as_ref()
                    .map(|m| m.seed as i64)
                    .or(summary.as_ref().map(|s| s.seed as i64)),
                summary.as_ref().map(|s| s.host.clone()),
                summary.as_ref().map(|s| s.controller.clone()),
                status,
                last.map_or(0, |e| i64::from(e.epoch)),
                last.map(|e| e.validation_accuracy),
                last.map(|e| e.validation_loss),
                summary.as_ref().map(|s| s.parameters_initial as i64),
                summary.as_ref().map(|s| s.parameters_final as i64),
                summary.as_ref().map(|s| s.step_ms_p50),
                epochs.iter().map(|e| e.seconds).sum::<f64>(),
                summary.as_ref().map(|s| s.finished_ms as i64),
                config,
                dir.display().to_string(),
                report.skipped.len() as i64,
            ],
        )
        .map_err(sql)?;
        for e in &epochs {
            tx.execute(
                "INSERT OR REPLACE INTO epochs VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                params![
                    run_id,
                    i64::from(e.epoch),
                    e.global_step as i64,
                    e.train_loss,
                    e.train_accuracy,
                    e.validation_loss,
                    e.validation_accuracy,
                    e.grad_norm,
                    e.step_ms_p50,
                    e.step_ms_p95,
                    e.images_per_second,
                    e.seconds,
                    e.rollbacks as i64,
                ],
            )
            .map_err(sql)?;
        }
        for s in summary.iter().flat_map(|s| &s.seeds) {
            tx.execute(
                "INSERT INTO seeds VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    run_id,
                    s.seed,
                    s.slot,
                    s.blueprint,
                    s.parameters as i64,
                    s.furthest,
                    s.last
                ],
            )
            .map_err(sql)?;
        }
        for (line, record) in &decisions {
            tx.execute(
                "INSERT INTO decisions VALUES (?1, ?2, ?3)",
                params![run_id, *line as i64, record],
            )
            .map_err(sql)?;
        }
        tx.commit().map_err(sql)?;
        Ok(report)
    }

    /// Every run (of `cohort` when given), by id.
    pub fn runs(&self, cohort: Option<&str>) -> Result<Vec<RunRow>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT r.run_id, r.cohort, r.arm, r.seed, r.host, r.controller, r.status, r.epochs,
                        r.validation_accuracy, r.parameters_initial, r.parameters_final,
                        (SELECT COUNT(*) FROM seeds s WHERE s.run_id = r.run_id),
                        (SELECT COUNT(*) FROM seeds s WHERE s.run_id = r.run_id
                            AND s.last = 'SEED_STAGE_FOSSILIZED'),
                        r.step_ms_p50, r.train_seconds
                 FROM runs r WHERE ?1 IS NULL OR r.cohort = ?1 ORDER BY r.run_id",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([cohort], |r| {
                Ok(RunRow {
                    run_id: r.get(0)?,
                    cohort: r.get(1)?,
                    arm: r.get(2)?,
                    seed: r.get::<_, Option<i64>>(3)?.map(|v| v as u64),
                    host: r.get(4)?,
                    controller: r.get(5)?,
                    status: r.get(6)?,
                    epochs: r.get::<_, i64>(7)? as u32,
                    validation_accuracy: r.get(8)?,
                    parameters_initial: r.get::<_, Option<i64>>(9)?.map(|v| v as u64),
                    parameters_final: r.get::<_, Option<i64>>(10)?.map(|v| v as u64),
                    seeds: r.get::<_, i64>(11)? as u32,
                    fossilized: r.get::<_, i64>(12)? as u32,
                    step_ms_p50: r.get(13)?,
                    train_seconds: r.get(14)?,
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.sql(e))
    }

    /// One run's row, if the store has it.
    pub fn run(&self, run_id: &str) -> Result<Option<RunRow>> {
        Ok(self.runs(None)?.into_iter().find(|r| r.run_id == run_id))
    }

    /// A run's epochs.
    pub fn epochs(&self, run_id: &str) -> Result<Vec<EpochRow>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT epoch, validation_accuracy, validation_loss, step_ms_p50, seconds
                 FROM epochs WHERE run_id = ?1 ORDER BY epoch",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([run_id], |r| {
                Ok(EpochRow {
                    epoch: r.get::<_, i64>(0)? as u32,
                    validation_accuracy: r.get(1)?,
                    validation_loss: r.get(2)?,
                    step_ms_p50: r.get(3)?,
                    seconds: r.get(4)?,
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.sql(e))
    }

    /// A run's seeds, with how far each got.
    pub fn seeds(&self, run_id: &str) -> Result<Vec<kasmina::SeedOutcome>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT seed, slot, blueprint, parameters, furthest, last FROM seeds
                 WHERE run_id = ?1 ORDER BY seed",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([run_id], |r| {
                Ok(kasmina::SeedOutcome {
                    seed: r.get(0)?,
                    slot: r.get(1)?,
                    blueprint: r.get(2)?,
                    parameters: r.get::<_, i64>(3)? as u64,
                    furthest: r.get(4)?,
                    last: r.get(5)?,
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.sql(e))
    }

    /// Decisions recorded for a run.
    pub fn decision_count(&self, run_id: &str) -> Result<u64> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM decisions WHERE run_id = ?1",
                [run_id],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|n| n.unwrap_or(0) as u64)
            .map_err(|e| self.sql(e))
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| StoreError::RunDir {
                path: path.to_path_buf(),
                problem: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::RunDir {
            path: path.to_path_buf(),
            problem: e.to_string(),
        }),
    }
}

/// The JSON lines of `path` (line number, text), and the lines that are not
/// JSON (line number, reason).
type Lines = (Vec<(usize, String)>, Vec<(usize, String)>);

fn read_lines(path: &Path) -> Result<Lines> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
        Err(e) => {
            return Err(StoreError::RunDir {
                path: path.to_path_buf(),
                problem: e.to_string(),
            });
        }
    };
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(_) => good.push((i + 1, line.to_owned())),
            Err(e) => bad.push((i + 1, e.to_string())),
        }
    }
    Ok((good, bad))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn epoch_line(epoch: u32, acc: f64) -> String {
        serde_json::json!({
            "run_id": "r1", "timestamp_ms": 1, "epoch": epoch, "global_step": epoch * 10,
            "train_loss": 0.5, "train_accuracy": 0.8, "validation_loss": 0.4,
            "validation_accuracy": acc, "grad_norm": 1.0, "step_ms_p50": 2.0,
            "step_ms_p95": 3.0, "images_per_second": 100.0, "seconds": 1.5,
            "rollbacks": 0, "fences": 1, "fence_deadline_misses": 0, "fence_ms": 0.1,
            "checkpoint": null
        })
        .to_string()
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
            }],
            step_ms_p50: 2.0,
            train_seconds: 3.0,
            finished_ms: 5,
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
        assert_eq!(store.seeds("r1").unwrap().len(), 1);
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
}
