//! `esper worker`: takes run jobs from the fleet's `jobs` stream one at a
//! time, runs each as `esper train` in a child process, and answers with a
//! `RunResult` on `job_results`.
//!
//! Order of work for one job: prepare its directory, run it while renewing
//! the job's lease every third of `oona.claim_idle_ms`, publish the result,
//! then acknowledge the job (or report the failure, which retries it on any
//! worker after `oona.retry_backoff_ms` or dead-letters it after
//! `oona.max_attempts` deliveries). A worker that dies between the result
//! and the acknowledgement runs nothing twice in the result set: the
//! submitter keeps the first final result of a run.
//!
//! Signals: the first SIGINT/SIGTERM lets the job in progress finish and
//! report, then the worker exits; a second ends it at once (its child run
//! exits with it: its standard input closes), and the job goes to another
//! worker when its lease lapses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use leyline::codec::BusPayload;
use leyline::v1::{MessagePriority, RunJob, RunResult};
use oona::{AnyBus, Delivery, StartFrom, Stream, Subscription};

use super::{FleetError, Result, WORKERS_GROUP, check_shared_bus, files, io, worker_name};
use crate::cohort::runner::{Workers, run_process};
use crate::runlog::RunSummary;
use crate::store::EXIT;
use crate::{Resolved, RunBus};

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where its runs go: `<dir>/<host>-<pid>/`.
    pub dir: PathBuf,
    /// The `esper` executable runs are started with.
    pub exe: PathBuf,
    /// The environment runs get (see [`crate::cohort::worker_env`]).
    pub env: BTreeMap<String, String>,
    /// Stop after this many jobs (none: until a signal).
    pub max_jobs: Option<u64>,
    /// Keep a finished run's directory (checkpoints included) after its
    /// result went out; by default it is removed.
    pub keep_runs: bool,
    /// `tolaria.cpu_threads` for every run (none: the job's own).
    pub cpu_threads: Option<usize>,
}

/// What a worker did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    /// Jobs that ended with a summary.
    pub done: u64,
    /// Jobs that failed (retried elsewhere or dead-lettered).
    pub failed: u64,
}

/// Serves jobs until a signal (or `max_jobs`).
pub fn serve(resolved: &Resolved, options: &Options) -> Result<Report> {
    check_shared_bus(resolved)?;
    let name = worker_name();
    let home = options.dir.join(&name);
    std::fs::create_dir_all(&home).map_err(io(&home))?;
    let bus = RunBus::start(resolved, "worker")?;
    let signals = crate::signals::StopSignals::install(
        &bus.handle(),
        "esper worker",
        "finishing the job in progress, then stopping (a second signal stops at once)".to_owned(),
    )?;
    let url = match &resolved.config.oona.backend {
        oona::config::BackendConfig::Redis { url } => url.clone(),
        oona::config::BackendConfig::InProcess => String::new(),
    };
    println!(
        "esper worker {name}: taking jobs from {url} (stream jobs, group {WORKERS_GROUP}); runs under {}",
        home.display()
    );
    let report = bus.block_on(async {
        let mut sub = bus
            .oona()
            .subscribe(Stream::Jobs, WORKERS_GROUP, &name, StartFrom::Beginning)
            .await?
            .with_batch(1);
        let mut report = Report::default();
        let mut pause = Duration::from_millis(50);
        while signals.received().is_none()
            && options
                .max_jobs
                .is_none_or(|max| report.done + report.failed < max)
        {
            let batch = match sub.next_batch().await {
                Ok(batch) => {
                    pause = Duration::from_millis(50);
                    batch
                }
                Err(e) if e.is_transient() => {
                    eprintln!("esper worker {name}: the bus is unavailable ({e}); retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                    continue;
                }
                Err(e) => return Err(FleetError::Bus(e)),
            };
            for delivery in batch {
                let BusPayload::RunJob(job) = &delivery.payload else {
                    sub.fail(&delivery, "not a RunJob: the jobs stream carries only jobs")
                        .await?;
                    continue;
                };
                let ok = handle(&bus, &mut sub, &delivery, job, &home, &name, options).await?;
                if ok {
                    report.done += 1;
                } else {
                    report.failed += 1;
                }
            }
        }
        Ok::<_, FleetError>(report)
    })?;
    if let Some(signal) = signals.received() {
        println!("esper worker {name}: stopped by {}", signal.name());
    }
    println!(
        "esper worker {name}: {} job(s) done, {} failed",
        report.done, report.failed
    );
    bus.finish()?;
    Ok(report)
}

/// Where one job's run goes.
struct Place {
    config: PathBuf,
    run_dir: PathBuf,
    logs: PathBuf,
    job_dir: PathBuf,
}

fn prepare(job: &RunJob, home: &Path, options: &Options) -> Result<Place> {
    if job.run_id.is_empty()
        || job.run_id.contains(['/', '\\', '\0'])
        || job.run_id.starts_with('.')
    {
        return Err(FleetError::Invalid(format!(
            "the job's run id {:?} is not a plain name",
            job.run_id
        )));
    }
    let runs = home.join("runs");
    let job_dir = home.join("jobs").join(&job.run_id);
    let mut config: toml::Table = toml::from_str(&job.config_toml)
        .map_err(|e| FleetError::Invalid(format!("the job's configuration is not TOML: {e}")))?;
    files::localise(&mut config, &job.attachments, &job_dir, &runs)?;
    if let Some(threads) = options.cpu_threads {
        let tolaria = config
            .entry("tolaria")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let Some(t) = tolaria.as_table_mut() {
            t.insert("cpu_threads".into(), toml::Value::Integer(threads as i64));
        }
    }
    let text = toml::to_string(&config)
        .map_err(|e| FleetError::Invalid(format!("the job's configuration: {e}")))?;
    let path = job_dir.join("run.toml");
    std::fs::write(&path, text).map_err(io(&path))?;
    let run_dir = runs.join(&job.run_id);
    std::fs::create_dir_all(&run_dir).map_err(io(&run_dir))?;
    if !job.membership_json.is_empty() {
        let m = run_dir.join(crate::cohort::MEMBERSHIP);
        std::fs::write(&m, &job.membership_json).map_err(io(&m))?;
    }
    let logs = runs.join("logs");
    std::fs::create_dir_all(&logs).map_err(io(&logs))?;
    Ok(Place {
        config: path,
        run_dir,
        logs,
        job_dir,
    })
}

/// The last `n` lines of a log, for the result's error.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs one job and reports it; returns whether it succeeded.
async fn handle(
    bus: &RunBus,
    sub: &mut Subscription<AnyBus>,
    delivery: &Delivery,
    job: &RunJob,
    home: &Path,
    name: &str,
    options: &Options,
) -> Result<bool> {
    let started = Instant::now();
    let max_attempts = bus.oona().max_attempts();
    println!(
        "esper worker {name}: job {} (attempt {}/{max_attempts})",
        job.run_id, delivery.attempt
    );
    let workers = Workers {
        exe: options.exe.clone(),
        jobs: 1,
        env: options.env.clone(),
    };
    let (outcome, place) = match prepare(job, home, options) {
        Err(e) => (Err(format!("preparing the run on {name}: {e}")), None),
        Ok(place) => {
            let (run_id, config, run_dir, logs) = (
                job.run_id.clone(),
                place.config.clone(),
                place.run_dir.clone(),
                place.logs.clone(),
            );
            let mut child = tokio::task::spawn_blocking(move || {
                // Finished here before (its result was lost): send it again.
                match RunSummary::read(&run_dir) {
                    Ok(Some(s)) if s.run_id == run_id => Ok(s),
                    _ => run_process(&run_id, &config, &run_dir, &workers, &logs),
                }
            });
            let renew_every = Duration::from_millis((bus.oona().config().claim_idle_ms / 3).max(1));
            let outcome = loop {
                tokio::select! {
                    joined = &mut child => {
                        break joined.unwrap_or_else(|e| Err(format!("the run's thread failed: {e}")));
                    }
                    () = tokio::time::sleep(renew_every) => {
                        if let Err(e) = sub.renew(delivery).await {
                            eprintln!("esper worker {name}: renewing the lease on {}: {e}", job.run_id);
                        }
                    }
                }
            };
            (outcome, Some(place))
        }
    };
    let ok = outcome.is_ok();
    let (files, mut error) = match &place {
        Some(p) => match files::collect(&p.run_dir) {
            Ok(f) => (f, String::new()),
            Err(e) => (Vec::new(), e.to_string()),
        },
        None => (Vec::new(), String::new()),
    };
    let ok = ok && error.is_empty();
    if let Err(why) = &outcome {
        let log = place
            .as_ref()
            .map(|p| tail(&p.logs.join(format!("{}.log", job.run_id)), 15))
            .unwrap_or_default();
        error = format!(
            "{why} (worker {name}){}",
            if log.is_empty() {
                String::new()
            } else {
                format!("\n{log}")
            }
        );
    }
    let exit_code = place
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p.run_dir.join(EXIT)).ok())
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["code"].as_i64())
        .map_or(if ok { 0 } else { -1 }, |c| c as i32);
    let result = RunResult {
        job_id: job.job_id.clone(),
        submission: job.submission.clone(),
        run_id: job.run_id.clone(),
        worker: name.to_owned(),
        attempt: delivery.attempt,
        ok,
        exit_code,
        error: error.clone(),
        last: ok || delivery.attempt >= max_attempts,
        files,
        seconds: started.elapsed().as_secs_f64(),
        finished_at_ms: leyline::unix_now_ms(),
    };
    bus.oona().publish(&result, MessagePriority::High).await?;
    if ok {
        sub.ack(delivery).await?;
        println!(
            "esper worker {name}: job {} done in {:.1} s",
            job.run_id, result.seconds
        );
        if let Some(p) = place.filter(|_| !options.keep_runs) {
            let _ = std::fs::remove_dir_all(&p.run_dir);
            let _ = std::fs::remove_dir_all(&p.job_dir);
        }
    } else {
        let first = error.lines().next().unwrap_or_default();
        let what = match sub.fail(delivery, first).await? {
            oona::FailOutcome::Retry => "it will be retried",
            oona::FailOutcome::DeadLettered => "dead-lettered",
        };
        println!(
            "esper worker {name}: job {} FAILED ({first}); {what}",
            job.run_id
        );
    }
    Ok(ok)
}
