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
    /// Forward MACs per image of the final model (host + live seeds).
    pub forward_macs_final: Option<u64>,
    /// Training FLOPs per image, over the whole run.
    pub training_flops_per_image: Option<f64>,
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
    /// Mean forward MACs per training image.
    pub forward_macs_per_image: Option<f64>,
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
    rebuilt: bool,
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
    finished_ms INTEGER, config TEXT, dir TEXT NOT NULL, skipped_lines INTEGER NOT NULL,
    forward_macs_final INTEGER, training_flops_per_image REAL, host_layer_macs TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_cohort ON runs (cohort, arm);
CREATE TABLE IF NOT EXISTS epochs (
    run_id TEXT NOT NULL, epoch INTEGER NOT NULL, global_step INTEGER NOT NULL,
    train_loss REAL, train_accuracy REAL, validation_loss REAL, validation_accuracy REAL,
    grad_norm REAL, step_ms_p50 REAL, step_ms_p95 REAL, images_per_second REAL,
    seconds REAL, rollbacks INTEGER, train_images INTEGER, forward_macs_per_image REAL,
    PRIMARY KEY (run_id, epoch)
);
CREATE TABLE IF NOT EXISTS seeds (
    run_id TEXT NOT NULL, seed TEXT NOT NULL, slot TEXT NOT NULL, blueprint TEXT NOT NULL,
    parameters INTEGER NOT NULL, furthest TEXT NOT NULL, last TEXT NOT NULL,
    forward_macs INTEGER NOT NULL, images_by_stage TEXT NOT NULL, contribution REAL,
    forward_seconds REAL NOT NULL, model_forward_seconds REAL NOT NULL,
    timed_steps INTEGER NOT NULL,
    PRIMARY KEY (run_id, seed)
);
CREATE TABLE IF NOT EXISTS decisions (
    run_id TEXT NOT NULL, line INTEGER NOT NULL, record TEXT NOT NULL,
    PRIMARY KEY (run_id, line)
);
";

/// The layout `SCHEMA` creates (SQLite's `user_version`). The store is
/// derived from the run directories, so a store of another layout is
/// dropped and rebuilt empty, and [`RunStore::rebuilt`] says so: the
/// caller re-imports.
const SCHEMA_VERSION: i64 = 4;

const TABLES: [&str; 4] = ["runs", "epochs", "seeds", "decisions"];

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
        let mut conn = Connection::open(path).map_err(sql)?;
        // Set first, so that even the WAL switch waits for another process.
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        let rebuilt = migrate(&mut conn).map_err(sql)?;
        Ok(Self {
            path: path.to_path_buf(),
            conn,
            rebuilt,
        })
    }

    /// Whether opening found a store of an older layout and rebuilt it
    /// empty (its runs need importing again).
    pub fn rebuilt(&self) -> bool {
        self.rebuilt
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
        let host_layer_macs = match summary.as_ref().and_then(|s| s.host_layer_macs.as_ref()) {
            Some(layers) => Some(to_json(dir, layers)?),
            None => None,
        };
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
        for table in TABLES {
            tx.execute(&format!("DELETE FROM {table} WHERE run_id = ?1"), [&run_id])
                .map_err(sql)?;
        }
        tx.execute(
            "INSERT INTO runs VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)",
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
                summary
                    .as_ref()
                    .and_then(|s| s.forward_macs_final)
                    .map(|m| m as i64),
                summary.as_ref().and_then(|s| s.training_flops_per_image),
                host_layer_macs,
            ],
        )
        .map_err(sql)?;
        for e in &epochs {
            tx.execute(
                "INSERT OR REPLACE INTO epochs VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
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
                    e.train_images as i64,
                    e.forward_macs_per_image,
                ],
            )
            .map_err(sql)?;
        }
        for s in summary.iter().flat_map(|s| &s.seeds) {
            tx.execute(
                "INSERT INTO seeds VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                params![
                    run_id,
                    s.seed,
                    s.slot,
                    s.blueprint,
                    s.parameters as i64,
                    s.furthest,
                    s.last,
                    s.forward_macs as i64,
                    to_json(dir, &s.images_by_stage)?,
                    s.contribution,
                    s.forward_seconds,
                    s.model_forward_seconds,
                    s.timed_steps as i64,
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
                        r.step_ms_p50, r.train_seconds, r.forward_macs_final,
                        r.training_flops_per_image
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
                    forward_macs_final: r.get::<_, Option<i64>>(15)?.map(|v| v as u64),
                    training_flops_per_image: r.get(16)?,
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
                "SELECT epoch, validation_accuracy, validation_loss, step_ms_p50, seconds,
                        forward_macs_per_image
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
                    forward_macs_per_image: r.get(5)?,
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
                "SELECT seed, slot, blueprint, parameters, furthest, last, forward_macs,
                        images_by_stage, contribution, forward_seconds,
                        model_forward_seconds, timed_steps FROM seeds
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
                    forward_macs: r.get::<_, i64>(6)? as u64,
                    images_by_stage: serde_json::from_str(&r.get::<_, String>(7)?).map_err(
                        |e| {
                            rusqlite::Error::FromSqlConversionFailure(
                                7,
                                rusqlite::types::Type::Text,
                                Box::new(e),
                            )
                        },
                    )?,
                    contribution: r.get(8)?,
                    forward_seconds: r.get(9)?,
                    model_forward_seconds: r.get(10)?,
                    timed_steps: r.get::<_, i64>(11)? as u64,
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.sql(e))
    }

    /// The host's MACs by layer, as the run's summary recorded them.
    pub fn host_layer_macs(&self, run_id: &str) -> Result<Option<Vec<kasmina::LayerMacs>>> {
        let text: Option<Option<String>> = self
            .conn
            .query_row(
                "SELECT host_layer_macs FROM runs WHERE run_id = ?1",
                [run_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.sql(e))?;
        match text.flatten() {
            None => Ok(None),
            Some(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| StoreError::RunDir {
                    path: self.path.clone(),
                    problem: format!("run {run_id}: host_layer_macs: {e}"),
                }),
        }
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

/// Creates the tables, or rebuilds a store of another layout; true when
/// it dropped an older one. One IMMEDIATE transaction, so that two
/// processes opening one store at once do not both rebuild it.
fn migrate(conn: &mut Connection) -> rusqlite::Result<bool> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version == SCHEMA_VERSION {
        return Ok(false);
    }
    let existing: i64 = tx.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'runs'",
        [],
        |r| r.get(0),
    )?;
    for table in TABLES {
        tx.execute_batch(&format!("DROP TABLE IF EXISTS {table};"))?;
    }
    tx.execute_batch(SCHEMA)?;
    tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION};"))?;
    tx.commit()?;
    Ok(existing > 0)
}

fn to_json<T: serde::Serialize>(dir: &Path, value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| StoreError::RunDir {
        path: dir.to_path_buf(),
        problem: format!("cannot encode a summary field: {e}"),
    })
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
mod tests;
