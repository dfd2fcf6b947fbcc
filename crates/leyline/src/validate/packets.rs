//! Rules for packets and bus messages.

use std::collections::BTreeSet;

use super::{Report, Validator};
use crate::telemetry::priority_for_level;
use crate::v1::{
    BlendMode, BlueprintDescriptor, BlueprintTier, BusEnvelope, BusMessageType, EmergencyLevel,
    FieldReport, FieldReportOutcome, MessagePriority, SeedStage, SlotKind, SystemStatePacket,
    TelemetryLevel, TelemetryPacket, ValidationCode,
};

impl Validator {
    /// Validates a state packet and every seed and slot in it.
    pub fn state_packet(&self, p: &SystemStatePacket) -> Report {
        let mut r = Report::default();
        r.version(p.version);
        r.require_str(&p.packet_id, "packet_id");
        r.require_str(&p.training_run_id, "training_run_id");
        r.require_str(&p.source_subsystem, "source_subsystem");
        r.require_timestamp(p.timestamp_ms, "timestamp_ms");
        if let Some(acc) = p.validation_accuracy {
            r.unit_interval(acc, "validation_accuracy");
        }
        for (value, field) in [
            (p.validation_loss, "validation_loss"),
            (p.training_loss, "training_loss"),
        ] {
            if let Some(v) = value {
                r.finite(v, field);
            }
        }
        r.finite_map(&p.training_metrics, "training_metrics");

        let mut seed_ids = BTreeSet::new();
        for (i, s) in p.seed_states.iter().enumerate() {
            let f = |name: &str| format!("seed_states[{i}].{name}");
            if s.seed_id.trim().is_empty() {
                r.missing(f("seed_id"));
            } else if !seed_ids.insert(s.seed_id.as_str()) {
                r.push(
                    ValidationCode::Contradictory,
                    f("seed_id"),
                    format!("seed {} listed twice", s.seed_id),
                );
            }
            r.require_str(&s.slot_id, &f("slot_id"));
            if let Some(stage) = r.known_enum::<SeedStage>(s.stage, &f("stage"), true)
                && s.blend_allowed != stage.blend_allowed()
            {
                r.push(
                    ValidationCode::Contradictory,
                    f("blend_allowed"),
                    format!(
                        "blend_allowed = {} in {}",
                        s.blend_allowed,
                        stage.as_str_name()
                    ),
                );
            }
            r.known_enum::<BlendMode>(s.blend_mode, &f("blend_mode"), false);
            if r.finite(s.gradient_norm, f("gradient_norm")) && s.gradient_norm < 0.0 {
                r.push(
                    ValidationCode::OutOfRange,
                    f("gradient_norm"),
                    "a norm cannot be negative",
                );
            }
            r.finite(s.learning_rate, f("learning_rate"));
            r.unit_interval(s.risk_score, f("risk_score"));
            if let Some(alpha) = &s.alpha {
                r.unit_interval(alpha.alpha, f("alpha.alpha"));
                if alpha.steps > alpha.total_steps {
                    r.push(
                        ValidationCode::OutOfRange,
                        f("alpha.steps"),
                        format!(
                            "step {} past the ramp's {} steps",
                            alpha.steps, alpha.total_steps
                        ),
                    );
                }
            }
            if let Some(c) = s.contribution {
                r.finite(c, f("contribution"));
            }
            r.finite_map(&s.metrics, &f("metrics"));
        }

        let mut slot_ids = BTreeSet::new();
        for (i, s) in p.slots.iter().enumerate() {
            let f = |name: &str| format!("slots[{i}].{name}");
            if s.slot_id.trim().is_empty() {
                r.missing(f("slot_id"));
            } else if !slot_ids.insert(s.slot_id.as_str()) {
                r.push(
                    ValidationCode::Contradictory,
                    f("slot_id"),
                    format!("slot {} listed twice", s.slot_id),
                );
            }
            r.known_enum::<SlotKind>(s.kind, &f("kind"), true);
            if s.feature_shape.is_empty() || s.feature_shape.contains(&0) {
                r.push(
                    ValidationCode::InvalidValue,
                    f("feature_shape"),
                    format!("{:?} is not a shape", s.feature_shape),
                );
            }
            if let Some(stage) = r.known_enum::<SeedStage>(s.stage, &f("stage"), true) {
                let has_seed = !s.seed_id.is_empty();
                if stage == SeedStage::Dormant && has_seed {
                    r.push(
                        ValidationCode::Contradictory,
                        f("seed_id"),
                        "a DORMANT slot holds no seed",
                    );
                }
                if stage.is_active() && !has_seed {
                    r.push(
                        ValidationCode::MissingField,
                        f("seed_id"),
                        format!("{} slot without a seed", stage.as_str_name()),
                    );
                }
            }
            for (value, name) in [
                (s.activation_norm, "activation_norm"),
                (s.gradient_norm, "gradient_norm"),
            ] {
                if let Some(v) = value {
                    r.finite(v, f(name));
                }
            }
        }
        r
    }

    /// Validates a telemetry packet. Metric values may be non-finite: a NaN loss is
    /// exactly what telemetry must be able to report.
    pub fn telemetry_packet(&self, p: &TelemetryPacket) -> Report {
        let mut r = Report::default();
        r.require_str(&p.packet_id, "packet_id");
        r.require_str(&p.source_subsystem, "source_subsystem");
        r.require_timestamp(p.timestamp_ms, "timestamp_ms");
        let level = r.known_enum::<TelemetryLevel>(p.level, "level", true);
        let priority = r.known_enum::<MessagePriority>(p.priority, "priority", true);
        if let (Some(level), Some(priority)) = (level, priority)
            && priority != priority_for_level(level)
        {
            r.push(
                ValidationCode::Contradictory,
                "priority",
                format!(
                    "{} at level {}",
                    priority.as_str_name(),
                    level.as_str_name()
                ),
            );
        }
        for (i, m) in p.metrics.iter().enumerate() {
            r.require_str(&m.name, &format!("metrics[{i}].name"));
        }
        for (i, e) in p.events.iter().enumerate() {
            r.require_str(&e.name, &format!("events[{i}].name"));
            r.known_enum::<TelemetryLevel>(e.level, &format!("events[{i}].level"), true);
        }
        r
    }

    /// Validates a bus envelope's own fields (its signature is checked by
    /// [`crate::security`], its payload by the rule for `message_type`).
    pub fn envelope(&self, e: &BusEnvelope) -> Report {
        let mut r = Report::default();
        r.known_enum::<BusMessageType>(e.message_type, "message_type", true);
        if e.payload.is_empty() {
            r.missing("payload");
        }
        r.require_str(&e.message_id, "message_id");
        r.require_str(&e.source, "source");
        r.require_timestamp(e.issued_at_ms, "issued_at_ms");
        r.known_enum::<MessagePriority>(e.priority, "priority", true);
        r
    }

    /// Validates an emergency signal.
    pub fn emergency_signal(&self, s: &crate::v1::EmergencySignal) -> Report {
        let mut r = Report::default();
        r.require_str(&s.signal_id, "signal_id");
        r.known_enum::<EmergencyLevel>(s.level, "level", true);
        r.require_str(&s.reason, "reason");
        r.require_str(&s.origin, "origin");
        r.require_timestamp(s.triggered_at_ms, "triggered_at_ms");
        r
    }

    /// Validates a field report.
    pub fn field_report(&self, f: &FieldReport) -> Report {
        let mut r = Report::default();
        r.require_str(&f.report_id, "report_id");
        r.require_str(&f.command_id, "command_id");
        r.require_str(&f.training_run_id, "training_run_id");
        r.known_enum::<FieldReportOutcome>(f.outcome, "outcome", true);
        r.require_timestamp(f.issued_at_ms, "issued_at_ms");
        if f.observation_window_epochs == 0 {
            r.push(
                ValidationCode::OutOfRange,
                "observation_window_epochs",
                "an outcome needs a window of at least 1 epoch",
            );
        }
        r.finite_map(&f.metrics, "metrics");
        r
    }

    /// Validates a blueprint descriptor from a catalog.
    pub fn blueprint_descriptor(&self, d: &BlueprintDescriptor) -> Report {
        let mut r = Report::default();
        r.require_str(&d.blueprint_id, "blueprint_id");
        r.require_str(&d.name, "name");
        r.known_enum::<BlueprintTier>(d.tier, "tier", true);
        r.unit_interval(d.risk, "risk");
        if d.slot_kinds.is_empty() {
            r.missing("slot_kinds");
        }
        for (i, kind) in d.slot_kinds.iter().enumerate() {
            r.known_enum::<SlotKind>(*kind, &format!("slot_kinds[{i}]"), true);
        }
        for (name, bound) in &d.allowed_parameters {
            let field = format!("allowed_parameters[{name}]");
            if r.finite(bound.min, format!("{field}.min"))
                && r.finite(bound.max, format!("{field}.max"))
                && bound.min > bound.max
            {
                r.push(
                    ValidationCode::Contradictory,
                    field,
                    format!("min {} > max {}", bound.min, bound.max),
                );
            }
        }
        r
    }
}
