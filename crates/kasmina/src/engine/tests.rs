#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{SystemTime, UNIX_EPOCH};

use leyline::security::{SigningKey, sign};
use leyline::v1::{
    AlphaSchedule, AlphaScheduleKind, BlendConfig, BlendMode, CommandPause, CommandType,
};

use super::*;
use crate::gates::{Counterfactual, StepEvidence};
use crate::intake::Failure;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn key() -> SigningKey {
    SigningKey::from_bytes(&[9u8; 32]).unwrap()
}

fn spec() -> SlotSpec {
    SlotSpec::conv2d("r0", 4, 6, 6, 0)
}

struct Fixture {
    kasmina: Kasmina,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (library, _) = urza::Library::open(urza::LibraryConfig::new(dir.path())).unwrap();
    let source = LibrarySource::new(Arc::new(library), Device::Cpu);
    let gates = GateConfig {
        window: 2,
        min_steps: [2, 2, 1, 1],
        min_epochs: [0, 0, 0, 0],
        ..GateConfig::default()
    };
    let intake = CommandIntake::new(key(), &leyline::Config::default());
    Fixture {
        kasmina: Kasmina::new(&[spec()], gates, intake, Box::new(source), 7),
        _dir: dir,
    }
}

fn seed_command(id: &str, seed: &str, op: CommandSeedOperation) -> AdaptationCommand {
    let mut c = AdaptationCommand {
        version: 1,
        command_id: id.into(),
        command_type: CommandType::Seed as i32,
        target_seed_id: seed.into(),
        issued_at_ms: now(),
        deadline_at_ms: now() + 60_000,
        issued_by: "test".into(),
        training_run_id: "run".into(),
        payload: Some(Payload::SeedOperation(op)),
        ..AdaptationCommand::default()
    };
    sign(&key(), &mut c);
    c
}

fn germinate(id: &str, seed: &str, blueprint: &str) -> AdaptationCommand {
    seed_command(
        id,
        seed,
        CommandSeedOperation {
            operation: SeedOperation::Germinate as i32,
            blueprint_id: blueprint.into(),
            slot_id: "r0".into(),
            mesh_layers: vec!["r0".into()],
            blend: Some(BlendConfig {
                mode: BlendMode::Convex as i32,
                ..BlendConfig::default()
            }),
            alpha_schedule: Some(AlphaSchedule {
                kind: AlphaScheduleKind::Linear as i32,
                steps: 2,
                temperature: 0.0,
            }),
            ..CommandSeedOperation::default()
        },
    )
}

fn simple(id: &str, seed: &str, operation: SeedOperation, target: SeedStage) -> AdaptationCommand {
    seed_command(
        id,
        seed,
        CommandSeedOperation {
            operation: operation as i32,
            blueprint_id: "conv.residual".into(),
            mesh_layers: vec!["r0".into()],
            target_stage: target as i32,
            ..CommandSeedOperation::default()
        },
    )
}

fn ok(outcomes: &[CommandOutcome]) -> Vec<String> {
    outcomes
        .iter()
        .map(|o| {
            o.result
                .clone()
                .unwrap_or_else(|e| panic!("{}: {e}", o.command_id))
        })
        .collect()
}

fn evidence(k: &mut Kasmina, n: usize) {
    for _ in 0..n {
        let alpha = k
            .slots()
            .slot("r0")
            .unwrap()
            .seed()
            .map_or(0.0, Seed::alpha);
        k.lifecycle_mut().record_step(
            "r0",
            StepEvidence {
                seed_grad_norm: 0.3,
                loss: 1.0,
                alpha,
                isolation_checked: true,
                isolation_ok: true,
                step_ms: 1.0,
            },
        );
        k.slots_mut().step();
    }
}

#[test]
fn commands_grow_a_seed_from_germination_to_fossilization() {
    let mut f = fixture();
    let k = &mut f.kasmina;
    k.intake_mut()
        .submit(germinate("c1", "s1", "conv.residual"), now())
        .unwrap();
    assert_eq!(ok(&k.fence(0, 0, now())), vec!["germinated at r0"]);
    let seed = k.slots().slot("r0").unwrap().seed().unwrap();
    assert_eq!(seed.stage(), SeedStage::Germinated);
    assert_eq!(seed.module().blueprint_id(), "conv.residual");
    assert_eq!(seed.artifact_ref().len(), 64);

    k.intake_mut()
        .submit(
            simple("c2", "s1", SeedOperation::Advance, SeedStage::Training),
            now(),
        )
        .unwrap();
    assert_eq!(
        ok(&k.fence(1, 0, now())),
        vec!["moved to SEED_STAGE_TRAINING"]
    );
    // Training seeds are registered as owners of their parameters.
    let params = k.slots().trainable_parameters();
    assert!(!params.is_empty());
    assert_eq!(
        k.registry()
            .validate_update(&Owner::Seed("s1".into()), &params),
        Ok(())
    );

    // Too early: the gate is not ready, and the command says so.
    k.intake_mut()
        .submit(
            simple("c3", "s1", SeedOperation::Advance, SeedStage::Blending),
            now(),
        )
        .unwrap();
    let outcome = k.fence(2, 0, now());
    assert!(
        matches!(
            &outcome[0].result,
            Err(Rejection::Failed(Failure::GateNotReady(_)))
        ),
        "{outcome:?}"
    );

    // On evidence, the lifecycle moves by itself.
    evidence(k, 2);
    assert_eq!(
        k.advance_all(4, 0).unwrap(),
        vec![("r0".to_string(), Progress::Moved(SeedStage::Blending))]
    );
    evidence(k, 2);
    assert_eq!(
        k.advance_all(6, 0).unwrap()[0].1,
        Progress::Moved(SeedStage::Shadowing)
    );
    evidence(k, 1);
    k.lifecycle_mut().record_counterfactual(
        "r0",
        Counterfactual {
            with_seed: 91.0,
            without_seed: 90.0,
        },
    );
    assert_eq!(
        k.advance_all(7, 0).unwrap()[0].1,
        Progress::Moved(SeedStage::Probationary)
    );
    evidence(k, 1);
    k.lifecycle_mut().record_counterfactual(
        "r0",
        Counterfactual {
            with_seed: 92.0,
            without_seed: 90.0,
        },
    );
    k.intake_mut()
        .submit(
            simple("c4", "s1", SeedOperation::Fossilize, SeedStage::Unknown),
            now(),
        )
        .unwrap();
    assert_eq!(
        ok(&k.fence(8, 0, now())),
        vec!["moved to SEED_STAGE_FOSSILIZED"]
    );
}

#[test]
fn every_refusal_has_a_typed_reason() {
    let mut f = fixture();
    let k = &mut f.kasmina;
    let intake = k.intake_mut();
    // Tampered: the signature no longer matches.
    let mut tampered = germinate("c1", "s1", "conv.residual");
    tampered.target_seed_id = "other".into();
    assert!(matches!(
        intake.submit(tampered, now()),
        Err(Rejection::Security(_))
    ));
    // Replayed: the same command id twice.
    intake
        .submit(germinate("c2", "s1", "conv.residual"), now())
        .unwrap();
    assert!(matches!(
        intake.submit(germinate("c2", "s1", "conv.residual"), now()),
        Err(Rejection::Security(_))
    ));
    // Not Kasmina's.
    let mut pause = AdaptationCommand {
        version: 1,
        command_id: "c3".into(),
        command_type: CommandType::Pause as i32,
        issued_at_ms: now(),
        deadline_at_ms: now() + 60_000,
        issued_by: "test".into(),
        training_run_id: "run".into(),
        payload: Some(Payload::Pause(CommandPause::default())),
        ..AdaptationCommand::default()
    };
    sign(&key(), &mut pause);
    let refused = intake.submit(pause, now());
    assert!(
        matches!(
            refused,
            Err(Rejection::NotForKasmina("PAUSE")) | Err(Rejection::Invalid(_))
        ),
        "{refused:?}"
    );
    // Invalid: a germinate without a blueprint; one without a blend.
    let invalid = germinate("c4", "s2", "");
    assert!(matches!(
        intake.submit(invalid, now()),
        Err(Rejection::Invalid(_))
    ));
    let mut no_blend = germinate("c4b", "s2", "conv.residual");
    if let Some(Payload::SeedOperation(op)) = no_blend.payload.as_mut() {
        op.blend = None;
    }
    sign(&key(), &mut no_blend);
    assert!(
        matches!(intake.submit(no_blend, now()), Err(Rejection::Invalid(r)) if r.contains("blend"))
    );

    // Expired at the fence.
    let mut late = germinate("c5", "s3", "conv.residual");
    late.deadline_at_ms = now() + 50;
    sign(&key(), &mut late);
    intake.submit(late, now()).unwrap();
    let outcomes = k.fence(0, 0, now() + 10_000);
    assert!(
        outcomes
            .iter()
            .any(|o| o.command_id == "c5" && matches!(o.result, Err(Rejection::Expired { .. })))
    );
    // c2 germinated s1 in the same fence.
    assert!(
        outcomes
            .iter()
            .any(|o| o.command_id == "c2" && o.result.is_ok())
    );

    // Stale generation: after generation 5 was applied, generation 4 is refused.
    let mut newer = simple("c6", "s1", SeedOperation::Advance, SeedStage::Training);
    newer.generation = 5;
    sign(&key(), &mut newer);
    let mut older = simple("c7", "s1", SeedOperation::Advance, SeedStage::Blending);
    older.generation = 4;
    sign(&key(), &mut older);
    k.intake_mut().submit(newer, now()).unwrap();
    k.intake_mut().submit(older, now()).unwrap();
    let outcomes = k.fence(1, 0, now());
    assert!(outcomes[0].result.is_ok(), "{outcomes:?}");
    assert!(matches!(
        outcomes[1].result,
        Err(Rejection::StaleGeneration {
            generation: 4,
            current: 5
        })
    ));

    // Execution failures: an occupied slot, an unknown blueprint, skipping a stage.
    let mut occupied = germinate("c8", "s9", "conv.residual");
    occupied.generation = 5;
    sign(&key(), &mut occupied);
    k.intake_mut().submit(occupied, now()).unwrap();
    let mut skip = simple("c9", "s1", SeedOperation::Advance, SeedStage::Shadowing);
    skip.generation = 5;
    sign(&key(), &mut skip);
    k.intake_mut().submit(skip, now()).unwrap();
    let outcomes = k.fence(2, 0, now());
    assert!(
        matches!(&outcomes[0].result, Err(Rejection::Failed(Failure::Engine(e))) if matches!(**e, crate::Error::SlotBusy { .. })),
        "{outcomes:?}"
    );
    assert!(
        matches!(
            &outcomes[1].result,
            Err(Rejection::Failed(Failure::WrongTarget { .. }))
        ),
        "{outcomes:?}"
    );

    // Held until its step.
    let mut future = simple("c10", "s1", SeedOperation::Cull, SeedStage::Unknown);
    future.apply_at_step = 10;
    future.generation = 5;
    sign(&key(), &mut future);
    k.intake_mut().submit(future, now()).unwrap();
    assert!(k.fence(3, 0, now()).is_empty());
    assert_eq!(ok(&k.fence(10, 0, now())), vec!["culled"]);
    assert!(k.slots().trainable_parameters().is_empty());
    assert!(
        k.registry().is_empty(),
        "a culled seed's parameters are unregistered"
    );
    let counts = k.intake_mut().rejected().clone();
    for label in [
        "security",
        "invalid",
        "expired",
        "stale_generation",
        "failed",
    ] {
        assert!(
            counts.get(label).copied().unwrap_or(0) > 0,
            "{label}: {counts:?}"
        );
    }
}

#[test]
fn an_unknown_blueprint_is_refused_with_no_fallback() {
    let mut f = fixture();
    let k = &mut f.kasmina;
    k.intake_mut()
        .submit(germinate("c1", "s1", "conv.nonexistent"), now())
        .unwrap();
    let outcomes = k.fence(0, 0, now());
    assert!(
        matches!(&outcomes[0].result, Err(Rejection::Failed(f @ Failure::Load { .. })) if f.to_string().contains("unknown blueprint")),
        "{outcomes:?}"
    );
    assert!(k.slots().slot("r0").unwrap().seed().is_none());
}

#[test]
fn g3_culls_a_seed_whose_mesh_layers_the_host_lacks() {
    let mut f = fixture();
    let k = &mut f.kasmina;
    let mut command = germinate("c1", "s1", "conv.residual");
    if let Some(Payload::SeedOperation(op)) = command.payload.as_mut() {
        op.mesh_layers = vec!["r0".into(), "conv9".into()];
    }
    sign(&key(), &mut command);
    k.intake_mut().submit(command, now()).unwrap();
    assert_eq!(ok(&k.fence(0, 0, now())), vec!["germinated at r0"]);
    let progress = k.advance_all(1, 0).unwrap();
    assert_eq!(
        progress,
        vec![(
            "r0".to_string(),
            Progress::Culled("mesh_layers_missing".into())
        )]
    );
}

#[test]
fn a_seed_costs_its_modules_macs_only_where_it_runs_and_counts_images_by_stage() {
    let mut f = fixture();
    let k = &mut f.kasmina;
    assert_eq!(k.count_forward(32), 0, "no seed, no cost");
    k.intake_mut()
        .submit(germinate("c1", "s1", "conv.residual"), now())
        .unwrap();
    ok(&k.fence(0, 0, now()));
    // GERMINATED: the module does not run.
    assert_eq!(k.seed_forward_macs(), 0);
    assert_eq!(k.count_forward(32), 0);
    k.intake_mut()
        .submit(
            simple("c2", "s1", SeedOperation::Advance, SeedStage::Training),
            now(),
        )
        .unwrap();
    ok(&k.fence(1, 0, now()));
    let def = urza::definition("conv.residual").unwrap();
    let expected = def
        .forward_macs(
            &def.default_parameters(),
            &urza::SlotShape::conv2d(4, 6, 6).unwrap(),
        )
        .unwrap();
    assert!(expected > 0);
    assert_eq!(k.seed_forward_macs(), expected);
    assert_eq!(k.count_forward(32), expected);
    assert_eq!(k.count_forward(8), expected);
    let outcome = &k.seed_outcomes()[0];
    assert_eq!(outcome.forward_macs, expected);
    assert_eq!(
        outcome.images_by_stage,
        [
            ("SEED_STAGE_GERMINATED".to_string(), 32),
            ("SEED_STAGE_TRAINING".to_string(), 40)
        ]
        .into_iter()
        .collect()
    );
    // The last counterfactual measurement is its contribution.
    assert_eq!(k.seed_outcomes()[0].contribution, None);
    k.record_counterfactual(
        "r0",
        Counterfactual {
            with_seed: 91.5,
            without_seed: 90.0,
        },
    );
    assert_eq!(k.seed_outcomes()[0].contribution, Some(1.5));
    // Culled, it costs nothing again.
    k.cull("r0", "test", 2, 0).unwrap();
    assert_eq!(k.seed_forward_macs(), 0);
}

#[test]
fn slot_evidence_matches_a_hand_computation_on_sampled_steps() {
    let f = fixture();
    let mut k = f.kasmina.with_slot_evidence_every(2);
    // The "host": its activation at r0 is a variable h = 0.01 · (0..144),
    // and the loss is Σ c·y, so the gradient arriving at the slot is c.
    let values: Vec<f32> = (0..144).map(|i| 0.01 * i as f32).collect();
    let h = candle_core::Var::from_vec(values.clone(), (1, 4, 6, 6), &Device::Cpu).unwrap();
    let step = |k: &mut Kasmina, c: f64| {
        k.before_step();
        let y = k.runner().run(&spec(), h.as_tensor().clone()).unwrap();
        let loss = (y * c).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        k.after_backward(
            &grads,
            0.0,
            StepTimes {
                forward_ms: 0.5,
                forward_backward_ms: 1.0,
            },
        )
        .unwrap();
    };
    assert_eq!(
        k.slot_states()[0].activation_norm,
        None,
        "nothing measured yet"
    );
    step(&mut k, 2.0);
    let rms = (values.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / 144.0).sqrt();
    let state = &k.slot_states()[0];
    let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-5 * b.max(1.0));
    assert!(close(state.activation_norm, rms), "{state:?} vs {rms}");
    // ‖c · 1‖ over 144 features = 2 · 12.
    assert!(close(state.gradient_norm, 24.0), "{state:?}");
    // Step 2 is not sampled: nothing changes.
    step(&mut k, 4.0);
    assert!(close(k.slot_states()[0].gradient_norm, 24.0));
    // Step 3 is: the average moves halfway to 48.
    step(&mut k, 4.0);
    assert!(close(k.slot_states()[0].gradient_norm, 36.0));
    assert!(close(k.slot_states()[0].activation_norm, rms));
    // Turned off, the packet reports nothing rather than a zero.
    let mut off = fixture().kasmina.with_slot_evidence_every(0);
    step(&mut off, 2.0);
    assert_eq!(off.slot_states()[0].gradient_norm, None);
}

/// Drives one training step of a seeded slot: before_step, the slot's
/// forward (the host activation is a variable), a backward, after_backward
/// with `forward_ms` as the model's forward time, after_step.
fn seeded_step(k: &mut Kasmina, h: &candle_core::Var, step: u64, forward_ms: f64) {
    k.before_step();
    let y = k.runner().run(&spec(), h.as_tensor().clone()).unwrap();
    let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    k.after_backward(
        &grads,
        1.0,
        StepTimes {
            forward_ms,
            forward_backward_ms: 2.0 * forward_ms,
        },
    )
    .unwrap();
    k.after_step("run", step, 0, 1.0).unwrap();
}

#[test]
fn a_training_seed_is_probed_on_sampled_steps_and_its_forward_is_timed() {
    let dir = tempfile::tempdir().unwrap();
    let (library, _) = urza::Library::open(urza::LibraryConfig::new(dir.path())).unwrap();
    let source = LibrarySource::new(Arc::new(library), Device::Cpu);
    // TRAINING lasts: the test watches its steps.
    let gates = GateConfig {
        min_steps: [100, 2, 1, 1],
        ..GateConfig::default()
    };
    let intake = CommandIntake::new(key(), &leyline::Config::default());
    let k = Kasmina::new(&[spec()], gates, intake, Box::new(source), 7);
    let mut k = k.with_isolation(IsolationConfig {
        check_every_steps: 3,
        ..IsolationConfig::default()
    });
    k.intake_mut()
        .submit(germinate("c1", "s1", "conv.residual"), now())
        .unwrap();
    ok(&k.fence(0, 0, now()));
    k.intake_mut()
        .submit(
            simple("c2", "s1", SeedOperation::Advance, SeedStage::Training),
            now(),
        )
        .unwrap();
    ok(&k.fence(0, 0, now()));
    let h = candle_core::Var::randn(0f32, 1.0, (2, 4, 6, 6), &Device::Cpu).unwrap();
    let mut checks = Vec::new();
    for step in 1..=7 {
        let before = k
            .lifecycle()
            .evidence("r0")
            .map_or(0, |e| e.isolation_checks);
        // A forward time far above the seed's own: its share is below 1.
        seeded_step(&mut k, &h, step, 1_000.0);
        // A validation forward between steps (no backward) must leave no
        // probe behind for the next, unprobed step.
        std::hint::black_box(k.runner().run(&spec(), h.as_tensor().clone()).unwrap());
        let after = k
            .lifecycle()
            .evidence("r0")
            .map_or(0, |e| e.isolation_checks);
        checks.push(after > before);
    }
    assert_eq!(
        checks,
        [true, false, false, true, false, false, true],
        "the first step of the session, then every third"
    );
    let e = k.lifecycle().evidence("r0").unwrap();
    assert_eq!((e.isolation_checks, e.isolation_violations), (3, 0));

    // The seed's forward was timed in place: a positive time, a share of
    // the stated 1 s forward well below 1, in the summary, the state packet
    // and the run's history.
    let time = k.summaries()[0].time.expect("timed");
    assert!(
        time.forward_ms > 0.0 && time.forward_ms < 1_000.0,
        "{time:?}"
    );
    assert!(
        time.forward_share > 0.0 && time.forward_share < 1.0,
        "{time:?}"
    );
    let state = &k.seed_states(7, 0)[0];
    assert_eq!(state.metrics["forward_ms"], time.forward_ms);
    assert_eq!(state.metrics["forward_share"], time.forward_share);
    let outcome = &k.seed_outcomes()[0];
    assert_eq!(outcome.timed_steps, 7);
    let mean = outcome.forward_ms_per_step().unwrap();
    assert!(mean > 0.0 && (outcome.forward_share().unwrap() - mean / 1_000.0).abs() < 1e-12);
}

#[test]
fn g1_waits_for_an_isolation_check() {
    use crate::gates::Verdict;
    let config = GateConfig {
        window: 2,
        ..GateConfig::default()
    };
    let mut e = crate::gates::Evidence::new(2);
    for _ in 0..2 {
        e.record(StepEvidence {
            seed_grad_norm: 1.0,
            loss: 1.0,
            alpha: 0.0,
            isolation_checked: false,
            isolation_ok: true,
            step_ms: 1.0,
        });
    }
    let verdict = crate::gates::g1(&config, &e, SeedStage::Training, SeedStage::Blending);
    assert_eq!(verdict, Verdict::Wait("no isolation check yet".into()));
    e.record(StepEvidence {
        seed_grad_norm: 1.0,
        loss: 1.0,
        alpha: 0.0,
        isolation_checked: true,
        isolation_ok: true,
        step_ms: 1.0,
    });
    let verdict = crate::gates::g1(&config, &e, SeedStage::Training, SeedStage::Blending);
    assert!(
        matches!(verdict, Verdict::Decided(ref g) if g.passed),
        "{verdict:?}"
    );
}

/// A seed checkpointed before it trains (GERMINATED) has no saved weights; a
/// resumed run rebuilds it with the weights it was germinated with (from the
/// run seed and its id), not those of another draw. Found by the
/// kill9-resume-grown drill: runs resumed over a GERMINATED seed diverged.
#[test]
fn a_germinated_seed_is_rebuilt_with_the_weights_it_was_germinated_with() {
    let weights = |k: &Kasmina| -> Vec<Vec<f32>> {
        let seed = k.slots().slot("r0").unwrap().seed().unwrap();
        seed.parameters()
            .iter()
            .map(|p| p.var.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect()
    };
    let mut f = fixture();
    f.kasmina
        .intake_mut()
        .submit(germinate("c1", "s1", "conv.residual"), now())
        .unwrap();
    ok(&f.kasmina.fence(0, 0, now()));
    let seed = f.kasmina.slots().slot("r0").unwrap().seed().unwrap();
    assert_eq!(seed.stage(), SeedStage::Germinated);
    assert!(!seed.trains(), "the case is a seed without saved weights");
    let state = f.kasmina.export_state();
    let mut resumed = fixture();
    resumed
        .kasmina
        .restore_state(&state, &std::collections::BTreeMap::new())
        .unwrap();
    let (before, after) = (weights(&f.kasmina), weights(&resumed.kasmina));
    assert!(!before.is_empty());
    assert_eq!(before, after, "the rebuilt seed drew other weights");
}

/// The counted budget: a GERMINATE whose module costs more forward MACs
/// than `max_seed_mac_ratio` × the host's is refused when applied, naming
/// both counts; within it, or with the host's MACs unknown, it germinates.
#[test]
fn a_seed_over_the_counted_mac_budget_is_refused_at_germination() {
    let mut f = fixture();
    let k = &mut f.kasmina;
    // conv.residual on [4, 6, 6] costs far more than a 100-MAC host.
    k.set_host_forward_macs(Some(100));
    k.intake_mut()
        .submit(germinate("c1", "s1", "conv.residual"), now())
        .unwrap();
    let outcomes = k.fence(0, 0, now());
    match &outcomes[0].result {
        Err(Rejection::Failed(f @ Failure::OverBudget { host_macs, .. })) => {
            assert_eq!(*host_macs, 100);
            assert!(f.to_string().contains("over the budget of 20 x"), "{f}");
        }
        other => panic!("{other:?}"),
    }
    assert!(k.slots().slot("r0").unwrap().seed().is_none());
    // A host big enough for it: germinated.
    k.set_host_forward_macs(Some(100_000_000));
    k.intake_mut()
        .submit(germinate("c2", "s1", "conv.residual"), now())
        .unwrap();
    assert_eq!(ok(&k.fence(1, 0, now())), vec!["germinated at r0"]);
}

/// Device discipline: a Kasmina whose model lives on `cuda:0` (the double:
/// this CPU build's kernel source builds on the CPU) refuses the seed at
/// germination, naming the parameter and both devices; the slot stays empty.
#[test]
fn a_seed_built_off_the_model_device_is_refused_at_germination() {
    let f = fixture();
    let gpu = DeviceLocation::Cuda { gpu_id: 0 };
    let mut k = f.kasmina.with_device(gpu);
    k.intake_mut()
        .submit(germinate("c1", "s1", "conv.residual"), now())
        .unwrap();
    let outcomes = k.fence(0, 0, now());
    match &outcomes[0].result {
        Err(Rejection::Failed(f @ Failure::Device { source, .. })) => {
            assert_eq!(source.expected, gpu);
            assert_eq!(source.found, DeviceLocation::Cpu);
            let text = f.to_string();
            assert!(text.contains("seed s1's parameter"), "{text}");
            assert!(text.contains("on cpu, the model on cuda:0"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    assert!(k.slots().slot("r0").unwrap().seed().is_none());
}
