//! Field-report outcomes, decided on measurements, never at issue time.
//!
//! Every issued command opens a report with the validation accuracy of the
//! latest epoch end before it (the baseline). After `window_epochs` more epoch
//! ends the outcome is the measured delta: SUCCESS at or above
//! `success_points`, REGRESSION at or below −`regression_points`, NEUTRAL in
//! between. A GERMINATE whose seed never shows up in a state packet, or is
//! culled before the window ends, is ABORTED (the command did not stand long
//! enough to be judged). A report opened before any epoch end has no baseline
//! and waits for the first one.

use std::collections::BTreeMap;

use leyline::v1::adaptation_command::Payload;
use leyline::v1::{
    AdaptationCommand, FieldReport, FieldReportOutcome, SeedOperation, SeedStage, SystemStatePacket,
};

use prost::Message;
use serde::{Deserialize, Serialize};

use crate::config::FieldReportConfig;
use crate::error::{Error, Result};
use crate::observation::stage_of;

/// A report waiting for its window to close.
#[derive(Debug, Clone)]
struct Open {
    report: FieldReport,
    operation: SeedOperation,
    /// Validation accuracy (0–1) of the epoch end before the command.
    baseline: Option<f64>,
    /// Epoch ends seen since the command.
    epochs: u32,
    /// Whether the seed has shown up in a packet.
    seen: bool,
}

/// The tracker's state as a checkpoint holds it: every open report (its
/// protobuf encoding, hex) with its window, the latest epoch end's accuracy
/// and the reports decided but not yet taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackerState {
    /// Reports inside their window, by command id.
    pub open: BTreeMap<String, OpenState>,
    /// Validation accuracy of the latest epoch end.
    pub last_accuracy: Option<f64>,
    /// Decided reports not yet taken (hex protobuf).
    pub done: Vec<String>,
}

/// One open report in a [`TrackerState`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenState {
    /// The report so far (hex protobuf).
    pub report: String,
    /// The command's seed operation (the Leyline enum value).
    pub operation: i32,
    /// Validation accuracy before the command.
    pub baseline: Option<f64>,
    /// Epoch ends seen since the command.
    pub epochs: u32,
    /// Whether the seed has shown up in a packet.
    pub seen: bool,
}

fn to_hex(report: &FieldReport) -> String {
    report
        .encode_to_vec()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn from_hex(text: &str) -> Result<FieldReport> {
    let bad = |why: &str| Error::State(format!("an open field report is not valid: {why}"));
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return Err(bad("odd or non-ASCII hex"));
    }
    let bytes = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16))
        .collect::<std::result::Result<Vec<u8>, _>>()
        .map_err(|e| bad(&e.to_string()))?;
    FieldReport::decode(bytes.as_slice()).map_err(|e| bad(&e.to_string()))
}

/// Opens a report per command and closes it on evidence.
#[derive(Debug, Clone)]
pub struct OutcomeTracker {
    config: FieldReportConfig,
    policy: String,
    open: BTreeMap<String, Open>,
    last_accuracy: Option<f64>,
    done: Vec<FieldReport>,
}

impl OutcomeTracker {
    /// A tracker for reports of `policy`.
    pub fn new(config: FieldReportConfig, policy: impl Into<String>) -> Self {
        Self {
            config,
            policy: policy.into(),
            open: BTreeMap::new(),
            last_accuracy: None,
            done: Vec::new(),
        }
    }

    /// The open reports and what they wait for, for a checkpoint.
    pub fn state(&self) -> TrackerState {
        TrackerState {
            open: self
                .open
                .iter()
                .map(|(id, o)| {
                    let state = OpenState {
                        report: to_hex(&o.report),
                        operation: o.operation as i32,
                        baseline: o.baseline,
                        epochs: o.epochs,
                        seen: o.seen,
                    };
                    (id.clone(), state)
                })
                .collect(),
            last_accuracy: self.last_accuracy,
            done: self.done.iter().map(to_hex).collect(),
        }
    }

    /// Continues from a state [`OutcomeTracker::state`] took; nothing
    /// changes when any part of it is invalid.
    pub fn restore(&mut self, state: TrackerState) -> Result<()> {
        let mut open = BTreeMap::new();
        for (id, o) in state.open {
            let operation = SeedOperation::try_from(o.operation).map_err(|_| {
                Error::State(format!(
                    "open field report of command {id}: unknown operation {}",
                    o.operation
                ))
            })?;
            let entry = Open {
                report: from_hex(&o.report)?,
                operation,
                baseline: o.baseline,
                epochs: o.epochs,
                seen: o.seen,
            };
            open.insert(id, entry);
        }
        let done = state
            .done
            .iter()
            .map(|t| from_hex(t))
            .collect::<Result<Vec<_>>>()?;
        self.open = open;
        self.last_accuracy = state.last_accuracy;
        self.done = done;
        Ok(())
    }

    /// Reports still open.
    pub fn open_reports(&self) -> usize {
        self.open.len()
    }

    /// Opens the report of an issued command.
    pub fn track(&mut self, command: &AdaptationCommand) {
        let Some(Payload::SeedOperation(op)) = &command.payload else {
            return;
        };
        let operation = SeedOperation::try_from(op.operation).unwrap_or(SeedOperation::Unspecified);
        let report = FieldReport {
            report_id: leyline::new_id(),
            command_id: command.command_id.clone(),
            training_run_id: command.training_run_id.clone(),
            seed_id: command.target_seed_id.clone(),
            blueprint_id: op.blueprint_id.clone(),
            outcome: FieldReportOutcome::Unspecified as i32,
            observation_window_epochs: self.config.window_epochs,
            issued_at_ms: command.issued_at_ms,
            tamiyo_policy_version: self.policy.clone(),
            notes: format!(
                "{} decided by {}",
                operation.as_str_name(),
                command
                    .context
                    .as_ref()
                    .map_or("?", |c| c.decided_by.as_str())
            ),
            ..FieldReport::default()
        };
        self.open.insert(
            command.command_id.clone(),
            Open {
                report,
                operation,
                baseline: self.last_accuracy,
                epochs: 0,
                seen: false,
            },
        );
    }

    /// Reads one state packet: seeds seen or culled, and at epoch ends the
    /// windows that close.
    pub fn observe(&mut self, packet: &SystemStatePacket) {
        let accuracy = packet.validation_accuracy;
        let mut closed = Vec::new();
        for (id, open) in &mut self.open {
            let state = packet
                .seed_states
                .iter()
                .find(|s| s.seed_id == open.report.seed_id);
            if state.is_some() {
                open.seen = true;
            }
            let culled = state.is_some_and(|s| {
                matches!(
                    stage_of(s.stage),
                    SeedStage::Culled | SeedStage::Embargoed | SeedStage::Resetting
                )
            });
            if open.operation == SeedOperation::Germinate && culled {
                closed.push((
                    id.clone(),
                    FieldReportOutcome::Aborted,
                    "seed culled before the window closed".to_string(),
                ));
                continue;
            }
            let Some(now) = accuracy else { continue };
            if open.baseline.is_none() {
                // Issued before any epoch end: this one is the baseline.
                open.baseline = Some(now);
                continue;
            }
            open.epochs += 1;
            if open.epochs < self.config.window_epochs {
                continue;
            }
            if open.operation == SeedOperation::Germinate && !open.seen {
                closed.push((
                    id.clone(),
                    FieldReportOutcome::Aborted,
                    "seed never appeared".to_string(),
                ));
                continue;
            }
            let baseline = open.baseline.unwrap_or(now);
            let delta = 100.0 * (now - baseline);
            open.report
                .metrics
                .insert("accuracy_before".into(), 100.0 * baseline);
            open.report
                .metrics
                .insert("accuracy_after".into(), 100.0 * now);
            open.report
                .metrics
                .insert("accuracy_delta_points".into(), delta);
            if let Some(c) = state.and_then(|s| s.contribution) {
                open.report
                    .metrics
                    .insert("seed_contribution_points".into(), c);
            }
            let outcome = if delta >= self.config.success_points {
                FieldReportOutcome::Success
            } else if delta <= -self.config.regression_points {
                FieldReportOutcome::Regression
            } else {
                FieldReportOutcome::Neutral
            };
            closed.push((
                id.clone(),
                outcome,
                format!("{delta:+.2} points over {} epoch(s)", open.epochs),
            ));
        }
        if let Some(a) = accuracy {
            self.last_accuracy = Some(a);
        }
        for (id, outcome, why) in closed {
            if let Some(mut open) = self.open.remove(&id) {
                open.report.outcome = outcome as i32;
                open.report.notes = format!("{}; {why}", open.report.notes);
                self.done.push(open.report);
            }
        }
    }

    /// Reports whose outcome has been decided since the last call.
    pub fn take_closed(&mut self) -> Vec<FieldReport> {
        std::mem::take(&mut self.done)
    }
}
