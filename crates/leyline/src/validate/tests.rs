use super::*;
use crate::v1::adaptation_command::Payload;
use crate::v1::*;

const NOW: u64 = 1_800_000_000_000;

fn seed_command(op: CommandSeedOperation) -> AdaptationCommand {
    AdaptationCommand {
        version: 1,
        command_id: "c".into(),
        command_type: CommandType::Seed as i32,
        target_seed_id: "s".into(),
        issued_at_ms: NOW,
        deadline_at_ms: NOW + 100,
        issued_by: "tamiyo".into(),
        training_run_id: "run".into(),
        payload: Some(Payload::SeedOperation(op)),
        ..Default::default()
    }
}

fn germinate() -> CommandSeedOperation {
    CommandSeedOperation {
        operation: SeedOperation::Germinate as i32,
        blueprint_id: "bp".into(),
        slot_id: "r0".into(),
        mesh_layers: vec!["r0".into()],
        ..Default::default()
    }
}

/// The (code, field) pairs of a report.
fn problems(report: &Report) -> Vec<(ValidationCode, String)> {
    report
        .violations()
        .iter()
        .map(|v| (v.code, v.field.clone()))
        .collect()
}

fn has(report: &Report, code: ValidationCode, field: &str) -> bool {
    problems(report).contains(&(code, field.to_string()))
}

#[test]
fn a_well_formed_germinate_passes() {
    let r = Validator::default().command(&seed_command(germinate()));
    assert!(r.passed(), "{:?}", r.violations());
    assert!(r.into_result().is_ok());
}

#[test]
fn an_empty_command_names_every_missing_field() {
    let r = Validator::default().command(&AdaptationCommand::default());
    for field in [
        "version",
        "command_id",
        "issued_by",
        "training_run_id",
        "issued_at_ms",
        "deadline_at_ms",
        "command_type",
    ] {
        assert!(
            has(&r, ValidationCode::MissingField, field),
            "{field}: {:?}",
            problems(&r)
        );
    }
    let err = r.into_result().unwrap_err().to_string();
    assert!(err.contains("command_id"), "{err}");
}

#[test]
fn seed_operations_need_seed_blueprint_and_run_ids() {
    let mut op = germinate();
    op.blueprint_id.clear();
    let mut c = seed_command(op);
    c.target_seed_id.clear();
    c.training_run_id.clear();
    let r = Validator::default().command(&c);
    assert!(has(&r, ValidationCode::MissingField, "target_seed_id"));
    assert!(has(
        &r,
        ValidationCode::MissingField,
        "seed_operation.blueprint_id"
    ));
    assert!(has(&r, ValidationCode::MissingField, "training_run_id"));
}

#[test]
fn mesh_layers_are_required_except_for_cull_and_bounded() {
    let mut op = germinate();
    op.mesh_layers.clear();
    assert!(has(
        &Validator::default().command(&seed_command(op)),
        ValidationCode::MissingField,
        "seed_operation.mesh_layers"
    ));
    for cull in [SeedOperation::Cull, SeedOperation::Cancel] {
        let op = CommandSeedOperation {
            operation: cull as i32,
            blueprint_id: "bp".into(),
            ..Default::default()
        };
        assert!(Validator::default().command(&seed_command(op)).passed());
    }
    let mut op = germinate();
    op.mesh_layers = (0..129).map(|i| format!("l{i}")).collect();
    assert!(has(
        &Validator::default().command(&seed_command(op.clone())),
        ValidationCode::TooMany,
        "seed_operation.mesh_layers"
    ));
    op.mesh_layers.truncate(128);
    assert!(Validator::default().command(&seed_command(op)).passed());
}

#[test]
fn channel_blend_needs_a_bounded_alpha_vector_in_the_unit_interval() {
    let mut op = germinate();
    op.blend = Some(BlendConfig {
        mode: BlendMode::Channel as i32,
        ..Default::default()
    });
    let r = Validator::default().command(&seed_command(op.clone()));
    assert!(has(
        &r,
        ValidationCode::MissingField,
        "seed_operation.blend.channel_alpha"
    ));

    op.blend = Some(BlendConfig {
        mode: BlendMode::Channel as i32,
        channel_alpha: vec![0.5; 65],
        confidence: None,
    });
    assert!(has(
        &Validator::default().command(&seed_command(op.clone())),
        ValidationCode::TooMany,
        "seed_operation.blend.channel_alpha"
    ));

    op.blend = Some(BlendConfig {
        mode: BlendMode::Channel as i32,
        channel_alpha: vec![0.5, 1.5, f32::NAN],
        confidence: None,
    });
    let r = Validator::default().command(&seed_command(op.clone()));
    assert!(has(
        &r,
        ValidationCode::OutOfRange,
        "seed_operation.blend.channel_alpha[1]"
    ));
    assert!(has(
        &r,
        ValidationCode::InvalidValue,
        "seed_operation.blend.channel_alpha[2]"
    ));

    op.blend = Some(BlendConfig {
        mode: BlendMode::Channel as i32,
        channel_alpha: vec![0.0; 64],
        confidence: None,
    });
    assert!(Validator::default().command(&seed_command(op)).passed());
}

#[test]
fn confidence_blend_needs_its_gate_and_logits() {
    let mut op = germinate();
    op.blend = Some(BlendConfig {
        mode: BlendMode::Confidence as i32,
        ..Default::default()
    });
    assert!(has(
        &Validator::default().command(&seed_command(op.clone())),
        ValidationCode::MissingField,
        "seed_operation.blend.confidence"
    ));

    let gate = |k: f32, lo: f32, hi: f32| ConfidenceGate {
        k,
        tau: 0.2,
        alpha_lo: lo,
        alpha_hi: hi,
    };
    op.blend = Some(BlendConfig {
        mode: BlendMode::Confidence as i32,
        channel_alpha: vec![],
        confidence: Some(gate(0.0, 0.8, 0.2)),
    });
    let r = Validator::default().command(&seed_command(op.clone()));
    assert!(has(
        &r,
        ValidationCode::OutOfRange,
        "seed_operation.blend.confidence.k"
    ));
    assert!(has(
        &r,
        ValidationCode::Contradictory,
        "seed_operation.blend.confidence.alpha_lo"
    ));
    op.blend = Some(BlendConfig {
        mode: BlendMode::Confidence as i32,
        channel_alpha: vec![],
        confidence: Some(gate(4.0, 0.0, 1.0)),
    });
    assert!(
        Validator::default()
            .command(&seed_command(op.clone()))
            .passed()
    );
    // Parameters of another mode are contradictory.
    op.blend = Some(BlendConfig {
        mode: BlendMode::Convex as i32,
        channel_alpha: vec![0.5],
        confidence: Some(gate(4.0, 0.0, 1.0)),
    });
    let r = Validator::default().command(&seed_command(op));
    assert!(has(
        &r,
        ValidationCode::Contradictory,
        "seed_operation.blend.channel_alpha"
    ));
    assert!(has(
        &r,
        ValidationCode::Contradictory,
        "seed_operation.blend.confidence"
    ));

    let v = Validator::default();
    assert!(has(
        &v.confidence_logits(BlendMode::Confidence, None),
        ValidationCode::MissingField,
        "logits"
    ));
    assert!(has(
        &v.confidence_logits(BlendMode::Confidence, Some(&[8, 1])),
        ValidationCode::InvalidValue,
        "logits"
    ));
    assert!(has(
        &v.confidence_logits(BlendMode::Confidence, Some(&[8])),
        ValidationCode::InvalidValue,
        "logits"
    ));
    assert!(
        v.confidence_logits(BlendMode::Confidence, Some(&[8, 10]))
            .passed()
    );
    assert!(v.confidence_logits(BlendMode::Convex, None).passed());
}

#[test]
fn pause_carries_no_seed_operation_and_payloads_must_match_their_type() {
    let mut c = seed_command(germinate());
    c.command_type = CommandType::Pause as i32;
    c.target_seed_id.clear();
    let r = Validator::default().command(&c);
    assert!(
        has(&r, ValidationCode::Contradictory, "seed_operation"),
        "{:?}",
        problems(&r)
    );

    c.payload = Some(Payload::Pause(CommandPause {
        resume: false,
        reason: "operator".into(),
    }));
    assert!(Validator::default().command(&c).passed());
    c.payload = None;
    assert!(has(
        &Validator::default().command(&c),
        ValidationCode::MissingField,
        "pause"
    ));

    c.target_seed_id = "s".into();
    c.payload = Some(Payload::Pause(CommandPause {
        resume: true,
        reason: "operator".into(),
    }));
    assert!(has(
        &Validator::default().command(&c),
        ValidationCode::Contradictory,
        "target_seed_id"
    ));
}

#[test]
fn other_payloads_are_checked() {
    let base = AdaptationCommand {
        target_seed_id: String::new(),
        ..seed_command(germinate())
    };
    let cases: Vec<(CommandType, Payload, &str)> = vec![
        (
            CommandType::Optimizer,
            Payload::OptimizerAdjustment(CommandOptimizerAdjustment::default()),
            "optimizer_adjustment.optimizer_id",
        ),
        (
            CommandType::CircuitBreaker,
            Payload::CircuitBreaker(CommandCircuitBreaker::default()),
            "circuit_breaker.desired_state",
        ),
        (
            CommandType::Rollback,
            Payload::Rollback(CommandRollback::default()),
            "rollback.tier",
        ),
        (
            CommandType::Emergency,
            Payload::Emergency(CommandEmergency::default()),
            "emergency.level",
        ),
    ];
    for (ty, payload, field) in cases {
        let c = AdaptationCommand {
            command_type: ty as i32,
            payload: Some(payload),
            ..base.clone()
        };
        assert!(
            has(
                &Validator::default().command(&c),
                ValidationCode::MissingField,
                field
            ),
            "{field}"
        );
    }
    let c = AdaptationCommand {
        command_type: CommandType::Rollback as i32,
        payload: Some(Payload::Rollback(CommandRollback {
            tier: RollbackTier::Fast as i32,
            reason: "loss spike".into(),
        })),
        ..base
    };
    assert!(Validator::default().command(&c).passed());
}

#[test]
fn advance_needs_a_reachable_working_stage() {
    let mut op = germinate();
    op.operation = SeedOperation::Advance as i32;
    assert!(has(
        &Validator::default().command(&seed_command(op.clone())),
        ValidationCode::MissingField,
        "seed_operation.target_stage"
    ));
    op.target_stage = SeedStage::Fossilized as i32;
    assert!(has(
        &Validator::default().command(&seed_command(op.clone())),
        ValidationCode::InvalidValue,
        "seed_operation.target_stage"
    ));
    op.target_stage = SeedStage::Blending as i32;
    assert!(
        Validator::default()
            .command(&seed_command(op.clone()))
            .passed()
    );
    op.operation = SeedOperation::Germinate as i32;
    assert!(has(
        &Validator::default().command(&seed_command(op)),
        ValidationCode::Contradictory,
        "seed_operation.target_stage"
    ));
}

#[test]
fn unknown_enum_values_and_bad_numbers_are_invalid() {
    let mut c = seed_command(germinate());
    c.command_type = 42;
    assert!(has(
        &Validator::default().command(&c),
        ValidationCode::InvalidValue,
        "command_type"
    ));
    let mut op = germinate();
    op.parameters.insert("width".into(), f64::INFINITY);
    op.alpha_schedule = Some(AlphaSchedule {
        kind: AlphaScheduleKind::Sigmoid as i32,
        steps: 0,
        temperature: 0.0,
    });
    let r = Validator::default().command(&seed_command(op));
    assert!(has(
        &r,
        ValidationCode::InvalidValue,
        "seed_operation.parameters[width]"
    ));
    assert!(has(
        &r,
        ValidationCode::OutOfRange,
        "seed_operation.alpha_schedule.steps"
    ));
    assert!(has(
        &r,
        ValidationCode::OutOfRange,
        "seed_operation.alpha_schedule.temperature"
    ));
    let mut c = seed_command(germinate());
    c.deadline_at_ms = c.issued_at_ms;
    c.version = 2;
    c.context = Some(DecisionContext {
        feature_coverage: 1.5,
        ..Default::default()
    });
    let r = Validator::default().command(&c);
    assert!(has(&r, ValidationCode::OutOfRange, "deadline_at_ms"));
    assert!(has(&r, ValidationCode::InvalidValue, "version"));
    assert!(has(
        &r,
        ValidationCode::OutOfRange,
        "context.feature_coverage"
    ));
}

fn state_packet() -> SystemStatePacket {
    SystemStatePacket {
        version: 1,
        packet_id: "p".into(),
        training_run_id: "run".into(),
        source_subsystem: "tolaria".into(),
        timestamp_ms: NOW,
        validation_accuracy: Some(0.9),
        seed_states: vec![SeedState {
            seed_id: "s1".into(),
            slot_id: "r0".into(),
            stage: SeedStage::Blending as i32,
            blend_allowed: true,
            alpha: Some(AlphaState {
                alpha: 0.3,
                steps: 3,
                total_steps: 10,
                schedule: 1,
            }),
            ..Default::default()
        }],
        slots: vec![SlotState {
            slot_id: "r0".into(),
            kind: SlotKind::Conv2d as i32,
            feature_shape: vec![16, 14, 14],
            stage: SeedStage::Blending as i32,
            seed_id: "s1".into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn state_packets_are_checked_field_by_field() {
    let v = Validator::default();
    assert!(
        v.state_packet(&state_packet()).passed(),
        "{:?}",
        problems(&v.state_packet(&state_packet()))
    );
    let mut p = state_packet();
    p.timestamp_ms = 0;
    p.validation_accuracy = Some(1.2);
    p.seed_states[0].alpha = Some(AlphaState {
        alpha: -0.1,
        steps: 0,
        total_steps: 0,
        schedule: 0,
    });
    p.seed_states[0].blend_allowed = false;
    p.seed_states.push(p.seed_states[0].clone());
    p.slots[0].feature_shape = vec![16, 0];
    p.slots.push(SlotState {
        slot_id: "r1".into(),
        kind: 1,
        feature_shape: vec![8],
        stage: SeedStage::Dormant as i32,
        seed_id: "x".into(),
        ..Default::default()
    });
    let r = v.state_packet(&p);
    assert!(has(&r, ValidationCode::MissingField, "timestamp_ms"));
    assert!(has(&r, ValidationCode::OutOfRange, "validation_accuracy"));
    assert!(has(
        &r,
        ValidationCode::OutOfRange,
        "seed_states[0].alpha.alpha"
    ));
    assert!(has(
        &r,
        ValidationCode::Contradictory,
        "seed_states[0].blend_allowed"
    ));
    assert!(has(
        &r,
        ValidationCode::Contradictory,
        "seed_states[1].seed_id"
    ));
    assert!(has(
        &r,
        ValidationCode::InvalidValue,
        "slots[0].feature_shape"
    ));
    assert!(has(&r, ValidationCode::Contradictory, "slots[1].seed_id"));
}

#[test]
fn envelopes_signals_reports_and_descriptors_are_checked() {
    let v = Validator::default();
    let r = v.envelope(&BusEnvelope::default());
    for f in [
        "message_type",
        "payload",
        "message_id",
        "source",
        "issued_at_ms",
        "priority",
    ] {
        assert!(has(&r, ValidationCode::MissingField, f), "{f}");
    }
    let r = v.emergency_signal(&EmergencySignal::default());
    for f in ["signal_id", "level", "reason", "origin", "triggered_at_ms"] {
        assert!(has(&r, ValidationCode::MissingField, f), "{f}");
    }
    let r = v.field_report(&FieldReport::default());
    assert!(has(
        &r,
        ValidationCode::OutOfRange,
        "observation_window_epochs"
    ));
    assert!(has(&r, ValidationCode::MissingField, "outcome"));
    let mut d = BlueprintDescriptor {
        blueprint_id: "b".into(),
        name: "n".into(),
        tier: 1,
        risk: 0.1,
        slot_kinds: vec![1],
        ..Default::default()
    };
    assert!(v.blueprint_descriptor(&d).passed());
    d.allowed_parameters
        .insert("rank".into(), ParameterBound { min: 8.0, max: 2.0 });
    d.risk = 2.0;
    let r = v.blueprint_descriptor(&d);
    assert!(has(
        &r,
        ValidationCode::Contradictory,
        "allowed_parameters[rank]"
    ));
    assert!(has(&r, ValidationCode::OutOfRange, "risk"));
    let t = TelemetryPacket {
        packet_id: "t".into(),
        source_subsystem: "k".into(),
        timestamp_ms: NOW,
        level: 4,
        priority: 2,
        ..Default::default()
    };
    assert!(has(
        &v.telemetry_packet(&t),
        ValidationCode::Contradictory,
        "priority"
    ));
}

#[test]
fn limits_come_from_config() {
    let limits = LimitsConfig {
        max_mesh_layers: 2,
        ..Default::default()
    };
    let mut op = germinate();
    op.mesh_layers = vec!["a".into(), "b".into(), "c".into()];
    assert!(has(
        &Validator::new(&limits).command(&seed_command(op)),
        ValidationCode::TooMany,
        "seed_operation.mesh_layers"
    ));
}
