//! The fleet: many runs (cohort arms, policy-training episodes) spread over
//! `esper worker` processes on any number of machines, through Oona on Redis
//! Streams.
//!
//! * The submitter ([`submit`], behind `esper cohort --fleet` and `esper
//!   policy train --fleet`) publishes one `RunJob` per unfinished run on the
//!   `jobs` stream — its configuration as TOML, the files it names (policy,
//!   seed script) attached — and gathers `RunResult`s from `job_results`,
//!   writing each run's files into the run directory the local runner would
//!   have used. A run counts once: the first final result for its run id
//!   wins, later ones (a job run twice after a lease lapsed) are
//!   acknowledged and ignored.
//! * A worker ([`worker`]) reads the `jobs` stream in the consumer group
//!   [`WORKERS_GROUP`], one job at a time, runs it as `esper train` in a
//!   child process, renews the job's lease while it runs, publishes the
//!   result (the run directory's top-level files, checkpoints stay behind),
//!   then acknowledges the job. A worker that dies stops renewing: after
//!   `oona.claim_idle_ms` another worker reclaims the job (its delivery
//!   count one higher) and runs it again. A failed run is retried after
//!   `oona.retry_backoff_ms` on any worker, and dead-lettered after
//!   `oona.max_attempts` deliveries; the submitter sees both the last
//!   failed result and the dead letter.
//!
//! Everything a worker needs besides the job comes from its own
//! configuration and machine: the signing secret, the data directory named
//! by the run's configuration (same path on every machine), the blueprint
//! library (point `urza.endpoint` at a shared `esper urza serve`). See
//! `docs/OPERATIONS.md`.

pub mod files;
pub mod submit;
pub mod worker;

use std::path::PathBuf;

/// The consumer group every worker reads the `jobs` stream in.
pub const WORKERS_GROUP: &str = "esper-workers";

/// Most bytes of files one result carries (the run's top-level files).
pub const MAX_RESULT_BYTES: u64 = 64 << 20;

/// Most bytes of one job attachment (a policy file, a seed script).
pub const MAX_ATTACHMENT_BYTES: u64 = 16 << 20;

/// Result with [`FleetError`].
pub type Result<T> = std::result::Result<T, FleetError>;

/// What can go wrong in the fleet.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The bus refused or failed.
    #[error("fleet bus: {0}")]
    Bus(#[from] oona::Error),
    /// The bus could not be started.
    #[error(transparent)]
    Runtime(Box<crate::Error>),
    /// The fleet needs a bus other processes can reach.
    #[error(
        "the fleet needs Oona on Redis (oona.backend.kind = \"redis\" and its url): the in-process bus reaches no other process"
    )]
    InProcessBus,
    /// A job or result is malformed (names a bad file, an unusable config).
    #[error("{0}")]
    Invalid(String),
    /// A stop signal arrived; what was in flight is left to the workers
    /// (a later submission gathers it).
    #[error("interrupted by {0}; jobs already submitted stay queued")]
    Interrupted(&'static str),
}

impl From<crate::Error> for FleetError {
    fn from(e: crate::Error) -> Self {
        FleetError::Runtime(Box::new(e))
    }
}

fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> FleetError {
    let path = path.into();
    move |source| FleetError::Io { path, source }
}

/// `<host>-<pid>`: a worker's consumer name, unique on a machine.
pub fn worker_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Checks that the configured bus reaches other processes.
pub fn check_shared_bus(resolved: &crate::Resolved) -> Result<()> {
    match resolved.config.oona.backend {
        oona::config::BackendConfig::InProcess => Err(FleetError::InProcessBus),
        oona::config::BackendConfig::Redis { .. } => Ok(()),
    }
}
