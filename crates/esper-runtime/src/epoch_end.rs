//! What `esper train` does after each epoch and at the end of a run, as
//! library code (so that tests exercise what the program runs): the epoch's
//! state packet, metrics, seed telemetry and field reports published on Oona,
//! the trainer's and the controller's telemetry events and emergency signals
//! sent, and the controller's decisions gathered into the run summary.
//! Nothing here prints: each function returns the lines an operator should
//! see, and the program decides where they go.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use tolaria::fence::{DecisionKind, DecisionRecord};
use tolaria::{EpochReport, Trainer};

use crate::RunBus;
use crate::config::Resolved;
use crate::error::Result;

/// The controller's decisions over a run, for its summary.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ControlSummary {
    /// Every command, vetoed proposal and failed step, in order.
    pub decisions: Vec<DecisionRecord>,
    /// WAIT decisions by rule.
    pub waits: BTreeMap<String, u64>,
    /// Field reports by outcome (`SUCCESS`, `NEUTRAL`, …).
    pub outcomes: BTreeMap<String, u64>,
    /// Commands Kasmina refused (issued, never applied), with the reason.
    pub refused: Vec<String>,
}

impl ControlSummary {
    /// Notes the refused commands among `events` (`command_rejected`), so
    /// that the summary does not list an issued command as if it had acted.
    pub fn note_events(&mut self, events: &[leyline::v1::TelemetryEvent]) {
        self.refused.extend(
            events
                .iter()
                .filter(|e| e.name == "command_rejected")
                .map(|e| e.description.clone()),
        );
    }

    /// Takes the trainer's decisions since the last call: WAITs counted by
    /// rule, everything else kept with its evidence.
    pub fn absorb(&mut self, decisions: Vec<DecisionRecord>) {
        for d in decisions {
            match d.kind {
                DecisionKind::Wait => *self.waits.entry(d.rule).or_default() += 1,
                DecisionKind::Command | DecisionKind::Vetoed | DecisionKind::Error => {
                    self.decisions.push(d);
                }
            }
        }
    }

    /// Counts field reports by outcome.
    pub fn count_reports(&mut self, reports: &[leyline::v1::FieldReport]) {
        for report in reports {
            let outcome = leyline::v1::FieldReportOutcome::try_from(report.outcome)
                .unwrap_or(leyline::v1::FieldReportOutcome::Unspecified)
                .as_str_name()
                .trim_start_matches("FIELD_REPORT_OUTCOME_")
                .to_owned();
            *self.outcomes.entry(outcome).or_default() += 1;
        }
    }

    /// The run summary: every command and failed step with its evidence,
    /// field reports by outcome, WAITs by rule, and every seed germinated:
    /// where it ended, what it cost (parameters, forward MACs per image
    /// beside the host's) and what it measurably contributed.
    pub fn render(&self, seeds: &[kasmina::SeedOutcome], host_macs: Option<u64>) -> String {
        let mut out = String::from("esper train: controller decisions\n");
        if self.decisions.is_empty() {
            out.push_str("  (no command issued)\n");
        }
        for d in &self.decisions {
            let _ = writeln!(
                out,
                "  epoch {:>3} step {:>6} | {} | {} | {}",
                d.epoch, d.global_step, d.action, d.rule, d.evidence
            );
        }
        for refused in &self.refused {
            let _ = writeln!(out, "  REFUSED: {refused}");
        }
        let counts = |map: &BTreeMap<String, u64>, lower: bool| {
            map.iter()
                .map(|(k, n)| {
                    let k = if lower { k.to_lowercase() } else { k.clone() };
                    format!("{k} {n}")
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !self.outcomes.is_empty() {
            let _ = writeln!(out, "  field reports: {}", counts(&self.outcomes, true));
        }
        if !self.waits.is_empty() {
            let _ = writeln!(out, "  waits: {}", counts(&self.waits, false));
        }
        for s in seeds {
            let stage = leyline::lifecycle::stage_label_of_name;
            let share = match host_macs {
                Some(host) if host > 0 => {
                    format!(" ({:.1} x the host's)", s.forward_macs as f64 / host as f64)
                }
                Some(_) | None => String::new(),
            };
            let contribution = s.contribution.map_or_else(
                || "no counterfactual measured".to_owned(),
                |c| format!("contribution {c:+.2} points"),
            );
            let time = match (s.forward_ms_per_step(), s.forward_share()) {
                (Some(ms), Some(share)) => format!(
                    " | forward {ms:.2} ms/step, {:.0} % of the model's",
                    share * 100.0
                ),
                (Some(_), None) | (None, _) => " | forward not timed".to_owned(),
            };
            let _ = writeln!(
                out,
                "  seed {} at {}: {} reached {}, ended {} | {} parameters | {:.3} MMAC/image{share}{time} | {contribution}",
                s.seed,
                s.slot,
                s.blueprint,
                stage(&s.furthest),
                stage(&s.last),
                s.parameters,
                s.forward_macs as f64 / 1e6,
            );
        }
        out
    }
}

/// One seed's epoch line: where it is, its α, what it costs each image
/// (beside the host's MACs when known) and its measured forward time and
/// share at this stage.
pub fn seed_line(s: &kasmina::SeedSummary, host_macs: Option<u64>) -> String {
    let macs = match host_macs {
        Some(host) if host > 0 => format!(
            "{:.3} MMAC/image ({:.2} x the host's)",
            s.forward_macs as f64 / 1e6,
            s.forward_macs as f64 / host as f64
        ),
        Some(_) | None => format!("{:.3} MMAC/image", s.forward_macs as f64 / 1e6),
    };
    let time = s.time.map_or_else(
        || "forward not timed yet at this stage".to_owned(),
        |t| {
            format!(
                "forward {:.2} ms/step, {:.0} % of the model's",
                t.forward_ms,
                t.forward_share * 100.0
            )
        },
    );
    format!(
        "seed {} at {}: {} {} α {:.2} | {macs} | {time}",
        s.seed,
        s.slot,
        s.blueprint,
        leyline::lifecycle::stage_label(s.stage),
        s.alpha
    )
}

/// Publishes what epoch `report` produced — a publication the bus refuses
/// (Redis down) is a note for the operator, never the end of the run: the
/// state packet (NORMAL), the
/// validation metrics, the seed telemetry packets (LOW), the controller's
/// field reports (with retries; an unpublished one stays in
/// `field_reports.wal`), then every event and signal ([`flush_events`]).
/// Returns the lines an operator should see (sheds, drops, failures).
pub fn publish_epoch(
    resolved: &Resolved,
    bus: &RunBus,
    trainer: &mut Trainer,
    report: &EpochReport,
    summary: &mut ControlSummary,
    narrator: &mut crate::narrate::Narrator,
) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    let packet = tolaria::packet::state_packet(trainer, report);
    // The bus carries the epoch to observers; the run's record is
    // metrics.jsonl. A bus that is down (Redis restarting) costs observers
    // this epoch's packets, said here, and never stops training.
    match bus.publish_state(&packet) {
        Ok(oona::Published::Shed { stream, reason }) => notes.push(format!(
            "state packet shed from {stream} ({})",
            reason.as_str()
        )),
        Ok(_) => {}
        Err(e) => notes.push(format!(
            "state packet of epoch {} not published ({e}); training continues, \
             metrics.jsonl holds the epoch",
            report.epoch
        )),
    }
    bus.metric(leyline::telemetry::metric(
        "validation_accuracy",
        report.validation.accuracy,
        "ratio",
    ));
    bus.metric(leyline::telemetry::metric(
        "train_images_per_second",
        report.train_images_per_second,
        "img/s",
    ));
    let (packets, dropped) = trainer.drain_seed_packets();
    if dropped > 0 {
        notes.push(format!(
            "{dropped} seed telemetry packet(s) dropped (buffer full)"
        ));
    }
    let shed = match bus.publish_telemetry(&packets) {
        Ok(published) => published
            .iter()
            .filter(|p| matches!(p, oona::Published::Shed { .. }))
            .count(),
        Err(e) => {
            notes.push(format!(
                "{} seed telemetry packet(s) of epoch {} not published ({e})",
                packets.len(),
                report.epoch
            ));
            0
        }
    };
    if shed > 0 {
        notes.push(format!(
            "{shed} seed telemetry packet(s) shed under backpressure"
        ));
    }
    let reports = trainer.drain_field_reports();
    summary.count_reports(&reports);
    for (report, why) in bus.publish_field_reports(
        reports,
        resolved.config.leyline.limits.max_retries,
        Duration::from_millis(resolved.config.oona.retry_backoff_ms),
    ) {
        notes.push(format!(
            "field report {} not published ({why}); it is in field_reports.wal",
            report.report_id
        ));
    }
    notes.extend(flush_events(bus, trainer, summary, narrator));
    notes.extend(bus.outage_notes());
    Ok(notes)
}

/// Sends the trainer's telemetry events (the controller's included) and its
/// emergency signals over Oona, and gathers the controller's decisions into
/// `summary`. A signal that cannot be published stays in the outbox for the
/// next call. Returns a line per event not yet shown (see
/// [`crate::narrate`]) and per signal, for the operator.
pub fn flush_events(
    bus: &RunBus,
    trainer: &mut Trainer,
    summary: &mut ControlSummary,
    narrator: &mut crate::narrate::Narrator,
) -> Vec<String> {
    let decisions = trainer.drain_decisions();
    crate::exporter::record_decisions(&decisions);
    summary.absorb(decisions);
    let events = trainer.drain_events();
    summary.note_events(&events);
    // Lines only for the events the progress display has not shown.
    let mut notes = narrator.drained(&events);
    for event in events {
        bus.emit(event);
    }
    trainer.emergency().outbox().drain(|signal| {
        notes.push(format!(
            "emergency {}: {}",
            signal.level().as_str_name(),
            signal.reason
        ));
        bus.publish_signal(signal.clone())
            .map(|_| ())
            .inspect_err(|e| {
                notes.push(format!("emergency signal not yet delivered (kept): {e}"));
            })
    });
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use leyline::v1::SeedStage;

    #[test]
    fn a_seeds_lines_show_its_cost_beside_the_hosts_and_its_measured_time() {
        let summary = kasmina::SeedSummary {
            slot: "r0".into(),
            seed: "s1".into(),
            blueprint: "conv.depthwise".into(),
            stage: SeedStage::Fossilized,
            alpha: 1.0,
            forward_macs: 19_600,
            time: Some(kasmina::SeedTime {
                forward_ms: 0.64,
                forward_share: 0.415,
            }),
        };
        assert_eq!(
            seed_line(&summary, Some(13_328)),
            "seed s1 at r0: conv.depthwise FOSSILIZED α 1.00 | 0.020 MMAC/image (1.47 x the host's) | forward 0.64 ms/step, 42 % of the model's"
        );
        let untimed = kasmina::SeedSummary {
            time: None,
            ..summary
        };
        assert!(
            seed_line(&untimed, None)
                .ends_with("0.020 MMAC/image | forward not timed yet at this stage")
        );

        let outcome = kasmina::SeedOutcome {
            seed: "s1".into(),
            slot: "r0".into(),
            blueprint: "conv.depthwise".into(),
            parameters: 104,
            furthest: "SEED_STAGE_FOSSILIZED".into(),
            last: "SEED_STAGE_FOSSILIZED".into(),
            forward_macs: 19_600,
            images_by_stage: BTreeMap::new(),
            contribution: Some(8.0),
            forward_seconds: 0.2,
            model_forward_seconds: 0.5,
            timed_steps: 250,
        };
        let text = ControlSummary::default().render(&[outcome], Some(13_328));
        assert!(
            text.contains("104 parameters | 0.020 MMAC/image (1.5 x the host's) | forward 0.80 ms/step, 40 % of the model's | contribution +8.00 points"),
            "{text}"
        );
    }

    #[test]
    fn a_refused_command_is_listed_as_refused() {
        let mut summary = ControlSummary::default();
        let refused = leyline::telemetry::event(
            "command_rejected",
            leyline::v1::TelemetryLevel::Warning,
            "command c-1 refused: slot r0 is embargoed",
        )
        .build();
        let other = leyline::telemetry::event(
            "seed_culled",
            leyline::v1::TelemetryLevel::Info,
            "not a refusal",
        )
        .build();
        summary.note_events(&[refused, other]);
        let text = summary.render(&[], None);
        assert!(
            text.contains("  REFUSED: command c-1 refused: slot r0 is embargoed\n"),
            "{text}"
        );
        assert!(!text.contains("not a refusal"), "{text}");
    }
}
