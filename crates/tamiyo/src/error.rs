//! The crate's error type. Step failures (deadline, cancellation, invalid
//! input, no candidates, a lost worker) are typed errors, never a synthetic
//! decision; [`Error::event`] turns one into the CRITICAL telemetry event the
//! caller publishes.

use std::path::PathBuf;
use std::time::Duration;

use leyline::v1::{TelemetryEvent, TelemetryLevel};

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field report was refused.
    #[error("field report {report_id}: {reason}")]
    InvalidReport {
        /// The report.
        report_id: String,
        /// Why.
        reason: String,
    },
    /// A file-system operation failed.
    #[error("{context} {}: {source}", path.display())]
    Io {
        /// What was being done.
        context: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The state packet failed Leyline validation.
    #[error("state packet {packet_id} is invalid: {detail}")]
    InvalidPacket {
        /// The packet.
        packet_id: String,
        /// Every violation.
        detail: String,
    },
    /// A required input is missing from the packet.
    #[error("state packet {packet_id} lacks required {name}")]
    MissingMetric {
        /// The missing field.
        name: &'static str,
        /// The packet.
        packet_id: String,
    },
    /// The step missed its deadline; any late result is discarded.
    #[error("step missed its {deadline:?} deadline in {stage}")]
    DeadlineExceeded {
        /// The deadline.
        deadline: Duration,
        /// Where the step was when it ran out.
        stage: &'static str,
    },
    /// The step was cancelled at a stage boundary.
    #[error("cancelled before {stage}")]
    Cancelled {
        /// Where.
        stage: &'static str,
    },
    /// The policy wanted to act but nothing is eligible.
    #[error("no eligible candidate: {detail}")]
    NoCandidates {
        /// Every refusal.
        detail: String,
    },
    /// The blueprint catalog could not be read.
    #[error("blueprint catalog: {0}")]
    Catalog(#[source] Box<urza::Error>),
    /// The policy's worker thread is gone.
    #[error("the policy worker stopped: {0}")]
    WorkerGone(String),
    /// A remote Tamiyo service (`esper tamiyo serve`) refused, failed, or
    /// could not be reached.
    #[error("remote tamiyo: {0}")]
    Remote(String),
    /// The command Tamiyo built failed Leyline validation (a bug, reported).
    #[error("{} failed validation: {detail}", named_command(command_id))]
    InvalidCommand {
        /// The command (empty when it failed before it had an id).
        command_id: String,
        /// Every violation.
        detail: String,
    },
    /// The observation graph could not be built, or its schema or
    /// normalisers are wrong.
    #[error("observation graph: {0}")]
    Graph(String),
    /// A learned policy's action distribution is unusable: logits and mask
    /// of different shapes, a non-finite logit, no legal choice in a head an
    /// operation needs, or an action the mask forbids.
    #[error("action distribution: {0}")]
    Action(String),
    /// A checkpoint's controller state cannot be taken or restored (another
    /// policy's, another schedule's, or a worker that did not answer).
    #[error("controller state: {0}")]
    State(String),
    /// A learned policy file cannot be used: unreadable, not a policy, its
    /// signature does not verify, its weights are not the manifest's, or it
    /// was trained for another graph schema or architecture.
    #[error("policy file {}: {problem}", path.display())]
    PolicyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A trajectory could not be written or read.
    #[error("trajectory {}: {problem}", path.display())]
    Trajectory {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A schedule file is malformed.
    #[error("schedule {path}: {problem}")]
    Script {
        /// The file.
        path: String,
        /// What is wrong.
        #[source]
        problem: crate::policy::ScriptProblem,
    },
}

impl Error {
    /// A stable label for counters and telemetry.
    pub fn label(&self) -> &'static str {
        match self {
            Error::InvalidReport { .. } => "invalid_report",
            Error::Io { .. } => "io",
            Error::InvalidPacket { .. } => "invalid_packet",
            Error::MissingMetric { .. } => "missing_metric",
            Error::DeadlineExceeded { .. } => "deadline_exceeded",
            Error::Cancelled { .. } => "cancelled",
            Error::NoCandidates { .. } => "no_candidates",
            Error::Catalog(_) => "catalog",
            Error::WorkerGone(_) => "worker_gone",
            Error::Remote(_) => "remote",
            Error::InvalidCommand { .. } => "invalid_command",
            Error::Script { .. } => "script",
            Error::Graph(_) => "graph",
            Error::State(_) => "state",
            Error::Action(_) => "action",
            Error::PolicyFile { .. } => "policy_file",
            Error::Trajectory { .. } => "trajectory",
        }
    }

    /// The CRITICAL event that reports this error.
    pub fn event(&self) -> TelemetryEvent {
        leyline::telemetry::event(
            "tamiyo_step_failed",
            TelemetryLevel::Critical,
            self.to_string(),
        )
        .attr("reason", self.label())
        .build()
    }
}

/// `command <id>`, or `the proposed command` before it had one.
fn named_command(command_id: &str) -> String {
    if command_id.is_empty() {
        "the proposed command".to_owned()
    } else {
        format!("command {command_id}")
    }
}
