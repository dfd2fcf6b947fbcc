//! The submitting side of the fleet: publish a cohort's unfinished runs as
//! jobs, gather their results into the run directories.
//!
//! Results are read in the consumer group `fleet.<cohort name>` on
//! `job_results`, created just before the first job's entry: a submitter
//! that was killed and started again finds the results that arrived in the
//! meantime still pending there. A run counts once, on its first final
//! result (success, or a failure with no attempt left); a job found on the
//! dead-letter stream ends its run as failed. The group is removed when
//! every run is in.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use leyline::codec::BusPayload;
use leyline::v1::{BusEnvelope, MessagePriority, RunJob, RunResult};
use oona::{Bus, EntryId, Published, StartFrom, Stream};

use super::{FleetError, Result, check_shared_bus, files};
use crate::cohort::runner::{Finished, membership_json};
use crate::cohort::{CohortFile, PlannedRun};
use crate::runlog::RunSummary;
use crate::store::EXIT;
use crate::{Resolved, RunBus};

/// How often the dead-letter stream is looked at, and a quiet fleet reported.
const DEAD_LETTER_EVERY: Duration = Duration::from_secs(2);
const QUIET_REPORT_EVERY: Duration = Duration::from_secs(60);

/// A connection to the fleet for submitting runs.
#[derive(Debug)]
pub struct Fleet {
    bus: RunBus,
    key: leyline::security::SigningKey,
}

impl Fleet {
    /// Connects to the configured Oona (which must be Redis).
    pub fn connect(resolved: &Resolved) -> Result<Self> {
        check_shared_bus(resolved)?;
        Ok(Self {
            bus: RunBus::start(resolved, "fleet")?,
            key: resolved.signing_key.clone(),
        })
    }

    /// Submits `todo` as jobs and waits for every one's final result,
    /// calling `finish` as each comes in.
    pub fn run(
        &self,
        file: &CohortFile,
        todo: Vec<PlannedRun>,
        finish: &mut dyn FnMut(Finished),
    ) -> Result<()> {
        if todo.is_empty() {
            return Ok(());
        }
        let submission = format!(
            "{}-{}-{}",
            file.name,
            leyline::unix_now_ms(),
            std::process::id()
        );
        let mut jobs = Vec::with_capacity(todo.len());
        for run in &todo {
            let text = std::fs::read_to_string(&run.config).map_err(super::io(&run.config))?;
            let table: toml::Table = toml::from_str(&text)
                .map_err(|e| FleetError::Invalid(format!("{}: {e}", run.config.display())))?;
            jobs.push(RunJob {
                job_id: format!("{submission}/{}", run.run_id),
                submission: submission.clone(),
                run_id: run.run_id.clone(),
                config_toml: text,
                attachments: files::attachments(&table)?,
                membership_json: membership_json(file, run),
                submitted_at_ms: leyline::unix_now_ms(),
            });
        }
        let group = format!("fleet.{}", file.name);
        self.bus.block_on(self.gather(&group, jobs, todo, finish))
    }

    async fn gather(
        &self,
        group: &str,
        jobs: Vec<RunJob>,
        todo: Vec<PlannedRun>,
        finish: &mut dyn FnMut(Finished),
    ) -> Result<()> {
        let oona = self.bus.oona();
        let started = Instant::now();
        let mut first = None;
        for job in &jobs {
            match oona.publish(job, MessagePriority::High).await? {
                Published::Stored { entry, .. } => {
                    first.get_or_insert(entry);
                }
                Published::Held { .. } => {}
                Published::Shed { reason, .. } => {
                    return Err(FleetError::Invalid(format!(
                        "job {} was shed ({}): fleet work is never shed, so this is a bug",
                        job.run_id,
                        reason.as_str()
                    )));
                }
            }
        }
        // Results come after their jobs: start the group just before the
        // first job's entry (an existing group — an earlier submission of
        // this cohort — is kept, with what is pending in it).
        let start = first.map_or(StartFrom::Beginning, |id| {
            StartFrom::After(EntryId {
                ms: id.ms.saturating_sub(1),
                seq: u64::MAX,
            })
        });
        let mut sub = oona
            .subscribe(Stream::JobResults, group, "submitter", start)
            .await?;
        println!(
            "  {} job(s) submitted to the fleet; waiting for `esper worker`s",
            jobs.len()
        );
        let mut waiting: BTreeMap<String, PlannedRun> =
            todo.into_iter().map(|r| (r.run_id.clone(), r)).collect();
        let mut dead_seen: Option<EntryId> = None;
        let mut last_dead_check = Instant::now() - DEAD_LETTER_EVERY;
        let mut last_news = Instant::now();
        while !waiting.is_empty() {
            let batch = match sub.next_batch().await {
                Ok(b) => b,
                Err(e) if e.is_transient() => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            for delivery in batch {
                if let BusPayload::RunResult(result) = &delivery.payload
                    && let Some(run) = waiting.get(&result.run_id)
                {
                    if let Some(finished) = self.take(run, result)? {
                        waiting.remove(&result.run_id);
                        finish(finished);
                    }
                    last_news = Instant::now();
                }
                sub.ack(&delivery).await?;
            }
            if last_dead_check.elapsed() >= DEAD_LETTER_EVERY {
                last_dead_check = Instant::now();
                for (run_id, reason) in self.dead_letters(&mut dead_seen).await? {
                    if let Some(run) = waiting.remove(&run_id) {
                        let why = format!("the job was dead-lettered: {reason}");
                        write_exit(&run, -1, &why);
                        finish(Finished {
                            run,
                            outcome: Err(why),
                            seconds: 0.0,
                        });
                    }
                }
            }
            if last_news.elapsed() >= QUIET_REPORT_EVERY {
                last_news = Instant::now();
                let backlog = oona.depth(Stream::Jobs).await.map(|d| d.depth).unwrap_or(0);
                println!(
                    "  still waiting for {} run(s) after {:.0} s ({backlog} job(s) queued or running on the fleet); is an `esper worker` running?",
                    waiting.len(),
                    started.elapsed().as_secs_f64()
                );
            }
        }
        oona.bus().remove_group(Stream::JobResults, group).await?;
        Ok(())
    }

    /// What a result means for its run: `Some` when the run is over.
    fn take(&self, run: &PlannedRun, result: &RunResult) -> Result<Option<Finished>> {
        if !result.ok && !result.last {
            println!(
                "  {} attempt {} failed on {}; it will be retried: {}",
                run.run_id,
                result.attempt,
                result.worker,
                result.error.lines().next().unwrap_or_default()
            );
            return Ok(None);
        }
        files::write(&run.dir, &result.files)?;
        let outcome = if result.ok {
            match RunSummary::read(&run.dir) {
                Ok(Some(s)) if s.run_id == run.run_id => Ok(s),
                Ok(_) => Err(format!(
                    "worker {} reported success without a summary for {}",
                    result.worker, run.run_id
                )),
                Err(e) => Err(e.to_string()),
            }
        } else {
            Err(format!(
                "exit {} on {} after {} attempt(s): {}",
                result.exit_code, result.worker, result.attempt, result.error
            ))
        };
        if let Err(why) = &outcome {
            write_exit(run, result.exit_code, why);
        }
        Ok(Some(Finished {
            run: run.clone(),
            outcome,
            seconds: result.seconds,
        }))
    }

    /// Run ids of jobs newly found on the dead-letter stream (verified
    /// envelopes only), with the reason they were moved.
    async fn dead_letters(&self, seen: &mut Option<EntryId>) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        loop {
            let entries = self
                .bus
                .oona()
                .bus()
                .range(Stream::DeadLetter, *seen, 256)
                .await?;
            let Some((last, _)) = entries.last() else {
                break;
            };
            *seen = Some(*last);
            for (_, record) in &entries {
                let Some(origin) = &record.origin else {
                    continue;
                };
                if origin.stream != Stream::Jobs
                    || !leyline::security::signature_valid_encoded::<BusEnvelope>(
                        &self.key,
                        &record.payload,
                    )
                {
                    continue;
                }
                let Ok(envelope) = leyline::codec::decode::<BusEnvelope>(&record.payload) else {
                    continue;
                };
                if let Ok(BusPayload::RunJob(job)) = leyline::codec::decode_payload(&envelope) {
                    out.push((job.run_id, origin.reason.clone()));
                }
            }
            if entries.len() < 256 {
                break;
            }
        }
        Ok(out)
    }
}

fn write_exit(run: &PlannedRun, code: i32, why: &str) {
    let record = serde_json::json!({
        "code": code,
        "at_ms": leyline::unix_now_ms(),
        "fleet": why,
    });
    let _ = std::fs::create_dir_all(&run.dir);
    let _ = std::fs::write(run.dir.join(EXIT), record.to_string());
}
