#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use candle_core::{DType, Device, Tensor};
use esper_ops::ParamInit;
use leyline::v1::SeedStage;
use proptest::prelude::*;
use urza::{Weights, definition};

use super::*;
use crate::alpha::{AlphaRamp, RampShape};
use crate::blend::Blend;
use crate::host::{SlotRunner, SlotSpec};

fn spec() -> SlotSpec {
    SlotSpec::conv2d("r0", 4, 6, 6, 0)
}

fn seed(id: &str, ramp_steps: u32) -> Seed {
    let def = definition("conv.residual").unwrap();
    let mut init = ParamInit::new(1, Device::Cpu);
    let module = def
        .build(
            &def.default_parameters(),
            &urza::SlotShape::conv2d(4, 6, 6).unwrap(),
            Weights::Init(&mut init),
        )
        .unwrap();
    Seed::new(
        id,
        "r0",
        "artifact",
        module,
        Blend::Convex,
        AlphaRamp::new(RampShape::Linear, ramp_steps).unwrap(),
    )
}

fn good(alpha: f64) -> StepEvidence {
    StepEvidence {
        seed_grad_norm: 0.5,
        loss: 1.0,
        alpha,
        isolation_checked: true,
        isolation_ok: true,
        step_ms: 1.0,
    }
}

fn small_config() -> GateConfig {
    GateConfig {
        window: 4,
        min_steps: [4, 4, 2, 2],
        min_epochs: [1, 0, 0, 1],
        embargo_epochs: 2,
        ..GateConfig::default()
    }
}

/// Runs `n` training steps of evidence (advancing α ramps like the loop does).
fn steps(lc: &mut Lifecycle, slots: &mut SeedSlots, n: usize) {
    for _ in 0..n {
        let alpha = slots.slot("r0").unwrap().seed().map_or(0.0, Seed::alpha);
        lc.record_step("r0", good(alpha));
        slots.step();
    }
}

fn stages(events: &[LifecycleEvent]) -> Vec<(SeedStage, SeedStage)> {
    events
        .iter()
        .filter_map(|e| match e {
            LifecycleEvent::Transition(t) => Some((
                SeedStage::try_from(t.from_stage).unwrap(),
                SeedStage::try_from(t.to_stage).unwrap(),
            )),
            LifecycleEvent::Gate(_) | LifecycleEvent::Rollback(_) => None,
        })
        .collect()
}

#[test]
fn a_contributing_seed_walks_every_gate_to_fossilized() {
    let mut slots = SeedSlots::new(&[spec()]);
    let mut lc = Lifecycle::new(small_config());
    lc.germinate(&mut slots, seed("s1", 3), 0, 0).unwrap();
    assert_eq!(
        lc.advance(&mut slots, "r0", 0, 0).unwrap(),
        Progress::Moved(SeedStage::Training)
    );
    // TRAINING dwell: 4 steps and 1 epoch.
    steps(&mut lc, &mut slots, 4);
    assert!(
        matches!(lc.advance(&mut slots, "r0", 4, 0).unwrap(), Progress::Waiting(r) if r.contains("dwell"))
    );
    lc.end_epoch(&mut slots, 4, 1).unwrap();
    assert_eq!(
        lc.advance(&mut slots, "r0", 4, 1).unwrap(),
        Progress::Moved(SeedStage::Blending)
    );
    // BLENDING: α ramps over 3 steps; G2 needs the ramp complete and a full window.
    steps(&mut lc, &mut slots, 2);
    assert!(matches!(
        lc.advance(&mut slots, "r0", 6, 1).unwrap(),
        Progress::Waiting(_)
    ));
    steps(&mut lc, &mut slots, 2);
    assert_eq!(slots.slot("r0").unwrap().seed().unwrap().alpha(), 1.0);
    assert_eq!(
        lc.advance(&mut slots, "r0", 8, 1).unwrap(),
        Progress::Moved(SeedStage::Shadowing)
    );
    // SHADOWING: G4 waits for a counterfactual, then accepts no regression.
    steps(&mut lc, &mut slots, 2);
    assert!(
        matches!(lc.advance(&mut slots, "r0", 10, 1).unwrap(), Progress::Waiting(r) if r.contains("counterfactual"))
    );
    lc.record_counterfactual(
        "r0",
        Counterfactual {
            with_seed: 90.0,
            without_seed: 90.2,
        },
    );
    assert_eq!(
        lc.advance(&mut slots, "r0", 10, 1).unwrap(),
        Progress::Moved(SeedStage::Probationary)
    );
    // PROBATIONARY: a fresh measurement is needed (evidence resets per stage).
    steps(&mut lc, &mut slots, 2);
    lc.end_epoch(&mut slots, 12, 2).unwrap();
    assert!(matches!(
        lc.advance(&mut slots, "r0", 12, 2).unwrap(),
        Progress::Waiting(_)
    ));
    lc.record_counterfactual(
        "r0",
        Counterfactual {
            with_seed: 92.0,
            without_seed: 89.0,
        },
    );
    assert_eq!(
        lc.advance(&mut slots, "r0", 12, 2).unwrap(),
        Progress::Moved(SeedStage::Fossilized)
    );
    assert_eq!(lc.advance(&mut slots, "r0", 13, 2).unwrap(), Progress::Idle);

    let events = lc.drain_events();
    assert_eq!(
        stages(&events),
        vec![
            (SeedStage::Dormant, SeedStage::Germinated),
            (SeedStage::Germinated, SeedStage::Training),
            (SeedStage::Training, SeedStage::Blending),
            (SeedStage::Blending, SeedStage::Shadowing),
            (SeedStage::Shadowing, SeedStage::Probationary),
            (SeedStage::Probationary, SeedStage::Fossilized),
        ]
    );
    let gates: Vec<&GateEvaluation> = events
        .iter()
        .filter_map(|e| match e {
            LifecycleEvent::Gate(g) => Some(g),
            LifecycleEvent::Transition(_) | LifecycleEvent::Rollback(_) => None,
        })
        .collect();
    assert_eq!(gates.len(), 6);
    assert!(gates.iter().all(|g| g.passed && g.seed_id == "s1"));
    let last = gates.last().unwrap();
    assert_eq!(last.inputs["contribution"], 3.0);
    // A fossilized seed stays in the model and keeps training with the host.
    assert!(!slots.trainable_parameters().is_empty());
}

/// A seed blended in over steps that take `slow_ms` against a host that
/// stepped in 10 ms, with the wall-clock slowdown rule at `max_slowdown`
/// (0: off): what G2 decides.
fn g2_with_step_time(slow_ms: f64, max_slowdown: f64) -> Progress {
    let mut slots = SeedSlots::new(&[spec()]);
    let mut lc = Lifecycle::new(GateConfig {
        max_slowdown,
        ..small_config()
    });
    for _ in 0..4 {
        lc.record_step_time(10.0);
    }
    lc.germinate(&mut slots, seed("s1", 2), 0, 0).unwrap();
    assert_eq!(lc.baseline_ms("r0"), Some(10.0));
    lc.advance(&mut slots, "r0", 0, 0).unwrap(); // TRAINING
    steps(&mut lc, &mut slots, 4);
    lc.end_epoch(&mut slots, 4, 1).unwrap();
    lc.advance(&mut slots, "r0", 4, 1).unwrap(); // BLENDING
    for _ in 0..4 {
        let alpha = slots.slot("r0").unwrap().seed().map_or(0.0, Seed::alpha);
        lc.record_step(
            "r0",
            StepEvidence {
                step_ms: slow_ms,
                ..good(alpha)
            },
        );
        slots.step();
    }
    lc.advance(&mut slots, "r0", 8, 1).unwrap()
}

#[test]
fn g2_culls_a_seed_that_slows_the_step_beyond_its_budget_only_when_asked() {
    // With the rule at 10×: 3× the host's step time passes, 12× does not.
    assert_eq!(
        g2_with_step_time(30.0, 10.0),
        Progress::Moved(SeedStage::Shadowing)
    );
    assert_eq!(
        g2_with_step_time(120.0, 10.0),
        Progress::Culled("latency_over_budget".into())
    );
    // By default the wall-clock rule is off (its figure depends on machine
    // load): the same 12× passes.
    assert_eq!(GateConfig::default().max_slowdown, 0.0);
    assert_eq!(
        g2_with_step_time(120.0, 0.0),
        Progress::Moved(SeedStage::Shadowing)
    );
}

#[test]
fn a_vanishing_gradient_culls_embargoes_and_resets_the_slot() {
    let mut slots = SeedSlots::new(&[spec()]);
    let mut lc = Lifecycle::new(small_config());
    lc.germinate(&mut slots, seed("s1", 3), 0, 0).unwrap();
    lc.advance(&mut slots, "r0", 0, 0).unwrap();
    for _ in 0..4 {
        lc.record_step(
            "r0",
            StepEvidence {
                seed_grad_norm: 0.0,
                ..good(0.0)
            },
        );
    }
    lc.end_epoch(&mut slots, 4, 1).unwrap();
    assert_eq!(
        lc.advance(&mut slots, "r0", 4, 1).unwrap(),
        Progress::Culled("vanishing_gradient".into())
    );
    assert_eq!(slots.slot("r0").unwrap().stage(), SeedStage::Embargoed);
    assert!(
        slots.trainable_parameters().is_empty(),
        "a culled seed does not train"
    );
    // The embargo holds for two epochs.
    let err = lc.germinate(&mut slots, seed("s2", 3), 5, 1).unwrap_err();
    assert!(matches!(err, Error::SlotBusy { .. }), "{err}");
    lc.end_epoch(&mut slots, 8, 2).unwrap();
    assert_eq!(slots.slot("r0").unwrap().stage(), SeedStage::Embargoed);
    lc.end_epoch(&mut slots, 12, 3).unwrap();
    assert_eq!(slots.slot("r0").unwrap().stage(), SeedStage::Dormant);
    assert!(slots.slot("r0").unwrap().seed().is_none());
    let events = lc.drain_events();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, LifecycleEvent::Rollback(r) if r.reason == "vanishing_gradient"))
    );
    assert_eq!(
        stages(&events)[2..],
        [
            (SeedStage::Training, SeedStage::Culled),
            (SeedStage::Culled, SeedStage::Embargoed),
            (SeedStage::Embargoed, SeedStage::Resetting),
            (SeedStage::Resetting, SeedStage::Dormant),
        ]
    );
    // The slot germinates again.
    lc.germinate(&mut slots, seed("s2", 3), 12, 3).unwrap();
}

#[test]
fn isolation_violations_and_missing_contribution_cull() {
    let mut slots = SeedSlots::new(&[spec()]);
    let mut lc = Lifecycle::new(small_config());
    lc.germinate(&mut slots, seed("s1", 1), 0, 0).unwrap();
    lc.advance(&mut slots, "r0", 0, 0).unwrap();
    steps(&mut lc, &mut slots, 3);
    lc.record_step(
        "r0",
        StepEvidence {
            isolation_checked: true,
            isolation_ok: false,
            ..good(0.0)
        },
    );
    lc.end_epoch(&mut slots, 4, 1).unwrap();
    assert_eq!(
        lc.advance(&mut slots, "r0", 4, 1).unwrap(),
        Progress::Culled("isolation_violation".into())
    );

    let mut slots = SeedSlots::new(&[spec()]);
    let mut lc = Lifecycle::new(GateConfig {
        min_steps: [0; 4],
        min_epochs: [0; 4],
        window: 1,
        ..small_config()
    });
    lc.germinate(&mut slots, seed("s1", 1), 0, 0).unwrap();
    for _ in 0..3 {
        steps(&mut lc, &mut slots, 1);
        lc.advance(&mut slots, "r0", 0, 0).unwrap();
    }
    assert_eq!(slots.slot("r0").unwrap().stage(), SeedStage::Shadowing);
    lc.record_counterfactual(
        "r0",
        Counterfactual {
            with_seed: 80.0,
            without_seed: 80.0,
        },
    );
    assert_eq!(
        lc.advance(&mut slots, "r0", 1, 0).unwrap(),
        Progress::Moved(SeedStage::Probationary)
    );
    lc.record_counterfactual(
        "r0",
        Counterfactual {
            with_seed: 80.0,
            without_seed: 80.0,
        },
    );
    assert_eq!(
        lc.advance(&mut slots, "r0", 2, 0).unwrap(),
        Progress::Culled("no_positive_contribution".into())
    );
}

#[test]
fn illegal_requests_are_typed_errors() {
    let mut slots = SeedSlots::new(&[spec()]);
    let mut lc = Lifecycle::new(small_config());
    assert!(matches!(
        lc.cull(&mut slots, "r0", "x", 0, 0),
        Err(Error::SlotBusy { .. })
    ));
    assert!(matches!(
        lc.cull(&mut slots, "nope", "x", 0, 0),
        Err(Error::UnknownSlot { .. })
    ));
    lc.germinate(&mut slots, seed("s1", 1), 0, 0).unwrap();
    assert!(matches!(
        lc.germinate(&mut slots, seed("s2", 1), 0, 0),
        Err(Error::SlotBusy { .. })
    ));
    lc.cull(&mut slots, "r0", "command", 0, 0).unwrap();
    // EMBARGOED → CULLED is not in the table.
    assert!(matches!(
        lc.cull(&mut slots, "r0", "again", 0, 0),
        Err(Error::Lifecycle { .. })
    ));
    // A seed built for another shape fails placement.
    let mut other = SeedSlots::new(&[SlotSpec::conv2d("r0", 8, 6, 6, 0)]);
    assert!(lc.germinate(&mut other, seed("s3", 1), 0, 0).is_err());
}

/// A lifecycle without dwell, on one-step windows: every gate decides at once.
fn undwelled() -> Lifecycle {
    Lifecycle::new(GateConfig {
        min_steps: [0; 4],
        min_epochs: [0; 4],
        window: 1,
        ..small_config()
    })
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn the_slot_output_follows_the_stage() {
    let mut slots = SeedSlots::new(&[spec()]);
    let mut lc = undwelled();
    let h = Tensor::randn(0f32, 1.0, (2, 4, 6, 6), &Device::Cpu).unwrap();
    // Dormant: the very same tensor comes back.
    let y = slots.run(&spec(), h.clone()).unwrap();
    assert_eq!(y.id(), h.id());
    lc.germinate(&mut slots, seed("s1", 2), 0, 0).unwrap();
    assert_eq!(values(&slots.run(&spec(), h.clone()).unwrap()), values(&h));
    lc.advance(&mut slots, "r0", 0, 0).unwrap(); // TRAINING
    let y = slots.run(&spec(), h.clone()).unwrap();
    assert_eq!(values(&y), values(&h), "the incubator forwards exactly h");
    steps(&mut lc, &mut slots, 1);
    lc.advance(&mut slots, "r0", 1, 0).unwrap(); // BLENDING, α = 0 at first
    slots.step(); // α = 0.5
    let seed_out = slots
        .slot("r0")
        .unwrap()
        .seed()
        .unwrap()
        .module()
        .forward(&h)
        .unwrap();
    let expected = ((&h * 0.5).unwrap() + (seed_out * 0.5).unwrap()).unwrap();
    let y = slots.run(&spec(), h.clone()).unwrap();
    let diff = (y - &expected)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-5, "{diff}");
    slots.set_counterfactual(true);
    assert_eq!(values(&slots.run(&spec(), h.clone()).unwrap()), values(&h));
    slots.set_counterfactual(false);
    // A seed's own counterfactual: α = 0 in its slot, other slots untouched.
    let blended = values(&slots.run(&spec(), h.clone()).unwrap());
    slots.set_counterfactual_slot(Some("elsewhere"));
    assert_eq!(values(&slots.run(&spec(), h.clone()).unwrap()), blended);
    slots.set_counterfactual_slot(Some("r0"));
    assert_eq!(values(&slots.run(&spec(), h.clone()).unwrap()), values(&h));
    slots.set_counterfactual_slot(None);
    let wrong = Tensor::zeros((2, 4, 5, 6), DType::F32, &Device::Cpu).unwrap();
    assert!(slots.run(&spec(), wrong).is_err());
}

#[test]
fn the_off_switch_holds_a_blending_seed_off_and_keeps_its_gradient() {
    let mut slots = SeedSlots::new(&[spec()]);
    slots.set_off_switch(true);
    let mut lc = undwelled();
    let h = Tensor::randn(0f32, 1.0, (2, 4, 6, 6), &Device::Cpu).unwrap();
    lc.germinate(&mut slots, seed("s1", 2), 0, 0).unwrap();
    lc.advance(&mut slots, "r0", 0, 0).unwrap(); // TRAINING
    steps(&mut lc, &mut slots, 1);
    lc.advance(&mut slots, "r0", 1, 0).unwrap(); // BLENDING
    slots.step();
    slots.step(); // α = 1: without the switch the output is the seed's
    let seed_ref = slots.slot("r0").unwrap().seed().unwrap();
    assert_eq!(seed_ref.stage(), SeedStage::Blending);
    assert!(seed_ref.alpha() > 0.99);
    let y = slots.run(&spec(), h.clone()).unwrap();
    assert_eq!(
        values(&y),
        values(&h),
        "held off: the host's activation exactly"
    );
    // The seed still gets a gradient from a loss on the slot output.
    let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let params = slots.slot("r0").unwrap().seed().unwrap().parameters();
    assert!(
        params
            .iter()
            .any(|p| grads.get(p.var.as_tensor()).is_some_and(|g| g
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0)),
        "the seed trains while held off"
    );
    slots.set_off_switch(false);
    assert_ne!(values(&slots.run(&spec(), h.clone()).unwrap()), values(&h));
}

#[derive(Debug, Clone)]
enum Op {
    Good(usize),
    Bad,
    Counterfactual(f64),
    Advance,
    Cull,
    EndEpoch,
    Germinate,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1usize..6).prop_map(Op::Good),
        Just(Op::Bad),
        (-3.0f64..3.0).prop_map(Op::Counterfactual),
        Just(Op::Advance),
        Just(Op::Advance),
        Just(Op::Cull),
        Just(Op::EndEpoch),
        Just(Op::Germinate),
    ]
}

proptest! {
    /// Whatever happens, every recorded move is an edge of the Leyline table,
    /// consecutive moves chain, and the slot's stage is the last move's target.
    #[test]
    fn every_move_follows_the_transition_table(ops in proptest::collection::vec(op(), 1..60)) {
        let mut slots = SeedSlots::new(&[spec()]);
        let mut lc = Lifecycle::new(small_config());
        let (mut step, mut epoch, mut n) = (0u64, 0u64, 0u32);
        let mut log = Vec::new();
        for op in ops {
            match op {
                Op::Good(k) => { steps(&mut lc, &mut slots, k); step += k as u64; }
                Op::Bad => lc.record_step("r0", StepEvidence { seed_grad_norm: f64::NAN, ..good(0.0) }),
                Op::Counterfactual(d) => lc.record_counterfactual("r0", Counterfactual { with_seed: 50.0 + d, without_seed: 50.0 }),
                Op::Advance => { lc.advance(&mut slots, "r0", step, epoch).unwrap(); }
                Op::Cull => { let _ = lc.cull(&mut slots, "r0", "test", step, epoch); }
                Op::EndEpoch => { epoch += 1; lc.end_epoch(&mut slots, step, epoch).unwrap(); }
                Op::Germinate => { n += 1; let _ = lc.germinate(&mut slots, seed(&format!("s{n}"), 2), step, epoch); }
            }
            log.extend(stages(&lc.drain_events()));
        }
        let mut current = SeedStage::Dormant;
        for (from, to) in &log {
            prop_assert_eq!(*from, current);
            prop_assert!(leyline::lifecycle::transition(*from, *to).is_ok(), "{:?} -> {:?}", from, to);
            current = *to;
        }
        prop_assert_eq!(slots.slot("r0").unwrap().stage(), current);
    }
}

#[test]
fn a_training_seed_in_a_real_slot_passes_the_isolation_monitor() {
    use crate::isolation::{IsolationConfig, IsolationMonitor};
    let mut slots = SeedSlots::new(&[spec()]);
    let mut lc = Lifecycle::new(small_config());
    lc.germinate(&mut slots, seed("s1", 2), 0, 0).unwrap();
    lc.advance(&mut slots, "r0", 0, 0).unwrap();
    let mut monitor = IsolationMonitor::new(IsolationConfig::default());
    monitor.open("r0", 4 * 6 * 6);
    slots.set_isolation_probes(true);
    // Host: h = conv-free scaling of a trainable tensor; head: sum of squares.
    let w = candle_core::Var::new(1.5f32, &Device::Cpu).unwrap();
    let x = Tensor::randn(0f32, 1.0, (2, 4, 6, 6), &Device::Cpu).unwrap();
    let h = x.broadcast_mul(w.as_tensor()).unwrap();
    let y = slots.run(&spec(), h).unwrap();
    let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let probes = slots.take_probes();
    let report = monitor
        .check("r0", &probes["r0"], &grads, std::time::Instant::now())
        .unwrap();
    assert!(report.ok, "{report:?}");
    // The seed trained: its parameters got gradients.
    let params = slots.trainable_parameters();
    assert!(
        params
            .iter()
            .all(|p| grads.get(p.var.as_tensor()).is_some())
    );
}
