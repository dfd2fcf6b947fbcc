//! Checkpoints written off the training thread.
//!
//! The trainer hands a [`Snapshot`] (tensors shared, never mutated: the
//! known-good state) to a writer thread and carries on training; the slow part —
//! serialising, hashing, fsyncing, renaming — happens beside it. The queue holds
//! one job: if the previous checkpoint is still being written when the next is
//! due, the trainer waits (a checkpoint is never dropped). Outcomes are
//! collected by the trainer at the next epoch end and when it finishes; a failed
//! write is an error there, never silence. Dropping the writer waits for the
//! write in progress, so a checkpoint reported as queued is on disk when the
//! trainer is gone.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::Instant;

use super::{CheckpointMeta, CheckpointStore, Snapshot};
use crate::error::{Error, Result};

/// A finished checkpoint write.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// Its directory.
    pub path: PathBuf,
    /// Global step it holds.
    pub global_step: u64,
    /// Time spent writing it, ms (off the training thread).
    pub write_ms: f64,
}

struct Job {
    snapshot: Snapshot,
    meta: CheckpointMeta,
}

/// A background checkpoint writer for one store.
pub struct CheckpointWriter {
    store: CheckpointStore,
    jobs: Option<SyncSender<Job>>,
    results: Receiver<Result<Written>>,
    thread: Option<JoinHandle<()>>,
    in_flight: usize,
}

impl std::fmt::Debug for CheckpointWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointWriter")
            .field("store", &self.store)
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

impl CheckpointWriter {
    /// Starts the writer thread.
    pub fn spawn(store: CheckpointStore) -> Result<Self> {
        let (jobs, queue) = sync_channel::<Job>(1);
        let (done, results) = sync_channel(64);
        let worker_store = store.clone();
        let thread = std::thread::Builder::new()
            .name("esper-checkpoint".into())
            .spawn(move || {
                for job in queue {
                    let started = Instant::now();
                    let outcome = worker_store
                        .save(&job.snapshot, &job.meta)
                        .map(|path| Written {
                            path,
                            global_step: job.snapshot.global_step,
                            write_ms: started.elapsed().as_secs_f64() * 1e3,
                        });
                    if done.send(outcome).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| Error::Io {
                path: PathBuf::from("<checkpoint writer thread>"),
                source: e,
            })?;
        Ok(Self {
            store,
            jobs: Some(jobs),
            results,
            thread: Some(thread),
            in_flight: 0,
        })
    }

    /// The store written to.
    pub fn store(&self) -> &CheckpointStore {
        &self.store
    }

    /// Queues `snapshot`; waits only while a previous write is still queued.
    /// Returns the directory it will be written to.
    pub fn submit(&mut self, snapshot: Snapshot, meta: CheckpointMeta) -> Result<PathBuf> {
        let path = self.store.path_for(snapshot.global_step);
        let sender = self.jobs.as_ref().ok_or_else(stopped)?;
        sender.send(Job { snapshot, meta }).map_err(|_| stopped())?;
        self.in_flight += 1;
        Ok(path)
    }

    /// Outcomes of writes finished since the last call, without waiting.
    pub fn finished(&mut self) -> Vec<Result<Written>> {
        let done: Vec<_> = self.results.try_iter().collect();
        self.in_flight -= done.len().min(self.in_flight);
        done
    }

    /// Waits for every queued write and returns their outcomes.
    pub fn flush(&mut self) -> Vec<Result<Written>> {
        let mut done = Vec::new();
        while self.in_flight > 0 {
            match self.results.recv() {
                Ok(outcome) => {
                    self.in_flight -= 1;
                    done.push(outcome);
                }
                Err(_) => {
                    done.push(Err(stopped()));
                    self.in_flight = 0;
                }
            }
        }
        done
    }
}

fn stopped() -> Error {
    Error::Io {
        path: PathBuf::from("<checkpoint writer thread>"),
        source: std::io::Error::other("the checkpoint writer thread stopped"),
    }
}

impl Drop for CheckpointWriter {
    fn drop(&mut self) {
        // Closing the queue ends the thread after the write in progress.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
