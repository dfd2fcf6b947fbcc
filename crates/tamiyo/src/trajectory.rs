//! The learned controller's trajectories: every decision it took in a run —
//! the observation graph it saw (normalised, as the network read it), the
//! action mask, the action, its joint log-probability and the value head —
//! so that PPO can re-evaluate the same inputs under newer weights. Rewards
//! are not here: the learner joins a trajectory with the run's
//! `metrics.jsonl` and summary, which hold what the decisions led to.
//!
//! Records are JSON in the length + CRC framing of the field-report WAL
//! (`framing.rs`), one per decision, appended and fsynced by a writer
//! thread so that the policy's step (which has a deadline) never waits on the
//! disk. A record that fails its CRC or does not decode is skipped and
//! reported; a torn tail is reported and left out.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::framing::{Appender, BadRecord};
use crate::graph::ObservationGraph;
use crate::policy::action::{Action, Mask};

/// The file name of a run's trajectory in its run directory.
pub const FILE_NAME: &str = "trajectory.wal";

/// Largest record read back (a corrupt length must not make a reader
/// allocate): a graph of 64 slots, 64 seeds and 32 blueprints is ~100 KB.
pub const MAX_RECORD_BYTES: usize = 4 << 20;

/// One decision of the learned controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionRecord {
    /// The run.
    pub run_id: String,
    /// The epoch whose end it decided at.
    pub epoch: u32,
    /// The training step of the packet.
    pub global_step: u64,
    /// The packet's controller generation.
    pub generation: u64,
    /// Validation accuracy in the packet (fraction).
    pub validation_accuracy: Option<f64>,
    /// The graph as the network read it.
    pub graph: ObservationGraph,
    /// The legal actions.
    pub mask: Mask,
    /// What was chosen.
    pub action: Action,
    /// Its joint log-probability under the policy that chose it.
    pub log_prob: f32,
    /// The value head's estimate.
    pub value: f32,
    /// The policy's training step (its manifest's), to tell stale samples.
    pub policy_step: u64,
}

/// What [`read`] found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trajectory {
    /// Good records, in order.
    pub records: Vec<DecisionRecord>,
    /// Records skipped (CRC mismatch, undecodable).
    pub bad: Vec<BadRecord>,
    /// Bytes at the end that do not form a record.
    pub torn_tail: Option<BadRecord>,
}

/// Reads a trajectory file.
pub fn read(path: &Path) -> Result<Trajectory> {
    let bytes = std::fs::read(path).map_err(crate::framing::io("reading trajectory", path))?;
    Ok(parse(&bytes))
}

/// Parses a trajectory file's bytes.
pub fn parse(bytes: &[u8]) -> Trajectory {
    let frames = crate::framing::parse(bytes, MAX_RECORD_BYTES);
    let mut out = Trajectory {
        bad: frames.bad,
        torn_tail: frames.torn_tail,
        ..Trajectory::default()
    };
    for (offset, payload) in frames.records {
        match serde_json::from_slice(payload) {
            Ok(record) => out.records.push(record),
            Err(e) => out.bad.push(BadRecord {
                offset,
                reason: format!("undecodable: {e}"),
            }),
        }
    }
    out.bad.sort_by_key(|b| b.offset);
    out
}

/// Appends records from a thread of its own.
#[derive(Debug)]
pub struct TrajectoryWriter {
    path: PathBuf,
    records: Option<Sender<DecisionRecord>>,
    thread: Option<JoinHandle<()>>,
    failure: Arc<Mutex<Option<String>>>,
}

impl TrajectoryWriter {
    /// Opens (creating) `path` for appending; its torn tail, if any, is cut.
    pub fn create(path: &Path) -> Result<Self> {
        let (mut log, _) = Appender::open(path, "trajectory", MAX_RECORD_BYTES)?;
        let (records, inbox): (Sender<DecisionRecord>, Receiver<DecisionRecord>) = channel();
        let failure = Arc::new(Mutex::new(None));
        let failed = Arc::clone(&failure);
        let thread = std::thread::Builder::new()
            .name("tamiyo-trajectory".into())
            .spawn(move || {
                for record in inbox {
                    let written = serde_json::to_vec(&record)
                        .map_err(|e| {
                            format!("encoding the decision at step {}: {e}", record.global_step)
                        })
                        .and_then(|json| {
                            log.append(&crate::framing::frame(&json))
                                .map_err(|e| e.to_string())
                        });
                    if let Err(problem) = written {
                        if let Ok(mut slot) = failed.lock() {
                            *slot = Some(problem);
                        }
                        return;
                    }
                }
            })
            .map_err(|e| Error::Trajectory {
                path: path.to_path_buf(),
                problem: format!("cannot start its writer thread: {e}"),
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            records: Some(records),
            thread: Some(thread),
            failure,
        })
    }

    fn failed(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    /// Queues one record; an error when an earlier write failed (so that a
    /// trajectory with a hole is never taken for a whole one).
    pub fn record(&self, record: DecisionRecord) -> Result<()> {
        let gone = |problem: String| Error::Trajectory {
            path: self.path.clone(),
            problem,
        };
        if let Some(problem) = self.failed() {
            return Err(gone(problem));
        }
        self.records
            .as_ref()
            .ok_or_else(|| gone("closed".into()))?
            .send(record)
            .map_err(|_| gone(self.failed().unwrap_or_else(|| "its writer stopped".into())))
    }

    /// Writes what is queued and closes the file; the first write error, if
    /// any.
    pub fn finish(mut self) -> Result<()> {
        self.close()
    }

    fn close(&mut self) -> Result<()> {
        self.records.take();
        if let Some(thread) = self.thread.take() {
            thread.join().map_err(|_| Error::Trajectory {
                path: self.path.clone(),
                problem: "its writer thread panicked".into(),
            })?;
        }
        match self.failed() {
            Some(problem) => Err(Error::Trajectory {
                path: self.path.clone(),
                problem,
            }),
            None => Ok(()),
        }
    }
}

impl Drop for TrajectoryWriter {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!(target: "tamiyo", "{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::graph::{GraphBuilder, GraphSchema};

    fn record(step: u64) -> DecisionRecord {
        let packet = crate::graph::tests::packet(2);
        let graph = GraphBuilder::new(GraphSchema::default())
            .unwrap()
            .build(&packet, &crate::graph::tests::catalog())
            .unwrap();
        let mask = crate::policy::gnn::mask_for(&graph, &packet, 2);
        DecisionRecord {
            run_id: "run".into(),
            epoch: 1,
            global_step: step,
            generation: 1,
            validation_accuracy: Some(0.5),
            graph,
            mask,
            action: Action::wait(),
            log_prob: -0.25,
            value: 0.5,
            policy_step: 3,
        }
    }

    #[test]
    fn records_round_trip_and_a_damaged_one_is_skipped_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let writer = TrajectoryWriter::create(&path).unwrap();
        for step in [10, 20, 30] {
            writer.record(record(step)).unwrap();
        }
        writer.finish().unwrap();
        let read_back = read(&path).unwrap();
        assert_eq!(read_back.records, vec![record(10), record(20), record(30)]);
        // Damage the second record's payload and cut the file mid-third.
        let mut bytes = std::fs::read(&path).unwrap();
        let first = crate::framing::HEADER + serde_json::to_vec(&record(10)).unwrap().len();
        bytes[first + crate::framing::HEADER + 5] ^= 0x55;
        bytes.truncate(bytes.len() - 7);
        let t = parse(&bytes);
        assert_eq!(t.records, vec![record(10)]);
        assert_eq!(t.bad.len(), 1, "{:?}", t.bad);
        assert_eq!(t.bad[0].offset, first as u64);
        assert!(t.torn_tail.is_some());
        // Appending after a torn tail starts on a boundary.
        std::fs::write(&path, &bytes).unwrap();
        let writer = TrajectoryWriter::create(&path).unwrap();
        writer.record(record(40)).unwrap();
        writer.finish().unwrap();
        let t = read(&path).unwrap();
        assert_eq!(t.records, vec![record(10), record(40)]);
        assert!(t.torn_tail.is_none());
    }

    #[test]
    fn a_non_finite_record_never_reads_back_as_a_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let writer = TrajectoryWriter::create(&path).unwrap();
        let mut bad = record(1);
        // JSON has no NaN: serde_json writes null, which must not decode
        // (the policy refuses non-finite values before recording anyway).
        bad.value = f32::NAN;
        writer.record(bad).unwrap();
        writer.finish().unwrap();
        let t = read(&path).unwrap();
        assert!(t.records.is_empty());
        assert_eq!(t.bad.len(), 1);
        assert!(t.bad[0].reason.contains("undecodable"), "{:?}", t.bad);
    }
}
