//! Rules for `AdaptationCommand` and its payloads.

use super::{Report, Validator};
use crate::v1::adaptation_command::Payload;
use crate::v1::{
    AdaptationCommand, AlphaSchedule, AlphaScheduleKind, BlendConfig, BlendMode, BlueprintTier,
    CircuitBreakerState, CommandSeedOperation, CommandType, EmergencyLevel, RollbackTier,
    SeedOperation, SeedStage, ValidationCode,
};

/// Proto field name of a payload variant, for reports.
fn payload_name(payload: &Payload) -> &'static str {
    match payload {
        Payload::SeedOperation(_) => "seed_operation",
        Payload::OptimizerAdjustment(_) => "optimizer_adjustment",
        Payload::CircuitBreaker(_) => "circuit_breaker",
        Payload::Rollback(_) => "rollback",
        Payload::Pause(_) => "pause",
        Payload::Emergency(_) => "emergency",
    }
}

/// The payload field a command type requires.
fn expected_payload(command_type: CommandType) -> Option<&'static str> {
    match command_type {
        CommandType::Unspecified => None,
        CommandType::Seed => Some("seed_operation"),
        CommandType::Rollback => Some("rollback"),
        CommandType::Optimizer => Some("optimizer_adjustment"),
        CommandType::CircuitBreaker => Some("circuit_breaker"),
        CommandType::Pause => Some("pause"),
        CommandType::Emergency => Some("emergency"),
    }
}

impl Validator {
    /// Validates an adaptation command: envelope fields, the payload matching the
    /// command type, and every rule of that payload.
    pub fn command(&self, c: &AdaptationCommand) -> Report {
        let mut r = Report::default();
        r.version(c.version);
        r.require_str(&c.command_id, "command_id");
        r.require_str(&c.issued_by, "issued_by");
        r.require_str(&c.training_run_id, "training_run_id");
        r.require_timestamp(c.issued_at_ms, "issued_at_ms");
        r.require_timestamp(c.deadline_at_ms, "deadline_at_ms");
        if c.issued_at_ms != 0 && c.deadline_at_ms != 0 && c.deadline_at_ms <= c.issued_at_ms {
            r.push(
                ValidationCode::OutOfRange,
                "deadline_at_ms",
                format!(
                    "deadline {} is not after issued_at {}",
                    c.deadline_at_ms, c.issued_at_ms
                ),
            );
        }

        let command_type = r.known_enum::<CommandType>(c.command_type, "command_type", true);
        if let Some(command_type) = command_type {
            let expected = expected_payload(command_type);
            match (&c.payload, expected) {
                (None, Some(field)) => r.missing(field),
                (Some(p), Some(field)) if payload_name(p) != field => r.push(
                    ValidationCode::Contradictory,
                    payload_name(p),
                    format!(
                        "{} command carries {} instead of {field}",
                        command_type.as_str_name(),
                        payload_name(p)
                    ),
                ),
                _ => {}
            }
            let is_seed = command_type == CommandType::Seed;
            if is_seed {
                r.require_str(&c.target_seed_id, "target_seed_id");
            } else if !c.target_seed_id.is_empty() {
                r.push(
                    ValidationCode::Contradictory,
                    "target_seed_id",
                    format!(
                        "{} commands do not target a seed",
                        command_type.as_str_name()
                    ),
                );
            }
        }

        match &c.payload {
            None => {}
            Some(Payload::SeedOperation(op)) => self.seed_operation(op, &mut r),
            Some(Payload::OptimizerAdjustment(o)) => {
                r.require_str(&o.optimizer_id, "optimizer_adjustment.optimizer_id");
                if o.hyperparameters.is_empty() {
                    r.missing("optimizer_adjustment.hyperparameters");
                }
                r.finite_map(&o.hyperparameters, "optimizer_adjustment.hyperparameters");
            }
            Some(Payload::CircuitBreaker(b)) => {
                r.require_str(&b.breaker_id, "circuit_breaker.breaker_id");
                r.known_enum::<CircuitBreakerState>(
                    b.desired_state,
                    "circuit_breaker.desired_state",
                    true,
                );
                r.require_str(&b.rationale, "circuit_breaker.rationale");
            }
            Some(Payload::Rollback(rb)) => {
                r.known_enum::<RollbackTier>(rb.tier, "rollback.tier", true);
                r.require_str(&rb.reason, "rollback.reason");
            }
            Some(Payload::Pause(p)) => r.require_str(&p.reason, "pause.reason"),
            Some(Payload::Emergency(e)) => {
                r.known_enum::<EmergencyLevel>(e.level, "emergency.level", true);
                r.require_str(&e.reason, "emergency.reason");
            }
        }

        if let Some(ctx) = &c.context {
            r.unit_interval(ctx.feature_coverage, "context.feature_coverage");
            r.unit_interval(ctx.blueprint_risk, "context.blueprint_risk");
            r.known_enum::<BlueprintTier>(ctx.blueprint_tier, "context.blueprint_tier", false);
        }
        r
    }

    fn seed_operation(&self, op: &CommandSeedOperation, r: &mut Report) {
        const P: &str = "seed_operation";
        let Some(operation) =
            r.known_enum::<SeedOperation>(op.operation, "seed_operation.operation", true)
        else {
            return;
        };
        r.require_str(&op.blueprint_id, "seed_operation.blueprint_id");
        r.finite_map(&op.parameters, "seed_operation.parameters");

        let (needs_slot, needs_mesh, needs_blend, needs_target) = match operation {
            SeedOperation::Unspecified => (false, false, false, false),
            SeedOperation::Germinate => (true, true, false, false),
            SeedOperation::Advance => (false, true, false, true),
            SeedOperation::SetBlend => (false, true, true, false),
            SeedOperation::Fossilize => (false, true, false, false),
            SeedOperation::Cull | SeedOperation::Cancel => (false, false, false, false),
        };
        if needs_slot {
            r.require_str(&op.slot_id, "seed_operation.slot_id");
        }
        if needs_mesh && op.mesh_layers.is_empty() {
            r.missing("seed_operation.mesh_layers");
        }
        if op.mesh_layers.len() > self.max_mesh_layers {
            r.push(
                ValidationCode::TooMany,
                "seed_operation.mesh_layers",
                format!(
                    "{} mesh layers, at most {}",
                    op.mesh_layers.len(),
                    self.max_mesh_layers
                ),
            );
        }
        for (i, layer) in op.mesh_layers.iter().enumerate() {
            if layer.trim().is_empty() {
                r.missing(format!("{P}.mesh_layers[{i}]"));
            }
        }
        if needs_blend && op.blend.is_none() {
            r.missing("seed_operation.blend");
        }
        if let Some(blend) = &op.blend {
            self.blend(blend, "seed_operation.blend", r);
        }
        if let Some(schedule) = &op.alpha_schedule {
            alpha_schedule(schedule, "seed_operation.alpha_schedule", r);
        }

        let target =
            r.known_enum::<SeedStage>(op.target_stage, "seed_operation.target_stage", needs_target);
        match (needs_target, target) {
            (true, Some(stage)) => {
                let advanceable = matches!(
                    stage,
                    SeedStage::Training
                        | SeedStage::Blending
                        | SeedStage::Shadowing
                        | SeedStage::Probationary
                );
                if !advanceable {
                    r.push(
                        ValidationCode::InvalidValue,
                        "seed_operation.target_stage",
                        format!("ADVANCE cannot target {}", stage.as_str_name()),
                    );
                }
            }
            // Not set, or already reported as missing/invalid by `known_enum`.
            (false, Some(SeedStage::Unknown)) | (_, None) => {}
            (false, Some(_)) => r.push(
                ValidationCode::Contradictory,
                "seed_operation.target_stage",
                format!(
                    "only ADVANCE carries a target stage, this is {}",
                    operation.as_str_name()
                ),
            ),
        }
    }

    /// Validates a blend configuration; `prefix` is the dotted path of the field.
    pub(crate) fn blend(&self, blend: &BlendConfig, prefix: &str, r: &mut Report) {
        let Some(mode) = r.known_enum::<BlendMode>(blend.mode, &format!("{prefix}.mode"), true)
        else {
            return;
        };
        let alpha_field = format!("{prefix}.channel_alpha");
        let gate_field = format!("{prefix}.confidence");
        let (wants_alpha, wants_gate) = match mode {
            BlendMode::Unspecified | BlendMode::Convex | BlendMode::Residual => (false, false),
            BlendMode::Channel => (true, false),
            BlendMode::Confidence => (false, true),
        };
        if wants_alpha {
            if blend.channel_alpha.is_empty() {
                r.push(
                    ValidationCode::MissingField,
                    &alpha_field,
                    "CHANNEL blending needs a per-channel alpha vector",
                );
            }
            if blend.channel_alpha.len() > self.max_channel_alpha {
                r.push(
                    ValidationCode::TooMany,
                    &alpha_field,
                    format!(
                        "{} channel alphas, at most {}",
                        blend.channel_alpha.len(),
                        self.max_channel_alpha
                    ),
                );
            }
            for (i, a) in blend.channel_alpha.iter().enumerate() {
                r.unit_interval(f64::from(*a), format!("{alpha_field}[{i}]"));
            }
        } else if !blend.channel_alpha.is_empty() {
            r.push(
                ValidationCode::Contradictory,
                &alpha_field,
                format!("{} blending takes no alpha vector", mode.as_str_name()),
            );
        }
        match (wants_gate, &blend.confidence) {
            (true, None) => r.push(
                ValidationCode::MissingField,
                &gate_field,
                "CONFIDENCE blending needs k, tau and alpha bounds",
            ),
            (true, Some(g)) => {
                if r.finite(f64::from(g.k), format!("{gate_field}.k")) && g.k <= 0.0 {
                    r.push(
                        ValidationCode::OutOfRange,
                        format!("{gate_field}.k"),
                        format!("k = {} must be > 0", g.k),
                    );
                }
                r.finite(f64::from(g.tau), format!("{gate_field}.tau"));
                r.unit_interval(f64::from(g.alpha_lo), format!("{gate_field}.alpha_lo"));
                r.unit_interval(f64::from(g.alpha_hi), format!("{gate_field}.alpha_hi"));
                if g.alpha_lo > g.alpha_hi {
                    r.push(
                        ValidationCode::Contradictory,
                        format!("{gate_field}.alpha_lo"),
                        format!("alpha_lo {} > alpha_hi {}", g.alpha_lo, g.alpha_hi),
                    );
                }
            }
            (false, Some(_)) => r.push(
                ValidationCode::Contradictory,
                &gate_field,
                format!("{} blending takes no confidence gate", mode.as_str_name()),
            ),
            (false, None) => {}
        }
    }
}

fn alpha_schedule(s: &AlphaSchedule, prefix: &str, r: &mut Report) {
    let Some(kind) = r.known_enum::<AlphaScheduleKind>(s.kind, &format!("{prefix}.kind"), true)
    else {
        return;
    };
    if s.steps == 0 {
        r.push(
            ValidationCode::OutOfRange,
            format!("{prefix}.steps"),
            "an alpha ramp needs at least 1 step",
        );
    }
    match kind {
        AlphaScheduleKind::Sigmoid => {
            let t = f64::from(s.temperature);
            if r.finite(t, format!("{prefix}.temperature")) && t <= 0.0 {
                r.push(
                    ValidationCode::OutOfRange,
                    format!("{prefix}.temperature"),
                    "SIGMOID needs temperature > 0",
                );
            }
        }
        AlphaScheduleKind::Unspecified | AlphaScheduleKind::Linear | AlphaScheduleKind::Cosine => {}
    }
}
